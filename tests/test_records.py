"""Record format: CRC, Example codec, TFRecord framing, TensorFlow compatibility, readers."""
import os
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pytest

from data_pipelines import records
from data_pipelines import synthetic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  root = tmp_path_factory.mktemp("syn")
  return synthetic.make_synthetic_dataset(str(root), num_clips_per_class=2, num_frames=16,
                                          size=64, seed=3, num_shards=2)


def _copy(dataset, tmp_path):
  dst = tmp_path / "copy"
  shutil.copytree(dataset, dst)
  return str(dst)


def _crc32c_bitwise(data: bytes) -> int:
  """Reference CRC-32C, one bit at a time from the reflected Castagnoli polynomial."""
  crc = 0xFFFFFFFF
  for byte in data:
    crc ^= byte
    for _ in range(8):
      crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
  return crc ^ 0xFFFFFFFF


def test_crc32c_known_values_and_reference():
  assert records.crc32c(b"") == 0
  assert records.crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
  # RFC 3720 (iSCSI) B.4 vectors.
  assert records.crc32c(bytes(32)) == 0x8A9136AA
  assert records.crc32c(b"\xff" * 32) == 0x62A8AB43
  assert records.crc32c(bytes(range(32))) == 0x46DD794E
  rng = np.random.default_rng(0)
  for n in (1, 7, 1023, 4099):
    data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
    assert records.crc32c(data) == _crc32c_bitwise(data), n
    assert records.crc32c(memoryview(data)) == records.crc32c(bytearray(data)) == records.crc32c(data)


def test_framing_with_google_crc32c_pure_python_fallback(tmp_path, monkeypatch):
  """Without its C extension google_crc32c runs its own Python code; records stay the same."""
  import google_crc32c.python  # pylint: disable=import-outside-toplevel
  data = records.encode_clip(clip_id="c", frames=[b"\xff\xd8" + bytes(range(256)) * 9],
                             height=2, width=2, fps=25.0)
  framed = records.frame_record(data)
  monkeypatch.setattr(records, "google_crc32c", google_crc32c.python)
  assert records.frame_record(data) == framed
  assert records.unframe("x", 0, 0, framed) == data
  path = str(tmp_path / "one.tfrecord")
  with open(path, "wb") as f:
    f.write(framed + framed[:-1])
  stats = records.ReadStats()
  assert [d for _, _, d in records.iter_shard(path, stats)] == [data]
  assert stats.truncated_shards == [path]
  damaged = bytearray(framed)
  damaged[20] ^= 1
  with pytest.raises(records.CorruptRecordError, match="data checksum"):
    records.unframe("x", 0, 0, bytes(damaged))


def test_example_codec_round_trip():
  data = records.encode_clip(clip_id="a/b c", frames=[b"\xff\xd8one", b"two"], height=3, width=4,
                             fps=29.97, label=-1, values=[0.5, -0.25], source="x/a b.mp4")
  clip = records.decode_clip(data)
  assert clip["id"] == "a/b c" and clip["frames"] == [b"\xff\xd8one", b"two"]
  assert (clip["num_frames"], clip["height"], clip["width"], clip["label"]) == (2, 3, 4, -1)
  assert clip["fps"] == pytest.approx(29.97, rel=1e-6)
  np.testing.assert_array_equal(clip["values"], np.float32([0.5, -0.25]))
  empty = records.decode_clip(records.encode_clip(clip_id="z", frames=[b"f"], height=1, width=1,
                                                  fps=25.0, label=3))
  assert empty["values"].shape == (0,) and empty["label"] == 3
  with pytest.raises(ValueError):
    records.decode_clip(data[:-5])


