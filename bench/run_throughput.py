"""End-to-end training throughput: the trainer with its real input pipeline, side by side with the
input pipeline alone and the PyTorch twin's train step.

  .venv/bin/python bench/run_throughput.py [--model svfap_base] [--steps 12] \
      [--cases finetune,pretrain] [--json out.json]

`bench/step_throughput.py` times one jitted step on a batch already on the device. A user waits
for more: decoding JPEGs on the host, the on-device augmentation, the non-finite guard, logging and
the loop around the step. For each case this script

1. writes a small synthetic face-clip dataset (`data_pipelines.synthetic`, "studio" faces, stored
   at 1.1 x img_size so that fine-tuning's crops have room) and prepares it;
2. runs `svfap_jax.train.loop.train` on it with the shipped config (`configs/finetune_dfew.py`,
   `configs/pretrain_voxceleb2.py`: its optimizer, augmentation, EMA, data workers), logging every
   step, no evaluation inside the run; the end-to-end rate is the median of the per-step
   `clips_per_s_per_device` rows x devices, after `--skip` rows (the first holds compilation);
3. iterates the same training pipeline alone (`loop.train_pipeline`, the trainer's own) for
   `--input-batches` batches: the rate at which the host can feed the step;
4. times the twin's train step (`bench/step_throughput.twin_case`: forward, loss, backward,
   AdamW on a normalised float video, no augmentation) on the same machine afterwards.

Reported per case: the end-to-end clips/s, the input pipeline's clips/s and its headroom (input
rate / end-to-end rate; below ~1.2 the run is input-bound), the twin's clips/s and the ratio
JAX end-to-end / twin step (> 1: the real JAX loop trains faster than the bare PyTorch step).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
import machine  # pylint: disable=g-import-not-at-top
import step_throughput  # pylint: disable=g-import-not-at-top


def make_dataset(work: str, img_size: int, num_frames: int, num_clips: int) -> str:
  """A prepared synthetic dataset with at least `num_clips` training clips of `num_frames`."""
  from data_pipelines import synthetic  # pylint: disable=g-import-not-at-top
  per_class = math.ceil(num_clips / len(synthetic.EMOTIONS)) + 1  # one per class goes to test
  return synthetic.make_synthetic_dataset(
      os.path.join(work, f"faces_{img_size}"), num_clips_per_class=per_class,
      num_frames=num_frames, size=int(round(1.1 * img_size)), seed=0, test_fraction=0.1,
      workers=os.cpu_count() or 1, variation="studio")


def steady_rate(metrics_path: str, skip: int) -> dict[str, Any]:
  """Median clips/s of the logged training rows after the first `skip` (x devices)."""
  rows = []
  with open(metrics_path) as f:
    for line in f:
      row = json.loads(line)
      if "clips_per_s_per_device" in row:
        rows.append(row["clips_per_s_per_device"] * jax.device_count())
  steady = rows[skip:]
  if not steady:
    raise RuntimeError(f"{metrics_path}: {len(rows)} logged steps, none after the {skip} skipped")
  return {"rates": steady, "clips_per_s": statistics.median(steady)}


def input_rate(config, dataset_dir: str, pretrain: bool, batches: int) -> float:
  """Clips/s of the trainer's training pipeline alone (first batch, the warm-up, not counted)."""
  from svfap_jax.train import loop  # pylint: disable=g-import-not-at-top
  it = iter(loop.train_pipeline(config, dataset_dir, pretrain))
  first = next(it)
  clips = len(first["video"]) // max(config.data.num_views if pretrain else 1, 1)
  t = time.perf_counter()
  for _ in range(batches):
    next(it)
  return clips * batches / (time.perf_counter() - t)


def twin_rate(config, repeats: int) -> float:
  """Clips/s of the twin's train step at the config's batch (median of `repeats` after one)."""
  from svfap_jax import api  # pylint: disable=g-import-not-at-top
  from svfap_jax.models.registry import get_spec
  from svfap_jax.train import loop
  pretrain = config.mode == "pretrain"
  spec = get_spec(config.model.name)
  module = loop.build_module(config, spec, 0 if pretrain else 7, pretrain)
  params, _ = api.init_params(module, spec, jax.random.key(0), pretrain)
  batch = step_throughput.host_batch(spec, config, config.batch_size)
  run = step_throughput.twin_case(config, spec, jax.device_get(params), batch)
  times = step_throughput.interleaved({"torch": run}, repeats, warmup=1)["torch"]
  return config.batch_size / statistics.median(times)


