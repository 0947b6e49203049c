"""The benchmark entry points: bench/gpu_suite.py (argument parsing, the attention phase in tiny
mode on this machine, and the whole tiny run through bench/gpu_suite.sh as a slow test) and the
op-profile helper it uses."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from svfap_jax.models import layers

from conftest import subprocess_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import gpu_suite  # pylint: disable=g-import-not-at-top,wrong-import-position
import op_profile  # pylint: disable=g-import-not-at-top,wrong-import-position
import step_throughput  # pylint: disable=g-import-not-at-top,wrong-import-position


def test_arguments_and_modes(tmp_path):
  gpu = gpu_suite.parse_args(["--out", str(tmp_path)])
  assert (gpu.model, gpu.dtype, gpu.finetune_batch, gpu.pretrain_batch) == (
      "svfap_base", "bfloat16", 32, 64)
  assert gpu.phases == list(gpu_suite.PHASES) and gpu.budget_s <= 360
  tiny = gpu_suite.parse_args(["--out", str(tmp_path), "--tiny", "--only", "attention,profile",
                               "--finetune-batch", "3"])
  assert (tiny.model, tiny.dtype, tiny.finetune_batch) == ("svfap_micro", "float32", 3)
  assert tiny.phases == ["attention", "profile"]
  with pytest.raises(SystemExit):
    gpu_suite.parse_args(["--out", str(tmp_path), "--only", "attention,warp"])
  with pytest.raises(SystemExit):
    gpu_suite.parse_args(["--tiny"])  # --out is required
  bench = step_throughput.parse_args(["--cases", "pretrain", "--attention-impl", "xla"])
  assert bench.cases == "pretrain" and bench.attention_impl == "xla"
  with pytest.raises(SystemExit):
    step_throughput.parse_args(["--cases", "finetune,eval"])


def test_xla_options_parse_and_reach_the_compiler():
  parse = step_throughput.parse_compiler_options
  assert parse("--xla_cpu_use_onednn=true, xla_cpu_experimental_ynn_fusion_type=,"
               "xla_backend_optimization_level=0") == {
                   "xla_cpu_use_onednn": True, "xla_cpu_experimental_ynn_fusion_type": "",
                   "xla_backend_optimization_level": 0}
  assert parse("") == {}
  with pytest.raises(ValueError, match="has no '='"):
    parse("xla_cpu_use_onednn")
  with pytest.raises(SystemExit):
    step_throughput.parse_args(["--also-xla", "xla_cpu_use_onednn"])
  args = step_throughput.parse_args(["--also-xla", "xla_cpu_use_onednn=true", "--also-xla",
                                     "xla_cpu_enable_fast_math=false"])
  assert args.also_xla == ["xla_cpu_use_onednn=true", "xla_cpu_enable_fast_math=false"]
  # The options apply to one compilation: XLA validates them there.
  lowered = jax.jit(lambda a: a @ a).lower(jnp.ones((8, 8), jnp.float32))
  assert lowered.compile(compiler_options=parse("xla_cpu_enable_fast_math=false")) is not None
  with pytest.raises(Exception, match="xla_cpu_enable_fast_math"):
    lowered.compile(compiler_options={"xla_cpu_enable_fast_math": "maybe"})


def test_hlo_fingerprint_ignores_source_lines_not_programs():
  fingerprint = step_throughput.hlo_fingerprint
  x = jnp.ones((64, 64), jnp.float32)
  square = lambda a: jnp.tanh(a @ a)
  first = jax.jit(square).lower(x).compile()
  second = jax.jit(square).lower(x).compile()  # another call site: other stack-frame metadata
  assert "metadata=" in first.as_text()
  assert fingerprint(first.as_text()) == fingerprint(second.as_text())
  other = jax.jit(lambda a: jnp.tanh(a @ a + 1.0)).lower(x).compile()
  assert fingerprint(other.as_text()) != fingerprint(first.as_text())
  if jax.default_backend() == "cpu":
    # BENCHMARKS.md: this option leaves XLA:CPU's program unchanged in the pinned jaxlib.
    onednn = jax.jit(square).lower(x).compile(compiler_options={"xla_cpu_use_onednn": True})
    assert fingerprint(onednn.as_text()) == fingerprint(first.as_text())


def test_tiny_attention_phase_writes_json(tmp_path):
  assert gpu_suite.main(["--out", str(tmp_path), "--tiny", "--only", "attention",
                         "--compile-cache", ""]) == 0
  record = json.loads((tmp_path / "gpu_suite.json").read_text())
  phase = record["phases"]["attention"]
  assert phase["all_pass"] and phase["kernels"] == ["xla", "chunked"]
  aten = layers._torch_available()  # pylint: disable=protected-access
  assert phase["auto_resolves_to"] == {"float32": "aten" if aten else "chunked",
                                       "bfloat16": "chunked"}
  # Two shapes x two dtypes x two kernels, each with its measured errors.
  assert len(phase["rows"]) == 8
  assert all(r["out_err"] <= phase["tolerances"][r["dtype"]] for r in phase["rows"])
  assert set(record["phases"]) == {"attention"} and record["environment"]["backend"] == "cpu"


def test_exhausted_budget_skips_phases_with_a_reason(tmp_path):
  assert gpu_suite.main(["--out", str(tmp_path), "--tiny", "--budget-s", "0.5",
                         "--only", "steps,profile", "--compile-cache", ""]) == 0
  phases = json.loads((tmp_path / "gpu_suite.json").read_text())["phases"]
  assert set(phases) == {"steps", "profile"}
  assert all("budget left" in p["skipped"] for p in phases.values())


def test_span_and_busy_of_overlapping_events():
  # [0, 4) and [2, 6) overlap, [10, 11) stands alone, [3, 5) lies inside: busy 6 + 1 of span 11.
  assert op_profile._span_and_busy([(10, 11), (0, 4), (3, 5), (2, 6)]) == (11, 7)
  assert op_profile._span_and_busy([]) == (0.0, 0.0)


def test_op_profile_ranks_the_matmul():
  x = jnp.ones((256, 256), jnp.float32)
  fn = jax.jit(lambda a: jnp.tanh(a @ a) + 1.0)
  compiled = fn.lower(x).compile()
  run = lambda: compiled(x)
  run()
  result = op_profile.top_ops(run, compiled.as_text(), steps=2, top=5)
  assert result["rows"] and result["per_step_ms"] > 0
  assert abs(sum(r["share"] for r in result["rows"]) - 1.0) < 1e-6
  assert any("dot" in r["kind"] or r["kind"] == "dot" for r in result["rows"])
  assert "| op | kind |" in op_profile.format_table(result)
  assert 0 < result["busy_ms_per_step"] <= result["span_ms_per_step"] + 1e-9
  assert result["idle_ms_per_step"] == pytest.approx(
      result["span_ms_per_step"] - result["busy_ms_per_step"])
  assert op_profile.source_group(
      "jit(step)/transpose(jvp(VideoClassifier))/encoder/blocks_11/attn/qkv/dot_general"
  ) == "bwd encoder/blocks_*/attn/dot_general"


@pytest.mark.slow
def test_tiny_suite_runs_every_phase(tmp_path):
  """bench/gpu_suite.sh end to end in its CPU smoke mode (minutes on 2 cores)."""
  env = subprocess_env(1, OUT=tmp_path, SUITE_TINY=1, SUITE_BUDGET_S=900, SUITE_TIMEOUT_S=1000,
                       PYTHON=sys.executable)
  # One batch size is enough to see the search run (and saves compiling a second step).
  proc = subprocess.run(["bash", os.path.join(ROOT, "bench", "gpu_suite.sh"),
                         "--max-batch-limit", "2"], env=env,
                        capture_output=True, text=True, timeout=1100, check=False)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  phases = json.loads((tmp_path / "gpu_suite.json").read_text())["phases"]
  assert phases["attention"]["all_pass"]
  steps = {r["case"]: r for r in phases["steps"]["rows"]}
  assert set(steps) == {"finetune", "pretrain"} and steps["finetune"]["jax_s"] > 0
  assert steps["pretrain"]["torch_s"] > 0
  assert phases["max_batch"]["largest_fitting_batch"] >= 2
  assert len(phases["profile"]["rows"]) == 15
  assert (tmp_path / "profile_top15.md").exists()