def test_example_codec_edge_values_and_errors():
  features = {
      "z/int": ("int64", [-1, 0, 300, 2**63 - 1, -2**63]),
      "a/float": ("float", [1.5, -0.0, float("inf"), 0.1]),
      "m/bytes": ("bytes", [b"", b"\x00" * 300, "é".encode()]),
      "empty/bytes": ("bytes", []), "empty/float": ("float", []), "empty/int": ("int64", []),
      "ключ": ("bytes", [b"k"]),
  }
  data = records.encode_example(features)
  # Stable bytes: insertion order of the dict does not matter.
  assert records.encode_example(dict(reversed(list(features.items())))) == data
  back = records.parse_example(data)
  assert back.keys() == features.keys()
  for key, (kind, values) in features.items():
    assert back[key][0] == kind, key  # empty lists keep their kind
    if kind == "float":
      np.testing.assert_array_equal(back[key][1], np.float32(values))
    else:
      assert back[key][1] == values, key
  assert records.parse_example(b"") == {}
  assert records.parse_example(records.encode_example({})) == {}
  for bad in (b"\x0a\x05\x0a", b"\xff", data[:-3]):
    with pytest.raises(ValueError, match="not a well-formed tf.train.Example"):
      records.parse_example(bad)
  with pytest.raises(ValueError, match="'a'.*out of range"):
    records.encode_example({"a": ("int64", [2**63])})
  with pytest.raises(TypeError, match="'a' \\(bytes\\)"):
    records.encode_example({"a": ("bytes", ["text"])})
  with pytest.raises(ValueError, match="kind 'str'"):
    records.encode_example({"a": ("str", [b"x"])})


def test_example_messages_match_tensorflow_schema():
  """Same field numbers, types, labels and packing as tf.train.Example, under another package."""
  tf = pytest.importorskip("tensorflow")
  from google.protobuf import descriptor_pool  # pylint: disable=import-outside-toplevel
  from data_pipelines.proto import example_pb2  # pylint: disable=import-outside-toplevel

  def fields(message):
    out = {}
    for f in message.fields:
      out[f.name] = (f.number, f.type, f.is_repeated, f.is_packed,
                     f.containing_oneof.name if f.containing_oneof else None,
                     f.message_type.name if f.message_type else None)
    return out

  pending, seen = [(example_pb2.Example.DESCRIPTOR, tf.train.Example.DESCRIPTOR)], set()
  while pending:
    ours, theirs = pending.pop()
    if ours.name in seen:
      continue
    seen.add(ours.name)
    assert ours.name == theirs.name and fields(ours) == fields(theirs), ours.name
    assert ours.GetOptions().map_entry == theirs.GetOptions().map_entry
    pending += [(a.message_type, b.message_type) for a, b in zip(ours.fields, theirs.fields)
                if a.message_type]
  assert seen == {"Example", "Features", "FeatureEntry", "Feature", "BytesList", "FloatList",
                  "Int64List"}
  pool = descriptor_pool.Default()  # both registered side by side, whichever came first
  assert pool.FindMessageTypeByName("tensorflow.Example").file.name != \
      pool.FindMessageTypeByName("svfap.records.Example").file.name


def test_generated_modules_match_proto_sources(tmp_path):
  """The checked-in *_pb2.py modules are the compiled .proto files (needs a protobuf compiler)."""
  from google.protobuf import descriptor_pb2  # pylint: disable=import-outside-toplevel
  from data_pipelines.proto import example_pb2  # pylint: disable=import-outside-toplevel
  from data_pipelines.proto import feature_pb2  # pylint: disable=import-outside-toplevel
  try:
    import grpc_tools  # pylint: disable=import-outside-toplevel,unused-import
    protoc = [sys.executable, "-m", "grpc_tools.protoc"]
  except ImportError:
    if shutil.which("protoc") is None:
      pytest.skip("no protobuf compiler (grpcio-tools or protoc)")
    protoc = ["protoc"]
  out = tmp_path / "set.pb"
  subprocess.run(protoc + ["--proto_path=.", f"--descriptor_set_out={out}",
                           "data_pipelines/proto/feature.proto",
                           "data_pipelines/proto/example.proto"], cwd=REPO, check=True)
  compiled = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())

  def drop_json_names(messages):  # descriptor sets carry them, generated modules leave them out
    for m in messages:
      for f in m.field:
        f.ClearField("json_name")
      drop_json_names(m.nested_type)

  for module, want in zip((feature_pb2, example_pb2), compiled.file):
    drop_json_names(want.message_type)
    have = descriptor_pb2.FileDescriptorProto.FromString(module.DESCRIPTOR.serialized_pb)
    assert have == want, f"{module.__name__} is stale: run data_pipelines/proto/regenerate.sh"


