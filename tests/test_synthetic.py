"""Synthetic face clips: determinism, expression dynamics, class separability, dataset files."""
import csv
import dataclasses
import json
import os

import numpy as np
import pytest

from data_pipelines import records
from data_pipelines import synthetic
from data_pipelines import video_io

STILL = np.array([[0.0, 0.0, 0.0, 0.0, 1.0]], np.float32)  # frontal, centred, unit scale


def test_render_clip_is_seeded_and_deterministic():
  a = synthetic.render_clip(3, 12, 64, np.random.default_rng(0))
  b = synthetic.render_clip(3, 12, 64, np.random.default_rng(0))
  c = synthetic.render_clip(3, 12, 64, np.random.default_rng(1))
  assert a.shape == (12, 64, 64, 3) and a.dtype == np.uint8
  np.testing.assert_array_equal(a, b)
  assert np.abs(a.astype(int) - c).mean() > 10  # another identity/background
  assert synthetic.render_clip("fear", 4, 96, np.random.default_rng(2)).shape == (4, 96, 96, 3)
  with pytest.raises(ValueError, match="unknown emotion"):
    synthetic.render_clip("bored", 4, 64, np.random.default_rng(0))


def test_expression_goes_neutral_apex_partial_release():
  for seed in range(10):
    rng = np.random.default_rng(seed)
    env = synthetic.expression_envelope(32, rng)
    assert env[0] < 0.05 and env.max() > 0.99
    assert 0.35 < env[-1] < 0.8  # partial release
    peak = int(np.argmax(env))
    assert 0 < peak < 31
  sched = synthetic.expression_schedule("surprise", 32, np.random.default_rng(0), intensity=1.0)
  eye = sched[:, synthetic.PARAMS.index("eye_open")]
  assert eye[0] < 1.1 and eye.max() > 1.4 and eye[-1] < eye.max()


def test_classes_are_visually_distinct():
  """Same face and pose: a mild expression is closest to the full one of its own class."""
  correct = total = 0
  for k in range(5):
    identity = synthetic.sample_identity(np.random.default_rng([11, k]))
    identity.talk = 0.0
    def render(e, intensity, seed):
      return synthetic.render_frames(synthetic.apex_expression(e, intensity)[None], 64,
                                     np.random.default_rng(seed), identity=identity, poses=STILL,
                                     blink=False)[0].astype(np.float32)
    full = [render(e, 1.0, 1) for e in range(7)]
    for e in range(7):
      mild = render(e, 0.7, 2)  # other intensity, other sensor noise
      correct += int(np.argmin([np.abs(mild - f).mean() for f in full]) == e)
      total += 1
  assert correct / total >= 0.95, f"{correct}/{total}"


def test_segment_schedule_for_multi_expression_videos():
  sched, labels = synthetic.segment_schedule([("happy", 8), ("sad", 8), ("surprise", 8)],
                                             np.random.default_rng(0))
  assert sched.shape == (24, len(synthetic.PARAMS))
  assert labels.tolist() == [0] * 8 + [1] * 8 + [4] * 8
  curve = sched[:, synthetic.PARAMS.index("mouth_curve")]
  mouth = sched[:, synthetic.PARAMS.index("mouth_open")]
  assert curve[7] > 0.5 and curve[15] < -0.5 and mouth[23] > 0.7
  frames = synthetic.render_frames(sched, 64, np.random.default_rng(0))
  assert frames.shape == (24, 64, 64, 3)
  # The picture changes with the expression, not only with head motion.
  assert np.abs(frames[7].astype(int) - frames[15]).mean() > 1.0


def test_valence_arousal_follow_the_emotion():
  rng = np.random.default_rng(0)
  va = {e: np.array([synthetic.valence_arousal(e, rng.uniform(0.7, 1), rng) for _ in range(30)])
        for e in synthetic.EMOTIONS}
  assert va["happy"][:, 0].min() > 0.3
  for e in ("sad", "angry", "disgust", "fear"):
    assert va[e][:, 0].max() < -0.2, e
  assert abs(va["neutral"]).max() < 0.25
  assert va["surprise"][:, 1].mean() > 0.5 and va["sad"][:, 1].mean() < -0.2
  assert np.all(np.abs(np.concatenate(list(va.values()))) <= 1.0)


def test_write_dataset_layout(tmp_path):
  info = synthetic.write_dataset(str(tmp_path), num_clips_per_class=2, num_frames=8, size=32,
                                 seed=4, folds=2)
  root = info["root"]
  assert info["num_clips"] == 14
  assert len(video_io.list_frame_files(os.path.join(root, "Clip", "frames", "00014"))) == 8
  decoded = video_io.read_video(os.path.join(root, "Clip", "original", "00014.mp4"))
  assert len(decoded.frames) == 8 and decoded.frames[0].shape == (32, 32, 3)
  ann = json.load(open(os.path.join(root, "annotations.json")))["clips"]
  assert [a["emotion"] for a in ann[:8]] == [0, 1, 2, 3, 4, 5, 6, 0]
  tests = []
  for fold in (1, 2):
    with open(info["lists"][fold]["test"]) as f:
      rows = [line.rsplit(None, 1) for line in f]
    tests += [r[0] for r in rows]
    assert all(os.path.isdir(os.path.join(os.path.dirname(info["lists"][fold]["test"]), p))
               for p, _ in rows)
    with open(os.path.join(root, "EmoLabel_DataSplit", "train(single-labeled)",
                           f"set_{fold}.csv")) as f:
      dfew_rows = list(csv.reader(f))
    assert dfew_rows[0] == ["video_name", "label"]
    assert all(1 <= int(lbl) <= 7 for _, lbl in dfew_rows[1:])
    va = open(info["va_lists"][fold]["train"]).read().split("\n")[0].split()
    assert len(va) == 3 and -1 <= float(va[1]) <= 1
  assert sorted(tests) == sorted(set(tests)) and len(tests) == 14  # each clip tested once
  again = synthetic.write_dataset(str(tmp_path / "again"), num_clips_per_class=2, num_frames=8,
                                  size=32, seed=4, folds=2)
  a = open(os.path.join(root, "Clip", "frames", "00003", "00005.jpg"), "rb").read()
  b = open(os.path.join(again["root"], "Clip", "frames", "00003", "00005.jpg"), "rb").read()
  assert a == b


