"""The seeded second detection pass: a face the detector missed, looked for where a neighbouring view
had one, with the landmark model alone (its own face-presence score as the judge) and on the
mirrored image too.

Why (the turning-head scan rig, issue 12): at -60° yaw MediaPipe's face detector finds the face, but
the region it hands the landmark model makes the model reject it (face-presence 0.02, below its 0.5
gate); the mirrored image, a +60° face, is found. In a capture of one head the face is near where it
was in the view before or after (a fixed camera and a turning head: the same place; a moving
camera: close), so the neighbour's face box is a good region to try.

The search (:func:`seeded_search`), per seed (the nearest view with a face on each side in input
order, ``observe`` picks them):

1. Regions from the seed's landmarks (:func:`roi_from_landmarks`: the landmarks' box in the frame of
   the eye line, like MediaPipe's own tracking region) at 1.25, 1.5 and 1.8 times the box, shifted by
   0 or ±12 % of it along x or y: 15 regions, each on the image and on its mirror image (a -60° face
   is a +60° one there). The landmark model runs on each (:class:`~.roi_landmarker.RoiLandmarker`;
   the 192 px input upsamples small faces by itself).
2. The best region of each image (highest presence) is refined as MediaPipe tracks a face from frame
   to frame: the region is re-made from the landmarks found, up to 4 times, until its centre moves
   less than 2 % of its size. A face that passes the check below with a presence of 0.9 or more ends
   the search; else every seed and both images are tried.
3. A candidate is accepted only if the **sanity check** passes (:func:`check_seeded`); of those,
   the one with the highest presence. The check: presence at least :data:`MIN_PRESENCE` (MediaPipe's
   own gate), the refinement converged, the face's size (long side of its landmark box) within a
   factor :data:`MAX_SIZE_RATIO` of the seed's, and its **head yaw consistent with the seed's**
   (:func:`face_yaw`, from the landmark model's 3D points): at most :data:`MAX_YAW_GAP_DEG` apart,
   and when the seed is turned (:data:`TURNED_DEG` or more) turned the same way and at least as far
   (:data:`YAW_SLACK_DEG` of slack). Why the yaw rule: a face the first pass missed next to one it
   found is turned further (the first pass finds faces to about ±50°), not back towards frontal. On
   profiles and back views (the ring scan rig at 90-150°) the landmark model "finds" a face with
   presence up to 1.0, frontal (yaw 6-14°) next to seeds turned 27-54°; and its yaw saturates near
   50-60°, so a true profile next to a 60° seed reads LESS turned (the ring's 90° view: -50° next to
   -54°; its landmarks are no use there). Faces turned further than their seed: the turning-head
   rig's -60° view reads 60° next to 52°, the moving-camera rig's 57° views 49.5° next to 48.3° (on
   the mirror image) and -56° next to -41°.

Only faces with at least :data:`MIN_SEED_EYE_PX` between the outer eye corners seed a search
(:func:`seeds_a_search`): on the small-faces scan rig (full HD, 35-50 px between the eye corners)
the landmark model's seeded reading of two missed studio views passed every check above and was
wrong, one view 60° off (COLMAP's camera for it, kept without the seeded face: 0.6°); the issue's
own line between well-resolved and small faces is 60 px (the turning-head rig's -49° seed is above it:
tests/test_seeded_detection.py).

Landmarks found on the mirror image are mirrored back: ``x -> W - x`` and the Face Mesh points
renumbered by :func:`face_mesh_mirror` (the subject's left eye of the mirror image is the right eye
of the photo), so they are the photo's own 478 points.

Provenance: such a detection has ``Detection.provenance == "seeded"`` and a note naming the seed view,
the presence and whether the mirror image gave it; it is cached under its own key (the photo, the
seed regions and the backend version), never under the photo's first-pass key.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Callable

import numpy as np

from flame_prior.detectors.roi_landmarker import Roi

__all__ = ["VERSION", "MIN_SEED_EYE_PX", "seeds_a_search", "MIN_PRESENCE", "MAX_SIZE_RATIO", "MAX_YAW_GAP_DEG", "SeededFace", "face_mesh_mirror",
           "mirror_points", "roi_from_landmarks", "face_forward", "face_yaw", "seeded_search", "check_seeded",
           "build_face_mesh_mirror"]

VERSION = "seeded/4"  # 2: the head-yaw rule; 3: at least as turned as the seed; 4: seeds of 60 px or more
"""Cache version of the seeded search: bump it whenever its output for the same photo and seeds changes."""

#: MediaPipe keeps a face when the landmark model's presence score is at least this (its own gate).
MIN_PRESENCE = 0.5
#: A face that passes the check with at least this presence ends the search (the rest are not tried).
SURE_PRESENCE = 0.9
#: A seeded face's size may differ from the seed view's by at most this factor (either way).
MAX_SIZE_RATIO = 1.5
#: A face seeds a search only with at least this many pixels between its outer eye corners.
MIN_SEED_EYE_PX = 60.0
#: Largest head-yaw difference between a seeded face and its seed, degrees.
MAX_YAW_GAP_DEG = 30.0
#: A seed turned at least this far (degrees) fixes the side the seeded face must be turned to ...
TURNED_DEG = 20.0
#: ... and the seeded face may read at most this much less turned than the seed (degrees: noise).
YAW_SLACK_DEG = 2.0
#: Region sizes (times the seed's landmark box) and shifts (fractions of the box) tried in step 1.
SCALES = (1.5, 1.25, 1.8)
SHIFTS = ((0.0, 0.0), (0.12, 0.0), (-0.12, 0.0), (0.0, 0.12), (0.0, -0.12))

_MIRROR: np.ndarray | None = None


def face_mesh_mirror() -> np.ndarray:
    """``(478,)`` int64: the Face Mesh point that point ``i`` becomes in the mirror image.

    The 468 mesh points pair up by MediaPipe's canonical face model, which is exactly symmetric
    (:func:`build_face_mesh_mirror`, shipped as ``flame_prior/data/mediapipe478_mirror.npz``;
    ``scripts/build_mediapipe_embedding.py --mirror`` regenerates it); 28 points on the midline map to themselves.
    The irises swap (468..472 <-> 473..477) with the ring's points renumbered 469 <-> 476, 470 <-> 475,
    471 <-> 474, 472 <-> 477 (read off Face Mesh on a photo and its mirror: FFHQ 00000 and the shared
    30-view scene's 15.jpg agree to 0.4-5 px). An involution: ``m[m] == arange(478)``.
    """
    global _MIRROR
    if _MIRROR is None:
        with resources.as_file(resources.files("flame_prior") / "data" / "mediapipe478_mirror.npz") as path:
            with np.load(path, allow_pickle=False) as z:
                _MIRROR = np.asarray(z["mirror"], dtype=np.int64)
    return _MIRROR


def build_face_mesh_mirror(canonical_vertices: np.ndarray) -> np.ndarray:
    """The ``(478,)`` mirror permutation (:func:`face_mesh_mirror`) from the canonical face model's
    ``(468, 3)`` vertices (x across the face): each vertex's partner is the vertex nearest to it
    mirrored in ``x = 0``; raises ``ValueError`` when that pairing is not exact (not the symmetric
    canonical model)."""
    v = np.asarray(canonical_vertices, dtype=np.float64)
    mirrored = v * np.array([-1.0, 1.0, 1.0])
    d = np.linalg.norm(mirrored[:, None] - v[None], axis=2)
    pair = d.argmin(axis=1)
    if len(v) != 468 or d.min(axis=1).max() > 1e-6 or not np.array_equal(pair[pair], np.arange(468)):
        raise ValueError("not MediaPipe's canonical face model: its 468 vertices do not pair up by x -> -x")
    iris = {468: 473, 469: 476, 470: 475, 471: 474, 472: 477}
    iris.update({b: a for a, b in iris.items()})
    return np.concatenate([pair, [iris[i] for i in range(468, 478)]]).astype(np.int64)


def mirror_points(points: np.ndarray, width: int) -> np.ndarray:
    """Face Mesh points ``(478, D)`` (x first, pixels) of the mirror image of a ``width``-pixel-wide
    photo as points of the photo: ``x -> width - x`` (corner origin: pixel ``j``'s centre ``j + 0.5``
    goes to ``width - j - 0.5``) and renumbered by :func:`face_mesh_mirror`."""
    p = np.array(points, dtype=np.float64)
    p[:, 0] = width - p[:, 0]
    return p[face_mesh_mirror()]


def roi_from_landmarks(landmarks: np.ndarray, scale: float = 1.5, shift: tuple[float, float] = (0.0, 0.0)) -> Roi:
    """The region MediaPipe tracks a face with, from ``(478, 2)`` (or ``(468, 2)``) Face Mesh points:
    the points' box in the frame of the eye line (33 -> 263, so the rotation levels the eyes),
    made square on its long side, ``scale`` times, its centre moved by ``shift`` (fractions of the
    box's side, along the box's own x and y)."""
    p = np.asarray(landmarks, dtype=np.float64)[:468, :2]
    d = p[263] - p[33]
    rotation = float(np.arctan2(d[1], d[0]))
    c, s = np.cos(rotation), np.sin(rotation)
    axes = np.array([[c, s], [-s, c]])  # rows: the box's x and y axes in image pixels
    local = p @ axes.T
    lo, hi = local.min(axis=0), local.max(axis=0)
    side = float((hi - lo).max())
    centre = ((lo + hi) / 2 + np.asarray(shift) * side) @ axes
    return Roi(float(centre[0]), float(centre[1]), scale * side, scale * side, rotation)


def face_forward(mesh: np.ndarray) -> np.ndarray:
    """Unit ``(3,)`` forward axis of a face from Face Mesh's 3D points ``(>= 468, 3)`` as
    ``(x * W, y * H, z * W)``: ``(263 - 33) x (10 - 152)``, signed to point out through the nose
    tip (1). Frontal to the camera it is about ``(0, 0, -1)`` (Face Mesh's z grows away from it)."""
    m = np.asarray(mesh, dtype=np.float64)
    fwd = np.cross(m[263] - m[33], m[10] - m[152])
    fwd /= np.linalg.norm(fwd) + 1e-12
    if np.dot(fwd, m[1] - m[:468].mean(axis=0)) < 0:  # out through the nose tip
        fwd = -fwd
    return fwd


def face_yaw(points3d: np.ndarray) -> float:
    """Head yaw, degrees, from Face Mesh's 3D points (:func:`face_forward`): 0 facing the camera,
    positive when the face turns towards +x of the image (the nose points right on the screen)."""
    f = face_forward(points3d)
    return float(np.degrees(np.arctan2(f[0], -f[2])))


@dataclass
class SeededFace:
    """What the seeded search found for one view.

    Attributes:
        points: ``(478, 3)`` float64 Face Mesh points ``(x * W, y * H, z * W)`` in the photo's pixels
            (mirrored back when ``mirrored``).
        presence: the landmark model's face-presence score on the final region.
        mirrored: found on the mirror image.
        converged: the region refinement settled (step 2).
        seed: the name of the seed view.
        seed_size: the seed face's size (long side of its landmark box), pixels.
        seed_yaw_deg: the seed face's head yaw (:func:`face_yaw`), degrees.
        rejected: why the sanity check refused it (:func:`check_seeded`), None when it passed.
    """

    points: np.ndarray
    presence: float
    mirrored: bool
    converged: bool
    seed: str
    seed_size: float
    seed_yaw_deg: float
    rejected: str | None = None

    @property
    def yaw_deg(self) -> float:
        """The face's head yaw (:func:`face_yaw`), degrees."""
        return face_yaw(self.points)

    @property
    def size(self) -> float:
        """Long side of the face's landmark box, pixels."""
        return _box_side(self.points)


Landmarker = Callable[[np.ndarray, Roi], tuple[float, np.ndarray]]


def seeded_search(landmarker: Landmarker, pixels: np.ndarray,
                  seeds: list[tuple[str, np.ndarray, float]]) -> SeededFace | None:
    """Look for the face of ``pixels`` ``(H, W, 3)`` uint8 RGB in regions seeded by ``seeds``
    (``(view name, (478, 2) landmarks of its face in the same pixel grid, its head yaw in degrees)``;
    module docstring, steps 1-3). Returns the checked candidate with the highest presence, else the
    best refused one (``rejected`` says why), or None when there are no seeds."""
    W = pixels.shape[1]
    images = {False: pixels, True: None}  # the mirror image is made when first needed
    best: SeededFace | None = None
    for name, seed, seed_yaw in seeds:
        seed_size = _box_side(seed)
        for mirrored in (False, True):
            if images[mirrored] is None:
                images[mirrored] = np.ascontiguousarray(pixels[:, ::-1])
            image = images[mirrored]
            top = (-1.0, None)
            for scale in SCALES:
                for shift in SHIFTS:
                    roi = roi_from_landmarks(seed, scale, shift)
                    roi = roi.mirrored(W) if mirrored else roi
                    presence, points = landmarker(image, roi)
                    if presence > top[0]:
                        top = (presence, points)
            presence, points, converged = _refine(landmarker, image, top[1])
            if mirrored:
                points = mirror_points(points, W)
            face = SeededFace(points, presence, mirrored, converged, name, seed_size, seed_yaw)
            face.rejected = check_seeded(face)
            if best is None or (face.rejected is None, face.presence) > (best.rejected is None, best.presence):
                best = face
            if face.rejected is None and face.presence >= SURE_PRESENCE:
                return face  # a sure face: the other tries cannot do better by much (and cost)
    return best


def seeds_a_search(points: np.ndarray) -> bool:
    """Whether a face with these Face Mesh landmarks ``(478, 2+)`` may seed a search: at least
    :data:`MIN_SEED_EYE_PX` between the outer eye corners (points 33 and 263); module docstring."""
    p = np.asarray(points, dtype=np.float64)
    return float(np.linalg.norm(p[33, :2] - p[263, :2])) >= MIN_SEED_EYE_PX


def check_seeded(face: SeededFace) -> str | None:
    """None when a seeded face passes the sanity check (module docstring, step 3), else why not."""
    if face.presence < MIN_PRESENCE:
        return f"face presence {face.presence:.2f} below {MIN_PRESENCE}"
    if not face.converged:
        return "the region did not settle on a face"
    ratio = face.size / max(face.seed_size, 1e-6)
    if not 1 / MAX_SIZE_RATIO <= ratio <= MAX_SIZE_RATIO:
        return f"face {face.size:.0f} px against {face.seed_size:.0f} px in {face.seed} (more than {MAX_SIZE_RATIO}x)"
    yaw, seed_yaw = face.yaw_deg, face.seed_yaw_deg
    if abs(yaw - seed_yaw) > MAX_YAW_GAP_DEG:
        return f"head yaw {yaw:.0f}° against {seed_yaw:.0f}° in {face.seed} (more than {MAX_YAW_GAP_DEG:.0f}° apart)"
    if abs(seed_yaw) >= TURNED_DEG and (np.sign(yaw) != np.sign(seed_yaw) or abs(yaw) < abs(seed_yaw) - YAW_SLACK_DEG):
        return f"head yaw {yaw:.0f}°: less turned than {seed_yaw:.0f}° in {face.seed}"
    return None


def _refine(landmarker: Landmarker, image: np.ndarray, points: np.ndarray,
            rounds: int = 4, settle: float = 0.02) -> tuple[float, np.ndarray, bool]:
    """Re-make the region from the landmarks found until its centre moves less than ``settle`` of its
    size (MediaPipe's tracking step); returns the last presence, landmarks and whether it settled."""
    roi = roi_from_landmarks(points)
    presence = 0.0
    for _ in range(rounds):
        presence, points = landmarker(image, roi)
        new = roi_from_landmarks(points)
        moved = np.hypot(new.cx - roi.cx, new.cy - roi.cy) / max(roi.width, 1e-6)
        roi = new
        if moved < settle:
            return presence, points, True
    return presence, points, False


def _box_side(points: np.ndarray) -> float:
    p = np.asarray(points, dtype=np.float64)[:468, :2]
    return float((p.max(axis=0) - p.min(axis=0)).max())

