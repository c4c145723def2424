"""Reading pickled model files without running pickled code.

FLAME's ``.pkl`` files (chumpy arrays, a scipy sparse joint regressor), DECA's
``landmark_embedding.npy`` (an ``np.save``-d object array holding torch tensors) and RingNet's
embeddings are pickles. ``pickle.load`` on such a file calls whatever global the file names, so a
tampered download could run arbitrary code. :func:`safe_unpickle` instead resolves every global
through an allow-list (:data:`DEFAULT_ALLOWED`) whose entries are either harmless
constructors or *stand-in* classes that only record their pickled state. Nothing else is ever
imported or called; a refused global raises :class:`~flame_prior.errors.UnsafePickleError`
naming the file and ``module.name``.

After unpickling, :func:`plain` turns the stand-ins into plain values: a chumpy ``Ch`` becomes the
ndarray in its state's ``x`` entry (chumpy's ``Ch.__getstate__`` returns the instance ``__dict__``
minus two weak caches, so a constant ``Ch`` pickles as ``{'x': ndarray, '_dirty_vars': set(), ...}``),
a few chumpy reorderings/ops are evaluated with numpy, scipy ``csc/csr`` matrices are rebuilt from
``data/indices/indptr/_shape``, torch tensors become ndarrays.
"""

from __future__ import annotations

import codecs
import collections
import io
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Mapping

import numpy as np

from flame_prior.errors import ModelFileError, UnsafePickleError

__all__ = ["safe_unpickle", "plain", "read_npy_safe", "read_npz_safe", "DEFAULT_ALLOWED", "ChStandIn"]

_HINT = ("Only numpy/scipy/chumpy/torch data is accepted from model pickles; "
         "re-download the file from its official source (FLAME: https://flame.is.tue.mpg.de).")


# --------------------------------------------------------------------------- stand-ins
class _StandIn:
    """Records pickled state and nothing else (no ``__init__`` is ever run by pickle)."""

    _pickled_name = "?"

    def __new__(cls, *args, **kwargs):  # NEWOBJ passes the class' own __reduce__ args: ignore them
        obj = object.__new__(cls)
        obj.state = {}
        return obj

    def __setstate__(self, state: Any) -> None:
        # BUILD may pass (dict, slotstate); keep the dict part.
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], dict | type(None)):
            state = state[0] or {}
        self.state = state if isinstance(state, dict) else {"_raw": state}


class ChStandIn(_StandIn):
    """A chumpy object (``chumpy.ch.Ch`` or a chumpy expression); ``state`` is its ``__dict__``."""


class _SparseStandIn(_StandIn):
    format = "csc"


def _make_standin(base: type, module: str, name: str, **attrs) -> type:
    return type(f"{name}StandIn", (base,), {"_pickled_name": f"{module}.{name}", **attrs})


def _reconstructor(cls, base, state):
    # copyreg._reconstructor(cls, object, None) is how protocol-0/1 pickles build plain objects.
    if not (isinstance(cls, type) and issubclass(cls, _StandIn)) or base is not object or state is not None:
        raise pickle.UnpicklingError(f"copyreg._reconstructor refused for {cls!r}")
    return cls.__new__(cls)


def _newobj(cls, *args):
    if not (isinstance(cls, type) and issubclass(cls, _StandIn)):
        raise pickle.UnpicklingError(f"copyreg.__newobj__ refused for {cls!r}")
    return cls.__new__(cls)


def _np_reconstruct(subtype, shape, dtype):
    # ndarray.__reduce__ emits _reconstruct(ndarray, (0,), b'b') then BUILD with the real state.
    if subtype is not np.ndarray:
        raise pickle.UnpicklingError(f"numpy _reconstruct refused for subtype {subtype!r}")
    return np.ndarray.__new__(np.ndarray, shape, dtype=np.int8)


def _np_scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype):
        raise pickle.UnpicklingError("numpy scalar needs a dtype")
    if dtype.hasobject:
        return data
    if isinstance(data, str):  # Python-2 pickle decoded with latin1
        data = data.encode("latin1")
    return np.frombuffer(data, dtype=dtype, count=1)[0]


def _np_frombuffer(buf, dtype, shape, order):
    return np.frombuffer(bytes(buf), dtype=dtype).reshape(shape, order=order).copy()


def _codecs_encode(obj, encoding="utf-8"):
    # Protocol-2 pickles written by Python 3 store bytes as _codecs.encode(str, 'latin1').
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode is only accepted for latin1 strings")
    return codecs.encode(obj, "latin1")


def _torch_load_from_bytes(data: bytes):
    # torch.storage._load_from_bytes runs torch.load on an embedded legacy torch file; torch's own
    # weights_only unpickler restricts that inner pickle to tensors/storages.
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TypedStorage deprecation
        return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")


