"""Loading FLAME model files (``.pkl`` and ``.npz``) into a validated :class:`FlameModelData`.

Formats read (key names are FLAME's own in both):

* ``.pkl``: ``generic_model.pkl`` (FLAME 2017/2019/2020), ``flame2023.pkl``, ``flame2023_Open.pkl``:
  a Python-2 pickle of a dict. ``v_template``/``shapedirs``/``posedirs``/``weights`` may be chumpy
  ``Ch`` objects, ``J_regressor`` a ``scipy.sparse`` csc matrix, ``kintree_table`` ``(2, J)`` with
  the root's parent stored as ``2**32 - 1``. Read by :func:`~flame_prior.flame.safe_pickle.safe_unpickle`:
  no pickled code runs, chumpy and scipy need not be importable as pickled.
* ``.npz``: the same keys as plain arrays (``J_regressor`` dense), e.g. the shared
  ``flame2023_open_subset.npz``; optionally ``exprdirs`` ``(V, 3, n_expr)`` and ``n_shape``.

Shape space split. FLAME stores identity and expression bases concatenated in ``shapedirs``
``(V, 3, K)``. The rule, first match wins:

1. an ``exprdirs`` key exists: ``shapedirs`` is identity only, ``exprdirs`` is expression;
2. an integer ``n_shape`` key exists: the first ``n_shape`` components are identity, the rest expression;
3. ``K == 400`` (every released FLAME): 300 identity + 100 expression;
4. otherwise (``K == 300`` or a reduced file): identity only, ``n_expr = 0`` (a note says so when K != 300).

Frame and units: FLAME's, metres, +X to the subject's left, +Y up, +Z out of the face.
Joints: 0 root (global rotation), 1 neck, 2 jaw, 3 left eye (+X), 4 right eye (-X).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from flame_prior.errors import ModelFileError
from flame_prior.files import file_sha256
from flame_prior.flame.safe_pickle import read_npy_safe, read_npz_safe, safe_unpickle

__all__ = ["FlameModelData", "load_flame_model", "safe_unpickle", "read_model_dict", "MODEL_HINT"]

MODEL_HINT = ("FLAME is obtained (free registration) from https://flame.is.tue.mpg.de; point flame-prior at "
              "generic_model.pkl / flame2023.pkl / flame2023_Open.pkl (or an .npz with FLAME's key names) "
              "with --flame-model PATH or the FLAME_PRIOR_MODEL environment variable.")

N_JOINTS = 5
_FLAME_SHAPE, _FLAME_EXPR = 300, 100


@dataclass
class FlameModelData:
    """A FLAME model as validated numpy arrays (float64, int64).

    Attributes:
        v_template: ``(V, 3)`` mean head, metres.
        faces: ``(F, 3)`` int64 triangle vertex indices (counter-clockwise seen from outside).
        shapedirs: ``(V, 3, n_shape)`` identity basis (offset per unit coefficient).
        exprdirs: ``(V, 3, n_expr)`` expression basis (``n_expr`` may be 0).
        posedirs: ``(V, 3, 9 * (J - 1))`` pose-corrective basis, FLAME's layout (see ``lbs.pose_correctives``).
        J_regressor: ``(J, V)`` dense joint regressor.
        weights: ``(V, J)`` skinning weights, rows sum to 1.
        parents: ``(J,)`` int64 kinematic tree, ``parents[0] == -1``, ``parents[j] < j``.
        source: file the data came from ("" when built in memory).
        sha256: hex digest of that file ("" when built in memory).
        name: short name (file stem).
        notes: decisions taken while loading (split rule, truncation, conversions).
    """

    v_template: np.ndarray
    faces: np.ndarray
    shapedirs: np.ndarray
    exprdirs: np.ndarray
    posedirs: np.ndarray
    J_regressor: np.ndarray
    weights: np.ndarray
    parents: np.ndarray
    source: str = ""
    sha256: str = ""
    name: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def n_shape(self) -> int:
        return int(self.shapedirs.shape[2])

    @property
    def n_expr(self) -> int:
        return int(self.exprdirs.shape[2])

    @property
    def n_vertices(self) -> int:
        return int(self.v_template.shape[0])

    @property
    def n_joints(self) -> int:
        return int(self.parents.shape[0])

    def validate(self) -> "FlameModelData":
        """Check every array; raise :class:`ModelFileError` naming the array and the problem."""
        _validate(self)
        return self


def read_model_dict(path: str | Path, hint: str = MODEL_HINT, keys: tuple[str, ...] | None = None) -> dict:
    """The dict stored in a FLAME-style ``.pkl``/``.npz``/``.npy`` file, read by content, not extension.

    ``hint`` ends the error messages (where to get the file, how to point flame-prior at it);
    ``keys`` limits which ``.npz`` members are read (large texture spaces).
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError("file not found", path, hint)
    with open(path, "rb") as f:
        head = f.read(8)
        f.seek(0)
        if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
            d = read_npz_safe(path, keys)
        elif head.startswith(b"\x93NUMPY"):
            d = read_npy_safe(f, path)
        elif head[:1] == b"\x80" or head[:1] in (b"(", b"}", b"]"):
            d = safe_unpickle(f, path)
        else:
            raise ModelFileError(f"not a pickle, .npz or .npy file (starts with {head!r})", path, hint)
    if not isinstance(d, dict):
        raise ModelFileError(f"expected a dict of arrays, found {type(d).__name__}", path, hint)
    return d


