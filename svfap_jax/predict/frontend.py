"""The predict front end: a video file or frame folder -> face-tracked, cropped model windows.

The frames go through what `prepare` did to the training clips and then what the evaluation
pipeline does to a stored clip, with the checkpoint's recorded preprocessing spec:
  1. Decode at the frame rate and the largest resolution the checkpoint's dataset was prepared
     with (`meta['preprocessing']`, recorded by `prepare`).
  2. With face crop (the spec's choice, or forced with a warning): `data_pipelines.face_crop`'s
     tracking and square crop into a `short_side` square, the very code `prepare` stores clips
     with; without, the short side is resized to `short_side`. Frames are then JPEG round-tripped
     at the spec's quality (the model was trained on JPEG-stored frames), and, exactly like the
     evaluation pipeline, resized on the short side to the run's data.eval_resize (default
     img_size) and centre cropped to img_size.
  3. Windows (`windows.window_starts`): `window` model frames taken every `rate` frames, starting
     at 0, stride, 2 * stride, ...; a clip shorter than one window gives one window at frame 0
     whose missing frames repeat the last frame, the way training pads short clips.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence, Union

import numpy as np

from data_pipelines import face_crop as faces
from data_pipelines import video_io
from svfap_jax.predict.windows import window_frames, window_starts

# A window whose sampled frames have a face less often than this is flagged `mostly_no_face`.
MIN_FACE_FRACTION = 0.5


class NoFaceError(video_io.InputError):
  """Face crop is on and no frame of the clip has a detectable face."""


# ------------------------------------------------------------------------------------------------
# Preprocessing spec.
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Preprocessing:
  """How frames become model input; mirrors `data_pipelines.build.PrepareOptions` + eval crop."""
  img_size: int
  short_side: int
  face_crop: bool = False
  face: faces.FaceCropSpec = faces.FaceCropSpec()
  jpeg_quality: Optional[int] = 90
  target_fps: Optional[float] = None
  folder_fps: float = video_io.DEFAULT_FOLDER_FPS
  face_source_factor: int = 4
  # Evaluation view: short side resized to this (None: img_size), then the centre square.
  eval_resize: Optional[int] = None
  # "checkpoint": read from the checkpoint; "default": the checkpoint recorded none.
  source: str = "default"
  checkpoint_face_crop: Optional[bool] = None

  @property
  def decode_short_side(self) -> int:
    """Largest short side kept at decode time (the builder's cap, so detection sees the same)."""
    return self.short_side * (self.face_source_factor if self.face_crop else 1)

  def describe(self) -> dict:
    out = {"source": self.source, "face_crop": self.face_crop,
           "checkpoint_face_crop": self.checkpoint_face_crop, "short_side": self.short_side,
           "img_size": self.img_size, "jpeg_quality": self.jpeg_quality,
           "target_fps": self.target_fps, "folder_fps": self.folder_fps,
           "eval_resize": self.eval_resize or self.img_size,
           "eval_crop": "short side resized to eval_resize, centre img_size square"}
    out.update(faces.crop_description(self.face_crop, self.face, self.face_source_factor))
    return out


def default_short_side(img_size: int) -> int:
  """The builder's convention: frames stored at about 1.1 x the model's crop."""
  return int(round(img_size * 1.1))


def preprocessing_from_spec(spec: Optional[dict], img_size: int,
                            eval_resize: Optional[int] = None) -> Preprocessing:
  """A `Preprocessing` from a dataset's recorded spec (None or {}: the builder's defaults).

  `eval_resize` is the run's data.eval_resize (the evaluation pipeline's resize before its centre
  crop; None or 0: img_size).
  """
  eval_resize = int(eval_resize) if eval_resize else None
  if not spec:
    return Preprocessing(img_size=img_size, short_side=default_short_side(img_size),
                         eval_resize=eval_resize)
  face_crop = bool(spec.get("face_crop", False))
  return Preprocessing(
      img_size=img_size,
      eval_resize=eval_resize,
      short_side=int(spec.get("short_side") or default_short_side(img_size)),
      face_crop=face_crop,
      face=faces.FaceCropSpec.from_spec(spec),
      jpeg_quality=spec.get("jpeg_quality", 90),
      target_fps=spec.get("target_fps"),
      folder_fps=float(spec.get("folder_fps") or video_io.DEFAULT_FOLDER_FPS),
      face_source_factor=int(spec.get("face_source_factor") or 4),
      source="checkpoint",
      checkpoint_face_crop=face_crop)


def _face_crop_choice(choice: Union[None, bool, str]) -> Optional[bool]:
  if choice is None or isinstance(choice, bool):
    return choice
  value = str(choice).lower()
  if value == "auto":
    return None
  if value in ("on", "true", "yes", "1"):
    return True
  if value in ("off", "false", "no", "0"):
    return False
  raise ValueError(f"face_crop={choice!r}: use 'on', 'off' or 'auto'")


def apply_face_crop_choice(prep: Preprocessing, choice: Union[None, bool, str]
                           ) -> tuple[Preprocessing, list[str]]:
  """`prep` with face crop forced on/off; a warning when that contradicts the checkpoint."""
  wanted = _face_crop_choice(choice)
  if wanted is None or wanted == prep.face_crop:
    return prep, []
  notes = []
  if prep.source == "checkpoint":
    trained = "face crops" if prep.face_crop else "whole frames (no face crop)"
    notes.append(f"face crop forced {'on' if wanted else 'off'}, but the checkpoint was trained "
                 f"on {trained} according to its dataset's preprocessing spec; predictions may "
                 "be less accurate")
  return dataclasses.replace(prep, face_crop=wanted), notes



def crop_square(frame_shape: tuple, box: Optional[np.ndarray], prep: Preprocessing
                ) -> tuple[int, int, int]:
  """(x0, y0, side) of the source square the model's input comes from (for drawing)."""
  h, w = frame_shape[:2]
  if prep.face_crop and box is not None:
    x0, y0, s = faces.crop_square(frame_shape, box, prep.face)
  else:
    s = min(h, w)
    x0, y0 = (w - s) // 2, (h - s) // 2
  # An eval_resize above img_size zooms in: the model sees the centre of that square.
  seen = s * min(1.0, prep.img_size / (prep.eval_resize or prep.img_size))
  return int(round(x0 + (s - seen) / 2)), int(round(y0 + (s - seen) / 2)), int(round(seen))


def model_frame(frame: np.ndarray, box: Optional[np.ndarray], prep: Preprocessing) -> np.ndarray:
  """One decoded RGB frame -> uint8 (img_size, img_size, 3), as stored and then eval-cropped.

  `box` is the frame's face-track box (None: the centred square) when face crop is on.
  """
  from data_pipelines import build, grain_pipeline, records  # pylint: disable=g-import-not-at-top
  if prep.face_crop:
    stored = faces.crop_frame(frame, box, prep.face, prep.short_side)
  else:
    stored = video_io.resize_short_side(frame, prep.short_side)
  if prep.jpeg_quality:
    stored = records.decode_frames([build.encode_jpeg(stored, prep.jpeg_quality)])[0]
  view = video_io.resize_short_side(stored[None], prep.eval_resize or prep.img_size)
  return grain_pipeline.centre_crop(view, prep.img_size)[0]


@dataclasses.dataclass
class PreparedVideo:
  """A decoded, cropped video cut into windows, ready for the model."""
  path: str
  fps: float
  num_frames: int
  windows: list[dict]            # timing and face fields of each window (no scores yet)
  indices: list[np.ndarray]      # sampled frame numbers per window
  crops: dict                    # frame number -> uint8 (S, S, 3) model frame
  detected: Optional[np.ndarray]
  track: Optional[faces.FaceTrack]
  prep: Preprocessing
  preprocessing: dict
  warnings: list[str]
  times: np.ndarray              # float64 (num_frames,): seconds each frame is shown at
  ends: np.ndarray               # float64 (num_frames,): seconds each frame gives way at
  frames: Optional[list] = None  # decoded frames, kept only for rendering

  @property
  def duration_s(self) -> float:
    """Seconds from the stream start until the last decoded frame stops being shown."""
    return float(self.ends[-1])

  def clip(self, k: int) -> np.ndarray:
    return np.stack([self.crops[int(i)] for i in self.indices[k]])

  def no_face_frames(self) -> list[dict]:
    if self.detected is None:
      return []
    return [{"frame": int(i), "time_s": round(float(self.times[i]), 4)}
            for i in np.flatnonzero(~self.detected)]

  def no_face_spans(self) -> list[dict]:
    if self.detected is None:
      return []
    spans, missing = [], ~self.detected
    edges = np.diff(np.concatenate([[0], missing.astype(np.int8), [0]]))
    for a, b in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)):
      spans.append({"start_frame": int(a), "end_frame": int(b - 1),
                    "start_s": round(float(self.times[a]), 4),
                    "end_s": round(float(self.ends[b - 1]), 4)})
    return spans


