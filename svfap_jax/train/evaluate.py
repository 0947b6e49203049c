"""Multi-view evaluation: every view of every clip through the model, scores averaged per video,
then the task's metrics. Works the same with one or many processes: each host scores its shard of
the clips and the (small) per-view results are gathered before aggregation."""
from __future__ import annotations

import csv
import functools
import io
import logging
from typing import Optional, Sequence

import etils.epath as epath
import jax
import numpy as np

from data_pipelines import grain_pipeline
from svfap_jax import metrics as metrics_lib
from svfap_jax import sharding
from svfap_jax.train import steps

_ROUNDED: set = set()


def _gather(x: np.ndarray) -> np.ndarray:
  if jax.process_count() == 1:
    return x
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))



def _gather_strings(values: Sequence[str]) -> list[str]:
  """Every process's strings, in process order; any length and script.

  The collective needs one array shape on every process: the UTF-8 bytes travel in a table as
  wide as the longest string of all processes, with each string's byte length beside it.
  """
  values = list(values)
  if jax.process_count() == 1:
    return values
  raw = [v.encode("utf-8") for v in values]
  lengths = np.array([len(r) for r in raw], np.int64)
  width = int(_gather(np.array([lengths.max(initial=0)], np.int64)).max())
  table = np.zeros((len(raw), max(width, 1)), np.uint8)
  for i, r in enumerate(raw):
    table[i, :len(r)] = np.frombuffer(r, np.uint8)
  table, lengths = _gather(table), _gather(lengths)
  return [bytes(row[:n]).decode("utf-8") for row, n in zip(table, lengths)]


def _as_str(clip_id) -> str:
  return clip_id.decode("utf-8") if isinstance(clip_id, bytes) else str(clip_id)


@functools.lru_cache(maxsize=16)
def _eval_fn(module, task: str, mesh):
  """The jitted evaluation step of `module`, compiled once per (module, task, mesh) value.

  Flax modules and meshes hash and compare by their fields, so an equal module rebuilt later (a
  new Trainer, `evaluate` after training) reuses the compiled step, and a different module never
  gets another's step, as it could with object ids, which are reused after garbage collection.
  The bound keeps the cached modules and meshes from piling up over long sessions.
  """
  return jax.jit(steps.make_eval_step(module, task=task))


