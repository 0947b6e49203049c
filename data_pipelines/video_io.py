"""Reading clips (video files, JPEG/PNG frame folders) and writing small mp4 files.

Videos are decoded with PyAV; OpenCV's VideoCapture is the fallback when PyAV is missing or has
no decoder for the stream. Either way the frames are those a player shows: the default video
stream, turned upright by the file's rotation flag, with square pixels, and each frame carries its
presentation time (`Decoded.times`), from which every resampling and reported time is derived.
`prepare` (and the TFDS builder through it), `predict` and `extract` all read through `read_clip`.
Every way an input can be unusable raises `InputError` with a short reason, which the builder
reports next to the path.
"""
from __future__ import annotations

import fractions
import math
import os
import re
from typing import Any, Callable, Iterator, NamedTuple, Optional, Sequence

import cv2
import numpy as np

VIDEO_EXTENSIONS = (".mp4", ".avi", ".webm", ".mov", ".mkv", ".m4v", ".flv", ".mpg", ".mpeg",
                    ".wmv")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
DEFAULT_FOLDER_FPS = 25.0


class Decoded(NamedTuple):
  """Decoded frames as a player shows them, and when it shows them.

  Attributes:
    frames: uint8 (H, W, 3) RGB arrays, all of one size, upright (the file's display matrix /
      rotation applied) with square pixels (its sample aspect ratio applied).
    fps: nominal rate of the returned frames (frames per second): the target rate after
      resampling, else the source's.
    source_fps: nominal (average) rate of the source; a frame folder's declared rate.
    times: float64 (T,) seconds at which each returned frame is shown, counted from the start
      of the video stream (presentation timestamps; index / rate where a file has none).
    end_time: seconds at which the last returned frame stops being shown (the next frame's time,
      or the end of the stream).
  """
  frames: list
  fps: float
  source_fps: float
  times: np.ndarray
  end_time: float

  def shown_until(self) -> np.ndarray:
    """float64 (T,): seconds at which each returned frame gives way to the next one."""
    return np.append(np.asarray(self.times, np.float64)[1:], self.end_time)


class InputError(Exception):
  """An input clip that cannot be used; `reason` says why, `path` which one."""

  def __init__(self, path: str, reason: str):
    self.path, self.reason = path, reason
    super().__init__(f"{path}: {reason}")


def natural_key(name: str):
  """Sort key that orders 'frame2' before 'frame10'."""
  return [(0, int(tok), "") if tok.isdigit() else (1, 0, tok.lower())
          for tok in re.split(r"(\d+)", name) if tok]


def is_video_file(path: str) -> bool:
  return path.lower().endswith(VIDEO_EXTENSIONS)


def is_image_file(path: str) -> bool:
  return path.lower().endswith(IMAGE_EXTENSIONS)


def resized_shape(height: int, width: int, short_side: int) -> tuple[int, int]:
  """(height, width) with the shorter side scaled to `short_side`, aspect kept."""
  if height <= width:
    return short_side, max(1, round(width * short_side / height))
  return max(1, round(height * short_side / width)), short_side


def resize(frames: np.ndarray, height: int, width: int) -> np.ndarray:
  """One uint8 frame (H, W, C) or a stack (T, H, W, C) resized to (height, width).

  Area averaging when the picture shrinks (fine detail would alias otherwise), bilinear when it
  grows. Returns the input itself when the size already matches.
  """
  h, w = frames.shape[-3:-1]
  if (h, w) == (height, width):
    return frames
  interp = cv2.INTER_AREA if height * width < h * w else cv2.INTER_LINEAR
  if frames.ndim == 3:
    return cv2.resize(frames, (width, height), interpolation=interp)
  out = np.empty((len(frames), height, width, frames.shape[-1]), frames.dtype)
  for i, frame in enumerate(frames):
    cv2.resize(frame, (width, height), dst=out[i], interpolation=interp)
  return out


def resize_short_side(frames: np.ndarray, short_side: int) -> np.ndarray:
  """A frame (H, W, C) or a stack (T, H, W, C) with the shorter side scaled to `short_side`.

  The aspect ratio is kept (the long side rounded); see `resize` for the filters.
  """
  h, w = frames.shape[-3:-1]
  return resize(frames, *resized_shape(h, w, short_side))


