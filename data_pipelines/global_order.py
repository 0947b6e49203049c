"""Training pipelines whose global batches do not depend on the number of processes.

`grain_pipeline.make_pipeline` gives every process its own strided shard of the records with its
own shuffle, so the clips that make up global batch k change with the process count. This module
builds the same training pipeline around one global record stream instead: the stream of a single
process (shard 0 of 1, same seed), cut into global batches, of which each process reads only the
rows its devices hold.

  from data_pipelines import global_order
  ds = global_order.make_pipeline("pretrain", "datasets/vox2", "train", batch_size=32,
                                  shard_index=jax.process_index(), shard_count=jax.process_count())

Consequences:
  * 1 process x 8 devices and 2 processes x 4 devices train on identical global batches (same
    clips, same temporal windows and crops: the per-record random draws are keyed by the record's
    position in the global stream), so their losses agree.
  * Within an epoch processes read disjoint records; with one process the batches equal those of
    `grain_pipeline.make_pipeline(..., shard_index=0, shard_count=1)` exactly.
  * A position in the stream is a record count, valid for any process count: a run resumed with
    another number of processes continues at `start_record` where the old run stopped.

Evaluation kinds are order-free (every clip is scored once); they stay in `grain_pipeline`.

Setting the environment variable SVFAP_DATA_AUDIT to a directory makes every process append the
record numbers of each batch it consumes to `<dir>/process_<i>.jsonl` (one JSON list per line).
"""
from __future__ import annotations

import json
import os
from typing import Optional, Sequence

import grain
import numpy as np

from data_pipelines import grain_pipeline, records

AUDIT_ENV = "SVFAP_DATA_AUDIT"

# grain_pipeline's building blocks: both pipelines must read, decode and crop identically.
# pylint: disable=protected-access
_ClipReader = grain_pipeline._ClipReader
_SplitViews = grain_pipeline._SplitViews
_SkipCorruptIterDataset = grain_pipeline._SkipCorruptIterDataset
_OPTION_NAMES = grain_pipeline._OPTION_NAMES
_init_worker = grain_pipeline._init_worker
_ensure_flags_parsed = grain_pipeline._ensure_flags_parsed
_process_seed = grain_pipeline._process_seed
_resolve_shard = grain_pipeline._resolve_shard
# pylint: enable=protected-access


class _GlobalRows(grain.MapDataset):
  """Picks one process's records out of a global record stream.

  The parent is the global stream, cut into global batches of `per_batch` records; element k of
  this dataset is parent record `start + (k // len(slots)) * per_batch + slots[k % len(slots)]`.
  """

  def __init__(self, parent: grain.MapDataset, per_batch: int, slots: Sequence[int], start: int):
    super().__init__(parent)
    self._per_batch = int(per_batch)
    self._slots = tuple(int(s) for s in slots)
    self._start = int(start)
    batches = max(len(parent) - self._start, 0) // self._per_batch
    self._length = batches * len(self._slots)

  def __len__(self) -> int:
    return self._length

  def _parent_index(self, index: int) -> int:
    batch, slot = divmod(index, len(self._slots))
    return self._start + batch * self._per_batch + self._slots[slot]

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    return self._parent[self._parent_index(index)]

  def _getitems(self, indices: Sequence[int]):
    parent_indices = [self._parent_index(i) for i in indices]
    return self._parent._getitems(parent_indices)  # pylint: disable=protected-access

  def __str__(self) -> str:
    return (f"GlobalRows(per_batch={self._per_batch}, slots={len(self._slots)}, "
            f"start={self._start})")


class _Audit:
  """Appends each consumed batch's record numbers to a per-process JSON-lines file."""

  def __init__(self, directory: str, shard_index: int):
    self.path = os.path.join(directory, f"process_{shard_index}.jsonl")
    os.makedirs(directory, exist_ok=True)

  def __call__(self, batch: dict) -> dict:
    with open(self.path, "a") as f:
      f.write(json.dumps([int(i) for i in np.asarray(batch["index"])]) + "\n")
    return batch


def contiguous_rows(shard_index: int, batch_size: int) -> list[int]:
  """Rows of the global batch held by process `shard_index` when processes own equal blocks."""
  return list(range(shard_index * batch_size, (shard_index + 1) * batch_size))


def process_rows(batch_sharding, global_batch_size: int) -> list[int]:
  """Rows of a (global_batch_size, ...) array laid out by `batch_sharding` that live on devices
  of this process: the rows this process must feed to `jax.make_array_from_process_local_data`,
  in the order it expects them."""
  rows = set()
  for index in batch_sharding.addressable_devices_indices_map((global_batch_size,)).values():
    rows.update(range(*index[0].indices(global_batch_size)))
  return sorted(rows)