def test_general_examples_are_byte_compatible_with_tensorflow():
  """Examples beyond the clip schema (empty lists, extreme ints, odd keys) both ways."""
  tf = pytest.importorskip("tensorflow")
  tf_example = tf.train.Example(features=tf.train.Features(feature={
      "ids": tf.train.Feature(int64_list=tf.train.Int64List(value=[-2**63, -1, 2**63 - 1])),
      "scores": tf.train.Feature(float_list=tf.train.FloatList(value=[0.1, -3e38, 1e-40])),
      "blobs": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"", b"\x00\xff" * 99])),
      "none/float": tf.train.Feature(float_list=tf.train.FloatList()),
      "none/bytes": tf.train.Feature(bytes_list=tf.train.BytesList()),
      "unset": tf.train.Feature(),
      "ключ/名": tf.train.Feature(int64_list=tf.train.Int64List(value=[7])),
  }))
  theirs = tf_example.SerializeToString(deterministic=True)
  parsed = records.parse_example(theirs)
  assert parsed["unset"] == (None, [])
  assert parsed["ids"] == ("int64", [-2**63, -1, 2**63 - 1])
  np.testing.assert_array_equal(parsed["scores"][1], np.float32([0.1, -3e38, 1e-40]))
  assert parsed["none/float"] == ("float", []) and parsed["none/bytes"] == ("bytes", [])
  ours = records.encode_example({k: v for k, v in parsed.items() if k != "unset"})
  del tf_example.features.feature["unset"]
  assert ours == tf_example.SerializeToString(deterministic=True)
  assert tf.train.Example.FromString(ours) == tf_example


def test_records_parse_with_tensorflow(dataset):
  tf = pytest.importorskip("tensorflow")
  shard = records.find_shards(dataset, "train")[0]
  raw = [d for _, _, d in records.iter_shard(shard)]
  # Our bytes are exactly what TensorFlow's own deterministic serializer produces.
  example = tf.train.Example.FromString(raw[0])
  assert example.SerializeToString(deterministic=True) == raw[0]
  ours = records.decode_clip(raw[0])
  feats = example.features.feature
  assert feats["clip/id"].bytes_list.value[0].decode() == ours["id"]
  assert list(feats["clip/frames"].bytes_list.value) == ours["frames"]
  spec = {
      "clip/id": tf.io.FixedLenFeature([], tf.string),
      "clip/frames": tf.io.VarLenFeature(tf.string),
      "clip/num_frames": tf.io.FixedLenFeature([], tf.int64),
      "clip/height": tf.io.FixedLenFeature([], tf.int64),
      "clip/width": tf.io.FixedLenFeature([], tf.int64),
      "clip/fps": tf.io.FixedLenFeature([], tf.float32),
      "label/class": tf.io.FixedLenFeature([], tf.int64),
      "label/values": tf.io.VarLenFeature(tf.float32),
      "clip/source": tf.io.FixedLenFeature([], tf.string),
  }
  ds = tf.data.TFRecordDataset(records.find_shards(dataset, "train")).batch(64)
  batch = tf.io.parse_example(next(iter(ds)), spec)
  source = records.ClipDataSource(dataset, "train")
  assert batch["clip/id"].shape[0] == len(source)
  for i in range(len(source)):
    clip = source[i]
    assert batch["clip/id"][i].numpy().decode() == clip["id"]
    assert int(batch["label/class"][i]) == clip["label"]
    assert int(batch["clip/num_frames"][i]) == clip["num_frames"]
  values = tf.sparse.to_dense(batch["label/values"]).numpy()
  np.testing.assert_allclose(values[0], source[0]["values"])
  frame0 = tf.io.decode_jpeg(tf.sparse.to_dense(batch["clip/frames"])[0, 0],
                             dct_method="INTEGER_ACCURATE").numpy()
  np.testing.assert_array_equal(frame0, records.decode_frames(source[0]["frames"][:1])[0])
  # And a TFRecord written by TensorFlow reads back through our framing code.
  tf_path = os.path.join(os.path.dirname(dataset), "tf_written.tfrecord")
  with tf.io.TFRecordWriter(tf_path) as w:
    w.write(raw[1])
  assert [d for _, _, d in records.iter_shard(tf_path)] == [raw[1]]