@dataclasses.dataclass
class Failure:
  """A video that could not be used, with the reason."""
  path: str
  reason: str


def prepare_video(path: str, prep: Preprocessing, *, window: int, stride: int, rate: int,
                  keep_frames: bool = False, notes: Sequence[str] = ()) -> PreparedVideo:
  """Decodes, tracks, crops and windows one video.

  Raises:
    video_io.InputError: unreadable, empty, truncated or unsupported input (names the file).
    NoFaceError: face crop is on and no frame has a face.
  """
  decoded = video_io.read_with(video_io.read_clip, path, target_fps=prep.target_fps,
                               folder_fps=prep.folder_fps, max_short_side=prep.decode_short_side)
  frames, fps = decoded.frames, float(decoded.fps)
  times, ends = np.asarray(decoded.times, np.float64), decoded.shown_until()
  n = len(frames)
  track = None
  if prep.face_crop:
    track = faces.track_faces(frames, prep.face, fps)
    if track is None:
      raise NoFaceError(path, f"no face found in any of its {n} frames (OpenCV Haar detector) "
                        "and face crop is on; --face-crop off (face_crop=False) predicts on whole "
                        "frames")
  starts = window_starts(n, window, stride, rate)
  indices = [window_frames(n, window, rate, s) for s in starts]
  crops = {}
  for i in np.unique(np.concatenate(indices)):
    crops[int(i)] = model_frame(frames[i], None if track is None else track.boxes[i], prep)
  windows = []
  notes = list(notes)
  for k, (start, idx) in enumerate(zip(starts, indices)):
    end = int(idx[-1])
    face_fraction = None if track is None else float(np.mean(track.detected[idx]))
    windows.append({
        "index": k, "start_s": round(float(times[start]), 4),
        "end_s": round(float(ends[end]), 4),
        "start_frame": int(start), "end_frame": end,
        "face_fraction": None if face_fraction is None else round(face_fraction, 4),
        "mostly_no_face": bool(face_fraction is not None and face_fraction < MIN_FACE_FRACTION),
    })
  if n <= (window - 1) * rate:
    notes.append(f"{n} frames are fewer than one window needs ({(window - 1) * rate + 1} at "
                 f"rate {rate}): one window, padded by repeating the last frame")
  flagged = sum(w["mostly_no_face"] for w in windows)
  if flagged:
    notes.append(f"{flagged} of {len(windows)} windows have a face in fewer than "
                 f"{MIN_FACE_FRACTION:.0%} of their frames (held box / whole frame used)")
  described = prep.describe()
  described.update(window=window, stride=stride, rate=rate)
  return PreparedVideo(path=path, fps=fps, num_frames=n, windows=windows, indices=indices,
                       crops=crops, detected=None if track is None else track.detected,
                       track=track, prep=prep, preprocessing=described, warnings=notes,
                       times=times, ends=ends, frames=frames if keep_frames else None)


