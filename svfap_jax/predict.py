"""Per-window expression prediction and embedding extraction for arbitrary videos.

  python -m svfap_jax predict --workdir W --video clip.mp4 --out preds.json   # or .csv
  python -m svfap_jax predict --checkpoint W/best --video videos.txt --out preds.csv
  python -m svfap_jax predict --workdir W --video clip.mp4 --render overlay.mp4
  python -m svfap_jax extract --workdir W --video clip.mp4 --out emb.npy      # or .parquet

  from svfap_jax import predict_video
  windows = predict_video("runs/dfew_fold1", "clip.mp4")     # list of per-window dicts

Inputs: a video file (mp4/avi/webm/mov/..., see `data_pipelines.video_io`), a folder of frames,
or a text file (.txt/.lst/.list) naming one video or frame folder per line (relative paths are
taken from the list's folder; anything after the first whitespace-separated token is ignored when
the whole line is not a path, so SVFAP `<path> <label>` lists work unchanged).

Front end (shared by `predict`, `extract` and the Python API):
  1. Decode at the frame rate and the largest resolution the checkpoint's dataset was prepared
     with (its preprocessing spec, `meta['preprocessing']`, recorded by `prepare`).
  2. Face crop when the spec says so (override with `--face-crop on|off`; a choice that differs
     from the checkpoint's spec is warned about): OpenCV's Haar detector on every frame, largest
     face; gaps of up to one second are interpolated as the dataset builder does, longer gaps hold
     the last good box (the whole frame before the first face); the box is then median+mean
     smoothed over time and cropped with the spec's margin into a `short_side` square. Without
     face crop the short side is resized to `short_side`. Frames are then JPEG round-tripped at the
     spec's quality (the model was trained on JPEG-stored frames), and, exactly like the evaluation
     pipeline, resized on the short side to the run's data.eval_resize (default img_size) and
     centre cropped to img_size.
  3. Windows: `window` model frames (the model's num_frames, 16) taken every `rate` frames (default
     the checkpoint's data.sampling_rate), starting at frames 0, stride, 2 * stride, ... while
     start + (window - 1) * rate < num_frames; frames after the last window's end (fewer than
     `stride`) are not scored. A clip shorter than one window (num_frames <= (window - 1) * rate)
     gives exactly one window at frame 0 whose missing frames repeat the last frame, the way
     training pads short clips.
  4. The model scores windows in batches of `batch_size` (windows of several videos share batches;
     the last batch is padded, so the model compiles once).

`predict` JSON (one object per video; a list of them for a list input):
  {
    "video": str,                 # the path as given
    "fps": float,                 # nominal rate of the decoded frames (after any target_fps
                                  # resampling; the average rate of a variable-rate file)
    "num_frames": int,            # decoded frames
    "duration_s": float,          # when the last decoded frame stops being shown
    "model": str,                 # registry name, e.g. "svfap_base"
    "task": "classification" | "regression",
    "labels": [str, ...],         # class names (regression: value names)
    "windows": [{
        "index": int,
        "start_s": float, "end_s": float,      # when start_frame is shown and when end_frame
                                               # gives way to the next frame
        "start_frame": int, "end_frame": int,  # first and last sampled frame (inclusive)
        "probs": [float, ...],                 # classification: softmax, one per label
        "values": [float, ...],                # regression instead of "probs"
        "label": str | null,                   # argmax class name (null for regression)
        "face_fraction": float | null,         # sampled frames with a detected face (null when
                                               # face crop is off: no detector runs)
        "mostly_no_face": bool,                # face_fraction < 0.5: scored on held/whole-frame
                                               # crops, treat with care
    }, ...],
    "timeline": [{"second": int,               # per second of video: mean of the windows
                  "probs" | "values": [...],   # overlapping [second, second + 1)
                  "label": str | null}, ...],
    "no_face_frames": [{"frame": int, "time_s": float}, ...],   # face crop on only
    "no_face_spans": [{"start_frame", "end_frame", "start_s", "end_s"}, ...],  # the same, as runs
    "preprocessing": {...},       # what was applied: face_crop, short_side, img_size, window,
                                  # stride, rate, target_fps, detector settings, source of the spec
    "warnings": [str, ...],
  }
Every time is in seconds from the start of the video stream, taken from the frames' presentation
timestamps as a player shows them (variable frame rates keep their real timeline; frame folders
run at their declared rate). Frames are turned upright by the file's rotation flag first.
A video that cannot be used gives {"video": path, "error": reason} in list mode (other videos go
on; the exit status is 1). With face crop on, a video without any detected face is an error.

`predict` CSV: one row per window: video, index, start_s, end_s, start_frame, end_frame, label,
face_fraction, mostly_no_face, then p_<label> per class (or v_<name> per regression value).

`extract` writes the pooled, normalised encoder embedding (the classifier's fc_norm output, C
values) per window and per video (the mean over its windows):
  .npy      np.save of a dict (load with np.load(path, allow_pickle=True).item()):
            {"windows": float32 (N, C), "video": float32 (C,), "window_video": int32 (N,)} for one
            video; for a list input "video" is (V, C) and window_video indexes it. A sidecar
            <out>.json holds the videos, fps, window times and preprocessing (the `predict` JSON
            without scores).
  .parquet  one row per window (kind "window") and one per video (kind "video", index -1):
            video, kind, index, start_s, end_s, start_frame, end_frame, face_fraction, embedding
            (fixed-size list of float32). Needs pyarrow.

Memory: a clip is decoded whole (at most short_side x face_source_factor pixels on the short side
with face crop, short_side without, like the builder), so split very long videos first.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import sys
import warnings
import weakref
from typing import Any, Iterable, Iterator, Optional, Sequence, Union

import cv2
import numpy as np

from data_pipelines import face_crop as faces
from data_pipelines import video_io

LIST_EXTENSIONS = (".txt", ".lst", ".list")
# Gaps in the face track up to this long are interpolated (what the dataset builder does for any
# gap); longer ones hold the last good box, so a face leaving the shot does not drag the crop.
MAX_INTERPOLATED_GAP_S = 1.0
# A window whose sampled frames have a face less often than this is flagged `mostly_no_face`.
MIN_FACE_FRACTION = 0.5
# Rendered frames are scaled up to at least this height so the overlay text stays legible.
RENDER_MIN_HEIGHT = 360


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
    if self.face_crop:
      out.update(self.face.describe())
      out["face_source_factor"] = self.face_source_factor
      out["gaps"] = (f"gaps up to {MAX_INTERPOLATED_GAP_S:g} s interpolated; longer gaps hold "
                     "the last good box (whole frame before the first face)")
    else:
      out.update({"face_detector": None, "crop_policy": "none (whole frame, aspect kept)"})
    return out


def _face_spec_from(spec: dict) -> faces.FaceCropSpec:
  fields = {f.name for f in dataclasses.fields(faces.FaceCropSpec)}
  kwargs = {k: v for k, v in spec.items() if k in fields and v is not None}
  if "roll_angles" in kwargs:
    kwargs["roll_angles"] = tuple(float(a) for a in kwargs["roll_angles"])
  return faces.FaceCropSpec(**kwargs)


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
      face=_face_spec_from(spec),
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


# ------------------------------------------------------------------------------------------------
# Face tracking and cropping.
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class FaceTrack:
  """Per-frame face boxes (cx, cy, side) after gap filling and smoothing, and detection flags."""
  boxes: np.ndarray     # float64 (T, 3), decoded-frame pixels
  detected: np.ndarray  # bool (T,): a face was found in this frame (or its detection probe)


def _whole_frame_box(height: int, width: int, spec: faces.FaceCropSpec) -> np.ndarray:
  # The box whose margin-scaled, shifted crop is the centred full-height/width square.
  size = min(height, width) / spec.margin
  return np.array([width / 2, height / 2 - spec.center_shift * size, size])


def track_faces(frames: Sequence[np.ndarray], spec: faces.FaceCropSpec, fps: float,
                max_gap_s: float = MAX_INTERPOLATED_GAP_S) -> Optional[FaceTrack]:
  """Detects, fills and smooths the face box of every frame; None when no frame has a face.

  For a clip whose gaps are all short this gives exactly `face_crop.track_faces`'s boxes, i.e.
  the crops the training data was made with.
  """
  t = len(frames)
  step = max(1, spec.detect_every)
  probe = list(range(0, t, step))
  if probe[-1] != t - 1:
    probe.append(t - 1)
  found = [faces.detect_largest_face(frames[i], spec) for i in probe]
  hit_t = np.array([i for i, box in zip(probe, found) if box is not None], np.int64)
  if hit_t.size == 0:
    return None
  hits = np.array([box for box in found if box is not None], np.float64)
  probe_arr = np.array(probe)
  # Frames between probes take the verdict of the nearest probe.
  right = np.clip(np.searchsorted(probe_arr, np.arange(t)), 0, len(probe) - 1)
  left = np.clip(right - 1, 0, len(probe) - 1)
  nearest = np.where(np.abs(probe_arr[left] - np.arange(t)) <= np.abs(probe_arr[right] -
                                                                      np.arange(t)), left, right)
  probe_hit = np.array([box is not None for box in found])
  detected = probe_hit[nearest]

  times = np.arange(t, dtype=np.float64)
  boxes = np.stack([np.interp(times, hit_t, hits[:, j]) for j in range(3)], axis=1)
  max_gap = max(step, int(round(max_gap_s * fps)))
  for k in range(len(hit_t) - 1):
    a, b = hit_t[k], hit_t[k + 1]
    if b - a - 1 > max_gap:
      boxes[a + 1:b] = hits[k]
  if hit_t[0] > max_gap:
    h, w = frames[0].shape[:2]
    boxes[:hit_t[0]] = _whole_frame_box(h, w, spec)
  # Trailing gaps already hold the last box (np.interp extends the edge value).
  return FaceTrack(faces.smooth_boxes(boxes, spec.smooth_window), detected)


def crop_square(frame_shape: tuple, box: Optional[np.ndarray], prep: Preprocessing
                ) -> tuple[int, int, int]:
  """(x0, y0, side) of the source square the model's input comes from (for drawing)."""
  h, w = frame_shape[:2]
  if prep.face_crop and box is not None:
    cx, cy, size = box
    cy = cy + prep.face.center_shift * size
    s = max(1, int(round(min(size * prep.face.margin, h, w))))
    x0 = int(round(min(max(cx - s / 2, 0), w - s)))
    y0 = int(round(min(max(cy - s / 2, 0), h - s)))
  else:
    s = min(h, w)
    x0, y0 = (w - s) // 2, (h - s) // 2
  # An eval_resize above img_size zooms in: the model sees the centre of that square.
  seen = s * min(1.0, prep.img_size / (prep.eval_resize or prep.img_size))
  return int(round(x0 + (s - seen) / 2)), int(round(y0 + (s - seen) / 2)), int(round(seen))


