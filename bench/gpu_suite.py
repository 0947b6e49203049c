"""Every GPU check of the step-speed work in one run, with a wall-clock budget; JSON out.

  python bench/gpu_suite.py --out OUT_DIR [--budget-s 330] [--tiny] [--only attention,steps,...]
  (bench/gpu_suite.sh wraps it: writes to $OUT, SUITE_TINY=1 for the CPU smoke mode)

Phases, in order (each one records its result or the reason it was skipped):
  attention  every attention kernel available on the device (xla, chunked, and cudnn on NVIDIA
             GPUs) against the float32 reference: outputs and q/k/v gradients, float32 and
             bfloat16, at the svfap_base shapes (800-token self-attention, 800 -> 64 and 64 -> 800
             cross-attention, 8 heads of 64) and the decoder's (6 heads of 64); max abs errors and
             pass/fail against tests/test_attention.py's tolerances, plus what "auto" resolves to.
  steps      bench/step_throughput.py's interleaved JAX-train-step vs PyTorch-twin timing for the
             fine-tuning and the pretraining case (bf16 on a GPU; float32 in tiny mode).
  max_batch  the largest fine-tuning batch whose train step compiles and runs: doubling from
             --max-batch-start until an out-of-memory error, the --max-batch-limit or the phase's
             time cap.
  profile    a jax.profiler trace of two fine-tuning steps: top-15 HLO ops by time, plus totals by
             op kind and by model source (bench/op_profile.py).
Writes OUT/gpu_suite.json (the whole record, rewritten after every phase, so a run cut short
still leaves the finished phases) and OUT/profile_top15.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

PHASES = ("attention", "steps", "max_batch", "profile")
F32_TOL, BF16_TOL = 1e-5, 2e-2  # the tolerances of tests/test_attention.py


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", required=True, help="directory for gpu_suite.json and the tables")
  parser.add_argument("--budget-s", type=float, default=330.0,
                      help="wall-clock budget of the whole run; phases that would not fit are "
                      "skipped with the reason recorded")
  parser.add_argument("--tiny", action="store_true",
                      help="CPU smoke mode: svfap_micro, batch 2, float32, short search")
  parser.add_argument("--only", default=",".join(PHASES), help="comma-separated phases")
  parser.add_argument("--model", default=None, help="default svfap_base (svfap_micro if --tiny)")
  parser.add_argument("--dtype", default=None, help="default bfloat16 (float32 if --tiny)")
  parser.add_argument("--finetune-batch", type=int, default=None)
  parser.add_argument("--pretrain-batch", type=int, default=None)
  parser.add_argument("--repeats", type=int, default=None)
  parser.add_argument("--max-batch-start", type=int, default=None)
  parser.add_argument("--max-batch-limit", type=int, default=None)
  parser.add_argument("--peak-tflops", type=float, default=0.0,
                      help="device peak for --dtype, for MFU (H100 SXM bf16 dense: 989)")
  parser.add_argument("--compile-cache", default=os.path.join(tempfile.gettempdir(),
                                                              "svfap_gpu_suite_cache"),
                      help="persistent XLA compilation cache directory ('' for none)")
  args = parser.parse_args(argv)
  phases = [p for p in args.only.split(",") if p]
  unknown = sorted(set(phases) - set(PHASES))
  if unknown:
    parser.error(f"--only: unknown phase(s) {unknown}; choose from {list(PHASES)}")
  args.phases = phases
  tiny = args.tiny
  defaults = dict(model="svfap_micro" if tiny else "svfap_base",
                  dtype="float32" if tiny else "bfloat16",
                  finetune_batch=2 if tiny else 32, pretrain_batch=2 if tiny else 64,
                  repeats=2 if tiny else 5, max_batch_start=2 if tiny else 32,
                  max_batch_limit=4 if tiny else 1024)
  for key, value in defaults.items():
    if getattr(args, key) is None:
      setattr(args, key, value)
  if args.budget_s <= 0:
    parser.error("--budget-s must be positive")
  return args


class Suite:
  """Runs phases under one deadline and keeps the JSON record current."""

  def __init__(self, args):
    self.args = args
    self.start = time.monotonic()
    self.path = os.path.join(args.out, "gpu_suite.json")
    self.record: dict[str, Any] = {"args": {k: v for k, v in vars(args).items()},
                                   "phases": {}}

  def left(self) -> float:
    return self.args.budget_s - (time.monotonic() - self.start)

  def save(self):
    self.record["elapsed_s"] = time.monotonic() - self.start
    with open(self.path, "w") as f:
      json.dump(self.record, f, indent=2, default=str)

  def run(self, name: str, fn: Callable[[], Any], min_left_s: float):
    if name not in self.args.phases:
      return
    if self.left() < min_left_s:
      self.record["phases"][name] = {"skipped": f"{self.left():.0f} s of the budget left, the "
                                                f"phase needs about {min_left_s:.0f} s"}
    else:
      t = time.monotonic()
      try:
        result = fn()
        result["phase_s"] = time.monotonic() - t
        self.record["phases"][name] = result
      except Exception as e:  # pylint: disable=broad-except
        self.record["phases"][name] = {"error": f"{type(e).__name__}: {e}",
                                       "traceback": traceback.format_exc()[-3000:],
                                       "phase_s": time.monotonic() - t}
    print(f"[gpu_suite] {name}: " + json.dumps(self.record["phases"][name], default=str)[:2000],
          flush=True)
    self.save()


def environment() -> dict[str, Any]:
  import jax  # pylint: disable=g-import-not-at-top
  env = {"python": platform.python_version(), "jax": jax.__version__,
         "backend": jax.default_backend(),
         "devices": [d.device_kind for d in jax.devices()], "host": platform.node(),
         "cpu_count": os.cpu_count(), "xla_flags": os.environ.get("XLA_FLAGS", "")}
  try:
    import torch  # pylint: disable=g-import-not-at-top
    env["torch"] = torch.__version__
    env["torch_cuda"] = bool(torch.cuda.is_available())
  except ImportError:
    env["torch"] = None
  try:
    with open("/proc/loadavg") as f:
      env["load_average"] = f.read().split()[:3]
  except OSError:
    pass
  return env


# ------------------------------------------------------------------------------------------------
# Phases.
# ------------------------------------------------------------------------------------------------


def attention_phase(args) -> dict[str, Any]:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp
  import numpy as np
  from svfap_jax.models import layers

  backend = jax.default_backend()
  kernels = ["xla", "chunked"] + (["cudnn"] if backend == "gpu" else [])
  if args.tiny:
    shapes = {"self 37": (2, 37, 37, 4, 16), "cross 50->7": (2, 50, 7, 4, 16)}
  else:
    shapes = {"self 800": (4, 800, 800, 8, 64), "cross 800->64": (4, 800, 64, 8, 64),
              "cross 64->800": (4, 64, 800, 8, 64), "decoder 800 (6 heads)": (4, 800, 800, 6, 64)}

  def run(kernel, q, k, v):
    if kernel == "chunked":
      return layers.chunked_attention(q, k, v)
    if kernel == "reference":
      return layers.reference_attention(q, k, v)
    return jax.nn.dot_product_attention(q, k, v, implementation=kernel)

  def value_and_grads(kernel, q, k, v, g):
    def loss(q, k, v):
      return jnp.sum(run(kernel, q, k, v).astype(jnp.float32) * g)
    out = run(kernel, q, k, v)
    return out, jax.grad(loss, argnums=(0, 1, 2))(q, k, v)

  rows, all_pass = [], True
  for label, (b, n, m, h, d) in shapes.items():
    rng = np.random.default_rng(0)
    draw = lambda length: jnp.asarray(rng.standard_normal((b, length, h, d)), jnp.float32)
    q32, k32, v32, g = draw(n), draw(m), draw(m), draw(n)
    for dtype, tol in (("float32", F32_TOL), ("bfloat16", BF16_TOL)):
      q, k, v = (t.astype(dtype) for t in (q32, k32, v32))
      ref_out, ref_grads = jax.jit(lambda q, k, v: value_and_grads(
          "reference", q, k, v, g))(*(t.astype(jnp.float32) for t in (q, k, v)))
      for kernel in kernels:
        row = {"shape": label, "dtype": dtype, "kernel": kernel}
        if kernel == "cudnn" and dtype == "float32":
          row["skipped"] = "cuDNN attention takes bfloat16/float16 only"
          rows.append(row)
          continue
        try:
          out, grads = jax.jit(lambda q, k, v, kernel=kernel: value_and_grads(
              kernel, q, k, v, g))(q, k, v)
          err = lambda a, b_: float(jnp.max(jnp.abs(a.astype(jnp.float32) - b_)))
          row["out_err"] = err(out, ref_out)
          row["grad_err"] = max(err(a, b_) / max(1.0, float(jnp.abs(b_).max()))
                                for a, b_ in zip(grads, ref_grads))
          row["pass"] = row["out_err"] <= tol and row["grad_err"] <= tol
        except Exception as e:  # pylint: disable=broad-except
          row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
          row["pass"] = False
        all_pass = all_pass and row["pass"]
        rows.append(row)
  auto = {dtype: layers.resolve_attention_impl("auto", dtype=dtype, head_dim=64)
          for dtype in ("float32", "bfloat16")}
  return {"backend": backend, "kernels": kernels, "auto_resolves_to": auto,
          "tolerances": {"float32": F32_TOL, "bfloat16": BF16_TOL}, "all_pass": all_pass,
          "rows": rows}


def steps_phase(args) -> dict[str, Any]:
  import step_throughput  # pylint: disable=g-import-not-at-top
  bench_args = step_throughput.parse_args([
      "--model", args.model, "--dtype", args.dtype, "--repeats", str(args.repeats),
      "--finetune-batch", str(args.finetune_batch), "--pretrain-batch", str(args.pretrain_batch),
      "--peak-tflops", str(args.peak_tflops)])
  try:
    import torch  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    bench_args.skip_torch = True
  rows = []
  for mode, batch in (("finetune", args.finetune_batch), ("pretrain", args.pretrain_batch)):
    rows.append(step_throughput.measure_case(bench_args, mode, batch))
  return {"rows": rows, "table": step_throughput.markdown(rows),
          "twin": "skipped: torch is not installed" if bench_args.skip_torch else "measured"}


def _is_oom(e: Exception) -> bool:
  text = f"{type(e).__name__} {e}".lower()
  return any(s in text for s in ("resource_exhausted", "out of memory", "oom", "allocat"))


def max_batch_phase(args, cap_s: float) -> dict[str, Any]:
  import jax  # pylint: disable=g-import-not-at-top
  import step_throughput  # pylint: disable=g-import-not-at-top
  start = time.monotonic()
  try:
    import torch  # pylint: disable=g-import-not-at-top
    if torch.cuda.is_available():
      torch.cuda.empty_cache()  # the twin's cached blocks would shrink what JAX can allocate
  except ImportError:
    pass
  tried, fits, stop = [], None, None
  batch = args.max_batch_start
  while batch <= args.max_batch_limit:
    if tried and time.monotonic() - start + 1.5 * tried[-1]["s"] > cap_s:
      stop = f"time cap {cap_s:.0f} s (next try would exceed it)"
      break
    t = time.monotonic()
    try:
      config = step_throughput.build_config(args.model, "finetune", batch, args.dtype)
      case = step_throughput.jax_case(config)
      case["run"]()
      t_step = time.monotonic()
      case["run"]()
      row = {"batch": batch, "fits": True, "step_s": time.monotonic() - t_step}
      memory = case["compiled"].memory_analysis()
      if memory is not None:
        row["temp_bytes"] = int(getattr(memory, "temp_size_in_bytes", 0))
      fits = batch
      del case
    except Exception as e:  # pylint: disable=broad-except
      row = {"batch": batch, "fits": False, "error": f"{type(e).__name__}: {str(e)[:300]}"}
      if not _is_oom(e):
        row["note"] = "not an out-of-memory error"
    row["s"] = time.monotonic() - t
    tried.append(row)
    jax.clear_caches()
    if not row["fits"]:
      stop = "first batch that did not fit"
      break
    batch *= 2
  else:
    stop = f"--max-batch-limit {args.max_batch_limit}"
  return {"case": "finetune", "dtype": args.dtype, "largest_fitting_batch": fits,
          "stopped_by": stop, "tried": tried}


def profile_phase(args) -> dict[str, Any]:
  import op_profile  # pylint: disable=g-import-not-at-top
  import step_throughput  # pylint: disable=g-import-not-at-top
  config = step_throughput.build_config(args.model, "finetune", args.finetune_batch, args.dtype)
  case = step_throughput.jax_case(config)
  case["run"]()
  result = op_profile.top_ops(case["run"], case["compiled"].as_text(), steps=2, top=15,
                              logdir=os.path.join(args.out, "trace"))
  table = op_profile.format_table(result)
  with open(os.path.join(args.out, "profile_top15.md"), "w") as f:
    f.write(table + "\n")
  return {"case": f"{args.model} finetune batch {args.finetune_batch} {args.dtype}", **result}


def main(argv=None) -> int:
  args = parse_args(argv)
  from svfap_jax import cli  # pylint: disable=g-import-not-at-top
  cli.apply_process_settings()  # what `python -m svfap_jax` runs with
  os.makedirs(args.out, exist_ok=True)
  if args.compile_cache:
    import jax  # pylint: disable=g-import-not-at-top
    # The steps, max_batch and profile phases compile the same fine-tuning program more than
    # once; a persistent cache (outside OUT, which is copied back) turns repeats into cache hits.
    jax.config.update("jax_compilation_cache_dir", args.compile_cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  suite = Suite(args)
  suite.record["environment"] = environment()
  suite.save()
  # Minimum seconds each phase needs to be worth starting (GPU figures; tiny mode is quicker).
  scale = 0.2 if args.tiny else 1.0
  suite.run("attention", lambda: attention_phase(args), 20 * scale)
  suite.run("steps", lambda: steps_phase(args), 150 * scale)
  reserve = 50 * scale if "profile" in args.phases else 0.0
  suite.run("max_batch", lambda: max_batch_phase(args, max(suite.left() - reserve, 0.0)),
            60 * scale)
  suite.run("profile", lambda: profile_phase(args), 40 * scale)
  suite.save()
  failed = [k for k, v in suite.record["phases"].items() if "error" in v
            or (k == "attention" and not v.get("all_pass", True))]
  print(f"[gpu_suite] wrote {suite.path} in {suite.record['elapsed_s']:.0f} s"
        + (f"; problems in: {', '.join(failed)}" if failed else ""))
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
