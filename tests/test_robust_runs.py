"""Runs that never lose training, and evaluation of real test splits.

- every command takes paths relative to the current directory (Orbax itself wants absolute ones);
- the trained state is checkpointed before anything that can fail after training (a failing
  evaluation is injected) and the run resumes from it;
- evaluation batches of any size on any mesh: the last batch is padded, every clip scored;
- clip ids of any length and script stay whole and distinct;
- unlabelled test clips are scored, listed and counted, and left out of the metrics;
- missing (NaN) regression targets are left out of the loss, so every update is finite; the
  non-finite-update limit does not depend on the logging interval;
- SIGTERM on one process of a multi-process run stops every process at the same step.

Training runs in this process where a failure is injected (monkeypatch); runs that need another
device or process count are subprocesses. All train svfap_micro (one block per stage) at 64 px on
tiny frame-folder datasets written here.
"""
import contextlib
import csv
import json
import math
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import JAX_CACHE_DIR, subprocess_env

ROOT = pathlib.Path(__file__).resolve().parents[1]
LONG_DIR = "\u8868\u60c5" * 42   # 84 CJK characters: 252 UTF-8 bytes
_MICRO = ["--config.model.name=svfap_micro", "--config.data.img_size=64",
          "--config.recon_image_every_steps=0", "--config.data.worker_count=0"]


def _enable_compile_cache():
  import jax
  jax.config.update("jax_compilation_cache_dir", JAX_CACHE_DIR)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def _write_clip(folder: pathlib.Path, seed: int, emotion: int, frames: int = 20, size: int = 48):
  from PIL import Image
  from data_pipelines.synthetic import render_clip
  folder.mkdir(parents=True, exist_ok=True)
  for i, frame in enumerate(render_clip(emotion, frames, size, np.random.default_rng(seed))):
    Image.fromarray(frame).save(folder / f"{i:04d}.jpg", quality=90)


def _prepare(root: pathlib.Path, out: str, splits: dict, values: dict = None):
  """Frame-folder clips + original-format lists -> `prepare` into root/out.

  splits: {split: [(relative clip folder, label)]}; values: {split: [(folder, v1, v2)]}.
  """
  from data_pipelines import build
  argv = ["--out", str(root / out), "--short-side", "48", "--label-names", "calm,happy",
          "--quiet"]
  for split, clips in splits.items():
    for i, (rel, label) in enumerate(clips):
      _write_clip(root / rel, seed=hash((split, i)) % 1000, emotion=3 if label == 1 else 0)
    (root / f"{split}.txt").write_text("".join(f"{rel} {label}\n" for rel, label in clips),
                                       encoding="utf-8")
    argv += ["--list", f"{split}={root / f'{split}.txt'}"]
  for split, rows in (values or {}).items():
    (root / f"{split}_va.txt").write_text(
        "".join(f"{rel} {a} {b}\n" for rel, a, b in rows), encoding="utf-8")
    argv += ["--regression", f"{split}={root / f'{split}_va.txt'}"]
  if values:
    argv += ["--value-names", "valence,arousal"]
  assert build.main(argv) == 0
  return root / out


def _cli(*argv):
  from svfap_jax import cli
  # ml_collections finds the --config file (and so its override flags) in sys.argv.
  saved = sys.argv
  sys.argv = ["svfap", *argv[1:]]
  try:
    return cli.main(list(argv))
  finally:
    sys.argv = saved


@contextlib.contextmanager
def _inside(directory):
  """chdir for a run in this process; restores the directory and the SIGTERM handler."""
  previous, handler = os.getcwd(), signal.getsignal(signal.SIGTERM)
  os.chdir(directory)
  try:
    yield
  finally:
    os.chdir(previous)
    signal.signal(signal.SIGTERM, handler)


def _finetune_args(workdir, data, *extra):
  return ["finetune", "--config", str(ROOT / "configs/demo.py") + ":finetune", "--workdir",
          workdir, f"--config.data.dir={data}", "--config.total_steps=2",
          "--config.batch_size=2", "--config.eval_every_steps=2",
          "--config.checkpoint_every_steps=2", "--config.log_every_steps=1", *_MICRO, *extra]


def _read_csv(path):
  with open(path, encoding="utf-8", newline="") as f:
    return list(csv.DictReader(f))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _leaves(tree):
  import jax
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