def test_data_source_random_access_and_pickle(dataset):
  import grain.python as grain  # pylint: disable=import-outside-toplevel
  source = records.ClipDataSource(dataset, "train")
  assert isinstance(source, grain.RandomAccessDataSource)
  assert len(source) == 7 and len(records.ClipDataSource(dataset, "test")) == 7
  seq = list(records.iter_clips(dataset, "train"))
  assert [c["id"] for c in seq] == [source[i]["id"] for i in range(len(source))]
  assert sorted(source.labels.tolist()) == list(range(7))
  clone = pickle.loads(pickle.dumps(source))
  assert clone[3]["frames"] == source[3]["frames"] and "ClipDataSource(" in repr(clone)
  with pytest.raises(IndexError):
    source[len(source)]
  frames = records.decode_frames(source[0]["frames"], indices=[0, 5, 5, 2])
  assert frames.shape == (4, 64, 64, 3) and frames.dtype == np.uint8
  np.testing.assert_array_equal(frames[1], frames[2])


def _flip_byte_in_record(dataset, split, shard_no, record_no):
  shard = records.find_shards(dataset, split)[shard_no]
  index = records.read_index(shard)
  pos = index["offsets"][record_no] + 12 + index["lengths"][record_no] // 2
  with open(shard, "r+b") as f:
    f.seek(pos)
    b = f.read(1)
    f.seek(pos)
    f.write(bytes([b[0] ^ 0x40]))
  return shard


def test_flipped_byte_is_a_crc_error_and_is_skipped(dataset, tmp_path):
  from svfap_jax import data  # pylint: disable=import-outside-toplevel
  ds = _copy(dataset, tmp_path)
  clean_ids = [c["id"] for c in data.read_clips(dataset, "train")]
  shard = _flip_byte_in_record(ds, "train", 0, 1)
  source = records.ClipDataSource(ds, "train")
  bad = [i for i in range(len(source)) if source.location(i)[:2] == (shard, 1)][0]
  with pytest.raises(records.CorruptRecordError) as err:
    source[bad]
  assert shard in str(err.value) and "record 1" in str(err.value)
  assert "checksum" in err.value.reason
  for i in range(len(source)):  # the rest is intact
    if i != bad:
      assert source[i]["num_frames"] == 16
  bad_id = records.ClipDataSource(dataset, "train")[bad]["id"]
  stats = data.ReadStats()
  clips = list(data.read_clips(ds, "train", stats))
  assert stats.corrupt == 1 and stats.records == len(clean_ids) - 1
  assert [c["id"] for c in clips] == [x for x in clean_ids if x != bad_id]
  assert all(c["frames"].shape == (16, 64, 64, 3) for c in clips)


def test_damaged_length_header_resyncs_with_the_index(dataset, tmp_path):
  ds = _copy(dataset, tmp_path)
  shard = records.find_shards(ds, "train")[0]
  index = records.read_index(shard)
  with open(shard, "r+b") as f:
    f.seek(index["offsets"][1] + 2)
    f.write(b"\x7f")
  stats = records.ReadStats()
  ids = [c["id"] for c in records.iter_clips(ds, "train", stats)]
  assert stats.corrupt == 1 and len(ids) == 6
  assert any("length checksum" in p for p in stats.problems)


