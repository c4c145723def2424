"""Regenerate ``flame_prior/data/mediapipe478_mirror.npz`` (which Face Mesh point each point becomes in
the mirror image; :func:`flame_prior.detectors.seeded.face_mesh_mirror`).

    python scripts/build_face_mesh_mirror.py [--canonical OBJ] [--out NPZ]

The default reads MediaPipe's canonical face model from ``../shared`` (or ``$FLAME_PRIOR_SHARED``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from flame_prior.detectors.seeded import build_face_mesh_mirror  # noqa: E402
from flame_prior.embedding_builder import load_canonical_face_model  # noqa: E402
from flame_prior.files import write_atomic  # noqa: E402

SHARED = Path(os.environ.get("FLAME_PRIOR_SHARED", REPO.parent / "shared"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--canonical", type=Path, default=SHARED / "mediapipe" / "canonical_face_model.obj",
                        help="MediaPipe canonical_face_model.obj (468 vertices)")
    parser.add_argument("--out", type=Path, default=REPO / "flame_prior" / "data" / "mediapipe478_mirror.npz",
                        help="output .npz")
    args = parser.parse_args(argv)
    if not args.canonical.is_file():
        print(f"error: {args.canonical}: not found", file=sys.stderr)
        return 2
    mirror = build_face_mesh_mirror(load_canonical_face_model(args.canonical)[0])
    write_atomic(args.out, lambda f: np.savez_compressed(f, mirror=mirror.astype(np.int16)))
    print(f"wrote {args.out} ({len(mirror)} points, {int((mirror == np.arange(len(mirror))).sum())} on the midline)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
