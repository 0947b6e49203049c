"""grain pipelines: sampling, sharding, views, padding, corrupt records, exact resume."""
import json
import os
import shutil

import cv2
import numpy as np
import pytest

from data_pipelines import grain_pipeline as gp
from data_pipelines import records
from data_pipelines import synthetic
from data_pipelines import video_io

# Frames per clip of the counter dataset; frame i of every clip is a flat image of value 8 * i,
# so the decoded value tells which frame was sampled.
LENGTHS = (20, 7, 13, 30, 5, 16, 12, 3, 25)
HEIGHT, WIDTH = 24, 32
T, RATE = 4, 3  # window of 12 frames


def _jpeg(value: int) -> bytes:
  ok, buf = cv2.imencode(".jpg", np.full((HEIGHT, WIDTH, 3), value, np.uint8),
                         [cv2.IMWRITE_JPEG_QUALITY, 95])
  assert ok
  return buf.tobytes()


def _write_counter_dataset(root: str, num_shards: int = 2) -> str:
  os.makedirs(root)
  for s, ids in enumerate(np.array_split(np.arange(len(LENGTHS)), num_shards)):
    path = os.path.join(root, records.shard_name("train", s, num_shards))
    with records.TFRecordWriter(path) as w:
      for k in ids:
        w.write(records.encode_clip(
            clip_id=f"c{k}", frames=[_jpeg(8 * i) for i in range(LENGTHS[k])], height=HEIGHT,
            width=WIDTH, fps=25.0, label=int(k % 3), values=[float(k), -float(k)]))
    records.write_json_atomic(path + records.INDEX_SUFFIX, {
        "format": records.INDEX_FORMAT, "num_records": len(ids), "offsets": w.offsets,
        "lengths": w.lengths, "labels": [int(k % 3) for k in ids]})
  records.write_json_atomic(os.path.join(root, records.INFO_FILE), {
      "format": records.FORMAT_NAME, "name": "counter", "label_names": ["a", "b", "c"],
      "num_classes": 3, "value_names": ["v0", "v1"], "preprocessing": {"short_side": HEIGHT},
      "splits": {"train": {"num_clips": len(LENGTHS)}}})
  return root


@pytest.fixture(scope="module")
def counter(tmp_path_factory):
  return _write_counter_dataset(str(tmp_path_factory.mktemp("counter") / "ds"))


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
  return synthetic.make_synthetic_dataset(str(tmp_path_factory.mktemp("faces")),
                                          num_clips_per_class=1, num_frames=16, size=40, seed=2)


def _pipe(kind, ds, batch_size=1, **kw):
  kw.setdefault("shard_index", 0)
  kw.setdefault("shard_count", 1)
  kw.setdefault("num_frames", T)
  kw.setdefault("sampling_rate", RATE)
  kw.setdefault("img_size", 16)
  return gp.make_pipeline(kind, ds, "train", batch_size=batch_size, **kw)


def _take(it, n):
  # Copies leave grain's shared-memory buffers free to be released.
  return [{k: np.array(v) for k, v in next(it).items()} for _ in range(n)]


def _frame_numbers(video: np.ndarray) -> np.ndarray:
  """(T, H, W, 3) flat frames -> the frame index each one shows."""
  return np.round(video.reshape(video.shape[0], -1).mean(1) / 8).astype(int)


def _flip_byte(dataset_dir: str, record: int) -> None:
  """Damages one record's payload (its checksum then fails)."""
  source = records.ClipDataSource(dataset_dir, "train")
  shard, _, offset = source.location(record)
  with open(shard, "r+b") as f:
    f.seek(offset + 40)
    b = f.read(1)
    f.seek(offset + 40)
    f.write(bytes([b[0] ^ 0x55]))


def test_metadata_and_options(counter):
  meta = gp.load_metadata(counter)
  assert meta.label_names == ("a", "b", "c") and meta.num_classes == 3
  assert meta.value_names == ("v0", "v1") and meta.num_values == 2 and meta.short_side == HEIGHT
  with pytest.raises(TypeError, match="unknown pipeline option"):
    _pipe("finetune", counter, bogus=1)
  with pytest.raises(ValueError, match="one centre view"):
    _pipe("eval", counter, num_segments=2)
  with pytest.raises(ValueError, match="kind"):
    _pipe("nope", counter)


