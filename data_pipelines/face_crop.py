"""Face detection, tracking and the square face crop of whole clips.

This is the one face policy: `prepare` stores training clips with it and `predict` crops the
videos it serves with it, so a model sees the same crops in both.

  track = track_faces(frames, spec, fps)          # FaceTrack, or None when no frame has a face
  crop = crop_frame(frames[t], track.boxes[t], spec, out_size)

Policy: OpenCV's frontal-face Haar cascade runs on a downscaled grey copy of every
`detect_every`-th frame (and the last) and the largest face is kept; a frame without a face is
retried rotated by a few roll angles (the frontal cascade misses tilted heads). Frames between
probes take the verdict of the nearest probe. The box (centre x, centre y, size) is interpolated
linearly in time across gaps of up to `max_gap_s` seconds; a longer gap holds the last good box
(a face leaving the shot does not drag the crop along), a longer gap before the first face uses
the whole frame, and frames after the last face hold it. The boxes then go through a running
median (drops one-frame false positives) and a running mean (removes jitter). The crop is a square
`margin` times the box size, its centre shifted down by `center_shift` times the size, kept inside
the frame (shifted, and shrunk to the frame's short side if needed), resized to the output size.
A clip without any detection has no track: `prepare` stores the centred square of every frame
and says so in its report, `predict` refuses it.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import cv2
import numpy as np

from data_pipelines import video_io

HAAR_CASCADE = "haarcascade_frontalface_default.xml"


@dataclasses.dataclass(frozen=True)
class FaceCropSpec:
  """Face crop settings (recorded in dataset_info.json)."""
  margin: float = 1.4            # square side / detected box side (Haar boxes are tight)
  center_shift: float = 0.08     # move the box centre down by this fraction (include the chin)
  smooth_window: int = 7         # frames, odd
  detect_short_side: int = 240   # detection runs on frames scaled to this short side
  detect_every: int = 1          # detect on every n-th frame, interpolate between
  min_face_fraction: float = 0.12  # smallest face, relative to the frame's short side
  scale_factor: float = 1.1
  min_neighbors: int = 5
  # The frontal cascade misses tilted heads; frames without a face are retried rotated by these
  # angles (degrees) and the box is mapped back.
  roll_angles: tuple[float, ...] = (25.0, -25.0)
  # Seconds: shorter gaps in the track are interpolated, longer ones hold the last good box.
  max_gap_s: float = 1.0

  def describe(self) -> dict:
    """The spec as recorded in dataset_info.json (`from_spec` reads it back)."""
    return {
        "face_detector": f"opencv-haar:{HAAR_CASCADE}",
        "crop_policy": (f"largest face per frame, gaps up to {self.max_gap_s:g} s interpolated "
                        "and longer ones holding the last box (whole frame before the first "
                        f"face), median+mean smoothed over {self.smooth_window} frames, square "
                        f"of {self.margin}x the box, centre shifted down {self.center_shift}, "
                        "kept inside the frame; centred square when no face is found"),
        **dataclasses.asdict(self),
    }

  @classmethod
  def from_spec(cls, spec: dict) -> "FaceCropSpec":
    """The spec a dataset's recorded preprocessing dict describes; fields it lacks (older
    datasets) keep their defaults, keys that are not fields are ignored."""
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in spec.items() if k in fields and v is not None}
    if "roll_angles" in kwargs:
      kwargs["roll_angles"] = tuple(float(a) for a in kwargs["roll_angles"])
    return cls(**kwargs)


_CASCADES: dict[str, "cv2.CascadeClassifier"] = {}


def _cascade() -> "cv2.CascadeClassifier":
  # One classifier per process: loading parses a 900 kB XML file.
  if HAAR_CASCADE not in _CASCADES:
    path = cv2.data.haarcascades + HAAR_CASCADE
    cascade = cv2.CascadeClassifier(path)
    if cascade.empty():
      raise RuntimeError(f"cannot load the Haar cascade {path}; install opencv-python-headless<5")
    _CASCADES[HAAR_CASCADE] = cascade
  return _CASCADES[HAAR_CASCADE]


def _detect(grey: np.ndarray, spec: FaceCropSpec) -> Optional[tuple[float, float, float]]:
  min_side = max(12, int(spec.min_face_fraction * min(grey.shape)))
  faces = _cascade().detectMultiScale(grey, scaleFactor=spec.scale_factor,
                                      minNeighbors=spec.min_neighbors,
                                      minSize=(min_side, min_side))
  if len(faces) == 0:
    return None
  # Largest area; ties broken by position so the choice never depends on detector order.
  x, y, fw, fh = max((tuple(int(v) for v in f) for f in faces),
                     key=lambda f: (f[2] * f[3], -f[1], -f[0]))
  return x + fw / 2, y + fh / 2, max(fw, fh)


def detect_largest_face(frame: np.ndarray, spec: FaceCropSpec = FaceCropSpec()
                        ) -> Optional[tuple[float, float, float]]:
  """(centre x, centre y, side) of the largest face in an RGB frame, in frame pixels, or None."""
  h, w = frame.shape[:2]
  scale = min(1.0, spec.detect_short_side / min(h, w))
  grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
  if scale < 1.0:
    grey = cv2.resize(grey, (max(1, round(w * scale)), max(1, round(h * scale))),
                      interpolation=cv2.INTER_AREA)
  grey = cv2.equalizeHist(grey)
  box = _detect(grey, spec)
  if box is None:
    gh, gw = grey.shape
    for angle in spec.roll_angles:
      rot = cv2.getRotationMatrix2D((gw / 2, gh / 2), angle, 1.0)
      box = _detect(cv2.warpAffine(grey, rot, (gw, gh), borderMode=cv2.BORDER_REPLICATE), spec)
      if box is not None:
        back = cv2.invertAffineTransform(rot)
        cx, cy = back @ np.array([box[0], box[1], 1.0])
        box = (float(cx), float(cy), box[2])
        break
  if box is None:
    return None
  return box[0] / scale, box[1] / scale, box[2] / scale


def _running(values: np.ndarray, window: int, fn) -> np.ndarray:
  """`fn` over a centred window of `window` samples, edges padded."""
  if window <= 1 or len(values) < 2:
    return values
  k = window // 2
  padded = np.pad(values, (k, k), mode="edge")
  return fn(np.lib.stride_tricks.sliding_window_view(padded, 2 * k + 1), axis=-1)


def smooth_boxes(boxes: np.ndarray, window: int) -> np.ndarray:
  """(T, 3) per-frame (cx, cy, size) boxes through a running median, then a running mean: the
  median drops single-frame detector jumps, the mean removes the remaining jitter."""
  boxes = np.array(boxes, np.float64)
  for j in range(boxes.shape[1]):
    boxes[:, j] = _running(_running(boxes[:, j], window, np.median), window, np.mean)
  return boxes


@dataclasses.dataclass
class FaceTrack:
  """The face box of every frame of a clip.

  Attributes:
    boxes: float64 (T, 3) smoothed (centre x, centre y, side) in frame pixels, gaps filled.
    detected: bool (T,) a face was found in the frame (or in the probe nearest to it).
    detected_fraction: share of the probed frames with a face, in (0, 1].
  """
  boxes: np.ndarray
  detected: np.ndarray
  detected_fraction: float


def whole_frame_box(height: int, width: int, spec: FaceCropSpec) -> np.ndarray:
  """The box whose crop (`crop_square`) is the centred square of the frame's short side."""
  size = min(height, width) / spec.margin
  return np.array([width / 2, height / 2 - spec.center_shift * size, size])


