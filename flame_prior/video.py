"""Stage 1 for clips — video intake: decode, pick frames, and say why.

Public entries: :func:`load_inputs` (what the pipeline calls for any ``--data``), :func:`decode_clip`,
:func:`select_by_pose`, :func:`classify_motion`, configured by :class:`VideoConfig`. The records are
the same :class:`~flame_prior.images.InputImage` that :mod:`flame_prior.images` yields, so every later
stage is unchanged; :class:`Intake` adds where each frame came from (clip, camera, timestep, time).

**Decoder: PyAV** (``av``, FFmpeg's libraries with their own wheels) rather than OpenCV's FFmpeg
backend, which flame-prior already installs. PyAV gives, per frame, the presentation timestamp (so a
variable-frame-rate clip keeps true times, and it is detected), the display matrix (so the rotation a
phone writes is applied explicitly and testably; OpenCV applies it behind one flag and reports
nothing), decode errors per packet (a corrupt frame is skipped with its index instead of being
concealed), threaded decoding and scaled grey conversion in C (the frame-selection pass never
builds a full-size RGB frame), and it can write clips with a rotation flag for the tests. It is a
well-kept project (regular releases bundling current FFmpeg builds for Linux, macOS, Windows).

**What ``--data`` may be** (:func:`load_inputs`):

* a video file (``.mp4 .mov .m4v .mkv .webm .avi .3gp``): one clip;
* a folder of clips: several clips of the same head (static: all their frames are candidate views;
  dynamic: one synchronised camera per clip, timestep *k* = the *k*-th sampled time);
* a folder of images: as before (:func:`flame_prior.images.load_images`), frames in natural order;
  for a dynamic fit they are the timesteps, at ``--video.folder-fps`` frames per second;
* a folder of folders (one per camera, each holding images or one clip): several synchronised
  cameras of a dynamic sequence, timestep *k* = the *k*-th frame of every camera.
  Only a folder that holds nothing but sub-folders is read this way; sub-folders beside photos
  or clips are ignored (the intake is not recursive).

**How frames are picked** from a clip (:func:`decode_clip`; ``ns-process-data video`` picks evenly
spaced frames, flame-prior also looks at them):

1. The clip is demuxed once without decoding: packet timestamps give its length and frame rate and
   reveal a variable frame rate (kept: times come from timestamps, a note says so). No frame at all
   raises :class:`~flame_prior.errors.InputError`.
2. Every frame is decoded (threaded) and scaled to a small grey image in FFmpeg's scaler. The clip's
   time is cut into ``pool`` equal bins (``pool = candidate_factor x num_frames_target``, or one bin
   per ``1 / frame_rate`` seconds) and each bin keeps its **sharpest** frame: the variance of the
   Laplacian of the grey image (a blurred frame has few edges). A bin whose best frame is below
   ``blur_threshold`` x the clip's median sharpness is left out as blurred.
3. Near-duplicate frames (static fits): a candidate whose small grey image differs from the last kept
   one by less than ``duplicate_threshold`` (mean absolute difference, 0-1) adds no viewpoint.
4. Only then are the kept frames converted to full-size RGB and turned upright: the display matrix
   (``rotation``, degrees counter-clockwise, what FFmpeg's ``-display_rotation`` writes and phones set)
   is applied by whole quarter turns.
5. After detection (static fits, :func:`select_by_pose`): each candidate's head pose (PnP of the
   detected landmarks against the mean head's) and farthest-point sampling in (yaw, pitch) choose
   ``num_frames_target`` views that cover the head's range of poses, the sharpest first; a view
   within ``min_pose_step_deg`` of a chosen one is a near-duplicate viewpoint.

Every frame considered and the reason it was kept or left out is recorded (:class:`FrameRecord`) and
written to ``fit_summary.json`` (``video``) and the report. Packets that fail to decode and frames
FFmpeg flags as corrupt are skipped with their index, and so are the frames predicted from them up to
the next keyframe (their pixels are wrong): a documented skip, the rest of the clip is used.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from flame_prior.errors import InputError
from flame_prior.images import InputImage, SkippedInput, load_images, natural_sort_key, safe_stems

__all__ = ["VideoConfig", "FrameRecord", "ClipInfo", "Intake", "VIDEO_SUFFIXES", "is_video", "load_inputs",
           "decode_clip", "select_by_pose", "classify_motion", "head_poses_deg", "choose_views"]

VIDEO_SUFFIXES = (".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi", ".3gp")
_THUMB_SIDE = 96  # longer side of the small grey image used for near-duplicate tests
_SHARP_SIDE = 480  # longer side of the grey image the sharpness is measured on


@dataclass
class VideoConfig:
    """How frames are taken from clips (and folders of frames)."""

    num_frames_target: int = 40
    """Frames to keep (as ns-process-data video's --num-frames-target): the views of a static fit (over all its clips), the timesteps of each clip of a dynamic one."""
    frame_rate: float | None = None
    """Sample this many frames per second instead of a target count (dynamic sequences)."""
    candidate_factor: float = 2.0
    """Static fits: detect faces on this many times the target, then keep the target that covers the poses best."""
    blur_threshold: float = 0.35
    """Leave out frames whose sharpness (variance of the Laplacian) is below this fraction of the clip's median."""
    duplicate_threshold: float = 0.003
    """Static fits: leave out a frame whose small grey image differs from the last kept one by less than this (mean absolute difference, 0-1)."""
    min_pose_step_deg: float = 1.5
    """Static fits: a view whose head pose is within this of a chosen view's is a near-duplicate viewpoint."""
    folder_fps: float = 30.0
    """Frames per second of a folder of frames (gives each timestep its time)."""
    sequence: Literal["auto", "static", "dynamic"] = "auto"
    """Static: one timestep, many views (the head holds still). Dynamic: the face moves; one FLAME per timestep. Auto decides from how much the mouth opening varies."""
    dynamic_threshold: float = 0.08
    """Auto: dynamic when the mouth opening (inner lips' distance / mouth width) varies by more than this over the frames (95th - 5th percentile)."""


@dataclass
class FrameRecord:
    """One frame considered: where it came from and what was decided."""

    clip: str
    index: int  # frame number in the clip (decode order), or file position in a folder
    time: float  # seconds from the clip's first frame
    sharpness: float
    kept: bool
    reason: str  # why kept or left out
    name: str | None = None  # the view name when kept
    camera: int = 0
    timestep: int | None = None


@dataclass
class ClipInfo:
    """What the demux pass and the decoder found in one clip."""

    path: str
    frames: int
    duration: float
    fps: float
    rotation: int  # degrees counter-clockwise to display upright (display matrix)
    width: int  # of the upright frame
    height: int
    codec: str
    variable_frame_rate: bool
    decode_errors: list[int] = field(default_factory=list)


@dataclass
class Intake:
    """Everything intake produced: the images (views) and what they are.

    ``images[i]`` was taken by camera ``camera[i]`` at timestep ``timestep[i]`` (``time[i]`` seconds).
    ``source`` is ``"images"`` (a folder of photos, as before), ``"video"`` (clips) or ``"cameras"``
    (a folder per camera). ``frames`` lists every frame considered, kept or not.
    """

    images: list[InputImage]
    skipped: list[SkippedInput]
    source: Literal["images", "video", "cameras"]
    camera: list[int]
    timestep: list[int]
    time: list[float]
    camera_names: list[str]
    clips: list[ClipInfo] = field(default_factory=list)
    frames: list[FrameRecord] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        """The ``video`` entry of ``fit_summary.json``."""
        from dataclasses import asdict

        return {"source": self.source, "camera_names": self.camera_names, "clips": [asdict(c) for c in self.clips],
                "frames": [asdict(f) for f in self.frames], "notes": list(self.notes)}


def is_video(path: Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


# --------------------------------------------------------------------------------------------
# --data dispatch


def load_inputs(data: Path, config: VideoConfig, static_pool: bool = True) -> Intake:
    """Read ``--data``: images, clips, or a folder per camera (layouts: module docstring).

    Args:
        data: the ``--data`` path.
        config: frame picking.
        static_pool: the sequence may be static (not forced dynamic): clips yield ``candidate_factor``
            x the target, and near-duplicates are dropped, for :func:`select_by_pose` after detection.

    Raises:
        InputError: nothing usable (not a video, no frame, empty folder), clips mixed with other files.
    """
    data = Path(data)
    if not data.exists():
        raise InputError("no such file or folder", path=data, hint="Pass a clip, a folder of photos or of clips.")
    if data.is_file():
        if is_video(data):
            return _from_clips([data], config, static_pool, cameras=False)
        return _from_images(data, config)
    entries = sorted((p for p in data.iterdir() if not p.name.startswith(".")), key=lambda p: natural_sort_key(p.name))
    dirs = [p for p in entries if p.is_dir()]
    clips = [p for p in entries if p.is_file() and is_video(p)]
    # Sub-folders mean one folder per camera only when nothing else is there: beside photos or clips
    # they are ignored, as the image intake has always done (it is not recursive).
    if dirs and not any(p.is_file() for p in entries):
        return _from_camera_folders(dirs, config)
    if clips:
        others = [p.name for p in entries if p.is_file() and not is_video(p)]
        if others:
            raise InputError(f"the folder mixes clips with other files ({', '.join(others[:3])})", path=data,
                             hint="Put the clips and the photos in separate folders.")
        return _from_clips(clips, config, static_pool, cameras=config.sequence == "dynamic")
    return _from_images(data, config)


def _from_images(data: Path, config: VideoConfig) -> Intake:
    images, skipped = load_images(data)
    n = len(images)
    frames = [FrameRecord(Path(data).name, i, i / config.folder_fps, float("nan"), True, "photo", im.name)
              for i, im in enumerate(images)]
    return Intake(images, skipped, "images", [0] * n, list(range(n)), [i / config.folder_fps for i in range(n)],
                  [Path(data).name], frames=frames)


def _from_clips(clips: list[Path], config: VideoConfig, static_pool: bool, cameras: bool) -> Intake:
    images, skipped, cam, ts, times, infos, frames, notes = [], [], [], [], [], [], [], []
    names = safe_stems(clips)
    used_names: list[str] = []
    for clip, stem in zip(clips, names):
        try:
            got = decode_clip(clip, config, static_pool=static_pool, stem=stem)
        except InputError as err:
            if len(clips) == 1:
                raise
            skipped.append(SkippedInput(clip, err.args[0] if err.args else str(err)))
            continue
        imgs, recs, info, clip_notes = got
        c = len(used_names)
        used_names.append(stem)
        infos.append(info)
        notes += clip_notes
        for k, (im, rec) in enumerate(zip(imgs, [r for r in recs if r.kept])):
            rec.camera = c if cameras else 0
            rec.timestep = k if cameras else None
            images.append(im)
            cam.append(c if cameras else 0)
            times.append(rec.time)
        frames += recs
        for r in recs:  # damaged frames are inputs left out; choices between good frames live in `frames`
            if not r.kept and "corrupt" in r.reason:
                skipped.append(SkippedInput(clip, f"frame {r.index}: {r.reason}"))
    if not images:
        raise InputError("no usable frame in the clips (" + "; ".join(f"{s.path.name}: {s.reason}" for s in skipped[:5])
                         + ")", path=clips[0].parent, hint="Pass clips that FFmpeg can decode.")
    if cameras:  # timestep k of every camera = its k-th sampled frame; keep the timesteps all cameras have
        counts = [cam.count(c) for c in sorted(set(cam))]
        t_max = min(counts)
        if len(set(counts)) > 1:
            notes.append(f"cameras yielded {counts} frames: the sequence keeps the first {t_max} timesteps of each")
        keep = []
        seen: dict[int, int] = {}
        for i, c in enumerate(cam):
            seen[c] = seen.get(c, -1) + 1
            if seen[c] < t_max:
                keep.append((i, seen[c]))
        images = [images[i] for i, _ in keep]
        times = [times[i] for i, _ in keep]
        cam = [cam[i] for i, _ in keep]
        ts = [k for _, k in keep]
    else:
        order = np.argsort(times, kind="stable") if len(clips) == 1 else np.arange(len(images))
        images, times = [images[i] for i in order], [times[i] for i in order]
        ts = list(range(len(images)))
    return Intake(images, skipped, "video", cam, ts, times, used_names if cameras else ["camera"], infos, frames,
                  notes)


def _from_camera_folders(dirs: list[Path], config: VideoConfig) -> Intake:
    names = safe_stems(dirs)
    per_cam: list[Intake] = []
    for d in dirs:
        inner = [p for p in d.iterdir() if p.is_file() and not p.name.startswith(".")]
        clips = [p for p in inner if is_video(p)]
        if clips:
            if len(clips) > 1:
                raise InputError(f"camera folder {d.name} holds {len(clips)} clips", path=d,
                                 hint="One clip (or one folder of frames) per camera.")
            per_cam.append(_from_clips(clips, config, static_pool=False, cameras=False))
        else:
            per_cam.append(_from_images(d, config))
    t_max = min(len(x.images) for x in per_cam)
    notes = []
    if len({len(x.images) for x in per_cam}) > 1:
        notes.append(f"cameras hold {[len(x.images) for x in per_cam]} frames: the sequence keeps the first {t_max}")
    images, skipped, cam, ts, times, clips, frames = [], [], [], [], [], [], []
    for c, (x, cname) in enumerate(zip(per_cam, names)):
        skipped += x.skipped
        clips += x.clips
        for k in range(t_max):
            im = x.images[k]
            im.name = f"{cname}_{im.name}"  # unique across cameras
            images.append(im)
            cam.append(c)
            ts.append(k)
            times.append(x.time[k])
        for f in x.frames:
            f.camera = c
            if f.kept and f.name is not None:
                f.name = f"{cname}_{f.name}"
        frames += x.frames
        notes += x.notes
    return Intake(images, skipped, "cameras", cam, ts, times, names, clips, frames, notes)


# --------------------------------------------------------------------------------------------
# One clip


def _open(path: Path):
    import av

    try:
        container = av.open(str(path), metadata_errors="ignore")
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as err:
        raise InputError(f"not a video FFmpeg can read ({type(err).__name__}: {err})", path=path,
                         hint="Pass an MP4/MOV/MKV/WebM clip, or a folder of JPEG/PNG frames.") from None
    if not container.streams.video:
        container.close()
        raise InputError("the file holds no video stream", path=path, hint="Pass a clip with a video track.")
    return container


def _display_rotation(stream, frame) -> int:
    """Degrees counter-clockwise that turn the stored frame upright (a multiple of 90)."""
    rot = None
    try:
        rot = frame.rotation
    except Exception:  # noqa: BLE001 — older PyAV: fall back to the stream tag
        rot = None
    if not rot:
        tag = stream.metadata.get("rotate")  # the pre-display-matrix tag (degrees clockwise)
        if tag is not None:
            try:
                rot = -float(tag)
            except ValueError:
                rot = 0
    rot = float(rot or 0.0)
    return int(round(rot / 90.0)) * 90 % 360


def _upright(rgb: np.ndarray, rotation: int) -> np.ndarray:
    k = (rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(rgb, k)) if k else rgb


def _luma(frame) -> np.ndarray:
    """The frame's grey image at about ``_SHARP_SIDE`` px: its luma plane (Y of YUV: no colour
    conversion), subsampled by a whole step. Other pixel formats go through FFmpeg's scaler."""
    step = max(1, round(max(frame.width, frame.height) / _SHARP_SIDE))
    if frame.format.name in ("yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p", "nv12", "nv21"):
        plane = frame.planes[0]
        y = np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[: frame.height, : frame.width]
        return np.ascontiguousarray(y[::step, ::step])
    return frame.to_ndarray(format="gray", width=max(8, frame.width // step // 2 * 2),
                            height=max(8, frame.height // step // 2 * 2))


def _laplacian_variance(gray: np.ndarray) -> float:
    import cv2

    return float(cv2.Laplacian(gray, cv2.CV_32F, ksize=3).var())


def decode_clip(path: Path, config: VideoConfig, static_pool: bool = True, stem: str | None = None,
                ) -> tuple[list[InputImage], list[FrameRecord], ClipInfo, list[str]]:
    """Decode one clip and pick its frames (steps 1-4 of the module docstring).

    Returns:
        ``(images, records, info, notes)``: the kept frames upright (in time order), every frame
        considered with its decision (kept ones first carry their view name), what the clip is.

    Raises:
        InputError: not a video, no video stream, no decodable frame.
    """
    import av

    path = Path(path)
    stem = stem or safe_stems([path])[0]
    notes: list[str] = []
    # 1. demux only: timestamps, count, frame rate
    container = _open(path)
    try:
        stream = container.streams.video[0]
        tb = float(stream.time_base) if stream.time_base else 1.0 / 90000
        pts = []
        try:
            for packet in container.demux(stream):
                if packet.size and packet.pts is not None:
                    pts.append(packet.pts)
        except av.error.FFmpegError as err:
            notes.append(f"{path.name}: the container is damaged after {len(pts)} packets ({err}); using those")
        codec = stream.codec_context.name
    finally:
        container.close()
    if not pts:
        raise InputError("the clip holds no video frame (zero length)", path=path, hint="Record a clip of the head.")
    times = np.sort(np.asarray(pts, dtype=np.float64)) * tb
    t0 = float(times[0])
    dts = np.diff(times)
    duration = float(times[-1] - t0 + (np.median(dts) if len(dts) else 0.0))
    fps = float(1.0 / np.median(dts)) if len(dts) and np.median(dts) > 0 else 0.0
    vfr = bool(len(dts) > 2 and np.median(dts) > 0 and (np.percentile(dts, 95) > 1.5 * np.median(dts)
                                                           or np.percentile(dts, 5) < np.median(dts) / 1.5))
    if vfr:
        notes.append(f"{path.name}: variable frame rate (frame intervals {1e3 * dts.min():.1f}-{1e3 * dts.max():.1f} ms): "
                     "frame times are taken from the timestamps")
    # bins over the clip's time
    if config.frame_rate:
        n_bins = max(1, int(math.ceil(duration * config.frame_rate)))
    else:
        factor = config.candidate_factor if static_pool else 1.0
        n_bins = max(1, int(round(config.num_frames_target * factor)))
    n_bins = min(n_bins, len(pts))
    # (+1e-6: a frame exactly on a bin edge, 0.4 s of 0.2 s bins, belongs to the bin it starts)
    bin_of = lambda t: min(n_bins - 1, max(0, int((t - t0) / max(duration, 1e-9) * n_bins + 1e-6)))  # noqa: E731

    # 2. decode everything, keep each bin's sharpest frame
    best: dict[int, tuple[float, int, float, object, np.ndarray]] = {}  # bin -> sharpness, index, time, frame, thumb
    sharp_all: list[float] = []
    records: list[FrameRecord] = []
    decode_errors: list[int] = []
    rotation, width, height = 0, 0, 0
    container = _open(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        index = 0
        tainted = False
        packets = container.demux(stream)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                break
            except av.error.FFmpegError:
                break  # damaged container tail: noted in the demux pass
            try:
                decoded = packet.decode()
            except (av.error.InvalidDataError, av.error.FFmpegError, ValueError):
                tainted = True
                decode_errors.append(index)
                records.append(FrameRecord(stem, index, float("nan"), float("nan"), False,
                                           "the frame's data cannot be decoded (corrupt)"))
                index += 1
                continue
            for frame in decoded:
                t = (frame.pts * tb if frame.pts is not None else t0 + index / max(fps, 1e-9)) - t0
                if frame.key_frame:
                    tainted = False
                if getattr(frame, "is_corrupt", False):
                    tainted = True
                    decode_errors.append(index)
                    records.append(FrameRecord(stem, index, float(t), float("nan"), False,
                                               "FFmpeg flags the frame as corrupt"))
                    index += 1
                    continue
                if tainted:  # predicted from a corrupt frame: wrong pixels until the next keyframe
                    records.append(FrameRecord(stem, index, float(t), float("nan"), False,
                                               "follows a corrupt frame it is predicted from (until the next keyframe)"))
                    index += 1
                    continue
                if index == 0 or not width:
                    rotation = _display_rotation(stream, frame)
                    width, height = (frame.width, frame.height) if rotation % 180 == 0 else (frame.height, frame.width)
                gray = _luma(frame)
                sharp = _laplacian_variance(gray)
                sharp_all.append(sharp)
                b = bin_of(t + t0)
                if b not in best or sharp > best[b][0]:
                    ts_ = _THUMB_SIDE / max(gray.shape)
                    import cv2

                    thumb = cv2.resize(gray, (max(4, round(gray.shape[1] * ts_)), max(4, round(gray.shape[0] * ts_))),
                                       interpolation=cv2.INTER_AREA)
                    if b in best:
                        records.append(_passed_over(stem, best[b], duration / n_bins))
                    best[b] = (sharp, index, float(t), frame, thumb)
                else:
                    records.append(FrameRecord(stem, index, float(t), sharp, False,
                                               f"a sharper frame in the same {duration / n_bins:.2f} s slot"))
                index += 1
        # flush frames held by the decoder
    finally:
        container.close()
    if not best:
        raise InputError("no frame of the clip could be decoded", path=path,
                         hint="The clip is damaged or uses a codec FFmpeg cannot decode; re-encode it (H.264).")
    if decode_errors:
        notes.append(f"{path.name}: {len(decode_errors)} frame(s) could not be decoded and were skipped "
                     f"(frames {', '.join(map(str, decode_errors[:8]))}{'...' if len(decode_errors) > 8 else ''})")
    median_sharp = float(np.median(sharp_all))

    # 3. blur and near-duplicate tests, in time order; 4. full-size upright RGB of the kept ones
    images: list[InputImage] = []
    kept_records: list[FrameRecord] = []
    last_thumb = None
    for b in sorted(best):
        sharp, index, t, frame, thumb = best[b]
        if sharp < config.blur_threshold * median_sharp:
            records.append(FrameRecord(stem, index, t, sharp, False,
                                       f"blurred (sharpness {sharp:.0f} < {config.blur_threshold:g} x median "
                                       f"{median_sharp:.0f})"))
            continue
        if static_pool and last_thumb is not None and last_thumb.shape == thumb.shape:
            diff = float(np.abs(thumb.astype(np.float32) - last_thumb.astype(np.float32)).mean() / 255.0)
            if diff < config.duplicate_threshold:
                records.append(FrameRecord(stem, index, t, sharp, False,
                                           f"near-duplicate of the previous kept frame (difference {diff:.4f})"))
                continue
        last_thumb = thumb
        rgb = _upright(frame.to_ndarray(format="rgb24"), rotation)
        name = f"{stem}_{index:05d}"
        digest = hashlib.sha256(memoryview(np.ascontiguousarray(rgb)).cast("B")).hexdigest()
        images.append(InputImage(path=path, name=name, pixels=rgb, sha256=digest, exif_focal_px=None))
        kept_records.append(FrameRecord(stem, index, t, sharp, True,
                                        f"sharpest of its {duration / n_bins:.2f} s slot (sharpness {sharp:.0f}, "
                                        f"median {median_sharp:.0f})", name))
    if not images:
        raise InputError("every frame of the clip is blurred", path=path,
                         hint="Lower --video.blur-threshold, or record with more light and slower motion.")
    info = ClipInfo(str(path), len(pts), duration, fps, rotation, width, height, codec, vfr, decode_errors)
    records.sort(key=lambda r: r.index)
    return images, kept_records + records, info, notes


def _passed_over(stem, entry, slot: float) -> FrameRecord:
    sharp, index, t, _frame, _thumb = entry
    return FrameRecord(stem, index, t, sharp, False, f"a sharper frame in the same {slot:.2f} s slot")


# --------------------------------------------------------------------------------------------
# After detection: pose coverage, static or dynamic


def head_poses_deg(views, mean_landmarks3d: np.ndarray, detector_index: np.ndarray) -> np.ndarray:
    """``(N, 3)`` head yaw, pitch, roll (degrees) per view: PnP of the detected landmarks against the
    mean head's ``(L, 3)`` landmarks (rows of ``detector_index``), focal 1.2 x the longer image side
    (a guess is enough to order poses)."""
    import cv2

    out = np.zeros((len(views), 3))
    for i, v in enumerate(views):
        x = v.detection.landmarks[detector_index].astype(np.float64)
        ok = v.detection.confidence[detector_index] > 0.3
        if ok.sum() < 6:
            ok = np.ones(len(x), bool)
        f = 1.2 * max(v.image.width, v.image.height)
        K = np.array([[f, 0, v.image.width / 2], [0, f, v.image.height / 2], [0, 0, 1.0]])
        good, rvec, _t = cv2.solvePnP(mean_landmarks3d[ok].astype(np.float64), x[ok], K, None, flags=cv2.SOLVEPNP_SQPNP)
        if not good:
            out[i] = np.nan
            continue
        R, _ = cv2.Rodrigues(rvec)
        # FLAME frame: +Y up, +Z out of the face; OpenCV camera: +Y down, +Z forward. Head-in-camera
        # rotation expressed as yaw (about Y), pitch (about X), roll (about Z) of the face direction.
        flip = np.diag([1.0, -1.0, -1.0])
        M = flip @ R  # head axes in an OpenGL-like camera frame
        yaw = math.degrees(math.atan2(M[0, 2], M[2, 2]))
        pitch = math.degrees(math.asin(max(-1.0, min(1.0, -M[1, 2]))))
        roll = math.degrees(math.atan2(M[1, 0], M[1, 1]))
        out[i] = (yaw, pitch, roll)
    return out


def select_by_pose(poses_deg: np.ndarray, sharpness: np.ndarray, target: int, min_step_deg: float
                   ) -> tuple[list[int], dict[int, str]]:
    """Pick ``target`` views covering the head's poses: farthest-point sampling in (yaw, pitch).

    The first pick is the most frontal view (ties: the sharpest); each next one is the view farthest
    (in degrees) from every chosen one. Stops at ``target`` or when the farthest is within
    ``min_step_deg`` (what is left duplicates a chosen viewpoint).

    Returns:
        ``(chosen indices in input order, reasons)``: ``reasons[i]`` says why view ``i`` was kept or
        left out.
    """
    n = len(poses_deg)
    yp = np.nan_to_num(np.asarray(poses_deg, np.float64)[:, :2], nan=1e3)
    sharp = np.nan_to_num(np.asarray(sharpness, np.float64), nan=0.0)
    reasons: dict[int, str] = {}
    if n == 0:
        return [], reasons
    rank = np.linalg.norm(yp, axis=1) - 1e-6 * sharp / max(sharp.max(), 1e-9)
    first = int(np.argmin(rank))
    chosen = [first]
    reasons[first] = f"most frontal view (yaw {yp[first, 0]:.0f}°, pitch {yp[first, 1]:.0f}°)"
    d = np.linalg.norm(yp - yp[first], axis=1)
    nearest = np.full(n, first)
    while len(chosen) < min(target, n):
        far = int(np.argmax(d))
        if d[far] < min_step_deg:
            break
        reasons[far] = (f"adds the farthest pose (yaw {yp[far, 0]:.0f}°, pitch {yp[far, 1]:.0f}°, "
                        f"{d[far]:.1f}° from the nearest chosen view)")
        chosen.append(far)
        dn = np.linalg.norm(yp - yp[far], axis=1)
        nearest = np.where(dn < d, far, nearest)
        d = np.minimum(d, dn)
    for i in range(n):
        if i not in reasons:
            if d[i] < min_step_deg:
                reasons[i] = f"near-duplicate viewpoint ({d[i]:.1f}° from a chosen view)"
            else:
                reasons[i] = f"target of {target} views reached (pose {d[i]:.1f}° from the nearest chosen view)"
    return sorted(chosen), reasons


#: Mouth opening landmarks per detector: upper inner lip, lower inner lip, left and right mouth corner.
_MOUTH = {"mediapipe478": (13, 14, 61, 291), "ibug68": (62, 66, 48, 54)}


def classify_motion(views, threshold: float) -> tuple[str, float]:
    """``("static" | "dynamic", motion)``: how much the face itself moves over the frames.

    ``motion`` is the spread (95th minus 5th percentile over frames) of the mouth opening: the inner
    lips' distance over the mouth's width. The ratio hardly changes when the head turns or the camera
    moves, and changes by tenths when someone talks or makes faces. Dynamic when above ``threshold``."""
    if len(views) < 3:
        return "static", 0.0
    idx = _MOUTH.get(views[0].detection.landmark_format)
    if idx is None:
        return "static", 0.0
    u, lo, a, b = idx
    ratios = []
    for v in views:
        x = v.detection.landmarks.astype(np.float64)
        width = float(np.linalg.norm(x[a] - x[b]))
        if width > 0:
            ratios.append(float(np.linalg.norm(x[u] - x[lo])) / width)
    if len(ratios) < 3:
        return "static", 0.0
    motion = float(np.percentile(ratios, 95) - np.percentile(ratios, 5))
    return ("dynamic" if motion > threshold else "static"), motion


def choose_views(views, skipped: list[SkippedInput], intake: Intake, config: VideoConfig, embedding, model=None):
    """After detection: the kind of sequence, and for a static clip the views that cover the poses.

    Kind: ``config.sequence`` when forced; otherwise a folder per camera is dynamic, a folder of photos
    static (as before), and clips are classified by :func:`classify_motion`.

    Returns:
        ``(views, skipped, kind, reason)``; ``intake.frames`` is updated with each decision (frames
        not chosen are recorded there, not in ``skipped``: they are choices, not faulty inputs).
    """
    by_name = {f.name: f for f in intake.frames if f.kept and f.name is not None}
    if config.sequence != "auto":
        kind, reason = config.sequence, f"forced with --video.sequence {config.sequence}"
    elif intake.source == "cameras":
        kind, reason = "dynamic", "a folder per camera: synchronised cameras of a moving face"
    elif intake.source == "images":
        kind, reason = "static", "a folder of photos: one timestep, many views"
    else:
        kind, motion = classify_motion(views, config.dynamic_threshold)
        reason = (f"the mouth opening varies by {motion:.3f} of the mouth width over the frames "
                  f"({'above' if kind == 'dynamic' else 'within'} --video.dynamic-threshold {config.dynamic_threshold:g})")
    if kind == "dynamic" or intake.source != "video" or model is None:
        return views, skipped, kind, reason
    # static clip: cover the head's poses with num_frames_target views
    import torch

    from flame_prior.flame import FlameParams, landmarks_from_vertices

    with torch.no_grad():
        dtype = model.v_template.dtype
        p = FlameParams.zeros(1, model.n_shape, model.n_expr, dtype=dtype, device=model.v_template.device)
        verts = model(p).vertices
        yaw0 = torch.zeros(1, dtype=dtype, device=verts.device)  # frontal contour rows: enough to order poses
        lm3 = landmarks_from_vertices(verts, model.faces, embedding, yaw0)[0].double().cpu().numpy()
    idx = embedding.detector_index.astype(np.int64)
    poses = head_poses_deg(views, lm3, idx)
    sharp = np.array([by_name[v.image.name].sharpness if v.image.name in by_name else 0.0 for v in views])
    chosen, reasons = select_by_pose(poses, sharp, config.num_frames_target, config.min_pose_step_deg)
    keep = set(chosen)
    out = []
    for i, v in enumerate(views):
        rec = by_name.get(v.image.name)
        if rec is not None:
            rec.reason = f"{rec.reason}; {reasons[i]}" if i in keep else reasons[i]
            rec.kept = i in keep
        if i in keep:
            out.append(v)
    if len(views) > 1:
        yp = poses[chosen][:, :2]
        reason += (f"; {len(out)} of {len(views)} candidate frames cover yaw {np.nanmin(yp[:, 0]):.0f}° to "
                   f"{np.nanmax(yp[:, 0]):.0f}°, pitch {np.nanmin(yp[:, 1]):.0f}° to {np.nanmax(yp[:, 1]):.0f}°")
    return out, skipped, kind, reason