def _array(d: dict, key: str, path, required: bool = True) -> np.ndarray | None:
    if key not in d:
        if required:
            raise ModelFileError(f"missing array '{key}' (keys present: {sorted(map(str, d))})", path, MODEL_HINT)
        return None
    v = d[key]
    # A scipy sparse matrix (pickled models' J_regressor) exists only once scipy.sparse is loaded, which
    # this module leaves to the pickle reader: .npz models never pay for the import.
    sparse = sys.modules.get("scipy.sparse")
    if sparse is not None and sparse.issparse(v):
        v = v.toarray()
    try:
        return np.asarray(v)
    except (TypeError, ValueError) as exc:
        raise ModelFileError(f"'{key}' is not an array ({type(v).__name__})", path, MODEL_HINT) from exc


def _float(a: np.ndarray, key: str, path) -> np.ndarray:
    if a.dtype.kind not in "fiu":
        raise ModelFileError(f"'{key}' has non-numeric dtype {a.dtype}", path, MODEL_HINT)
    return a.astype(np.float64)


def load_flame_model(path: str | Path, n_shape: int | None = None, n_expr: int | None = None) -> FlameModelData:
    """Read and validate a FLAME model file.

    Args:
        path: ``.pkl`` (FLAME 2017-2023, chumpy inside) or ``.npz`` with FLAME's key names.
        n_shape: keep the first ``n_shape`` identity components (default: all).
        n_expr: keep the first ``n_expr`` expression components (default: all; 0 drops them).

    Returns:
        The validated :class:`FlameModelData` (the split rule is in the module docstring).

    Raises:
        ModelFileError: missing/unsafe/truncated file, a missing or malformed array, or more
            components requested than the file holds.
    """
    path = Path(path)
    d = read_model_dict(path)
    notes: list[str] = []
    v_template = _float(_array(d, "v_template", path), "v_template", path)
    faces = _array(d, "f", path)
    dirs = _float(_array(d, "shapedirs", path), "shapedirs", path)
    exprdirs = _array(d, "exprdirs", path, required=False)
    posedirs = _float(_array(d, "posedirs", path), "posedirs", path)
    J_regressor = _float(_array(d, "J_regressor", path), "J_regressor", path)
    weights = _float(_array(d, "weights", path), "weights", path)
    kintree = _array(d, "kintree_table", path)
    if dirs.ndim != 3:
        raise ModelFileError(f"'shapedirs' must be (V, 3, K), got {dirs.shape}", path, MODEL_HINT)

    k = dirs.shape[2]
    if exprdirs is not None:
        shapedirs, exprdirs = dirs, _float(exprdirs, "exprdirs", path)
        notes.append("identity from 'shapedirs', expression from 'exprdirs'")
    elif "n_shape" in d:
        ns = int(np.asarray(d["n_shape"]))
        if not 0 < ns <= k:
            raise ModelFileError(f"'n_shape' = {ns} does not fit shapedirs with {k} components", path, MODEL_HINT)
        shapedirs, exprdirs = dirs[..., :ns], dirs[..., ns:]
        notes.append(f"split by the file's n_shape: {ns} identity + {k - ns} expression")
    elif k == _FLAME_SHAPE + _FLAME_EXPR:
        shapedirs, exprdirs = dirs[..., :_FLAME_SHAPE], dirs[..., _FLAME_SHAPE:]
        notes.append("shapedirs has 400 components: 300 identity + 100 expression (FLAME's layout)")
    else:
        shapedirs, exprdirs = dirs, dirs[..., :0]
        if k != _FLAME_SHAPE:
            notes.append(f"shapedirs has {k} components and no expression key: all treated as identity")

    for want, have, what in ((n_shape, shapedirs.shape[-1], "identity"), (n_expr, exprdirs.shape[-1], "expression")):
        if want is not None and not 0 <= want <= have:
            raise ModelFileError(f"{want} {what} components requested, the file has {have}", path,
                                 "Ask for fewer components or use a model with a larger space.")
    if n_shape is not None and n_shape < shapedirs.shape[-1]:
        shapedirs = shapedirs[..., :n_shape]
        notes.append(f"identity truncated to {n_shape}")
    if n_expr is not None and n_expr < exprdirs.shape[-1]:
        exprdirs = exprdirs[..., :n_expr]
        notes.append(f"expression truncated to {n_expr}")

    parents = _parents_from_kintree(kintree, path)
    data = FlameModelData(
        v_template=v_template, faces=faces, shapedirs=np.ascontiguousarray(shapedirs),
        exprdirs=np.ascontiguousarray(exprdirs), posedirs=posedirs, J_regressor=J_regressor, weights=weights,
        parents=parents, source=str(path), sha256=file_sha256(path), name=path.stem, notes=notes)
    return data.validate()


