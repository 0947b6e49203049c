"""Per-op time of a compiled JAX program from a `jax.profiler` trace.

  from bench import op_profile
  table = op_profile.top_ops(compiled_fn, args_fn, steps=2, top=15)

XLA's runtime records one trace event per executed HLO instruction (thunk) with `args.hlo_op` and
`args.hlo_module`. `top_ops` traces a few calls, sums the events per instruction name, and labels
each instruction with its opcode, output shape and the JAX-level `op_name` from the compiled HLO
text, so a row reads like "fusion.123 | dot | f32[4,800,2048] | jvp(Block)/mlp/fc1/dot_general".
Works on CPU and GPU (GPU events carry the same fields on the device threads).
"""
from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
import tempfile
from typing import Any, Callable, Optional

import jax

_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(\S+(?:\[[^\]]*\])?(?:\{[^}]*\})?)\s+"
                    r"([\w\-]+)\(")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_CALLS = re.compile(r"calls=%?([\w.\-]+)")


def hlo_index(hlo_text: str) -> dict[str, dict[str, str]]:
  """Instruction name -> {opcode, shape, op_name, kind} from compiled HLO text.

  For fusions, `kind` names the heaviest thing inside (dot / convolution / reduce / elementwise),
  taken from the fused computation the instruction calls.
  """
  computations: dict[str, list[str]] = {}
  current = None
  for line in hlo_text.splitlines():
    header = re.match(r"^\s*(?:ENTRY\s+)?%?([\w.\-]+)\s*(?:\(.*\))?\s*->.*\{\s*$", line) or \
        re.match(r"^\s*(?:ENTRY\s+)?%?([\w.\-]+)\s+\{\s*$", line)
    if header:
      current = header.group(1)
      computations[current] = []
    elif current is not None:
      computations[current].append(line)
  index = {}
  for lines in computations.values():
    for line in lines:
      m = _INSTR.match(line)
      if not m:
        continue
      name, shape, opcode = m.groups()
      op_name = _OP_NAME.search(line)
      kind = opcode
      called = _CALLS.search(line)
      if called and called.group(1) in computations:
        body = " ".join(computations[called.group(1)])
        for heavy in ("dot(", "convolution(", "custom-call(", "reduce-window(", "reduce(",
                      "scatter(", "gather(", "transpose(", "copy("):
          if heavy in body:
            kind = f"{opcode}:{heavy[:-1]}"
            break
        else:
          kind = f"{opcode}:elementwise"
      index[name] = {"opcode": opcode, "shape": shape, "kind": kind,
                     "op_name": op_name.group(1) if op_name else ""}
  return index


def trace_events(run: Callable[[], Any], steps: int, logdir: Optional[str] = None):
  """Runs `run()` `steps` times under the profiler; returns the perfetto trace events."""
  logdir = logdir or tempfile.mkdtemp(prefix="svfap_profile_")
  jax.profiler.start_trace(logdir, create_perfetto_trace=True)
  try:
    for _ in range(steps):
      jax.block_until_ready(run())
  finally:
    jax.profiler.stop_trace()
  paths = sorted(glob.glob(os.path.join(logdir, "**", "perfetto_trace.json.gz"), recursive=True),
                 key=os.path.getmtime)
  if not paths:
    raise RuntimeError(f"the profiler wrote no perfetto trace under {logdir}")
  with gzip.open(paths[-1]) as f:
    data = json.load(f)
  return data["traceEvents"] if isinstance(data, dict) else data


