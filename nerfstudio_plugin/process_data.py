"""``ns-process-data flame-face``: flame-prior's fit as a nerfstudio data processor.

The processor *is* flame-prior's :class:`flame_prior.config.FitConfig` (a subclass that adds only
``main()``), so ``ns-process-data flame-face`` and ``flame-prior fit`` take the same flags
(``--data``, ``--output-dir``, ``--flame-model``, ...) and run the same
:func:`flame_prior.pipeline.run`. The output folder is a nerfstudio dataset (format:
:mod:`flame_prior.export.nerfstudio`) that the ``flame-face`` dataparser
(:mod:`nerfstudio_plugin.dataparser`) reads in FLAME's frame.

How the subcommand reaches ``ns-process-data``: :mod:`nerfstudio_plugin.ns_process_data_hook`.
Without the hook (editable installs), ``python -m nerfstudio_plugin.process_data flame-face ...``
gives the same command line, nerfstudio's other subcommands included.

Exit status: 0 on success, else flame-prior's codes (2 bad input, 3 bad model file, 4 fit failed,
130 interrupted, 1 internal error). nerfstudio's ``entrypoint()`` logs ``RuntimeError`` and exits
0; ``main()`` therefore turns every failure into ``SystemExit(code)``, which passes through it.
"""

from __future__ import annotations

import inspect
import typing
from dataclasses import dataclass
from typing import Annotated, Union

import tyro

from flame_prior.config import FitConfig

__all__ = ["FlameFaceProcessor", "SUBCOMMAND", "extend_commands"]

#: The subcommand's name in ``ns-process-data``.
SUBCOMMAND = "flame-face"


@dataclass
class FlameFaceProcessor(FitConfig):
    """Fit FLAME to photos of one head: a nerfstudio dataset in FLAME's frame (metres, +Y up).

    Writes transforms.json, images, head masks and flame_params.npz; train with
    `ns-train nerfacto --data <output-dir> flame-face`.
    """

    def main(self) -> None:
        """Run flame-prior's pipeline; exit non-zero on failure (see the module docstring)."""
        from flame_prior.cli import execute
        from flame_prior.errors import install_signal_handlers

        install_signal_handlers()  # SIGTERM like Ctrl-C: the output dir is left untouched
        code = execute(self)
        if code != 0:
            raise SystemExit(code)


def _subcommand_names(commands) -> set[str]:
    names = set()
    for member in typing.get_args(commands) or (commands,):
        for meta in getattr(member, "__metadata__", ()):
            name = getattr(meta, "name", None)
            if name:
                names.add(name)
    return names


def extend_commands(commands):
    """``Union[commands, Annotated[FlameFaceProcessor, subcommand("flame-face")]]`` (unchanged if present)."""
    if SUBCOMMAND in _subcommand_names(commands):
        return commands
    doc = inspect.cleandoc(FlameFaceProcessor.__doc__ or "").split("\n\n")[0]
    return Union[commands, Annotated[FlameFaceProcessor, tyro.conf.subcommand(name=SUBCOMMAND, description=doc)]]


def entrypoint() -> None:
    """nerfstudio's ``ns-process-data`` with ``flame-face`` added (``python -m nerfstudio_plugin.process_data``)."""
    from flame_prior.threads import set_wait_policy

    set_wait_policy()  # before nerfstudio imports torch: see flame_prior.threads
    import nerfstudio.scripts.process_data as ns_process_data

    ns_process_data.Commands = extend_commands(ns_process_data.Commands)
    ns_process_data.entrypoint()


if __name__ == "__main__":
    entrypoint()
