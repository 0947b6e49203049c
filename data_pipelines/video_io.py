"""Reading clips (video files, JPEG/PNG frame folders) and writing small mp4 files.

Videos are decoded with PyAV; OpenCV's VideoCapture is the fallback when PyAV is missing or has
no decoder for the stream. Every way an input can be unusable raises `InputError` with a short
reason, which the builder reports next to the path.
"""
from __future__ import annotations

import fractions
import os
import re
from typing import Callable, NamedTuple, Optional, Sequence

import cv2
import numpy as np

VIDEO_EXTENSIONS = (".mp4", ".avi", ".webm", ".mov", ".mkv", ".m4v", ".flv", ".mpg", ".mpeg",
                    ".wmv")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
DEFAULT_FOLDER_FPS = 25.0


class Decoded(NamedTuple):
  """Decoded RGB frames, the rate they are at, and the rate of the source."""
  frames: list
  fps: float
  source_fps: float


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


def resize_short_side(frame: np.ndarray, short_side: int) -> np.ndarray:
  """Resizes so the shorter side is `short_side` (area filter down, bilinear up)."""
  h, w = frame.shape[:2]
  nh, nw = resized_shape(h, w, short_side)
  if (nh, nw) == (h, w):
    return frame
  interp = cv2.INTER_AREA if nh < h else cv2.INTER_LINEAR
  return cv2.resize(frame, (nw, nh), interpolation=interp)


def _cap_short_side(frame: np.ndarray, cap: Optional[int]) -> np.ndarray:
  if cap is None or min(frame.shape[:2]) <= cap:
    return frame
  return resize_short_side(frame, cap)


class _FrameSelector:
  """Keeps the first decoded frame of every 1/target_fps slot (no frame is ever duplicated)."""

  def __init__(self, source_fps: float, target_fps: Optional[float]):
    self.step = None
    if target_fps and source_fps and target_fps < source_fps:
      self.step = source_fps / target_fps
    self.next = 0.0

  @property
  def fps_factor(self) -> float:
    return 1.0 if self.step is None else 1.0 / self.step

  def keep(self, i: int) -> bool:
    if self.step is None:
      return True
    if i + 1e-6 >= self.next:
      self.next += self.step
      return True
    return False


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


def read_frame_folder(folder: str, *, max_frames: Optional[int] = None,
                      target_fps: Optional[float] = None, folder_fps: float = DEFAULT_FOLDER_FPS,
                      max_short_side: Optional[int] = None) -> Decoded:
  """Decodes a folder of JPEG/PNG frames into RGB arrays.

  Returns:
    Decoded(frames, fps, source_fps); folders carry no rate, `folder_fps` is assumed.

  Raises:
    InputError: missing/empty folder, an unreadable image, or frames of different sizes.
  """
  files = list_frame_files(folder)
  selector = _FrameSelector(folder_fps, target_fps)
  frames: list[np.ndarray] = []
  first_shape = None
  for i, path in enumerate(files):
    if not selector.keep(i):
      continue
    if max_frames is not None and len(frames) >= max_frames:
      break
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
    frames.append(_cap_short_side(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), max_short_side))
  return Decoded(frames, folder_fps * selector.fps_factor, folder_fps)


def _read_with_pyav(path: str, max_frames, target_fps, max_short_side):
  import av  # pylint: disable=g-import-not-at-top

  try:
    container = av.open(path)
  except av.error.FFmpegError as e:
    raise InputError(path, f"cannot open video (truncated or not a video?): {e}") from e
  with container:
    if not container.streams.video:
      raise InputError(path, "file has no video stream")
    stream = container.streams.video[0]
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    fps = float(rate) if rate else DEFAULT_FOLDER_FPS
    declared = int(stream.frames or 0)
    selector = _FrameSelector(fps, target_fps)
    frames: list[np.ndarray] = []
    decoded = 0
    stopped_early = False
    try:
      for frame in container.decode(stream):
        i = decoded
        decoded += 1
        if not selector.keep(i):
          continue
        if max_frames is not None and len(frames) >= max_frames:
          stopped_early = True
          break
        frames.append(_cap_short_side(frame.to_ndarray(format="rgb24"), max_short_side))
    except av.error.FFmpegError as e:
      raise InputError(path, f"decoding failed after {decoded} frames (truncated or corrupt "
                       f"video?): {e}") from e
  if not frames:
    raise InputError(path, "no decodable video frames")
  # Containers that declare their frame count (mp4/mov) reveal a file cut short: the demuxer
  # just stops early without raising.
  if not stopped_early and declared and decoded < declared - max(2, declared // 50):
    raise InputError(path, f"truncated video: decoded {decoded} of the {declared} frames the "
                     "container declares")
  return Decoded(frames, fps * selector.fps_factor, fps)


def _read_with_opencv(path: str, max_frames, target_fps, max_short_side):
  cap = cv2.VideoCapture(path)
  try:
    if not cap.isOpened():
      raise InputError(path, "cannot open video with OpenCV")
    fps = cap.get(cv2.CAP_PROP_FPS) or DEFAULT_FOLDER_FPS
    selector = _FrameSelector(fps, target_fps)
    frames, i = [], 0
    while True:
      ok, bgr = cap.read()
      if not ok:
        break
      keep = selector.keep(i)
      i += 1
      if not keep:
        continue
      if max_frames is not None and len(frames) >= max_frames:
        break
      frames.append(_cap_short_side(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), max_short_side))
  finally:
    cap.release()
  if not frames:
    raise InputError(path, "no decodable video frames (OpenCV)")
  return Decoded(frames, fps * selector.fps_factor, fps)


def _pyav_usable() -> bool:
  try:
    import av  # pylint: disable=g-import-not-at-top,unused-import
    return True
  except ImportError:
    return False


def read_video(path: str, *, max_frames: Optional[int] = None, target_fps: Optional[float] = None,
               max_short_side: Optional[int] = None) -> Decoded:
  """Decodes a video file into RGB frames.

  Args:
    path: mp4/avi/webm/mov/... file.
    max_frames: keep at most the first `max_frames` (after fps resampling).
    target_fps: drop frames down to this rate (never duplicates; ignored when not lower).
    max_short_side: shrink frames whose shorter side is larger (bounds memory for HD input).

  Returns:
    Decoded(frames, fps of the returned frames, fps of the file).

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
                quality: int = 18) -> str:
  """Writes uint8 RGB frames (T, H, W, 3) to a video file; returns the codec used.

  Encoding is single-threaded so the same frames always give the same bytes.
  """
  import av  # pylint: disable=g-import-not-at-top
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
    raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
  codec = codec or available_encoder()
  h, w = frames.shape[1:3]
  if h % 2 or w % 2:
    raise ValueError(f"{codec} with yuv420p needs even frame sizes, got {w}x{h}")
  rate = fractions.Fraction(fps).limit_denominator(1001)
  with av.open(path, "w") as container:
    stream = container.add_stream(codec, rate=rate)
    stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
    stream.codec_context.thread_count = 1
    if codec in ("libx264", "h264"):
      stream.options = {"crf": str(quality), "threads": "1", "preset": "medium"}
    else:
      stream.codec_context.qscale = 3
      stream.codec_context.flags |= "QSCALE"
    for frame in frames:
      for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
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