def measure_case(args, mode: str, batch: int, work: str) -> dict[str, Any]:
  from svfap_jax.models.registry import get_spec  # pylint: disable=g-import-not-at-top
  from svfap_jax.train import loop
  pretrain = mode == "pretrain"
  config = step_throughput.build_config(args.model, mode, batch, args.dtype)
  config.data.img_size = get_spec(args.model).img_size  # the model's input size (160 for base)
  views = config.data.num_views if pretrain else 1
  needed = (args.steps * batch) // max(views, 1) + batch
  span = config.data.num_frames * config.data.sampling_rate
  config.data.dir = make_dataset(work, config.data.img_size, span, needed)
  config.total_steps = args.steps
  config.num_epochs = 0
  config.optim.warmup_steps = 1
  config.log_every_steps = 1
  config.eval_every_steps = 10 * args.steps
  config.checkpoint_every_steps = 10 * args.steps
  config.data.test_split = config.data.eval_split = "test"
  config.recon_image_every_steps = 0
  workdir = os.path.join(work, f"run_{mode}")
  load_before = step_throughput.uptime()
  t = time.perf_counter()
  loop.train(config, workdir)
  run_s = time.perf_counter() - t
  e2e = steady_rate(os.path.join(workdir, "metrics.jsonl"), args.skip)
  row = {"case": mode, "model": args.model, "batch": batch, "dtype": args.dtype,
         "steps": args.steps, "skipped_rows": args.skip, "run_s": run_s,
         "worker_count": config.data.worker_count, "load_before": load_before,
         "e2e_rates": e2e["rates"], "e2e_clips_per_s": e2e["clips_per_s"]}
  row["input_clips_per_s"] = input_rate(config, config.data.dir, pretrain, args.input_batches)
  row["input_headroom"] = row["input_clips_per_s"] / row["e2e_clips_per_s"]
  if not args.skip_torch:
    row["twin_clips_per_s"] = twin_rate(config, args.twin_repeats)
    row["ratio_e2e_over_twin"] = row["e2e_clips_per_s"] / row["twin_clips_per_s"]
  row["load_after"] = step_throughput.uptime()
  return row


def markdown(rows: list[dict[str, Any]]) -> str:
  lines = ["| case | batch | JAX end-to-end clips/s | input pipeline clips/s (headroom) | "
           "twin step clips/s | JAX e2e / twin |", "|---|---|---|---|---|---|"]
  for r in rows:
    twin = f"{r['twin_clips_per_s']:.3f}" if "twin_clips_per_s" in r else "—"
    ratio = f"**{r['ratio_e2e_over_twin']:.2f}**" if "ratio_e2e_over_twin" in r else "—"
    lines.append(f"| {r['model']} {r['case']} | {r['batch']} | {r['e2e_clips_per_s']:.3f} | "
                 f"{r['input_clips_per_s']:.1f} ({r['input_headroom']:.0f}x) | {twin} | {ratio} |")
  return "\n".join(lines)


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--model", default="svfap_base")
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument("--cases", default="finetune,pretrain", help="comma-separated subset")
  parser.add_argument("--finetune-batch", type=int, default=4)
  parser.add_argument("--pretrain-batch", type=int, default=8)
  parser.add_argument("--steps", type=int, default=12, help="training steps per run")
  parser.add_argument("--skip", type=int, default=2,
                      help="logged steps left out of the median (compilation, first batches)")
  parser.add_argument("--input-batches", type=int, default=10)
  parser.add_argument("--twin-repeats", type=int, default=5)
  parser.add_argument("--skip-torch", action="store_true")
  parser.add_argument("--work-dir", default="", help="data and run directories (default: temp)")
  parser.add_argument("--json", default="")
  args = parser.parse_args(argv)
  args.cases = [c for c in args.cases.split(",") if c]
  unknown = set(args.cases) - set(step_throughput.CASES)
  if unknown:
    parser.error(f"unknown case(s) {sorted(unknown)}; known: {sorted(step_throughput.CASES)}")
  if args.steps <= args.skip:
    parser.error(f"--steps ({args.steps}) must exceed --skip ({args.skip})")
  return args


def main(argv=None) -> int:
  args = parse_args(argv)
  from svfap_jax import cli  # pylint: disable=g-import-not-at-top
  cli.apply_process_settings()  # what `python -m svfap_jax` runs with
  work = args.work_dir or tempfile.mkdtemp(prefix="run_throughput_")
  rows = []
  for mode in args.cases:
    batch = args.pretrain_batch if mode == "pretrain" else args.finetune_batch
    rows.append(measure_case(args, mode, batch, work))
    print(json.dumps({k: v for k, v in rows[-1].items() if not k.endswith("rates")}), flush=True)
  machine.report(rows, markdown(rows), args.json)
  return 0


if __name__ == "__main__":
  sys.exit(main())
