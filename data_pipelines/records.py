"""Face-clip records: schema, TFRecord writer/readers, shard index, dataset info.

A prepared dataset directory holds

  {split}.tfrecord-XXXXX-of-YYYYY          TFRecord shards, one `tf.train.Example` per clip
  {split}.tfrecord-XXXXX-of-YYYYY.index    JSON: byte offset/length and metadata of every record
  dataset_info.json                        counts, label names, frame stats, preprocessing spec

Each Example carries

  clip/id          bytes        unique within the split
  clip/frames      bytes list   one JPEG per frame, already resized to the prepared short side
  clip/num_frames  int64
  clip/height      int64        of every frame
  clip/width       int64
  clip/fps         float
  label/class      int64        -1 when the clip has no class label
  label/values     float list   valence/arousal, Big-Five, ...; may be empty
  clip/source      bytes        the input path the clip was made from

The files are plain TFRecords (`tf.data.TFRecordDataset` + `tf.io.parse_example` read them), but
nothing here needs TensorFlow: the Example messages are generated from data_pipelines/proto/
(TensorFlow's wire format, a package name of their own) and the TFRecord checksums come from
google_crc32c.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import logging
import os
import re
import struct
import threading
from typing import Any, Iterator, NamedTuple, Optional, Sequence

from google.protobuf import message as protobuf_message
import google_crc32c
import numpy as np

from data_pipelines.proto import example_pb2

log = logging.getLogger(__name__)

FORMAT_NAME = "svfap-face-clips"
BUILDER_VERSION = "1.0.0"
INDEX_FORMAT = "svfap-shard-index/1"
INFO_FILE = "dataset_info.json"
INDEX_SUFFIX = ".index"

# Feature keys and their kinds ("bytes", "float", "int64").
FEATURES = {
    "clip/id": "bytes",
    "clip/frames": "bytes",
    "clip/num_frames": "int64",
    "clip/height": "int64",
    "clip/width": "int64",
    "clip/fps": "float",
    "label/class": "int64",
    "label/values": "float",
    "clip/source": "bytes",
}


class CorruptRecordError(Exception):
  """A record failed its checksum or could not be parsed.

  Attributes:
    path: the shard file.
    index: record number inside the shard (None when unknown).
    offset: byte offset of the record's header in the shard.
    reason: what is wrong.
  """

  def __init__(self, path: str, index: Optional[int], offset: int, reason: str):
    self.path, self.index, self.offset, self.reason = path, index, offset, reason
    where = f"record {index} " if index is not None else "record "
    super().__init__(f"{path}: {where}at byte {offset} is corrupt: {reason}. Re-run `prepare` "
                     f"on this dataset to rewrite the shard, or let the reader skip it.")


# ------------------------------------------------------------------------------------------------
# CRC-32C (Castagnoli), as TFRecord framing uses it.
# ------------------------------------------------------------------------------------------------


def crc32c(data) -> int:
  """CRC-32C of a bytes-like object, an int in [0, 2**32).

  google_crc32c computes it in C; where its extension cannot load, that package falls back to its
  own pure-Python code (same values, far slower) and says so with a RuntimeWarning at import.
  """
  return google_crc32c.value(bytes(data))


def masked_crc(data) -> int:
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# ------------------------------------------------------------------------------------------------
# tf.train.Example codec, with the messages generated from data_pipelines/proto/*.proto: the same
# wire format as TensorFlow's, under a package name of their own so that both can be loaded in
# one process.
# ------------------------------------------------------------------------------------------------


class _WireError(ValueError):
  pass


# Feature kind <-> the field of the Feature's `kind` oneof that holds it.
_KIND_FIELD = {"bytes": "bytes_list", "float": "float_list", "int64": "int64_list"}
_FIELD_KIND = {field: kind for kind, field in _KIND_FIELD.items()}


def encode_example(features: dict[str, tuple[str, Sequence]]) -> bytes:
  """Serializes {key: (kind, values)} as a tf.train.Example.

  Map keys are written sorted (protobuf's deterministic serialization), so equal features give
  equal bytes, the same bytes TensorFlow's deterministic serializer gives.

  Args:
    features: kind is "bytes", "float" (stored as float32) or "int64"; values a sequence of
      bytes, floats or ints. An empty sequence still records the kind.

  Raises:
    ValueError: an unknown kind, or an int outside int64.
    TypeError: a value of the wrong type for its kind (e.g. str for "bytes").
  """
  example = example_pb2.Example()
  example.features.SetInParent()  # an empty feature dict is still an (empty) Features message
  feature_map = example.features.feature
  for key, (kind, values) in features.items():
    field = _KIND_FIELD.get(kind)
    if field is None:
      raise ValueError(f"feature {key!r}: kind {kind!r} is not one of {', '.join(_KIND_FIELD)}")
    value_list = getattr(feature_map[key], field)
    value_list.SetInParent()
    try:
      value_list.value.extend(values)
    except (TypeError, ValueError) as e:
      raise type(e)(f"feature {key!r} ({kind}): {e}") from e
  return example.SerializeToString(deterministic=True)


def parse_example(data: bytes) -> dict[str, tuple[Optional[str], list]]:
  """Parses a serialized tf.train.Example into {key: (kind, values)}.

  kind is "bytes", "float" or "int64" (None for a feature with no list set, then values is []);
  values is a list of bytes, Python floats (float32 values) or ints.

  Raises:
    ValueError: the bytes are not a well-formed Example.
  """
  example = example_pb2.Example()
  try:
    example.ParseFromString(bytes(data))
  except protobuf_message.DecodeError as e:
    # protobuf's text names the message type ("... type 'svfap.records.Example': why"): keep why.
    raise _WireError(f"not a well-formed tf.train.Example ({str(e).rsplit(': ', 1)[-1]})") from e
  out = {}
  for key, feature in example.features.feature.items():
    field = feature.WhichOneof("kind")
    out[key] = ((None, []) if field is None
                else (_FIELD_KIND[field], list(getattr(feature, field).value)))
  return out


def clip_features(*, clip_id: str, frames: Sequence[bytes], height: int, width: int, fps: float,
                  label: int = -1, values: Sequence[float] = (), source: str = "") -> dict:
  """The {key: (kind, values)} feature dict of one clip.

  The id is stored whole as UTF-8 (no length limit); `source` keeps the path's own bytes, also
  for file names that are not UTF-8 (readers decode it with replacement characters).

  Raises:
    UnicodeEncodeError: an id that is not valid text (prepare escapes such names).
  """
  return {
      "clip/id": ("bytes", [clip_id.encode("utf-8")]),
      "clip/frames": ("bytes", list(frames)),
      "clip/num_frames": ("int64", [len(frames)]),
      "clip/height": ("int64", [int(height)]),
      "clip/width": ("int64", [int(width)]),
      "clip/fps": ("float", [float(fps)]),
      "label/class": ("int64", [int(label)]),
      "label/values": ("float", [float(v) for v in values]),
      "clip/source": ("bytes", [source.encode("utf-8", "surrogateescape")]),
  }


def encode_clip(**kwargs) -> bytes:
  """Serialized Example of one clip; see `clip_features` for the arguments."""
  return encode_example(clip_features(**kwargs))


def _scalar(features, key, kind):
  k, values = features.get(key, (None, []))
  if k is None and not values:
    raise _WireError(f"feature {key!r} is missing")
  if k != kind or len(values) != 1:
    raise _WireError(f"feature {key!r} should be one {kind}, got {k} x{len(values)}")
  return values[0]


def decode_clip(data: bytes) -> dict[str, Any]:
  """Parses a clip record into the reader dict (frames stay JPEG bytes).

  Returns:
    {"id": str, "frames": [bytes], "num_frames": int, "height": int, "width": int, "fps": float,
     "label": int, "values": float32 array, "source": str}

  Raises:
    ValueError: malformed Example, or fields that contradict each other.
  """
  f = parse_example(data)
  kind, frames = f.get("clip/frames", (None, []))
  if kind != "bytes" or not frames:
    raise _WireError("feature 'clip/frames' is missing or empty")
  num_frames = _scalar(f, "clip/num_frames", "int64")
  if num_frames != len(frames):
    raise _WireError(f"clip/num_frames={num_frames} but {len(frames)} frames are stored")
  vkind, values = f.get("label/values", ("float", []))
  if values and vkind != "float":
    raise _WireError("feature 'label/values' is not a float list")
  return {
      "id": _scalar(f, "clip/id", "bytes").decode("utf-8"),
      "frames": frames,
      "num_frames": num_frames,
      "height": _scalar(f, "clip/height", "int64"),
      "width": _scalar(f, "clip/width", "int64"),
      "fps": float(_scalar(f, "clip/fps", "float")),
      "label": _scalar(f, "label/class", "int64"),
      "values": np.asarray(values, np.float32),
      "source": _scalar(f, "clip/source", "bytes").decode("utf-8", "replace"),
  }


# ------------------------------------------------------------------------------------------------
# TFRecord framing: uint64 length | masked crc32c(length) | data | masked crc32c(data).
# ------------------------------------------------------------------------------------------------

_HEADER = 12
_FOOTER = 4


def frame_record(data: bytes) -> bytes:
  length = struct.pack("<Q", len(data))
  return (length + struct.pack("<I", masked_crc(length)) + data
          + struct.pack("<I", masked_crc(data)))


class TFRecordWriter:
  """Appends framed records to one file and remembers each record's offset and length.

  `path` may be a URL (gs://...), written through etils.epath.
  """

  def __init__(self, path: str):
    self.path = os.fspath(path)
    self._f = _open(self.path, "wb")
    self.offsets: list[int] = []
    self.lengths: list[int] = []
    self._pos = 0

  def write(self, data: bytes) -> int:
    """Writes one record; returns its byte offset."""
    framed = frame_record(data)
    self._f.write(framed)
    self.offsets.append(self._pos)
    self.lengths.append(len(data))
    self._pos += len(framed)
    return self.offsets[-1]

  @property
  def size(self) -> int:
    return self._pos

  def close(self) -> None:
    if not self._f.closed:
      self._f.flush()
      if is_local(self.path):
        os.fsync(self._f.fileno())
      self._f.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


# What can be wrong with a framed record; also the reasons `CorruptRecordError` gives.
_TRUNCATED_HEADER = "truncated header"
_LENGTH_CRC = "length checksum mismatch"
_CUT_SHORT = "record is cut short (truncated)"
_DATA_CRC = "data checksum mismatch"


def _header_length(header: bytes) -> Optional[int]:
  """The data length a 12-byte record header announces; None when its checksum fails."""
  (length,) = struct.unpack("<Q", header[:8])
  (length_crc,) = struct.unpack("<I", header[8:_HEADER])
  return length if masked_crc(header[:8]) == length_crc else None


def _data_intact(data: bytes, footer: bytes) -> bool:
  return masked_crc(data) == struct.unpack("<I", footer)[0]


def unframe(path: str, index: Optional[int], offset: int, buf: bytes,
            expected_length: Optional[int] = None) -> bytes:
  """Checks one framed record (header + data + footer in `buf`) and returns its data.

  Raises:
    CorruptRecordError: bad length checksum, unexpected length, or bad data checksum.
  """
  if len(buf) < _HEADER:
    raise CorruptRecordError(path, index, offset, f"only {len(buf)} header bytes (truncated)")
  length = _header_length(buf[:_HEADER])
  if length is None:
    raise CorruptRecordError(path, index, offset, _LENGTH_CRC)
  if expected_length is not None and length != expected_length:
    raise CorruptRecordError(path, index, offset,
                             f"length {length} differs from the index ({expected_length})")
  if len(buf) < _HEADER + length + _FOOTER:
    raise CorruptRecordError(path, index, offset, _CUT_SHORT)
  data = buf[_HEADER:_HEADER + length]
  if not _data_intact(data, buf[_HEADER + length:_HEADER + length + _FOOTER]):
    raise CorruptRecordError(path, index, offset, _DATA_CRC)
  return bytes(data)


class _Framed(NamedTuple):
  """One step of `_walk_shard`: a record, or what stopped it from being one.

  problem is None (data holds the record's bytes, or None when data was not read) or one of the
  reasons above; for a truncated header, length is the number of stray bytes at the end.
  """
  index: int
  offset: int
  length: int
  data: Optional[bytes]
  problem: Optional[str]


def _walk_shard(path: str, *, read_data: bool,
                offsets: Optional[Sequence[int]] = None) -> Iterator[_Framed]:
  """Walks the records of a shard from its start: the one TFRecord framing walker.

  A record whose data checksum fails is reported and stepped over (its length is trustworthy).
  After a damaged length header the walk resumes at the next of `offsets` (from the shard
  index) when there is one, and ends otherwise; a shard that ends inside a header or a record
  ends the walk. Data checksums are checked only with `read_data`.
  """
  file_size = _size(path)
  index, pos = 0, 0
  with _open(path, "rb") as f:
    while pos < file_size:
      f.seek(pos)
      header = f.read(_HEADER)
      if len(header) < _HEADER:
        yield _Framed(index, pos, len(header), None, _TRUNCATED_HEADER)
        return
      length = _header_length(header)
      if length is None:
        yield _Framed(index, pos, 0, None, _LENGTH_CRC)
        nxt = next((o for o in (offsets or ()) if o > pos), None)
        if nxt is None:
          return
        index, pos = list(offsets).index(nxt), nxt
        continue
      end = pos + _HEADER + length + _FOOTER
      if end > file_size:
        yield _Framed(index, pos, length, None, _CUT_SHORT)
        return
      if read_data:
        body = f.read(length + _FOOTER)
        data = body[:length]
        if _data_intact(data, body[length:]):
          yield _Framed(index, pos, length, data, None)
        else:
          yield _Framed(index, pos, length, None, _DATA_CRC)
      else:
        yield _Framed(index, pos, length, None, None)
      pos = end
      index += 1


@dataclasses.dataclass
class ReadStats:
  """What a sequential read met: good records, skipped corrupt ones, truncated shards."""
  records: int = 0
  corrupt: int = 0
  truncated_shards: list[str] = dataclasses.field(default_factory=list)
  problems: list[str] = dataclasses.field(default_factory=list)

  def note(self, message: str) -> None:
    self.problems.append(message)
    log.warning("%s", message)


def iter_shard(path: str, stats: Optional[ReadStats] = None,
               offsets: Optional[Sequence[int]] = None) -> Iterator[tuple[int, int, bytes]]:
  """Yields (record_index, offset, data) of every intact record of one shard, in order.

  A record whose data checksum fails is skipped (its length is trustworthy, so reading continues
  after it). A record whose length header is damaged cannot be stepped over by itself: with
  `offsets` (from the shard index) reading resumes at the next indexed record, otherwise the rest
  of the shard is given up. A shard that ends inside a record is reported as truncated. Every
  skip is counted in `stats` and logged.
  """
  stats = stats if stats is not None else ReadStats()
  for index, pos, length, data, problem in _walk_shard(path, read_data=True, offsets=offsets):
    if problem is None:
      stats.records += 1
      yield index, pos, data
    elif problem == _DATA_CRC:
      stats.corrupt += 1
      stats.note(f"{path}: record {index} at byte {pos}: data checksum mismatch; skipped")
    elif problem == _LENGTH_CRC:
      stats.corrupt += 1
      if next((o for o in (offsets or ()) if o > pos), None) is None:
        stats.note(f"{path}: record {index} at byte {pos}: length checksum mismatch; cannot "
                   "find the next record, stopping this shard")
      else:
        stats.note(f"{path}: record {index} at byte {pos}: length checksum mismatch; skipped")
    elif problem == _TRUNCATED_HEADER:
      stats.truncated_shards.append(path)
      stats.note(f"{path}: truncated: {length} stray bytes at offset {pos} after "
                 f"{index} records; the rest of the shard is lost")
    else:  # _CUT_SHORT
      stats.truncated_shards.append(path)
      stats.note(f"{path}: truncated: record {index} at byte {pos} needs {length} bytes but "
                 f"the file ends at byte {_size(path)}; stopping this shard")


def scan_framing(path: str) -> tuple[list[int], list[int]]:
  """Walks the length headers of a shard (no data checksums) and returns offsets and lengths.

  Raises:
    CorruptRecordError: a damaged header or a record cut short.
  """
  offsets, lengths = [], []
  for index, pos, length, _, problem in _walk_shard(path, read_data=False):
    if problem is not None:
      raise CorruptRecordError(path, index, pos, problem)
    offsets.append(pos)
    lengths.append(length)
  return offsets, lengths


# ------------------------------------------------------------------------------------------------
# Shards, indices and dataset info.
# ------------------------------------------------------------------------------------------------

def is_local(path: str) -> bool:
  """True for plain filesystem paths; URLs such as gs://bucket/x go through etils.epath."""
  return "://" not in os.fspath(path)


def _open(path: str, mode: str = "r"):
  if is_local(path):
    return open(path, mode)
  from etils import epath  # pylint: disable=g-import-not-at-top
  return epath.Path(path).open(mode)


def _exists(path: str) -> bool:
  if is_local(path):
    return os.path.exists(path)
  from etils import epath  # pylint: disable=g-import-not-at-top
  return epath.Path(path).exists()


def _size(path: str) -> int:
  if is_local(path):
    return os.path.getsize(path)
  from etils import epath  # pylint: disable=g-import-not-at-top
  return int(epath.Path(path).stat().length)


def _glob(directory: str, pattern: str) -> list[str]:
  """Paths in `directory` matching a glob `pattern` (no directory parts in the pattern)."""
  if is_local(directory):
    return glob.glob(os.path.join(glob.escape(directory), pattern))
  from etils import epath  # pylint: disable=g-import-not-at-top
  return [os.fspath(p) for p in epath.Path(directory).glob(pattern)]


def _join(directory: str, name: str) -> str:
  return os.path.join(directory, name) if is_local(directory) else f"{directory.rstrip('/')}/{name}"


_SHARD_RE = re.compile(r"^(?P<split>.+)\.tfrecord-(?P<i>\d{5})-of-(?P<n>\d{5})$")


def shard_name(split: str, i: int, n: int) -> str:
  return f"{split}.tfrecord-{i:05d}-of-{n:05d}"


def parse_shard_name(name: str) -> Optional[tuple[str, int, int]]:
  m = _SHARD_RE.match(os.path.basename(name))
  return (m["split"], int(m["i"]), int(m["n"])) if m else None


def find_shards(dataset_dir: str, split: str) -> list[str]:
  """The shard paths of `split`, in order; checks the set is complete.

  Raises:
    FileNotFoundError: no shards, or some of the numbered set are missing.
    ValueError: shards of several different counts (a re-prepare with another count left old ones).
  """
  paths = _glob(dataset_dir, glob.escape(split) + ".tfrecord-*")
  shards = {}
  for p in paths:
    parsed = parse_shard_name(p)
    if parsed and parsed[0] == split:
      shards[p] = parsed
  if not shards:
    available = list_splits(dataset_dir)
    raise FileNotFoundError(
        f"no shards '{split}.tfrecord-XXXXX-of-YYYYY' in {dataset_dir} (splits there: "
        f"{', '.join(available) or 'none'}); run `python -m svfap_jax prepare ... --out "
        f"{dataset_dir}` first")
  counts = {n for _, _, n in shards.values()}
  if len(counts) > 1:
    raise ValueError(f"{dataset_dir}: split {split!r} has shards of several totals "
                     f"{sorted(counts)}; delete the stale ones or re-run prepare")
  (n,) = counts
  have = {i for _, i, _ in shards.values()}
  missing = [shard_name(split, i, n) for i in range(n) if i not in have]
  if missing:
    raise FileNotFoundError(f"{dataset_dir}: split {split!r} lacks shard(s) {', '.join(missing)}; "
                            "re-run prepare to complete it")
  return [_join(dataset_dir, shard_name(split, i, n)) for i in range(n)]


def list_splits(dataset_dir: str) -> list[str]:
  names = set()
  for p in _glob(dataset_dir, "*.tfrecord-*"):
    parsed = parse_shard_name(p)
    if parsed:
      names.add(parsed[0])
  return sorted(names)


def write_json_atomic(path: str, obj: Any) -> None:
  """Writes `obj` as JSON so that readers see the old file or the whole new one.

  Local files go through a temporary name and a rename; URLs (gs://...) through etils.epath,
  whose object stores publish an object only once it is completely written.
  """
  path = os.fspath(path)
  text = json.dumps(obj, indent=1, sort_keys=True) + "\n"
  if not is_local(path):
    with _open(path, "w") as f:
      f.write(text)
    return
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def read_index(shard_path: str) -> dict:
  """Loads a shard's index.

  Raises:
    FileNotFoundError / ValueError: missing or malformed index, naming the file.
  """
  path = shard_path + INDEX_SUFFIX
  if not _exists(path):
    raise FileNotFoundError(f"{path} is missing: the shard was not finished; re-run prepare")
  try:
    with _open(path) as f:
      index = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise ValueError(f"{path} is not a readable index ({e}); re-run prepare") from e
  if index.get("format") != INDEX_FORMAT:
    raise ValueError(f"{path}: index format {index.get('format')!r}, expected {INDEX_FORMAT!r}")
  n = index.get("num_records")
  for key in ("offsets", "lengths"):
    if not isinstance(index.get(key), list) or len(index[key]) != n:
      raise ValueError(f"{path}: field {key!r} should list {n} entries")
  return index


def load_info(dataset_dir: str) -> dict:
  """The `dataset_info.json` of a prepared dataset (a local folder or a URL such as gs://...).

  Every reader of the file goes through here.

  Raises:
    FileNotFoundError: the file is missing (the message says how to write it).
    ValueError: the file is not a JSON object (the message names the file).
  """
  path = _join(os.fspath(dataset_dir), INFO_FILE)
  if not _exists(path):
    raise FileNotFoundError(f"{path} is missing; run `python -m svfap_jax prepare` into "
                            f"{dataset_dir} first")
  try:
    with _open(path) as f:
      info = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f"{path} is not readable JSON ({e}); re-run prepare to rewrite it") from e
  if not isinstance(info, dict):
    raise ValueError(f"{path} holds a JSON {type(info).__name__}, not an object; re-run prepare "
                     "to rewrite it")
  return info


def _stats(values) -> Optional[dict]:
  if not len(values):
    return None
  v = np.asarray(values, np.float64)
  return {"min": float(v.min()), "mean": round(float(v.mean()), 3), "max": float(v.max())}


def summarize_split(indices: Sequence[dict], label_names: Optional[Sequence[str]]) -> dict:
  """Per-split block of dataset_info.json, from the split's shard indices."""
  labels = [l for ix in indices for l in ix.get("labels", [])]
  counts: dict[str, int] = {}
  for label in labels:
    if label < 0:
      name = "unlabeled"
    elif label_names and label < len(label_names):
      name = label_names[label]
    else:
      name = str(label)
    counts[name] = counts.get(name, 0) + 1
  return {
      "num_clips": sum(ix["num_records"] for ix in indices),
      "num_shards": len(indices),
      "class_counts": counts,
      "num_frames": _stats([x for ix in indices for x in ix.get("num_frames", [])]),
      "height": _stats([x for ix in indices for x in ix.get("heights", [])]),
      "width": _stats([x for ix in indices for x in ix.get("widths", [])]),
      "source_fps": _stats([x for ix in indices for x in ix.get("source_fps", [])]),
      "fps": _stats([x for ix in indices for x in ix.get("fps", [])]),
      "bytes": sum(ix.get("file_size", 0) for ix in indices),
  }


# ------------------------------------------------------------------------------------------------
# Readers.
# ------------------------------------------------------------------------------------------------


class ClipDataSource:
  """Random access to the clips of one split (grain's RandomAccessDataSource protocol).

  `source[i]` returns the `decode_clip` dict of record i (frames as JPEG bytes; decode them with
  `decode_frames`, usually only the sampled ones). Offsets come from the shard indices, so a
  lookup is one `pread`. Instances are picklable (open files are not carried along) and
  thread-safe. A record that fails its checksum or does not parse raises `CorruptRecordError`
  naming the shard and record, never returns garbage.

  Attributes:
    labels: int64 (len,) class of every record, read from the indices (for samplers and stats).
  """

  def __init__(self, dataset_dir: str, split: str):
    self.dataset_dir = os.fspath(dataset_dir)
    self.split = split
    self._shards = find_shards(self.dataset_dir, split)
    shard_ids, offsets, lengths, record_ids, labels = [], [], [], [], []
    for k, shard in enumerate(self._shards):
      index = read_index(shard)
      n = index["num_records"]
      shard_ids.append(np.full(n, k, np.int32))
      offsets.append(np.asarray(index["offsets"], np.int64))
      lengths.append(np.asarray(index["lengths"], np.int64))
      record_ids.append(np.arange(n, dtype=np.int64))
      labels.append(np.asarray(index.get("labels", [-1] * n), np.int64))
    self._shard_of = np.concatenate(shard_ids) if shard_ids else np.zeros(0, np.int32)
    self._offset = np.concatenate(offsets)
    self._length = np.concatenate(lengths)
    self._record = np.concatenate(record_ids)
    self.labels = np.concatenate(labels)
    self._fds: dict[int, int] = {}
    self._remote: dict[int, Any] = {}  # open files of URL shards (etils.epath)
    self._lock = threading.Lock()

  def __len__(self) -> int:
    return int(self._offset.size)

  def __repr__(self) -> str:
    return (f"ClipDataSource(dataset_dir={self.dataset_dir!r}, split={self.split!r}, "
            f"num_records={len(self)})")

  def __getstate__(self):
    state = self.__dict__.copy()
    state["_fds"] = {}
    state["_remote"] = {}
    state["_lock"] = None
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._lock = threading.Lock()

  def __del__(self, _close=os.close):
    # `_close` is bound at definition time: at interpreter exit `os` may already be gone.
    for fd in getattr(self, "_fds", {}).values():
      try:
        _close(fd)
      except OSError:
        pass

  def _fd(self, shard: int) -> int:
    fd = self._fds.get(shard)
    if fd is None:
      with self._lock:
        fd = self._fds.get(shard)
        if fd is None:
          fd = os.open(self._shards[shard], os.O_RDONLY)
          self._fds[shard] = fd
    return fd

  def _read_remote(self, shard: int, offset: int, size: int) -> bytes:
    """One ranged read through etils.epath (gs:// and other URLs); one open file per shard."""
    with self._lock:
      f = self._remote.get(shard)
      if f is None:
        f = self._remote[shard] = _open(self._shards[shard], "rb")
      f.seek(offset)
      return f.read(size)

  def location(self, i: int) -> tuple[str, int, int]:
    """(shard path, record index in the shard, byte offset) of record i."""
    return self._shards[int(self._shard_of[i])], int(self._record[i]), int(self._offset[i])

  def read_bytes(self, i: int) -> bytes:
    """The checked, serialized Example of record i."""
    i = int(i)
    if not -len(self) <= i < len(self):
      raise IndexError(f"record {i} out of range for {self!r}")
    i %= len(self)
    shard = int(self._shard_of[i])
    offset, length = int(self._offset[i]), int(self._length[i])
    size = _HEADER + length + _FOOTER
    if is_local(self._shards[shard]):
      buf = os.pread(self._fd(shard), size, offset)
    else:
      buf = self._read_remote(shard, offset, size)
    return unframe(self._shards[shard], int(self._record[i]), offset, buf, length)

  def __getitem__(self, i: int) -> dict[str, Any]:
    data = self.read_bytes(i)
    try:
      return decode_clip(data)
    except (ValueError, UnicodeDecodeError) as e:
      path, record, offset = self.location(int(i) % len(self))
      raise CorruptRecordError(path, record, offset, f"unparsable Example: {e}") from e


def iter_clips(dataset_dir: str, split: str, stats: Optional[ReadStats] = None
               ) -> Iterator[dict[str, Any]]:
  """Yields the `decode_clip` dict of every intact record of a split, in record order.

  Corrupt records are skipped, counted in `stats` and logged; a truncated shard is reported and
  reading goes on with the next shard.
  """
  stats = stats if stats is not None else ReadStats()
  for shard in find_shards(os.fspath(dataset_dir), split):
    try:
      offsets = read_index(shard)["offsets"]
    except (OSError, ValueError):
      offsets = None
    for index, offset, data in iter_shard(shard, stats, offsets):
      try:
        yield decode_clip(data)
      except (ValueError, UnicodeDecodeError) as e:
        stats.records -= 1
        stats.corrupt += 1
        stats.note(f"{shard}: record {index} at byte {offset}: unparsable Example ({e}); skipped")


def decode_frames(jpegs: Sequence[bytes], indices: Optional[Sequence[int]] = None) -> np.ndarray:
  """Decodes JPEG frames into one uint8 (T, H, W, 3) RGB array.

  Args:
    jpegs: encoded frames of one clip (all the same size).
    indices: which frames to decode, in output order (repeats allowed); default all. Decoding only
      the sampled frames is the main saving of the input pipeline.

  Raises:
    ValueError: a frame that does not decode or differs in size, naming the frame.
  """
  import cv2  # pylint: disable=g-import-not-at-top

  order = range(len(jpegs)) if indices is None else [int(i) for i in indices]
  out = None
  cache: dict[int, int] = {}
  for t, k in enumerate(order):
    if k in cache and out is not None:
      out[t] = out[cache[k]]
      continue
    bgr = cv2.imdecode(np.frombuffer(jpegs[k], np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
      raise ValueError(f"frame {k} is not a decodable image ({len(jpegs[k])} bytes)")
    if out is None:
      out = np.empty((len(order),) + bgr.shape, np.uint8)
    elif bgr.shape != out.shape[1:]:
      raise ValueError(f"frame {k} is {bgr.shape[1]}x{bgr.shape[0]}, frame {order[0]} is "
                       f"{out.shape[2]}x{out.shape[1]}")
    cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB, dst=out[t])
    cache[k] = t
  if out is None:
    return np.zeros((0, 0, 0, 3), np.uint8)
  return out
