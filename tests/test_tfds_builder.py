"""TFDS builder `svfap_face_clips`: offline build from a manual dir, tfds.load, data sources."""
import os

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from data_pipelines import records  # pylint: disable=g-import-not-at-top
from data_pipelines import synthetic  # pylint: disable=g-import-not-at-top
from data_pipelines import tfds_builder  # pylint: disable=g-import-not-at-top,unused-import


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  root = tmp_path_factory.mktemp("syn")
  return synthetic.make_synthetic_dataset(str(root), num_clips_per_class=1, num_frames=8, size=32,
                                          seed=2, test_fraction=0.0)


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
  """Any attempt to download fails the test."""
  import socket  # pylint: disable=import-outside-toplevel

  def refuse(*args, **kwargs):
    raise AssertionError("the builder tried to open a network connection")
  monkeypatch.setattr(socket, "create_connection", refuse)
  monkeypatch.setattr(socket.socket, "connect", refuse)


def _manual(path):
  return tfds.download.DownloadConfig(manual_dir=path)


def test_generic_config_from_prepared_shards(prepared, tmp_path):
  data_dir = str(tmp_path / "tfds")
  builder = tfds.builder("svfap_face_clips/generic", data_dir=data_dir)
  builder.download_and_prepare(download_config=_manual(prepared))
  assert builder.info.features["label"].names == list(synthetic.EMOTIONS)
  assert builder.info.splits["train"].num_examples == 7
  ds = tfds.load("svfap_face_clips/generic", data_dir=data_dir, split="train")
  source = records.ClipDataSource(prepared, "train")
  ours = {source[i]["id"]: source[i] for i in range(len(source))}
  seen = 0
  for ex in tfds.as_numpy(ds):
    clip = ours[ex["id"].decode()]
    assert ex["frames"].shape == (8, 32, 32, 3) and ex["frames"].dtype == np.uint8
    assert ex["label"] == clip["label"]
    np.testing.assert_allclose(ex["values"], clip["values"])
    assert abs(ex["fps"] - clip["fps"]) < 1e-4 and ex["source"].decode() == clip["source"]
    diff = np.abs(ex["frames"].astype(int) - records.decode_frames(clip["frames"])).mean()
    assert diff < 2.0  # the same JPEG bytes; TF's default IDCT rounds differently from OpenCV
    seen += 1
  assert seen == 7
  frames, label = next(iter(tfds.as_numpy(tfds.load("svfap_face_clips/generic", data_dir=data_dir,
                                                    split="train", as_supervised=True))))
  assert frames.ndim == 4 and 0 <= label < 7


def test_recipe_config_prepares_raw_data_and_serves_a_data_source(prepared, tmp_path):
  raw = os.path.join(os.path.dirname(prepared), "raw")  # DFEW-like layout of the synthetic set
  data_dir = str(tmp_path / "tfds")
  builder = tfds.builder("svfap_face_clips/dfew_fold1", data_dir=data_dir,
                         file_format="array_record")
  builder.download_and_prepare(download_config=_manual(raw))
  assert builder.info.features["label"].names == list(synthetic.EMOTIONS)
  assert builder.info.splits["train"].num_examples == 7
  source = tfds.data_source("svfap_face_clips/dfew_fold1", data_dir=data_dir, split="train")
  assert len(source) == 7
  ex = source[3]
  frames = np.asarray(ex["frames"])
  # Raw data is prepared with the default 176 px short side.
  assert frames.shape == (8, 176, 176, 3)
  assert 0 <= ex["label"] < 7


def test_manual_dir_without_data_is_a_clear_error(tmp_path):
  builder = tfds.builder("svfap_face_clips/generic", data_dir=str(tmp_path / "tfds"))
  empty = tmp_path / "empty"
  empty.mkdir()
  (empty / "notes.md").write_text("no clips here")
  with pytest.raises(FileNotFoundError, match="neither a prepared dataset"):
    builder.download_and_prepare(download_config=_manual(str(empty)))
