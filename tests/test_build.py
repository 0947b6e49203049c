"""`prepare`: round trip, bad inputs, resume, determinism across workers, face crop, recipes."""
import glob
import json
import os
import pickle
import shutil

import cv2
import numpy as np
import pytest

from data_pipelines import build
from data_pipelines import face_crop
from data_pipelines import recipes
from data_pipelines import records
from data_pipelines import synthetic
from data_pipelines import video_io

LABELS = ",".join(synthetic.EMOTIONS)


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
  """7 synthetic clips (one per class), 16 frames of 64 px, as frame folders and mp4 files."""
  root = tmp_path_factory.mktemp("raw")
  return synthetic.write_dataset(str(root), num_clips_per_class=1, num_frames=16, size=64, seed=1)


def _frames(raw, i):
  return os.path.join(raw["root"], "Clip", "frames", f"{i:05d}")


def _video(raw, i):
  return os.path.join(raw["root"], "Clip", "original", f"{i:05d}.mp4")


def _prepare(argv):
  code = build.main(list(argv) + ["--quiet"])
  out = argv[argv.index("--out") + 1]
  report_path = os.path.join(out, build.REPORT_FILE)
  report = json.load(open(report_path)) if os.path.exists(report_path) else None
  return code, report


def _write_list(path, lines):
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")
  return str(path)


# ------------------------------------------------------------------------------------------------


def test_round_trip_frames_and_videos(raw, tmp_path):
  spaced = tmp_path / "with space" / "clip 1"
  shutil.copytree(_frames(raw, 3), spaced)
  lst = _write_list(tmp_path / "train.csv", [
      f"{_frames(raw, 1)} 0", f"{_video(raw, 2)} 1", "with space/clip 1 2"])  # relative path
  va = _write_list(tmp_path / "va.csv", [f"{_frames(raw, 1)} 0.5 -0.25"])
  out = str(tmp_path / "out")
  code, report = _prepare(["--list", lst, "--split", "train", "--regression", f"train={va}",
                           "--out", out, "--label-names", LABELS, "--short-side", "48"])
  assert code == 0 and report["written"] == 3 and report["skipped"] == []
  clips = {c["source"]: c for c in (records.ClipDataSource(out, "train")[i] for i in range(3))}
  expected = {
      _frames(raw, 1): np.stack([cv2.cvtColor(cv2.imread(p), cv2.COLOR_BGR2RGB)
                                 for p in video_io.list_frame_files(_frames(raw, 1))]),
      _video(raw, 2): np.stack(video_io.read_video(_video(raw, 2)).frames),
      str(spaced): np.stack([cv2.cvtColor(cv2.imread(p), cv2.COLOR_BGR2RGB)
                             for p in video_io.list_frame_files(str(spaced))]),
  }
  labels = {_frames(raw, 1): 0, _video(raw, 2): 1, str(spaced): 2}
  for source, original in expected.items():
    clip = clips[source]
    got = records.decode_frames(clip["frames"])
    want = np.stack([video_io.resize_short_side(f, 48) for f in original])
    assert got.shape == want.shape == (16, 48, 48, 3)
    # Stored frames are exactly the resized originals JPEG-encoded at quality 90 ...
    assert clip["frames"] == [build.encode_jpeg(f, 90) for f in want], source
    # ... so they differ from them only by that encode: under 2/255 on average in luma (colour
    # is subsampled 2x by JPEG, which costs more on these saturated drawn edges at 48 px).
    luma = lambda x: x.astype(np.float32) @ np.float32([0.299, 0.587, 0.114])
    assert np.abs(luma(got) - luma(want)).mean() < 2.0, source
    assert np.abs(got.astype(np.int16) - want).mean() < 6.0, source
    assert clip["label"] == labels[source]
  np.testing.assert_allclose(clips[_frames(raw, 1)]["values"], [0.5, -0.25])
  # Clips the regression list misses keep their class, with NaN values, and are reported.
  assert clips[_video(raw, 2)]["values"].shape == (2,)
  assert np.isnan(clips[_video(raw, 2)]["values"]).all()
  assert sorted(m["source"] for m in report["missing_values"]) == [f"{lst}:2", f"{lst}:3"]
  info = records.load_info(out)
  assert info["label_names"] == list(synthetic.EMOTIONS)
  assert info["splits"]["train"]["num_clips"] == 3
  assert info["splits"]["train"]["num_frames"] == {"min": 16.0, "mean": 16.0, "max": 16.0}
  assert info["preprocessing"]["short_side"] == 48 and info["preprocessing"]["jpeg_quality"] == 90
  assert info["splits"]["train"]["class_counts"] == {"happy": 1, "sad": 1, "neutral": 1}


