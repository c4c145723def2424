"""MediaPipe backend: Face Mesh (478 points with iris) + selfie-segmentation head mask, offline.

Every model ships inside the mediapipe 0.10.9 wheel (legacy ``mp.solutions`` API); nothing is
downloaded.

Detection:

1. Face Mesh (``static_image_mode=True``, ``refine_landmarks=True``, up to 4 faces) on the image,
   downscaled to at most ``max_side`` pixels on the long side (coordinates are scaled back).
2. No face? Recall passes for turned (40-60° yaw) and small faces, where Face Mesh's own detector
   gives up first: Face Mesh again with a low detection threshold (``recall_confidence``, 0.2);
   then the full-range and the short-range face detectors (``model_selection=1`` and ``0``, at
   the low threshold) look for boxes, and the low-threshold Face Mesh runs on crops 1.8, 2.5 and
   3.5 times each box (largest box first) at the original resolution, resized so the long side is
   at most 768 px (small faces are upsampled to at least 256 px). Measured on renders of the
   scan (scan_rigs): faces at 45-60° yaw with 70-105 px between the eye corners that the single
   pass missed are found.
3. No box at all? The **tiled pass**: the whole image is downscaled to ``max_side`` and then again
   to the detectors' own 192/128 px input, so a face 40 px between the eye corners in a full-HD
   frame is a few pixels there. The full- and short-range face detectors (low threshold) run on
   square tiles of the original-resolution image, 640 and 768 px (``tile_px``), neighbours
   overlapping by at least 30 % (``tile_overlap``), each resized by the detector to its input;
   the boxes are mapped back, merged (IoU 0.3, highest score kept) and handed, highest score first,
   to the crop + low-threshold Face Mesh of step 2. A note says the face came from this pass.
   Measured on the small-faces scan rig (full HD, k1 = -0.25; renders of the scan): the four views in
   the issue's range that steps 1-2 missed, -47°/41 px, -33°/38 px, -20°/37 px and 33°/44 px (yaw /
   eye-corner distance), are found, outer eye corners 1.3-6.9 px from the truth projection (the
   found views' 0.6-5.8 px); the 60°/27 px view too (3.9 and 15.3 px: its far corner is hidden);
   the -60°/19 px view not. Only 640 and 768 px tiles together find all four; 384 and 512 px tiles
   find faces in the textured background (the landmark model's presence 0.96-1.0 on them), 640-768 px
   tiles none on the small-faces, ring (back views) and moving-camera rigs. It runs only when steps
   1-2 saw no box, so a photo with a face found before is untouched (the turning-head rig: every
   view as before; its -60° view has a whole-image box and is left to the seeded pass). Cost, per
   full-HD photo without a box: 16 tiles, two detectors each, 0.3-0.4 CPU s (the whole detection
   0.05 -> 0.4-0.6 CPU s, measured on 2 contended cores).
   The whole tool on that rig (scan_rigs.evaluate_rig, main at c3c2877, same renders): 10/10 cameras
   instead of 9/10, but rotations 0.69° / 1.22° median / max instead of 0.28° / 1.05°. Not the new
   landmarks (the landmark stage fits all 9 faces at 0.8-1.8 px) nor COLMAP's image order (the images now
   go to COLMAP in path order whatever was detected; the same cameras): COLMAP's per-view retry has four
   more faces to explain, two of them badly (studio_02 focal 2849 px for 1798, k1 +0.41 for -0.25), so
   the multi-view rule rejects it (30 % of the face size) and the shared camera's fit, every camera
   flagged, is kept; with those faces missing the retry passed (42 % -> within the rule).
4. The largest face (area of its landmarks' bounding box) is kept; a note says how many were seen.
5. A face that is small in the downscaled image (under 256 px) is re-run on an original-resolution
   crop, so a big photo does not lose precision to the downscale.

The seeded second pass (:meth:`MediaPipeDetector.detect_seeded`, run by :func:`flame_prior.observe.observe`
on photos where all of the above found nothing): the landmark model alone on regions taken from a
neighbouring view's face, and on the mirror image (:mod:`flame_prior.detectors.seeded`).

Coordinates: Face Mesh's normalised ``x * W, y * H`` of the image (or crop) it was given is already
the corner-origin, pixel-centre-at-+0.5 convention; crops map back by adding their integer corner.

**Confidence (legacy Face Mesh has no per-point visibility): the facing rule.** The 468 mesh
points are lifted to 3D as ``(x * W, y * H, z * W)`` (Face Mesh's ``z`` has the scale of ``x``;
smaller is nearer the camera). Triangles are the 3-cliques of ``FACEMESH_TESSELATION``, each
oriented to point away from a head centre placed ``0.6`` face widths behind the landmarks'
centroid along the face's forward axis (``(263 − 33) × (10 − 152)``, signed to point out through the
nose tip). A point's normal is the area-weighted sum of its triangles' normals; with the camera
looking along +z, ``facing = −n_z`` is the cosine between the normal and the direction to the
camera (orthographic approximation). Confidence is ``clip((facing − 0.1) / 0.3, 0, 1)``: 0 for
points turned 84° or more away (the far cheek and jaw contour, the far side of the nose under
yaw), 1 from 66° towards the camera. Each iris point takes the mean confidence of its eye's
contour points.
"""