def record_slots(rows: Sequence[int], batch_size: int, views: int) -> list[int]:
  """Positions, within a global batch of records, of the records behind this process's rows.

  Each record becomes `views` consecutive rows, so a process must hold whole groups of them.

  Raises:
    ValueError: the rows do not number `batch_size` or split a record's views across processes.
  """
  rows = sorted(int(r) for r in rows)
  if len(rows) != batch_size or len(set(rows)) != batch_size:
    raise ValueError(f"{len(rows)} distinct rows given for a per-process batch of {batch_size}")
  if batch_size % views:
    raise ValueError(f"per-process batch {batch_size} is not a multiple of data.num_views="
                     f"{views}: a clip's views would be split between processes")
  slots = sorted({r // views for r in rows})
  if len(slots) * views != batch_size:
    raise ValueError(f"rows {rows} split the {views} views of some clips between processes")
  return slots


def make_pipeline(kind: str, dataset_dir: str, split: str, *, batch_size: int,
                  num_frames: int = 16, sampling_rate: int = 4, img_size: int = 160,
                  seed: int = 0, shard_index: Optional[int] = None,
                  shard_count: Optional[int] = None, worker_count: int = 0,
                  num_epochs: Optional[int] = None, rows: Optional[Sequence[int]] = None,
                  start_record: int = 0, **options) -> grain_pipeline.ClipPipeline:
  """A training pipeline ("pretrain" or "finetune") over the process-count-invariant stream.

  Args:
    kind: "pretrain" or "finetune".
    dataset_dir: prepared dataset directory (a local path or a mounted bucket).
    split: split name.
    batch_size: rows per batch of this process; the global batch is batch_size * shard_count.
    num_frames, sampling_rate, img_size, seed, worker_count, num_epochs: as in
      `grain_pipeline.make_pipeline`.
    shard_index: this process's index; default `jax.process_index()`.
    shard_count: number of processes; default `jax.process_count()`.
    rows: the rows of the global batch that this process's devices hold (`process_rows`);
      default the contiguous block `contiguous_rows(shard_index, batch_size)`.
    start_record: position in the global record stream to start from (a multiple of the global
      batch's record count; records, not rows, when pretraining with num_views > 1).
    **options: further `grain_pipeline.PipelineConfig` fields.

  Returns:
    A `grain_pipeline.ClipPipeline` yielding this process's rows of each global batch.
  """
  if kind not in grain_pipeline.TRAIN_KINDS:
    raise ValueError(f"kind={kind!r}: the global stream is for training kinds "
                     f"{grain_pipeline.TRAIN_KINDS}; use grain_pipeline.make_pipeline")
  unknown = set(options) - _OPTION_NAMES
  if unknown:
    raise TypeError(f"unknown pipeline option(s) {sorted(unknown)}")
  shard_index, shard_count = _resolve_shard(shard_index, shard_count)
  config = grain_pipeline.PipelineConfig(
      kind=kind, batch_size=batch_size, num_frames=num_frames, sampling_rate=sampling_rate,
      img_size=img_size, seed=seed, shard_index=shard_index, shard_count=shard_count,
      worker_count=worker_count, num_epochs=num_epochs, **options).validate()
  views = config.views_per_clip
  if start_record < 0:
    raise ValueError(f"start_record={start_record} must be >= 0")
  select = shard_count > 1 or start_record > 0
  if select:
    rows = contiguous_rows(shard_index, batch_size) if rows is None else rows
    slots = record_slots(rows, batch_size, views)
    per_batch = batch_size * shard_count // views
  if worker_count:
    _ensure_flags_parsed()
  metadata = grain_pipeline.load_metadata(dataset_dir)
  source = records.ClipDataSource(dataset_dir, split)
  if kind == "pretrain":
    crop_size, resize = img_size, config.pretrain_resize
  else:
    resize = config.train_resize
    crop_size = config.train_crop_size or resize or metadata.short_side or img_size
  reader = _ClipReader(source, config, metadata.num_values, crop_size, resize)

  # The single-process stream: exactly what grain_pipeline builds for shard 0 of 1.
  n = len(source)
  ds = grain.MapDataset.range(n).seed(_process_seed(seed, 0))
  if config.shuffle:
    ds = ds.shuffle()
  ds = ds.repeat(num_epochs).random_map(reader.train_views)
  if select:
    ds = _GlobalRows(ds, per_batch, slots, start_record)
  read_options = grain.ReadOptions(
      num_threads=config.read_threads,
      prefetch_buffer_size=config.read_buffer_size or 2 * batch_size)
  mp_options = grain.MultiprocessingOptions(num_workers=worker_count,
                                            per_worker_buffer_size=max(config.prefetch_batches, 1))
  it = ds.to_iter_dataset(read_options)
  it = grain.experimental.FlatMapIterDataset(it, _SplitViews(views))
  it = _SkipCorruptIterDataset(it)
  it = it.batch(batch_size, drop_remainder=True)
  it = it.mp_prefetch(mp_options, worker_init_fn=_init_worker)
  if worker_count == 0 and config.prefetch_batches:
    it = grain.experimental.ThreadPrefetchIterDataset(
        it, prefetch_buffer_size=config.prefetch_batches)
  audit = os.environ.get(AUDIT_ENV)
  if audit:
    it = it.map(_Audit(audit, shard_index))
  num_records = len(slots) * (n * views // (batch_size * shard_count)) if select else n
  return grain_pipeline.ClipPipeline(it, config, metadata, num_records, None)
