"""nerfstudio 1.1.5 loads its own checkpoints again under torch >= 2.6 (the ``[nerfstudio]`` extra's 2.14.1).

The problem: nerfstudio calls ``torch.load(path, map_location="cpu")`` without ``weights_only``;
torch 2.6 made ``weights_only=True`` the default, and nerfstudio's checkpoints hold numpy scalars
and dtypes (``numpy.core.multiarray.scalar``, ``numpy.dtype``, ``numpy.dtypes.Float64DType``, … in
the optimizer and scheduler state), which the weights-only unpickler refuses:
``ns-render``, ``ns-eval``, ``ns-viewer``, ``ns-export`` and resuming training (``--load-dir``)
fail with ``UnpicklingError: Weights only load failed``.

The fix, chosen over the alternatives:

* not ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` or ``weights_only=False``: they would let any pickle
  run code, in every ``torch.load`` of the process;
* not ``torch.serialization.add_safe_globals`` at start-up: it would widen the allow-list for
  every caller, not only nerfstudio;
* not a pin: nerfstudio 1.1.5 needs torchvision 0.29.1, which needs torch 2.14.1;
* chosen: nerfstudio's two checkpoint loaders (``nerfstudio.utils.eval_utils.eval_load_checkpoint``,
  used by every ``ns-*`` command that opens a trained model, and
  ``nerfstudio.engine.trainer.Trainer._load_checkpoint``, used on resume) run inside
  ``torch.serialization.safe_globals(NUMPY_CHECKPOINT_GLOBALS)``: the weights-only unpickler stays
  on, and admits, only during those calls, the numpy *data types* below (no functions, nothing that
  runs code). flame-prior's own loaders never use ``torch.load`` (npz without pickles, and a
  restricted unpickler for FLAME's pickles) and are untouched.

The ``.pth`` hook (:mod:`nerfstudio_plugin.ns_process_data_hook`) calls :func:`patch_eval_utils` and
:func:`patch_trainer` right after nerfstudio's modules are imported; patching twice is harmless.
"""

from __future__ import annotations

import functools

__all__ = ["numpy_checkpoint_globals", "allowing_numpy_scalars", "patch_eval_utils", "patch_trainer"]


def numpy_checkpoint_globals() -> list:
    """The numpy globals nerfstudio checkpoints reference: the scalar constructor, ``dtype`` and the
    per-type dtype classes (``numpy.dtypes.Float64DType``, …) of numpy's numeric types."""
    import numpy as np

    scalar = np.core.multiarray.scalar if hasattr(np, "core") else np._core.multiarray.scalar
    dtype_classes = {type(np.dtype(t)) for t in (np.float16, np.float32, np.float64, np.int8, np.int16, np.int32,
                                                  np.int64, np.uint8, np.bool_)}
    return [scalar, np.dtype, *sorted(dtype_classes, key=lambda c: c.__name__)]


def allowing_numpy_scalars(load):
    """``load`` with :func:`numpy_checkpoint_globals` admitted by torch's weights-only unpickler while it runs."""
    if getattr(load, "_flame_prior_numpy_scalars", False):
        return load

    @functools.wraps(load)
    def wrapper(*args, **kwargs):
        import torch

        with torch.serialization.safe_globals(numpy_checkpoint_globals()):
            return load(*args, **kwargs)

    wrapper._flame_prior_numpy_scalars = True
    return wrapper


def patch_eval_utils(module) -> None:
    """``nerfstudio.utils.eval_utils``: ``eval_setup`` looks ``eval_load_checkpoint`` up at call time."""
    module.eval_load_checkpoint = allowing_numpy_scalars(module.eval_load_checkpoint)


def patch_trainer(module) -> None:
    """``nerfstudio.engine.trainer``: resuming calls ``Trainer._load_checkpoint``."""
    module.Trainer._load_checkpoint = allowing_numpy_scalars(module.Trainer._load_checkpoint)
