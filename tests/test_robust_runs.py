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
device or process count are subprocesses. All use svfap_tiny at 64 px on tiny frame-folder
datasets written here.
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

ROOT = pathlib.Path(__file__).resolve().parents[1]
_CACHE = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"svfap_jax_test_cache_{os.getuid()}")
LONG_DIR = "\u8868\u60c5" * 42   # 84 CJK characters: 252 UTF-8 bytes
_TINY = ["--config.model.name=svfap_tiny", "--config.data.img_size=64",
         "--config.recon_image_every_steps=0", "--config.data.worker_count=0"]


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


def _env(devices, **extra):
  env = dict(os.environ)
  env.update(JAX_COMPILATION_CACHE_DIR=_CACHE, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  env.update({k: str(v) for k, v in extra.items()})
  return env


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
                            cwd=ROOT, env=_env(1), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for i in range(2)]
  outs = [p.communicate(timeout=300) for p in procs]
  expected = ["a", "\u8868\u60c5" * 90 + "/x", "", "b" * 300, "c", "\u00e9"]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
    assert json.loads(out.strip().splitlines()[-1]) == expected