# ---------------------------------------------------------------------------------- relative paths


def test_absolute_path_keeps_urls(tmp_path, monkeypatch):
  from svfap_jax import checkpoint
  monkeypatch.chdir(tmp_path)
  assert str(checkpoint.absolute_path("W/x")) == str(tmp_path / "W" / "x")
  assert str(checkpoint.absolute_path("gs://bucket/run")) == "gs://bucket/run"
  assert str(checkpoint.absolute_path("/abs/run")) == "/abs/run"
  assert str(checkpoint.absolute_path("~/run")) == os.path.expanduser("~/run")


def test_checkpoint_layer_takes_relative_paths(tmp_path):
  """RunCheckpointer, find_checkpoint_dir, restore_params, import and export with paths relative
  to the current directory (Orbax itself refuses them)."""
  import svfap_jax
  from svfap_jax import checkpoint
  state = {"params": {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}}
  with _inside(tmp_path):
    saver = checkpoint.RunCheckpointer("W", best_metric="uar")
    saver.save(3, state, meta={"step": 3}, force=True)
    saver.save_best(3, state, {"uar": 0.5})
    saver.wait()
    assert saver.latest_step() == 3
    params, meta = checkpoint.restore_params("W")
    np.testing.assert_array_equal(params["w"], state["params"]["w"])
    assert meta["step"] == 3
    for where, directory in (("W/best", "best"), ("W/checkpoints/3", "checkpoints")):
      manager, step = checkpoint.find_checkpoint_dir(where)
      assert step == 3 and str(manager.directory) == str(tmp_path / "W" / directory)
    model = svfap_jax.create_model("svfap_tiny", num_classes=2, seed=1)
    svfap_jax.export_torch(model, "m.pth")
    assert _cli("import", "--torch", "m.pth", "--workdir", "runs/imp", "--model", "svfap_tiny",
                "--num-classes", "2") == 0
    assert _cli("export", "--workdir", "runs/imp", "--out", "out/m.safetensors") == 0
  assert (tmp_path / "W" / "checkpoints" / "3").is_dir()
  assert (tmp_path / "W" / "best" / "3").is_dir()
  assert (tmp_path / "runs" / "imp" / "checkpoints" / "0").is_dir()
  again = svfap_jax.import_torch(str(tmp_path / "out" / "m.safetensors"), "svfap_tiny",
                                 num_classes=2)
  for a, b in zip(_leaves(model.params), _leaves(again.params)):
    np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------ evaluation of real test splits


def test_metrics_leave_out_unlabelled_clips():
  """evaluate's metrics helpers on a split with labels -1 and NaN values, against numpy."""
  from svfap_jax import metrics
  rng = np.random.default_rng(0)
  t = rng.uniform(-1, 1, (12, 2))
  p = t * 0.5 + rng.normal(0, 0.2, (12, 2))
  t_missing = t.copy()
  t_missing[:4, 0] = np.nan          # 4 clips without valence
  out = metrics.regression_metrics(t_missing, p, names=["valence", "arousal"])
  ref = metrics.regression_metrics(t[4:, :1], p[4:, :1])
  assert out["per_dim"]["valence"]["ccc"] == pytest.approx(ref["ccc"])
  assert out["per_dim"]["valence"]["count"] == 8 and out["per_dim"]["arousal"]["count"] == 12
  rmse_arousal = np.sqrt(np.mean((t[:, 1] - p[:, 1]) ** 2))
  assert out["per_dim"]["arousal"]["rmse"] == pytest.approx(rmse_arousal)
  assert out["rmse"] == pytest.approx((np.sqrt(np.mean((t[4:, 0] - p[4:, 0]) ** 2))
                                       + rmse_arousal) / 2)


def test_config_check_names_a_bad_eval_batch_size():
  import ml_collections
  from configs import demo
  from svfap_jax.train import config_check
  config = demo.get_config("finetune")
  with config.unlocked():
    config.data.eval_batch_size = -1
  with pytest.raises(config_check.ConfigError, match=r"data\.eval_batch_size=-1 must be >= 0"):
    config_check.validate(config, mode="finetune")
  assert isinstance(config, ml_collections.ConfigDict)


