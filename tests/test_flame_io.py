"""FLAME model files: safe unpickling, the .pkl/.npz loaders, the shape-space split, error messages."""

from __future__ import annotations

import io
import os
import pickle
import pickletools

import numpy as np
import pytest

from flame_prior.errors import ModelFileError, UnsafePickleError
from flame_prior.flame import build_test_model, load_flame_model, safe_unpickle, write_flame_pkl
from flame_prior.flame.io import read_model_dict


class _System:  # pickles as a call to os.system: must never run
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return os.system, (f"touch {self.target}",)


class _Open:  # pickles as open(target, 'w'): must never run
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return open, (str(self.target), "w")


@pytest.fixture(scope="module")
def model():
    return build_test_model(n_shape=20, n_expr=10, seed=0)


def _globals(raw: bytes) -> set[str]:
    return {arg for op, arg, _ in pickletools.genops(raw) if op.name == "GLOBAL"}


def test_pkl_round_trip_equals_arrays(model, tmp_path):
    path = tmp_path / "generic_model.pkl"
    write_flame_pkl(model, path)
    assert {"chumpy.ch Ch", "scipy.sparse._csc csc_matrix"} <= _globals(path.read_bytes())
    d = load_flame_model(path)
    for key in ("v_template", "faces", "shapedirs", "exprdirs", "posedirs", "J_regressor", "weights", "parents"):
        np.testing.assert_array_equal(getattr(d, key), getattr(model, key), err_msg=key)
    assert (d.n_shape, d.n_expr, d.faces.dtype, d.parents[0]) == (20, 10, np.int64, -1)
    assert len(d.sha256) == 64 and d.source == str(path) and d.name == "generic_model"


def test_pkl_with_flame_400_components_splits_300_100(tmp_path):
    m = build_test_model(n_shape=300, n_expr=100, seed=1)
    path = tmp_path / "flame2023.pkl"
    write_flame_pkl(m, path)
    assert "n_shape" not in read_model_dict(path)  # exactly FLAME's key set
    d = load_flame_model(path)
    assert (d.n_shape, d.n_expr) == (300, 100)
    np.testing.assert_array_equal(d.exprdirs, m.exprdirs)
    small = load_flame_model(path, n_shape=50, n_expr=5)
    assert (small.n_shape, small.n_expr) == (50, 5)
    np.testing.assert_array_equal(small.shapedirs, m.shapedirs[..., :50])


def test_bundled_npz_identity_only():
    """The FLAME 2023 Open subset (bundled with the package, so this never skips)."""
    from flame_prior.flame.assets import default_model_path

    path = default_model_path()
    d = load_flame_model(path)
    assert (d.n_shape, d.n_expr, d.n_vertices, d.faces.shape) == (60, 0, 5023, (9976, 3))
    assert any("identity" in n for n in d.notes)
    assert load_flame_model(path, n_shape=10, n_expr=0).n_shape == 10
    with pytest.raises(ModelFileError, match="10 expression components requested, the file has 0"):
        load_flame_model(path, n_expr=10)


def test_npz_with_exprdirs_key(model, tmp_path):
    path = tmp_path / "m.npz"
    np.savez(path, v_template=model.v_template, f=model.faces, shapedirs=model.shapedirs, exprdirs=model.exprdirs,
             posedirs=model.posedirs, J_regressor=model.J_regressor, weights=model.weights,
             kintree_table=np.stack([model.parents, np.arange(5)]))
    d = load_flame_model(path)
    assert (d.n_shape, d.n_expr) == (20, 10)


@pytest.mark.parametrize("payload", ["system", "open"])
def test_malicious_flame_pkl_refused(payload, tmp_path):
    target = tmp_path / "pwned"
    evil = _System(target) if payload == "system" else _Open(target)
    path = tmp_path / "generic_model.pkl"
    path.write_bytes(pickle.dumps({"v_template": evil}, protocol=2))
    with pytest.raises(UnsafePickleError) as err:
        load_flame_model(path)
    assert str(path) in str(err.value)
    assert (".system" if payload == "system" else "io.open") in str(err.value)  # names module.name
    assert not target.exists()


def test_malicious_object_npy_in_npz_refused(tmp_path):
    target = tmp_path / "pwned"
    path = tmp_path / "model.npz"
    arr = np.empty((), dtype=object)
    arr[()] = _System(target)
    np.savez(path, v_template=arr)
    with pytest.raises(UnsafePickleError, match="system"):
        load_flame_model(path)
    assert not target.exists()


def test_safe_unpickle_allow_list_is_explicit(tmp_path):
    raw = pickle.dumps(np.arange(3.0), protocol=2)
    np.testing.assert_array_equal(safe_unpickle(raw, "x.pkl"), np.arange(3.0))
    with pytest.raises(UnsafePickleError, match="numpy"):
        safe_unpickle(io.BytesIO(raw), "x.pkl", allowed={})


def _npz_from(model, tmp_path, **override):
    arrays = dict(v_template=model.v_template, f=model.faces, shapedirs=model.shapedirs, posedirs=model.posedirs,
                  J_regressor=model.J_regressor, weights=model.weights,
                  kintree_table=np.stack([model.parents, np.arange(5)]))
    arrays.update(override)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("override, message", [
    (dict(weights=None), "missing array 'weights'"),
    (dict(posedirs=np.zeros((5, 3, 36))), "'posedirs' must have shape"),
    (dict(f=np.full((4, 3), 10**6)), "'f' \\(faces\\) indices must lie"),
    (dict(weights=np.full((1118, 5), 0.5)), "'weights' rows must sum to 1"),
    (dict(kintree_table=np.array([[-1, 0, 3, 1, 1], [0, 1, 2, 3, 4]])), "'kintree_table' is inconsistent"),
    (dict(v_template=np.full((1118, 3), np.nan)), "'v_template' contains NaN"),
])
def test_malformed_arrays_are_named(model, tmp_path, override, message):
    path = _npz_from(model, tmp_path, **override)
    with pytest.raises(ModelFileError, match=message) as err:
        load_flame_model(path)
    assert str(path) in str(err.value)


def test_truncated_and_foreign_files(model, tmp_path):
    good = tmp_path / "m.pkl"
    write_flame_pkl(model, good)
    cut = tmp_path / "cut.pkl"
    cut.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(ModelFileError, match="truncated") as err:
        load_flame_model(cut)
    assert str(cut) in str(err.value) and "flame.is.tue.mpg.de" in str(err.value)
    text = tmp_path / "model.pkl"
    text.write_text("hello, not a model")
    with pytest.raises(ModelFileError, match="not a pickle") as err:
        load_flame_model(text)
    assert "FLAME_PRIOR_MODEL" in str(err.value) and "--flame-model" in str(err.value)
    with pytest.raises(ModelFileError, match="not found"):
        load_flame_model(tmp_path / "missing.pkl")