def test_temporal_jitter_rate_and_short_clip_padding(counter):
  ds = _pipe("finetune", counter, num_epochs=3, train_crop_size=20)
  starts = {k: set() for k in range(len(LENGTHS))}
  batches = list(ds)
  assert len(batches) == 3 * len(LENGTHS)
  for b in batches:
    k = int(b["index"][0])
    n = LENGTHS[k]
    assert b["video"].shape == (1, T, 20, 20, 3) and b["video"].dtype == np.uint8
    assert b["label"].dtype == np.int32 and b["label"][0] == k % 3
    np.testing.assert_array_equal(b["values"][0], np.float32([k, -k]))
    got = _frame_numbers(b["video"][0])
    if n < T * RATE:  # the stride is kept and the last frame repeats
      np.testing.assert_array_equal(got, np.minimum(RATE * np.arange(T), n - 1))
    else:
      start = got[0]
      assert 0 <= start <= n - T * RATE
      np.testing.assert_array_equal(got, start + RATE * np.arange(T))
      starts[k].add(start)
  assert len(starts[3]) > 1  # the 30-frame clip is jittered across epochs


def test_eval_and_test_windows_views_and_padding(counter):
  ev = _pipe("eval", counter, batch_size=4)
  batches = list(ev)
  assert len(batches) == ev.num_batches == 3  # 9 clips -> 4 + 4 + 1 real rows
  mask = np.concatenate([b["mask"] for b in batches])
  assert mask.tolist() == [True] * 9 + [False] * 3
  for b in batches:
    for row in range(4):
      if not b["mask"][row]:
        assert b["id"][row] == "" and b["index"][row] == -1 and b["label"][row] == -1
        continue
      k = int(b["index"][row])
      assert b["id"][row] == f"c{k}"
      slack = max(LENGTHS[k] - T * RATE, 0)
      np.testing.assert_array_equal(_frame_numbers(b["video"][row]),
                                    np.minimum(slack // 2 + RATE * np.arange(T), LENGTHS[k] - 1))

  te = _pipe("test", counter, batch_size=5, num_segments=2, num_crops=3)
  views = {}
  batches = list(te)
  assert len(batches) == te.num_batches == -(-9 * 6 // 5)
  for b in batches:
    assert b["video"].shape == (5, T, 16, 16, 3)
    for row in np.flatnonzero(b["mask"]):
      views.setdefault(str(b["id"][row]), []).append(
          (int(b["view"][row]), _frame_numbers(b["video"][row])))
  assert sorted(views) == sorted(f"c{k}" for k in range(9))
  for clip_id, vs in views.items():
    n = LENGTHS[int(clip_id[1:])]
    assert sorted(v for v, _ in vs) == list(range(6))  # segments x crops
    slack = max(n - T * RATE, 0)
    for v, frames in vs:
      start = (0, slack)[v // 3]  # views are segment-major
      np.testing.assert_array_equal(frames, np.minimum(start + RATE * np.arange(T), n - 1))


def test_shards_are_disjoint_and_cover_the_epoch(counter):
  # Training: the two processes' rows of each global batch of 2 are the single-process stream.
  single = [int(b["index"][0]) for b in _pipe("finetune", counter, num_epochs=2,
                                              train_crop_size=16)]
  orders = []
  for shard in range(2):
    ds = _pipe("finetune", counter, num_epochs=2, shard_index=shard, shard_count=2,
               train_crop_size=16)
    orders.append([int(b["index"][0]) for b in ds])
  assert [k for pair in zip(*orders) for k in pair] == single
  # Within each epoch the processes read disjoint records that cover the split.
  n = len(LENGTHS)
  for epoch in range(2):
    seen = [{k for i, k in enumerate(orders[p]) if epoch * n <= 2 * i + p < (epoch + 1) * n}
            for p in range(2)]
    assert not seen[0] & seen[1] and seen[0] | seen[1] == set(range(n))
  # Evaluation: same batch count on both processes, real rows partition the split.
  evals = [list(_pipe("eval", counter, batch_size=2, shard_index=s, shard_count=2))
           for s in range(2)]
  assert len(evals[0]) == len(evals[1]) == 3
  ids = [[str(i) for b in e for i, m in zip(b["id"], b["mask"]) if m] for e in evals]
  assert len(ids[0]) == 5 and len(ids[1]) == 4
  assert sorted(ids[0] + ids[1]) == sorted(f"c{k}" for k in range(9))


def test_reshuffles_every_epoch_deterministically(counter):
  def order(seed):
    return [int(b["index"][0]) for b in _pipe("finetune", counter, num_epochs=3, seed=seed,
                                               train_crop_size=16)]
  a = order(0)
  epochs = [a[i * 9:(i + 1) * 9] for i in range(3)]
  assert all(sorted(e) == list(range(9)) for e in epochs)
  assert len({tuple(e) for e in epochs}) > 1
  assert order(0) == a and order(1) != a


@pytest.mark.parametrize("workers", [0, 2])
def test_exact_resume_in_a_new_pipeline(counter, workers):
  def make():
    return _pipe("finetune", counter, batch_size=2, seed=5, worker_count=workers,
                 train_crop_size=16)
  it = iter(make())
  _take(it, 3)
  state = json.loads(json.dumps(it.get_state()))  # what orbax's grain handler stores
  expected = _take(it, 5)
  it.close()
  resumed = iter(make())
  resumed.set_state(state)
  got = _take(resumed, 5)
  resumed.close()
  for e, g in zip(expected, got):
    assert e.keys() == g.keys()
    for k in e:
      np.testing.assert_array_equal(e[k], g[k], err_msg=k)


def test_corrupt_record_is_skipped_and_counted(counter, tmp_path):
  ds_dir = str(tmp_path / "bad")
  shutil.copytree(counter, ds_dir)
  _flip_byte(ds_dir, 4)
  # Training, decoded in a worker process: the record is skipped, the count reaches the trainer.
  it = iter(_pipe("finetune", ds_dir, num_epochs=1, shuffle=False, worker_count=1,
                  train_crop_size=16))
  idx = []
  for b in it:
    k = int(b["index"][0])
    idx.append(k)
    np.testing.assert_array_equal(b["values"][0], np.float32([k, -k]))
    assert np.all(np.diff(_frame_numbers(b["video"][0])) >= 0)
  assert sorted(idx) == [k for k in range(9) if k != 4]
  assert it.corrupt_records == 1 and it.get_state()["corrupt_records"] == 1
  it.close()
  # Evaluation: the row is masked out and counted; the other rows are intact.
  it = iter(_pipe("eval", ds_dir, batch_size=3))
  rows = [(str(i), bool(m)) for b in it for i, m in zip(b["id"], b["mask"])]
  assert it.corrupt_records == 1
  assert [r for r in rows if r[1]] == [(f"c{k}", True) for k in range(9) if k != 4]
  assert len(rows) == 9 and rows[4] == ("", False)


def test_pretrain_crops_and_repeated_views(faces):
  meta = gp.load_metadata(faces)
  source = records.ClipDataSource(faces, "train")
  # 16-frame clips and a 16-frame window (4 x rate 4): the window is fixed, so the fixed crop can
  # be checked pixel for pixel.
  ds = gp.make_pipeline("pretrain", faces, "train", batch_size=4, num_frames=4, sampling_rate=4,
                        img_size=32, shard_index=0, shard_count=1, num_views=2, num_epochs=1)
  batches = list(ds)
  assert len(batches) == (2 * len(source)) // 4
  for b in batches:
    assert b["video"].shape == (4, 4, 32, 32, 3) and b["values"].shape == (4, meta.num_values)
    assert b["index"][0] == b["index"][1] and b["index"][2] == b["index"][3]
    k = int(b["index"][0])
    frames = records.decode_frames(source[k]["frames"], [0, 4, 8, 12])
    np.testing.assert_array_equal(b["video"][0], gp.upper_centre_crop(frames, 32))
    assert frames.shape[1:3] == (40, 40)
    np.testing.assert_array_equal(b["video"][0], frames[:, :32, 4:36])
  ms = gp.make_pipeline("pretrain", faces, "train", batch_size=2, num_frames=4, sampling_rate=2,
                        img_size=24, shard_index=0, shard_count=1, pretrain_crop="multiscale",
                        num_epochs=1)
  b = next(iter(ms))
  assert b["video"].shape == (2, 4, 24, 24, 3) and b["video"].dtype == np.uint8


def test_multiscale_and_long_side_crop_geometry():
  rng = np.random.default_rng(0)
  sides = set()
  for _ in range(200):
    top, left, h, w = gp.multiscale_crop_box(176, 240, 160, rng)
    assert 0 <= top and top + h <= 176 and 0 <= left and left + w <= 240
    sides.add((h, w))
  steps = [176, 154, 132, 116]  # 1, .875, .75, .66 of the short side
  assert {(h, w) for h, w in sides} == {(h, w) for h in steps for w in steps
                                        if abs(steps.index(h) - steps.index(w)) <= 1}
  # A side within 3 pixels of the output size is snapped to it.
  assert gp.multiscale_crop_box(182, 182, 160, np.random.default_rng(1), scales=(0.875,))[2:] == (
      160, 160)
  frames = np.arange(2 * 10 * 16 * 3, dtype=np.uint16).reshape(2, 10, 16, 3).astype(np.uint8)
  crops = gp.long_side_crops(frames, 10, 3)
  assert [c.shape for c in crops] == [(2, 10, 10, 3)] * 3
  np.testing.assert_array_equal(crops[0], frames[:, :, 0:10])
  np.testing.assert_array_equal(crops[1], frames[:, :, 3:13])
  np.testing.assert_array_equal(crops[2], frames[:, :, 6:16])
  assert video_io.resize_short_side(frames, 5).shape == (2, 5, 8, 3)
