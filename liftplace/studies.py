"""Study presets: whole stability studies (teachers x methods x seeds) as named, reproducible plans.

A preset says which teachers a study needs (trained from an architecture preset, pruned and
retrained from another teacher, or registered from a local diffusers folder), which methods
and seeds it runs, and the distillation options every job shares. It is turned into the JSON
bodies of the service's API (``POST /api/datasets``, ``/api/teachers``, ``/api/studies``);
``liftplace study run PRESET --api URL`` submits them in order.

- ``quick``: a short study for the one-command demo: the two largest shipped stability teachers
  x the stability methods x 5 seeds, a larger student (ratio 0.6) trained for a few hundred
  steps, so that its students learn within minutes on a CPU. Never a reproduction.
- ``stability``: the embedded stability study (digits, CPU): three teacher capacities (the
  largest and two pruned-and-retrained copies of it, as in the paper) x {outkd,
  outkd+featkd, lift+place+featkd} x 5 seeds, one fixed student (the largest teacher pruned at 0.9).
  Its teachers are shipped with liftplace (`liftplace.shipped`) and registered, not trained, unless
  ``--retrain`` (the same for the ablations, which use its largest teacher).
- ``ablation-*``: the paper's ablations on the largest stability teacher: Table 8 (LIFT,
  PLACE, FeatKD), the PLACE group size K (Fig. 7), L1 vs L2 coarse, curriculum on/off; each
  one study (the last three sweep their option as a study axis).
- ``celeba64``, ``cifar10``: the paper's pixel-space protocol on a GPU cluster, with a local
  diffusers DDPM teacher and a local image folder (nothing is downloaded).

Every preset runs the same options for every method: the method contract is fixed, and only
the training budget (steps, learning rate, batch) and the evaluation (FID samples, DDIM
steps) are chosen here. This module imports no torch, so the CLI and the server can read it
cheaply.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from liftplace import defaults
from liftplace.methods import AXIS_OPTIONS, METHOD_NAMES, PAPER_METHOD, get_method

__all__ = [
    "TeacherPlan",
    "StudyVariant",
    "StudyPreset",
    "STUDY_PRESETS",
    "STUDY_PRESET_NAMES",
    "STABILITY_METHODS",
    "STABILITY_OPTIONS",
    "ABLATION_OPTIONS",
    "TABLE8_METHODS",
    "get_study_preset",
]

TeacherSource = Literal["preset", "pruned", "local"]  # how a plan makes its teacher

# The three methods of the paper's Table 6 (its stability study).
STABILITY_METHODS: tuple[str, ...] = ("outkd", "outkd+featkd", PAPER_METHOD)
# The four LIFT/PLACE/FeatKD combinations of the paper's Table 8.
TABLE8_METHODS: tuple[str, ...] = ("lift", "lift+featkd", "lift+place", PAPER_METHOD)
SEEDS: tuple[int, ...] = tuple(range(defaults.SEEDS_PER_CELL))  # the paper's five tries per cell


def _braced(names: tuple[str, ...]) -> str:
    """Method names as a set in a description: "{outkd, outkd+featkd, ...}"."""
    return "{" + ", ".join(names) + "}"


def _frozen(mapping: Mapping[str, Any] | None = None) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True)
class TeacherPlan:
    """One teacher a preset needs; a preset lists them in dependency order (bases first).

    source "preset": train `preset` (an architecture of `liftplace.presets`) from scratch;
    "pruned": prune teacher `base` at `prune_ratio` (fraction of channels removed) and retrain it;
    "local": register the diffusers folder `folder` (a sub-folder of the service's teachers root).
    `train` holds the TrainOptions of the training job (steps, lr, batch_size, resolution, ...).
    `shipped`: the teacher shipped with liftplace (`liftplace.shipped`) that this very recipe
    produced; the preset registers it instead of training (a teacher trained on another CPU differs,
    see `liftplace.shipped`), unless asked to retrain (`request(..., retrain=True)`).
    """

    name: str
    source: TeacherSource
    preset: str | None = None
    base: str | None = None
    prune_ratio: float | None = None
    folder: str | None = None
    train: Mapping[str, Any] = field(default_factory=_frozen)
    shipped: str | None = None

    def __post_init__(self) -> None:
        needs = {"preset": ("preset",), "pruned": ("base", "prune_ratio"), "local": ("folder",)}
        if self.source not in needs:
            raise ValueError(f"source: expected one of {', '.join(needs)}, got {self.source!r}")
        missing = [f for f in needs[self.source] if getattr(self, f) is None]
        if missing:
            raise ValueError(f"teacher {self.name!r}: source {self.source!r} needs {', '.join(missing)}")
        if self.source == "local" and self.train:
            raise ValueError(f"teacher {self.name!r}: a local teacher is not trained; `train` must be empty")
        if self.source == "local" and self.shipped is not None:
            raise ValueError(f"teacher {self.name!r}: `shipped` names the artifact of a training recipe; a local "
                             "teacher has none")
        object.__setattr__(self, "train", _frozen(self.train))

    def uses_shipped(self, retrain: bool = False) -> bool:
        """Whether the preset registers the shipped teacher (rather than training it or a local folder)."""
        return self.shipped is not None and not retrain

    def registered_source(self, retrain: bool = False) -> str:
        """The teacher's `source` on the service once registered: "shipped", or this plan's own source."""
        return "shipped" if self.uses_shipped(retrain) else self.source

    def request(self, dataset: str, *, retrain: bool = False) -> dict[str, Any]:
        """The JSON body of ``POST /api/teachers`` for this teacher, trained on `dataset`.

        A plan with a shipped teacher registers it (``{"source": "shipped", ...}``); with `retrain`, or
        without one, the body trains the teacher by its recipe.
        """
        if self.uses_shipped(retrain):
            return {"source": "shipped", "name": self.name, "shipped": self.shipped}
        if self.source == "local":
            return {"source": "local", "name": self.name, "folder": self.folder}
        body: dict[str, Any] = {"source": self.source, "name": self.name, "dataset": dataset, **self.train}
        if self.source == "preset":
            body["preset"] = self.preset
        else:
            body.update(base_teacher=self.base, prune_ratio=self.prune_ratio)
        return body


@dataclass(frozen=True)
class StudyVariant:
    """One study of a preset: methods, option overrides, its axes, and optionally a subset of the teachers.

    `suffix` names the study (``f"{name}-{suffix}"``; ``""`` for a preset with one study). `axes`:
    option -> the values the study sweeps (`liftplace.methods.AXIS_OPTIONS`), crossed with teachers x
    methods x seeds.
    """

    suffix: str
    methods: tuple[str, ...]
    options: Mapping[str, Any] = field(default_factory=_frozen)
    teachers: tuple[str, ...] | None = None
    axes: Mapping[str, tuple[Any, ...]] = field(default_factory=_frozen)

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in METHOD_NAMES]
        if unknown or not self.methods:
            raise ValueError(f"methods: unknown or empty {unknown or list(self.methods)}; "
                             f"choose from {', '.join(METHOD_NAMES)}")
        for axis, values in self.axes.items():
            if axis not in AXIS_OPTIONS or not values:
                raise ValueError(f"axes.{axis}: expected one of {', '.join(AXIS_OPTIONS)} with at least one value")
        object.__setattr__(self, "options", _frozen(self.options))
        object.__setattr__(self, "axes", _frozen({k: tuple(v) for k, v in self.axes.items()}))

    def jobs_per_teacher_seed(self) -> int:
        """Jobs per teacher and seed: each method times the values of the axes it uses."""
        total = 0
        for m in self.methods:
            n = 1
            for axis, values in self.axes.items():
                n *= len(values) if get_method(m).uses_option(axis) else 1
            total += n
        return total


@dataclass(frozen=True)
class StudyPreset:
    """A named study plan: dataset, teachers, variants (studies), seeds, shared options.

    `label` is shown with every result of the preset (e.g. that a quick run is no reproduction).
    `options` are the DistillOptions fields every job shares (steps, lr, batch_size, resolution,
    fid_samples, sample_steps, checkpoint_every, ...); a variant's `options` override them.
    `collapse_fid`: an FID above it counts as a collapse in this preset's studies; None (default)
    takes the default of the FID's feature family (`liftplace.stats.COLLAPSE_FID`).
    """

    name: str
    description: str
    label: str
    dataset: str
    dataset_folder: str | None
    teachers: tuple[TeacherPlan, ...]
    variants: tuple[StudyVariant, ...]
    seeds: tuple[int, ...]
    student_ratio: float
    options: Mapping[str, Any]
    needs_gpu: bool = False
    collapse_fid: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", _frozen(self.options))
        if self.collapse_fid is not None:
            c = self.collapse_fid
            if isinstance(c, bool) or not isinstance(c, (int, float)) or not 0 < c < float("inf"):  # NaN fails too
                raise ValueError(f"preset {self.name!r}: collapse_fid must be a finite number > 0, got {c!r}")
            object.__setattr__(self, "collapse_fid", float(c))
        names = [t.name for t in self.teachers]
        seen: set[str] = set()
        for t in self.teachers:
            if t.source == "pruned" and t.base not in seen:
                raise ValueError(f"teachers: {t.name!r} is pruned from {t.base!r}, which must come before it")
            seen.add(t.name)
        for v in self.variants:
            stray = [t for t in (v.teachers or ()) if t not in names]
            if stray:
                raise ValueError(f"variant {v.suffix!r}: teachers {stray} are not teachers of preset {self.name!r}")
        suffixes = [v.suffix for v in self.variants]
        if len(set(suffixes)) != len(suffixes) or ("" in suffixes and len(suffixes) > 1):
            raise ValueError(f"variants: suffixes must be distinct (and '' only alone), got {suffixes}")

    def study_name(self, name: str, variant: StudyVariant) -> str:
        return f"{name}-{variant.suffix}" if variant.suffix else name

    def variant_teachers(self, variant: StudyVariant) -> tuple[str, ...]:
        return variant.teachers if variant.teachers is not None else tuple(t.name for t in self.teachers)

    def study_requests(self, name: str) -> list[dict[str, Any]]:
        """The JSON bodies of ``POST /api/studies``, one per variant, named after `name`."""
        return [
            {
                "name": self.study_name(name, v),
                "teachers": list(self.variant_teachers(v)),
                "methods": list(v.methods),
                "seeds": list(self.seeds),
                "student_ratio": self.student_ratio,
                "dataset": self.dataset,
                **({"collapse_fid": self.collapse_fid} if self.collapse_fid is not None else {}),
                **self.options,
                **v.options,
                **({"axes": {k: list(vals) for k, vals in v.axes.items()}} if v.axes else {}),
            }
            for v in self.variants
        ]

    def dataset_request(self) -> dict[str, Any] | None:
        """The JSON body of ``POST /api/datasets`` (None for the embedded digits)."""
        if self.dataset_folder is None:
            return None
        body: dict[str, Any] = {"name": self.dataset, "folder": self.dataset_folder,
                                "description": f"image folder of study preset {self.name!r}"}
        if self.options.get("resolution") is not None:
            body["resolution"] = self.options["resolution"]
        return body

    def teacher_requests(self, *, retrain: bool = False) -> list[dict[str, Any]]:
        """The JSON bodies of ``POST /api/teachers``, bases first (`retrain`: train the shipped ones afresh)."""
        return [t.request(self.dataset, retrain=retrain) for t in self.teachers]

    @property
    def ships_teachers(self) -> bool:
        """Whether some of its teachers are shipped with liftplace (``--retrain`` trains them instead)."""
        return any(t.shipped is not None for t in self.teachers)

    @property
    def jobs(self) -> int:
        """Distillation jobs over all variants (teacher training jobs not counted)."""
        return sum(len(self.variant_teachers(v)) * v.jobs_per_teacher_seed() * len(self.seeds) for v in self.variants)


# --- embedded (digits, CPU) ------------------------------------------------------------------------
# 8x8, the native digits: a quarter of 16x16's pixels per step, and K = 16 still divides H*W
# (four PLACE groups per channel). See docs/results.md for the calibration behind these numbers:
# the budget (steps, lr, schedule) keeps the study under two hours on the 2-core machine of that
# page (about an hour there; about three hours on a CPU three times slower per step).
DIGITS_RESOLUTION: int = defaults.DIGITS_RESOLUTION

STABILITY_TEACHER_PRESET: str = "digits-s"
STABILITY_TEACHER: str = "stability-digits-s"
STABILITY_TEACHER_TRAIN: Mapping[str, Any] = _frozen(
    {"steps": 4000, "lr": 5e-4, "batch_size": 64, "resolution": DIGITS_RESOLUTION, "checkpoint_every": 500})
STABILITY_PRUNED_TRAIN: Mapping[str, Any] = _frozen(
    {"steps": 1500, "lr": 5e-4, "batch_size": 64, "resolution": DIGITS_RESOLUTION, "checkpoint_every": 500})
STABILITY_PRUNE_RATIOS: tuple[float, ...] = (0.5, 0.7)  # the smaller teachers: channels removed from the largest
STABILITY_OPTIONS: Mapping[str, Any] = _frozen({
    # lr 1e-2 decayed to 0 by a cosine: at a constant rate the students were still improving at
    # 6000 steps; with the decay they reach the end of their schedule within the 2-hour budget.
    "steps": 4000,
    "lr": 1e-2,
    "lr_schedule": "cosine",
    "batch_size": 64,
    "resolution": DIGITS_RESOLUTION,
    "fid_samples": 1000,
    "sample_steps": 50,
    "checkpoint_every": 500,
    # One fixed student for every teacher, as in the paper: pruned from the largest teacher.
    "student_teacher": STABILITY_TEACHER,
    # The FeatKD hook set the published study (docs/results.md) was measured with, kept so that its
    # command reproduces it; the library's default is now the authors' set ("sublayers").
    "featkd_layers": "blocks",
})
# The ablations' budget: the one their published results (docs/results.md, section 2) were measured
# with, kept so that their commands reproduce them. Shorter than the stability study's: the students
# had not converged at it.
ABLATION_OPTIONS: Mapping[str, Any] = _frozen({
    "steps": 800,
    "lr": 3e-3,
    "batch_size": 64,
    "resolution": DIGITS_RESOLUTION,
    "fid_samples": 1000,
    "sample_steps": 50,
    "checkpoint_every": 200,
    "featkd_layers": "blocks",  # as measured (see STABILITY_OPTIONS)
})

# The regime map: the learning rate (the stability study's 1e-2 and ten times less) crossed with the
# coarse distance (the authors' DDPM default L1, and the L2 their DiT path hard-codes), against OutKD.
REGIME_METHODS: tuple[str, ...] = ("outkd", PAPER_METHOD)
REGIME_AXES: Mapping[str, tuple[Any, ...]] = _frozen({"lr": (1e-3, 1e-2), "coarse": defaults.COARSE_DISTANCES})


def _pruned_name(base: str, ratio: float) -> str:
    return f"{base}-p{round(100 * ratio)}"


def _capacity_teachers(largest: TeacherPlan, ratios: tuple[float, ...], train: Mapping[str, Any], *,
                       shipped: bool = False) -> tuple[TeacherPlan, ...]:
    """The largest teacher and its pruned-and-retrained copies (the paper's capacity study).

    `shipped`: each copy is shipped with liftplace under its own name (as the largest must be too).
    """
    pruned = tuple(TeacherPlan(name, "pruned", base=largest.name, prune_ratio=r, train=train,
                               shipped=name if shipped else None)
                   for r in ratios for name in (_pruned_name(largest.name, r),))
    return (largest, *pruned)


# The stability teachers are shipped with liftplace (`liftplace/shipped/`, made by
# scripts/ship_teachers.py from exactly these plans): every preset that uses them registers those
# files, so its students distil from the same teacher on every machine; `--retrain` trains them here.
_STABILITY_LARGEST = TeacherPlan(STABILITY_TEACHER, "preset", preset=STABILITY_TEACHER_PRESET,
                                 train=STABILITY_TEACHER_TRAIN, shipped=STABILITY_TEACHER)
_STABILITY_TEACHERS = _capacity_teachers(_STABILITY_LARGEST, STABILITY_PRUNE_RATIOS, STABILITY_PRUNED_TRAIN,
                                         shipped=True)

# The teacher-seed spread: the largest stability teacher's recipe trained again with other seeds (on
# this machine: these teachers are not shipped), to see whether "method A beats B" holds across teachers.
TEACHER_SEEDS: tuple[int, ...] = (0, 1, 2)
_SEEDED_TEACHERS: tuple[TeacherPlan, ...] = (_STABILITY_LARGEST, *(
    TeacherPlan(f"{STABILITY_TEACHER}-seed{s}", "preset", preset=STABILITY_TEACHER_PRESET,
                train={**STABILITY_TEACHER_TRAIN, "seed": s}) for s in TEACHER_SEEDS[1:]))

# The quick demo: the two largest shipped stability teachers (no teacher to train), a larger student
# than the stability study's (ratio 0.6: 171,634 parameters, 15% of the largest teacher's, against
# 10,801 at 0.9) and a short cosine schedule at a rate suited to it. The calibration behind it is in
# docs/results.md (section 4): within a few hundred steps the paper's method stays above the digits
# collapse threshold at ratio 0.9 whatever the rate, and lr 1e-2 (right for 4,000 steps) is too high.
QUICK_TEACHERS: tuple[TeacherPlan, ...] = _STABILITY_TEACHERS[:2]
QUICK_STUDENT_RATIO: float = 0.6
QUICK_OPTIONS: Mapping[str, Any] = _frozen({
    "steps": 150,
    "lr": 3e-3,
    "lr_schedule": "cosine",
    "batch_size": 64,
    "resolution": DIGITS_RESOLUTION,
    # 500 samples: at 200 the FID's small-sample bias added about 5 to a student of about 25.
    "fid_samples": 500,
    "sample_steps": 20,
    "checkpoint_every": 0,
    "student_teacher": STABILITY_TEACHER,
})
QUICK_LABEL: str = f"quick run: short training of a larger student (ratio {QUICK_STUDENT_RATIO}), not a reproduction"
EMBEDDED_LABEL: str = ("embedded digits study (8x8, CPU): tiny models and a digits-feature FID; "
                       "not comparable with the paper's CelebA numbers")


SMOKE_TRAIN: Mapping[str, Any] = _frozen(
    {"steps": 20, "lr": 1e-3, "batch_size": 16, "resolution": DIGITS_RESOLUTION, "checkpoint_every": 0,
     "fid_samples": 32, "sample_steps": 4})
SMOKE_METHODS: tuple[str, ...] = ("outkd", PAPER_METHOD)
SMOKE_OPTIONS: Mapping[str, Any] = _frozen({
    "steps": 10, "lr": 1e-3, "batch_size": 16, "resolution": DIGITS_RESOLUTION, "fid_samples": 32,
    "sample_steps": 4, "checkpoint_every": 0,
})


def _ablation(name: str, description: str, variants: tuple[StudyVariant, ...],
              options: Mapping[str, Any] = ABLATION_OPTIONS) -> StudyPreset:
    """A study of variants on the largest stability teacher, by default with the ablations' budget."""
    return StudyPreset(
        name=name, description=description, label=EMBEDDED_LABEL, dataset="digits", dataset_folder=None,
        teachers=(_STABILITY_LARGEST,), variants=variants, seeds=SEEDS,
        student_ratio=defaults.STUDENT_RATIO, options=options,
    )


# --- GPU presets: the paper's pixel-space protocol ------------------------------------------------
# Linear betas, T = 1000, Adam 2e-4, EMA 0.9999, batch 128, 500K iterations at 90% pruning,
# DDIM 100 steps, FID on 50K samples with Inception features (the dispatcher picks Inception for
# image-folder datasets). lambda_kd stays the method's default (1.0 at 90% pruning, L1 coarse).
PAPER_STEPS: int = 500_000
PAPER_BATCH: int = 128
PAPER_FID_SAMPLES: int = 50_000
PAPER_CHECKPOINT_EVERY: int = 5_000
PAPER_PRUNED_TEACHER_STEPS: int = 200_000  # retraining of the smaller teachers (our choice; the paper gives none)
CELEBA_PRUNE_RATIOS: tuple[float, ...] = (0.5, 0.55, 0.66)  # aimed at 19.7M, 16.6M, 9.2M of the 78.7M teacher


def _gpu_options(resolution: int) -> Mapping[str, Any]:
    return _frozen({
        "steps": PAPER_STEPS,
        "lr": defaults.LEARNING_RATE,
        "batch_size": PAPER_BATCH,
        "resolution": resolution,
        "fid_samples": PAPER_FID_SAMPLES,
        "sample_steps": defaults.DDIM_STEPS,
        "checkpoint_every": PAPER_CHECKPOINT_EVERY,
    })


def _gpu_train(resolution: int) -> Mapping[str, Any]:
    return _frozen({"steps": PAPER_PRUNED_TEACHER_STEPS, "lr": defaults.LEARNING_RATE, "batch_size": PAPER_BATCH,
                    "resolution": resolution, "checkpoint_every": PAPER_CHECKPOINT_EVERY})


_CELEBA_TEACHER = TeacherPlan("celeba64-78.7m", "local", folder="ddpm-celeba64")
_CIFAR_TEACHER = TeacherPlan("ddpm-cifar10-32", "local", folder="ddpm-cifar10-32")


STUDY_PRESETS: dict[str, StudyPreset] = {
    p.name: p
    for p in (
        StudyPreset(
            name="quick",
            description="A short stability study (2 shipped teacher capacities x 3 methods x 5 seeds): a larger "
                        f"student (ratio {QUICK_STUDENT_RATIO}) than the stability study's, trained for "
                        f"{QUICK_OPTIONS['steps']} steps, so that it learns within minutes on a laptop CPU.",
            label=QUICK_LABEL,
            dataset="digits",
            dataset_folder=None,
            teachers=QUICK_TEACHERS,
            variants=(StudyVariant("", STABILITY_METHODS),),
            seeds=SEEDS,
            student_ratio=QUICK_STUDENT_RATIO,
            options=QUICK_OPTIONS,
        ),
        StudyPreset(
            name="stability",
            description="Embedded stability study (the paper's Table 6 at digits scale): a digits-s teacher and "
                        f"two pruned-and-retrained copies x {_braced(STABILITY_METHODS)} x 5 seeds, "
                        "one fixed student for every teacher as in the paper: the largest teacher pruned at 0.9 "
                        "(Diff-Pruning, Taylor).",
            label=EMBEDDED_LABEL,
            dataset="digits",
            dataset_folder=None,
            teachers=_STABILITY_TEACHERS,
            variants=(StudyVariant("", STABILITY_METHODS),),
            seeds=SEEDS,
            student_ratio=defaults.STUDENT_RATIO,
            options=STABILITY_OPTIONS,
        ),
        _ablation("ablation-table8", "The paper's Table 8: LIFT, LIFT+FeatKD, LIFT+PLACE, LIFT+PLACE+FeatKD on "
                  "the largest stability teacher.", (StudyVariant("", TABLE8_METHODS),)),
        _ablation("ablation-group-size", "PLACE group size K in {4, 16, 64} (the paper's Fig. 7) with "
                  f"{PAPER_METHOD}; at 8x8, K = 64 is one group (LIFT).",
                  (StudyVariant("", (PAPER_METHOD,), axes={"group_size": (4, 16, 64)}),)),
        _ablation("ablation-coarse", f"L1 vs L2 coarse distance with {PAPER_METHOD}.",
                  (StudyVariant("", (PAPER_METHOD,), axes={"coarse": defaults.COARSE_DISTANCES}),)),
        _ablation("ablation-curriculum", "The adaptive coarse-to-fine weight w on and off (w = 1) with "
                  f"{PAPER_METHOD}.",
                  (StudyVariant("", (PAPER_METHOD,), axes={"curriculum": (True, False)}),)),
        _ablation("regime-map", "Where does the paper's method beat OutKD at embedded scale? The largest stability "
                  f"teacher, the stability study's student and budget, {_braced(REGIME_METHODS)} x lr "
                  f"{_braced(tuple(map(str, REGIME_AXES['lr'])))} x coarse distance "
                  f"{_braced(REGIME_AXES['coarse'])} (OutKD has no coarse term: one cell per lr) x 5 seeds.",
                  (StudyVariant("", REGIME_METHODS, axes=REGIME_AXES),), options=STABILITY_OPTIONS),
        StudyPreset(
            name="teacher-seeds",
            description="How much of the answer is the teacher's: the largest stability teacher (shipped, seed 0) "
                        f"and the same recipe trained with seeds {_braced(tuple(map(str, TEACHER_SEEDS[1:])))} x "
                        f"{_braced(STABILITY_METHODS)} x student seed 0, at the stability study's budget; each "
                        "student is pruned from its own teacher.",
            label=EMBEDDED_LABEL,
            dataset="digits",
            dataset_folder=None,
            teachers=_SEEDED_TEACHERS,
            variants=(StudyVariant("", STABILITY_METHODS),),
            seeds=(0,),
            student_ratio=defaults.STUDENT_RATIO,
            options=_frozen({k: v for k, v in STABILITY_OPTIONS.items() if k != "student_teacher"}),
        ),
        StudyPreset(
            name="smoke",
            description="A plumbing check in about a minute: the test-sized teacher and a pruned copy x "
                        f"{_braced(SMOKE_METHODS)} x 2 seeds, a few steps each.",
            label="smoke test: checks the pipeline only; the numbers mean nothing",
            dataset="digits",
            dataset_folder=None,
            teachers=_capacity_teachers(
                TeacherPlan("smoke-tiny", "preset", preset="tiny", train=SMOKE_TRAIN), (0.5,), SMOKE_TRAIN),
            variants=(StudyVariant("", SMOKE_METHODS),),
            seeds=(0, 1),
            student_ratio=defaults.STUDENT_RATIO,
            options=SMOKE_OPTIONS,
        ),
        StudyPreset(
            name="celeba64",
            description="The paper's Table 6 on a GPU cluster: the 78.7M CelebA 64x64 DDPM (a local diffusers "
                        f"folder) and three pruned-and-retrained copies x {_braced(STABILITY_METHODS)} "
                        "x 5 seeds, one 90%-pruned student (pruned from the 78.7M teacher), "
                        "500K steps, Inception FID on 50K DDIM-100 samples.",
            label="the paper's protocol (CelebA 64x64, Inception FID on 50K samples)",
            dataset="celeba64",
            dataset_folder="celeba",
            teachers=_capacity_teachers(_CELEBA_TEACHER, CELEBA_PRUNE_RATIOS, _gpu_train(64)),
            variants=(StudyVariant("", STABILITY_METHODS),),
            seeds=SEEDS,
            student_ratio=defaults.STUDENT_RATIO,
            # the paper's fixed student: pruned from the 78.7M teacher, distilled from each of the four
            options=_frozen({**_gpu_options(64), "student_teacher": _CELEBA_TEACHER.name}),
            needs_gpu=True,
        ),
        StudyPreset(
            name="cifar10",
            description="The stability protocol on CIFAR-10 32x32: a local diffusers DDPM teacher (e.g. the "
                        f"35.7M CIFAR-10 DDPM) x {_braced(STABILITY_METHODS)} x 5 seeds, 90%-pruned "
                        "students, 500K steps, Inception FID on 50K DDIM-100 samples.",
            label="the paper's protocol on CIFAR-10 32x32 (Inception FID on 50K samples)",
            dataset="cifar10",
            dataset_folder="cifar10",
            teachers=(_CIFAR_TEACHER,),
            variants=(StudyVariant("", STABILITY_METHODS),),
            seeds=SEEDS,
            student_ratio=defaults.STUDENT_RATIO,
            options=_gpu_options(32),
            needs_gpu=True,
        ),
    )
}
STUDY_PRESET_NAMES: tuple[str, ...] = tuple(STUDY_PRESETS)


def get_study_preset(name: str) -> StudyPreset:
    """The preset called `name`; ValueError naming the known presets otherwise."""
    try:
        return STUDY_PRESETS[name]
    except KeyError:
        raise ValueError(f"preset: unknown study preset {name!r}; choose one of {', '.join(STUDY_PRESET_NAMES)}"
                         ) from None
