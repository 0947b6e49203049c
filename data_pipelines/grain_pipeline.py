"""grain input pipelines over prepared face-clip datasets.

  from data_pipelines import grain_pipeline
  ds = grain_pipeline.make_pipeline("finetune", "datasets/dfew_fold1", "train", batch_size=32,
                                    worker_count=8)
  it = iter(ds)
  batch = next(it)          # {"video": uint8 (32, 16, S, S, 3), "label": int32, "values": float32}
  state = it.get_state()    # JSON-able; hand `it` to orbax (grain.checkpoint.CheckpointSave)
  it.corrupt_records        # corrupt records skipped so far by this process

Kinds and the batches they yield (B = batch_size, T = num_frames, K = number of regression values,
0 when the dataset has none):

  pretrain   video uint8 (B, T, img_size, img_size, 3), label int32 (B,), values float32 (B, K),
             index int64 (B,) record number in the split
  finetune   video uint8 (B, T, S, S, 3) with S = train_crop_size (host crop; the random resized
             crop to img_size, flips, RandAugment, erasing and mixup run on device, see
             `augment.finetune_train_augment`), label, values, index
  eval       one centre view per clip: video uint8 (B, T, img_size, img_size, 3), label, values,
             index (-1 for padding), id (B,) str ("" for padding), view int32 (B,),
             mask bool (B,) True for real examples
  test       like eval with num_segments x num_crops views per clip

Training kinds repeat (num_epochs=None) with a new shuffle every epoch and drop the last partial
batch. They read one global record stream whatever the process count: the stream one process
would read alone (same seed), cut into global batches of `batch_size * shard_count` rows, of which
each process reads only the rows its devices hold (`rows`, see `process_rows`). So

  * 1 process x 8 devices and 2 processes x 4 devices train on identical global batches (same
    clips, same temporal windows and crops: the per-record random draws are keyed by the record's
    position in the global stream), and within an epoch processes read disjoint records;
  * a position in the stream is a record count, valid for any process count: a run resumed with
    another number of processes continues at `start_record` where the old run stopped.

Evaluation kinds are order-free (every clip is scored once): every process scores its strided
shard of the clips, padded so that every process yields exactly `ds.num_batches` batches, whatever
its shard holds, and multi-host evaluation steps stay in lockstep.

Only the sampled frames of a clip are decoded. Decoding runs in `worker_count` grain worker
processes (0: in this process). Records that fail their checksum or do not decode are never
returned: training kinds skip them, evaluation kinds emit them as masked-out rows; both count them
in `iterator.corrupt_records` and log the running total.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, Optional, Sequence

import grain
import numpy as np

from data_pipelines import records
from data_pipelines import video_io

log = logging.getLogger(__name__)

KINDS = ("pretrain", "finetune", "eval", "test")
# Training gives up when this many records in a row fail to read.
MAX_CONSECUTIVE_CORRUPT = 100
TRAIN_KINDS = ("pretrain", "finetune")

# Scales of the short side tried by the multi-scale crop, as in VideoMAE's GroupMultiScaleCrop.
MULTISCALE_SCALES = (1.0, 0.875, 0.75, 0.66)
# Crop offsets on a 4 x 4 grid of steps (row, column): corners, centre, edge midpoints and the
# four inner quarter points.
_MULTISCALE_OFFSETS = ((0, 0), (0, 4), (4, 0), (4, 4), (2, 2), (0, 2), (4, 2), (2, 0), (2, 4),
                       (1, 1), (1, 3), (3, 1), (3, 3))


# ------------------------------------------------------------------------------------------------
# Dataset metadata.
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DatasetMetadata:
  """What `dataset_info.json` says about a prepared dataset."""
  name: Optional[str]
  label_names: tuple[str, ...]
  num_classes: int
  value_names: tuple[str, ...]
  preprocessing: dict
  split_sizes: dict

  @property
  def num_values(self) -> int:
    return len(self.value_names)

  @property
  def short_side(self) -> Optional[int]:
    """Short side of the stored frames (None when the builder did not record it)."""
    value = self.preprocessing.get("short_side")
    return int(value) if value else None


def load_metadata(dataset_dir: str) -> DatasetMetadata:
  """Label names, class count, value names and preprocessing spec of a prepared dataset."""
  info = records.load_info(dataset_dir)
  label_names = tuple(info.get("label_names") or ())
  return DatasetMetadata(
      name=info.get("name"),
      label_names=label_names,
      num_classes=int(info.get("num_classes") or len(label_names)),
      value_names=tuple(info.get("value_names") or ()),
      preprocessing=dict(info.get("preprocessing") or {}),
      split_sizes={k: v.get("num_clips") for k, v in (info.get("splits") or {}).items()},
  )


# ------------------------------------------------------------------------------------------------
# Temporal sampling.
# ------------------------------------------------------------------------------------------------


def window_indices(num_frames: int, clip_len: int, rate: int, start: int) -> np.ndarray:
  """Frame numbers start, start + rate, ...; past the clip's end the last frame repeats."""
  return np.minimum(start + rate * np.arange(clip_len), num_frames - 1).astype(np.int64)