def _torch_rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                             metadata=None):
    import torch
    import torch._utils

    if not isinstance(storage, torch.storage.TypedStorage | torch.storage.UntypedStorage):
        raise pickle.UnpicklingError("torch _rebuild_tensor_v2 needs a storage from _load_from_bytes")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, False, collections.OrderedDict())


def _chumpy_entries() -> dict[tuple[str, str], Callable]:
    names = {
        "chumpy.ch": ["Ch"],
        "chumpy.reordering": ["Select", "Reshape", "transpose", "Concatenate", "Permute"],
        "chumpy.ch_ops": ["add", "subtract", "multiply", "divide", "negative"],
    }
    return {(m, n): _make_standin(ChStandIn, m, n) for m, ns in names.items() for n in ns}


def _sparse_entries() -> dict[tuple[str, str], Callable]:
    out = {}
    for fmt in ("csc", "csr"):
        for cls in (f"{fmt}_matrix", f"{fmt}_array"):
            for mod in (f"scipy.sparse.{fmt}", f"scipy.sparse._{fmt}"):
                out[(mod, cls)] = _make_standin(_SparseStandIn, mod, cls, format=fmt)
    return out


DEFAULT_ALLOWED: dict[tuple[str, str], Callable] = {
    **{(m, "_reconstruct"): _np_reconstruct for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(m, "scalar"): _np_scalar for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(m, "_frombuffer"): _np_frombuffer for m in ("numpy.core.numeric", "numpy._core.numeric")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _codecs_encode,
    ("copyreg", "_reconstructor"): _reconstructor,
    ("copy_reg", "_reconstructor"): _reconstructor,
    ("copyreg", "__newobj__"): _newobj,
    ("copy_reg", "__newobj__"): _newobj,
    ("builtins", "object"): object,
    ("__builtin__", "object"): object,
    ("builtins", "set"): set,
    ("__builtin__", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("__builtin__", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("__builtin__", "slice"): slice,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _torch_rebuild_tensor_v2,
    ("torch.storage", "_load_from_bytes"): _torch_load_from_bytes,
    **_chumpy_entries(),
    **_sparse_entries(),
}
"""``(module, name) -> callable`` admitted by :func:`safe_unpickle` by default."""


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: BinaryIO, path: str, allowed: Mapping[tuple[str, str], Callable], encoding: str):
        super().__init__(file, encoding=encoding)
        self._path = path
        self._allowed = allowed

    def find_class(self, module: str, name: str):  # noqa: D401 - pickle API
        # Names are looked up raw (no Python-2 renaming through importlib): 'copy_reg' and
        # '__builtin__' have their own allow-list entries.
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise UnsafePickleError(f"refused to load global {module}.{name} (not on the allow-list; nothing "
                                    "was executed)", self._path, _HINT) from None

    def persistent_load(self, pid):
        raise UnsafePickleError(f"refused persistent id {pid!r}", self._path, _HINT)


def safe_unpickle(fileobj_or_bytes: BinaryIO | bytes, path: str | Path,
                  allowed: Mapping[tuple[str, str], Callable] | None = None, encoding: str = "latin1") -> Any:
    """Unpickle with an allow-list of globals and return plain values (see :func:`plain`).

    Args:
        fileobj_or_bytes: a binary file positioned at the pickle, or the pickle bytes.
        path: the file the data came from, for error messages.
        allowed: ``(module, name) -> callable`` admitted by ``find_class``; default
            :data:`DEFAULT_ALLOWED`.
        encoding: how Python-2 ``str`` objects are decoded; ``latin1`` keeps numpy buffers intact.

    Raises:
        UnsafePickleError: the pickle names a global outside ``allowed`` (nothing was executed).
        ModelFileError: the data is not a (complete) pickle.
    """
    f = io.BytesIO(fileobj_or_bytes) if isinstance(fileobj_or_bytes, bytes | bytearray) else fileobj_or_bytes
    unpickler = _RestrictedUnpickler(f, str(path), DEFAULT_ALLOWED if allowed is None else allowed, encoding)
    try:
        obj = unpickler.load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            RuntimeError, OverflowError, MemoryError) as exc:
        raise ModelFileError(f"not a readable pickle ({type(exc).__name__}: {exc}); the file may be truncated "
                             "or of another type", path, _HINT) from exc
    return plain(obj, path)


# --------------------------------------------------------------------------- stand-ins -> values
def _chumpy_value(obj: ChStandIn, path) -> np.ndarray:
    s, kind = obj.state, obj._pickled_name.rsplit(".", 1)[-1]
    get = lambda k: np.asarray(plain(s[k], path))  # noqa: E731
    try:
        if kind == "Ch":
            return get("x")
        if kind == "Select":
            return get("a").ravel()[get("idxs")].reshape(tuple(s["preferred_shape"]))
        if kind == "Reshape":
            return get("a").reshape(s["newshape"])
        if kind == "transpose":
            return np.transpose(get("a"), s.get("axes"))
        if kind == "Concatenate":
            return np.concatenate([np.asarray(plain(a, path)) for a in s["ops"]] if "ops" in s
                                  else [get("a"), get("b")], axis=s.get("axis", 0))
        if kind == "negative":
            return -get("x")
        ops = {"add": np.add, "subtract": np.subtract, "multiply": np.multiply, "divide": np.divide}
        if kind in ops:
            return ops[kind](get("a"), get("b"))
    except (KeyError, ValueError, IndexError, TypeError) as exc:
        raise ModelFileError(f"chumpy object {obj._pickled_name} has unexpected state ({exc})", path, _HINT) from exc
    raise ModelFileError(f"chumpy expression {obj._pickled_name} cannot be evaluated without chumpy", path,
                         "Convert the model to plain arrays (an .npz with FLAME's key names).")


def _sparse_value(obj: _SparseStandIn, path):
    import scipy.sparse as sp  # here: only pickled FLAME files hold sparse matrices (scipy costs start-up time)

    s = obj.state
    try:
        shape = tuple(int(n) for n in s.get("_shape", s.get("shape")))
        parts = (np.asarray(s["data"]), np.asarray(s["indices"]), np.asarray(s["indptr"]))
        cls = sp.csc_matrix if obj.format == "csc" else sp.csr_matrix
        m = cls(parts, shape=shape)
        m.check_format(full_check=True)  # indices/indptr in range: a bad file must not index out of bounds
        return m
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"sparse matrix {obj._pickled_name} is malformed ({exc})", path, _HINT) from exc


