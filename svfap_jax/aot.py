"""`compile` command: ahead-of-time compilation of the train step for a target mesh.

  python -m svfap_jax compile --config configs/finetune_dfew.py --topology v4-32 \
      --batch-per-device 32
  python -m svfap_jax compile --config configs/pretrain_voxceleb2.py --topology gpu-h100x8 \
      --batch-per-device 64 --config.mesh.fsdp=8 --config.mesh.data=1

Builds the jitted train step of a run config for the mesh of a target machine, with abstract
parameters (`jax.eval_shape`: nothing is materialised) and no dataset, compiles it, and prints
XLA's per-device memory analysis (arguments, outputs, donated aliases, temporaries, generated
code) and FLOPs. It answers "does this batch fit, with this mesh?" before a slice is booked.

Targets (`--topology`):
  v4-N, v5p-N        N TensorCores; one JAX device per chip (megacore), N/2 devices.
  v5e-N, v5litepod-N, v6e-N   N chips, one device each.
  gpu-<name>xN       e.g. gpu-h100x8: N GPUs of one host.
  cpu:N              N host-platform CPU devices.
TPU targets are compiled for the real chip when libtpu is importable (`pip install
'jax[tpu]'`): `jax.experimental.topologies.get_topology_desc` gives compile-only devices, so no
TPU is needed. GPU targets are compiled on the local GPUs when N are visible. Otherwise the same
program (same shapes, shardings and collectives) is compiled for N fake CPU devices, and every
memory number is labelled a CPU proxy: buffer assignment, layouts and fusion differ on the real
backend, bf16 arithmetic may be widened on CPU, so treat those bytes as an estimate only.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import subprocess
import sys
import time
from typing import Optional, Sequence


_CHILD_ENV = "SVFAP_AOT_CHILD"


# ------------------------------------------------------------------------------------------------
# Targets.
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Target:
  """A machine to compile for."""
  name: str
  platform: str                       # "tpu" | "gpu" | "cpu"
  num_devices: int
  tpu_topology: Optional[str] = None  # e.g. "v4:2x2x4"
  tpu_chip_config: Optional[str] = None
  tpu_chips_per_host: Optional[tuple[int, int, int]] = None


def _cube(chips: int) -> tuple[int, int, int]:
  """3-D chip grid of a v4/v5p slice: 2x2x1, 2x2x2, 2x2x4, 2x4x4, 4x4x4, 4x4x8, ..."""
  dims = [2, 2, 1]
  while math.prod(dims) < chips:
    low = min(dims)
    if dims[0] == dims[1] == dims[2]:
      dims[2] *= 2
    else:
      dims[max(i for i, d in enumerate(dims) if d == low)] *= 2
  if math.prod(dims) != chips:
    raise ValueError(f"{chips} chips is not a standard v4/v5p slice size")
  return tuple(dims)


def _square(chips: int) -> tuple[int, int]:
  """2-D chip grid of a v5e/v6e slice: 1x1, 2x2, 2x4, 4x4, 4x8, 8x8, 8x16, 16x16."""
  grids = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8), 128: (8, 16),
           256: (16, 16)}
  if chips not in grids:
    raise ValueError(f"{chips} chips is not a v5e/v6e slice size ({sorted(grids)})")
  return grids[chips]


def parse_target(name: str) -> Target:
  """'v4-32' | 'v5p-16' | 'v5e-8' | 'v5litepod-16' | 'v6e-8' | 'gpu-h100x8' | 'cpu:8'."""
  text = name.strip().lower()
  if m := re.fullmatch(r"cpu:(\d+)", text):
    return Target(name, "cpu", int(m.group(1)))
  if m := re.fullmatch(r"gpu-([a-z0-9]+)x(\d+)", text):
    return Target(name, "gpu", int(m.group(2)))
  if m := re.fullmatch(r"(v4|v5p)-(\d+)", text):
    cores = int(m.group(2))
    if cores < 8 or cores % 2:
      raise ValueError(f"{name}: {m.group(1)} slices count TensorCores, 8 or more")
    x, y, z = _cube(cores // 2)
    return Target(name, "tpu", cores // 2, f"{m.group(1)}:{x}x{y}x{z}", "megacore", (2, 2, 1))
  if m := re.fullmatch(r"(v5e|v5litepod|v6e)-(\d+)", text):
    chips = int(m.group(2))
    x, y = _square(chips)
    per_host = (x, y, 1) if chips <= 8 else (2, 2, 1)
    prefix = "v6e" if m.group(1) == "v6e" else "v5e"
    return Target(name, "tpu", chips, f"{prefix}:{x}x{y}", "default", per_host)
  raise ValueError(f"unknown --topology {name!r}; use v4-N, v5p-N, v5e-N, v6e-N, gpu-<name>xN "
                   "or cpu:N")


# ------------------------------------------------------------------------------------------------
# Devices.
# ------------------------------------------------------------------------------------------------


def _use_cpu_devices(count: int) -> bool:
  """Asks JAX for `count` CPU devices; False when its backends already run with fewer."""
  import jax  # pylint: disable=g-import-not-at-top
  try:
    jax.config.update("jax_num_cpu_devices", count)
  except RuntimeError:
    pass
  try:
    return len(jax.devices("cpu")) >= count
  except RuntimeError:
    return False


def _tpu_devices(target: Target):
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  topology = topologies.get_topology_desc(
      target.tpu_topology, "tpu", chip_config_name=target.tpu_chip_config,
      chips_per_host_bounds=target.tpu_chips_per_host, num_slices=1)
  return list(topology.devices)


def _gpu_devices(count: int):
  import jax  # pylint: disable=g-import-not-at-top
  try:
    devices = jax.devices("gpu")
  except RuntimeError:
    return None
  return devices[:count] if len(devices) >= count else None


def resolve_devices(target: Target, force_proxy: bool = False):
  """(devices, backend description, is_proxy) or None when a fresh process is needed."""
  why = "forced with --proxy"
  if target.platform == "tpu" and not force_proxy:
    try:
      devices = _tpu_devices(target)
      kind = getattr(devices[0], "device_kind", "TPU")
      backend = f"{kind} x{len(devices)} (libtpu compile-only topology {target.tpu_topology})"
      return devices, backend, False
    except Exception as e:  # pylint: disable=broad-except
      why = f"libtpu unavailable ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
  if target.platform == "gpu" and not force_proxy:
    devices = _gpu_devices(target.num_devices)
    if devices:
      return devices, f"{devices[0].device_kind} x{len(devices)} (local GPUs)", False
    why = f"fewer than {target.num_devices} GPUs visible here"
  if not _use_cpu_devices(target.num_devices):
    return None
  import jax  # pylint: disable=g-import-not-at-top
  devices = jax.devices("cpu")[:target.num_devices]
  if target.platform == "cpu":
    return devices, f"CPU x{len(devices)} (host platform)", False
  return devices, (f"CPU PROXY: {len(devices)} fake CPU devices standing in for {target.name}; "
                   f"{why}"), True


def _respawn(argv: Sequence[str], count: int) -> int:
  """Runs this command again in a fresh process whose JAX starts with `count` CPU devices."""
  env = dict(os.environ)
  flags_ = re.sub(r"--xla_force_host_platform_device_count=\d+", "", env.get("XLA_FLAGS", ""))
  env["XLA_FLAGS"] = f"{flags_} --xla_force_host_platform_device_count={count}".strip()
  env[_CHILD_ENV] = "1"
  return subprocess.call([sys.executable, "-m", "svfap_jax", "compile", *argv], env=env)


# ------------------------------------------------------------------------------------------------
# The program.
# ------------------------------------------------------------------------------------------------


def _bytes(n: Optional[int]) -> str:
  if n is None:
    return "n/a"
  for unit, size in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
    if abs(n) >= size:
      return f"{n / size:.2f} {unit}"
  return f"{n} B"


def _flops(n: float) -> str:
  for unit, size in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
    if n >= size:
      return f"{n / size:.2f} {unit}"
  return f"{n:.0f} FLOP"


def default_num_outputs(config) -> int:
  if config.mode == "pretrain":
    return 0
  from configs import common  # pylint: disable=g-import-not-at-top
  return int(common.DATASETS.get(config.dataset, {}).get("num_outputs", 7))


def compile_train_step(config, devices, *, batch_per_device: int, num_outputs: int,
                       host_crop: Optional[int] = None) -> dict:
  """Lowers and compiles the run's train step for `devices`; returns the analysis as a dict."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from svfap_jax import optim, sharding  # pylint: disable=g-import-not-at-top
  from svfap_jax.train import config_check, loop  # pylint: disable=g-import-not-at-top
  from svfap_jax.train.state import TrainState  # pylint: disable=g-import-not-at-top

  pretrain = config.mode == "pretrain"
  spec = config_check.spec_of(config)
  platform = devices[0].platform
  if spec.attention_impl == "auto" and platform != "gpu":
    # "auto" resolves against this process at trace time (on a one-device CPU process: aten, a
    # host callback whose work XLA does not count), while this compiles for the target: name the
    # target's XLA kernel instead, xla on TPU (libtpu's compile-only devices sit in a CPU
    # process) and chunked on CPU (layers.resolve_attention_impl).
    spec = dataclasses.replace(spec, attention_impl="xla" if platform == "tpu" else "chunked")
  module = loop.build_module(config, spec, num_outputs, pretrain)
  mesh = sharding.create_mesh({k: config.mesh[k] for k in config.mesh}, devices)
  global_batch = batch_per_device * len(devices)

  # Abstract parameters with their logical axes, as the trainer builds them.
  video = jax.ShapeDtypeStruct((1, spec.num_frames, spec.img_size, spec.img_size, spec.in_chans),
                               jnp.float32)
  if pretrain:
    mask = jax.ShapeDtypeStruct((1, spec.num_patches), jnp.bool_)
    init = lambda v, m: module.init(jax.random.key(0), v, m, num_visible=spec.num_patches)
    boxed = jax.eval_shape(init, video, mask)["params"]
  else:
    boxed = jax.eval_shape(lambda v: module.init(jax.random.key(0), v), video)["params"]
  logical = nn.get_partition_spec(boxed)
  abstract_params = nn.meta.unbox(boxed)
  param_shardings = sharding.tree_shardings(logical, abstract_params, mesh)
  total_steps = config.total_steps or 1000
  warmup = config.optim.warmup_steps or min(100, total_steps - 1)
  tx, _ = optim.make_optimizer(loop.optim_config(config, warmup), abstract_params,
                               pretrain=pretrain, total_steps=total_steps)
  ema = config.optim.ema_decay > 0
  make_state = jax.jit(lambda p: TrainState.create(p, tx, config.seed, ema),
                       in_shardings=(param_shardings,))
  sharded_params = jax.tree_util.tree_map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_params,
      param_shardings)
  state_shardings = make_state.lower(sharded_params).compile().output_shardings
  abstract_state = jax.tree_util.tree_map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      jax.eval_shape(make_state, sharded_params), state_shardings)

  # The batch a step receives: uint8 clips, int labels, float values.
  side = spec.img_size if pretrain else (host_crop or int(round(1.1 * spec.img_size)))
  num_values = num_outputs if config.task == "regression" else 0
  batch = {"video": ((global_batch, spec.num_frames, side, side, spec.in_chans), jnp.uint8),
           "label": ((global_batch,), jnp.int32),
           "values": ((global_batch, num_values), jnp.float32)}
  abstract_batch = {k: jax.ShapeDtypeStruct(shape, dtype,
                                            sharding=sharding.batch_sharding(mesh, len(shape)))
                    for k, (shape, dtype) in batch.items()}
  batch_shardings = {k: v.sharding for k, v in abstract_batch.items()}
  step = loop.make_train_step(config, module, tx, spec, num_outputs, pretrain)
  train_step = jax.jit(step, in_shardings=(state_shardings, batch_shardings),
                       out_shardings=(state_shardings, sharding.replicated(mesh)),
                       donate_argnums=(0,))
  start = time.time()
  lowered = train_step.lower(abstract_state, abstract_batch)
  compiled = lowered.compile()
  compile_s = time.time() - start

  memory = compiled.memory_analysis()
  fields = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
            "temp_size_in_bytes", "generated_code_size_in_bytes")
  mem = {f: (int(getattr(memory, f)) if memory is not None and hasattr(memory, f) else None)
         for f in fields}
  peak = None
  if None not in (mem["argument_size_in_bytes"], mem["output_size_in_bytes"],
                  mem["alias_size_in_bytes"], mem["temp_size_in_bytes"]):
    peak = (mem["argument_size_in_bytes"] + mem["output_size_in_bytes"]
            - mem["alias_size_in_bytes"] + mem["temp_size_in_bytes"])
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  flops = float(cost.get("flops", 0.0)) if cost else None
  num_params = int(sum(np.prod(a.shape) for a in jax.tree_util.tree_leaves(abstract_params)))
  return {
      "mode": config.mode, "model": config.model.name, "dtype": config.model.dtype,
      "remat": config.model.remat, "num_outputs": num_outputs,
      "mesh": dict(zip(mesh.axis_names, (int(s) for s in mesh.devices.shape))),
      "num_devices": len(devices), "global_batch": global_batch,
      "batch_per_device": batch_per_device,
      "input": list(batch["video"][0]), "num_params": num_params,
      "memory_per_device": {**mem, "peak_estimate_bytes": peak},
      "flops_per_device": flops,
      "flops_per_step": None if flops is None else flops * len(devices),
      "compile_seconds": round(compile_s, 1),
  }