def test_fps_resampling_and_max_frames(raw, tmp_path):
  lst = _write_list(tmp_path / "l.csv", [f"{_video(raw, 1)} 0", f"{_frames(raw, 2)} 1"])
  out = str(tmp_path / "out")
  code, _ = _prepare(["--list", f"train={lst}", "--out", out, "--fps", "12.5", "--short-side",
                      "32"])
  assert code == 0
  source = records.ClipDataSource(out, "train")
  assert [source[i]["num_frames"] for i in range(2)] == [8, 8]
  assert [source[i]["fps"] for i in range(2)] == [12.5, 12.5]
  assert records.read_index(records.find_shards(out, "train")[0])["source_fps"] == [25.0, 25.0]
  out2 = str(tmp_path / "out2")
  assert _prepare(["--list", lst, "--out", out2, "--max-frames", "5", "--short-side", "32"])[0] == 0
  assert records.ClipDataSource(out2, "train")[1]["num_frames"] == 5


# ------------------------------------------------------------------------------------------------
# Bad inputs: skipped and reported; --strict stops at the first with the path and the reason.


def _check_bad_input(raw, tmp_path, capsys, bad_line, bad_source, reason, extra=()):
  lst = _write_list(tmp_path / "list.csv", [f"{_frames(raw, 1)} 0", bad_line])
  out = str(tmp_path / "out")
  code, report = _prepare(["--list", f"train={lst}", "--out", out, *extra])
  assert code == 0
  assert report["written"] == 1 and report["splits"] == {"train": 1}
  assert len(report["skipped"]) == 1, report["skipped"]
  skip = report["skipped"][0]
  assert bad_source in f"{skip['source']} {skip['reason']}" and reason in skip["reason"], skip
  assert len(records.ClipDataSource(out, "train")) == 1
  capsys.readouterr()
  code, _ = _prepare(["--list", f"train={lst}", "--out", str(tmp_path / "strict"), "--strict",
                      *extra])
  err = capsys.readouterr().err
  assert code != 0
  assert bad_source in err and reason in err, err


