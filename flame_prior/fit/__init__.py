"""Step 4 of the pipeline — the fit: one FLAME head and one camera per view (:func:`fit_flame`).

=====================  ====================================================================
:mod:`.config`         :class:`FitterConfig` (``--fitter.*``) and :func:`resolve_device`
:mod:`.state`          the landmark targets, :class:`FitState` (built complete) and :class:`StageLog`
:mod:`.landmarks`      stages 1-2, rigid and landmarks: Levenberg-Marquardt on the landmarks
:mod:`.photometric`    stage 3: the renderer, albedo and lighting, Adam on face crops
:mod:`.result`         :class:`FitResult`, what the exports read
:mod:`.fitter`         :func:`fit_flame`, which runs the stages in order
=====================  ====================================================================

Each stage is a function from a state to ``(new state, log)``; modules import only downwards
(config ← state ← landmarks, photometric ← fitter).
"""

from flame_prior.fit.config import FitterConfig, resolve_device

__all__ = ["FitterConfig", "resolve_device", "fit_flame", "check_observation", "FitResult", "ViewFit", "StageLog"]


def __getattr__(name: str):
    """The fitter's functions and types, imported on first use (PEP 562): importing this package for
    :class:`FitterConfig` alone (the CLI building its config, ``--help``) must not load torch."""
    if name in ("fit_flame", "check_observation"):
        from flame_prior.fit import fitter as module
    elif name in ("FitResult", "ViewFit"):
        from flame_prior.fit import result as module
    elif name == "StageLog":
        from flame_prior.fit import state as module
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(module, name)