def test_kfold_pools_the_labelled_clips_of_each_fold(tmp_path):
  """kfold reads each fold's UTF-8 predictions CSV and leaves unlabelled rows out of the pool."""
  from svfap_jax import metrics
  from svfap_jax.train import evaluate, main
  result = {"ids": [LONG_DIR + "/a", "b", "c", "u"], "targets": np.array([0, 1, 1, -1]),
            "scores": np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.5, 0.5]]),
            "metrics": {}}
  evaluate.write_outputs(result, str(tmp_path), prefix="test_last", label_names=["x", "y"])
  rows = _read_csv(tmp_path / "test_last_predictions.csv")
  assert [r["id"] for r in rows] == result["ids"] and rows[3]["label"] == "-1"
  y_true, y_pred = main._read_predictions(tmp_path / "test_last_predictions.csv")
  np.testing.assert_array_equal(y_true, [0, 1, 1])
  np.testing.assert_array_equal(y_pred, [0, 1, 0])
  pooled = metrics.pool_folds([(y_true, y_pred)] * 2)
  assert pooled["war"] == pytest.approx(2 / 3) and pooled["uar"] == pytest.approx(0.75)


_GATHER_IDS = r"""
import json, sys
import jax
from svfap_jax import sharding
sharding.initialize_distributed(sys.argv[1], 2, int(sys.argv[2]))
from svfap_jax.train import evaluate
mine = [["a", "\u8868\u60c5" * 90 + "/x", ""], ["b" * 300, "c", "\u00e9"]][jax.process_index()]
print(json.dumps(evaluate._gather_strings(mine)))
"""