def test_bad_input_truncated_mp4(raw, tmp_path, capsys):
  bad = tmp_path / "cut.mp4"
  data = open(_video(raw, 2), "rb").read()
  bad.write_bytes(data[:len(data) // 2])
  _check_bad_input(raw, tmp_path, capsys, f"{bad} 1", str(bad), "truncated")


def test_bad_input_zero_length_file(raw, tmp_path, capsys):
  bad = tmp_path / "empty.mp4"
  bad.write_bytes(b"")
  _check_bad_input(raw, tmp_path, capsys, f"{bad} 1", str(bad), "empty file (0 bytes)")


def test_bad_input_missing_frame_folder(raw, tmp_path, capsys):
  bad = tmp_path / "no_such_clip"
  _check_bad_input(raw, tmp_path, capsys, f"{bad} 1", str(bad), "missing")


def test_bad_input_unreadable_jpeg(raw, tmp_path, capsys):
  folder = tmp_path / "broken_clip"
  shutil.copytree(_frames(raw, 2), folder)
  victim = sorted(glob.glob(str(folder / "*.jpg")))[3]
  with open(victim, "wb") as f:
    f.write(b"this is not a jpeg")
  _check_bad_input(raw, tmp_path, capsys, f"{folder} 1", victim, "unreadable image")


def test_bad_input_label_out_of_range(raw, tmp_path, capsys):
  _check_bad_input(raw, tmp_path, capsys, f"{_frames(raw, 2)} 9", "list.csv:2",
                   "label 9 out of range", extra=("--label-names", LABELS))


def test_bad_input_line_without_label(raw, tmp_path, capsys):
  _check_bad_input(raw, tmp_path, capsys, _frames(raw, 2), "list.csv:2", "has no label")


def test_strict_reports_the_first_bad_input(raw, tmp_path, capsys):
  lst = _write_list(tmp_path / "l.csv", [f"{_frames(raw, 1)} 0", f"{tmp_path}/gone_a 1",
                                        f"{tmp_path}/gone_b 1"])
  code, _ = _prepare(["--list", lst, "--out", str(tmp_path / "o"), "--strict"])
  err = capsys.readouterr().err
  assert code == 2 and "gone_a" in err and "gone_b" not in err


# ------------------------------------------------------------------------------------------------


def _shard_stats(out):
  return {os.path.basename(p): (os.stat(p).st_mtime_ns, os.stat(p).st_ino, open(p, "rb").read())
          for p in sorted(glob.glob(os.path.join(out, "*.tfrecord-*")))}


def test_resume_keeps_finished_shards_and_completes_the_rest(raw, tmp_path):
  lst = _write_list(tmp_path / "l.csv", [f"{_frames(raw, i)} {i - 1}" for i in range(1, 8)])
  out = str(tmp_path / "out")
  argv = ["--list", lst, "--out", out, "--num-shards", "3", "--short-side", "32"]
  assert _prepare(argv)[0] == 0
  first = _shard_stats(out)
  names = [records.shard_name("train", i, 3) for i in range(3)]
  os.remove(os.path.join(out, names[1]))                               # lost shard
  os.remove(os.path.join(out, names[1] + records.INDEX_SUFFIX))
  with open(os.path.join(out, names[2]), "r+b") as f:                  # interrupted write
    f.truncate(os.path.getsize(os.path.join(out, names[2])) - 10)
  with open(os.path.join(out, names[0] + ".tmp-999"), "wb") as f:      # stray temporary
    f.write(b"junk")
  code, report = _prepare(argv)
  assert code == 0
  after = _shard_stats(out)
  assert report["shards"]["kept"] == [names[0]]
  assert sorted(report["shards"]["written"]) == sorted(names[1:])
  assert after[names[0]][:2] == first[names[0]][:2]  # untouched: same mtime and inode
  assert after[names[0] + records.INDEX_SUFFIX][:2] == first[names[0] + records.INDEX_SUFFIX][:2]
  for name in names:
    assert after[name][2] == first[name][2]  # and everything ends up byte-identical
  assert not glob.glob(os.path.join(out, "*.tmp-*"))
  assert report["written"] == 7 and len(records.ClipDataSource(out, "train")) == 7
  # A third run has nothing to do.
  code, report = _prepare(argv)
  assert report["shards"]["written"] == [] and report["newly_encoded"] == 0
  # Another shard count replaces the old set.
  code, report = _prepare(argv[:-4] + ["--num-shards", "2", "--short-side", "32"])
  assert sorted(os.path.basename(p) for p in glob.glob(os.path.join(out, "train.tfrecord-*")) if
                not p.endswith(".index")) == [records.shard_name("train", i, 2) for i in range(2)]


def test_adding_a_split_later_keeps_both_and_the_label_names(raw, tmp_path):
  out = str(tmp_path / "out")
  train = _write_list(tmp_path / "train.csv", [f"{_frames(raw, i)} {i - 1}" for i in (1, 2)])
  test = _write_list(tmp_path / "test.csv", [f"{_frames(raw, 3)} 2"])
  assert _prepare(["--list", f"train={train}", "--out", out, "--label-names", LABELS,
                   "--short-side", "32"])[0] == 0
  code, report = _prepare(["--list", f"test={test}", "--out", out, "--short-side", "32"])
  assert code == 0 and report["splits"] == {"test": 1}
  info = records.load_info(out)
  assert info["label_names"] == list(synthetic.EMOTIONS)
  assert {k: v["num_clips"] for k, v in info["splits"].items()} == {"train": 2, "test": 1}
  assert info["splits"]["test"]["class_counts"] == {"neutral": 1}


def test_two_workers_write_byte_identical_shards(raw, tmp_path):
  lines = [f"{_frames(raw, i)} {i - 1}" for i in range(1, 8)]
  lines += [f"{_video(raw, i)} {i - 1}" for i in range(1, 8)]
  lst = _write_list(tmp_path / "l.csv", lines)
  outs = []
  for workers in (1, 2):
    out = str(tmp_path / f"w{workers}")
    code, report = _prepare(["--list", lst, "--out", out, "--num-shards", "2", "--workers",
                             str(workers), "--short-side", "40"])
    assert code == 0 and report["written"] == 14
    outs.append(out)
  a, b = (_shard_stats(o) for o in outs)
  assert a.keys() == b.keys() and len(a) == 4
  for name in a:
    assert a[name][2] == b[name][2], name


# ------------------------------------------------------------------------------------------------


def test_face_crop_finds_the_face_in_a_real_clip(carphone, tmp_path):
  clip = video_io.read_video(carphone, max_frames=60).frames
  track = face_crop.track_faces(clip, face_crop.FaceCropSpec(), 29.97)
  boxes, detected = track.boxes, track.detected_fraction
  assert detected >= 0.8
  # The man's face is left of centre in the upper half of the 176x144 frame.
  assert np.all((boxes[:, 0] > 50) & (boxes[:, 0] < 130) & (boxes[:, 1] > 30) & (boxes[:, 1] < 100))
  assert np.all((boxes[:, 2] > 40) & (boxes[:, 2] < 100))
  src = tmp_path / "videos" / "talking"
  src.mkdir(parents=True)
  shutil.copy(carphone, src / "carphone.mp4")
  out = str(tmp_path / "out")
  code, report = _prepare(["--src-dir", str(tmp_path / "videos"), "--out", out, "--face-crop",
                           "--max-frames", "30", "--short-side", "64"])
  assert code == 0 and report["written"] == 1
  assert report["face_crop"]["mean_detected_fraction"] >= 0.8
  clip = records.ClipDataSource(out, "train")[0]
  assert (clip["num_frames"], clip["height"], clip["width"], clip["label"]) == (30, 64, 64, -1)
  info = records.load_info(out)
  assert info["preprocessing"]["face_detector"].startswith("opencv-haar")


def test_face_crop_without_a_face_falls_back_to_a_centre_square():
  blank = [np.full((60, 100, 3), 127, np.uint8) for _ in range(5)]
  crops, info = face_crop.crop_faces(blank, 32, face_crop.FaceCropSpec(), 25.0)
  assert info == {"detected_fraction": 0.0, "fallback_center": True}
  assert len(crops) == 5 and crops[0].shape == (32, 32, 3)
  # A box partly outside the frame is moved inside, never padded.
  patch = face_crop.square_crop(np.arange(60 * 100 * 3, dtype=np.uint8).reshape(60, 100, 3) % 250,
                                cx=95, cy=5, side=40, out_size=40)
  assert patch.shape == (40, 40, 3)


def test_src_dir_labels_from_parent_folders(raw, tmp_path):
  tree = tmp_path / "tree"
  (tree / "Happy").mkdir(parents=True)
  (tree / "misc").mkdir()
  shutil.copy(_video(raw, 1), tree / "Happy" / "a.mp4")
  shutil.copytree(_frames(raw, 2), tree / "sad" / "clip_b")
  shutil.copy(_video(raw, 3), tree / "misc" / "c.mp4")
  out = str(tmp_path / "out")
  code, report = _prepare(["--src-dir", str(tree), "--split", "val", "--out", out,
                           "--label-names", "happy,sad", "--short-side", "32"])
  assert code == 0 and report["splits"] == {"val": 3}
  source = records.ClipDataSource(out, "val")
  got = {source[i]["id"]: source[i]["label"] for i in range(3)}
  assert got == {"Happy/a": 0, "sad/clip_b": 1, "misc/c": -1}


def test_regression_list_and_prepare_on_recipe(raw, tmp_path):
  out = str(tmp_path / "dfew")
  code, report = _prepare(["--recipe", "dfew", "--src", raw["root"], "--fold", "1", "--out", out,
                           "--short-side", "32"])
  assert code == 0 and report["splits"] == {"train": 7}
  info = records.load_info(out)
  assert info["name"] == "dfew_fold1" and info["label_names"] == list(recipes.DFEW_LABELS)
  va = raw["va_lists"][1]["train"]
  out2 = str(tmp_path / "va")
  code, report = _prepare(["--regression", f"train={va}", "--value-names", "valence,arousal",
                           "--out", out2, "--short-side", "32"])
  assert code == 0 and report["written"] == 7
  ann = {a["id"]: a for a in json.load(open(os.path.join(raw["root"], "annotations.json")))[
      "clips"]}
  source = records.ClipDataSource(out2, "train")
  for i in range(len(source)):
    clip = source[i]
    assert clip["label"] == -1
    np.testing.assert_allclose(clip["values"], [ann[clip["id"]]["valence"],
                                                ann[clip["id"]]["arousal"]], atol=1e-4)
  assert records.load_info(out2)["value_names"] == ["valence", "arousal"]


# ------------------------------------------------------------------------------------------------
# Recipes on tiny fake layouts (only paths and names matter to them).


def _touch(path, content=b""):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(content)


def _by_split(result):
  out = {}
  for e in result.entries:
    out.setdefault(e.split, []).append((os.path.basename(e.path), e.label))
  return out


def test_recipe_dfew(tmp_path):
  src = str(tmp_path)
  for i in (1, 2, 3, 15):
    os.makedirs(os.path.join(src, "Clip", "clip_224x224", f"{i:05d}"))
  sd = os.path.join(src, "EmoLabel_DataSplit")
  _touch(os.path.join(sd, "train(single-labeled)", "set_2.csv"),
         b"video_name,label\n1,1\n2,7\n3,9\n")
  _touch(os.path.join(sd, "test(single-labeled)", "set_2.csv"), b"video_name,label\n15,4\n")
  result = recipes.run_recipe("dfew", src, fold=2)
  assert _by_split(result) == {"train": [("00001", 0), ("00002", 6)], "test": [("00015", 3)]}
  assert result.label_names == recipes.DFEW_LABELS
  assert len(result.skipped) == 1 and "out of range" in result.skipped[0]["reason"]
  with pytest.raises(recipes.RecipeError, match="fold"):
    recipes.run_recipe("dfew", src, fold=6)
  with pytest.raises(recipes.RecipeError, match="set_1.csv|fold 1"):
    recipes.run_recipe("dfew", src, fold=1)


def test_recipe_ferv39k(tmp_path):
  src = str(tmp_path)
  os.makedirs(os.path.join(src, "2_ClipsforFaceCrop", "Action", "Crowd", "0001"))
  setup = os.path.join(src, "4_setups", "All_scenes")
  _touch(os.path.join(setup, "train_All.csv"), b"Action/Crowd/0001 Happy\nAction/Crowd/0002 Fear\n")
  _touch(os.path.join(setup, "test_All.csv"), b"Daily/Home/0003 Neutral\nDaily/Home/0004 Bored\n")
  result = recipes.run_recipe("ferv39k", src)
  assert _by_split(result) == {"train": [("0001", 0), ("0002", 6)], "test": [("0003", 2)]}
  assert result.entries[0].path == os.path.join(src, "2_ClipsforFaceCrop", "Action", "Crowd",
                                                "0001")
  assert "Bored" in result.skipped[0]["reason"]


def test_recipe_mafw(tmp_path):
  src = str(tmp_path)
  os.makedirs(os.path.join(src, "data", "frames", "00001"))
  sd = os.path.join(src, "Train & Test Set", "single", "no_caption", "set_3")
  _touch(os.path.join(sd, "train.txt"), b"00001.mp4 anger\n00002.mp4 disappointment\n")
  _touch(os.path.join(sd, "test.txt"), b"00003.mp4 contempt\n")
  result = recipes.run_recipe("mafw", src, fold=3)
  assert _by_split(result) == {"train": [("00001", 0), ("00002", 10)], "test": [("00003", 7)]}
  assert len(result.label_names) == 11


def test_recipe_crema_d(tmp_path):
  src = str(tmp_path)
  for actor in range(1001, 1011):
    for emo in ("ANG", "HAP", "SAD"):
      _touch(os.path.join(src, "VideoFlash", f"{actor}_IEO_{emo}_HI.flv"))
  result = recipes.run_recipe("crema_d", src, fold=1)
  test = [os.path.basename(e.path) for e in result.entries if e.split == "test"]
  assert sorted({t[:4] for t in test}) == ["1001", "1002"]
  assert len(result.entries) == 30 and result.label_names == recipes.CREMA_D_LABELS
  assert {e.label for e in result.entries} == {0, 3, 5}


def test_recipe_ravdess(tmp_path):
  src = str(tmp_path)
  for actor in range(1, 7):
    for emo in (1, 5, 8):
      for modality in ("01", "02"):
        _touch(os.path.join(src, f"Actor_{actor:02d}", f"{modality}-01-{emo:02d}-01-01-01-"
                                 f"{actor:02d}.mp4"))
      _touch(os.path.join(src, f"Actor_{actor:02d}", f"02-02-{emo:02d}-01-01-01-{actor:02d}.mp4"))
      _touch(os.path.join(src, f"Actor_{actor:02d}", f"03-01-{emo:02d}-01-01-01-{actor:02d}.wav"))
  result = recipes.run_recipe("ravdess", src, fold=1)
  assert len(result.entries) == 18  # one video per (actor, emotion): video-only, speech
  assert all(os.path.basename(e.path).startswith("02-01-") for e in result.entries)
  assert {e.label for e in result.entries} == {0, 4, 7}
  assert {os.path.basename(os.path.dirname(e.path)) for e in result.entries
          if e.split == "test"} == {"Actor_01"}


def test_recipe_enterface05(tmp_path):
  src = str(tmp_path)
  for subject in range(1, 6):
    for emo, code in (("anger", "an"), ("happiness", "ha")):
      _touch(os.path.join(src, f"subject {subject}", emo, "sentence 1",
                          f"s{subject}_{code}_1.avi"))
  _touch(os.path.join(src, "readme", "notes.avi"))
  result = recipes.run_recipe("enterface05", src, fold=1)
  assert len(result.entries) == 10 and {e.label for e in result.entries} == {0, 3}
  assert [os.path.basename(e.path) for e in result.entries if e.split == "test"] == [
      "s1_an_1.avi", "s1_ha_1.avi"]
  assert len(result.skipped) == 1 and "notes.avi" in result.skipped[0]["source"]


def test_recipe_voxceleb2(tmp_path):
  src = str(tmp_path)
  _touch(os.path.join(src, "dev", "mp4", "id00012", "21Uxsk56VDQ", "00001.mp4"))
  _touch(os.path.join(src, "dev", "mp4", "id00012", "21Uxsk56VDQ", "00002.mp4"))
  _touch(os.path.join(src, "dev", "mp4", "id00015", "0fijmz4vTVU", "00001.mp4"))
  result = recipes.run_recipe("voxceleb2", src)
  assert len(result.entries) == 3 and all(e.label == -1 and e.split == "train"
                                          for e in result.entries)
  assert result.label_names is None


def test_regression_converters(tmp_path):
  table = _write_list(tmp_path / "ww.csv", ["clip,valence,arousal,dominance",
                                            "a1,0.5,0.1,0.0", "b2.mp4,-0.25,0.75,1.0"])
  n = recipes.convert_werewolf_xl(table, "/videos", str(tmp_path / "ww.txt"))
  assert n == 2
  assert open(tmp_path / "ww.txt").read().splitlines() == [
      "/videos/a1.mp4 0.5 0.1 0", "/videos/b2.mp4 -0.25 0.75 1"]
  with pytest.raises(KeyError, match="valence"):
    recipes.convert_table(table, "/v", str(tmp_path / "x.txt"), id_column="clip",
                          value_columns=["valence", "missing"])
  traits = {t: {"v1.mp4": 0.1 * k, "v2.mp4": 0.05 * k} for k, t in enumerate(
      ["extraversion", "neuroticism", "agreeableness", "conscientiousness", "interview",
       "openness"], 1)}
  pkl = tmp_path / "annotation_training.pkl"
  pkl.write_bytes(pickle.dumps(traits, protocol=2))
  n = recipes.convert_first_impressions(str(pkl), "/fi", str(tmp_path / "fi.txt"))
  assert n == 2
  first = open(tmp_path / "fi.txt").read().splitlines()[0].split()
  assert first[0] == "/fi/v1.mp4"
  np.testing.assert_allclose([float(x) for x in first[1:]], [0.6, 0.4, 0.1, 0.3, 0.2])
  import collections  # pylint: disable=import-outside-toplevel
  evil = tmp_path / "evil.pkl"
  evil.write_bytes(pickle.dumps(collections.OrderedDict(a=1.0)))
  with pytest.raises(pickle.UnpicklingError, match="refusing"):
    recipes.convert_first_impressions(str(evil), "/fi", str(tmp_path / "no.txt"))


def test_cli_errors_are_clear(tmp_path, capsys):
  assert build.main(["--list", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "o")]) == 1
  assert "nope.csv does not exist" in capsys.readouterr().err
  assert build.main(["--recipe", "dfew", "--src", str(tmp_path), "--out", str(tmp_path / "o")]) == 1
  assert "EmoLabel_DataSplit" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    build.main(["--out", str(tmp_path / "o")])


def test_progress_bar_counts_every_clip_and_quiet_hides_it(raw, tmp_path, capsys):
  """prepare shows tqdm's bar on stderr (clips handled of the total, clips written); --quiet
  prints nothing at all."""
  lst = _write_list(tmp_path / "l.csv", [f"{_frames(raw, 1)} 0", f"{_video(raw, 2)} 1",
                                         f"{tmp_path / 'missing'} 1"])
  assert build.main(["--list", lst, "--out", str(tmp_path / "o"), "--short-side", "32"]) == 0
  err = capsys.readouterr().err
  # Three clips handled (the missing one is skipped when read), two written.
  assert "prepare: 100%" in err and "3/3" in err and "written=2" in err, err
  assert build.main(["--list", lst, "--out", str(tmp_path / "q"), "--short-side", "32",
                     "--quiet"]) == 0
  captured = capsys.readouterr()
  assert "prepare:" not in captured.err and captured.out == ""