from __future__ import annotations

import cv2
import numpy as np

from flame_prior.detectors.base import Detection
from flame_prior.detectors.headmask import HeadMasker
from flame_prior.detectors.seeded import VERSION as SEEDED_VERSION, face_forward, face_yaw, roi_from_landmarks, seeds_a_search, seeded_search
from flame_prior.images import InputImage

__all__ = ["MediaPipeDetector", "facing_confidence", "mesh_triangles"]

VERSION = "mediapipe-0.10.9/face-mesh-478/3"  # 2: recall passes for turned and small faces; 3: the tiled pass
"""Cache version of this backend: bump it whenever its output for the same image changes."""

_RIGHT_EYE = [7, 33, 133, 144, 145, 153, 154, 155, 157, 158, 159, 160, 161, 163, 173, 246]
_LEFT_EYE = [249, 263, 362, 373, 374, 380, 381, 382, 384, 385, 386, 387, 388, 390, 398, 466]
_RIGHT_IRIS = list(range(468, 473))
_LEFT_IRIS = list(range(473, 478))


_TRIANGLES: np.ndarray | None = None


def mesh_triangles() -> np.ndarray:
    """``(F, 3)`` int64 triangles of the 468-point Face Mesh: the 3-cliques of its tessellation edges."""
    global _TRIANGLES
    if _TRIANGLES is None:
        from mediapipe.python.solutions.face_mesh_connections import FACEMESH_TESSELATION

        adj: dict[int, set[int]] = {}
        for a, b in FACEMESH_TESSELATION:
            adj.setdefault(a, set()).add(b)
            adj.setdefault(b, set()).add(a)
        tris = {tuple(sorted((a, b, c))) for a, b in FACEMESH_TESSELATION for c in adj[a] & adj[b]}
        _TRIANGLES = np.array(sorted(tris), dtype=np.int64)
    return _TRIANGLES


def facing_confidence(points3d: np.ndarray) -> np.ndarray:
    """Per-point confidence of Face Mesh points by the facing rule (module docstring).

    Args:
        points3d: ``(478, 3)`` or ``(468, 3)`` as ``(x * W, y * H, z * W)``, pixels.

    Returns:
        ``(N,)`` float32 in [0, 1], same N as the input.
    """
    P = np.asarray(points3d, dtype=np.float64)
    mesh = P[:468]
    tri = mesh_triangles()
    fwd = face_forward(mesh)
    centroid = mesh.mean(axis=0)
    width = np.linalg.norm(mesh[454] - mesh[234])
    centre = centroid - fwd * 0.6 * width

    a, b, c = mesh[tri[:, 0]], mesh[tri[:, 1]], mesh[tri[:, 2]]
    n = np.cross(b - a, c - a)  # length = 2 * area: area weighting for free
    outward = (a + b + c) / 3 - centre
    n *= np.sign(np.einsum("ij,ij->i", n, outward))[:, None]
    vn = np.zeros_like(mesh)
    for k in range(3):
        np.add.at(vn, tri[:, k], n)
    vn /= np.linalg.norm(vn, axis=1, keepdims=True) + 1e-12
    facing = -vn[:, 2]
    conf = np.clip((facing - 0.1) / 0.3, 0.0, 1.0)
    if len(P) > 468:
        out = np.zeros(len(P))
        out[:468] = conf
        out[_RIGHT_IRIS] = conf[_RIGHT_EYE].mean()
        out[_LEFT_IRIS] = conf[_LEFT_EYE].mean()
        conf = out
    return conf.astype(np.float32)