def top_ops(run: Callable[[], Any], hlo_text: str = "", *, steps: int = 2, top: int = 15,
            module_filter: str = "", logdir: Optional[str] = None) -> dict[str, Any]:
  """Traces `steps` calls of `run` and ranks HLO instructions by total time.

  Args:
    run: a no-argument callable that executes the compiled program once.
    hlo_text: `compiled.as_text()` of that program, for opcode / shape / source labels.
    steps: traced calls (after any warm-up the caller did).
    top: rows returned in `rows` (all instructions still count in the totals).
    module_filter: substring of `hlo_module` to keep (e.g. "jit_step"); empty keeps all.
    logdir: where the trace goes (a temporary directory by default).

  Returns:
    {"per_step_ms": total instruction time per step, "rows": [{"op", "kind", "shape", "source",
    "ms_per_step", "share", "calls_per_step"}], "by_kind": {kind: ms_per_step}, "by_source",
    "span_ms_per_step", "busy_ms_per_step", "idle_ms_per_step"}; times are summed instruction
    durations (on a multi-threaded CPU runtime these can overlap, so shares are of the summed
    time, not of wall time). `busy` is the time at least one instruction's event is open, `span`
    runs from the first event to the last (divided by `steps`, so it includes the short host gaps
    between calls), `idle` = span - busy.

    Read `idle` before the rows on CPU: XLA:CPU runs a dot that is not in a YNNPACK fusion (the
    Eigen path; e.g. weight gradients x^T g of a train step) asynchronously, and its trace event
    covers only the launch (~0.3 ms for a 50 ms matmul). Its real time shows up as idle, not in
    any row (1.77 s of the 11.13 s span of a svfap_base fine-tuning step on the 2-core CPU of
    BENCHMARKS.md).
  """
  events = trace_events(run, steps, logdir)
  index = hlo_index(hlo_text) if hlo_text else {}
  total = collections.Counter()
  calls = collections.Counter()
  intervals = []
  for e in events:
    args = e.get("args") or {}
    op = args.get("hlo_op")
    if e.get("ph") != "X" or not op or op != e.get("name"):
      continue
    if module_filter and module_filter not in args.get("hlo_module", ""):
      continue
    start, dur = float(e.get("ts", 0.0)), float(e.get("dur", 0.0))
    intervals.append((start, start + dur))
    total[op] += dur / 1e3
    calls[op] += 1
  span_us, busy_us = _span_and_busy(intervals)
  all_ms = sum(total.values())
  by_kind = collections.Counter()
  by_source = collections.Counter()
  for op, ms in total.items():
    by_kind[index.get(op, {}).get("kind", "?")] += ms / steps
    by_source[source_group(index.get(op, {}).get("op_name", ""))] += ms / steps
  rows = []
  for op, ms in total.most_common(top):
    info = index.get(op, {})
    rows.append({"op": op, "kind": info.get("kind", "?"), "shape": info.get("shape", ""),
                 "source": info.get("op_name", "")[-90:], "ms_per_step": ms / steps,
                 "share": ms / all_ms if all_ms else 0.0, "calls_per_step": calls[op] / steps})
  return {"per_step_ms": all_ms / steps, "rows": rows, "span_ms_per_step": span_us / 1e3 / steps,
          "busy_ms_per_step": busy_us / 1e3 / steps,
          "idle_ms_per_step": (span_us - busy_us) / 1e3 / steps,
          "by_kind": dict(sorted(by_kind.items(), key=lambda kv: -kv[1])),
          "by_source": dict(sorted(by_source.items(), key=lambda kv: -kv[1]))}


def _span_and_busy(intervals: list[tuple[float, float]]) -> tuple[float, float]:
  """(last end - first start, length of the union) of (start, end) intervals, in their unit."""
  if not intervals:
    return 0.0, 0.0
  intervals = sorted(intervals)
  busy = 0.0
  run_start, run_end = intervals[0]
  for start, end in intervals[1:]:
    if start > run_end:
      busy += run_end - run_start
      run_start, run_end = start, end
    else:
      run_end = max(run_end, end)
  busy += run_end - run_start
  # Sorted by start, each new run begins after every earlier end, so the last run ends last.
  return run_end - intervals[0][0], busy


def source_group(op_name: str) -> str:
  """Folds a JAX op_name into a coarse group: pass (fwd/bwd), module path without block indices,
  last primitive; e.g. 'bwd encoder/blocks_*/attn dot_general'."""
  if not op_name:
    return "(no source)"
  first = op_name.split(";")[0]
  direction = "bwd" if "transpose(jvp(" in first else "fwd"
  parts = [p for p in first.split("/") if p and not p.startswith(("jit(", "jvp(", "transpose(",
                                                                    "vmap(", "checkpoint"))]
  parts = [re.sub(r"_\d+$", "_*", p) for p in parts]
  if len(parts) > 3:
    parts = parts[:3] + parts[-1:]
  return f"{direction} " + "/".join(parts)


def format_table(result: dict[str, Any]) -> str:
  """Markdown table of `top_ops` rows."""
  lines = [f"summed instruction time per step: {result['per_step_ms']:.1f} ms; span "
           f"{result['span_ms_per_step']:.1f} ms, no instruction event open for "
           f"{result['idle_ms_per_step']:.1f} ms of it (on CPU: mostly un-fused dots, whose "
           "events cover only their launch)", "",
           "| op | kind | shape | ms/step | share | source |", "|---|---|---|---:|---:|---|"]
  for r in result["rows"]:
    lines.append(f"| {r['op']} | {r['kind']} | {r['shape'][:40]} | {r['ms_per_step']:.1f} | "
                 f"{100 * r['share']:.1f} % | {r['source']} |")
  lines += ["", "| kind | ms/step |", "|---|---:|"]
  lines += [f"| {k} | {v:.1f} |" for k, v in list(result["by_kind"].items())[:12]]
  if result.get("by_source"):
    lines += ["", "| source group | ms/step |", "|---|---:|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in list(result["by_source"].items())[:25]]
  return "\n".join(lines)