def format_report(result: dict) -> str:
  mem = result["memory_per_device"]
  proxy = result["proxy"]
  label = " [CPU PROXY: estimate, not the target's real numbers]" if proxy else ""
  mesh = " ".join(f"{k}={v}" for k, v in result["mesh"].items())
  lines = [
      f"target:   {result['topology']} -> {result['backend']}",
      f"run:      {result['mode']} {result['model']} ({result['num_params'] / 1e6:.1f}M params, "
      f"{result['dtype']}, remat={result['remat']}, outputs={result['num_outputs']})",
      f"mesh:     {mesh}; global batch {result['global_batch']} = "
      f"{result['batch_per_device']}/device; input {tuple(result['input'])} uint8",
      f"memory per device (XLA memory_analysis){label}:",
      f"  argument_size        {_bytes(mem['argument_size_in_bytes'])}",
      f"  output_size          {_bytes(mem['output_size_in_bytes'])}",
      f"  alias_size           {_bytes(mem['alias_size_in_bytes'])}  (donated train state)",
      f"  temp_size            {_bytes(mem['temp_size_in_bytes'])}",
      f"  generated_code_size  {_bytes(mem['generated_code_size_in_bytes'])}",
      f"  peak_estimate        {_bytes(mem['peak_estimate_bytes'])}  "
      "(arguments + outputs - aliased + temp)",
  ]
  if result["flops_per_device"] is not None:
    lines.append(f"flops:    {_flops(result['flops_per_device'])} per device per step, "
                 f"{_flops(result['flops_per_step'])} per step (XLA cost_analysis"
                 f"{', CPU proxy' if proxy else ''})")
  lines.append(f"compile:  {result['compile_seconds']} s")
  return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Command line.
