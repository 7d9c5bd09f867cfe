"""FID through torch-fidelity: digits sanity ordering, inputs, caching, Inception, CLI."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision.transforms.functional as TF

from liftplace import features as feat
from liftplace import fid as fidmod
from liftplace.data import load_digits
from liftplace.fid import DivergedSamplesError, FidResult, compute_fid, fid_between, reference_cache_name
from liftplace.sampling import to_uint8

pytestmark = pytest.mark.usefixtures("one_thread")  # the shared fixtures are in tests/conftest.py


@pytest.fixture(scope="module")
def halves(digits_weights):
    """The 1,797 digits split at random into two halves (real set A, real set B)."""
    x = load_digits(8)
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))
    return x[perm[:898]], x[perm[898:]]


@pytest.fixture(scope="module")
def real_vs_real(halves):
    return fid_between(*halves).fid


def _write_pngs(images: torch.Tensor, folder) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(to_uint8(images)):
        Image.fromarray(img[0].numpy(), mode="L").save(folder / f"{i:05d}.png")


# --- sanity of the digits FID ------------------------------------------------------------------


def test_real_vs_real_is_small(real_vs_real):
    assert 0 <= real_vs_real < 10


def test_real_vs_noise_is_large(halves, real_vs_real):
    a, b = halves
    noise = torch.rand(a.shape, generator=torch.Generator().manual_seed(1)) * 2 - 1
    value = fid_between(noise, b).fid
    assert value > 100
    assert value > 20 * real_vs_real


def test_fid_rises_monotonically_with_noise(halves, real_vs_real):
    a, b = halves
    g = torch.Generator().manual_seed(2)
    values = [real_vs_real]
    for sigma in (0.1, 0.2, 0.4, 0.8):
        values.append(fid_between((a + sigma * torch.randn(a.shape, generator=g)).clamp(-1, 1), b).fid)
    assert values == sorted(values) and len(set(values)) == len(values), values


def test_fid_rises_monotonically_with_blur(halves, real_vs_real):
    a, b = halves
    values = [real_vs_real]
    for sigma in (0.5, 0.8, 1.2, 2.0):
        values.append(fid_between(TF.gaussian_blur(a, kernel_size=5, sigma=sigma), b).fid)
    assert values == sorted(values) and len(set(values)) == len(values), values


# --- results name their features -------------------------------------------------------------------


def test_result_names_its_features(halves):
    r = fid_between(*halves, kid=True, prc=True, kid_subsets=5)
    assert isinstance(r, FidResult)
    assert r.metric_name == "fid_digits" and r.features == "digits" and r.feature_layer == "64"
    assert r.num_samples == 898 and r.num_reference == 899
    assert set(r.metrics()) == {"fid_digits", "kid_digits_mean", "kid_digits_std", "precision_digits",
                                "recall_digits", "f_score_digits"}
    assert 0.8 < r.precision <= 1 and 0.8 < r.recall <= 1
    assert str(r).startswith("fid_digits = ")
    assert json.loads(json.dumps(r.to_dict()))["fid_digits"] == r.fid
    assert fid_between(*halves).kid_mean is None  # KID and PRC only on request


def test_kid_separates_real_from_noise(halves):
    a, b = halves
    noise = torch.rand(a.shape, generator=torch.Generator().manual_seed(1)) * 2 - 1
    real = fid_between(a, b, kid=True, kid_subsets=10, kid_subset_size=500)
    fake = fid_between(noise, b, kid=True, kid_subsets=10, kid_subset_size=500)
    assert fake.kid_mean > 100 * abs(real.kid_mean)


# --- inputs --------------------------------------------------------------------------------------


def test_folder_of_images_equals_tensor(halves, tmp_path):
    a, b = halves
    _write_pngs(a[:300], tmp_path / "samples")
    from_folder = compute_fid(tmp_path / "samples", b)
    from_tensor = fid_between(a[:300], b)
    assert from_folder.num_samples == 300
    assert from_folder.fid == pytest.approx(from_tensor.fid, rel=1e-5)
    assert compute_fid(tmp_path / "samples", b, num_samples=100).num_samples == 100
    with pytest.raises(ValueError, match="holds 300 images"):
        compute_fid(tmp_path / "samples", b, num_samples=301)


def test_uint8_and_float_inputs_agree(halves):
    a, b = halves
    assert fid_between(to_uint8(a), to_uint8(b)).fid == pytest.approx(fid_between(a, b).fid, rel=1e-6)


def test_digits_dataset_by_name(halves):
    a, _ = halves
    r = compute_fid(a, "digits")
    assert r.dataset == "digits" and r.num_reference == 1797
    assert 0 <= r.fid < 10


def test_model_samples_are_seeded(tmp_path, digits_weights):
    from liftplace.models import build_unet, save_unet

    model = build_unet("tiny", seed=0)
    kw = dict(num_samples=24, num_inference_steps=2, batch_size=16)
    first = compute_fid(model, "digits", seed=3, **kw)
    assert first.num_samples == 24 and first.fid > 10  # an untrained model is far from the digits
    assert compute_fid(model, "digits", seed=3, **kw).fid == pytest.approx(first.fid, rel=1e-5)
    assert compute_fid(model, "digits", seed=4, **kw).fid != pytest.approx(first.fid, rel=1e-5)
    save_unet(model, tmp_path / "model")
    assert compute_fid(tmp_path / "model", "digits", seed=3, **kw).fid == pytest.approx(first.fid, rel=1e-4)
    with pytest.raises(ValueError, match="num_samples"):
        compute_fid(model, "digits")


def test_diverged_samples_raise(halves):
    a, b = halves
    bad = a.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(DivergedSamplesError, match="NaN"):
        fid_between(bad, b)


def test_bad_inputs_are_refused(halves, tmp_path):
    a, b = halves
    with pytest.raises(ValueError, match="features"):
        fid_between(a, b, features="clip")
    with pytest.raises(ValueError, match="neither an embedded dataset"):
        compute_fid(a, "mnist")
    with pytest.raises(ValueError, match="multiple of 8"):
        compute_fid(a, "digits", resolution=12)
    assert compute_fid(a[:, :, :6, :6], "digits").fid > 0  # odd sizes: the digits reference stays at 8x8
    with pytest.raises(ValueError, match=r"\[N >= 2"):
        fid_between(a[0], b)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="at least 2"):
        compute_fid(tmp_path / "empty", b)


# --- reference statistics: computed once, never stale --------------------------------------------


def test_reference_statistics_are_computed_once(halves, isolated_cache, monkeypatch):
    import torch_fidelity.utils as tfu

    a, _ = halves
    calls = []
    original = tfu.get_featuresdict_from_dataset

    def counting(input, *args, **kwargs):
        calls.append(len(input))
        return original(input, *args, **kwargs)

    monkeypatch.setattr(tfu, "get_featuresdict_from_dataset", counting)
    first = compute_fid(a, "digits")
    assert sorted(calls) == [898, 1797]  # samples and reference
    calls.clear()
    second = compute_fid(a, "digits")
    assert calls == [898]  # the reference statistics came from the cache
    assert second.fid == pytest.approx(first.fid, rel=1e-9)
    cached = sorted(p.name for p in (isolated_cache / fidmod.FID_CACHE_SUBDIR).glob("*.pt"))
    assert cached and all(name.startswith(first.reference_key) for name in cached)
    assert any("-stat-fid-" in name for name in cached)
    stats = fidmod.reference_statistics("digits")
    assert stats["mu"].shape == (64,) and stats["sigma"].shape == (64, 64)
    calls.clear()
    compute_fid(a, "digits", cache=False)
    assert sorted(calls) == [898, 1797]


def test_changed_dataset_or_extractor_changes_the_key(halves, isolated_cache, monkeypatch, tmp_path):
    a, b = halves
    key = reference_cache_name(b)
    assert reference_cache_name(b.clone()) == key
    changed = b.clone()
    changed[0, 0, 0, 0] = 1.0 if b[0, 0, 0, 0] < 0 else -1.0
    assert reference_cache_name(changed) != key
    assert reference_cache_name("digits") != reference_cache_name("digits", resolution=16)
    _write_pngs(b[:20], tmp_path / "ref")
    folder_key = reference_cache_name(tmp_path / "ref", resolution=8)
    _write_pngs(b[20:21], tmp_path / "ref")  # one file rewritten with other content
    (tmp_path / "ref" / "00000.png").rename(tmp_path / "ref" / "99999.png")
    assert reference_cache_name(tmp_path / "ref", resolution=8) != folder_key
    monkeypatch.setattr(fidmod, "feature_extractor_fingerprint", lambda features: "another-extractor")
    assert reference_cache_name(b) != key


def test_stale_statistics_are_never_reused(halves, isolated_cache):
    a, b = halves
    fid_between(a, b)  # caches the statistics of b
    changed = b.clone()
    changed[:100] = -1.0  # a hundred blank images
    cached = fid_between(a, changed)
    fresh = fid_between(a, changed, cache=False)
    assert cached.fid == pytest.approx(fresh.fid, rel=1e-9)
    assert cached.fid > fid_between(a, b).fid


# --- Inception -----------------------------------------------------------------------------------


def test_inception_fid_without_weights_is_a_clear_error(halves, no_inception):
    a, b = halves
    with pytest.raises(feat.InceptionWeightsMissing, match=feat.INCEPTION_WEIGHTS_FILE) as info:
        fid_between(a, b, features="inception")
    assert feat.INCEPTION_WEIGHTS_ENV in str(info.value)


def test_inception_fid_with_local_weights_never_downloads(halves, no_inception, tmp_path, monkeypatch):
    """A stand-in weights file (randomly initialised Inception) exercises the whole path offline."""
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    torch.save({}, tmp_path / "empty.pth")
    with monkeypatch.context() as m:
        m.setattr(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            net = fe.FeatureExtractorInceptionV3(feat.INCEPTION_EXTRACTOR_NAME, ["64"],
                                                 feature_extractor_weights_path=str(tmp_path / "empty.pth"))
    weights = tmp_path / feat.INCEPTION_WEIGHTS_FILE
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in net.state_dict().items()}, weights)
    del net

    def no_download(*args, **kwargs):
        raise AssertionError("torch-fidelity tried to download the Inception weights")

    monkeypatch.setattr(fe, "load_state_dict_from_url", no_download)
    monkeypatch.setenv(feat.INCEPTION_WEIGHTS_ENV, str(weights))
    a, b = halves
    r = fid_between(a[:6], b[:6], features="inception", feature_layer="64")
    assert r.metric_name == "fid_inception" and r.features == "inception"
    assert r.fid == r.fid and r.fid >= -1e-6  # a number, not NaN
    assert str(r).startswith("fid_inception = ")


# --- CLI -------------------------------------------------------------------------------------------


def test_cli_fid_on_a_folder(halves, tmp_path, capsys):
    from liftplace.cli_eval import main

    a, _ = halves
    _write_pngs(a[:200], tmp_path / "samples")
    out_json = tmp_path / "r.json"
    assert main(["fid", "--samples", str(tmp_path / "samples"), "--dataset", "digits", "--quiet",
                 "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("fid_digits = ") and "200 samples vs 1797" in out
    assert json.loads(out_json.read_text())["features"] == "digits"


def test_cli_fid_on_a_model(tmp_path, capsys, digits_weights):
    from liftplace.cli_eval import main
    from liftplace.models import build_unet, save_unet

    save_unet(build_unet("tiny", seed=0), tmp_path / "m")
    assert main(["fid", "--model", str(tmp_path / "m"), "--num-samples", "16", "--steps", "2", "--quiet"]) == 0
    assert "fid_digits = " in capsys.readouterr().out


def test_cli_fid_inception_missing_weights_exits_2(halves, tmp_path, no_inception, capsys):
    from liftplace.cli_eval import main

    _write_pngs(halves[0][:4], tmp_path / "s")
    with pytest.raises(SystemExit) as info:
        main(["fid", "--samples", str(tmp_path / "s"), "--features", "inception", "--quiet"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert feat.INCEPTION_WEIGHTS_FILE in err and feat.INCEPTION_WEIGHTS_ENV in err


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["fid", "--samples", "/nonexistent-dir"], "is not a directory"),
        (["fid", "--model", ".", "--num-samples", "1"], "integer >= 2"),
        (["fid", "--samples", ".", "--features", "clip"], "invalid choice"),
        (["fid", "--dataset", "digits"], "one of the arguments --model --samples is required"),
    ],
)
def test_cli_fid_bad_values_exit_2(argv, needle, capsys):
    from liftplace.cli_eval import main

    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert needle in capsys.readouterr().err


def test_cli_fid_help_states_defaults(capsys):
    from liftplace.cli_eval import main

    with pytest.raises(SystemExit):
        main(["fid", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: digits)" in out and "(default: 100)" in out and "default: 1000 with --model" in out