def random_window(num_frames: int, clip_len: int, rate: int,
                  rng: np.random.Generator) -> np.ndarray:
  """A window of clip_len * rate frames at a uniformly random start (temporal jitter).

  Clips shorter than the window start at 0 and repeat their last frame, as the original SVFAP
  loader pads short clips.
  """
  slack = num_frames - clip_len * rate
  start = int(rng.integers(0, slack + 1)) if slack > 0 else 0
  return window_indices(num_frames, clip_len, rate, start)


def segment_windows(num_frames: int, clip_len: int, rate: int,
                    num_segments: int) -> list[np.ndarray]:
  """`num_segments` uniformly spaced windows from the first to the last possible start.

  One segment is the centre window.
  """
  slack = max(num_frames - clip_len * rate, 0)
  if num_segments == 1:
    starts = [slack // 2]
  else:
    starts = [int(round(s)) for s in np.linspace(0, slack, num_segments)]
  return [window_indices(num_frames, clip_len, rate, s) for s in starts]


# ------------------------------------------------------------------------------------------------
# Spatial crops (host side, numpy/OpenCV on whole (T, H, W, 3) uint8 clips; resizing is
# `video_io.resize` / `resize_short_side`, the same as `prepare` stores frames with).
# ------------------------------------------------------------------------------------------------


def _at_least(frames: np.ndarray, size: int) -> np.ndarray:
  """Enlarges frames whose short side is below `size` (rare odd clips) so a crop fits."""
  return video_io.resize_short_side(frames, size) if min(frames.shape[1:3]) < size else frames


def centre_crop(frames: np.ndarray, size: int) -> np.ndarray:
  frames = _at_least(frames, size)
  h, w = frames.shape[1:3]
  top, left = (h - size) // 2, (w - size) // 2
  return frames[:, top:top + size, left:left + size]


def random_crop(frames: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
  frames = _at_least(frames, size)
  h, w = frames.shape[1:3]
  top = int(rng.integers(0, h - size + 1))
  left = int(rng.integers(0, w - size + 1))
  return frames[:, top:top + size, left:left + size]


def upper_centre_crop(frames: np.ndarray, size: int) -> np.ndarray:
  """The fixed VoxCeleb2 pretraining crop: the top `size` rows, horizontally centred.

  VoxCeleb2 frames put the face in the upper centre, so this keeps the face and drops the chest.
  """
  frames = _at_least(frames, size)
  left = (frames.shape[2] - size) // 2
  return frames[:, :size, left:left + size]


def multiscale_crop_box(height: int, width: int, out_size: int, rng: np.random.Generator,
                        scales: Sequence[float] = MULTISCALE_SCALES,
                        max_distort: int = 1) -> tuple[int, int, int, int]:
  """(top, left, crop_height, crop_width) of a multi-scale corner/centre crop.

  Crop sides are scales of the short side, the two sides at most `max_distort` scale steps apart;
  offsets are picked from 13 fixed grid positions.
  """
  base = min(height, width)
  # A side within 3 pixels of the output is snapped to it so those crops need no resampling.
  sides = [out_size if abs(int(base * s) - out_size) < 3 else int(base * s) for s in scales]
  pairs = [(sh, sw) for i, sh in enumerate(sides) for j, sw in enumerate(sides)
           if abs(i - j) <= max_distort]
  ch, cw = pairs[int(rng.integers(len(pairs)))]
  ch, cw = min(ch, height), min(cw, width)
  row, col = _MULTISCALE_OFFSETS[int(rng.integers(len(_MULTISCALE_OFFSETS)))]
  return row * ((height - ch) // 4), col * ((width - cw) // 4), ch, cw


def multiscale_crop(frames: np.ndarray, out_size: int, rng: np.random.Generator,
                    scales: Sequence[float] = MULTISCALE_SCALES) -> np.ndarray:
  """Multi-scale crop resized to (out_size, out_size); the same box for every frame."""
  top, left, ch, cw = multiscale_crop_box(frames.shape[1], frames.shape[2], out_size, rng, scales)
  return video_io.resize(frames[:, top:top + ch, left:left + cw], out_size, out_size)


def long_side_crops(frames: np.ndarray, size: int, num_crops: int) -> list[np.ndarray]:
  """`num_crops` square crops spread evenly along the long side (1: the centre crop)."""
  if num_crops == 1:
    return [centre_crop(frames, size)]
  frames = _at_least(frames, size)
  h, w = frames.shape[1:3]
  out = []
  for k in range(num_crops):
    if h > w:
      top, left = (h - size) * k // (num_crops - 1), (w - size) // 2
    else:
      top, left = (h - size) // 2, (w - size) * k // (num_crops - 1)
    out.append(frames[:, top:top + size, left:left + size])
  return out


# ------------------------------------------------------------------------------------------------
# Configuration.
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  """Everything `make_pipeline` needs; the extra options are documented there."""
  kind: str
  batch_size: int
  num_frames: int = 16
  sampling_rate: int = 4
  img_size: int = 160
  seed: int = 0
  shard_index: int = 0
  shard_count: int = 1
  worker_count: int = 0
  num_epochs: Optional[int] = None
  shuffle: bool = True
  # pretrain
  pretrain_crop: str = "fixed"
  pretrain_resize: Optional[int] = None
  num_views: int = 1
  resample_views: bool = True
  # finetune
  train_resize: Optional[int] = None
  train_crop_size: Optional[int] = None
  train_crop: str = "random"
  # eval / test
  eval_resize: Optional[int] = None
  num_segments: int = 2
  num_crops: int = 1
  # plumbing
  read_threads: int = 1
  read_buffer_size: Optional[int] = None
  prefetch_batches: int = 2

  def validate(self) -> "PipelineConfig":
    errors = []
    if self.kind not in KINDS:
      errors.append(f"kind={self.kind!r} is not one of {KINDS}")
    for name in ("batch_size", "num_frames", "sampling_rate", "img_size", "shard_count",
                 "num_views", "num_segments", "num_crops"):
      if getattr(self, name) < 1:
        errors.append(f"{name}={getattr(self, name)} must be >= 1")
    if not 0 <= self.shard_index < max(self.shard_count, 1):
      errors.append(f"shard_index={self.shard_index} must be in [0, {self.shard_count})")
    if self.worker_count < 0 or self.read_threads < 0 or self.prefetch_batches < 0:
      errors.append("worker_count, read_threads and prefetch_batches must be >= 0")
    if self.num_epochs is not None and self.num_epochs < 1:
      errors.append(f"num_epochs={self.num_epochs} must be >= 1 or None")
    if self.pretrain_crop not in ("fixed", "multiscale"):
      errors.append(f"pretrain_crop={self.pretrain_crop!r} must be 'fixed' or 'multiscale'")
    if self.train_crop not in ("random", "centre", "center"):
      errors.append(f"train_crop={self.train_crop!r} must be 'random' or 'centre'")
    if self.kind == "eval" and (self.num_segments, self.num_crops) != (1, 1):
      errors.append("kind='eval' is one centre view; use kind='test' for several views")
    if errors:
      raise ValueError("invalid pipeline options: " + "; ".join(errors))
    return self

  @property
  def views_per_clip(self) -> int:
    if self.kind == "pretrain":
      return self.num_views
    if self.kind == "finetune":
      return 1
    return self.num_segments * self.num_crops


_OPTION_NAMES = frozenset(f.name for f in dataclasses.fields(PipelineConfig)) - {
    "kind", "batch_size", "num_frames", "sampling_rate", "img_size", "seed", "shard_index",
    "shard_count", "worker_count", "num_epochs"}


# ------------------------------------------------------------------------------------------------
# Reading one record into views.
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Corrupt:
  """Stands in for a record that could not be read, so the failure can be counted downstream."""
  index: int
  reason: str


class _ClipReader:
  """Reads one record, decodes only the sampled frames and crops them into views.

  Picklable (the data source reopens its files), so it runs unchanged in grain workers.
  """

  def __init__(self, source: records.ClipDataSource, config: PipelineConfig, num_values: int,
               crop_size: int, resize: Optional[int]):
    self.source = source
    self.config = config
    self.num_values = num_values
    self.crop_size = crop_size
    self.resize = resize

  def _values(self, clip: dict) -> np.ndarray:
    values = np.asarray(clip["values"], np.float32)
    if values.size == self.num_values:
      return values
    if values.size == 0:  # a clip without regression labels in a dataset that has them
      return np.full(self.num_values, np.nan, np.float32)
    raise ValueError(f"clip {clip['id']!r} has {values.size} values, the dataset {self.num_values}")

  def _read(self, index: int) -> dict:
    return self.source[index]

  def _decode(self, clip: dict, windows: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Decodes the union of the windows' frames once and splits it back per window."""
    frames = records.decode_frames(clip["frames"], np.concatenate(windows))
    return np.split(frames, np.cumsum([len(w) for w in windows])[:-1])

  def _example(self, clip: dict, video: np.ndarray, index: int) -> dict:
    # Crops stay views: batching copies them once, into the batch.
    return {"video": video, "label": np.int32(clip["label"]),
            "values": self._values(clip), "index": np.int64(index)}

  # -- training kinds (random) ------------------------------------------------------------------

  def train_views(self, index: int, rng: np.random.Generator) -> Any:
    """List of view dicts of record `index`, or `Corrupt`."""
    cfg = self.config
    try:
      clip = self._read(index)
      n = clip["num_frames"]
      fresh = cfg.kind == "pretrain" and cfg.resample_views
      count = cfg.num_views if fresh else 1
      windows = [random_window(n, cfg.num_frames, cfg.sampling_rate, rng) for _ in range(count)]
      videos = [self._crop_train(v, rng) for v in self._decode(clip, windows)]
      if cfg.kind == "pretrain" and not fresh:
        # The same decoded clip several times; the device draws a different mask for each.
        videos = videos * cfg.num_views
      return [self._example(clip, v, index) for v in videos]
    except (records.CorruptRecordError, ValueError) as e:
      return Corrupt(int(index), str(e))

  def _crop_train(self, frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    cfg = self.config
    if self.resize:
      frames = video_io.resize_short_side(frames, self.resize)
    if cfg.kind == "pretrain":
      if cfg.pretrain_crop == "multiscale":
        return multiscale_crop(frames, cfg.img_size, rng)
      return upper_centre_crop(frames, cfg.img_size)
    if cfg.train_crop == "random":
      return random_crop(frames, self.crop_size, rng)
    return centre_crop(frames, self.crop_size)

  # -- evaluation kinds (deterministic) ---------------------------------------------------------

  def blank_view(self, view: int, corrupt: int = 0) -> dict:
    """A masked-out row: padding past the shard's end, or a corrupt record."""
    cfg = self.config
    return {"video": np.zeros((cfg.num_frames, cfg.img_size, cfg.img_size, 3), np.uint8),
            "label": np.int32(-1), "values": np.zeros(self.num_values, np.float32),
            "id": "", "index": np.int64(-1), "view": np.int32(view), "mask": np.bool_(False),
            "corrupt": np.int32(corrupt)}

  def eval_views(self, index: int) -> list[dict]:
    cfg = self.config
    views = cfg.views_per_clip
    if index >= len(self.source):  # padding that evens out the shards
      return [self.blank_view(v) for v in range(views)]
    try:
      clip = self._read(index)
      windows = segment_windows(clip["num_frames"], cfg.num_frames, cfg.sampling_rate,
                                cfg.num_segments)
      out = []
      for frames in self._decode(clip, windows):
        if self.resize:
          frames = video_io.resize_short_side(frames, self.resize)
        for crop in long_side_crops(frames, cfg.img_size, cfg.num_crops):
          example = self._example(clip, crop, index)
          example.update(id=clip["id"], view=np.int32(len(out)),
                         mask=np.bool_(True), corrupt=np.int32(0))
          out.append(example)
      return out
    except (records.CorruptRecordError, ValueError) as e:
      log.warning("skipping corrupt record %d of %s: %s", index, self.source, e)
      return [self.blank_view(v, corrupt=int(v == 0)) for v in range(views)]


class _SplitViews(grain.experimental.FlatMapTransform):
  """Turns a record's list of views into separate elements (a `Corrupt` passes through)."""

  def __init__(self, max_fan_out: int):
    self.max_fan_out = max_fan_out

  def flat_map(self, element):
    return [element] if isinstance(element, Corrupt) else element


# ------------------------------------------------------------------------------------------------
# Corrupt-record accounting.
#
# Decoding may run in worker processes whose counters the trainer cannot see, so the count travels
# with the data: in workers, every element carries in its "corrupt" field how many corrupt records
# were skipped just before it; the batch sums them and the final stage, in the trainer's process,
# adds them to a running total that is also part of the checkpointed iterator state.
# ------------------------------------------------------------------------------------------------


class _SkipCorruptIterDataset(grain.IterDataset):
  """Drops `Corrupt` stand-ins and records how many preceded each kept element."""

  def __iter__(self):
    return _SkipCorruptIterator(self._parent.__iter__())

  def __str__(self) -> str:
    return "SkipCorruptIterDataset"


class _SkipCorruptIterator(grain.DatasetIterator):
  """Iterator of `_SkipCorruptIterDataset`."""

  def __next__(self):
    skipped = 0
    while True:
      try:
        element = next(self._parent)
      except StopIteration:
        if skipped:
          log.warning("%d corrupt record(s) skipped at the end of the stream", skipped)
        raise
      if not isinstance(element, Corrupt):
        element["corrupt"] = np.int32(skipped)
        return element
      skipped += 1
      log.warning("skipping corrupt record %d: %s", element.index, element.reason)
      if skipped >= MAX_CONSECUTIVE_CORRUPT:
        # A repeating pipeline over a dataset that is unreadable as a whole would otherwise
        # skip forever.
        raise RuntimeError(f"{skipped} consecutive records were corrupt (last: record "
                           f"{element.index}: {element.reason}); the dataset looks damaged")

  def get_state(self):
    # Nothing is pending between calls: skipped records are attributed within one `__next__`.
    return self._parent.get_state()

  def set_state(self, state):
    self._parent.set_state(state)


class ClipPipeline(grain.IterDataset):
  """The pipeline `make_pipeline` returns; iterate it for batches.

  Attributes:
    config: the resolved `PipelineConfig`.
    metadata: the dataset's `DatasetMetadata`.
    num_records: records this process reads per pass (training: per epoch of the global stream;
      evaluation: its shard, padding not counted).
    num_batches: batches per pass for evaluation kinds (equal on every process); None for
      training kinds, which repeat or drop remainders.
  """

  def __init__(self, parent: grain.IterDataset, config: PipelineConfig, metadata: DatasetMetadata,
               num_records: int, num_batches: Optional[int]):
    super().__init__(parent)
    self.config = config
    self.metadata = metadata
    self.num_records = num_records
    self.num_batches = num_batches

  def __iter__(self) -> "ClipPipelineIterator":
    return ClipPipelineIterator(self._parent.__iter__(), self.config.kind)

  def __str__(self) -> str:
    return f"ClipPipeline(kind={self.config.kind!r}, batch_size={self.config.batch_size})"


class ClipPipelineIterator(grain.DatasetIterator):
  """Batch iterator; `get_state()`/`set_state()` include the corrupt-record total.

  This object is what orbax's grain handler saves and restores
  (`grain.checkpoint.CheckpointSave(iterator)` / `CheckpointRestore(iterator)`).
  """

  def __init__(self, parent: grain.DatasetIterator, kind: str):
    super().__init__(parent)
    self._kind = kind
    self._corrupt = 0

  @property
  def corrupt_records(self) -> int:
    """Corrupt records met so far (skipped in training, masked out in evaluation)."""
    return self._corrupt

  def __next__(self) -> dict:
    batch = next(self._parent)
    skipped = int(np.sum(batch.pop("corrupt")))
    if skipped:
      self._corrupt += skipped
      log.warning("%s pipeline: %d corrupt record(s) in this batch, %d so far; re-run prepare on "
                  "the dataset to repair them", self._kind, skipped, self._corrupt)
    return batch

  def get_state(self) -> dict:
    return {"pipeline": self._parent.get_state(), "corrupt_records": self._corrupt}

  def set_state(self, state: dict) -> None:
    self._parent.set_state(state["pipeline"])
    self._corrupt = int(state["corrupt_records"])


# ------------------------------------------------------------------------------------------------
# The global training stream: which rows of each global batch this process reads.
# ------------------------------------------------------------------------------------------------


class _GlobalRows(grain.MapDataset):
  """Picks one process's records out of the global record stream.

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


# ------------------------------------------------------------------------------------------------
# Construction.
# ------------------------------------------------------------------------------------------------


def _init_worker(worker_index: int, worker_count: int) -> None:
  del worker_index, worker_count
  import cv2  # pylint: disable=g-import-not-at-top
  # One decode per worker core: OpenCV's own thread pool would oversubscribe the host.
  cv2.setNumThreads(1)


def _ensure_flags_parsed() -> None:
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():
    # Starting grain workers reads some of grain's absl flags directly; outside an absl app
    # nobody parses them, so settle them at their defaults.
    flags.FLAGS.mark_as_parsed()


def _stack(elements: Sequence[dict]) -> dict:
  return {k: np.stack([e[k] for e in elements]) for k in elements[0]}


class _PadBatch:
  """Batches evaluation rows, filling a short last batch with masked-out blank rows."""

  def __init__(self, batch_size: int, reader: _ClipReader):
    self.batch_size = batch_size
    self.reader = reader

  def __call__(self, elements: Sequence[dict]) -> dict:
    elements = list(elements)
    elements += [self.reader.blank_view(-1) for _ in range(self.batch_size - len(elements))]
    return _stack(elements)


def _stream_seed(seed: int) -> int:
  # The seed single-process runs have always drawn with, so their data order stays the same.
  return int(np.random.SeedSequence([seed, 0]).generate_state(1)[0])


def _resolve_shard(shard_index: Optional[int], shard_count: Optional[int]) -> tuple[int, int]:
  if shard_index is None or shard_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    shard_index = jax.process_index() if shard_index is None else shard_index
    shard_count = jax.process_count() if shard_count is None else shard_count
  return int(shard_index), int(shard_count)


def make_pipeline(kind: str, dataset_dir: str, split: str, *, batch_size: int, num_frames: int = 16,
                  sampling_rate: int = 4, img_size: int = 160, seed: int = 0,
                  shard_index: Optional[int] = None, shard_count: Optional[int] = None,
                  worker_count: int = 0, num_epochs: Optional[int] = None,
                  rows: Optional[Sequence[int]] = None, start_record: int = 0,
                  **options) -> ClipPipeline:
  """Builds a batched grain pipeline over one split of a prepared dataset.

  Args:
    kind: "pretrain", "finetune" (training), "eval" (one centre view) or "test" (multi-view).
    dataset_dir: prepared dataset directory.
    split: split name ("train", "test", ...).
    batch_size: rows per batch of this process (views, for pretrain with num_views > 1); for
      training kinds the global batch is batch_size * shard_count rows.
    num_frames: frames per view.
    sampling_rate: stride between sampled frames.
    img_size: model input side; the output side of pretrain/eval/test views.
    seed: shuffling and augmentation seed of the global training stream.
    shard_index: this process's index; default `jax.process_index()`.
    shard_count: number of processes; default `jax.process_count()`.
    worker_count: grain worker processes decoding clips (0: decode in this process).
    num_epochs: training epochs before the iterator ends (None: repeat forever). Evaluation kinds
      always make one pass.
    rows: training kinds: the rows of each global batch that this process's devices hold
      (`process_rows`); default the contiguous block `contiguous_rows(shard_index, batch_size)`.
    start_record: training kinds: position in the global record stream to start from (a
      multiple of the global batch's record count; records, not rows, when pretraining with
      num_views > 1).
    **options: further `PipelineConfig` fields:
      shuffle (True; training kinds) - reshuffle the shard every epoch.
      pretrain_crop ("fixed") - "fixed": VoxCeleb2 upper-centre img_size crop; "multiscale":
        corner/centre crops at scales (1, .875, .75, .66) of the short side resized to img_size.
      pretrain_resize (None) - resize the short side to this before the pretrain crop.
      num_views (1) - pretrain rows emitted per decoded record (repeated sampling).
      resample_views (True) - each repeated view gets its own temporal window and crop; False
        repeats the identical clip (no extra decoding).
      train_resize (None) - finetune: resize the short side to this first (None: as stored).
      train_crop_size (None) - finetune host crop side; default train_resize, else the stored
        short side from dataset_info.json, else img_size.
      train_crop ("random") - finetune host crop position, "random" or "centre".
      eval_resize (img_size) - eval/test: resize the short side to this before cropping.
      num_segments (2), num_crops (1) - test views: uniformly spaced temporal windows x crops
        along the long side.
      read_threads (1), read_buffer_size (2 * batch_size) - grain read threads and decoded-clip
        buffer per process.
      prefetch_batches (2) - batches buffered per worker (or by a thread when worker_count=0).

  Returns:
    A `ClipPipeline`; `iter()` it for a `ClipPipelineIterator` of batch dicts (see the module
    docstring for their fields).

  Raises:
    TypeError: an unknown option.
    ValueError: invalid options, an empty split, `rows` that split a clip's views between
      processes, or `rows`/`start_record` given for an evaluation kind.
  """
  unknown = set(options) - _OPTION_NAMES
  if unknown:
    raise TypeError(f"unknown pipeline option(s) {sorted(unknown)}; known: "
                    f"{sorted(_OPTION_NAMES)}")
  shard_index, shard_count = _resolve_shard(shard_index, shard_count)
  if kind == "eval":
    options.setdefault("num_segments", 1)
    options.setdefault("num_crops", 1)
  config = PipelineConfig(kind=kind, batch_size=batch_size, num_frames=num_frames,
                          sampling_rate=sampling_rate, img_size=img_size, seed=seed,
                          shard_index=shard_index, shard_count=shard_count,
                          worker_count=worker_count, num_epochs=num_epochs, **options).validate()
  if worker_count:
    _ensure_flags_parsed()
  metadata = load_metadata(dataset_dir)
  source = records.ClipDataSource(dataset_dir, split)
  if kind == "pretrain":
    crop_size, resize = img_size, config.pretrain_resize
  elif kind == "finetune":
    resize = config.train_resize
    crop_size = config.train_crop_size or resize or metadata.short_side or img_size
  else:
    crop_size, resize = img_size, config.eval_resize or img_size
  reader = _ClipReader(source, config, metadata.num_values, crop_size, resize)
  read_options = grain.ReadOptions(
      num_threads=config.read_threads,
      prefetch_buffer_size=config.read_buffer_size or 2 * batch_size)
  mp_options = grain.MultiprocessingOptions(num_workers=worker_count,
                                            per_worker_buffer_size=max(config.prefetch_batches, 1))

  n = len(source)
  if not n:
    raise ValueError(f"{source} holds no records")
  if kind in TRAIN_KINDS:
    it, num_records = _train_stream(reader, config, n, rows, start_record, read_options,
                                    mp_options)
    num_batches = None
  else:
    if rows is not None or start_record:
      raise ValueError(f"kind={kind!r}: rows and start_record select rows of the training "
                       "stream; evaluation reads every clip once")
    # Every process pads its strided shard to the largest shard's size, so all make the same
    # number of batches; indices >= n stand for padding clips.
    local = grain.MapDataset.range(n)[shard_index::shard_count]
    num_records = len(local)
    target = -(-n // shard_count)
    parts = [local] if num_records else []
    if target > num_records:
      parts.append(grain.MapDataset.range(n, n + target - num_records))
    ds = grain.MapDataset.concatenate(parts) if len(parts) > 1 else parts[0]
    it = ds.map(reader.eval_views).to_iter_dataset(read_options)
    it = grain.experimental.FlatMapIterDataset(it, _SplitViews(config.views_per_clip))
    it = it.mp_prefetch(mp_options, worker_init_fn=_init_worker)
    # Batching after the workers: each worker's slice need not fill whole batches, and only one
    # batch per pass may be short.
    it = it.batch(batch_size, batch_fn=_PadBatch(batch_size, reader))
    num_batches = math.ceil(target * config.views_per_clip / batch_size)
  if worker_count == 0 and config.prefetch_batches:
    it = grain.experimental.ThreadPrefetchIterDataset(
        it, prefetch_buffer_size=config.prefetch_batches)
  return ClipPipeline(it, config, metadata, num_records, num_batches)


def _train_stream(reader: _ClipReader, config: PipelineConfig, n: int,
                  rows: Optional[Sequence[int]], start_record: int,
                  read_options: grain.ReadOptions, mp_options: grain.MultiprocessingOptions
                  ) -> tuple[grain.IterDataset, int]:
  """This process's batches of the global training stream, and its records per pass."""
  batch_size, shard_count, views = config.batch_size, config.shard_count, config.views_per_clip
  if start_record < 0:
    raise ValueError(f"start_record={start_record} must be >= 0")
  ds = grain.MapDataset.range(n).seed(_stream_seed(config.seed))
  if config.shuffle:
    ds = ds.shuffle()
  ds = ds.repeat(config.num_epochs).random_map(reader.train_views)
  num_records = n
  if shard_count > 1 or start_record > 0:
    rows = contiguous_rows(config.shard_index, batch_size) if rows is None else rows
    slots = record_slots(rows, batch_size, views)
    ds = _GlobalRows(ds, batch_size * shard_count // views, slots, start_record)
    num_records = len(slots) * (n * views // (batch_size * shard_count))
  it = ds.to_iter_dataset(read_options)
  it = grain.experimental.FlatMapIterDataset(it, _SplitViews(views))
  it = _SkipCorruptIterDataset(it)
  # Batching inside the workers ships whole batches through shared memory.
  it = it.batch(batch_size, drop_remainder=True)
  return it.mp_prefetch(mp_options, worker_init_fn=_init_worker), num_records