def _cap_short_side(frame: np.ndarray, cap: Optional[int]) -> np.ndarray:
  if cap is None or min(frame.shape[:2]) <= cap:
    return frame
  return resize_short_side(frame, cap)


# ------------------------------------------------------------------------------------------------
# Orientation and pixel shape.
# ------------------------------------------------------------------------------------------------


class Orientation(NamedTuple):
  """How stored pixels become upright: transpose (rows <-> columns), then the flips."""
  transpose: bool = False
  flip_rows: bool = False
  flip_cols: bool = False

  @classmethod
  def from_display_matrix(cls, matrix: Sequence[float]) -> "Orientation":
    """From a 3x3 display matrix (9 numbers, row-major, as in an mp4 tkhd box / FFmpeg).

    FFmpeg's convention: a stored pixel (x, y) is shown at (a*x + c*y, b*x + d*y) with
    (a, b, c, d) = matrix[0], matrix[1], matrix[3], matrix[4], y pointing down. Angles that are
    not a multiple of 90 degrees snap to the nearest one.
    """
    a, b, c, d = (float(matrix[i]) for i in (0, 1, 3, 4))
    if abs(a) + abs(d) >= abs(b) + abs(c):
      # x' = a x, y' = d y.
      return cls(False, d < 0, a < 0)
    # x' = c y, y' = b x: the stored columns become rows.
    return cls(True, b < 0, c < 0)

  @classmethod
  def clockwise(cls, degrees: float) -> "Orientation":
    """Turning the stored picture `degrees` clockwise (any multiple of 90, negative too)."""
    quarter = int(round(float(degrees) / 90.0)) % 4
    return (cls(), cls(True, False, True), cls(False, True, True), cls(True, True, False))[quarter]

  @property
  def identity(self) -> bool:
    return not (self.transpose or self.flip_rows or self.flip_cols)

  def apply(self, frame: np.ndarray) -> np.ndarray:
    """(H, W, C) stored -> (H', W', C) upright (contiguous)."""
    if self.identity:
      return frame
    if self.transpose:
      frame = frame.transpose(1, 0, 2)
    if self.flip_rows:
      frame = frame[::-1]
    if self.flip_cols:
      frame = frame[:, ::-1]
    return np.ascontiguousarray(frame)


def _frame_orientation(frame, stream_rotate: Optional[float]) -> Orientation:
  """A decoded PyAV frame's display orientation: its DISPLAYMATRIX side data (which FFmpeg copies
  from the container's track matrix or the codec's orientation messages), else the stream's
  legacy `rotate` tag (clockwise degrees)."""
  try:
    side = frame.side_data.get("DISPLAYMATRIX")
  except (KeyError, ValueError, AttributeError):
    side = None
  if side is not None:
    matrix = np.frombuffer(bytes(side), np.int32)
    if matrix.size >= 9:
      return Orientation.from_display_matrix(matrix)
  if stream_rotate:
    return Orientation.clockwise(stream_rotate)
  return Orientation()


def _square_pixels(frame: np.ndarray, sar) -> np.ndarray:
  """Stretches the width by the sample aspect ratio (what players do for anamorphic video).

  The new width is rounded to an even number, as video encoders (yuv420p) need.
  """
  if not sar or sar <= 0 or abs(float(sar) - 1.0) < 1e-3:
    return frame
  h, w = frame.shape[:2]
  nw = max(2, 2 * int(round(w * float(sar) / 2)))
  if nw == w:
    return frame
  return resize(frame, h, nw)


# ------------------------------------------------------------------------------------------------
# Timestamps and resampling.
# ------------------------------------------------------------------------------------------------


