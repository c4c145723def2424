"""``flame-prior batch``: many scenes in one resumable run, on local worker processes or Ray.

Modules: :mod:`.config` (the command's config), :mod:`.scenes` (finding scenes, their keys),
:mod:`.worker` (the per-scene function and worker set-up), :mod:`.schedulers` (process pool, Ray),
:mod:`.records` (one record per scene), :mod:`.index` (index.json/csv/html), :mod:`.runner`
(:func:`run_batch`, the output layout).
"""

from flame_prior.batch.config import BatchConfig

__all__ = ["BatchConfig", "BatchOutcome", "run_batch"]


def __getattr__(name: str):
    """The runner, imported on first use (PEP 562): the CLI imports :class:`BatchConfig` without it."""
    if name in ("BatchOutcome", "run_batch"):
        from flame_prior.batch import runner

        return getattr(runner, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