def track_faces(frames: Sequence[np.ndarray], spec: FaceCropSpec,
                fps: float) -> Optional[FaceTrack]:
  """Detects, fills and smooths the face box of every frame (the policy in the module doc).

  Args:
    frames: uint8 RGB frames (H, W, 3) of one clip, all the same size.
    spec: detection, gap and smoothing settings.
    fps: frames per second of `frames`, to turn `spec.max_gap_s` into frames.

  Returns:
    A `FaceTrack`, or None when no probed frame has a face (or there are no frames).
  """
  t = len(frames)
  if not t:
    return None
  step = max(1, spec.detect_every)
  probe = list(range(0, t, step))
  if probe[-1] != t - 1:
    probe.append(t - 1)
  found = [detect_largest_face(frames[i], spec) for i in probe]
  hit_t = np.array([i for i, box in zip(probe, found) if box is not None], np.int64)
  if hit_t.size == 0:
    return None
  hits = np.array([box for box in found if box is not None], np.float64)
  probe_arr = np.array(probe)
  frame_t = np.arange(t)
  # Frames between probes take the verdict of the nearest probe.
  right = np.clip(np.searchsorted(probe_arr, frame_t), 0, len(probe) - 1)
  left = np.clip(right - 1, 0, len(probe) - 1)
  nearest = np.where(np.abs(probe_arr[left] - frame_t) <= np.abs(probe_arr[right] - frame_t),
                     left, right)
  detected = np.array([box is not None for box in found])[nearest]

  boxes = np.stack([np.interp(frame_t.astype(np.float64), hit_t, hits[:, j]) for j in range(3)],
                   axis=1)
  max_gap = max(step, int(round(spec.max_gap_s * fps)))
  for k in range(len(hit_t) - 1):
    a, b = hit_t[k], hit_t[k + 1]
    if b - a - 1 > max_gap:
      boxes[a + 1:b] = hits[k]
  if hit_t[0] > max_gap:
    h, w = frames[0].shape[:2]
    boxes[:hit_t[0]] = whole_frame_box(h, w, spec)
  # Trailing gaps already hold the last box (np.interp extends the edge value).
  return FaceTrack(smooth_boxes(boxes, spec.smooth_window), detected, len(hit_t) / len(probe))


