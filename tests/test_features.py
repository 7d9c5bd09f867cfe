"""The digits CNN feature extractor and the Inception weights lookup (no network, no downloads)."""

from __future__ import annotations

import pytest
import torch

from liftplace import features as feat
from liftplace.data import load_digits
from liftplace.sampling import to_uint8

pytestmark = pytest.mark.usefixtures("one_thread")  # the shared fixtures are in tests/conftest.py


def _digit_labels(split: str) -> torch.Tensor:
    from sklearn.datasets import load_digits as sk

    y = torch.from_numpy(sk().target)
    idx = torch.arange(y.shape[0])
    return y[idx % 5 == 0] if split == "test" else y[idx % 5 != 0]


def test_classifier_beats_97_percent_on_held_out_digits(digits_weights):
    clf = feat.load_digits_classifier(digits_weights)
    x = to_uint8(load_digits(8, split="test"))
    with torch.no_grad():
        _, logits = clf.model(x.float() / 127.5 - 1.0)
    accuracy = (logits.argmax(1) == _digit_labels("test")).float().mean().item()
    assert accuracy > 0.97
    assert accuracy == pytest.approx(clf.test_accuracy)  # the number stored with the weights is the real one
    assert clf.recipe == feat.DIGITS_RECIPE


def test_training_is_deterministic():
    recipe = {**feat.DIGITS_RECIPE, "epochs": 1}
    a = feat.train_digits_classifier(recipe).model.state_dict()
    b = feat.train_digits_classifier(recipe).model.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_training_leaves_global_rng_and_threads_alone():
    threads = torch.get_num_threads()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    feat.train_digits_classifier({**feat.DIGITS_RECIPE, "epochs": 1})
    assert torch.equal(torch.rand(3), expected)
    assert torch.get_num_threads() == threads


def test_weights_are_cached_and_keyed_by_recipe(isolated_cache, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("the cached weights should have been used")

    path = feat.digits_classifier_path()
    assert path.parent == isolated_cache / "features" and path.is_file()
    monkeypatch.setattr(feat, "train_digits_classifier", no_training)
    assert feat.ensure_digits_classifier() == path
    other = feat.digits_classifier_path({**feat.DIGITS_RECIPE, "seed": 1})
    assert other != path and not other.exists()
    with pytest.raises(AssertionError, match="cached weights"):
        feat.ensure_digits_classifier({**feat.DIGITS_RECIPE, "seed": 1})  # a new recipe trains anew


def test_low_accuracy_classifier_is_refused(isolated_cache, monkeypatch):
    bad = feat.DigitsClassifier(model=feat.DigitsCNN(), test_accuracy=0.5, recipe=feat.DIGITS_RECIPE)
    monkeypatch.setattr(feat, "train_digits_classifier", lambda recipe=None, progress=False: bad)
    with pytest.raises(RuntimeError, match="accuracy 0.5000 is below 0.97"):
        feat.ensure_digits_classifier({**feat.DIGITS_RECIPE, "seed": 99})
    assert not feat.digits_classifier_path({**feat.DIGITS_RECIPE, "seed": 99}).exists()


def test_extractor_is_registered_with_torch_fidelity(digits_weights):
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    cls = feat.digits_extractor_class()
    assert FEATURE_EXTRACTORS_REGISTRY[feat.DIGITS_EXTRACTOR_NAME] is cls
    assert feat.DigitsFeatureExtractor is cls
    assert cls.get_default_feature_layer_for_metric("fid") == feat.DIGITS_FEATURE_LAYER
    extractor = cls(feat.DIGITS_EXTRACTOR_NAME, [feat.DIGITS_FEATURE_LAYER, "logits"],
                    feature_extractor_weights_path=str(digits_weights))
    x = to_uint8(load_digits(8)[:10])
    f64, logits = extractor(x)
    assert f64.shape == (10, 64) and logits.shape == (10, 10)
    feat.register_extractors()  # idempotent
    assert FEATURE_EXTRACTORS_REGISTRY[feat.DIGITS_EXTRACTOR_NAME] is cls


def test_extractor_accepts_rgb_and_larger_images(digits_weights):
    x = to_uint8(load_digits(8)[:20])
    big_rgb = x.repeat_interleave(4, dim=-1).repeat_interleave(4, dim=-2).expand(-1, 3, -1, -1).contiguous()
    assert big_rgb.shape == (20, 3, 32, 32)
    torch.testing.assert_close(feat.extract_features(big_rgb), feat.extract_features(x))


def test_extractor_refuses_float_images(digits_weights):
    with pytest.raises(ValueError, match="uint8"):
        feat.extract_features(load_digits(8)[:4])


def test_unknown_features_name():
    with pytest.raises(ValueError, match="digits, inception"):
        feat.check_features("clip")


# --- Inception: local weights only -----------------------------------------------------------------


def test_inception_file_name_matches_torch_fidelity():
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    assert feat.INCEPTION_WEIGHTS_URL == URL_INCEPTION_V3
    assert feat.INCEPTION_WEIGHTS_FILE == "weights-inception-2015-12-05-6726825d.pth"


def test_missing_inception_weights_give_a_clear_error(no_inception):
    with pytest.raises(feat.InceptionWeightsMissing) as info:
        feat.inception_weights_path()
    message = str(info.value)
    assert feat.INCEPTION_WEIGHTS_FILE in message
    assert feat.INCEPTION_WEIGHTS_ENV in message
    assert str(no_inception / "checkpoints" / feat.INCEPTION_WEIGHTS_FILE) in message
    assert isinstance(info.value, FileNotFoundError)


def test_inception_env_var_naming_a_missing_file(no_inception, tmp_path, monkeypatch):
    monkeypatch.setenv(feat.INCEPTION_WEIGHTS_ENV, str(tmp_path / "nowhere.pth"))
    with pytest.raises(feat.InceptionWeightsMissing, match="nowhere.pth") as info:
        feat.inception_weights_path()
    assert feat.INCEPTION_WEIGHTS_FILE in str(info.value)


def test_inception_weights_found_in_env_then_hub_cache(no_inception, tmp_path, monkeypatch):
    hub_file = no_inception / "checkpoints" / feat.INCEPTION_WEIGHTS_FILE
    hub_file.parent.mkdir(parents=True)
    hub_file.write_bytes(b"x")
    assert feat.inception_weights_path() == hub_file
    env_file = tmp_path / "mine.pth"
    env_file.write_bytes(b"y")
    monkeypatch.setenv(feat.INCEPTION_WEIGHTS_ENV, str(env_file))
    assert feat.inception_weights_path() == env_file


def test_fingerprint_follows_weights_content(isolated_cache):
    path = feat.digits_classifier_path()
    before = feat.feature_extractor_fingerprint("digits")
    blob = torch.load(path, weights_only=True)
    blob["state_dict"]["fc2.bias"] += 1.0
    torch.save(blob, path)
    assert feat.feature_extractor_fingerprint("digits") != before