def test_truncated_shard_is_reported_and_reading_goes_on(dataset, tmp_path, caplog):
  ds = _copy(dataset, tmp_path)
  shard = records.find_shards(ds, "train")[0]
  index = records.read_index(shard)
  with open(shard, "r+b") as f:
    f.truncate(index["offsets"][-1] + 100)  # cut inside the last record
  stats = records.ReadStats()
  with caplog.at_level("WARNING"):
    clips = list(records.iter_clips(ds, "train", stats))
  assert stats.truncated_shards == [shard]
  assert len(clips) == 7 - 1 and stats.corrupt == 0
  assert "truncated" in caplog.text
  source = records.ClipDataSource(ds, "train")
  last = [i for i in range(len(source)) if source.location(i)[:2] ==
          (shard, index["num_records"] - 1)][0]
  with pytest.raises(records.CorruptRecordError, match="truncated"):
    source[last]


def test_missing_shard_and_index_errors_are_clear(dataset, tmp_path):
  ds = _copy(dataset, tmp_path)
  with pytest.raises(FileNotFoundError, match="no shards 'val"):
    records.ClipDataSource(ds, "val")
  os.remove(records.find_shards(ds, "train")[1] + records.INDEX_SUFFIX)
  with pytest.raises(FileNotFoundError, match="re-run prepare"):
    records.ClipDataSource(ds, "train")
  os.remove(records.find_shards(ds, "test")[1])
  with pytest.raises(FileNotFoundError, match="lacks shard"):
    records.find_shards(ds, "test")


def test_data_module_is_light_and_reads_clips(dataset):
  code = ("import sys, svfap_jax.data as d; "
          "heavy = [m for m in ('tensorflow', 'cv2', 'tensorflow_datasets', 'torch') "
          "if m in sys.modules]; print(heavy)")
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": REPO}, check=True)
  assert out.stdout.strip() == "[]", out.stdout + out.stderr
  from svfap_jax import data  # pylint: disable=import-outside-toplevel
  clips = list(data.read_clips(dataset, "test"))
  assert len(clips) == 7
  c = clips[0]
  assert set(c) == {"id", "frames", "label", "values"}
  assert c["frames"].dtype == np.uint8 and c["frames"].shape == (16, 64, 64, 3)
  assert isinstance(c["label"], int) and c["values"].dtype == np.float32
  assert data.load_info(dataset)["label_names"] == list(synthetic.EMOTIONS)


def test_url_datasets_read_through_epath(dataset, monkeypatch):
  """Dataset dirs given as URLs (gs://...) are read with etils.epath, never os-level calls.

  Treating a local directory as a URL sends every read (info, shard listing, indices, framing
  scans and ranged record reads) down the epath branch; the clips must come out identical.
  """
  local = records.ClipDataSource(dataset, "train")
  expected = [local[i] for i in range(len(local))]
  expected_scan = [records.scan_framing(s) for s in records.find_shards(dataset, "train")]
  monkeypatch.setattr(records, "is_local", lambda path: False)
  monkeypatch.setattr(os, "pread", None)  # the local fast path would now fail
  assert records.load_info(dataset)["splits"]["train"]["num_clips"] == len(expected)
  remote = pickle.loads(pickle.dumps(records.ClipDataSource(dataset, "train")))
  got = [remote[i] for i in range(len(remote))]
  assert [g["id"] for g in got] == [e["id"] for e in expected]
  assert all(g["frames"] == e["frames"] and g["label"] == e["label"] for g, e in zip(got, expected))
  assert [records.scan_framing(s) for s in records.find_shards(dataset, "train")] == expected_scan


def _hand_shard(path, payloads):
  with records.TFRecordWriter(str(path)) as w:
    for p in payloads:
      w.write(p)
  return str(path), list(w.offsets), list(w.lengths)


