"""`prepare --runner beam`: the Beam pipeline writes what the local pool writes, byte for byte."""
import glob
import importlib.util
import json
import os
import shutil
import sys

import numpy as np
import pytest

from data_pipelines import beam_build
from data_pipelines import build
from data_pipelines import records
from data_pipelines import synthetic
from data_pipelines import video_io

# Timings differ between any two runs; everything else in the report must not.
_TIMING = ("seconds", "clips_per_second")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
  """Two lists over good clips (frame folders, mp4), a corrupt mp4, a missing file, a 3-frame mp4.

  Returns:
    (train list, test list, paths of the bad inputs).
  """
  root = tmp_path_factory.mktemp("beam_raw")
  raw = synthetic.write_dataset(str(root / "raw"), num_clips_per_class=1, num_frames=8, size=48,
                                seed=3)
  frames = [os.path.join(raw["root"], "Clip", "frames", f"{i:05d}") for i in range(1, 8)]
  videos = [os.path.join(raw["root"], "Clip", "original", f"{i:05d}.mp4") for i in range(1, 8)]
  corrupt = root / "corrupt.mp4"
  data = open(videos[1], "rb").read()
  corrupt.write_bytes(data[:len(data) // 2])
  missing = root / "missing.mp4"
  short = root / "three_frames.mp4"
  video_io.write_video(str(short), synthetic.render_clip(2, 3, 48, np.random.default_rng(0)), 25)
  train = root / "train.csv"
  train.write_text("\n".join([f"{frames[0]} 0", f"{videos[1]} 1", f"{corrupt} 2",
                              f"{frames[3]} 3", f"{missing} 4", f"{short} 2",
                              f"{videos[5]} 5"]) + "\n")
  test = root / "test.csv"
  test.write_text(f"{frames[6]} 6\n")
  return str(train), str(test), {"corrupt": str(corrupt), "missing": str(missing),
                                 "short": str(short)}


def _argv(inputs, out, *extra):
  train, test, _ = inputs
  return ["--list", f"train={train}", "--list", f"test={test}", "--out", str(out),
          "--num-shards", "3", "--short-side", "32", "--label-names",
          ",".join(synthetic.EMOTIONS), "--quiet", *extra]


def _files(out):
  """name -> bytes of every shard, index and dataset_info.json (the report is compared apart)."""
  names = [os.path.basename(p) for p in glob.glob(os.path.join(out, "*"))]
  return {n: open(os.path.join(out, n), "rb").read() for n in sorted(names)
          if n != build.REPORT_FILE}


def _report(out):
  with open(os.path.join(out, build.REPORT_FILE)) as f:
    return {k: v for k, v in json.load(f).items() if k not in _TIMING}


def _beam_argv(inputs, out, *extra):
  return _argv(inputs, out, "--runner", "beam", "--workers", "2", *extra)


@pytest.fixture(scope="module")
def local_out(inputs, tmp_path_factory):
  out = tmp_path_factory.mktemp("local") / "out"
  assert build.main(_argv(inputs, out)) == 0
  return str(out)


def test_without_beam_the_flag_says_how_to_install_it(inputs, tmp_path, capsys, monkeypatch):
  monkeypatch.setitem(sys.modules, "apache_beam", None)  # import apache_beam -> ImportError
  code = build.main(_beam_argv(inputs, tmp_path / "o"))
  err = capsys.readouterr().err
  assert code == 1
  assert "Apache Beam" in err and "pip install -e .[beam]" in err and "Traceback" not in err


def test_beam_options_need_the_beam_runner(inputs, tmp_path, capsys):
  with pytest.raises(SystemExit) as e:
    build.main(_argv(inputs, tmp_path / "o", "--beam-options", "--direct_num_workers=2"))
  assert e.value.code == 2 and "--beam-options is for --runner beam" in capsys.readouterr().err


def test_plans_survive_the_json_round_trip():
  tasks = [build.ClipTask("train", "/d/a b.mp4", 3, (), "a b", "l.csv:1"),
           build.ClipTask("train", "/d/é.mp4", -1, (0.5, float("nan")), "é", "l.csv:2")]
  plan = build.ShardPlan("train", 1, 4, tasks, "f" * 64)
  back = beam_build.plan_from_json(beam_build.plan_to_json(plan))
  assert back.name == plan.name and back.fingerprint == plan.fingerprint
  assert [t.key()[:2] + [t.clip_id, t.origin] for t in back.tasks] == \
      [t.key()[:2] + [t.clip_id, t.origin] for t in tasks]
  assert back.tasks[1].values[0] == 0.5 and np.isnan(back.tasks[1].values[1])
  assert isinstance(back.tasks[1].values, tuple)


# The tests below run Beam itself.


def _need_beam():
  pytest.importorskip("apache_beam")


def test_default_pipeline_options_are_the_multiprocess_direct_runner():
  _need_beam()
  from apache_beam.options import pipeline_options as po  # pylint: disable=import-outside-toplevel
  opts = beam_build.pipeline_options("", workers=3)
  assert opts.view_as(po.StandardOptions).runner == "DirectRunner"
  direct = opts.view_as(po.DirectOptions)
  assert direct.direct_running_mode == "multi_processing" and direct.direct_num_workers == 3
  opts = beam_build.pipeline_options("--direct_num_workers=5 --direct_running_mode=in_memory", 3)
  direct = opts.view_as(po.DirectOptions)
  assert direct.direct_running_mode == "in_memory" and direct.direct_num_workers == 5
  with pytest.raises(ValueError, match="--no_such_flag"):
    beam_build.pipeline_options("--no_such_flag=1")


def test_remote_runner_with_a_local_out_dir_is_refused(inputs, tmp_path, capsys):
  _need_beam()
  out = tmp_path / "o"
  code = build.main(_beam_argv(inputs, out, "--beam-options",
                               "--runner=DataflowRunner --project=p --region=r"))
  err = capsys.readouterr().err
  assert code == 1 and "local folder" in err and "gs://" in err and "Traceback" not in err
  assert not glob.glob(str(out / "*.tfrecord-*"))


def test_beam_writes_the_local_shards_and_report_and_resumes(inputs, local_out, tmp_path):
  """DirectRunner, 2 processes: same bytes and report as the local pool; then a resumed run."""
  _need_beam()
  out = str(tmp_path / "beam")
  assert build.main(_beam_argv(inputs, out)) == 0
  local, beam = _files(local_out), _files(out)
  assert sorted(beam) == sorted(local)
  # --num-shards counts per split: the test split's 1 clip leaves two of its shards empty.
  assert len([n for n in beam if n.endswith(".index")]) == 6
  for name in local:
    assert beam[name] == local[name], name
  report = _report(out)
  assert report == _report(local_out)
  # What the report says, checked on its own too.
  _, _, bad = inputs
  assert report["written"] == 6 and report["splits"] == {"train": 5, "test": 1}
  reasons = {s["source"]: s["reason"] for s in report["skipped"]}
  assert set(reasons) == {bad["corrupt"], bad["missing"]}
  assert "truncated" in reasons[bad["corrupt"]] and "missing" in reasons[bad["missing"]]
  stored = {c["source"]: c for c in records.iter_clips(out, "train")}
  assert len(stored[bad["short"]]["frames"]) == 3
  assert not os.path.exists(os.path.join(out, beam_build.PLAN_FILE))

  # Resume: one shard lost, one cut short by an interrupted write, a stray temporary.
  names = [records.shard_name("train", i, 3) for i in range(3)]
  os.remove(os.path.join(out, names[1]))
  os.remove(os.path.join(out, names[1] + records.INDEX_SUFFIX))
  path = os.path.join(out, names[2])
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) - 10)
  with open(os.path.join(out, names[0] + ".tmp-999"), "wb") as f:
    f.write(b"junk")
  kept_inode = os.stat(os.path.join(out, names[0])).st_ino
  assert build.main(_beam_argv(inputs, out)) == 0
  resumed = _report(out)
  assert resumed["shards"]["kept"] == sorted([names[0]] + [records.shard_name("test", i, 3)
                                                           for i in range(3)])
  assert sorted(resumed["shards"]["written"]) == names[1:]
  assert os.stat(os.path.join(out, names[0])).st_ino == kept_inode
  assert _files(out) == local  # nothing duplicated, nothing lost
  ids = [c["id"] for c in records.iter_clips(out, "train")]
  assert len(ids) == len(set(ids)) == 5
  assert resumed["written"] == 6 and resumed["skipped"] == report["skipped"]

  # The local pool accepts the Beam run's shards as its own finished work.
  assert build.main(_argv(inputs, out)) == 0
  again = _report(out)
  assert again["shards"]["written"] == [] and again["newly_encoded"] == 0