def plain(obj: Any, path: str | Path = "<memory>") -> Any:
    """Replace stand-ins and torch tensors by numpy/scipy values, recursively through containers."""
    if isinstance(obj, ChStandIn):
        return _chumpy_value(obj, path)
    if isinstance(obj, _SparseStandIn):
        return _sparse_value(obj, path)
    if isinstance(obj, dict):
        return type(obj)((k, plain(v, path)) for k, v in obj.items()) if isinstance(obj, collections.OrderedDict) \
            else {k: plain(v, path) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(plain(v, path) for v in obj)
    if isinstance(obj, np.ndarray) and obj.dtype.hasobject and obj.shape == ():
        return plain(obj.item(), path)  # np.save of a dict: a 0-d object array
    if isinstance(obj, np.ndarray) and obj.dtype.hasobject:
        out = np.empty(obj.shape, dtype=object)
        for i, v in np.ndenumerate(obj):
            out[i] = plain(v, path)
        return out
    if type(obj).__module__.startswith("torch") and hasattr(obj, "detach"):
        return obj.detach().cpu().numpy()
    return obj


# --------------------------------------------------------------------------- npy / npz
def read_npy_safe(fileobj: BinaryIO, path: str | Path) -> Any:
    """Read one ``.npy`` stream; object arrays go through :func:`safe_unpickle`, never ``allow_pickle``.

    Returns an ndarray, or for a 0-d object array (``np.save(path, some_dict)``) the plain object.
    """
    fmt = np.lib.format
    try:
        version = fmt.read_magic(fileobj)
        reader = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, fortran, dtype = reader(fileobj)
    except (ValueError, SyntaxError, EOFError) as exc:
        raise ModelFileError(f"not a valid .npy file ({exc})", path, _HINT) from exc
    if dtype.hasobject:
        # np.save pickles the whole object array after the header; plain() unwraps a 0-d one.
        return safe_unpickle(fileobj, path)
    count = int(np.prod(shape)) if shape else 1
    data = fileobj.read(count * dtype.itemsize)
    if len(data) != count * dtype.itemsize:
        raise ModelFileError(f"truncated .npy data ({len(data)} of {count * dtype.itemsize} bytes)", path, _HINT)
    arr = np.frombuffer(data, dtype=dtype, count=count)
    return arr.reshape(shape, order="F" if fortran else "C").copy()


def read_npz_safe(path: str | Path, keys: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Members of an ``.npz`` as ``{key: value}`` (only ``keys`` when given), object members unpickled safely."""
    try:
        with zipfile.ZipFile(path) as zf:
            out = {}
            for name in zf.namelist():
                if not name.endswith(".npy") or (keys is not None and name[:-4] not in keys):
                    continue
                with zf.open(name) as member:
                    out[name[:-4]] = read_npy_safe(io.BufferedReader(member), f"{path}:{name}")
            return out
    except (zipfile.BadZipFile, EOFError, OSError) as exc:
        raise ModelFileError(f"not a readable .npz archive ({exc})", path, _HINT) from exc