class _Resampler:
  """Keeps, for every point k / target_fps (k = 0, 1, ...) of the stream's time axis, the frame
  shown nearest to it; a frame nearest to several points is kept once (never duplicated).

  Each frame stands for the span between the midpoints to its neighbours, so the choice follows
  the timestamps (variable frame rates, jitter) and not the frame count. Call `keep` once per
  decoded frame in order with the next frame's time (None for the last frame).
  """

  EPS = 1e-6  # in grid steps: a point on a span's edge goes to the later frame

  def __init__(self, target_fps: Optional[float]):
    self.fps = float(target_fps) if target_fps else None
    self.prev: Optional[float] = None

  @property
  def active(self) -> bool:
    return self.fps is not None

  def keep(self, t: float, t_next: Optional[float]) -> bool:
    prev, self.prev = self.prev, t
    if self.fps is None:
      return True
    lo = -math.inf if prev is None else (prev + t) / 2
    if t_next is not None:
      hi = (t + t_next) / 2
    elif prev is not None:
      hi = t + (t - prev) / 2
    else:
      return True
    k = 0 if lo == -math.inf else max(0, math.ceil(lo * self.fps - self.EPS))
    return k < hi * self.fps - self.EPS


class _Clock:
  """Presentation times of decoded frames in seconds from the start of the stream.

  A frame without a timestamp is placed one nominal frame after the previous one; a timestamp
  that does not move forward is treated the same way (players show frames in decoding order).
  """

  def __init__(self, start: Optional[float], rate: float):
    self.origin = start
    self.step = 1.0 / rate
    self.prev: Optional[float] = None
    self.guessed = 0

  def __call__(self, pts_time: Optional[float]) -> float:
    expected = 0.0 if self.prev is None else self.prev + self.step
    if pts_time is None:
      self.guessed += 1
      t = expected
    else:
      if self.origin is None:
        self.origin = pts_time - expected
      elif self.prev is None and pts_time < self.origin:
        # A first frame before the declared start: players start the clock at that frame.
        self.origin = pts_time
      t = pts_time - self.origin
      if self.prev is not None and t <= self.prev:
        self.guessed += 1
        t = expected
    self.prev = t
    return t


def list_frame_files(folder: str) -> list[str]:
  """Image files of a frame folder, in natural order.

  Raises:
    InputError: the folder is missing, not a folder, or holds no images.
  """
  if not os.path.exists(folder):
    raise InputError(folder, "missing: no such file or frame folder")
  if not os.path.isdir(folder):
    raise InputError(folder, "not a video file (unknown extension) nor a frame folder")
  names = sorted((n for n in os.listdir(folder) if is_image_file(n)), key=natural_key)
  if not names:
    raise InputError(folder, f"frame folder holds no images ({', '.join(IMAGE_EXTENSIONS)})")
  return [os.path.join(folder, n) for n in names]


class _Collected(NamedTuple):
  frames: list
  times: np.ndarray
  end_time: float
  stopped_early: bool


def _collect(timed: Iterator[tuple[float, Any]], convert: Callable[[Any], np.ndarray],
             resampler: _Resampler, max_frames: Optional[int], nominal_fps: float,
             shown_for: Callable[[Any], Optional[float]] = lambda item: None) -> _Collected:
  """Picks and converts frames from (time, item) pairs in presentation order.

  Only kept items are converted; `shown_for(item)` is the last item's display duration in seconds
  when the file records it.
  """
  frames: list[np.ndarray] = []
  times: list[float] = []
  size = None

  def add(t, item):
    nonlocal size
    frame = convert(item)
    if size is None:
      size = frame.shape[:2]
    else:
      # A stream that changes resolution mid-way is shown scaled to one window.
      frame = resize(frame, *size)
    frames.append(frame)
    times.append(t)

  pending, before = None, None
  for t, item in timed:
    if pending is not None:
      if resampler.keep(pending[0], t):
        if max_frames is not None and len(frames) >= max_frames:
          return _Collected(frames, np.asarray(times, np.float64), pending[0], True)
        add(*pending)
      before = pending[0]
    pending = (t, item)
  if pending is None:
    return _Collected(frames, np.zeros((0,), np.float64), 0.0, False)
  t, item = pending
  if resampler.keep(t, None):
    if max_frames is not None and len(frames) >= max_frames:
      return _Collected(frames, np.asarray(times, np.float64), t, True)
    add(t, item)
  span = shown_for(item)
  if not span or span <= 0:
    span = (t - before) if before is not None and t > before else 1.0 / nominal_fps
  return _Collected(frames, np.asarray(times, np.float64), t + span, False)


