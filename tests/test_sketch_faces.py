"""tools/sketch_faces.py: the second face generator that checks the probes transfer."""
import importlib.util
import pathlib

import numpy as np

_PATH = pathlib.Path(__file__).resolve().parents[1] / "tools" / "sketch_faces.py"
_spec = importlib.util.spec_from_file_location("sketch_faces", _PATH)
sketch_faces = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sketch_faces)


def test_clips_change_where_each_expression_lives():
  """Neutral at the start, the class's cue at the end: the mouth moves for every class, the brows
  rise for surprise and drop for anger; the same seed draws the same clip."""
  size = 64
  clips = [sketch_faces.clip_frames(label, np.random.default_rng([0, label]), 40, size)
           for label in range(4)]
  np.testing.assert_array_equal(
      clips[2], sketch_faces.clip_frames(2, np.random.default_rng([0, 2]), 40, size))
  for label, clip in enumerate(clips):
    assert clip.shape == (40, size, size, 3) and clip.dtype == np.uint8
    change = np.abs(clip[-1].astype(float) - clip[0].astype(float)).mean(axis=2)
    noise = np.abs(clip[1].astype(float) - clip[0].astype(float)).mean(axis=2)
    lower = slice(int(0.62 * size), int(0.92 * size))
    # Camera noise and drift move every pixel a little; the expression moves the mouth a lot.
    assert change[lower].max() > 60 > noise[lower].mean(), sketch_faces.CLASSES[label]


def test_writes_lists_and_prepares_four_classes(tmp_path):
  from data_pipelines import records
  assert sketch_faces.main(["--out", str(tmp_path), "--clips-per-class", "3",
                            "--test-per-class", "1", "--size", "48"]) == 0
  train = (tmp_path / "raw" / "train.csv").read_text().split("\n")
  assert sorted(int(l.split()[1]) for l in train if l) == [0, 0, 1, 1, 2, 2, 3, 3]
  info = records.load_info(str(tmp_path / "prepared"))
  assert info["num_classes"] == 4 and list(info["label_names"]) == list(sketch_faces.CLASSES)
  assert (info["splits"]["train"]["num_clips"], info["splits"]["test"]["num_clips"]) == (8, 4)
