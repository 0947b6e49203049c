"""Reading prepared face-clip datasets.

  from svfap_jax import data
  for clip in data.read_clips("datasets/dfew_fold1", "train"):
    clip["frames"]   # uint8 (T, H, W, 3) RGB
  source = data.ClipDataSource("datasets/dfew_fold1", "train")  # random access, for grain

Importing this module pulls in numpy only; OpenCV loads on the first decode and the synthetic
generator on the first `make_synthetic_dataset` call.
"""
from __future__ import annotations

import logging
from typing import Any, Iterator, Optional

import numpy as np

from data_pipelines.records import ClipDataSource
from data_pipelines.records import CorruptRecordError
from data_pipelines.records import ReadStats
from data_pipelines.records import decode_frames
from data_pipelines.records import iter_clips
from data_pipelines.records import list_splits
from data_pipelines.records import load_info

__all__ = [
    "ClipDataSource", "CorruptRecordError", "ReadStats", "decode_frames", "list_splits",
    "load_info", "make_synthetic_dataset", "read_clips",
]

log = logging.getLogger(__name__)


def read_clips(dataset_dir: str, split: str, stats: Optional[ReadStats] = None
               ) -> Iterator[dict[str, Any]]:
  """Yields every intact clip of a split in record order.

  Each item is {"id": str, "frames": uint8 (T, H, W, 3), "label": int, "values": float32 array}.
  Corrupt records (bad checksum, unparsable, undecodable JPEG) are skipped, counted in `stats`
  (pass a `ReadStats` to see them) and logged as warnings; a truncated shard is reported and
  reading continues with the next one.
  """
  stats = stats if stats is not None else ReadStats()
  for clip in iter_clips(dataset_dir, split, stats):
    try:
      frames = decode_frames(clip["frames"])
    except ValueError as e:
      stats.records -= 1
      stats.corrupt += 1
      stats.note(f"{dataset_dir} split {split!r}: clip {clip['id']!r} has an undecodable frame "
                 f"({e}); skipped")
      continue
    yield {"id": clip["id"], "frames": frames, "label": int(clip["label"]),
           "values": np.asarray(clip["values"], np.float32)}


def make_synthetic_dataset(out_dir: str, **kwargs) -> str:
  """Writes synthetic face clips and prepares them; returns the prepared dataset directory.

  See `data_pipelines.synthetic.make_synthetic_dataset` for the arguments.
  """
  from data_pipelines import synthetic  # pylint: disable=g-import-not-at-top
  return synthetic.make_synthetic_dataset(out_dir, **kwargs)