def test_framing_readers_share_one_walk(tmp_path):
  """scan_framing, iter_shard and unframe read the same framing and name the same faults."""
  payloads = [b"a" * 10, b"", b"xyz" * 50, b"q"]
  path, offsets, lengths = _hand_shard(tmp_path / "s", payloads)
  # Independent layout: each record is 12 header bytes, its data and a 4-byte footer.
  want = list(np.cumsum([0] + [12 + len(p) + 4 for p in payloads[:-1]]))
  assert offsets == want and records.scan_framing(path) == (want, [len(p) for p in payloads])
  assert [(i, o, d) for i, o, d in records.iter_shard(path)] == [
      (i, o, p) for i, (o, p) in enumerate(zip(want, payloads))]
  raw = open(path, "rb").read()
  for i, (o, p) in enumerate(zip(want, payloads)):
    assert records.unframe(path, i, o, raw[o:o + 16 + len(p)], len(p)) == p
  # A damaged data byte: the headers still scan, the sequential reader skips that record only.
  damaged = bytearray(raw)
  damaged[want[2] + 12 + 5] ^= 0xFF
  (tmp_path / "d").write_bytes(bytes(damaged))
  assert records.scan_framing(str(tmp_path / "d")) == records.scan_framing(path)
  stats = records.ReadStats()
  assert [i for i, _, _ in records.iter_shard(str(tmp_path / "d"), stats)] == [0, 1, 3]
  assert stats.corrupt == 1 and "record 2 at byte" in stats.problems[0]
  with pytest.raises(records.CorruptRecordError, match="data checksum mismatch"):
    records.unframe(path, 2, want[2], bytes(damaged[want[2]:want[3]]))
  # A damaged length header: scanning stops there; reading resumes at the next indexed record.
  bad_len = bytearray(raw)
  bad_len[want[1] + 3] ^= 0x01
  (tmp_path / "h").write_bytes(bytes(bad_len))
  with pytest.raises(records.CorruptRecordError, match="length checksum") as err:
    records.scan_framing(str(tmp_path / "h"))
  assert err.value.index == 1 and err.value.offset == want[1]
  stats = records.ReadStats()
  assert [i for i, _, _ in records.iter_shard(str(tmp_path / "h"), stats, want)] == [0, 2, 3]
  stats = records.ReadStats()
  assert [i for i, _, _ in records.iter_shard(str(tmp_path / "h"), stats)] == [0]
  assert "cannot find the next record" in stats.problems[0]
  # Cut inside the last record, and inside a header.
  for cut, reason, index in ((len(raw) - 2, "cut short", 3), (want[3] + 5, "truncated", 3)):
    (tmp_path / "t").write_bytes(raw[:cut])
    with pytest.raises(records.CorruptRecordError, match=reason) as err:
      records.scan_framing(str(tmp_path / "t"))
    assert err.value.index == index
    stats = records.ReadStats()
    assert len(list(records.iter_shard(str(tmp_path / "t"), stats))) == 3
    assert stats.truncated_shards == [str(tmp_path / "t")]


def test_dataset_info_has_one_reader(dataset, tmp_path):
  from svfap_jax.train import config_check  # pylint: disable=import-outside-toplevel
  info = records.load_info(dataset)
  assert config_check.read_dataset_info(dataset) == info
  bad = tmp_path / "bad"
  bad.mkdir()
  with pytest.raises(FileNotFoundError, match="prepare"):
    records.load_info(str(bad))
  with pytest.raises(config_check.ConfigError, match="has no dataset_info.json"):
    config_check.read_dataset_info(str(bad))
  for text, why in (('{"splits": ', "not readable JSON"), ("[1, 2]", "not an object")):
    (bad / records.INFO_FILE).write_text(text)
    with pytest.raises(ValueError, match=why) as err:
      records.load_info(str(bad))
    assert records.INFO_FILE in str(err.value)
    with pytest.raises(config_check.ConfigError, match=f"data.dir=.*{why}"):
      config_check.read_dataset_info(str(bad))