def _parents_from_kintree(kintree: np.ndarray, path) -> np.ndarray:
    if kintree.ndim != 2 or kintree.shape[0] != 2 or kintree.dtype.kind not in "iu":
        raise ModelFileError(f"'kintree_table' must be integer (2, J), got {kintree.dtype} {kintree.shape}",
                             path, MODEL_HINT)
    ids = kintree[1].astype(np.int64)
    if not np.array_equal(ids, np.arange(kintree.shape[1])):
        raise ModelFileError(f"'kintree_table' row 1 must list joints 0..J-1 in order, got {ids.tolist()}",
                             path, MODEL_HINT)
    parents = kintree[0].astype(np.int64)
    # The root's parent is stored as -1 or, in FLAME's uint32 tables, 2**32 - 1.
    if parents[0] in (-1, 2**32 - 1, 2**64 - 1) or kintree[0, 0] == np.iinfo(kintree.dtype).max:
        parents[0] = -1
    return parents


def _fail(data: FlameModelData, msg: str) -> None:
    raise ModelFileError(msg, data.source or None, MODEL_HINT if data.source else None)


def _validate(data: FlameModelData) -> None:
    V = data.v_template.shape[0] if data.v_template.ndim == 2 else -1
    J = data.parents.shape[0] if data.parents.ndim == 1 else -1
    expect = {
        "v_template": (data.v_template, (V, 3)),
        "shapedirs": (data.shapedirs, (V, 3, None)),
        "exprdirs": (data.exprdirs, (V, 3, None)),
        "posedirs": (data.posedirs, (V, 3, 9 * (J - 1))),
        "J_regressor": (data.J_regressor, (J, V)),
        "weights": (data.weights, (V, J)),
    }
    if V <= 0 or data.v_template.shape[1:] != (3,):
        _fail(data, f"'v_template' must be (V, 3), got {data.v_template.shape}")
    if J != N_JOINTS:
        _fail(data, f"kinematic tree must have FLAME's {N_JOINTS} joints (root, neck, jaw, eyes), got {J}")
    for key, (arr, shape) in expect.items():
        if arr.ndim != len(shape) or any(s is not None and a != s for a, s in zip(arr.shape, shape)):
            want = "(" + ", ".join("K" if s is None else str(s) for s in shape) + ")"
            _fail(data, f"'{key}' must have shape {want}, got {arr.shape}")
        if arr.dtype.kind != "f":
            _fail(data, f"'{key}' must be floating point, got {arr.dtype}")
        if not np.all(np.isfinite(arr)):
            _fail(data, f"'{key}' contains NaN or infinite values")
    f = data.faces
    if f.ndim != 2 or f.shape[1] != 3 or f.shape[0] == 0 or f.dtype.kind not in "iu":
        _fail(data, f"'f' (faces) must be integer (F, 3), got {f.dtype} {f.shape}")
    if f.min() < 0 or f.max() >= V:
        _fail(data, f"'f' (faces) indices must lie in [0, {V}), found [{f.min()}, {f.max()}]")
    data.faces = f.astype(np.int64)
    sums = data.weights.sum(1)
    if np.abs(sums - 1).max() > 1e-3:
        _fail(data, f"'weights' rows must sum to 1, found sums in [{sums.min():.4f}, {sums.max():.4f}]")
    if data.weights.min() < -1e-6:
        _fail(data, f"'weights' must be non-negative, found {data.weights.min():.3g}")
    p = data.parents
    if p[0] != -1 or any(not 0 <= p[j] < j for j in range(1, J)):
        _fail(data, f"'kintree_table' is inconsistent: parents {p.tolist()} (need root -1, parents[j] < j)")
    data.parents = p.astype(np.int64)