class MediaPipeDetector:
    """Face Mesh + head mask; holds the MediaPipe graphs (``close()`` frees them)."""

    name = "mediapipe"
    version = VERSION
    seeded_version = SEEDED_VERSION  # the seeded pass's own cache version (flame_prior.observe)
    cacheable = True

    def __init__(self, max_side: int = 1600, min_detection_confidence: float = 0.5,
                 recall_confidence: float = 0.2, tiles: bool = True, tile_px: tuple[int, ...] = (640, 768),
                 tile_overlap: float = 0.3) -> None:
        from mediapipe.python.solutions.face_mesh import FaceMesh

        self.max_side = max_side
        self._min_conf = min_detection_confidence
        self._recall_conf = recall_confidence
        self._mesh_low = None  # low-threshold Face Mesh of the recall passes, created when first needed
        self.tiles = tiles
        self.tile_px = tuple(tile_px)
        self.tile_overlap = tile_overlap
        self._mesh = FaceMesh(
            static_image_mode=True,
            max_num_faces=4,
            refine_landmarks=True,
            min_detection_confidence=min_detection_confidence,
        )
        self._boxes = None  # full- and short-range face detectors, created when first needed
        self._roi_landmarker = None  # the landmark model alone (seeded pass), created when first needed
        self._masker = HeadMasker()

    def close(self) -> None:
        self._mesh.close()
        self._masker.close()
        if self._roi_landmarker is not None:
            self._roi_landmarker.close()
        for graph in (self._boxes or []) + ([self._mesh_low] if self._mesh_low is not None else []):
            graph.close()

    def __enter__(self) -> MediaPipeDetector:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def detect(self, image: InputImage) -> Detection | None:
        """The largest face of ``image``, or None when there is none."""
        return self.detect_pixels(image.pixels)

    def detect_pixels(self, pixels: np.ndarray) -> Detection | None:
        """Landmarks, confidence and head mask of the largest face in ``pixels`` ``(H, W, 3)`` uint8 RGB, or None."""
        H, W = pixels.shape[:2]
        scale = min(1.0, self.max_side / max(H, W))
        small = _resize(pixels, scale)
        faces = self._run_mesh(small, (W, H))
        n_seen = len(faces)
        tiled_note = ""
        if not faces:  # recall passes (module docstring, step 2)
            faces = self._run_mesh(small, (W, H), low=True)
            n_seen = len(faces)
        whole_image_boxes: list[np.ndarray] = []
        if not faces:
            whole_image_boxes = [b * np.array([W, H, W, H]) for b in self._face_boxes(small)]
            n_seen = len(whole_image_boxes)
            faces = self._faces_in_boxes(pixels, whole_image_boxes)
        if not faces and not whole_image_boxes and self.tiles:  # tiled pass (module docstring, step 3)
            boxes = self._tiled_face_boxes(pixels)
            faces = self._faces_in_boxes(pixels, boxes)
            n_seen = len(faces)
            if faces:
                tiled_note = (f"found by the tiled pass (face detectors on {min(self.tile_px)}-{max(self.tile_px)} px "
                              f"tiles at full resolution; {len(boxes)} candidate box(es))")
        if not faces:
            return None
        faces.sort(key=lambda f: -_box_area(f))
        face = faces[0]
        notes = [f"{n_seen} faces, took the largest"] if n_seen > 1 else []
        if tiled_note:
            notes.append(tiled_note)
        if scale < 1.0 and _box_side(face) * scale < 256:
            refined = self._mesh_on_crop(pixels, _box(face), expand=2.0)
            centre = np.array(_centre(face))
            refined = [f for f in refined if np.linalg.norm(np.array(_centre(f)) - centre) < 0.25 * _box_side(face)]
            if refined:
                face = refined[0]

        landmarks = face[:, :2].astype(np.float32)
        confidence = facing_confidence(face)
        mask = self._masker(pixels, landmarks, "mediapipe478")
        return Detection(landmarks, confidence, "mediapipe478", mask, _box(face), notes)

    def detect_seeded(self, image: InputImage, seeds: list[tuple[InputImage, Detection]]) -> Detection | None:
        """The face of ``image`` looked for in regions seeded by other photos' faces (``(photo, its
        detection)``, a pixel grid of the same size), on the image and its mirror; None when no
        candidate passes the sanity check (:mod:`flame_prior.detectors.seeded`). The detection has
        ``provenance="seeded"`` and a note that says how it was found."""
        usable = [(im, d) for im, d in seeds if d.landmark_format == "mediapipe478" and seeds_a_search(d.landmarks)]
        if not usable:
            return None
        if self._roi_landmarker is None:
            from flame_prior.detectors.roi_landmarker import RoiLandmarker

            self._roi_landmarker = RoiLandmarker()
        # The seed's head yaw from the landmark model's 3D points on its own region (cached
        # detections keep only 2D landmarks): one run of the model.
        seed_faces = [(im.name, d.landmarks, face_yaw(self._roi_landmarker(im.pixels, roi_from_landmarks(d.landmarks))[1]))
                      for im, d in usable]
        face = seeded_search(self._roi_landmarker, image.pixels, seed_faces)
        if face is None or face.rejected is not None:
            return None
        landmarks = face.points[:, :2].astype(np.float32)
        mask = self._masker(image.pixels, landmarks, "mediapipe478")
        note = (f"seeded detection: no face on the first pass; found by the landmark model in the region of "
                f"{face.seed}'s face{' on the mirror image' if face.mirrored else ''} (face presence "
                f"{face.presence:.2f}; {face.size:.0f} px, {face.seed_size:.0f} px in {face.seed}; head yaw "
                f"{face.yaw_deg:.0f}°, {face.seed_yaw_deg:.0f}° there)")
        return Detection(landmarks, facing_confidence(face.points), "mediapipe478", mask, _box(face.points), [note],
                         "seeded")

    def _run_mesh(self, image: np.ndarray, size: tuple[int, int], low: bool = False) -> list[np.ndarray]:
        """Face Mesh on ``image``: ``(478, 3)`` float64 ``(x * w, y * h, z * w)`` per face, ``(w, h) = size``.

        ``size`` is the size of the grid ``image`` was resized from, so the normalised output maps
        straight to it (no rounding of the resized size creeps in).
        """
        w, h = size
        mesh = self._mesh
        if low:
            if self._mesh_low is None:
                from mediapipe.python.solutions.face_mesh import FaceMesh

                self._mesh_low = FaceMesh(static_image_mode=True, max_num_faces=1, refine_landmarks=True,
                                          min_detection_confidence=self._recall_conf)
            mesh = self._mesh_low
        res = mesh.process(np.ascontiguousarray(image))
        out = []
        for lm in res.multi_face_landmarks or []:
            a = np.array([(p.x, p.y, p.z) for p in lm.landmark], dtype=np.float64)
            out.append(a * np.array([w, h, w]))
        return out

    def _face_boxes(self, image: np.ndarray) -> list[np.ndarray]:
        """Face boxes ``(x0, y0, x1, y1)`` normalised to [0, 1] from the full-range detector, else the
        short-range one (low threshold), largest first."""
        boxes = []
        for detector in self._box_detectors():
            boxes = [box for _, box in _detected_boxes(detector, image)]
            if boxes:
                break
        boxes.sort(key=lambda b: -(b[2] - b[0]) * (b[3] - b[1]))
        return boxes

    def _box_detectors(self) -> list:
        """The full- and short-range face detectors (low threshold), created on first use."""
        if self._boxes is None:
            from mediapipe.python.solutions.face_detection import FaceDetection

            self._boxes = [FaceDetection(model_selection=m, min_detection_confidence=self._recall_conf) for m in (1, 0)]
        return self._boxes

    def _faces_in_boxes(self, pixels: np.ndarray, boxes: list[np.ndarray]) -> list[np.ndarray]:
        """The low-threshold Face Mesh on crops 1.8, 2.5 and 3.5 times each box in turn: the first face found
        (a one-element list), or an empty list."""
        for box in boxes:
            for expand in (1.8, 2.5, 3.5):
                faces = self._mesh_on_crop(pixels, box, expand=expand, low=True)
                if faces:
                    return faces[:1]
        return []

    def _tiled_face_boxes(self, pixels: np.ndarray) -> list[np.ndarray]:
        """Face boxes ``(x0, y0, x1, y1)`` in pixels from the full- and short-range face detectors on
        overlapping tiles of the original-resolution image (module docstring, step 3), duplicates
        merged, highest score first."""
        H, W = pixels.shape[:2]
        found: list[tuple[float, np.ndarray]] = []
        tiles = [t for side in self.tile_px for t in _tiles(W, H, side, self.tile_overlap)]
        for x0, y0, side in tiles:
            tile = pixels[y0:y0 + side, x0:x0 + side]
            for detector in self._box_detectors():
                found += [(score, box * side + np.array([x0, y0, x0, y0], dtype=np.float64))
                          for score, box in _detected_boxes(detector, tile)]
        found.sort(key=lambda sb: -sb[0])
        kept: list[np.ndarray] = []
        for _, box in found:
            if all(_iou(box, k) < 0.3 for k in kept):
                kept.append(box)
        return kept

    def _mesh_on_crop(self, pixels: np.ndarray, box, expand: float, max_side: int = 768,
                      low: bool = False) -> list[np.ndarray]:
        """Face Mesh on a square crop ``expand`` times the box around its centre; results in original pixels."""
        H, W = pixels.shape[:2]
        x0, y0, x1, y1 = box
        cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, expand * max(x1 - x0, y1 - y0) / 2
        cx0, cy0 = int(max(np.floor(cx - half), 0)), int(max(np.floor(cy - half), 0))
        cx1, cy1 = int(min(np.ceil(cx + half), W)), int(min(np.ceil(cy + half), H))
        if cx1 - cx0 < 8 or cy1 - cy0 < 8:
            return []
        crop = pixels[cy0:cy1, cx0:cx1]
        s = min(1.0, max_side / max(crop.shape[:2]))
        if max(crop.shape[:2]) < 256:  # a small face: upsample so the mesh model sees enough pixels
            s = 256 / max(crop.shape[:2])
            h, w = crop.shape[:2]
            crop = cv2.resize(crop, (round(w * s), round(h * s)), interpolation=cv2.INTER_CUBIC)
            s = 1.0
        faces = self._run_mesh(_resize(crop, s), (cx1 - cx0, cy1 - cy0), low=low)
        return [f + np.array([cx0, cy0, 0.0]) for f in faces]