def _inside(height: int, width: int, cx: float, cy: float, side: float) -> tuple[int, int, int]:
  """(x0, y0, s): the square of side `side` centred at (cx, cy), moved/shrunk into the frame."""
  s = max(int(round(min(side, height, width))), 1)
  x0 = int(round(min(max(cx - s / 2, 0), width - s)))
  y0 = int(round(min(max(cy - s / 2, 0), height - s)))
  return x0, y0, s


def crop_square(frame_shape: Sequence[int], box: Optional[np.ndarray],
                spec: FaceCropSpec) -> tuple[int, int, int]:
  """(x0, y0, side) in frame pixels of the square `crop_frame` takes for `box`.

  `box` is a (cx, cy, side) face box; None gives the centred square of the short side.
  """
  h, w = frame_shape[:2]
  if box is None:
    return _inside(h, w, w / 2, h / 2, min(h, w))
  cx, cy, size = box
  return _inside(h, w, cx, cy + spec.center_shift * size, size * spec.margin)


def square_crop(frame: np.ndarray, cx: float, cy: float, side: float, out_size: int) -> np.ndarray:
  """Square crop centred at (cx, cy), moved/shrunk to stay inside the frame, resized."""
  x0, y0, s = _inside(frame.shape[0], frame.shape[1], cx, cy, side)
  patch = frame[y0:y0 + s, x0:x0 + s]
  out = video_io.resize(patch, out_size, out_size)
  # At the output size resize returns the view itself; callers keep the crop past the frame.
  return patch.copy() if out is patch else out


def crop_frame(frame: np.ndarray, box: Optional[np.ndarray], spec: FaceCropSpec,
               out_size: int) -> np.ndarray:
  """uint8 (out_size, out_size, 3): the face crop of one frame for its track box (None: the
  centred square of the short side)."""
  x0, y0, s = crop_square(frame.shape, box, spec)
  return square_crop(frame, x0 + s / 2, y0 + s / 2, s, out_size)


def crop_faces(frames: Sequence[np.ndarray], out_size: int, spec: FaceCropSpec,
               fps: float) -> tuple[list[np.ndarray], dict]:
  """Face-crops a whole clip to `out_size` squares (what `prepare` stores).

  Returns:
    (crops, info) with info = {"detected_fraction": float, "fallback_center": bool}; a clip
    without any face is cropped to centred squares and has fallback_center True.
  """
  track = track_faces(frames, spec, fps)
  crops = [crop_frame(frame, None if track is None else track.boxes[i], spec, out_size)
           for i, frame in enumerate(frames)]
  return crops, {"detected_fraction": 0.0 if track is None else track.detected_fraction,
                 "fallback_center": track is None}


def crop_description(enabled: bool, spec: FaceCropSpec, source_factor: int) -> dict:
  """The crop fields of a preprocessing record (dataset_info.json, predict's spec): the face
  detector's settings and the decode-size factor when cropping, else the whole-frame policy."""
  if not enabled:
    return {"face_detector": None, "crop_policy": "none (whole frame, aspect kept)"}
  return {**spec.describe(), "face_source_factor": source_factor}