# ------------------------------------------------------------------------------------------------


def _parse(argv: Sequence[str]):
  from svfap_jax import cli  # pylint: disable=g-import-not-at-top
  parser = cli.config_parser("svfap compile", "Ahead-of-time compile of a config's training "
                             "step for a device mesh, with its per-device memory.")
  parser.add_argument("--topology", required=True,
                      help="v4-32 | v5e-8 | v5p-16 | v6e-8 | gpu-h100x8 | cpu:8")
  parser.add_argument("--batch-per-device", "--batch_per_device", dest="batch_per_device",
                      type=int, help="per-device batch (default: config.batch_size / devices)")
  parser.add_argument("--num-outputs", "--num_outputs", dest="num_outputs", type=int,
                      help="head size (default: the config's dataset, else 7; 0 when "
                      "pretraining)")
  parser.add_argument("--host-crop", "--host_crop", dest="host_crop", type=int,
                      help="finetune: side of the host crop fed to the step (default 1.1 x "
                      "img_size, as prepared datasets store it)")
  parser.add_argument("--proxy", action="store_true",
                      help="compile on fake CPU devices even if the target is here")
  parser.add_argument("--json", action="store_true", help="print one JSON object")
  return cli.parse_config_args(parser, argv)


def main(argv: Sequence[str]) -> int:
  fv = _parse(argv)
  config = fv.config
  try:
    target = parse_target(fv.topology)
  except ValueError as e:
    raise SystemExit(f"svfap compile: {e}") from None
  resolved = resolve_devices(target, force_proxy=fv.proxy)
  if resolved is None:
    if os.environ.get(_CHILD_ENV):
      raise SystemExit(f"svfap compile: could not get {target.num_devices} CPU devices")
    # JAX already runs with another CPU device count: start over in a fresh process.
    return _respawn(argv, target.num_devices)
  devices, backend, proxy = resolved
  batch_per_device = fv.batch_per_device or max(config.batch_size // len(devices), 1)
  num_outputs = default_num_outputs(config) if fv.num_outputs is None else fv.num_outputs
  result = compile_train_step(config, devices, batch_per_device=batch_per_device,
                              num_outputs=num_outputs, host_crop=fv.host_crop)
  result.update(topology=target.name, backend=backend, proxy=proxy)
  print(json.dumps(result) if fv.json else format_report(result), flush=True)
  return 0


def _cli_entry():  # pragma: no cover - `python -m svfap_jax.aot ...`
  sys.exit(main(sys.argv[1:]))


if __name__ == "__main__":
  _cli_entry()