def model_frame(frame: np.ndarray, box: Optional[np.ndarray], prep: Preprocessing) -> np.ndarray:
  """One decoded RGB frame -> uint8 (img_size, img_size, 3), as stored and then eval-cropped."""
  from data_pipelines import build, grain_pipeline, records  # pylint: disable=g-import-not-at-top
  if prep.face_crop:
    if box is None:
      h, w = frame.shape[:2]
      box = _whole_frame_box(h, w, prep.face)
    cx, cy, size = box
    stored = faces.square_crop(frame, cx, cy + prep.face.center_shift * size,
                               size * prep.face.margin, prep.short_side)
  else:
    stored = video_io.resize_short_side(frame, prep.short_side)
  if prep.jpeg_quality:
    stored = records.decode_frames([build.encode_jpeg(stored, prep.jpeg_quality)])[0]
  view = grain_pipeline.resize_short_side(stored[None], prep.eval_resize or prep.img_size)
  return grain_pipeline.centre_crop(view, prep.img_size)[0]


# ------------------------------------------------------------------------------------------------
# Windows.
# ------------------------------------------------------------------------------------------------


def window_starts(num_frames: int, window: int, stride: int, rate: int) -> list[int]:
  """0, stride, 2 * stride, ... while start + (window - 1) * rate < num_frames; [0] if none."""
  span = (window - 1) * rate
  if num_frames <= span:
    return [0]
  return list(range(0, num_frames - span, stride))


