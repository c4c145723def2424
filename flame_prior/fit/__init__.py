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
from flame_prior.fit.fitter import check_observation, fit_flame
from flame_prior.fit.result import FitResult, ViewFit
from flame_prior.fit.state import StageLog

__all__ = ["FitterConfig", "resolve_device", "fit_flame", "check_observation", "FitResult", "ViewFit", "StageLog"]
