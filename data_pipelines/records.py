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
nothing here needs TensorFlow: the Example protobuf is encoded and parsed by hand (it is five tiny
messages) and the TFRecord checksums use a numpy CRC-32C.
"""
from __future__ import annotations

import dataclasses
import functools
import glob
import json
import logging
import os
import re
import struct
import threading
from typing import Any, Iterator, Optional, Sequence

import numpy as np

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
#
# The byte-wise table update is linear over GF(2), so a long message can be cut into equal rows
# whose CRCs are computed side by side with numpy, then merged with "advance the register over n
# zero bytes" operators. Those operators are themselves linear maps on 32 bits, kept as four
# 256-entry tables and built for powers of two by repeated squaring.
# ------------------------------------------------------------------------------------------------

_CRC_POLY = 0x82F63B78


def _make_crc_table() -> np.ndarray:
  table = np.zeros(256, np.uint32)
  for i in range(256):
    c = i
    for _ in range(8):
      c = (c >> 1) ^ (_CRC_POLY if c & 1 else 0)
    table[i] = c
  return table


_CRC_TABLE = _make_crc_table()
_CRC_TABLE_LIST = [int(v) for v in _CRC_TABLE]
# Basis vectors 1 << i for i in 0..31, as the byte lanes a 4x256 operator table is indexed by.
_LANE_INPUTS = (np.arange(256, dtype=np.uint32)[None, :]
                << (8 * np.arange(4, dtype=np.uint32))[:, None])


def _apply_op(op: np.ndarray, x: np.ndarray) -> np.ndarray:
  """Applies a (4, 256) zero-advance operator to uint32 registers `x` (any shape)."""
  return (op[0][x & 0xFF] ^ op[1][(x >> 8) & 0xFF] ^ op[2][(x >> 16) & 0xFF] ^ op[3][x >> 24])


@functools.lru_cache(maxsize=None)
def _zero_op(log2_n: int) -> np.ndarray:
  """Operator advancing a CRC register over 2**log2_n zero bytes."""
  if log2_n == 0:
    x = _LANE_INPUTS
    return _CRC_TABLE[x & 0xFF] ^ (x >> 8)
  half = _zero_op(log2_n - 1)
  return _apply_op(half, half)


def _advance(register: int, n: int) -> int:
  """Advances a CRC register over `n` zero bytes."""
  x = np.uint32(register)
  bit = 0
  while n:
    if n & 1:
      x = _apply_op(_zero_op(bit), x)
    n >>= 1
    bit += 1
  return int(x)


def _crc_update_small(register: int, data) -> int:
  table = _CRC_TABLE_LIST
  for b in data:
    register = table[(register ^ b) & 0xFF] ^ (register >> 8)
  return register


@functools.lru_cache(maxsize=None)
def _word_tables() -> tuple[np.ndarray, np.ndarray]:
  """Tables advancing a register over one 4-byte word, indexed by its low and high 16 bits."""
  v = np.arange(1 << 16, dtype=np.uint32)
  four = _zero_op(2)
  return _apply_op(four, v), _apply_op(four, v << 16)


try:
  import google_crc32c as _google_crc32c  # pylint: disable=g-import-not-at-top
except ImportError:  # the numpy implementation below is ~35x slower but needs nothing
  _google_crc32c = None


def crc32c(data) -> int:
  """CRC-32C of a bytes-like object (the C library when installed, else numpy)."""
  if _google_crc32c is not None:
    return _google_crc32c.value(bytes(data))
  return crc32c_numpy(data)


def crc32c_numpy(data) -> int:
  """CRC-32C in numpy (no compiled dependency)."""
  n = len(data)
  if n < 1024:
    return _crc_update_small(0xFFFFFFFF, bytes(data)) ^ 0xFFFFFFFF
  # Rows of 16..64 bytes (many short rows keep numpy's per-call overhead small), left-padded with
  # zero rows up to a power-of-two count: leading zero bytes leave a zero register unchanged, and
  # the 0xFFFFFFFF initial value is accounted for separately by advancing it over all n bytes.
  # Within a row the register eats one little-endian 32-bit word per step (processing k <= 4
  # bytes is "xor them into the register, advance k zero bytes").
  log_row = min(6, max(4, n.bit_length() - 13))
  row = 1 << log_row
  rows = -(-n // row)
  log_rows = (rows - 1).bit_length()
  buf = np.zeros((1 << log_rows) * row, np.uint8)
  buf[buf.size - n:] = np.frombuffer(data, np.uint8)
  words = buf.view("<u4").reshape(-1, row // 4).T.copy()
  low, high = _word_tables()
  reg = np.zeros(words.shape[1], np.uint32)
  for j in range(row // 4):
    x = reg ^ words[j]
    reg = low[x & 0xFFFF] ^ high[x >> 16]
  level = log_row
  while reg.size > 1:
    reg = _apply_op(_zero_op(level), reg[0::2]) ^ reg[1::2]
    level += 1
  return (int(reg[0]) ^ _advance(0xFFFFFFFF, n)) ^ 0xFFFFFFFF


def masked_crc(data) -> int:
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# ------------------------------------------------------------------------------------------------
# tf.train.Example wire format.
#
#   Example  { Features features = 1; }
#   Features { map<string, Feature> feature = 1; }      (map entry: key = 1, value = 2)
#   Feature  { oneof { BytesList bytes_list = 1; FloatList float_list = 2;
#                      Int64List int64_list = 3; } }
#   BytesList { repeated bytes value = 1; }  FloatList { repeated float value = 1 [packed]; }
#   Int64List { repeated int64 value = 1 [packed]; }
# ------------------------------------------------------------------------------------------------


class _WireError(ValueError):
  pass


def _varint(value: int) -> bytes:
  value &= 0xFFFFFFFFFFFFFFFF  # negative int64 -> two's complement, 10 bytes
  out = bytearray()
  while value > 0x7F:
    out.append((value & 0x7F) | 0x80)
    value >>= 7
  out.append(value)
  return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
  """A length-delimited field."""
  return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _encode_feature(kind: str, values) -> bytes:
  if kind == "bytes":
    body = b"".join(_field(1, v) for v in values)
    return _field(1, body)
  if kind == "float":
    body = _field(1, np.asarray(values, "<f4").tobytes()) if len(values) else b""
    return _field(2, body)
  body = _field(1, b"".join(_varint(int(v)) for v in values)) if len(values) else b""
  return _field(3, body)


def encode_example(features: dict[str, tuple[str, Sequence]]) -> bytes:
  """Serializes {key: (kind, values)} as a tf.train.Example; keys sorted for stable bytes."""
  entries = []
  for key in sorted(features):
    kind, values = features[key]
    entry = _field(1, key.encode("utf-8")) + _field(2, _encode_feature(kind, values))
    entries.append(_field(1, entry))
  return _field(1, b"".join(entries))


def _read_varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
  result = shift = 0
  while True:
    if pos >= end:
      raise _WireError("varint runs past the end of its message")
    b = buf[pos]
    pos += 1
    result |= (b & 0x7F) << shift
    if not b & 0x80:
      return result, pos
    shift += 7
    if shift > 63:
      raise _WireError("varint longer than 10 bytes")


def _iter_fields(buf: bytes, pos: int, end: int):
  """Yields (field_number, wire_type, value_or_(start, stop)) over one message."""
  while pos < end:
    tag, pos = _read_varint(buf, pos, end)
    number, wire = tag >> 3, tag & 7
    if wire == 2:
      size, pos = _read_varint(buf, pos, end)
      if pos + size > end:
        raise _WireError(f"field {number} claims {size} bytes, only {end - pos} left")
      yield number, wire, (pos, pos + size)
      pos += size
    elif wire == 0:
      value, pos = _read_varint(buf, pos, end)
      yield number, wire, value
    elif wire == 5:
      if pos + 4 > end:
        raise _WireError("truncated fixed32")
      yield number, wire, (pos, pos + 4)
      pos += 4
    elif wire == 1:
      if pos + 8 > end:
        raise _WireError("truncated fixed64")
      yield number, wire, (pos, pos + 8)
      pos += 8
    else:
      raise _WireError(f"unsupported wire type {wire} (field {number})")
  if pos != end:
    raise _WireError("message overruns its length")


def _to_int64(v: int) -> int:
  return v - (1 << 64) if v >= 1 << 63 else v


def _parse_feature(buf: bytes, start: int, end: int):
  """Returns (kind, values) for one Feature message."""
  kind, values = None, []
  for number, wire, val in _iter_fields(buf, start, end):
    if wire != 2 or number not in (1, 2, 3):
      continue
    kind = {1: "bytes", 2: "float", 3: "int64"}[number]
    values = []
    s, e = val
    for inner_no, inner_wire, inner in _iter_fields(buf, s, e):
      if inner_no != 1:
        continue
      if kind == "bytes" and inner_wire == 2:
        values.append(buf[inner[0]:inner[1]])
      elif kind == "float" and inner_wire == 2:  # packed
        if (inner[1] - inner[0]) % 4:
          raise _WireError("packed float list length is not a multiple of 4")
        values.extend(np.frombuffer(buf, "<f4", (inner[1] - inner[0]) // 4, inner[0]).tolist())
      elif kind == "float" and inner_wire == 5:
        values.append(struct.unpack_from("<f", buf, inner[0])[0])
      elif kind == "int64" and inner_wire == 2:  # packed
        p, pe = inner
        while p < pe:
          v, p = _read_varint(buf, p, pe)
          values.append(_to_int64(v))
      elif kind == "int64" and inner_wire == 0:
        values.append(_to_int64(inner))
      else:
        raise _WireError(f"{kind} list holds wire type {inner_wire}")
  return kind, values


def parse_example(data: bytes) -> dict[str, tuple[str, list]]:
  """Parses a serialized tf.train.Example into {key: (kind, values)}.

  Raises:
    ValueError: the bytes are not a well-formed Example.
  """
  data = bytes(data)
  out = {}
  for number, wire, val in _iter_fields(data, 0, len(data)):
    if number != 1 or wire != 2:
      continue
    for f_no, f_wire, f_val in _iter_fields(data, *val):  # Features
      if f_no != 1 or f_wire != 2:
        continue
      key, feature = None, None
      for e_no, e_wire, e_val in _iter_fields(data, *f_val):  # map entry
        if e_no == 1 and e_wire == 2:
          key = data[e_val[0]:e_val[1]].decode("utf-8")
        elif e_no == 2 and e_wire == 2:
          feature = _parse_feature(data, *e_val)
      if key is None:
        raise _WireError("feature map entry without a key")
      out[key] = feature if feature is not None else (None, [])
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


def unframe(path: str, index: Optional[int], offset: int, buf: bytes,
            expected_length: Optional[int] = None) -> bytes:
  """Checks one framed record (header + data + footer in `buf`) and returns its data.

  Raises:
    CorruptRecordError: bad length checksum, unexpected length, or bad data checksum.
  """
  if len(buf) < _HEADER:
    raise CorruptRecordError(path, index, offset, f"only {len(buf)} header bytes (truncated)")
  length_bytes = buf[:8]
  (length,) = struct.unpack("<Q", length_bytes)
  (length_crc,) = struct.unpack("<I", buf[8:12])
  if masked_crc(length_bytes) != length_crc:
    raise CorruptRecordError(path, index, offset, "length checksum mismatch")
  if expected_length is not None and length != expected_length:
    raise CorruptRecordError(path, index, offset,
                             f"length {length} differs from the index ({expected_length})")
  if len(buf) < _HEADER + length + _FOOTER:
    raise CorruptRecordError(path, index, offset, "record is cut short (truncated)")
  data = buf[_HEADER:_HEADER + length]
  (data_crc,) = struct.unpack("<I", buf[_HEADER + length:_HEADER + length + _FOOTER])
  if masked_crc(data) != data_crc:
    raise CorruptRecordError(path, index, offset, "data checksum mismatch")
  return bytes(data)


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
  file_size = _size(path)
  index = 0
  with _open(path, "rb") as f:
    pos = 0
    while pos < file_size:
      f.seek(pos)
      header = f.read(_HEADER)
      if len(header) < _HEADER:
        stats.truncated_shards.append(path)
        stats.note(f"{path}: truncated: {len(header)} stray bytes at offset {pos} after "
                   f"{index} records; the rest of the shard is lost")
        return
      (length,) = struct.unpack("<Q", header[:8])
      (length_crc,) = struct.unpack("<I", header[8:])
      if masked_crc(header[:8]) != length_crc:
        stats.corrupt += 1
        nxt = next((o for o in (offsets or ()) if o > pos), None)
        if nxt is None:
          stats.note(f"{path}: record {index} at byte {pos}: length checksum mismatch; cannot "
                     "find the next record, stopping this shard")
          return
        stats.note(f"{path}: record {index} at byte {pos}: length checksum mismatch; skipped")
        index = list(offsets).index(nxt)
        pos = nxt
        continue
      end = pos + _HEADER + length + _FOOTER
      if end > file_size:
        stats.truncated_shards.append(path)
        stats.note(f"{path}: truncated: record {index} at byte {pos} needs {length} bytes but "
                   f"the file ends at byte {file_size}; stopping this shard")
        return
      body = f.read(length + _FOOTER)
      data = body[:length]
      (data_crc,) = struct.unpack("<I", body[length:])
      if masked_crc(data) != data_crc:
        stats.corrupt += 1
        stats.note(f"{path}: record {index} at byte {pos}: data checksum mismatch; skipped")
      else:
        stats.records += 1
        yield index, pos, data
      pos = end
      index += 1


def scan_framing(path: str) -> tuple[list[int], list[int]]:
  """Walks the length headers of a shard (no data checksums) and returns offsets and lengths.

  Raises:
    CorruptRecordError: a damaged header or a record cut short.
  """
  offsets, lengths = [], []
  file_size = _size(path)
  with _open(path, "rb") as f:
    pos = 0
    while pos < file_size:
      f.seek(pos)
      header = f.read(_HEADER)
      if len(header) < _HEADER:
        raise CorruptRecordError(path, len(offsets), pos, "truncated header")
      (length,) = struct.unpack("<Q", header[:8])
      if masked_crc(header[:8]) != struct.unpack("<I", header[8:])[0]:
        raise CorruptRecordError(path, len(offsets), pos, "length checksum mismatch")
      if pos + _HEADER + length + _FOOTER > file_size:
        raise CorruptRecordError(path, len(offsets), pos, "record is cut short (truncated)")
      offsets.append(pos)
      lengths.append(length)
      pos += _HEADER + length + _FOOTER
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
  path = _join(dataset_dir, INFO_FILE)
  if not _exists(path):
    raise FileNotFoundError(f"{path} is missing; run `python -m svfap_jax prepare` into "
                            f"{dataset_dir} first")
  with _open(path) as f:
    return json.load(f)


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