def window_frames(num_frames: int, window: int, rate: int, start: int) -> np.ndarray:
  """Sampled frame numbers of one window; past the clip's end the last frame repeats."""
  return np.minimum(start + rate * np.arange(window), num_frames - 1).astype(np.int64)


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
  track: Optional[FaceTrack]
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
    track = track_faces(frames, prep.face, fps)
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


# ------------------------------------------------------------------------------------------------
# The model.
# ------------------------------------------------------------------------------------------------


class Predictor:
  """A fine-tuned model with its labels, preprocessing spec and jitted scoring functions."""

  def __init__(self, *, name: str, spec, module, params, task: str, labels: Sequence[str],
               preprocessing: Preprocessing, sampling_rate: int, source: str):
    import jax  # pylint: disable=g-import-not-at-top
    self.name = name
    self.spec = spec
    self.module = module
    self.params = params
    self.task = task
    self.labels = [str(x) for x in labels]
    self.preprocessing = preprocessing
    self.sampling_rate = int(sampling_rate)
    self.source = source
    self.trace_count = 0
    self._scores = jax.jit(self._scores_fn)
    self._features = jax.jit(self._features_fn)

  @property
  def has_head(self) -> bool:
    return bool(self.labels)

  def _input(self, video):
    from data_pipelines import augment  # pylint: disable=g-import-not-at-top
    self.trace_count += 1  # runs only while tracing: counts compilations
    return augment.eval_preprocess(video)

  def _scores_fn(self, params, video):
    import jax  # pylint: disable=g-import-not-at-top
    out = self.module.apply({"params": params}, self._input(video), deterministic=True)
    if self.task == "classification":
      out = jax.nn.softmax(out, axis=-1)
    # keep_temporal_dim models score every frame; a window gets their mean.
    return out.mean(axis=1) if out.ndim == 3 else out

  def _features_fn(self, params, video):
    out = self.module.apply({"params": params}, self._input(video), deterministic=True,
                            return_features=True)
    return out.mean(axis=1) if out.ndim == 3 else out

  def scores(self, clips: np.ndarray) -> np.ndarray:
    """uint8 (B, T, S, S, 3) windows -> (B, K) probabilities or regression values."""
    if not self.has_head:
      raise ValueError(f"{self.source}: the model has no classification/regression head; use "
                       "`extract` for embeddings")
    return np.asarray(self._scores(self.params, clips), np.float32)

  def features(self, clips: np.ndarray) -> np.ndarray:
    """uint8 (B, T, S, S, 3) windows -> (B, C) pooled, normalised encoder embeddings."""
    return np.asarray(self._features(self.params, clips), np.float32)


def _restore(path: str) -> tuple[Any, dict]:
  """Params (the EMA copy when the run kept one, as evaluation uses) and meta of a checkpoint."""
  import etils.epath as epath  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from svfap_jax import checkpoint  # pylint: disable=g-import-not-at-top
  manager, step = checkpoint.find_checkpoint_dir(path)
  # Host numpy targets: whole arrays here, whatever mesh and process count wrote the checkpoint.
  tree = ocp.StandardCheckpointHandler().metadata(
      epath.Path(manager.directory) / str(step) / "state").tree
  target = jax.tree_util.tree_map(
      lambda m: np.broadcast_to(np.zeros((), m.dtype), m.shape), tree)
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
  state = restored["state"]
  get = state.get if isinstance(state, dict) else lambda k: getattr(state, k, None)
  params = get("ema_params") or get("params")
  return jax.device_get(params), dict(restored["meta"] or {})