@pytest.mark.parametrize("source", ["frames", "video"])
def test_make_synthetic_dataset_prepares_both_splits(tmp_path, source):
  prepared = synthetic.make_synthetic_dataset(str(tmp_path), num_clips_per_class=2,
                                              num_frames=12, size=48, seed=5, source=source)
  info = records.load_info(prepared)
  assert info["label_names"] == list(synthetic.EMOTIONS)
  assert info["value_names"] == ["valence", "arousal"]
  assert {s: info["splits"][s]["num_clips"] for s in ("train", "test")} == {"train": 7,
                                                                           "test": 7}
  clip = records.ClipDataSource(prepared, "test")[0]
  assert clip["num_frames"] == 12 and clip["height"] == 48 and clip["values"].shape == (2,)
  assert clip["source"].endswith(".mp4") == (source == "video")
  # A second call reuses the raw clips and the finished shards.
  synthetic.make_synthetic_dataset(str(tmp_path), num_clips_per_class=2, num_frames=12, size=48,
                                   seed=5, source=source)
  report = json.load(open(os.path.join(prepared, "prepare_report.json")))
  assert report["newly_encoded"] == 0


def test_actors_dataset_has_repeated_people_and_subject_independent_splits(tmp_path):
  info = synthetic.write_dataset(str(tmp_path), num_clips_per_class=5, num_frames=6, size=48,
                                 seed=3, actors=4, write_videos=False, variation="closeup")
  ann = json.load(open(os.path.join(tmp_path, "annotations.json")))
  clips = ann["clips"]
  assert ann["settings"]["actors"] == 4
  # Every actor shows every emotion, once per round of seven clips.
  by_actor = {}
  for c in clips:
    by_actor.setdefault(c["actor"], []).append(c["emotion"])
  assert sorted(by_actor) == [0, 1, 2, 3]
  assert all(sorted(set(e)) == list(range(7)) for e in by_actor.values())
  assert len(by_actor[0]) == 14 and len(by_actor[3]) == 7
  # test_fraction 0.25 of 4 actors: the last actor's clips are the test split, nobody else's.
  assert {c["actor"] for c in clips if c["fold"] == 1} == {3}
  with open(info["lists"][1]["test"]) as f:
    assert len(f.readlines()) == 7

  def frame(clip_id, t=1):
    folder = os.path.join(tmp_path, "Clip", "frames", clip_id)
    return np.asarray(video_io.read_frame_folder(folder).frames[t - 1], np.float32)
  # Same actor (clips 1 and 29 are both actor 0's): same appearance up to expression and pose;
  # another actor (clip 8, actor 1): a different face and backdrop.
  same = np.abs(frame("00001") - frame("00029")).mean()
  other = np.abs(frame("00001") - frame("00008")).mean()
  assert same < 0.5 * other, (same, other)
  with pytest.raises(ValueError, match="at least 3 people"):
    synthetic.write_dataset(str(tmp_path / "few"), num_clips_per_class=2, num_frames=4, size=32,
                            actors=2, folds=3, write_videos=False)


def test_closeup_fills_the_frame_with_a_shaded_textured_face():
  rng = np.random.default_rng(7)
  closeup = synthetic.sample_identity(rng, "closeup")
  assert closeup.face_w >= 0.4 and closeup.shade > 0 and closeup.texture > 0
  studio = synthetic.sample_identity(np.random.default_rng(7), "studio")
  assert studio.shade == 0 and studio.texture == 0 and studio.face_w < 0.34
  expr = synthetic.apex_expression("neutral")[None]
  flat = dataclasses.replace(closeup, shade=0.0, texture=0.0, noise=0.0)
  lit = dataclasses.replace(closeup, noise=0.0)
  a = synthetic.render_frames(expr, 96, np.random.default_rng(0), identity=flat, poses=STILL,
                              blink=False)[0].astype(np.float32)
  b = synthetic.render_frames(expr, 96, np.random.default_rng(0), identity=lit, poses=STILL,
                              blink=False)[0].astype(np.float32)
  # Both cheeks are one flat colour without shading and vary once shaded and textured.
  for cheek in ((slice(58, 66), slice(20, 28)), (slice(62, 70), slice(66, 74))):
    flat_std = a[cheek].std(axis=(0, 1)).mean()
    lit_std = b[cheek].std(axis=(0, 1)).mean()
    assert flat_std < 0.5 and lit_std > 2.0, (flat_std, lit_std)


def test_aligned_faces_share_geometry_and_differ_in_appearance():
  a, b = (synthetic.sample_identity(np.random.default_rng(s), "aligned") for s in (1, 2))
  geometry = ("face_w", "face_h", "center", "eye_dx", "eye_y", "eye_w", "mouth_y", "mouth_w")
  assert all(getattr(a, f) == getattr(b, f) for f in geometry)
  assert np.abs(a.skin - b.skin).max() > 5 and a.texture == b.texture == 0
  # No head turn, tilt or drift; only the generator's slow 4 % zoom remains.
  poses = synthetic.pose_track(a, 12, np.random.default_rng(0))
  assert np.allclose(poses[:, :4], 0) and np.ptp(poses[:, 4]) < 0.1