def _resampler_for(target_fps: Optional[float], nominal_fps: float) -> _Resampler:
  # At or above the source's nominal rate every frame is kept: timestamp jitter must not drop any.
  if target_fps and nominal_fps and target_fps < nominal_fps * (1 - 1e-6):
    return _Resampler(target_fps)
  return _Resampler(None)


def read_frame_folder(folder: str, *, max_frames: Optional[int] = None,
                      target_fps: Optional[float] = None, folder_fps: float = DEFAULT_FOLDER_FPS,
                      max_short_side: Optional[int] = None) -> Decoded:
  """Decodes a folder of JPEG/PNG frames into RGB arrays.

  Folders carry no timestamps: frame i is shown at i / folder_fps seconds.

  Returns:
    Decoded (see there); fps and source_fps are `folder_fps` unless resampled to `target_fps`.

  Raises:
    InputError: missing/empty folder, an unreadable image, or frames of different sizes.
  """
  files = list_frame_files(folder)
  resampler = _resampler_for(target_fps, folder_fps)
  first_shape = None

  def load(path):
    nonlocal first_shape
    try:
      if os.path.getsize(path) == 0:
        raise InputError(path, "unreadable image: empty file (0 bytes)")
      bgr = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR)
    except OSError as e:
      raise InputError(path, f"unreadable image: {e}") from e
    if bgr is None:
      raise InputError(path, "unreadable image: not a decodable JPEG/PNG")
    if first_shape is None:
      first_shape = bgr.shape
    elif bgr.shape != first_shape:
      raise InputError(path, f"frame is {bgr.shape[1]}x{bgr.shape[0]} but the folder's first "
                       f"frame is {first_shape[1]}x{first_shape[0]}")
    return _cap_short_side(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), max_short_side)

  got = _collect(((i / folder_fps, path) for i, path in enumerate(files)), load, resampler,
                 max_frames, folder_fps)
  fps = resampler.fps if resampler.active else folder_fps
  return Decoded(got.frames, fps, folder_fps, got.times, got.end_time)


def _pick_video_stream(container, path: str):
  """The stream a player shows: FFmpeg's best video stream, never a cover picture."""
  import av  # pylint: disable=g-import-not-at-top
  flags = av.stream.Disposition
  pictures = [s for s in container.streams.video if not s.disposition & flags.attached_pic]
  if not pictures:
    if container.streams.video:
      raise InputError(path, "file has no video stream (only a still cover picture)")
    raise InputError(path, "file has no video stream")
  try:
    best = container.streams.best("video")
  except Exception:  # pylint: disable=broad-except
    best = None
  if best is not None and best in pictures:
    return best
  default = [s for s in pictures if s.disposition & flags.default]
  return (default or pictures)[0]


