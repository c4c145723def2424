"""Adds ``flame-face`` to nerfstudio's ``ns-process-data`` without editing nerfstudio.

Why a hook at all: in nerfstudio 1.1.5, ``ns-process-data``'s subcommands are a fixed ``Union`` in
``nerfstudio/scripts/process_data.py`` (``Commands``); unlike ``ns-train``'s methods and
dataparsers there is no entry-point group for them. ``entrypoint()`` there reads the module
global ``Commands`` when it runs, so extending that global after the module is imported and before
``entrypoint()`` is called adds a subcommand.

Mechanism (chosen over the alternatives, see ``nerfstudio_plugin/__init__.py``):

* flame-prior's wheel installs ``flame_prior_nerfstudio.pth`` into site-packages. Its one line
  imports this module (only ``sys``: no torch, no nerfstudio, no ``importlib.abc``/``typing``; about a millisecond)
  and calls :func:`install`, which puts a :class:`_ExtendProcessDataFinder` first on
  ``sys.meta_path``. The finder answers for exactly one module name,
  ``nerfstudio.scripts.process_data``; every other import passes straight through.
* When that module is imported (by the ``ns-process-data`` console script), the finder lets the
  normal finder locate it and wraps the loader: after nerfstudio's module body has run,
  :func:`nerfstudio_plugin.process_data.extend_commands` appends
  ``Annotated[FlameFaceProcessor, tyro.conf.subcommand(name="flame-face")]`` to ``Commands``.
* Nothing in nerfstudio's installed files changes; ``pip uninstall flame-prior`` removes the
  ``.pth`` (it is in the wheel's RECORD) and ``ns-process-data`` is nerfstudio's own again.
* Failure is contained: if extending fails (say flame-prior's own imports are broken), a one-line
  warning goes to stderr and nerfstudio's subcommands work as before. A ``.pth`` left behind
  without this package is skipped silently (its line ignores an ``ImportError``).

The same finder also wraps nerfstudio's two checkpoint loaders after their modules are imported
(``nerfstudio.utils.eval_utils``, ``nerfstudio.engine.trainer``) so that checkpoints load under
torch's weights-only default: :mod:`nerfstudio_plugin.checkpoints`.

Before nerfstudio's module body imports torch, the finder also sets flame-prior's OpenMP wait policy
(``OMP_WAIT_POLICY=PASSIVE`` unless set: :mod:`flame_prior.threads`), which libgomp reads only when it loads.

Limits: only the console script (and anything that imports ``nerfstudio.scripts.process_data``)
sees the subcommand; ``python -m nerfstudio.scripts.process_data`` runs the module as ``__main__``
before any hook can extend it. Editable installs (``pip install -e``) do not install ``.pth`` data
files, so there ``ns-process-data flame-face`` is absent; ``flame-prior fit`` (the same config and
``run``) or ``python -m nerfstudio_plugin.process_data`` do the same job.
"""

from __future__ import annotations

import sys

__all__ = ["TARGET_MODULE", "install", "uninstall", "PTH_LINE"]

#: The one module whose import is intercepted.
TARGET_MODULE = "nerfstudio.scripts.process_data"

#: The line of ``flame_prior_nerfstudio.pth`` (a no-op when this package is not importable).
PTH_LINE = (
    "import sys; exec('try: from nerfstudio_plugin.ns_process_data_hook import install\\n"
    "except ImportError: pass\\nelse: install()')"
)


def _patch_checkpoint_loader(name: str):
    """An after-import action: ``nerfstudio_plugin.checkpoints.<name>(module)``, warning on failure."""

    def action(module) -> None:
        try:
            from nerfstudio_plugin import checkpoints

            getattr(checkpoints, name)(module)
        except Exception as e:  # noqa: BLE001 - never break nerfstudio's own commands
            print(f"flame-prior: nerfstudio checkpoints may not load under torch's weights-only default "
                  f"({type(e).__name__}: {e}).", file=sys.stderr)

    return action


def _extend(module) -> None:
    """Append ``flame-face`` to ``module.Commands``; on any failure warn and leave it as it was."""
    try:
        from nerfstudio_plugin.process_data import extend_commands

        module.Commands = extend_commands(module.Commands)
    except Exception as e:  # noqa: BLE001 - never break nerfstudio's own command
        print(f"flame-prior: `ns-process-data flame-face` is unavailable ({type(e).__name__}: {e}); "
              "nerfstudio's own subcommands are unaffected.", file=sys.stderr)


def _after_import() -> dict:
    """Module name -> what to do right after nerfstudio's module body has run."""
    return {
        TARGET_MODULE: _extend,
        # torch >= 2.6 loads weights-only by default; nerfstudio's checkpoints hold numpy scalars
        # (nerfstudio_plugin/checkpoints.py explains the fix and the alternatives).
        "nerfstudio.utils.eval_utils": _patch_checkpoint_loader("patch_eval_utils"),
        "nerfstudio.engine.trainer": _patch_checkpoint_loader("patch_trainer"),
    }


def _set_wait_policy() -> None:
    """flame-prior's OpenMP wait policy (:func:`flame_prior.threads.set_wait_policy`), set while torch
    is not loaded yet; a failure only warns."""
    try:
        from flame_prior.threads import set_wait_policy

        set_wait_policy()
    except Exception as e:  # noqa: BLE001 — never break nerfstudio's own subcommands
        print(f"flame-prior: could not set OMP_WAIT_POLICY ({type(e).__name__}: {e})", file=sys.stderr)


class _ExtendingLoader:
    """Runs the real loader, then the module's after-import action. Everything else is delegated."""

    def __init__(self, loader, action):
        self._loader = loader
        self._action = action

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        self._action(module)

    def __getattr__(self, name):  # get_source, get_code, is_package, ... for inspect and tracebacks
        return getattr(self._loader, name)


class _ExtendProcessDataFinder:
    """Meta-path finder that only wraps the loaders of :data:`TARGET_MODULE` and nerfstudio's two
    checkpoint-loading modules."""

    def find_spec(self, fullname, path, target=None):
        action = _after_import().get(fullname) if fullname.startswith("nerfstudio.") else None
        if action is None:
            return None
        if fullname == TARGET_MODULE:  # ns-process-data: before its body imports torch (flame_prior.threads)
            _set_wait_policy()
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _ExtendingLoader(spec.loader, action)
        return spec


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (idempotent). Extends at once if already imported."""
    if any(isinstance(f, _ExtendProcessDataFinder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _ExtendProcessDataFinder())
    for name, action in _after_import().items():
        module = sys.modules.get(name)
        if module is not None:
            action(module)


def uninstall() -> None:
    """Remove the finder (an already extended module keeps its ``flame-face``)."""
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _ExtendProcessDataFinder)]