def predictor_from_checkpoint(path: str) -> Predictor:
  """Loads a fine-tuning (or pretraining: embeddings only) workdir / checkpoint directory."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from svfap_jax.models.registry import get_spec  # pylint: disable=g-import-not-at-top
  from svfap_jax.train import loop  # pylint: disable=g-import-not-at-top
  params, meta = _restore(path)
  if not meta.get("config") or not meta.get("model"):
    raise ValueError(f"{path}: the checkpoint carries no run config/model name in its meta")
  config = ml_collections.ConfigDict(meta["config"])
  spec = get_spec(meta["model"])
  pretrain = meta.get("mode") == "pretrain" or "decoder" in params
  task = meta.get("task") or config.get("task", "classification")
  if pretrain:
    # The encoder of an MAE run, read through the fine-tuning model without a head (a fresh
    # fc_norm is the identity), the way fine-tuning initialises from it.
    import jax  # pylint: disable=g-import-not-at-top
    from svfap_jax import api  # pylint: disable=g-import-not-at-top
    module = loop.build_module(config, spec, 0, pretrain=False)
    template, _ = api.init_params(module, spec, jax.random.key(0), False)
    params, _ = loop.load_initial_params(path, jax.device_get(template), pretrain=False)
    labels: list = []
  else:
    num_outputs = int(meta.get("num_outputs") or 0)
    module = loop.build_module(config, spec, num_outputs, pretrain=False)
    names = meta.get("label_names") if task == "classification" else meta.get("value_names")
    labels = list(names or [])
    if len(labels) != num_outputs:
      labels = [str(i) for i in range(num_outputs)]
  data = config.get("data", {})
  prep = preprocessing_from_spec(meta.get("preprocessing"), spec.img_size,
                                 data.get("eval_resize", None))
  rate = int(data.get("sampling_rate", 4) or 4)
  return Predictor(name=meta["model"], spec=spec, module=module, params=params, task=task,
                   labels=labels, preprocessing=prep, sampling_rate=rate, source=str(path))


def predictor_from_model(model) -> Predictor:
  """Wraps an `svfap_jax.create_model(...)` classifier (default preprocessing, index labels)."""
  if model.pretrain:
    raise ValueError("a pretraining model (pretrain=True) cannot score videos; create the "
                     "classifier (num_classes=K) or load a fine-tuned workdir")
  k = int(model.options.get("num_classes") or 0)
  task = "regression" if model.options.get("head_activation") else "classification"
  return Predictor(name=model.name, spec=model.spec, module=model.module, params=model.params,
                   task=task, labels=[str(i) for i in range(k)],
                   preprocessing=preprocessing_from_spec(None, model.spec.img_size),
                   sampling_rate=4, source=f"create_model({model.name!r})")


_CACHE: dict = {}


def load_predictor(model_or_workdir) -> Predictor:
  """A `Predictor` for a workdir/checkpoint path, an `api.Model`, or a `Predictor` (returned).

  Loaded predictors are cached (per path and checkpoint step, per model object), so repeated
  calls reuse the compiled model.
  """
  if isinstance(model_or_workdir, Predictor):
    return model_or_workdir
  if isinstance(model_or_workdir, (str, os.PathLike)):
    from svfap_jax import checkpoint  # pylint: disable=g-import-not-at-top
    path = os.fspath(model_or_workdir)
    manager, step = checkpoint.find_checkpoint_dir(path)
    key = ("path", os.path.realpath(path), str(manager.directory), step)
    if key not in _CACHE:
      _CACHE[key] = predictor_from_checkpoint(path)
    return _CACHE[key]
  key = ("model", id(model_or_workdir))
  cached = _CACHE.get(key)
  if cached is None or cached[0]() is not model_or_workdir:
    cached = (weakref.ref(model_or_workdir), predictor_from_model(model_or_workdir))
    _CACHE[key] = cached
  return cached[1]


# ------------------------------------------------------------------------------------------------
# Running windows through the model, across videos.
# ------------------------------------------------------------------------------------------------


def _score_stream(items: Iterable[Union[PreparedVideo, Failure]], fn, batch_size: int
                  ) -> Iterator[tuple[Union[PreparedVideo, Failure], Optional[np.ndarray]]]:
  """Runs `fn` on fixed-size batches of windows drawn from consecutive videos.

  Yields (video, outputs (N, K)) in input order as soon as all of a video's windows are scored
  (failures pass through with None).
  """
  pending: list[list] = []   # [item, outputs list, windows still unscored]
  batch: list[np.ndarray] = []
  owners: list[tuple[list, int]] = []

  def flush():
    if not batch:
      return
    real = len(batch)
    # Padding to the fixed batch size keeps a single compiled program.
    clips = np.stack(batch + [batch[-1]] * (batch_size - real))
    out = fn(clips)[:real]
    for (entry, k), row in zip(owners, out):
      entry[1][k] = row
      entry[2] -= 1
    batch.clear()
    owners.clear()

  def finished():
    while pending and pending[0][2] == 0:
      item, outs, _ = pending.pop(0)
      yield item, None if isinstance(item, Failure) else np.stack(outs)

  for item in items:
    if isinstance(item, Failure):
      pending.append([item, [], 0])
    else:
      entry = [item, [None] * len(item.windows), len(item.windows)]
      pending.append(entry)
      for k in range(len(item.windows)):
        batch.append(item.clip(k))
        owners.append((entry, k))
        if len(batch) == batch_size:
          flush()
    yield from finished()
  flush()
  yield from finished()


def _rounded(values: np.ndarray) -> list[float]:
  return [round(float(v), 6) for v in values]


def _timeline(windows: Sequence[dict], scores: np.ndarray, duration_s: float, labels, task
              ) -> list[dict]:
  key = "probs" if task == "classification" else "values"
  out = []
  starts = np.array([w["start_s"] for w in windows])
  ends = np.array([w["end_s"] for w in windows])
  for second in range(int(np.ceil(duration_s - 1e-9))):
    overlap = (starts < second + 1) & (ends > second)
    if not overlap.any():
      continue
    mean = scores[overlap].mean(axis=0)
    label = labels[int(np.argmax(mean))] if task == "classification" else None
    out.append({"second": second, key: _rounded(mean), "label": label})
  return out


def _result(predictor: Predictor, video: PreparedVideo, scores: np.ndarray) -> dict:
  key = "probs" if predictor.task == "classification" else "values"
  windows = []
  for w, s in zip(video.windows, scores):
    row = {k: w[k] for k in ("index", "start_s", "end_s", "start_frame", "end_frame")}
    row[key] = _rounded(s)
    row["label"] = (predictor.labels[int(np.argmax(s))] if predictor.task == "classification"
                    else None)
    row["face_fraction"] = w["face_fraction"]
    row["mostly_no_face"] = w["mostly_no_face"]
    windows.append(row)
  duration = video.duration_s
  return {
      "video": video.path, "fps": round(video.fps, 6), "num_frames": video.num_frames,
      "duration_s": round(duration, 4), "model": predictor.name, "task": predictor.task,
      "labels": list(predictor.labels), "windows": windows,
      "timeline": _timeline(windows, scores, duration, predictor.labels, predictor.task),
      "no_face_frames": video.no_face_frames(), "no_face_spans": video.no_face_spans(),
      "preprocessing": video.preprocessing, "warnings": list(video.warnings),
  }


@dataclasses.dataclass
class Options:
  """Windowing and preprocessing choices of one prediction/extraction run."""
  window: Optional[int] = None
  stride: int = 8
  rate: Optional[int] = None
  face_crop: Union[None, bool, str] = None
  batch_size: int = 8
  folder_fps: Optional[float] = None

  def resolve(self, predictor: Predictor) -> tuple[int, int, int, Preprocessing, list[str]]:
    window = self.window or predictor.spec.num_frames
    if window != predictor.spec.num_frames:
      raise ValueError(f"window={window}: {predictor.name} takes exactly "
                       f"{predictor.spec.num_frames} frames per window")
    rate = self.rate or predictor.sampling_rate
    if self.stride < 1 or rate < 1 or self.batch_size < 1:
      raise ValueError(f"stride={self.stride}, rate={rate} and batch_size={self.batch_size} "
                       "must be >= 1")
    prep, notes = apply_face_crop_choice(predictor.preprocessing, self.face_crop)
    if self.folder_fps:
      prep = dataclasses.replace(prep, folder_fps=float(self.folder_fps))
    return window, self.stride, rate, prep, notes


def _prepared(paths: Sequence[str], predictor: Predictor, options: Options, *,
              keep_frames: bool = False, progress: bool = False, strict: bool = True
              ) -> Iterator[Union[PreparedVideo, Failure]]:
  window, stride, rate, prep, notes = options.resolve(predictor)
  for note in notes:
    warnings.warn(note, stacklevel=3)
  iterator: Iterable[str] = paths
  if progress:
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top
    iterator = tqdm(paths, desc="videos", unit="video", file=sys.stderr)
  for path in iterator:
    try:
      yield prepare_video(path, prep, window=window, stride=stride, rate=rate,
                          keep_frames=keep_frames, notes=notes)
    except video_io.InputError as e:
      if strict:
        raise
      yield Failure(path, str(e) if os.path.normpath(e.path) != os.path.normpath(path)
                    else f"{path}: {e.reason}")


def predict(model_or_workdir, paths: Union[str, Sequence[str]], *, window: Optional[int] = None,
            stride: int = 8, rate: Optional[int] = None,
            face_crop: Union[None, bool, str] = None, batch_size: int = 8,
            folder_fps: Optional[float] = None, strict: bool = True, progress: bool = False,
            keep_frames: bool = False) -> list[dict]:
  """Full per-video results (the JSON schema in the module docstring), one per path.

  With strict=False a failed video gives {"video", "error"} instead of raising; keep_frames adds
  the decoded frames and face track under "_prepared" (for rendering).
  """
  predictor = load_predictor(model_or_workdir)
  if not predictor.has_head:
    raise ValueError(f"{predictor.source}: no classification/regression head (a pretraining "
                     "checkpoint?); use extract for embeddings")
  paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
  options = Options(window, stride, rate, face_crop, batch_size, folder_fps)
  items = _prepared([os.fspath(p) for p in paths], predictor, options, keep_frames=keep_frames,
                    progress=progress, strict=strict)
  results = []
  for item, scores in _score_stream(items, predictor.scores, batch_size):
    if isinstance(item, Failure):
      results.append({"video": item.path, "error": item.reason})
      continue
    result = _result(predictor, item, scores)
    if keep_frames:
      result["_prepared"] = item
    results.append(result)
  return results


def predict_video(model_or_workdir, path: str, *, window: Optional[int] = None, stride: int = 8,
                  rate: Optional[int] = None, face_crop: Union[None, bool, str] = None,
                  batch_size: int = 8) -> list[dict]:
  """Per-window predictions for one video (the "windows" of the documented JSON schema).

  Args:
    model_or_workdir: a fine-tuning workdir or checkpoint directory (its label names and
      preprocessing spec are used), or a classifier from `svfap_jax.create_model` (then: no face
      crop, short side round(1.1 * img_size), labels "0", "1", ...).
    path: a video file or a folder of frames.
    window: frames per window; must equal the model's num_frames (None: that).
    stride: source frames between window starts.
    rate: source frames between a window's frames (None: the checkpoint's data.sampling_rate,
      4 for a `create_model` model).
    face_crop: None/"auto" (the checkpoint's spec), True/"on" or False/"off" (warns when it
      contradicts the checkpoint).
    batch_size: windows per model call.

  Returns:
    One dict per window: index, start_s, end_s, start_frame, end_frame, probs (or values), label,
    face_fraction, mostly_no_face.

  Raises:
    data_pipelines.video_io.InputError: the file cannot be read (the message names it);
      `NoFaceError` (a subclass) when face crop is on and no face is found.
  """
  return predict(model_or_workdir, path, window=window, stride=stride, rate=rate,
                 face_crop=face_crop, batch_size=batch_size)[0]["windows"]


def extract(model_or_workdir, paths: Union[str, Sequence[str]], *, window: Optional[int] = None,
            stride: int = 8, rate: Optional[int] = None,
            face_crop: Union[None, bool, str] = None, batch_size: int = 8,
            folder_fps: Optional[float] = None, strict: bool = True,
            progress: bool = False) -> list[dict]:
  """Per-video embeddings: dicts with the `predict` fields minus scores, plus "embeddings"
  float32 (N, C) per window and "embedding" (C,) their mean; failures as {"video", "error"}."""
  predictor = load_predictor(model_or_workdir)
  paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
  options = Options(window, stride, rate, face_crop, batch_size, folder_fps)
  items = _prepared([os.fspath(p) for p in paths], predictor, options, progress=progress,
                    strict=strict)
  results = []
  for item, feats in _score_stream(items, predictor.features, batch_size):
    if isinstance(item, Failure):
      results.append({"video": item.path, "error": item.reason})
      continue
    results.append({
        "video": item.path, "fps": round(item.fps, 6), "num_frames": item.num_frames,
        "duration_s": round(item.duration_s, 4), "model": predictor.name,
        "embedding_dim": int(feats.shape[1]), "windows": [dict(w) for w in item.windows],
        "no_face_frames": item.no_face_frames(), "no_face_spans": item.no_face_spans(),
        "preprocessing": item.preprocessing, "warnings": list(item.warnings),
        "embeddings": feats, "embedding": feats.mean(axis=0)})
  return results


# ------------------------------------------------------------------------------------------------
# Output files.
# ------------------------------------------------------------------------------------------------


def _public(result: dict) -> dict:
  return {k: v for k, v in result.items() if not k.startswith("_")}


def write_predictions(results: Sequence[dict], out: str, *, as_list: bool) -> None:
  """JSON (an object, or a list for list inputs) or CSV (one row per window) by extension."""
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  if out.lower().endswith(".csv"):
    ok = [r for r in results if "error" not in r]
    if not ok:
      raise ValueError("no video could be scored; nothing to write")
    labels, key = ok[0]["labels"], ("p" if ok[0]["task"] == "classification" else "v")
    field = "probs" if key == "p" else "values"
    with open(out, "w", newline="") as f:
      w = csv.writer(f)
      w.writerow(["video", "index", "start_s", "end_s", "start_frame", "end_frame", "label",
                  "face_fraction", "mostly_no_face"] + [f"{key}_{n}" for n in labels])
      for r in ok:
        for win in r["windows"]:
          ff = "" if win["face_fraction"] is None else win["face_fraction"]
          w.writerow([r["video"], win["index"], win["start_s"], win["end_s"], win["start_frame"],
                      win["end_frame"], win["label"] or "", ff, int(win["mostly_no_face"])]
                     + [f"{p:.6f}" for p in win[field]])
    return
  payload = [_public(r) for r in results] if as_list else _public(results[0])
  with open(out, "w") as f:
    json.dump(payload, f, indent=1)
    f.write("\n")


def _sidecar_path(out: str) -> str:
  return os.path.splitext(out)[0] + ".json"


def write_embeddings(results: Sequence[dict], out: str) -> list[str]:
  """`.npy` (+ sidecar JSON) or `.parquet`; returns the files written."""
  ok = [r for r in results if "error" not in r]
  if not ok:
    raise ValueError("no video could be embedded; nothing to write")
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  single = len(results) == 1
  if out.lower().endswith(".parquet"):
    try:
      import pyarrow as pa  # pylint: disable=g-import-not-at-top
      import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ValueError("writing .parquet needs pyarrow (pip install pyarrow); or use .npy") from e
    dim = ok[0]["embedding_dim"]
    cols: dict[str, list] = {k: [] for k in ("video", "kind", "index", "start_s", "end_s",
                                              "start_frame", "end_frame", "face_fraction")}
    vectors = []
    for r in ok:
      for win, vec in zip(r["windows"], r["embeddings"]):
        for k in ("index", "start_s", "end_s", "start_frame", "end_frame", "face_fraction"):
          cols[k].append(win[k])
        cols["video"].append(r["video"])
        cols["kind"].append("window")
        vectors.append(vec)
      cols["video"].append(r["video"])
      cols["kind"].append("video")
      cols["index"].append(-1)
      cols["start_s"].append(0.0)
      cols["end_s"].append(r["windows"][-1]["end_s"])
      cols["start_frame"].append(0)
      cols["end_frame"].append(r["windows"][-1]["end_frame"])
      cols["face_fraction"].append(None)
      vectors.append(r["embedding"])
    types = {"video": pa.string(), "kind": pa.string(), "index": pa.int64(),
             "start_s": pa.float64(), "end_s": pa.float64(), "start_frame": pa.int64(),
             "end_frame": pa.int64(), "face_fraction": pa.float64()}
    flat = pa.array(np.stack(vectors).astype(np.float32).reshape(-1))
    table = pa.table({**{k: pa.array(v, type=types[k]) for k, v in cols.items()},
                      "embedding": pa.FixedSizeListArray.from_arrays(flat, dim)})
    pq.write_table(table, out)
    return [out]
  if not out.lower().endswith(".npy"):
    raise ValueError(f"{out}: embeddings are written as .npy or .parquet")
  windows = np.concatenate([r["embeddings"] for r in ok]).astype(np.float32)
  owner = np.concatenate([np.full(len(r["embeddings"]), i, np.int32) for i, r in enumerate(ok)])
  videos = np.stack([r["embedding"] for r in ok]).astype(np.float32)
  np.save(out, {"windows": windows, "video": videos[0] if single else videos,
                "window_video": owner}, allow_pickle=True)
  side = _sidecar_path(out)
  meta = [{k: v for k, v in r.items() if k not in ("embeddings", "embedding")} for r in results]
  with open(side, "w") as f:
    json.dump(meta[0] if single else meta, f, indent=1)
    f.write("\n")
  return [out, side]


# ------------------------------------------------------------------------------------------------
# Rendering.
# ------------------------------------------------------------------------------------------------


def per_frame_scores(result: dict, num_frames: int) -> np.ndarray:
  """(num_frames, K): mean of the windows covering each frame (nearest window where none does)."""
  key = "probs" if result["task"] == "classification" else "values"
  scores = np.array([w[key] for w in result["windows"]], np.float32)
  starts = np.array([w["start_frame"] for w in result["windows"]])
  ends = np.array([w["end_frame"] for w in result["windows"]])
  out = np.empty((num_frames, scores.shape[1]), np.float32)
  for t in range(num_frames):
    cover = (starts <= t) & (ends >= t)
    if cover.any():
      out[t] = scores[cover].mean(axis=0)
    else:
      out[t] = scores[np.argmin(np.minimum(np.abs(starts - t), np.abs(ends - t)))]
  return out


def _text(img, text, org, scale, color, thickness=1):
  cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thickness + 2,
              cv2.LINE_AA)
  cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, color, thickness, cv2.LINE_AA)


def render(result: dict, prepared: PreparedVideo, out: str) -> str:
  """Writes the video with the model's crop square and a per-frame score bar chart."""
  frames = prepared.frames
  if frames is None:
    raise ValueError("render needs the decoded frames (predict(..., keep_frames=True))")
  h, w = frames[0].shape[:2]
  scale = max(1.0, RENDER_MIN_HEIGHT / h)
  fh, fw = int(round(h * scale)) // 2 * 2, int(round(w * scale)) // 2 * 2
  labels = result["labels"]
  per_frame = per_frame_scores(result, len(frames))
  classification = result["task"] == "classification"
  panel_w = 240
  row_h = max(14, min(32, (fh - 40) // max(1, len(labels))))
  font = 0.45 * row_h / 20
  rendered = np.empty((len(frames), fh, fw + panel_w, 3), np.uint8)
  for t, frame in enumerate(frames):
    canvas = rendered[t]
    canvas[:] = 24
    canvas[:, :fw] = cv2.resize(frame, (fw, fh), interpolation=cv2.INTER_LINEAR)
    box = None if prepared.track is None else prepared.track.boxes[t]
    x0, y0, side = crop_square(frame.shape, box, prepared.prep)
    face_seen = prepared.detected is None or bool(prepared.detected[t])
    color = (60, 220, 60) if face_seen else (255, 150, 0)
    p0 = (int(x0 * fw / w), int(y0 * fh / h))
    p1 = (int((x0 + side) * fw / w), int((y0 + side) * fh / h))
    cv2.rectangle(canvas, p0, p1, color, 2)
    if not face_seen:
      _text(canvas, "no face", (p0[0] + 4, p0[1] + 18), 0.5, color)
    _text(canvas, f"{prepared.times[t]:6.2f} s", (8, fh - 10), 0.5, (255, 255, 255))
    scores = per_frame[t]
    best = int(np.argmax(scores)) if classification else -1
    for k, name in enumerate(labels):
      y = 20 + k * row_h
      x = fw + 8
      bar_x, bar_w = x + 90, panel_w - 106
      value = float(scores[k])
      fill = value if classification else (np.clip(value, -1, 1) + 1) / 2
      colour = (255, 210, 60) if k == best else (120, 170, 255)
      cv2.rectangle(canvas, (bar_x, y), (bar_x + bar_w, y + row_h - 6), (70, 70, 70), 1)
      cv2.rectangle(canvas, (bar_x, y), (bar_x + int(bar_w * fill), y + row_h - 6), colour, -1)
      _text(canvas, name[:11], (x, y + row_h - 8), font, (235, 235, 235))
      _text(canvas, f"{value:.2f}", (bar_x + 2, y + row_h - 8), font * 0.9, (255, 255, 255))
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  # The overlay keeps the clip's own timeline (millisecond timestamps) unless frames come faster.
  times = prepared.times if np.all(np.diff(np.round(prepared.times * 1000)) > 0) else None
  video_io.write_video(out, rendered, prepared.fps, times=times)
  return out


# ------------------------------------------------------------------------------------------------
# Command line.
# ------------------------------------------------------------------------------------------------


def is_list_file(path: str) -> bool:
  return os.path.isfile(path) and path.lower().endswith(LIST_EXTENSIONS)


def read_video_list(path: str) -> list[str]:
  """Video paths of a list file (relative paths from its folder; blank and # lines skipped)."""
  base = os.path.dirname(os.path.abspath(path))
  out = []
  with open(path) as f:
    for line in f:
      line = line.strip()
      if not line or line.startswith("#"):
        continue
      candidate = line if os.path.isabs(line) else os.path.join(base, line)
      if not os.path.exists(candidate) and len(line.split()) > 1:
        first = line.split()[0]
        candidate = first if os.path.isabs(first) else os.path.join(base, first)
      out.append(candidate)
  if not out:
    raise video_io.InputError(path, "the video list is empty")
  return out


def _parser(command: str) -> argparse.ArgumentParser:
  what = ("per-window expression probabilities" if command == "predict"
          else "per-window and per-video encoder embeddings")
  parser = argparse.ArgumentParser(
      prog=f"svfap {command}",
      description=f"Face crop + sliding windows -> {what}. See svfap_jax/predict.py for the "
      "output schema.")
  src = parser.add_mutually_exclusive_group(required=True)
  src.add_argument("--workdir", help="fine-tuning run directory (latest checkpoint)")
  src.add_argument("--checkpoint", help="a checkpoint directory (W/best, W/checkpoints, or a "
                   "step directory)")
  parser.add_argument("--video", required=True, help="video file, frame folder, or a .txt list "
                      "of them (one per line)")
  if command == "predict":
    parser.add_argument("--out", help=".json (default: printed) or .csv")
    parser.add_argument("--render", help="write the video with the face box and a score bar "
                        "chart (a directory for a list input)")
  else:
    parser.add_argument("--out", required=True, help=".npy (+ sidecar .json) or .parquet")
  parser.add_argument("--window", type=int, default=None,
                      help="model frames per window (default and only choice: the model's)")
  parser.add_argument("--stride", type=int, default=8, help="source frames between windows")
  parser.add_argument("--rate", type=int, default=None,
                      help="source frames between a window's frames (default: the checkpoint's "
                      "data.sampling_rate)")
  parser.add_argument("--face-crop", choices=("auto", "on", "off"), default="auto",
                      help="auto: as the checkpoint was trained")
  parser.add_argument("--batch", type=int, default=8, help="windows per model call")
  parser.add_argument("--folder-fps", type=float, default=None,
                      help="frame rate of frame folders (default: the checkpoint's spec, 25)")
  parser.add_argument("--quiet", action="store_true", help="no progress bar")
  return parser


def _show_warnings() -> set[str]:
  """Prints Python warnings as plain `warning: ...` lines; returns the set of those printed."""
  shown: set[str] = set()

  def show(message, *unused_args, **unused_kwargs):
    shown.add(str(message))
    print(f"warning: {message}", file=sys.stderr)

  warnings.showwarning = show
  return shown


def _run_cli(argv: Sequence[str], command: str) -> int:
  parser = _parser(command)
  args = parser.parse_args(argv)
  shown = _show_warnings()
  as_list = is_list_file(args.video)
  try:
    paths = read_video_list(args.video) if as_list else [args.video]
  except video_io.InputError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  source = args.workdir or args.checkpoint
  try:
    predictor = load_predictor(source)
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  common = dict(window=args.window, stride=args.stride, rate=args.rate,
                face_crop=args.face_crop, batch_size=args.batch, folder_fps=args.folder_fps,
                strict=False, progress=as_list and not args.quiet)
  try:
    if command == "predict":
      results = predict(predictor, paths, keep_frames=bool(args.render), **common)
    else:
      results = extract(predictor, paths, **common)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  failed = [r for r in results if "error" in r]
  for r in failed:
    print(f"error: {r['error']}", file=sys.stderr)
  for r in results:
    for note in r.get("warnings", []):
      if note not in shown:
        print(f"warning: {r['video']}: {note}", file=sys.stderr)
  if len(failed) == len(results):
    return 1
  if command == "predict":
    if args.render:
      used: set[str] = set()
      for i, r in enumerate(results):
        if "error" in r:
          continue
        target = args.render
        if as_list:
          stem = os.path.splitext(os.path.basename(os.path.normpath(r["video"])))[0]
          name = f"{stem}.mp4" if f"{stem}.mp4" not in used else f"{i:04d}_{stem}.mp4"
          used.add(name)
          target = os.path.join(args.render, name)
        render(r, r["_prepared"], target)
        print(f"rendered {target}", file=sys.stderr)
    if args.out:
      write_predictions(results, args.out, as_list=as_list)
      print(f"wrote {args.out} ({sum(len(r.get('windows', [])) for r in results)} windows, "
            f"{len(results) - len(failed)} of {len(results)} videos)", file=sys.stderr)
    else:
      payload = [_public(r) for r in results] if as_list else _public(results[0])
      print(json.dumps(payload, indent=1))
  else:
    written = write_embeddings(results, args.out)
    print(f"wrote {', '.join(written)}", file=sys.stderr)
  return 1 if failed else 0


def predict_main(argv: Sequence[str]) -> int:
  return _run_cli(argv, "predict")


def extract_main(argv: Sequence[str]) -> int:
  return _run_cli(argv, "extract")
