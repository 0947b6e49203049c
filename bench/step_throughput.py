"""Train-step time of svfap_base in JAX vs our PyTorch twin, same machine, same batch, fp32.

  .venv/bin/python bench/step_throughput.py [--model svfap_base] [--repeats 5]

Cases: fine-tuning step (batch 4: forward, cross-entropy, backward, AdamW) and pretraining step
(batch 8, 90 % tube mask: forward, masked MSE, backward, AdamW). Both frameworks run the same
model (the twin loads the JAX weights), one after the other in this process. Reports the median of
`--repeats` timed steps after warm-up, the JAX/PyTorch speed ratio and the FLOP/s each achieves,
with the step's FLOPs from XLA's cost analysis. On a GPU, pass --dtype bfloat16 for MFU.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import numpy as np
import optax

from svfap_jax import api, losses, masking
from svfap_jax.models.registry import get_spec


def _median_time(fn, repeats: int, warmup: int = 2) -> float:
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def jax_step(spec, pretrain: bool, batch: int, dtype: str):
  module = api.build_module(spec, pretrain=pretrain, num_classes=7, dtype=dtype)
  params, _ = api.init_params(module, spec, jax.random.key(0), pretrain)
  tx = optax.adamw(1e-4, weight_decay=0.05)
  opt_state = tx.init(params)
  rng = np.random.default_rng(0)
  video = jnp.asarray(rng.standard_normal((batch, spec.num_frames, spec.img_size, spec.img_size,
                                           3)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 7, batch))
  nv = masking.num_visible("tube", spec.temporal_tokens, spec.spatial_tokens, 0.9)
  mask = masking.tube_mask(jax.random.key(1), batch, spec.temporal_tokens, spec.spatial_tokens, 0.9)
  targets = losses.patchify_targets(video)

  def loss_fn(p, video, labels, mask, targets):
    if pretrain:
      pred = module.apply({"params": p}, video, mask, num_visible=nv)
      return losses.pretrain_loss(pred, targets, mask)
    logits = module.apply({"params": p}, video)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  @jax.jit
  def step(p, s, batch):
    loss, g = jax.value_and_grad(loss_fn)(p, *batch)
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s, loss

  # The batch is an argument, not a closed-over constant: XLA would otherwise fold the input
  # reshapes into the program. FLOPs come from the lowered (pre-optimisation) program, which
  # counts every matmul on every backend (GPU cost analysis leaves library GEMM calls out).
  batch_args = (video, labels, mask, targets)
  lowered = step.lower(params, opt_state, batch_args)
  cost = lowered.cost_analysis()
  flops = float((cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"])
  compiled = lowered.compile()
  state = {"p": params, "s": opt_state}

  def run():
    state["p"], state["s"], loss = compiled(state["p"], state["s"], batch_args)
    loss.block_until_ready()
  return run, flops, params, np.asarray(video), np.asarray(mask)


def torch_step(spec, pretrain: bool, params, video: np.ndarray, mask: np.ndarray, batch: int,
               dtype: str = "float32"):
  """The same step in our PyTorch twin: on the GPU when JAX runs on one (bf16 via autocast)."""
  import contextlib  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from svfap_jax.interop import mapping, torch_twin  # pylint: disable=g-import-not-at-top
  device = "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"
  torch.set_num_threads(os.cpu_count() or 1)
  model = torch_twin.build_torch_model(spec, pretrain=pretrain, num_classes=7)
  model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in
                         mapping.to_torch_state_dict(params, pretrain=pretrain).items()})
  model.to(device).train()
  opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
  x = torch.from_numpy(np.ascontiguousarray(video.transpose(0, 4, 1, 2, 3))).to(device)
  m = torch.from_numpy(np.array(mask)).to(device)
  labels = torch.randint(0, 7, (batch,), device=device)
  n_masked = int(mask[0].sum())
  target = torch.randn(batch, n_masked, spec.patch_pixels, device=device)
  autocast = (lambda: torch.autocast(device, dtype=torch.bfloat16)) if dtype == "bfloat16" \
      else contextlib.nullcontext

  def run():
    opt.zero_grad(set_to_none=True)
    with autocast():
      if pretrain:
        loss = torch.nn.functional.mse_loss(model(x, m).float(), target)
      else:
        loss = torch.nn.functional.cross_entropy(model(x).float(), labels)
    loss.backward()
    opt.step()
    if device == "cuda":
      torch.cuda.synchronize()
  return run


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--model", default="svfap_base")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--dtype", default="float32")
  parser.add_argument("--skip-torch", action="store_true")
  parser.add_argument("--json", default="")
  parser.add_argument("--cases", default="finetune,pretrain", help="comma-separated subset")
  parser.add_argument("--finetune-batch", type=int, default=4)
  parser.add_argument("--pretrain-batch", type=int, default=8)
  parser.add_argument("--peak-tflops", type=float, default=0.0,
                      help="the device's peak for --dtype (e.g. 989 for H100 SXM bf16 dense); "
                      "adds model-FLOPs utilisation (MFU) columns")
  args = parser.parse_args()
  spec = get_spec(args.model)
  cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
              if l.startswith("model name")), platform.processor())
  print(f"machine: {os.cpu_count()} cores, {cpu}; jax {jax.__version__} on "
        f"{jax.devices()[0].device_kind}")
  rows = []
  cases = [("finetune", False, args.finetune_batch),
           ("pretrain (90% tube mask)", True, args.pretrain_batch)]
  for name, pretrain, batch in cases:
    if name.split()[0] not in args.cases.split(","):
      continue
    run_jax, flops, params, video, mask = jax_step(spec, pretrain, batch, args.dtype)
    t_jax = _median_time(run_jax, args.repeats)
    row = {"case": name, "batch": batch, "step_gflops": flops / 1e9, "jax_s": t_jax,
           "jax_gflops_per_s": flops / t_jax / 1e9}
    if not args.skip_torch:
      t_torch = _median_time(torch_step(spec, pretrain, params, video, mask, batch, args.dtype),
                             args.repeats)
      row.update(torch_s=t_torch, torch_gflops_per_s=flops / t_torch / 1e9,
                 speed_ratio_jax_over_torch=t_torch / t_jax)
    if args.peak_tflops:
      row["jax_mfu"] = row["jax_gflops_per_s"] / 1e3 / args.peak_tflops
      if "torch_gflops_per_s" in row:
        row["torch_mfu"] = row["torch_gflops_per_s"] / 1e3 / args.peak_tflops
    rows.append(row)
    print(json.dumps(row), flush=True)
  print("\n| case | batch | GFLOP/step (XLA) | JAX s | PyTorch s | JAX/PyTorch speed | "
        "JAX GFLOP/s | PyTorch GFLOP/s |\n|---|---|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {args.model} {r['case']} | {r['batch']} | {r['step_gflops']:.0f} | {r['jax_s']:.2f} "
          f"| {r.get('torch_s', float('nan')):.2f} | "
          f"{r.get('speed_ratio_jax_over_torch', float('nan')):.2f} | "
          f"{r['jax_gflops_per_s']:.0f} | {r.get('torch_gflops_per_s', float('nan')):.0f} |"
          + (f" MFU JAX {100 * r['jax_mfu']:.1f} % / PyTorch "
             f"{100 * r.get('torch_mfu', float('nan')):.1f} % |" if "jax_mfu" in r else ""))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(rows, f, indent=2)


if __name__ == "__main__":
  main()