def test_strict_names_the_first_bad_input_like_the_local_pool(inputs, tmp_path, capsys):
  _need_beam()
  _, _, bad = inputs
  messages = []
  for extra in ((), ("--runner", "beam", "--workers", "2")):
    out = tmp_path / f"strict{len(extra)}"
    code = build.main(_argv(inputs, out, "--strict", *extra))
    err = capsys.readouterr().err
    assert code == 2, err
    messages.append(err.strip().splitlines()[-1])
    assert not os.path.exists(out / build.REPORT_FILE)
    for shard in glob.glob(str(out / "*.tfrecord-*.index")):  # no shard keeps a bad clip
      with open(shard) as f:
        assert not json.load(f)["skipped"]
  assert messages[0] == messages[1]
  assert bad["missing"] in messages[1] and bad["corrupt"] not in messages[1]


def test_tfds_build_on_beam_gives_the_local_build(inputs, tmp_path, monkeypatch):
  """`download_and_prepare` with Beam options: prepared by the Beam pipeline, split by TFDS's."""
  _need_beam()
  tfds = pytest.importorskip("tensorflow_datasets")
  import apache_beam as beam  # pylint: disable=import-outside-toplevel
  from apache_beam.options import pipeline_options as po  # pylint: disable=import-outside-toplevel
  from data_pipelines import tfds_builder  # pylint: disable=import-outside-toplevel
  seen = {"prepare_runs": 0, "generators": []}
  beam_prepare = beam_build.prepare

  def counting_prepare(*args, **kwargs):
    seen["prepare_runs"] += 1
    return beam_prepare(*args, **kwargs)
  monkeypatch.setattr(beam_build, "prepare", counting_prepare)
  split_generators = tfds_builder.SvfapFaceClips._split_generators

  def recording(self, dl_manager):
    out = split_generators(self, dl_manager)
    seen["generators"] += [type(g) for g in out.values()]
    return out
  monkeypatch.setattr(tfds_builder.SvfapFaceClips, "_split_generators", recording)
  train, _, _ = inputs
  manual = tmp_path / "manual"
  manual.mkdir()
  # Lists named after their split; the bad lines come along and are skipped by the prepare step.
  (manual / "train.csv").write_text(open(train).read())
  built = {}
  for mode in ("local", "beam"):
    config = {"manual_dir": str(manual)}
    if mode == "beam":
      # In this process: worker processes would each import TensorFlow (the multi-process
      # DirectRunner is covered above).
      config["beam_options"] = po.PipelineOptions(["--direct_running_mode=in_memory"])
    data_dir = str(tmp_path / mode)
    builder = tfds.builder("svfap_face_clips/generic", data_dir=data_dir)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(**config))
    assert builder.info.splits["train"].num_examples == 5
    built[mode] = {ex["id"].decode(): ex for ex in tfds.as_numpy(builder.as_dataset(
        split="train"))}
    prepared = os.path.join(data_dir, "downloads", "prepared_generic")
    built[mode + "_shards"] = _files(prepared)
  assert seen["prepare_runs"] == 1  # the Beam build only
  assert not issubclass(seen["generators"][0], beam.PTransform)
  assert issubclass(seen["generators"][1], beam.PTransform)
  assert built["beam_shards"] == built["local_shards"]
  assert sorted(built["beam"]) == sorted(built["local"]) and len(built["beam"]) == 5
  for clip_id, ex in built["local"].items():
    other = built["beam"][clip_id]
    for key in ("label", "fps", "source"):
      assert other[key] == ex[key], (clip_id, key)
    np.testing.assert_array_equal(other["frames"], ex["frames"])
    np.testing.assert_array_equal(other["values"], ex["values"])