def batch_rows(config, mesh) -> int:
  """Rows of each process's evaluation batches.

  `data.eval_batch_size` (0: `batch_size`) is global. It is shared over the processes and
  rounded up to a whole number of rows per batch shard (data x fsdp devices) of the process,
  so any size runs on any mesh: the pipeline fills a short last batch with masked-out rows and
  every clip is scored.
  """
  requested = int(config.data.eval_batch_size or config.batch_size)
  processes = jax.process_count()
  per_process = -(-requested // processes)
  shards = max(1, sharding.batch_shards(mesh) // processes)
  rows = -(-per_process // shards) * shards
  if rows * processes != requested and (requested, rows) not in _ROUNDED:
    _ROUNDED.add((requested, rows))  # once per run, not at every evaluation
    logging.warning("data.eval_batch_size=%d does not split over %d batch shard(s) (%d "
                    "process(es)); evaluating in global batches of %d (a short batch is padded)",
                    requested, sharding.batch_shards(mesh), processes, rows * processes)
  return rows


def evaluate(module, params, config, dataset_dir: str, split: str, *, kind: str, mesh,
             task: str, label_names: Optional[Sequence[str]] = None,
             value_names: Optional[Sequence[str]] = None) -> dict:
  """Scores every view of every clip of `split` and averages them per clip.

  Clips are told apart by their record, not by their id, so two clips with the same id stay
  two; ids of any length and script are kept whole. Clips without a target (classification
  label -1, regression values all NaN) are scored and listed but left out of the metrics, and
  counted as `num_unlabelled`; a split without any target gives the counts only.

  Returns:
    {'metrics': dict (the task's metrics of `svfap_jax.metrics`, plus `num_videos` (clips
    scored), `num_views`, `num_unlabelled` and, when records could not be read, `num_corrupt`),
    'ids': list[str] per clip in record order, 'scores': float (N, K) view-averaged
    probabilities or values, 'targets': int (N,) labels or float (N, K) values (NaN missing)}.

  Raises:
    ValueError: the split produced no batches.
  """
  data = config.data
  options = dict(num_segments=data.num_test_segments, num_crops=data.num_test_crops) \
      if kind == "test" else {}
  options["eval_resize"] = data.eval_resize or None
  pipeline = grain_pipeline.make_pipeline(
      kind, dataset_dir, split, batch_size=batch_rows(config, mesh), num_frames=data.num_frames,
      sampling_rate=data.sampling_rate, img_size=data.img_size, seed=config.seed,
      worker_count=data.worker_count, **options)
  eval_fn = _eval_fn(module, task, mesh)
  ids, records, scores, labels, values, keep = [], [], [], [], [], []
  batches = iter(pipeline)
  for batch in batches:
    video = sharding.host_to_global({"video": batch["video"]}, mesh)["video"]
    scores.append(sharding.local_rows(eval_fn(params, {"video": video})).astype(np.float32))
    ids.extend(_as_str(i) for i in batch["id"])
    records.append(np.asarray(batch["index"], np.int64))
    labels.append(np.asarray(batch["label"]))
    values.append(np.asarray(batch["values"], np.float32))
    keep.append(np.asarray(batch["mask"], bool))
  if not scores:
    raise ValueError(f"split {split!r} of {dataset_dir} produced no batches")
  keep = _gather(np.concatenate(keep))
  ids = [i for i, k in zip(_gather_strings(ids), keep) if k]
  records = _gather(np.concatenate(records))[keep]
  scores = _gather(np.concatenate(scores))[keep]
  labels = _gather(np.concatenate(labels))[keep]
  values = _gather(np.concatenate(values))[keep]
  num_corrupt = int(_gather(np.array([batches.corrupt_records], np.int64)).sum())
  clips, clip_scores = metrics_lib.aggregate_views(records.tolist(), scores)
  order = np.argsort(clips, kind="stable")  # record order, whatever the process count
  clips, clip_scores = [clips[i] for i in order], clip_scores[order]
  first = {r: i for i, r in reversed(list(enumerate(records.tolist())))}
  rows = [first[c] for c in clips]
  video_ids = [ids[r] for r in rows]
  if task == "classification":
    targets = labels[rows]
    labelled = targets >= 0
  else:
    targets = values[rows]
    labelled = ~np.isnan(targets).all(axis=-1) if targets.size else np.zeros(len(rows), bool)
  if not labelled.any():
    logging.warning("split %r of %s has no labelled clips: %d clips scored, no metrics",
                    split, dataset_dir, len(rows))
    result = {}
  elif task == "classification":
    result = metrics_lib.classification_metrics(targets[labelled], clip_scores[labelled],
                                                scores.shape[-1], label_names=label_names)
  else:
    result = metrics_lib.regression_metrics(targets[labelled], clip_scores[labelled],
                                            names=value_names)
  result["num_videos"] = len(video_ids)
  result["num_views"] = len(ids)
  result["num_unlabelled"] = int((~labelled).sum())
  if num_corrupt:
    result["num_corrupt"] = num_corrupt
  return {"metrics": result, "ids": video_ids, "scores": clip_scores, "targets": targets}


def write_outputs(result: dict, workdir: str, *, prefix: str,
                  label_names: Optional[Sequence[str]] = None) -> None:
  """`{prefix}_predictions.csv` (UTF-8; one row per clip: id, target(s), prediction, scores;
  unlabelled clips carry label -1 / empty targets) and, for classification with metrics,
  `{prefix}_confusion.png`, under `workdir` (local or gs://)."""
  scores, targets = np.asarray(result["scores"]), np.asarray(result["targets"])
  classification = targets.ndim == 1
  text = io.StringIO(newline="")
  w = csv.writer(text)
  if classification:
    names = list(label_names or [str(i) for i in range(scores.shape[1])])
    w.writerow(["id", "label", "predicted"] + [f"p_{n}" for n in names])
    for vid, y, s in zip(result["ids"], targets, scores):
      w.writerow([vid, int(y), int(np.argmax(s))] + [f"{p:.6f}" for p in s])
  else:
    k = scores.shape[1]
    w.writerow(["id"] + [f"target_{i}" for i in range(k)] + [f"pred_{i}" for i in range(k)])
    for vid, y, s in zip(result["ids"], targets, scores):
      w.writerow([vid] + ["" if np.isnan(v) else f"{v:.6f}" for v in y]
                 + [f"{v:.6f}" for v in s])
  # Bytes, so the ids are UTF-8 whatever the locale's default encoding.
  (epath.Path(workdir) / f"{prefix}_predictions.csv").write_bytes(text.getvalue().encode("utf-8"))
  if classification and "confusion" in result["metrics"]:
    names = list(label_names or [str(i) for i in range(scores.shape[1])])
    with (epath.Path(workdir) / f"{prefix}_confusion.png").open("wb") as f:
      metrics_lib.confusion_matrix_png(result["metrics"]["confusion"], names, f)