def _read_with_pyav(path: str, max_frames, target_fps, max_short_side):
  import av  # pylint: disable=g-import-not-at-top

  try:
    container = av.open(path)
  except av.error.FFmpegError as e:
    raise InputError(path, f"cannot open video (truncated or not a video?): {e}") from e
  with container:
    stream = _pick_video_stream(container, path)
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    fps = float(rate) if rate else DEFAULT_FOLDER_FPS
    # The guessed (lowest common) rate exceeds the average in a variable-rate file; resampling
    # must apply whenever any part of the clip runs faster than the target.
    fastest = max(fps, float(stream.guessed_rate or 0))
    declared = int(stream.frames or 0)
    start = (float(stream.start_time * stream.time_base)
             if stream.start_time is not None and stream.time_base else None)
    clock = _Clock(start, fps)
    rotate_tag = _rotate_tag(stream.metadata)
    sar = stream.codec_context.sample_aspect_ratio or stream.sample_aspect_ratio
    decoded = 0

    def timed():
      nonlocal decoded
      for frame in container.decode(stream):
        decoded += 1
        yield clock(frame.time), frame

    def convert(frame):
      rgb = _square_pixels(frame.to_ndarray(format="rgb24"), sar)
      return _frame_orientation(frame, rotate_tag).apply(_cap_short_side(rgb, max_short_side))

    def shown_for(frame):
      if frame.duration and frame.time_base:
        return float(frame.duration * frame.time_base)
      return None

    resampler = _resampler_for(target_fps, fastest)
    try:
      got = _collect(timed(), convert, resampler, max_frames, fps, shown_for)
    except av.error.FFmpegError as e:
      raise InputError(path, f"decoding failed after {decoded} frames (truncated or corrupt "
                       f"video?): {e}") from e
  if not got.frames:
    raise InputError(path, "no decodable video frames")
  # Containers that declare their frame count (mp4/mov) reveal a file cut short: the demuxer
  # just stops early without raising.
  if not got.stopped_early and declared and decoded < declared - max(2, declared // 50):
    raise InputError(path, f"truncated video: decoded {decoded} of the {declared} frames the "
                     "container declares")
  out_fps = resampler.fps if resampler.active else fps
  return Decoded(got.frames, out_fps, fps, got.times, got.end_time)


def _rotate_tag(metadata) -> Optional[float]:
  """Clockwise degrees of the legacy `rotate` stream tag (older FFmpeg builds), or None."""
  try:
    value = (metadata or {}).get("rotate")
    return float(value) if value not in (None, "") else None
  except (TypeError, ValueError):
    return None


def _read_with_opencv(path: str, max_frames, target_fps, max_short_side):
  cap = cv2.VideoCapture(path)
  try:
    if not cap.isOpened():
      raise InputError(path, "cannot open video with OpenCV")
    # OpenCV turns frames by the file's rotation itself (on by default; asked for explicitly).
    cap.set(cv2.CAP_PROP_ORIENTATION_AUTO, 1)
    fps = cap.get(cv2.CAP_PROP_FPS) or DEFAULT_FOLDER_FPS
    sar_num, sar_den = cap.get(cv2.CAP_PROP_SAR_NUM), cap.get(cv2.CAP_PROP_SAR_DEN)
    sar = sar_num / sar_den if sar_num > 0 and sar_den > 0 else None
    clock = _Clock(0.0, fps)

    def timed():
      while True:
        ok, bgr = cap.read()
        if not ok:
          return
        # POS_MSEC is the presentation time of the frame just read, from the stream start.
        ms = cap.get(cv2.CAP_PROP_POS_MSEC)
        yield clock(ms / 1000.0 if ms is not None and ms >= 0 else None), bgr

    def convert(bgr):
      rgb = _square_pixels(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), sar)
      return _cap_short_side(rgb, max_short_side)

    resampler = _resampler_for(target_fps, fps)
    got = _collect(timed(), convert, resampler, max_frames, fps)
  finally:
    cap.release()
  if not got.frames:
    raise InputError(path, "no decodable video frames (OpenCV)")
  out_fps = resampler.fps if resampler.active else fps
  return Decoded(got.frames, out_fps, fps, got.times, got.end_time)


def _pyav_usable() -> bool:
  try:
    import av  # pylint: disable=g-import-not-at-top,unused-import
    return True
  except ImportError:
    return False


def read_video(path: str, *, max_frames: Optional[int] = None, target_fps: Optional[float] = None,
               max_short_side: Optional[int] = None) -> Decoded:
  """Decodes a video file into the RGB frames a player shows, with their times.

  The file's default video stream is read (never a cover picture). Frames are turned upright by
  the display matrix / rotation the file carries (any multiple of 90 degrees, mirroring too) and
  stretched to square pixels by its sample aspect ratio. Times are presentation timestamps from
  the start of the stream, so variable-rate clips keep their real timeline.

  Args:
    path: mp4/avi/webm/mov/... file.
    max_frames: keep at most the first `max_frames` (after fps resampling).
    target_fps: resample to this rate by timestamp: for every point k / target_fps seconds the
      frame shown nearest to it, each frame at most once (never duplicates; no change when the
      target is not below the source's nominal rate).
    max_short_side: shrink frames whose shorter side is larger (bounds memory for HD input).

  Returns:
    Decoded: frames, fps (of the returned frames), source_fps, times (float64 (T,) seconds),
    end_time (seconds).

  Raises:
    InputError: missing/empty file, unopenable or truncated video, no frames.
  """
  if not os.path.exists(path):
    raise InputError(path, "missing: no such file")
  if os.path.getsize(path) == 0:
    raise InputError(path, "empty file (0 bytes)")
  if _pyav_usable():
    import av  # pylint: disable=g-import-not-at-top
    try:
      return _read_with_pyav(path, max_frames, target_fps, max_short_side)
    except InputError as e:
      # Only a missing decoder justifies a second opinion: OpenCV would happily return the
      # readable half of a truncated file.
      if not isinstance(e.__cause__, (av.error.DecoderNotFoundError, av.error.PatchWelcomeError)):
        raise
  return _read_with_opencv(path, max_frames, target_fps, max_short_side)