@pytest.fixture
def fake_bucket(fake_gcs):
  """The local folder standing for gs://bucket (conftest.fake_gcs); Beam runs in process here."""
  return fake_gcs["root"]


def test_videos_lists_and_output_in_a_bucket(inputs, tmp_path, fake_bucket):
  """gs:// lists, clips (relative and absolute URLs) and --out: both runners, same bytes."""
  train, _, _ = inputs
  good = [line.rsplit(None, 1) for line in open(train).read().splitlines()]
  good = [(p, lab) for p, lab in good if os.path.exists(p) and "corrupt" not in p][:3]
  os.makedirs(os.path.join(fake_bucket, "data", "clips"))
  lines = []
  for k, (path, label) in enumerate(good):
    name = f"c{k}" + os.path.splitext(path)[1]
    dst = os.path.join(fake_bucket, "data", "clips", name)
    (shutil.copytree if os.path.isdir(path) else shutil.copy)(path, dst)
    lines.append(f"clips/{name} {label}" if k % 2 == 0 else f"gs://bucket/data/clips/{name} {label}")
  lines.append("clips/not_there.mp4 1")
  with open(os.path.join(fake_bucket, "data", "train.txt"), "w") as f:
    f.write("\n".join(lines) + "\n")
  runs = {"local": []}
  if importlib.util.find_spec("apache_beam") is not None:
    runs["beam"] = ["--runner", "beam", "--beam-options", "--direct_running_mode=in_memory"]
  outs = {}
  for mode, extra in runs.items():
    out = f"gs://bucket/out_{mode}"
    assert build.main(["--list", "train=gs://bucket/data/train.txt", "--out", out,
                       "--num-shards", "2", "--short-side", "32", "--quiet", *extra]) == 0
    outs[mode] = os.path.join(fake_bucket, f"out_{mode}")
    report = _report(outs[mode])
    assert report["written"] == 3
    assert [s["source"] for s in report["skipped"]] == ["gs://bucket/data/clips/not_there.mp4"]
    assert "missing" in report["skipped"][0]["reason"]
    clips = list(records.iter_clips(f"gs://bucket/out_{mode}", "train"))
    assert sorted(c["source"] for c in clips) == [f"gs://bucket/data/clips/c{k}"
                                                 + os.path.splitext(p)[1]
                                                 for k, (p, _) in enumerate(good)]
    assert sorted(c["id"] for c in clips) == ["c0", "c1", "c2"]
  assert not glob.glob(str(tmp_path / "gs:*")) and not os.path.exists("gs:")
  if "beam" in outs:
    assert _files(outs["beam"]) == _files(outs["local"])
    assert _report(outs["beam"]) == _report(outs["local"])


def test_dataflow_needs_clips_named_by_url(inputs, tmp_path, capsys, fake_bucket):
  _need_beam()
  code = build.main(_beam_argv(inputs, "gs://bucket/o", "--beam-options",
                               "--runner=DataflowRunner --project=p --region=r"))
  err = capsys.readouterr().err
  assert code == 1 and "local paths" in err and "by URL" in err and "Traceback" not in err
  assert not os.listdir(fake_bucket)
