"""The seven distillation methods of LIFT and PLACE, defined once.

Every other part (CLI, training loop, API schema, web form, docs) imports `METHODS`
or `get_method` from here rather than spelling method names itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from liftplace import defaults


@dataclass(frozen=True)
class MethodSpec:
    """One distillation method: which output loss, whether FeatKD, default weights.

    `kd` is "none" (plain fine-tuning), "outkd", "lift" (one group per sample and
    channel) or "lift+place" (groups of K positions ranked by error).
    """

    name: str
    kd: str
    featkd: bool
    lambda_diff: float
    lambda_kd: float
    lambda_feat: float
    description: str

    @property
    def uses_lift(self) -> bool:
        return self.kd in ("lift", "lift+place")

    @property
    def uses_place(self) -> bool:
        return self.kd == "lift+place"

    def uses_option(self, option: str) -> bool:
        """Whether the method's loss reads the distillation option `option` (a DistillOptions field name).

        LIFT's own options (coarse distance, curriculum, ablation) need LIFT, the group size needs PLACE,
        lambda_kd an output KD term, lambda_feat FeatKD; every other option (lr, steps, ...) is used by all.
        A study axis over an option a method ignores does not multiply that method's jobs.
        """
        needs = {"coarse": self.uses_lift, "curriculum": self.uses_lift, "ablation": self.uses_lift,
                 "group_size": self.uses_place, "lambda_kd": self.kd != "none", "lambda_feat": self.featkd}
        return needs.get(option, True)


def _spec(name: str, kd: str, featkd: bool, description: str) -> MethodSpec:
    return MethodSpec(
        name=name,
        kd=kd,
        featkd=featkd,
        lambda_diff=defaults.LAMBDA_DIFF,
        lambda_kd=0.0 if kd == "none" else defaults.LAMBDA_KD,
        lambda_feat=defaults.LAMBDA_FEAT if featkd else 0.0,
        description=description,
    )


PAPER_METHOD: str = "lift+place+featkd"  # the paper's full method, the default everywhere

# FeatKD's hook sets (`liftplace.losses.feature_layers`), each with its own adapters:
# "sublayers": every ResNet block, attention block and down/up-sampling conv, bias-free 1x1 adapters
#   initialised U(-0.005, 0.005): what the LIFT and PLACE code runs (its Diff-Pruning experiments);
# "blocks": whole down/mid/up blocks, 1x1 adapters with bias and PyTorch's default initialisation
#   (liftplace's setup before the option existed; the embedded studies published up to then used it).
FEATKD_LAYER_SETS: tuple[str, ...] = ("sublayers", "blocks")
FEATKD_LAYERS: str = "sublayers"

METHODS: dict[str, MethodSpec] = {
    m.name: m
    for m in (
        _spec("finetune", "none", False, "Diffusion loss only: the pruned student retrained without a teacher."),
        _spec("outkd", "outkd", False, "Output KD: squared error between student and teacher noise predictions."),
        _spec("outkd+featkd", "outkd", True, "OutKD plus FitNet feature distillation on matching UNet blocks."),
        _spec("lift", "lift", False, "LIFT: a line per sample and channel, pushed to identity, then the residual."),
        _spec("lift+featkd", "lift", True, "LIFT plus FitNet feature distillation."),
        _spec("lift+place", "lift+place", False, "LIFT in groups of K positions ranked by teacher-student error."),
        _spec(PAPER_METHOD, "lift+place", True, "The paper's full method: LIFT+PLACE plus FeatKD."),
    )
}

METHOD_NAMES: tuple[str, ...] = tuple(METHODS)

# The options a study can sweep (its `axes`: a list of values each, crossed with teachers x methods x seeds),
# in the order a study lays its axes out.
AXIS_OPTIONS: tuple[str, ...] = ("lr", "lr_schedule", "steps", "student_ratio", "coarse", "group_size", "curriculum",
                                 "ablation", "lambda_kd", "lambda_feat")


def get_method(name: str) -> MethodSpec:
    """Return the spec of `name`; ValueError naming the valid methods otherwise."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(
            f"method: unknown method {name!r}; choose one of {', '.join(METHOD_NAMES)}"
        ) from None
