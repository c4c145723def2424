"""nerfstudio integration of flame-prior (the ``[nerfstudio]`` extra).

* ``ns-process-data flame-face``: :mod:`nerfstudio_plugin.process_data` (flame-prior's ``FitConfig``
  with ``main()``), added to nerfstudio's fixed subcommand ``Union`` by
  :mod:`nerfstudio_plugin.ns_process_data_hook`, which a ``.pth`` file installs at interpreter start.
* ``flame-face`` dataparser for ``ns-train``: :mod:`nerfstudio_plugin.dataparser`, registered in the
  entry-point group ``nerfstudio.dataparser_configs``.

Mechanism for ``ns-process-data`` (nerfstudio 1.1.5 has no entry-point group for it), weighed:

* a console script of our own named ``ns-process-data`` replaces nerfstudio's file in ``bin/``;
  uninstalling flame-prior then deletes it and leaves nerfstudio without the command: rejected;
* a differently named command (``flame-prior fit``) exists anyway, but is not ``ns-process-data``;
* ``sitecustomize``/``usercustomize``: one global file per environment that other tools own: rejected;
* editing or patching nerfstudio's files: forbidden, and lost on reinstall;
* chosen: a ``.pth`` line that registers a meta-path finder for the single module
  ``nerfstudio.scripts.process_data`` and extends its ``Commands`` right after it is imported.
  Cost at every interpreter start: importing one standard-library-only module (measured in the
  tests, well under a millisecond); nerfstudio, torch and flame-prior load only when
  ``ns-process-data`` runs. pip removes the ``.pth`` on uninstall; setuptools' own
  ``distutils-precedence.pth`` uses the same mechanism.

This package stays cheap to import (the ``.pth`` imports a submodule of it): the specs load lazily.
"""

from __future__ import annotations

__all__ = ["flame_face_dataparser", "FlameFaceDataParserConfig", "FlameFaceProcessor"]


def __getattr__(name: str):
    if name in ("flame_face_dataparser", "FlameFaceDataParserConfig"):
        from nerfstudio_plugin import dataparser

        return getattr(dataparser, name)
    if name == "FlameFaceProcessor":
        from nerfstudio_plugin.process_data import FlameFaceProcessor

        return FlameFaceProcessor
    raise AttributeError(f"module 'nerfstudio_plugin' has no attribute {name!r}")
