"""The package's import graph: no loop, no import that runs back up a layer.

Read from the source with ``ast`` (every ``import`` statement, also those inside functions), so a
lazy import cannot hide a loop.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "flame_prior"

#: Lowest first; a module may import its own layer or a lower one. A name matches a module and,
#: for packages, everything under it.
LAYERS = [
    ["flame_prior.errors", "flame_prior.files", "flame_prior.geometry", "flame_prior.progress", "flame_prior.quiet",
     "flame_prior.camera_trust", "flame_prior.threads", "flame_prior.shapes", "flame_prior.tracker_config",
     "flame_prior.export_config"],
    ["flame_prior.images", "flame_prior.flame", "flame_prior.render", "flame_prior.render_head",
     "flame_prior.embedding_builder", "flame_prior.lpips_weights"],
    ["flame_prior.detectors", "flame_prior.cache"],
    ["flame_prior.observe", "flame_prior.video"],
    ["flame_prior.intrinsics", "flame_prior.camera_file", "flame_prior.distortion", "flame_prior.lens_detection",
     "flame_prior.colmap_pairs", "flame_prior.colmap_family"],
    ["flame_prior.fit"],
    ["flame_prior.export"],
    ["flame_prior.track"],  # a dynamic sequence: fits, tracks and writes its own outputs
    ["flame_prior.config", "flame_prior.demo_config"],
    ["flame_prior.pipeline", "flame_prior.summary"],
    ["flame_prior.demo", "flame_prior.scan_rigs", "flame_prior.batch"],
    ["flame_prior.cli", "flame_prior.__main__"],
]


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules ``name`` imports (``from a import b`` counts ``a.b`` when that is a module)."""
    out: set[str] = set()
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("flame_prior"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = name.split(".") if is_pkg else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if not base.startswith("flame_prior"):
                continue
            subs = {f"{base}.{a.name}" for a in node.names} & known
            out.update(subs or {base})
    out.discard(name)
    return {m for m in out if m in known}


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {name: _imports(name, path, set(mods)) for name, path in mods.items()}


def _layer(module: str) -> int:
    best = None
    for i, names in enumerate(LAYERS):
        for n in names:
            if (module == n or module.startswith(n + ".")) and (best is None or len(n) > best[1]):
                best = (i, len(n))
    if best is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS in {__file__}")
    return best[0]


def test_the_graph_sees_known_edges():
    """The parser itself works: edges we know exist are found (else the checks below prove nothing)."""
    g = _graph()
    assert "flame_prior.fit.state" in g["flame_prior.fit.landmarks"]
    assert "flame_prior.export.output_dir" in g["flame_prior.pipeline"]
    assert "flame_prior.detectors.mediapipe_backend" in g["flame_prior.detectors"]  # a lazy import


def test_no_import_loop():
    g = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for d in sorted(g[m]):
            if state.get(d) == 1:
                loop = path[path.index(d):] + [d]
                raise AssertionError("import loop: " + " -> ".join(loop))
            if d not in state:
                visit(d)
        path.pop()
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m)


def test_no_import_runs_back_up_a_layer():
    bad = [f"{m} (layer {_layer(m)}) imports {d} (layer {_layer(d)})"
           for m, deps in sorted(_graph().items()) for d in sorted(deps) if _layer(d) > _layer(m)]
    assert not bad, "\n".join(bad)