def test_ids_of_any_length_gather_across_processes():
  port = _free_port()
  procs = [subprocess.Popen([sys.executable, "-c", _GATHER_IDS, f"127.0.0.1:{port}", str(i)],
                            cwd=ROOT, env=subprocess_env(1), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for i in range(2)]
  outs = [p.communicate(timeout=300) for p in procs]
  expected = ["a", "\u8868\u60c5" * 90 + "/x", "", "b" * 300, "c", "\u00e9"]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
    assert json.loads(out.strip().splitlines()[-1]) == expected


# ----------------------------------------------------- a fine-tuning run that never loses training


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A 2-step fine-tuning started with relative paths whose evaluation after the last step
  fails (injected), then resumed; its test split has long CJK ids and an unlabelled clip."""
  _enable_compile_cache()
  root = tmp_path_factory.mktemp("robust")
  long_a, long_b = f"T/{LONG_DIR}/clip_a", f"T/{LONG_DIR}/clip_b"
  _prepare(root, "ds", {
      "train": [("R/a", 0), ("R/b", 1), ("R/c", 0), ("R/d", 1)],
      "test": [(long_a, 0), (long_b, 1), ("T/short/clip_c", 1), ("T/unsure/clip_u", -1)]})
  from svfap_jax.train import evaluate
  real = evaluate.evaluate
  calls = []

  def failing(*args, **kwargs):
    calls.append(kwargs["kind"])
    raise RuntimeError("injected evaluation failure")

  with _inside(root), pytest.MonkeyPatch.context() as mp:
    mp.setattr(evaluate, "evaluate", failing)
    with pytest.raises(RuntimeError, match="injected evaluation failure"):
      _cli(*_finetune_args("W", "ds"))
  failed_steps = sorted(int(p.name) for p in (root / "W" / "checkpoints").iterdir()
                        if p.name.isdigit())
  assert calls == ["eval"]
  with _inside(root):
    assert _cli(*_finetune_args("W", "ds")) == 0
  assert evaluate.evaluate is real
  return {"root": root, "failed_steps": failed_steps,
          "report": json.loads((root / "W" / "report.json").read_text())}


def test_checkpoint_survives_a_failing_evaluation_and_resumes(run):
  """The step-2 checkpoint is written before the evaluation of step 2, which fails; the
  restarted run resumes from it (nothing retrained) and finishes with its final test."""
  assert run["failed_steps"] == [2]
  report = run["report"]
  assert report["steps"] == 2 and report["total_steps"] == 2 and not report["preempted"]
  rows = [json.loads(l) for l in (run["root"] / "W" / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows if "loss" in r and "split" not in r] == [1, 2]
  assert report["test_last"]["num_videos"] == 4


def test_every_command_takes_relative_paths(run):
  """export, import, predict, extract, evaluate and finetune --config.init_from with paths
  relative to the current directory (the finetune --workdir W of the fixture is one too)."""
  root = run["root"]
  with _inside(root):
    assert _cli("export", "--workdir", "W", "--out", "out/m.pth") == 0
    assert (root / "out" / "m.pth").stat().st_size > 0
    assert _cli("import", "--torch", "out/m.pth", "--workdir", "imp", "--model", "svfap_micro",
                "--num-classes", "2") == 0
    assert (root / "imp" / "checkpoints" / "0").is_dir()
    assert _cli("predict", "--workdir", "W", "--video", "R/a", "--face-crop", "off", "--out",
                "out/pred.json", "--quiet") == 0
    assert json.loads((root / "out" / "pred.json").read_text())["windows"]
    assert _cli("extract", "--checkpoint", "W/checkpoints", "--video", "R/b", "--face-crop",
                "off", "--out", "out/emb.npy", "--quiet") == 0
    embedding = np.load(root / "out" / "emb.npy", allow_pickle=True).item()["video"]
    assert embedding.ndim == 1 and np.isfinite(embedding).all()
    assert _cli("evaluate", "--config", str(ROOT / "configs/demo.py") + ":finetune", "--workdir",
                "W", "--config.data.dir=ds", "--config.batch_size=2", *_MICRO) == 0
    assert json.loads((root / "W" / "report.json").read_text())["evaluate_best"]["num_videos"] == 4
    # A relative init_from; one step from the imported weights.
    assert _cli(*_finetune_args("W2", "ds", "--config.init_from=imp",
                                "--config.total_steps=1", "--config.eval_every_steps=1",
                                "--config.checkpoint_every_steps=1")) == 0
  meta = json.loads((root / "W2" / "run_meta.json").read_text())
  assert "loaded" in meta["init_report"]
  assert (root / "W2" / "checkpoints" / "1").is_dir()


def test_ids_of_any_length_stay_whole_and_distinct(run):
  """Two clips whose 259-byte ids differ only after byte 256 stay two clips, with whole ids."""
  from svfap_jax.data import read_clips
  stored = [c["id"] for c in read_clips(str(run["root"] / "ds"), "test")]
  long_ids = [i for i in stored if LONG_DIR in i]
  assert len(long_ids) == 2 and all(len(i.encode()) > 256 for i in long_ids)
  assert long_ids[0][:86] == long_ids[1][:86]   # the same first 258 bytes
  metrics = run["report"]["test_last"]
  assert metrics["num_videos"] == 4 and metrics["num_views"] == 8
  rows = _read_csv(run["root"] / "W" / "test_last_predictions.csv")
  assert sorted(r["id"] for r in rows) == sorted(stored)


def test_unlabelled_test_clips_are_scored_counted_and_left_out(run):
  """Metrics over the 3 labelled clips; the unlabelled one is counted and has its prediction."""
  metrics = run["report"]["test_last"]
  assert metrics["num_unlabelled"] == 1
  assert sum(metrics["support"]) == 3 and metrics["support"] == [1, 2]
  rows = {r["id"]: r for r in _read_csv(run["root"] / "W" / "test_last_predictions.csv")}
  assert rows["unsure/clip_u"]["label"] == "-1"
  # UAR / WAR from the CSV's labelled rows, independently of the metrics code.
  labelled = [r for r in rows.values() if r["label"] != "-1"]
  correct = [r["label"] == r["predicted"] for r in labelled]
  assert metrics["war"] == pytest.approx(np.mean(correct))
  recalls = [np.mean([r["label"] == r["predicted"] for r in labelled if r["label"] == c])
             for c in ("0", "1")]
  assert metrics["uar"] == pytest.approx(np.mean(recalls))


def test_eval_batch_that_does_not_split_over_devices_is_padded(run, tmp_path):
  """data.eval_batch_size=3 on 2 devices: every clip is scored (4 clips, 8 views), with the same
  scores as batch 2."""
  import shutil
  shutil.copytree(run["root"] / "W", tmp_path / "W", ignore=shutil.ignore_patterns("*.png"))
  argv = [sys.executable, "-m", "svfap_jax", "evaluate", "--config",
          str(ROOT / "configs/demo.py") + ":finetune", "--workdir", str(tmp_path / "W"),
          f"--config.data.dir={run['root'] / 'ds'}", "--config.batch_size=2",
          "--config.data.eval_batch_size=3", "--checkpoint", "last", *_MICRO]
  proc = subprocess.run(argv, cwd=ROOT, env=subprocess_env(2), capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "data.eval_batch_size=3 does not split over 2 batch shard(s)" in proc.stderr
  metrics = json.loads((tmp_path / "W" / "report.json").read_text())["evaluate_last"]
  assert metrics["num_videos"] == 4 and metrics["num_views"] == 8
  ours = {r["id"]: r for r in _read_csv(tmp_path / "W" / "evaluate_last_predictions.csv")}
  theirs = {r["id"]: r for r in _read_csv(run["root"] / "W" / "test_last_predictions.csv")}
  assert ours.keys() == theirs.keys()
  for key, row in ours.items():
    np.testing.assert_allclose([float(row["p_calm"]), float(row["p_happy"])],
                               [float(theirs[key]["p_calm"]), float(theirs[key]["p_happy"])],
                               atol=1e-4)


# ---------------------------------------------------------------------- missing regression targets


def _regression_config(data, **overrides):
  from configs import demo
  config = demo.get_config("finetune")
  with config.unlocked():
    config.data.dir = str(data)
    config.task = "regression"
    config.best_metric = "ccc"
    config.model.name = "svfap_micro"
    config.total_steps = 4
    config.batch_size = 2
    config.eval_every_steps = 4
    config.checkpoint_every_steps = 4
    config.log_every_steps = 1
    for key, value in overrides.items():
      config[key] = value
  return config


@pytest.fixture(scope="module")
def regression_data(tmp_path_factory):
  """4 train clips of which only 1 has valence/arousal values; 3 test clips, 2 with values."""
  root = tmp_path_factory.mktemp("regression")
  train = [("R/a", 0), ("R/b", 1), ("R/c", 0), ("R/d", 1)]
  test = [("T/e", 0), ("T/f", 1), ("T/g", 0)]
  return _prepare(root, "ds", {"train": train, "test": test},
                  values={"train": [("R/a", 0.6, 0.3)],
                          "test": [("T/e", 0.6, 0.4), ("T/f", -0.5, 0.7)]})


def test_missing_regression_targets_leave_every_update_finite(regression_data, tmp_path):
  """Every batch holds clips without values; the loss leaves them out: all updates finite."""
  from svfap_jax.train import loop
  _enable_compile_cache()
  with _inside(tmp_path):
    summary = loop.train(_regression_config(regression_data), str(tmp_path / "W"))
  rows = [json.loads(l) for l in (tmp_path / "W" / "metrics.jsonl").read_text().splitlines()]
  train = [r for r in rows if "loss" in r and "split" not in r]
  assert [r["step"] for r in train] == [1, 2, 3, 4]
  assert all(r["nonfinite_steps"] == 0 for r in train)
  assert all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in train)
  # 3 of 4 clips have no values: each batch of 2 holds 2 or 4 missing values.
  assert all(r["missing_targets"] in (2, 4) for r in train)
  assert summary["nonfinite_steps"] == 0
  assert summary["missing_target_values"] == sum(r["missing_targets"] for r in train)
  # The test clip without values is scored and listed, and left out of the metrics.
  test = summary["test_last"]
  assert test["num_videos"] == 3 and test["num_unlabelled"] == 1
  assert test["per_dim"]["valence"]["count"] == 2 and math.isfinite(test["rmse"])
  rows = {r["id"]: r for r in _read_csv(tmp_path / "W" / "test_last_predictions.csv")}
  assert rows["g"]["target_0"] == "" and rows["g"]["pred_0"] != ""
  scored = [r for r in rows.values() if r["target_0"]]
  assert len(scored) == 2
  rmse = np.mean([np.sqrt(np.mean([(float(r[f"pred_{k}"]) - float(r[f"target_{k}"])) ** 2
                                   for r in scored])) for k in (0, 1)])
  assert test["rmse"] == pytest.approx(rmse, abs=1e-4)


def test_nonfinite_limit_counts_consecutive_updates_whatever_the_logging(regression_data,
                                                                         tmp_path):
  """Logged every step, 2 non-finite updates (injected) under a limit of 3 do not stop the run;
  the same updates under a limit of 2 stop it at step 3, with a checkpoint and a message that
  names the missing values in those batches."""
  import jax.numpy as jnp
  from svfap_jax.train import loop
  _enable_compile_cache()

  def flag(trainer, calls):
    real = trainer.train_step
    count = []

    def step(state, batch):
      state, metrics = real(state, batch)
      count.append(1)
      if len(count) in calls:
        metrics = dict(metrics, nonfinite=jnp.ones((), jnp.int32))
      return state, metrics

    trainer.train_step = step

  with _inside(tmp_path):
    trainer = loop.Trainer(_regression_config(regression_data, nan_max_consecutive=3),
                           str(tmp_path / "A"))
    flag(trainer, {2, 3})
    summary = trainer.run()
    assert summary["steps"] == 4 and summary["nonfinite_steps"] == 2
    trainer = loop.Trainer(_regression_config(regression_data, nan_max_consecutive=2),
                           str(tmp_path / "B"))
    flag(trainer, {2, 3})
    with pytest.raises(loop.TrainingDiverged) as error:
      trainer.run()
  message = str(error.value)
  assert "NaN or Inf for 2 consecutive updates up to step 3 (nan_max_consecutive=2)" in message
  assert "missing (NaN) regression target values" in message
  steps = [p.name for p in (tmp_path / "B" / "checkpoints").iterdir()]
  assert steps == ["4"]   # checked one step behind: the state after step 4, still finite


def test_update_health_is_independent_of_grouping():
  from svfap_jax.train import loop
  flags = [0, 1, 1, 0, 1, 1, 1, 0]

  def stop_at(groups):
    health, seen = loop._UpdateHealth(3), 0
    for group in groups:
      seen += len(group)
      if health.add([{"nonfinite": f, "missing_targets": 0} for f in group]):
        return seen, health.total
    return None, health.total

  assert stop_at([[f] for f in flags]) == (7, 5)
  assert stop_at([flags[:4], flags[4:]]) == (8, 5)   # noticed at the end of the window
  assert stop_at([flags[:7]]) == (7, 5)
  assert loop._UpdateHealth(3).add([{"nonfinite": 1}] * 2) is False


# ------------------------------------------------------------------------ multi-process preemption


@pytest.mark.multiprocess
def test_sigterm_on_one_process_stops_every_process_at_the_same_step(tmp_path):
  """2 processes x 1 device; only process 1 gets SIGTERM. Both checkpoint the same step and
  exit 0 (a process stopping alone would leave the other waiting in a collective)."""
  data = _prepare(tmp_path, "ds", {"train": [("R/a", 0), ("R/b", 1), ("R/c", 0), ("R/d", 1)]})
  port = _free_port()
  argv = [sys.executable, "-m", "svfap_jax", "pretrain", "--config", "configs/demo.py:pretrain",
          "--workdir", str(tmp_path / "P"), f"--config.data.dir={data}",
          "--config.total_steps=300", "--config.batch_size=2", "--config.log_every_steps=1",
          "--config.checkpoint_every_steps=1000", "--config.mesh.data=-1", *_MICRO]
  procs = [subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True,
                            env=subprocess_env(1, SVFAP_COORDINATOR=f"127.0.0.1:{port}",
                                               SVFAP_NUM_PROCESSES=2, SVFAP_PROCESS_ID=i))
           for i in range(2)]
  try:
    deadline = time.time() + 600
    lines = []
    for line in procs[0].stdout:   # only process 0 prints progress
      lines.append(line)
      if line.startswith("step 3/300"):
        procs[1].send_signal(signal.SIGTERM)
        break
      assert time.time() < deadline, "".join(lines[-20:])
    rest = procs[0].communicate(timeout=600)[0]
    other = procs[1].communicate(timeout=600)[0]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  outputs = ["".join(lines) + rest, other]
  summaries = []
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-3000:]
    summaries.append(json.loads([l for l in out.splitlines() if l.startswith("{")][-1]))
  assert summaries[0]["preempted"] and summaries[1]["preempted"]
  stop = summaries[0]["steps"]
  assert summaries[1]["steps"] == stop and 3 <= stop < 300
  assert [p.name for p in (tmp_path / "P" / "checkpoints").iterdir()] == [str(stop)]
  report = json.loads((tmp_path / "P" / "report.json").read_text())
  assert report["preempted"] and report["steps"] == stop
