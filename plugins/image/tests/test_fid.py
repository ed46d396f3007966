"""The optional real-FID metric (torchmetrics' Inception, local weights only): a clear error when the weights
or the packages are missing, the whole path on random Inception weights, and the real weights when present."""

from __future__ import annotations

from unittest import mock

import pytest
import torch
from fmkit.plugin import DependencyError, RecipeError

pytest.importorskip("torchmetrics", reason="the fid extra is not installed (pip install 'fmkit-image[fid]')")
pytest.importorskip("torch_fidelity", reason="the fid extra is not installed (pip install 'fmkit-image[fid]')")

from fmkit_image.fid import ENV, WEIGHTS_FILE, FIDMetric, find_weights


@pytest.fixture()
def no_weights(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # an empty hub cache
    return tmp_path


def _dataset(n=24, seed=0):
    from fmkit_image.data import ImageDataset

    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 1, 28, 28, dtype=torch.uint8)
    for i in range(n):  # smooth blobs, not noise: images Inception features can tell apart
        r, c = torch.randint(4, 24, (2,), generator=g)
        x[i, 0, r - 4:r + 4, c - 4:c + 4] = 255
    y = torch.randint(0, 10, (n,), generator=g)
    return ImageDataset(x, y, x.clone(), y.clone(), name="blobs")


def test_missing_weights_say_what_where_and_how(no_weights):
    with pytest.raises(DependencyError) as e:
        FIDMetric()
    err = e.value
    assert "Inception weights" in err.what and "downloads nothing" in err.what
    assert ENV in err.where and "torch_home" in err.where
    assert ENV in err.fix and WEIGHTS_FILE in err.fix and "https://" in err.fix


def test_a_named_weights_file_that_is_absent(no_weights, monkeypatch):
    missing = no_weights / "nowhere" / WEIGHTS_FILE
    monkeypatch.setenv(ENV, str(missing))
    with pytest.raises(DependencyError) as e:
        FIDMetric()
    assert str(missing) in e.value.what and ENV in e.value.what and ENV in e.value.fix
    with pytest.raises(DependencyError) as e:
        FIDMetric(weights=str(missing))
    assert "weights option" in e.value.what


def test_missing_weights_fail_at_build_time_through_the_registry(no_weights):
    from fmkit.testing import fresh_registry
    from fmkit_image import plugin

    reg = fresh_registry(plugin)
    assert reg.entries("metrics")["fid"].options.model_config.get("extra") == "forbid"
    with pytest.raises(DependencyError):  # what build_components does for eval.metrics: [{name: fid}]
        reg.build("metrics", {"name": "fid"}, where="eval.metrics")
    with pytest.raises(RecipeError) as e:  # a layer Inception does not have: the recipe's options fail
        reg.build("metrics", {"name": "fid", "feature": 100}, where="eval.metrics")
    assert "feature" in str(e.value)


def test_missing_package_is_a_dependency_error(no_weights):
    from fmkit_image import fid

    with mock.patch.dict("sys.modules", {"torchmetrics.image.fid": None}), pytest.raises(DependencyError) as e:
        fid._require_torchmetrics()
    assert "fmkit-image[fid]" in e.value.fix


def _random_inception(path):
    """Inception weights of the right layout, randomly initialised (the real ones cannot be downloaded here)."""
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    with mock.patch.object(fe, "load_state_dict_from_url", lambda *a, **k: {}), \
            mock.patch.object(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None):
        torch.manual_seed(0)
        net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["64"])
    torch.save(net.state_dict(), path)
    return path


def test_fid_path_on_random_inception_weights(no_weights):
    w = _random_inception(no_weights / WEIGHTS_FILE)
    m = FIDMetric(weights=str(w), feature=64, batch_size=12)
    ds = _dataset()
    same = m(ds.reference(24, seed=0), ds)
    other = m({"x": torch.rand(24, 1, 28, 28) * 2 - 1}, ds)
    assert set(same) == {"fid", "fid_n"} and same["fid_n"] == 24
    assert abs(same["fid"]) < 1e-2 * max(1.0, other["fid"]) and other["fid"] > same["fid"]


def _real_weights():
    try:
        return find_weights()
    except DependencyError:
        return None


@pytest.mark.skipif(_real_weights() is None, reason=f"no Inception weights on disk (set {ENV} to {WEIGHTS_FILE})")
def test_real_fid_with_local_weights():
    m = FIDMetric(feature=2048, batch_size=24)
    ds = _dataset(48)
    same = m(ds.reference(48, seed=0), ds)["fid"]
    noise = m({"x": torch.rand(48, 1, 28, 28) * 2 - 1}, ds)["fid"]
    assert abs(same) < 1.0 < noise
