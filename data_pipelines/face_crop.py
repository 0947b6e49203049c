"""Face detection and a temporally smooth square face crop for whole clips.

Policy: OpenCV's frontal-face Haar cascade runs on a downscaled grey copy of every
`detect_every`-th frame and the largest face is kept; a frame without a face is retried rotated
by a few roll angles (the frontal cascade misses tilted heads). Gaps are filled by linear
interpolation in time, then the box (centre x, centre y, size) is smoothed with a running median
(drops one-frame false positives) followed by a running mean (removes jitter). The crop is a
square `margin` times the box size, kept inside the frame (shifted, and shrunk to the frame's
short side if needed), resized to the output size. A clip without any detection falls back to a
centred square crop and says so in the returned info.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import cv2
import numpy as np

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

  def describe(self) -> dict:
    return {
        "face_detector": f"opencv-haar:{HAAR_CASCADE}",
        "crop_policy": (f"largest face per frame, gaps interpolated, median+mean smoothed over "
                        f"{self.smooth_window} frames, square of {self.margin}x the box, centre "
                        f"shifted down {self.center_shift}, kept inside the frame; centred square "
                        "when no face is found"),
        **dataclasses.asdict(self),
    }


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


def track_faces(frames: Sequence[np.ndarray], spec: FaceCropSpec = FaceCropSpec()
                ) -> tuple[Optional[np.ndarray], float]:
  """Smoothed per-frame face boxes (T, 3) = (cx, cy, side), and the fraction of detected frames.

  Returns (None, 0.0) when no frame has a face.
  """
  t = len(frames)
  probe = list(range(0, t, max(1, spec.detect_every)))
  if probe and probe[-1] != t - 1:
    probe.append(t - 1)
  hits_t, hits = [], []
  for i in probe:
    box = detect_largest_face(frames[i], spec)
    if box is not None:
      hits_t.append(i)
      hits.append(box)
  if not hits:
    return None, 0.0
  hits_arr = np.asarray(hits, np.float64)
  times = np.arange(t, dtype=np.float64)
  boxes = np.stack([np.interp(times, hits_t, hits_arr[:, j]) for j in range(3)], axis=1)
  return smooth_boxes(boxes, spec.smooth_window), len(hits_t) / len(probe)


def square_crop(frame: np.ndarray, cx: float, cy: float, side: float, out_size: int) -> np.ndarray:
  """Square crop centred at (cx, cy), moved/shrunk to stay inside the frame, resized."""
  h, w = frame.shape[:2]
  s = int(round(min(side, h, w)))
  s = max(s, 1)
  x0 = int(round(min(max(cx - s / 2, 0), w - s)))
  y0 = int(round(min(max(cy - s / 2, 0), h - s)))
  patch = frame[y0:y0 + s, x0:x0 + s]
  interp = cv2.INTER_AREA if s > out_size else cv2.INTER_LINEAR
  return cv2.resize(patch, (out_size, out_size), interpolation=interp)


def crop_faces(frames: Sequence[np.ndarray], out_size: int,
               spec: FaceCropSpec = FaceCropSpec()) -> tuple[list[np.ndarray], dict]:
  """Face-crops a clip to `out_size` squares.

  Returns:
    (crops, info) with info = {"detected_fraction": float, "fallback_center": bool}.
  """
  boxes, detected = track_faces(frames, spec)
  crops = []
  for i, frame in enumerate(frames):
    h, w = frame.shape[:2]
    if boxes is None:
      cx, cy, side = w / 2, h / 2, min(h, w)
    else:
      cx, cy, size = boxes[i]
      cy += spec.center_shift * size
      side = size * spec.margin
    crops.append(square_crop(frame, cx, cy, side, out_size))
  return crops, {"detected_fraction": detected, "fallback_center": boxes is None}
