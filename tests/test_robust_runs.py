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
