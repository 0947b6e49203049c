"""Train-step time of the project's jitted train steps vs our PyTorch twin, same machine and weights.

  .venv/bin/python bench/step_throughput.py [--model svfap_base] [--repeats 5] [--json out.json]

JAX side: the steps the trainer runs (`svfap_jax.train.steps.make_finetune_step` /
`make_pretrain_step`), built from the shipped configs (`configs/finetune_dfew.py`,
`configs/pretrain_voxceleb2.py`) the way `train/loop.py` builds them: the config's optimizer (AdamW,
layer decay, weight-decay mask, schedule), `TrainState` with its non-finite guard (and EMA when
`--ema` > 0), jitted with the state donated. Fine-tuning steps take uint8 host crops
(B, 16, 176, 176, 3) and run the on-device augmentation (random resized crop, flip, RandAugment,
mixup/cutmix, random erasing); pretraining steps take uint8 (B, 16, 160, 160, 3), normalise, draw
the 90 % tube mask and the normalised pixel targets on the device.

PyTorch side: the twin (`svfap_jax/interop/torch_twin.py`) loaded with the same weights, train
mode with the config's drop path, AdamW; its input is an already normalised float video (and for
pretraining a fixed mask and precomputed targets): the twin gets no augmentation work, so the
ratio is conservative for JAX.

Timing: after warm-up the two frameworks alternate, one JAX step then one twin step, `--repeats`
times, so both see the same machine load (other jobs on a shared machine); the table reports the
median of each, their ratio (twin time / JAX time: > 1 means JAX is faster), the load average
before and after, and FLOP/s with the step's FLOPs counted by XLA on the lowered program.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import os
import re
import resource
import statistics
import sys
import time
from typing import Any, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import numpy as np
import machine  # pylint: disable=g-import-not-at-top
from svfap_jax import cli  # pylint: disable=g-import-not-at-top

CASES = {"finetune": False, "pretrain": True}


def build_config(model: str, mode: str, batch: int, dtype: str, ema_decay: float = 0.0):
  """The shipped DFEW fine-tuning / VoxCeleb2 pretraining config at `batch`, `dtype`."""
  from configs import finetune_dfew, pretrain_voxceleb2  # pylint: disable=g-import-not-at-top
  bf16 = "true" if dtype == "bfloat16" else "false"
  get = finetune_dfew.get_config if mode == "finetune" else pretrain_voxceleb2.get_config
  config = get(f"model={model},bf16={bf16}")
  config.batch_size = batch
  config.total_steps = 1000
  config.optim.warmup_steps = 100
  config.optim.ema_decay = ema_decay
  return config


def host_batch(spec, config, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
  """A batch as the data pipeline delivers it: uint8 host crops, int labels, float values."""
  rng = np.random.default_rng(seed)
  side = spec.img_size if config.mode == "pretrain" else int(round(1.1 * spec.img_size))
  return {"video": rng.integers(0, 256, (batch, spec.num_frames, side, side, spec.in_chans),
                                dtype=np.uint8),
          "label": rng.integers(0, 7, (batch,)).astype(np.int32),
          "values": np.zeros((batch, 0), np.float32)}


def parse_compiler_options(text: str) -> dict[str, Any]:
  """"name=value,name=value" -> XLA debug options for one compilation.

  "true"/"false" become booleans and integers ints; anything else stays a string (an empty value,
  as in "xla_cpu_experimental_ynn_fusion_type=", is the empty string). Names may carry the leading
  "--" of their XLA_FLAGS spelling.

  Raises:
    ValueError: an item without "=".
  """
  options: dict[str, Any] = {}
  for item in filter(None, (part.strip() for part in text.split(","))):
    if "=" not in item:
      raise ValueError(f"XLA option {item!r} has no '=': write name=value, e.g. "
                       "xla_cpu_use_onednn=true")
    name, value = item.split("=", 1)
    name = name.strip().lstrip("-")
    lowered = value.strip().lower()
    if lowered in ("true", "false"):
      options[name] = lowered == "true"
    elif lowered.lstrip("-").isdigit():
      options[name] = int(lowered)
    else:
      options[name] = value.strip()
  return options


_METADATA = re.compile(r",?\s*(metadata|stack_frame_id)=(\{[^}]*\}|\d+)")


def hlo_fingerprint(hlo_text: str) -> str:
  """SHA-256 of an optimised HLO module's instructions, without source metadata.

  Two compilations with the same fingerprint run the same HLO program: an XLA option that leaves
  it unchanged can only act in code generation (e.g. fast math), and often does nothing at all
  (`xla_cpu_use_onednn` in this jaxlib), so a timing difference between them is noise until shown
  otherwise. Drops `metadata={...}` and the stack-frame tables, which change with the Python line
  that called `jit`.
  """
  lines = []
  for line in hlo_text.splitlines():
    if " = " not in line and not line.rstrip().endswith("{"):
      continue  # frame tables, file names, closing braces
    lines.append(_METADATA.sub("", line))
  return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def step_flops(config, spec, tx, state, batch, num_outputs: int, pretrain: bool) -> float:
  """XLA's FLOP count of the un-optimised train step, its attention lowered as XLA's einsums.

  The count must not depend on the kernel being timed: cuDNN attention is a custom call and the
  aten kernel a host callback, and XLA's cost analysis counts the work inside neither.
  """
  from svfap_jax.train import loop  # pylint: disable=g-import-not-at-top
  xla_spec = dataclasses.replace(spec, attention_impl="xla")
  module = loop.build_module(config, xla_spec, 0 if pretrain else num_outputs, pretrain)
  step = loop.make_train_step(config, module, tx, xla_spec, num_outputs, pretrain)
  cost = jax.jit(step).lower(state, batch).cost_analysis()
  return float((cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"])


def jax_case(config, *, attention_impl: Optional[str] = None, num_outputs: int = 7,
             seed: int = 0, compiler_options: Optional[dict[str, Any]] = None) -> dict[str, Any]:
  """Builds and compiles the trainer's step for `config` on the default device.

  The step is compiled as the trainer compiles it; `compiler_options` (the XLA_FLAGS names, e.g.
  {"xla_cpu_enable_fast_math": True}) apply to this compilation only, so flag variants can be
  timed side by side in one process.

  Returns a dict with `run` (one step, blocking), `flops` (XLA's count on the lowered step),
  `params` (the initial parameters, for the twin), `batch` (host arrays), `compiled`,
  `compile_s` and `hlo_fingerprint` (`hlo_fingerprint` of the optimised program).
  """
  from svfap_jax import optim  # pylint: disable=g-import-not-at-top
  from svfap_jax import api
  from svfap_jax.models.registry import get_spec
  from svfap_jax.train import loop
  from svfap_jax.train.state import TrainState

  pretrain = config.mode == "pretrain"
  overrides = {} if attention_impl is None else {"attention_impl": attention_impl}
  spec = get_spec(config.model.name, **overrides)
  module = loop.build_module(config, spec, 0 if pretrain else num_outputs, pretrain)
  params, _ = api.init_params(module, spec, jax.random.key(seed), pretrain)
  tx, _ = optim.make_optimizer(loop.optim_config(config, config.optim.warmup_steps), params,
                               pretrain=pretrain, total_steps=config.total_steps)
  ema = config.optim.ema_decay > 0
  state = jax.jit(lambda p: TrainState.create(p, tx, config.seed, ema))(params)
  step = loop.make_train_step(config, module, tx, spec, num_outputs, pretrain)
  batch = host_batch(spec, config, config.batch_size, seed)
  # The batch is an argument (as in training), never a closed-over constant that XLA could fold.
  device_batch = jax.device_put(batch)
  jitted = jax.jit(step, donate_argnums=(0,))
  t0 = time.perf_counter()
  lowered = jitted.lower(state, device_batch)
  flops = step_flops(config, spec, tx, state, device_batch, num_outputs, pretrain)
  compiled = lowered.compile(compiler_options=compiler_options or None)
  compile_s = time.perf_counter() - t0
  holder = {"state": state}

  def run():
    holder["state"], info = compiled(holder["state"], device_batch)
    jax.block_until_ready(info["loss"])
    return info

  return {"run": run, "flops": flops, "params": jax.device_get(params), "batch": batch,
          "compiled": compiled, "compile_s": compile_s, "spec": spec, "holder": holder,
          "hlo_fingerprint": hlo_fingerprint(compiled.as_text())}


def twin_case(config, spec, params, batch: dict[str, np.ndarray], dtype: str = "float32"):
  """The same training step in the PyTorch twin; returns a blocking one-step callable."""
  import torch  # pylint: disable=g-import-not-at-top
  from data_pipelines import augment  # pylint: disable=g-import-not-at-top
  from svfap_jax import masking  # pylint: disable=g-import-not-at-top
  from svfap_jax.interop import mapping, torch_twin
  pretrain = config.mode == "pretrain"
  device = "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"
  torch.set_num_threads(os.cpu_count() or 1)
  model = torch_twin.build_torch_model(spec, pretrain=pretrain, num_classes=0 if pretrain else 7,
                                       drop_path_rate=config.model.drop_path_rate)
  model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in
                         mapping.to_torch_state_dict(params, pretrain=pretrain).items()})
  model.to(device).train()
  opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
  s = spec.img_size
  video = batch["video"][:, :, :s, :s].astype(np.float32) / 255.0
  video = (video - np.array(augment.IMAGENET_MEAN, np.float32)) / np.array(
      augment.IMAGENET_STD, np.float32)
  x = torch.from_numpy(np.ascontiguousarray(video.transpose(0, 4, 1, 2, 3))).to(device)
  b = x.shape[0]
  labels = torch.from_numpy(batch["label"].astype(np.int64)).to(device)
  mask = np.asarray(masking.tube_mask(jax.random.key(1), b, spec.temporal_tokens,
                                      spec.spatial_tokens, config.mask.ratio))
  m = torch.from_numpy(np.array(mask)).to(device)
  target = torch.randn(b, int(mask[0].sum()), spec.patch_pixels, device=device)
  autocast = ((lambda: torch.autocast(device, dtype=torch.bfloat16)) if dtype == "bfloat16"
              else contextlib.nullcontext)

  def run():
    opt.zero_grad(set_to_none=True)
    with autocast():
      if pretrain:
        loss = torch.nn.functional.mse_loss(model(x, m).float(), target)
      else:
        loss = torch.nn.functional.cross_entropy(model(x).float(), labels, label_smoothing=0.1)
    loss.backward()
    opt.step()
    if device == "cuda":
      torch.cuda.synchronize()
    return loss
  return run


def interleaved(fns: dict[str, Any], repeats: int, warmup: int = 2,
                faults: Optional[dict[str, list[int]]] = None) -> dict[str, list[float]]:
  """Wall seconds of each callable, alternating them call by call after `warmup` rounds.

  When `faults` is a dict, it receives each call's minor page faults of the whole process
  (getrusage), the kernel work of memory the allocator gave back and takes again.
  """
  for _ in range(warmup):
    for fn in fns.values():
      fn()
  times = {k: [] for k in fns}
  for _ in range(repeats):
    for k, fn in fns.items():
      f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      t = time.perf_counter()
      fn()
      times[k].append(time.perf_counter() - t)
      if faults is not None:
        faults.setdefault(k, []).append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
  return times


def uptime() -> str:
  try:
    with open("/proc/loadavg") as f:
      return " ".join(f.read().split()[:3])
  except OSError:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def measure_case(args, mode: str, batch: int) -> dict[str, Any]:
  config = build_config(args.model, mode, batch, args.dtype, args.ema)
  case = jax_case(config, attention_impl=args.attention_impl)
  fns = {"jax": case["run"]}
  extra = {}
  for impl in args.also_impl:
    extra[impl] = jax_case(config, attention_impl=impl)
    fns[f"jax_{impl}"] = extra[impl]["run"]
  for text in args.also_xla:
    # Keys must stay free of spaces: the table prints them as column labels.
    label = "xla[" + text.replace(" ", "") + "]"
    extra[label] = jax_case(config, attention_impl=args.attention_impl,
                            compiler_options=parse_compiler_options(text))
    fns[f"jax_{label}"] = extra[label]["run"]
  if not args.skip_torch:
    fns["torch"] = twin_case(config, case["spec"], case["params"], case["batch"], args.dtype)
  load_before = uptime()
  faults: dict[str, list[int]] = {}
  times = interleaved(fns, args.repeats, args.warmup, faults)
  row = {"case": mode, "model": args.model, "batch": batch, "dtype": args.dtype,
         "process_settings": getattr(args, "process_settings", None),
         **{f"{k}_minor_faults_per_step": int(statistics.median(v)) for k, v in faults.items()},
         "attention_impl": case["spec"].attention_impl, "step_gflops": case["flops"] / 1e9,
         "compile_s": case["compile_s"], "load_before": load_before, "load_after": uptime(),
         "jax_times_s": times["jax"], "jax_s": statistics.median(times["jax"])}
  row["jax_gflops_per_s"] = case["flops"] / row["jax_s"] / 1e9
  for impl in extra:
    row[f"jax_{impl}_times_s"] = times[f"jax_{impl}"]
    row[f"jax_{impl}_s"] = statistics.median(times[f"jax_{impl}"])
    row[f"jax_{impl}_same_hlo"] = extra[impl]["hlo_fingerprint"] == case["hlo_fingerprint"]
    if row[f"jax_{impl}_same_hlo"] and impl.startswith("xla["):
      print(f"note: {impl} compiles to the same HLO as the default step; any difference in its "
            "times is code generation or noise", flush=True)
  if "torch" in times:
    row.update(torch_times_s=times["torch"], torch_s=statistics.median(times["torch"]))
    row["torch_gflops_per_s"] = case["flops"] / row["torch_s"] / 1e9
    row["speed_ratio_jax_over_torch"] = row["torch_s"] / row["jax_s"]
  if args.peak_tflops:
    row["jax_mfu"] = row["jax_gflops_per_s"] / 1e3 / args.peak_tflops
    if "torch_gflops_per_s" in row:
      row["torch_mfu"] = row["torch_gflops_per_s"] / 1e3 / args.peak_tflops
  return row


def markdown(rows: list[dict[str, Any]]) -> str:
  lines = ["| case | batch | GFLOP/step | JAX s | PyTorch s | JAX/PyTorch speed | JAX GFLOP/s | "
           "PyTorch GFLOP/s | load before → after |", "|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(
        f"| {r['model']} {r['case']} ({r['attention_impl']}) | {r['batch']} | "
        f"{r['step_gflops']:.0f} | {r['jax_s']:.3f} | {r.get('torch_s', float('nan')):.3f} | "
        f"**{r.get('speed_ratio_jax_over_torch', float('nan')):.2f}** | "
        f"{r['jax_gflops_per_s']:.0f} | {r.get('torch_gflops_per_s', float('nan')):.0f} | "
        f"{r['load_before']} → {r['load_after']} |"
        + "".join(f" {k[4:-2]}: {v:.3f} s |" for k, v in r.items()
                  if k.startswith("jax_") and k.endswith("_s")
                  and k not in ("jax_s", "jax_gflops_per_s")
                  and not k.endswith("times_s"))
        + (f" MFU JAX {100 * r['jax_mfu']:.1f} % / PyTorch "
           f"{100 * r.get('torch_mfu', float('nan')):.1f} % |" if "jax_mfu" in r else ""))
  return "\n".join(lines)


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model", default="svfap_base")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument("--attention-impl", default=None,
                      help="ModelSpec.attention_impl for the JAX model (default: the spec's)")
  parser.add_argument("--also-impl", action="append", default=[],
                      help="another attention_impl to time in the same interleaved rounds "
                      "(repeatable), e.g. --also-impl xla")
  parser.add_argument("--also-xla", action="append", default=[], metavar="NAME=VALUE,...",
                      help="another JAX step compiled with these XLA options (the XLA_FLAGS "
                      "names, for this compilation only) and timed in the same rounds "
                      "(repeatable), e.g. --also-xla xla_cpu_enable_fast_math=true")
  parser.add_argument("--compile-cache", default="",
                      help="persistent XLA compilation cache directory (reruns skip compiling)")
  parser.add_argument("--ema", type=float, default=0.0, help="EMA decay of the parameters")
  parser.add_argument("--skip-torch", action="store_true")
  parser.add_argument("--json", default="")
  parser.add_argument("--cases", default="finetune,pretrain", help="comma-separated subset")
  parser.add_argument("--finetune-batch", type=int, default=4)
  parser.add_argument("--pretrain-batch", type=int, default=8)
  parser.add_argument("--peak-tflops", type=float, default=0.0,
                      help="the device's peak for --dtype (e.g. 989 for H100 SXM bf16 dense); "
                      "adds model-FLOPs utilisation (MFU) columns")
  args = parser.parse_args(argv)
  for text in args.also_xla:
    try:
      parse_compiler_options(text)
    except ValueError as e:
      parser.error(f"--also-xla: {e}")
  unknown = set(args.cases.split(",")) - set(CASES)
  if unknown:
    parser.error(f"--cases: unknown {sorted(unknown)}; choose from {sorted(CASES)}")
  return args


def main(argv=None) -> int:
  args = parse_args(argv)
  if args.compile_cache:
    jax.config.update("jax_compilation_cache_dir", args.compile_cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  # Both frameworks run under the settings the CLI applies (svfap_jax/host_allocator.py); set
  # SVFAP_HOST_ALLOCATOR=default to time glibc's defaults instead.
  args.process_settings = cli.apply_process_settings()
  print(f"machine: {machine.describe()}; load average {uptime()}; {args.process_settings}",
        flush=True)
  rows = []
  for mode in args.cases.split(","):
    batch = args.finetune_batch if mode == "finetune" else args.pretrain_batch
    row = measure_case(args, mode, batch)
    rows.append(row)
    print(json.dumps(row), flush=True)
  print()
  machine.report(rows, markdown(rows), args.json)
  return 0


if __name__ == "__main__":
  sys.exit(main())
