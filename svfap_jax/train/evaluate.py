"""Multi-view evaluation: every view of every clip through the model, scores averaged per video,
then the task's metrics. Works the same with one or many processes: each host scores its shard of
the clips and the (small) per-view results are gathered before aggregation."""
from __future__ import annotations

import csv
from typing import Optional, Sequence

import etils.epath as epath
import jax
import numpy as np

from data_pipelines import grain_pipeline
from svfap_jax import metrics as metrics_lib
from svfap_jax import sharding
from svfap_jax.train import steps

_ID_BYTES = 256
_STEP_CACHE: dict = {}


def _encode_ids(ids) -> np.ndarray:
  out = np.zeros((len(ids), _ID_BYTES), np.uint8)
  for i, clip_id in enumerate(ids):
    raw = (clip_id.decode() if isinstance(clip_id, bytes) else str(clip_id)).encode()[:_ID_BYTES]
    out[i, :len(raw)] = np.frombuffer(raw, np.uint8)
  return out


def _decode_ids(rows: np.ndarray) -> list[str]:
  return [bytes(r).rstrip(b"\0").decode(errors="replace") for r in rows]


def _gather(x: np.ndarray) -> np.ndarray:
  if jax.process_count() == 1:
    return x
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _local_rows(x: jax.Array) -> np.ndarray:
  """This process's rows of a batch-sharded global array, in local batch order."""
  if x.is_fully_addressable:
    return np.asarray(x)
  shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start or 0)
  seen, rows = set(), []
  for s in shards:
    key = (s.index[0].start, s.index[0].stop)
    if key not in seen:
      seen.add(key)
      rows.append(np.asarray(s.data))
  return np.concatenate(rows)


def _eval_fn(module, task: str, mesh):
  key = (id(module), task, id(mesh))
  if key not in _STEP_CACHE:
    _STEP_CACHE[key] = jax.jit(steps.make_eval_step(module, task=task))
  return _STEP_CACHE[key]


def evaluate(module, params, config, dataset_dir: str, split: str, *, kind: str, mesh,
             task: str, label_names: Optional[Sequence[str]] = None,
             value_names: Optional[Sequence[str]] = None) -> dict:
  """Returns {'metrics': {...}, 'ids', 'scores', 'targets'} (per video, after view averaging)."""
  data = config.data
  batch_size = (data.eval_batch_size or config.batch_size) // jax.process_count()
  options = dict(num_segments=data.num_test_segments, num_crops=data.num_test_crops) \
      if kind == "test" else {}
  options["eval_resize"] = data.eval_resize or None
  pipeline = grain_pipeline.make_pipeline(
      kind, dataset_dir, split, batch_size=batch_size, num_frames=data.num_frames,
      sampling_rate=data.sampling_rate, img_size=data.img_size, seed=config.seed,
      worker_count=data.worker_count, **options)
  eval_fn = _eval_fn(module, task, mesh)
  ids, scores, labels, values, keep = [], [], [], [], []
  for batch in pipeline:
    video = sharding.host_to_global({"video": batch["video"]}, mesh)["video"]
    scores.append(_local_rows(eval_fn(params, {"video": video})).astype(np.float32))
    ids.append(_encode_ids(batch["id"]))
    labels.append(np.asarray(batch["label"]))
    values.append(np.asarray(batch["values"], np.float32))
    keep.append(np.asarray(batch["mask"], bool))
  if not scores:
    raise ValueError(f"split {split!r} of {dataset_dir} produced no batches")
  keep = _gather(np.concatenate(keep))
  ids = _decode_ids(_gather(np.concatenate(ids))[keep])
  scores = _gather(np.concatenate(scores))[keep]
  labels = _gather(np.concatenate(labels))[keep]
  values = _gather(np.concatenate(values))[keep]
  video_ids, video_scores = metrics_lib.aggregate_views(ids, scores)
  first = {vid: i for i, vid in reversed(list(enumerate(ids)))}
  rows = [first[v] for v in video_ids]
  if task == "classification":
    y = labels[rows]
    result = metrics_lib.classification_metrics(y, video_scores, scores.shape[-1],
                                                label_names=label_names)
    targets = y
  else:
    targets = values[rows]
    result = metrics_lib.regression_metrics(targets, video_scores, names=value_names)
  result["num_videos"] = len(video_ids)
  result["num_views"] = len(ids)
  return {"metrics": result, "ids": video_ids, "scores": video_scores, "targets": targets}


def write_outputs(result: dict, workdir: str, *, prefix: str,
                  label_names: Optional[Sequence[str]] = None) -> None:
  """Per-video predictions CSV, metrics JSON-friendly dict, and a confusion-matrix PNG."""
  scores, targets = np.asarray(result["scores"]), np.asarray(result["targets"])
  path = epath.Path(workdir) / f"{prefix}_predictions.csv"  # local or gs://
  classification = targets.ndim == 1
  with path.open("w") as f:
    w = csv.writer(f)
    if classification:
      names = list(label_names or [str(i) for i in range(scores.shape[1])])
      w.writerow(["id", "label", "predicted"] + [f"p_{n}" for n in names])
      for vid, y, s in zip(result["ids"], targets, scores):
        w.writerow([vid, int(y), int(np.argmax(s))] + [f"{p:.6f}" for p in s])
    else:
      k = scores.shape[1]
      w.writerow(["id"] + [f"target_{i}" for i in range(k)] + [f"pred_{i}" for i in range(k)])
      for vid, y, s in zip(result["ids"], targets, scores):
        w.writerow([vid] + [f"{v:.6f}" for v in y] + [f"{v:.6f}" for v in s])
  if classification and "confusion" in result["metrics"]:
    names = list(label_names or [str(i) for i in range(scores.shape[1])])
    with (epath.Path(workdir) / f"{prefix}_confusion.png").open("wb") as f:
      metrics_lib.confusion_matrix_png(result["metrics"]["confusion"], names, f)
