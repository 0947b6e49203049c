"""Training system: sharded equivalence, crash resume, single compilation, the CLI run contract.

Each run is a subprocess (the device count is fixed when JAX starts, and a crash test needs a
process to kill) on a tiny synthetic face-clip dataset.
"""
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from conftest import subprocess_env

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(command, workdir, data, *overrides, devices=1, mode_config="configs/demo.py:pretrain",
         env_extra=None, check=True, callbacks=()):
  """Runs `python -m svfap_jax COMMAND ...`; `callbacks` are options of tests/callback_run.py."""
  hooks = [str(ROOT / "tests" / "callback_run.py"), *callbacks] if callbacks else []
  argv = [sys.executable, *hooks, "-m", "svfap_jax", command, "--config", mode_config,
          "--workdir", str(workdir), f"--config.data.dir={data}", "--config.model.name=svfap_micro",
          "--config.data.img_size=64", "--config.log_every_steps=1",
          "--config.recon_image_every_steps=0", *overrides]
  proc = subprocess.run(argv, cwd=ROOT, env=subprocess_env(devices, **(env_extra or {})),
                        capture_output=True, text=True, timeout=600)
  if check and proc.returncode != 0:
    raise AssertionError(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
  return proc


def _train_rows(workdir):
  rows = [json.loads(l) for l in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()]
  return [r for r in rows if "loss" in r and "split" not in r]


def _final_params(workdir):
  from svfap_jax import checkpoint
  params, _ = checkpoint.restore_params(str(workdir))
  import jax
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(params)]


def test_eight_devices_match_one_device(face_clips, tmp_path):
  """data=2 x fsdp=4 on 8 fake CPU devices gives the single-device losses (fp32, rtol 1e-4)."""
  common = ["--config.total_steps=5", "--config.batch_size=8", "--config.checkpoint_every_steps=5"]
  _run("pretrain", tmp_path / "one", face_clips, *common, "--config.mesh.data=1")
  _run("pretrain", tmp_path / "eight", face_clips, *common, "--config.mesh.data=2",
       "--config.mesh.fsdp=4", devices=8)
  one, eight = _train_rows(tmp_path / "one"), _train_rows(tmp_path / "eight")
  assert [r["step"] for r in one] == [r["step"] for r in eight] == [1, 2, 3, 4, 5]
  np.testing.assert_allclose([r["loss"] for r in eight], [r["loss"] for r in one], rtol=1e-4)
  shardings = json.loads((tmp_path / "eight" / "param_shardings.json").read_text())
  # The largest matrices are split over the fsdp axis (ZeRO-3 style), not replicated.
  assert "fsdp" in shardings["encoder/blocks_0/mlp/fc1/kernel"]
  assert "fsdp" in shardings["encoder/patch_embed/kernel"]


def test_sigkill_resume_is_exact(face_clips, tmp_path):
  """2N steps straight vs N steps, SIGKILL, restart: identical losses, data order and params."""
  common = ["--config.total_steps=6", "--config.batch_size=4", "--config.checkpoint_every_steps=3",
            "--config.data.worker_count=0"]
  _run("pretrain", tmp_path / "straight", face_clips, *common)
  crashed = _run("pretrain", tmp_path / "crash", face_clips, *common,
                 callbacks=["--kill-after-step", "3"], check=False)
  assert crashed.returncode == -9, crashed.stderr[-2000:]   # killed, not a clean exit
  assert not (tmp_path / "crash" / "report.json").exists()
  _run("pretrain", tmp_path / "crash", face_clips, *common)
  straight, resumed = _train_rows(tmp_path / "straight"), _train_rows(tmp_path / "crash")
  assert [r["step"] for r in resumed] == list(range(1, 7))
  assert [r["loss"] for r in resumed] == [r["loss"] for r in straight]
  for a, b in zip(_final_params(tmp_path / "straight"), _final_params(tmp_path / "crash")):
    np.testing.assert_array_equal(a, b)