def read_clip(path: str, **kwargs) -> Decoded:
  """Reads a video file or a frame folder (see `read_video` / `read_frame_folder`)."""
  if os.path.isdir(path):
    return read_frame_folder(path, **kwargs)
  kwargs.pop("folder_fps", None)
  if not os.path.exists(path):
    raise InputError(path, "missing: no such file or frame folder")
  if not is_video_file(path):
    raise InputError(path, f"unsupported file type (videos: {', '.join(VIDEO_EXTENSIONS)}; "
                     "or give a folder of frames)")
  return read_video(path, **kwargs)


def available_encoder(preferred: Sequence[str] = ("libx264", "h264", "mpeg4")) -> str:
  """The first of `preferred` that this PyAV build can encode with."""
  import av  # pylint: disable=g-import-not-at-top
  for name in preferred:
    try:
      av.codec.Codec(name, "w")
      return name
    except Exception:  # pylint: disable=broad-except
      continue
  raise RuntimeError(f"PyAV has none of the encoders {', '.join(preferred)}")


def write_video(path: str, frames: np.ndarray, fps: float, codec: Optional[str] = None,
                quality: int = 18, times: Optional[Sequence[float]] = None) -> str:
  """Writes uint8 RGB frames (T, H, W, 3) to a video file; returns the codec used.

  `times` (T increasing seconds) gives each frame its presentation time (millisecond
  timestamps), so a variable-rate clip keeps its timeline; without it frames are 1 / fps apart.
  Encoding is single-threaded so the same frames always give the same bytes.
  """
  import av  # pylint: disable=g-import-not-at-top
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
    raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
  pts = None
  if times is not None:
    times = np.asarray(times, np.float64)
    if times.shape != (len(frames),):
      raise ValueError(f"times must have one entry per frame ({len(frames)}), got {times.shape}")
    pts = np.round((times - times[0]) * 1000).astype(np.int64)
    if np.any(np.diff(pts) <= 0):
      raise ValueError("times must increase by at least 1 ms from frame to frame")
  codec = codec or available_encoder()
  h, w = frames.shape[1:3]
  if h % 2 or w % 2:
    raise ValueError(f"{codec} with yuv420p needs even frame sizes, got {w}x{h}")
  rate = fractions.Fraction(fps).limit_denominator(1001)
  with av.open(path, "w") as container:
    stream = container.add_stream(codec, rate=rate)
    stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
    stream.codec_context.thread_count = 1
    if pts is not None:
      stream.time_base = stream.codec_context.time_base = fractions.Fraction(1, 1000)
    if codec in ("libx264", "h264"):
      stream.options = {"crf": str(quality), "threads": "1", "preset": "medium"}
    else:
      stream.codec_context.qscale = 3
      stream.codec_context.flags |= int(av.codec.context.Flags.qscale)
    for i, frame in enumerate(frames):
      picture = av.VideoFrame.from_ndarray(frame, format="rgb24")
      if pts is not None:
        picture.pts, picture.time_base = int(pts[i]), stream.codec_context.time_base
      for packet in stream.encode(picture):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)
  return codec


def read_with(reader: Callable, path: str, **kwargs):
  """Calls `reader(path, **kwargs)` turning unexpected errors into `InputError` for that path."""
  try:
    return reader(path, **kwargs)
  except InputError:
    raise
  except (OSError, ValueError, cv2.error, MemoryError) as e:
    raise InputError(path, f"{type(e).__name__}: {e}") from e
