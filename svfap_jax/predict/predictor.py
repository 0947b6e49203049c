"""Predictors (a model with its labels and preprocessing spec) and running videos through them.

`predict` gives the per-video result dicts documented in `svfap_jax.predict`, `extract` the
embeddings; both score the windows of consecutive videos in shared fixed-size batches.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import warnings
import weakref
from typing import Iterable, Iterator, Optional, Sequence, Union

import numpy as np

from data_pipelines import video_io
from svfap_jax import api, checkpoint
from svfap_jax.models.registry import get_spec
from svfap_jax.predict.frontend import (Failure, PreparedVideo, Preprocessing,
                                        apply_face_crop_choice, prepare_video,
                                        preprocessing_from_spec)
from svfap_jax.predict.windows import rounded, timeline


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




def predictor_from_checkpoint(path: str) -> Predictor:
  """Loads a fine-tuning (or pretraining: embeddings only) workdir / checkpoint directory.

  Raises:
    FileNotFoundError: no checkpoint under `path`.
    ValueError: the checkpoint's meta carries no run config or model name.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  # The EMA copy when the run kept one, as evaluation scores.
  params, meta = checkpoint.restore_params(path, prefer_ema=True)
  if not meta.get("config") or not meta.get("model"):
    raise ValueError(f"{path}: the checkpoint carries no run config/model name in its meta")
  config = ml_collections.ConfigDict(meta["config"])
  spec = get_spec(meta["model"])
  pretrain = meta.get("mode") == "pretrain" or "decoder" in params
  task = meta.get("task") or config.get("task", "classification")
  if pretrain:
    # The encoder of an MAE run, read through the fine-tuning model without a head (a fresh
    # fc_norm is the identity), the way fine-tuning initialises from it.
    module = api.module_from_config(config, spec, 0, pretrain=False)
    template, _ = api.init_params(module, spec, jax.random.key(0), False)
    params, _ = checkpoint.load_initial_params(path, jax.device_get(template), pretrain=False)
    labels: list = []
  else:
    num_outputs = int(meta.get("num_outputs") or 0)
    module = api.module_from_config(config, spec, num_outputs, pretrain=False)
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


def _result(predictor: Predictor, video: PreparedVideo, scores: np.ndarray) -> dict:
  key = "probs" if predictor.task == "classification" else "values"
  windows = []
  for w, s in zip(video.windows, scores):
    row = {k: w[k] for k in ("index", "start_s", "end_s", "start_frame", "end_frame")}
    row[key] = rounded(s)
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
      "timeline": timeline(windows, scores, duration, predictor.labels, predictor.task),
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


