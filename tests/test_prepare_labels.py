"""`prepare` keeps datasets intact: label bases, clip ids, lists that miss clips, URL outputs,
and the `prepare` commands the configs document."""
import json
import os
import sys

import numpy as np
import pytest

from data_pipelines import build
from data_pipelines import recipes
from data_pipelines import records
from data_pipelines import synthetic


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
  """14 tiny frame-folder clips (4 frames of 24 px): {"root": dir, "paths": [14 folders]}."""
  import cv2  # pylint: disable=import-outside-toplevel
  root = tmp_path_factory.mktemp("label_clips")
  rng = np.random.default_rng(0)
  paths = []
  for k in range(14):
    folder = root / "clips" / f"{k + 1:05d}"
    folder.mkdir(parents=True)
    frames = synthetic.render_clip(synthetic.EMOTIONS[k % 7], 4, 24, rng)
    for t, frame in enumerate(frames):
      cv2.imwrite(str(folder / f"{t:03d}.jpg"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    paths.append(str(folder))
  return {"root": str(root), "paths": paths}


def _write_list(path, lines):
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
  return str(path)


def _prepare(argv):
  code = build.main(list(argv) + ["--quiet", "--short-side", "16"])
  out = argv[argv.index("--out") + 1]
  path = os.path.join(out, build.REPORT_FILE)
  return code, (json.load(open(path)) if os.path.exists(path) else None)


def _stored(out, split):
  source = records.ClipDataSource(out, split)
  return {os.path.basename(source[i]["source"]): source[i]["label"] for i in range(len(source))}


# ------------------------------------------------------------------------------------------------
# Label bases.


def _one_based_lists(clips, tmp_path):
  lines = [f"{p} {k % 7 + 1}" for k, p in enumerate(clips["paths"])]
  return (_write_list(tmp_path / "train.txt", lines[:10]),
          _write_list(tmp_path / "test.txt", lines[10:]))


def test_one_based_lists_are_refused_with_the_fix_named(clips, tmp_path, capsys):
  train, test = _one_based_lists(clips, tmp_path)
  out = str(tmp_path / "out")
  code, report = _prepare(["--list", f"train={train}", "--list", f"test={test}", "--out", out])
  err = capsys.readouterr().err
  assert code == 1 and report is None
  assert "no clip has class 0" in err and "--label-base 1" in err, err
  assert "--label-base 0 --num-classes 8" in err and "Traceback" not in err
  assert not os.path.exists(out) or not os.listdir(out)  # nothing half-written
  # Naming the classes does not hide it: class 7 would be dropped and the rest shifted by one.
  code, _ = _prepare(["--list", f"train={train}", "--out", out, "--num-classes", "7"])
  err = capsys.readouterr().err
  assert code == 1 and "--label-base 1" in err, err
  # --strict names the fix at the first line out of range.
  code, _ = _prepare(["--list", f"train={train}", "--out", out, "--num-classes", "7", "--strict"])
  err = capsys.readouterr().err
  assert code == 2 and "train.txt:7: label 7 out of range" in err and "--label-base 1" in err


def test_label_base_one_maps_every_label_one_lower_and_is_recorded(clips, tmp_path):
  train, test = _one_based_lists(clips, tmp_path)
  out = str(tmp_path / "out")
  code, report = _prepare(["--list", f"train={train}", "--list", f"test={test}", "--out", out,
                           "--label-base", "1"])
  assert code == 0 and report["written"] == 14 and report["skipped"] == []
  given = {f"{k + 1:05d}": k % 7 + 1 for k in range(14)}
  got = {**_stored(out, "train"), **_stored(out, "test")}
  assert got == {name: label - 1 for name, label in given.items()}
  info = records.load_info(out)
  assert info["num_classes"] == 7 and info["label_base"] == 1
  assert {s: b["label_base"] for s, b in info["splits"].items()} == {"train": 1, "test": 1}
  assert info["splits"]["train"]["class_counts"]["0"] == 2
  # A label 0 in a 1-based list is out of range, reported, never stored as -1 or 0.
  bad = _write_list(tmp_path / "bad.txt", [f"{clips['paths'][0]} 0", f"{clips['paths'][1]} 7"])
  code, report = _prepare(["--list", f"train={bad}", "--out", str(tmp_path / "bad"),
                           "--label-base", "1"])
  assert code == 0 and report["written"] == 1
  assert report["skipped"][0]["reason"].startswith("label 0 out of range (>= 1 with --label-base")


def test_label_base_zero_keeps_the_numbers_when_asked(clips, tmp_path):
  train, _ = _one_based_lists(clips, tmp_path)
  out = str(tmp_path / "out")
  code, _ = _prepare(["--list", f"train={train}", "--out", out, "--label-base", "0",
                      "--num-classes", "8"])
  assert code == 0
  assert _stored(out, "train") == {f"{k + 1:05d}": k % 7 + 1 for k in range(10)}
  info = records.load_info(out)
  assert info["num_classes"] == 8 and info["label_base"] == 0
  assert "0" not in info["splits"]["train"]["class_counts"]


def test_zero_based_lists_and_subsets_are_untouched(clips, tmp_path):
  # Class 0 in any list of the run shows the numbering; a test split without it is fine.
  train = _write_list(tmp_path / "train.txt", [f"{p} {k % 7}" for k, p in
                                               enumerate(clips["paths"][:7])])
  test = _write_list(tmp_path / "test.txt", [f"{clips['paths'][8]} 3", f"{clips['paths'][9]} 6"])
  out = str(tmp_path / "out")
  code, _ = _prepare(["--list", f"train={train}", "--list", f"test={test}", "--out", out])
  assert code == 0 and _stored(out, "test") == {"00009": 3, "00010": 6}
  assert records.load_info(out)["label_base"] == 0


def test_a_split_added_later_is_read_with_the_recorded_base(clips, tmp_path, capsys):
  train, test = _one_based_lists(clips, tmp_path)
  out = str(tmp_path / "out")
  assert _prepare(["--list", f"train={train}", "--out", out, "--label-base", "1"])[0] == 0
  capsys.readouterr()
  code, _ = _prepare(["--list", f"test={test}", "--out", out])
  assert code == 0 and "label base 1" in capsys.readouterr().err
  assert _stored(out, "test") == {f"{k + 1:05d}": k % 7 for k in range(10, 14)}
  info = records.load_info(out)
  assert info["label_base"] == 1 and info["splits"]["test"]["label_base"] == 1


def _touch(path):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  open(path, "wb").close()


def test_recipes_record_their_label_base(tmp_path):
  src = str(tmp_path / "dfew")
  os.makedirs(os.path.join(src, "Clip", "clip_224x224", "00001"))
  sd = os.path.join(src, "EmoLabel_DataSplit")
  _write_list(_mk(os.path.join(sd, "train(single-labeled)", "set_1.csv")), ["1,7"])
  _write_list(_mk(os.path.join(sd, "test(single-labeled)", "set_1.csv")), ["1,1"])
  result = recipes.run_recipe("dfew", src)
  assert result.label_base == 1 and [e.label for e in result.entries] == [6, 0]
  assert recipes.RecipeResult("x", [], None).label_base is None
  ravdess = str(tmp_path / "ravdess")
  _touch(os.path.join(ravdess, "Actor_01", "02-01-08-01-01-01-01.mp4"))
  assert recipes.run_recipe("ravdess", ravdess).label_base == 1


def _mk(path):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  return path


def _mafw(tmp_path, train_lines, test_lines):
  src = str(tmp_path / "mafw")
  sd = os.path.join(src, "Train & Test Set", "single", "no_caption", "set_1")
  _write_list(_mk(os.path.join(sd, "train.txt")), train_lines)
  _write_list(_mk(os.path.join(sd, "test.txt")), test_lines)
  return src


def test_numeric_recipe_lists_get_one_base_for_the_whole_dataset(tmp_path):
  # MAFW lists numbered 1..11: the 11 shows it, and every other number moves down by one.
  src = _mafw(tmp_path, ["00001.mp4 1", "00002.mp4 11", "00003.mp4 anger"], ["00004.mp4 5"])
  result = recipes.run_recipe("mafw", src)
  assert [(os.path.basename(e.path), e.label) for e in result.entries] == [
      ("00001", 0), ("00002", 10), ("00003", 0), ("00004", 4)]
  assert result.label_base == 1 and result.skipped == []
  # 0-based numbers (0 present): kept; an 11 is then out of range and reported.
  src = _mafw(tmp_path, ["00001.mp4 0", "00002.mp4 11"], ["00004.mp4 5"])
  result = recipes.run_recipe("mafw", src)
  assert [e.label for e in result.entries] == [0, 5] and result.label_base == 0
  assert "label 11 out of range 0..10" in result.skipped[0]["reason"]
  # Neither 0 nor 11: ambiguous, refused unless --label-base says.
  src = _mafw(tmp_path, ["00001.mp4 3"], ["00004.mp4 5"])
  with pytest.raises(recipes.RecipeError, match="--label-base"):
    recipes.run_recipe("mafw", src)
  assert [e.label for e in recipes.run_recipe("mafw", src, label_base=1).entries] == [2, 4]
  # Names only: no base at all.
  src = _mafw(tmp_path, ["00001.mp4 anger"], ["00004.mp4 contempt"])
  assert recipes.run_recipe("mafw", src).label_base is None


# ------------------------------------------------------------------------------------------------
# Clip ids: whole, distinct, and two inputs with one id are an error naming both.


def test_long_non_ascii_ids_are_stored_whole_and_distinct(clips, tmp_path):
  import shutil  # pylint: disable=import-outside-toplevel
  long_dir = "\u8868\u60c5" * 42  # 252 UTF-8 bytes: the ids below differ only after byte 256
  for name, k in (("clip_a", 0), ("clip_b", 1)):
    shutil.copytree(clips["paths"][k], tmp_path / "T" / long_dir / name)
  shutil.copytree(clips["paths"][2], tmp_path / "T" / "short" / "clip_c")
  lst = _write_list(tmp_path / "test.txt", [f"T/{long_dir}/clip_a 0", f"T/{long_dir}/clip_b 1",
                                            "T/short/clip_c 0"])
  out = str(tmp_path / "out")
  code, report = _prepare(["--list", f"test={lst}", "--out", out, "--num-classes", "2"])
  assert code == 0 and report["written"] == 3
  want = [f"{long_dir}/clip_a", f"{long_dir}/clip_b", "short/clip_c"]
  assert len(want[0].encode()) == 259 and want[0].encode()[:256] == want[1].encode()[:256]
  source = records.ClipDataSource(out, "test")
  assert sorted(source[i]["id"] for i in range(3)) == sorted(want)
  index = records.read_index(records.find_shards(out, "test")[0])
  assert sorted(index["ids"]) == sorted(want)
  assert sorted(c["id"] for c in records.iter_clips(out, "test")) == sorted(want)


def test_inputs_that_would_share_an_id_are_refused_naming_both(clips, tmp_path, capsys):
  import shutil  # pylint: disable=import-outside-toplevel
  tree = tmp_path / "tree" / "happy"
  shutil.copytree(clips["paths"][0], tree / "x")                     # frame folder "x"
  video = tree / "x.mp4"                                             # ... and a video "x.mp4"
  synthetic_frames = synthetic.render_clip(0, 4, 24, np.random.default_rng(1))
  from data_pipelines import video_io  # pylint: disable=import-outside-toplevel
  video_io.write_video(str(video), synthetic_frames, 25.0)
  out = str(tmp_path / "out")
  code, report = _prepare(["--src-dir", str(tmp_path / "tree"), "--out", out])
  err = capsys.readouterr().err
  assert code == 1 and report is None, err
  assert str(tree / "x") in err and str(video) in err and "would both get id 'x'" in err, err
  # Second kind of clash: one stem with two video extensions, from a list.
  shutil.copy(video, tree / "y.MP4")
  shutil.copy(video, tree / "y.mp4")
  lst = _write_list(tmp_path / "l.txt", [f"{tree / 'y.MP4'} 0", f"{tree / 'y.mp4'} 0"])
  code, _ = _prepare(["--list", f"train={lst}", "--out", out])
  err = capsys.readouterr().err
  assert code == 1 and "l.txt:1 and " in err and "l.txt:2 would both get id 'y'" in err, err
  # The same name in two splits is fine.
  lst2 = _write_list(tmp_path / "l2.txt", [f"{tree / 'y.mp4'} 0"])
  code, _ = _prepare(["--list", f"train={lst2}", "--list", f"test={lst2}", "--out", out])
  assert code == 0


def test_file_names_that_are_not_utf8_get_escaped_distinct_ids(clips, tmp_path):
  import shutil  # pylint: disable=import-outside-toplevel
  root = os.fsencode(str(tmp_path / "tree"))
  names = [b"caf\xe9", b"caf\xe8", b"caf\xc3\xa9"]  # Latin-1 e-acute, e-grave; UTF-8 e-acute
  for k, name in enumerate(names):
    shutil.copytree(os.fsencode(clips["paths"][k]), os.path.join(root, b"sad", name))
  out = str(tmp_path / "out")
  code, report = _prepare(["--src-dir", os.fsdecode(root), "--out", out, "--label-names",
                           "happy,sad"])
  assert code == 0 and report["written"] == 3, report
  source = records.ClipDataSource(out, "train")
  got = sorted((source[i]["id"], source[i]["label"]) for i in range(3))
  assert got == [("caf\\xe8", 1), ("caf\\xe9", 1), ("caf\u00e9", 1)]


# ------------------------------------------------------------------------------------------------
# Lists that miss some clips: kept, flagged and reported, never silently filled.


def _cls_and_va(clips, tmp_path):
  """6 train clips with classes, 3 of them with valence/arousal; 2 test clips with both."""
  paths = clips["paths"]
  cls = [f"{p} {k % 2}" for k, p in enumerate(paths[:8])]
  va = [f"{p} {0.1 * k:.2f} {-0.2 * k:.2f}" for k, p in enumerate(paths[:8])]
  return {"train_cls": _write_list(tmp_path / "train_cls.txt", cls[:6]),
          "train_va": _write_list(tmp_path / "train_va.txt", va[:3]),
          "test_cls": _write_list(tmp_path / "test_cls.txt", cls[6:]),
          "test_va": _write_list(tmp_path / "test_va.txt", va[6:])}


def test_clips_without_regression_values_are_kept_flagged_and_reported(clips, tmp_path, capsys):
  lists = _cls_and_va(clips, tmp_path)
  out = str(tmp_path / "out")
  argv = ["--list", f"train={lists['train_cls']}", "--regression", f"train={lists['train_va']}",
          "--list", f"test={lists['test_cls']}", "--regression", f"test={lists['test_va']}",
          "--value-names", "valence,arousal", "--out", out]
  code, report = _prepare(argv)
  err = capsys.readouterr().err
  assert code == 0 and report["written"] == 8 and report["skipped"] == []
  assert "warning: 3 clip(s) of split(s) train have no regression values" in err, err
  missing = report["missing_values"]
  assert [m["source"] for m in missing] == [f"{lists['train_cls']}:{k}" for k in (4, 5, 6)]
  assert all(m["split"] == "train" and "not in the --regression list of split 'train'" in
             m["reason"] and "NaN" in m["reason"] for m in missing)
  assert report["missing_labels"] == []
  source = records.ClipDataSource(out, "train")
  by_name = {os.path.basename(source[i]["source"]): source[i] for i in range(len(source))}
  for k in range(6):
    clip = by_name[f"{k + 1:05d}"]
    assert clip["label"] == k % 2  # the class survives either way
    if k < 3:
      np.testing.assert_allclose(clip["values"], [0.1 * k, -0.2 * k], atol=1e-6)
    else:
      assert clip["values"].shape == (2,) and np.isnan(clip["values"]).all()
  info = records.load_info(out)
  assert info["splits"]["train"]["clips_missing_values"] == 3
  assert info["splits"]["test"]["clips_missing_values"] == 0
  # The summary says it too.
  summary = build.summary_text(report, out)
  assert "warning: 3 clip(s) have no regression values" in summary
  # --strict stops at the first, naming the line and what is missing.
  code, _ = _prepare(argv[:-1] + [str(tmp_path / "strict"), "--strict"])
  err = capsys.readouterr().err
  assert code == 2 and f"{lists['train_cls']}:4: no regression values" in err, err


def test_a_split_without_any_regression_list_and_clips_without_a_class(clips, tmp_path):
  lists = _cls_and_va(clips, tmp_path)
  # Second shape of the same gap: the test split's values were never given at all, and a
  # regression line names a train clip that the class list lacks.
  extra_va = _write_list(tmp_path / "train_va2.txt", open(lists["train_va"]).read().splitlines()
                         + [f"{clips['paths'][12]} 0.5 0.5"])
  out = str(tmp_path / "out")
  code, report = _prepare(["--list", f"train={lists['train_cls']}", "--regression",
                           f"train={extra_va}", "--list", f"test={lists['test_cls']}", "--out",
                           out])
  assert code == 0 and report["written"] == 9
  by_split = {}
  for m in report["missing_values"]:
    by_split.setdefault(m["split"], []).append(m)
  assert len(by_split["train"]) == 3 and len(by_split["test"]) == 2
  assert "split 'test' has no --regression list" in by_split["test"][0]["reason"]
  (lost,) = report["missing_labels"]
  assert lost["source"] == f"{extra_va}:4" and "no class label" in lost["reason"]
  source = records.ClipDataSource(out, "train")
  stored = {os.path.basename(source[i]["source"]): source[i] for i in range(len(source))}
  assert stored["00013"]["label"] == -1
  np.testing.assert_allclose(stored["00013"]["values"], [0.5, 0.5])
  # A regression-only dataset has no classes to miss; a classification-only one no values.
  code, report = _prepare(["--regression", f"train={lists['train_va']}", "--out",
                           str(tmp_path / "va_only")])
  assert code == 0 and report["missing_values"] == report["missing_labels"] == []
  code, report = _prepare(["--list", f"train={lists['train_cls']}", "--out",
                           str(tmp_path / "cls_only")])
  assert code == 0 and report["missing_values"] == report["missing_labels"] == []
  assert records.ClipDataSource(str(tmp_path / "cls_only"), "train")[0]["values"].shape == (0,)


# ------------------------------------------------------------------------------------------------
# --out URLs: written through etils.epath, never into a local folder named "gs:".




def test_out_url_is_written_and_resumed_through_epath(clips, tmp_path, monkeypatch, fake_gcs):
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  lst = _write_list(tmp_path / "l.txt", [f"{p} {k % 7}" for k, p in enumerate(clips["paths"])])
  url = "gs://bucket/runs/ds"
  argv = ["--list", f"train={lst}", "--out", url, "--num-shards", "2"]
  assert build.main(argv + ["--quiet", "--short-side", "16"]) == 0
  assert not os.listdir(cwd), os.listdir(cwd)  # no local "gs:" folder, nothing else either
  local = os.path.join(fake_gcs["root"], "runs", "ds")
  names = sorted(os.listdir(local))
  shards = [records.shard_name("train", i, 2) for i in range(2)]
  assert names == sorted(shards + [s + records.INDEX_SUFFIX for s in shards]
                         + [records.INFO_FILE, build.REPORT_FILE]), names
  assert any(c.startswith(url) and c.endswith(records.INFO_FILE) for c in fake_gcs["calls"])
  # What went to the "bucket" reads back through the URL like a local dataset.
  source = records.ClipDataSource(url, "train")
  assert sorted((os.path.basename(source[i]["source"]), source[i]["label"])
                for i in range(len(source))) == [(f"{k + 1:05d}", k % 7) for k in range(14)]
  assert records.load_info(url)["splits"]["train"]["num_clips"] == 14
  # A re-run finds the finished shards through the URL and keeps them.
  assert build.main(argv + ["--quiet", "--short-side", "16"]) == 0
  with open(os.path.join(local, build.REPORT_FILE), encoding="utf-8") as f:
    report = json.load(f)
  assert report["shards"]["kept"] == shards and report["newly_encoded"] == 0
  # Another shard count removes the stale ones there.
  assert build.main(argv[:-1] + ["3", "--quiet", "--short-side", "16"]) == 0
  assert sorted(n for n in os.listdir(local) if ".tfrecord-" in n and n.endswith("-of-00002")) == []
  assert not os.listdir(cwd)


def test_out_url_with_an_unknown_scheme_is_refused(clips, tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)
  lst = _write_list(tmp_path / "l.txt", [f"{clips['paths'][0]} 0"])
  assert build.main(["--list", lst, "--out", "foo://bucket/ds", "--quiet"]) == 1
  err = capsys.readouterr().err
  assert "cannot write to foo:// URLs" in err and "Traceback" not in err
  assert os.listdir(tmp_path) == ["l.txt"]


# ------------------------------------------------------------------------------------------------
# Every command in the configs' docstrings parses with the real argument parsers.

_CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def _doc_commands(path):
  """The `python -m svfap_jax ...` commands of a config's docstring, as argv lists."""
  import ast  # pylint: disable=import-outside-toplevel
  import shlex  # pylint: disable=import-outside-toplevel
  with open(path, encoding="utf-8") as f:
    doc = ast.get_docstring(ast.parse(f.read())) or ""
  commands, current = [], None
  for line in doc.splitlines():
    text = line.strip()
    if current is None and text.startswith("python -m svfap_jax "):
      current = ""
    if current is None:
      continue
    current += " " + text.rstrip("\\")
    if not text.endswith("\\"):
      commands.append(shlex.split(current)[3:])
      current = None
  return commands


def _prepare_args_problem(argv):
  """None if `prepare` would accept argv, else what argparse / check_args said."""
  import contextlib  # pylint: disable=import-outside-toplevel
  import io  # pylint: disable=import-outside-toplevel
  parser = build.build_parser()
  err = io.StringIO()
  try:
    with contextlib.redirect_stderr(err):
      build.check_args(parser, parser.parse_args(argv))
  except SystemExit:
    return err.getvalue().strip().splitlines()[-1]
  return None


def test_config_docstring_commands_parse(monkeypatch):
  from svfap_jax import sharding  # pylint: disable=import-outside-toplevel
  from svfap_jax.train import main as train_main  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(sharding, "initialize_distributed", lambda *a, **k: None)
  monkeypatch.chdir(os.path.dirname(_CONFIGS))
  # The check can fail: what the docstrings used to say is refused.
  assert "needs --src" in _prepare_args_problem(["--recipe", "dfew", "--out", "DATA"])
  assert "expected one argument" in _prepare_args_problem(
      ["--list", "train=a.txt", "--regression", "--out", "DATA"])
  seen = {"prepare": 0, "train": 0}
  problems = []
  for name in sorted(os.listdir(_CONFIGS)):
    if not name.endswith(".py") or name.startswith("__"):
      continue
    for argv in _doc_commands(os.path.join(_CONFIGS, name)):
      command, rest = argv[0], argv[1:]
      if command == "prepare":
        seen["prepare"] += 1
        problem = _prepare_args_problem(rest)
        if problem:
          problems.append(f"{name}: prepare {' '.join(rest)}: {problem}")
        continue
      assert command in ("pretrain", "finetune", "evaluate", "kfold"), (name, command)
      seen["train"] += 1
      # ml_collections registers the --config.* overrides from sys.argv, as the CLI has it.
      monkeypatch.setattr(sys, "argv", ["svfap", command] + rest)
      try:
        fv = train_main.parse_flags(rest, f"svfap {command}",
                                    choose_checkpoint=command == "evaluate")
      except (SystemExit, Exception) as e:  # pylint: disable=broad-except
        problems.append(f"{name}: {command} {' '.join(rest)}: {type(e).__name__}: {e}")
        continue
      mode = "pretrain" if command == "pretrain" else "finetune"
      if command != "evaluate" and fv.config.mode != mode:
        problems.append(f"{name}: {command} with a {fv.config.mode} config")
  assert not problems, "\n".join(problems)
  # Ten dataset configs show how to prepare their data; demo.py shows training only.
  assert seen["prepare"] == 10 and seen["train"] >= 12, seen


def test_first_impressions_videos_without_every_trait_are_counted(tmp_path, caplog):
  import pickle  # pylint: disable=import-outside-toplevel
  traits = {t: {"v1.mp4": 0.5, "v2.mp4": 0.25} for t in recipes.BIG_FIVE}
  del traits["neuroticism"]["v2.mp4"]
  traits["openness"]["v3.mp4"] = 0.75
  pkl = tmp_path / "annotation.pkl"
  pkl.write_bytes(pickle.dumps(traits, protocol=2))
  with caplog.at_level("WARNING", logger="data_pipelines.recipes"):
    n = recipes.convert_first_impressions(str(pkl), "/fi", str(tmp_path / "fi.txt"))
  assert n == 1
  assert "2 video(s) lack some of the traits" in caplog.text
  assert "v2.mp4 (no neuroticism)" in caplog.text and "v3.mp4 (no conscientiousness" in caplog.text
