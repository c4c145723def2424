"""Regenerate ``flame_prior/data/mediapipe468_embedding.npz`` (flame-prior's MediaPipe→FLAME embedding)
or, with ``--mirror``, ``flame_prior/data/mediapipe478_mirror.npz`` (the Face Mesh point each point
becomes in the mirror image, :func:`flame_prior.detectors.seeded.face_mesh_mirror`).

    python scripts/build_mediapipe_embedding.py [--canonical OBJ] [--flame NPZ] [--out NPZ]
    python scripts/build_mediapipe_embedding.py --mirror [--canonical OBJ] [--out NPZ]

Defaults read ``../shared`` (or ``$FLAME_PRIOR_SHARED``): MediaPipe's canonical face model and
the FLAME 2023 Open subset. The algorithms live in :mod:`flame_prior.embedding_builder` and
:mod:`flame_prior.detectors.seeded`.
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
from flame_prior.embedding_builder import build_mediapipe_embedding, load_canonical_face_model, save_embedding  # noqa: E402
from flame_prior.files import write_atomic  # noqa: E402

SHARED = Path(os.environ.get("FLAME_PRIOR_SHARED", REPO.parent / "shared"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--canonical", type=Path, default=SHARED / "mediapipe" / "canonical_face_model.obj",
                        help="MediaPipe canonical_face_model.obj (468 vertices, centimetres)")
    parser.add_argument("--flame", type=Path, default=SHARED / "flame-assets" / "flame2023_open_subset.npz",
                        help="FLAME-format .npz with v_template and f")
    parser.add_argument("--out", type=Path, default=None,
                        help="output .npz (default: flame_prior/data/mediapipe468_embedding.npz, with --mirror "
                             "flame_prior/data/mediapipe478_mirror.npz)")
    parser.add_argument("--mirror", action="store_true", help="write the mirror table instead of the embedding")
    args = parser.parse_args(argv)
    data = REPO / "flame_prior" / "data"
    if args.mirror:
        out = args.out or data / "mediapipe478_mirror.npz"
        if not args.canonical.is_file():
            print(f"error: {args.canonical}: not found", file=sys.stderr)
            return 2
        mirror = build_face_mesh_mirror(load_canonical_face_model(args.canonical)[0])
        write_atomic(out, lambda f: np.savez_compressed(f, mirror=mirror.astype(np.int16)))
        print(f"wrote {out} ({len(mirror)} points, {int((mirror == np.arange(len(mirror))).sum())} on the midline)")
        return 0
    args.out = args.out or data / "mediapipe468_embedding.npz"
    for path in (args.canonical, args.flame):
        if not path.is_file():
            print(f"error: {path}: not found", file=sys.stderr)
            return 2
    emb = build_mediapipe_embedding(args.canonical, args.flame)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_embedding(emb, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes, {len(emb.landmark_indices)} landmarks)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