def test_cli_contract_finetune_from_pretrained_and_scratch(face_clips, tmp_path):
  """The README's run contract, as written, on a dataset of any class count."""
  pre = tmp_path / "P"
  proc = _run("pretrain", pre, face_clips, "--config.total_steps=3", "--config.batch_size=4")
  # Progress is clu's ReportProgress: its notes reach the console, with the ETA.
  assert "steps/s, 100.0% (3/3), ETA" in proc.stderr, proc.stderr[-2000:]
  report = json.loads((pre / "report.json").read_text())
  assert report["compilations"] == 1 and report["steps"] == 3
  ft_args = ["--config.total_steps=4", "--config.batch_size=4", "--config.eval_every_steps=2",
             "--config.augment.randaug_num_ops=1"]
  for name, extra in (("W", [f"--config.init_from={pre}"]), ("S", [])):
    w = tmp_path / name
    proc = _run("finetune", w, face_clips, *ft_args, *extra,
                mode_config="configs/demo.py:finetune")
    rows = [json.loads(l) for l in (w / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "split" not in r and "loss" in r]
    evals = [r for r in rows if r.get("split") == "test"]
    assert {"step", "loss", "lr"} <= set(train[0])
    assert len(evals) == 2 and {"uar", "war"} <= set(evals[0])
    report = json.loads((w / "report.json").read_text())
    assert report["compilations"] == 1
    for which in ("test_last", "test_best"):
      assert 0.0 <= report[which]["uar"] <= 1.0 and "confusion" in report[which]
    assert (w / "test_last_predictions.csv").exists()
    if name == "W":
      meta = json.loads((w / "run_meta.json").read_text())
      assert "loaded" in meta["init_report"] and "decoder" not in meta["init_report"].split(
          "newly initialised")[-1]
    assert "Traceback" not in proc.stderr


def test_bad_config_fails_before_compiling(face_clips, tmp_path):
  proc = _run("pretrain", tmp_path / "bad", face_clips, "--config.mask.ratio=1.5",
              "--config.data.num_frames=8", check=False)
  assert proc.returncode != 0
  assert "mask.ratio=1.5" in proc.stderr and "data.num_frames=8" in proc.stderr
  proc = _run("pretrain", tmp_path / "bad2", face_clips, "--config.no_such_field=1", check=False)
  assert proc.returncode != 0 and "no_such_field" in proc.stderr


def test_demo_runs_end_to_end_and_writes_its_report(tmp_path):
  """`make demo` wiring at toy size: data, pretraining, both fine-tunings, the report files."""
  out = tmp_path / "demo"
  argv = [sys.executable, "-m", "svfap_jax", "demo", "--out", str(out), "--clips-per-class", "2",
          "--pretrain-steps", "2", "--finetune-steps", "2", "--workers", "1",
          "--config-override", "finetune:batch_size=4", "--config-override", "pretrain:batch_size=4",
          "--config-override", "model.name=svfap_micro", "--config-override", "data.num_frames=16"]
  proc = subprocess.run(argv, cwd=ROOT, env=subprocess_env(), capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  report = json.loads((out / "report.json").read_text())
  assert report["num_classes"] == 7 and report["train_clips"] + report["test_clips"] == 14
  assert set(report["test"]) == {"finetune_pretrained", "finetune_scratch",
                                 "finetune_pretrained_train_10pct", "finetune_scratch_train_10pct"}
  for name in ("finetune_pretrained", "finetune_pretrained_train_10pct"):
    assert json.loads((out / name / "run_meta.json").read_text())["init_from"]
  # 10 % of 2 clips per class is still one clip of each class.
  assert report["label_efficiency"]["10 %"]["train_clips"] == 7
  assert report["label_efficiency"]["100 %"]["pretrained_uar"] == report["test"][
      "finetune_pretrained"]["uar"]
  # The probe ran on the random init (step 0) and on the pretrained encoder (last step).
  assert [row["step"] for row in report["probe"]["curve"]] == [0, 2]
  assert 0 <= report["probe"]["random_init"]["linear_uar"] <= 1
  # The last reconstruction step also split the masked tubes into static and motion parts.
  fit = report["reconstruction"]
  assert fit["step"] == 2 and 0 < fit["recon_motion_share"] < 1
  assert np.isfinite([fit["recon_static_r2"], fit["recon_motion_r2"]]).all()
  text = (out / "report.md").read_text()
  assert "R² static" in text
  assert "| finetune_pretrained |" in text and (out / "curves.png").stat().st_size > 0
  assert "| random init |" in text and (out / "probe.png").stat().st_size > 0
  assert f"report: {out / 'report.md'}" in proc.stdout