def _detected_boxes(detector, image: np.ndarray) -> list[tuple[float, np.ndarray]]:
    """``(score, box)`` of each face a MediaPipe face detector finds in ``image``: the box ``(x0, y0, x1, y1)``
    normalised to [0, 1] of the image."""
    res = detector.process(np.ascontiguousarray(image))
    out = []
    for d in res.detections or []:
        bb = d.location_data.relative_bounding_box
        out.append((float(d.score[0]), np.array([bb.xmin, bb.ymin, bb.xmin + bb.width, bb.ymin + bb.height])))
    return out


def _tiles(width: int, height: int, side: int, overlap: float) -> list[tuple[int, int, int]]:
    """Square tiles ``(x0, y0, side)`` covering a ``width`` x ``height`` image, neighbours overlapping by
    at least ``overlap`` of a tile, the last row and column flush with the far edges."""
    side = min(side, width, height)

    def starts(n: int) -> list[int]:
        if n <= side:
            return [0]
        count = int(np.ceil((n - side) / (side * (1 - overlap)))) + 1
        return [round(k * (n - side) / (count - 1)) for k in range(count)]

    return [(x, y, side) for y in starts(height) for x in starts(width)]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union if union > 0 else 0.0


def _resize(image: np.ndarray, scale: float) -> np.ndarray:
    if scale >= 1.0:
        return image
    h, w = image.shape[:2]
    return cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)


def _box(face: np.ndarray) -> tuple[float, float, float, float]:
    p = face[:468, :2]
    return float(p[:, 0].min()), float(p[:, 1].min()), float(p[:, 0].max()), float(p[:, 1].max())


def _box_area(face: np.ndarray) -> float:
    x0, y0, x1, y1 = _box(face)
    return (x1 - x0) * (y1 - y0)


def _box_side(face: np.ndarray) -> float:
    x0, y0, x1, y1 = _box(face)
    return max(x1 - x0, y1 - y0)


def _centre(face: np.ndarray) -> tuple[float, float]:
    x0, y0, x1, y1 = _box(face)
    return (x0 + x1) / 2, (y0 + y1) / 2
