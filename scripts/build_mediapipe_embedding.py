"""Regenerate ``flame_prior/data/mediapipe468_embedding.npz`` (flame-prior's MediaPipe→FLAME embedding).

    python scripts/build_mediapipe_embedding.py [--canonical OBJ] [--flame NPZ] [--out NPZ]

Defaults read ``../shared`` (or ``$FLAME_PRIOR_SHARED``): MediaPipe's canonical face model and
the FLAME 2023 Open subset. The algorithm lives in :mod:`flame_prior.embedding_builder`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from flame_prior.embedding_builder import build_mediapipe_embedding, save_embedding  # noqa: E402

SHARED = Path(os.environ.get("FLAME_PRIOR_SHARED", REPO.parent / "shared"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--canonical", type=Path, default=SHARED / "mediapipe" / "canonical_face_model.obj",
                        help="MediaPipe canonical_face_model.obj (468 vertices, centimetres)")
    parser.add_argument("--flame", type=Path, default=SHARED / "flame-assets" / "flame2023_open_subset.npz",
                        help="FLAME-format .npz with v_template and f")
    parser.add_argument("--out", type=Path, default=REPO / "flame_prior" / "data" / "mediapipe468_embedding.npz",
                        help="output .npz")
    args = parser.parse_args(argv)
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
