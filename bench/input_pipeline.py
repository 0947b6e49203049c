"""Input pipeline throughput: decode cost, grain pipelines per worker, device augmentation on CPU.

  PYTHONPATH=. python bench/input_pipeline.py [--clips 64] [--frames 40] [--short-side 176]

Builds (once, reused afterwards) a synthetic prepared dataset of face clips stored with the given
short side, then measures

  * decode: reading one record and decoding the 16 sampled JPEG frames, one core;
  * the pretrain and finetune pipelines with worker_count 0 (everything on one core, no read or
    prefetch threads) and 2 (two decoding processes), in clips per wall-clock second and per
    CPU-second of the decoding processes (what one core sustains, even on a shared machine);
  * `augment.finetune_train_augment` on a host batch (jit, median of 5 after warm-up) on the
    local CPU.

and prints a markdown table with the command and the machine.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data_pipelines import grain_pipeline  # pylint: disable=wrong-import-position
from data_pipelines import records  # pylint: disable=wrong-import-position
from data_pipelines import synthetic  # pylint: disable=wrong-import-position


def cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def bench_decode(dataset_dir: str, num_frames: int, rate: int, repeats: int) -> dict:
  """Per-clip CPU cost of parsing a record and decoding its sampled frames, single thread.

  Thread CPU time rather than wall time, so other jobs on a shared machine do not count.
  """
  import cv2  # pylint: disable=g-import-not-at-top
  cv2.setNumThreads(1)
  source = records.ClipDataSource(dataset_dir, "train")
  rng = np.random.default_rng(0)
  read_s, decode_s, n = 0.0, 0.0, 0
  for _ in range(repeats):
    for i in range(len(source)):
      t0 = time.thread_time()
      clip = source[i]
      t1 = time.thread_time()
      idx = grain_pipeline.random_window(clip["num_frames"], num_frames, rate, rng)
      records.decode_frames(clip["frames"], idx)
      t2 = time.thread_time()
      read_s += t1 - t0
      decode_s += t2 - t1
      n += 1
  return {"read_ms": 1e3 * read_s / n, "decode_ms": 1e3 * decode_s / n,
          "clips_per_s": n / (read_s + decode_s)}


def _cpu_seconds(pids) -> float:
  """User + system CPU time of processes, from /proc (clock ticks)."""
  total = 0
  for pid in pids:
    with open(f"/proc/{pid}/stat") as f:
      fields = f.read().rsplit(")", 1)[1].split()
    total += int(fields[11]) + int(fields[12])  # utime, stime
  return total / os.sysconf("SC_CLK_TCK")


def fresh_page_cost_us(megabytes: int = 12, repeats: int = 3) -> float:
  """Microseconds per first touch of a fresh 4 KiB page (median of `repeats`).

  Worker processes hand every batch over in a new shared-memory segment, so this cost, paid per
  page of every batch, separates worker throughput from in-process throughput.
  """
  import mmap  # pylint: disable=g-import-not-at-top
  size = megabytes << 20
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    m = mmap.mmap(-1, size)
    a = np.frombuffer(m, np.uint8)
    a[::4096] = 1
    times.append(time.perf_counter() - t0)
    del a
    m.close()
  return 1e6 * statistics.median(times) / (size // 4096)


def bench_pipeline(kind: str, dataset_dir: str, workers: int, batch_size: int,
                   num_batches: int, img_size: int) -> tuple[float, float]:
  """(clips per wall second, clips per CPU second of the decoding processes).

  Timed after the first batch, which pays for start-up. The CPU-second rate is what one core
  sustains, independent of how many other jobs share the machine.
  """
  import multiprocessing  # pylint: disable=g-import-not-at-top
  ds = grain_pipeline.make_pipeline(
      kind, dataset_dir, "train", batch_size=batch_size, img_size=img_size, shard_index=0,
      shard_count=1, worker_count=workers, read_threads=0, prefetch_batches=0 if not workers else 2)
  it = iter(ds)
  next(it)
  pids = [p.pid for p in multiprocessing.active_children()] if workers else [os.getpid()]
  cpu0, t0 = _cpu_seconds(pids), time.perf_counter()
  for _ in range(num_batches):
    batch = next(it)
    del batch
  elapsed = time.perf_counter() - t0
  cpu = _cpu_seconds(pids) - cpu0
  it.close()
  clips = num_batches * batch_size
  return clips / elapsed, clips / max(cpu, 1e-9)


def bench_augment(batch_size: int, num_frames: int, host_size: int, img_size: int,
                  repeats: int = 5) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from data_pipelines import augment  # pylint: disable=g-import-not-at-top

  cfg = augment.AugmentConfig(img_size=img_size)
  fn = jax.jit(augment.finetune_train_augment, static_argnums=(3, 4))
  video = jnp.asarray(np.random.default_rng(0).integers(
      0, 256, (batch_size, num_frames, host_size, host_size, 3), dtype=np.uint8))
  labels = jnp.arange(batch_size) % 7
  t0 = time.perf_counter()
  jax.block_until_ready(fn(jax.random.PRNGKey(0), video, labels, 7, cfg))
  first = time.perf_counter() - t0
  times = []
  for s in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(jax.random.PRNGKey(s + 1), video, labels, 7, cfg))
    times.append(time.perf_counter() - t0)
  return {"compile_and_first_s": first, "median_s": statistics.median(times),
          "device": str(jax.devices()[0].platform)}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default="/tmp/svfap_bench_input")
  parser.add_argument("--clips", type=int, default=64, help="about this many clips (7 classes)")
  parser.add_argument("--frames", type=int, default=72, help="frames per clip")
  parser.add_argument("--short-side", type=int, default=176)
  parser.add_argument("--img-size", type=int, default=160)
  parser.add_argument("--batch-size", type=int, default=8)
  parser.add_argument("--num-batches", type=int, default=24)
  parser.add_argument("--decode-repeats", type=int, default=3)
  parser.add_argument("--augment-batch", type=int, default=32)
  parser.add_argument("--skip-augment", action="store_true")
  args = parser.parse_args(argv)

  t0 = time.perf_counter()
  per_class = max(1, -(-args.clips // len(synthetic.EMOTIONS)))
  dataset_dir = synthetic.make_synthetic_dataset(
      args.out, num_clips_per_class=per_class, num_frames=args.frames, size=args.short_side,
      seed=0, test_fraction=0.01, short_side=args.short_side, workers=max(1, os.cpu_count() or 1))
  build_s = time.perf_counter() - t0
  n_train = len(records.ClipDataSource(dataset_dir, "train"))

  rows = []
  dec = bench_decode(dataset_dir, 16, 4, args.decode_repeats)
  rows.append(("decode only: read + check + parse one record", f"{dec['read_ms']:.2f} ms "
               "CPU/clip", ""))
  rows.append(("decode only: 16 sampled JPEG frames", f"{dec['decode_ms']:.2f} ms CPU/clip",
               f"{dec['clips_per_s']:.0f} clips per CPU-second (read + decode)"))
  for kind in ("pretrain", "finetune"):
    for workers in (0, 2):
      rate, per_cpu = bench_pipeline(kind, dataset_dir, workers, args.batch_size,
                                     args.num_batches, args.img_size)
      where = "the main process" if not workers else f"the {workers} worker processes"
      rows.append((f"{kind} pipeline, worker_count={workers}", f"{rate:.0f} clips/s wall",
                   f"{per_cpu:.0f} clips per CPU-second of {where}"))
  page_us = fresh_page_cost_us()
  rows.append(("first touch of fresh memory (page faults)", f"{page_us:.2f} us per 4 KiB page",
               f"{page_us * 1e-3 * (16 * args.img_size ** 2 * 3 >> 12):.1f} ms per 16x"
               f"{args.img_size}^2 clip handed over by a worker"))
  if not args.skip_augment:
    aug = bench_augment(args.augment_batch, 16, args.short_side, args.img_size)
    rows.append((f"finetune_train_augment, batch {args.augment_batch}x16x{args.short_side}^2 -> "
                 f"{args.img_size}^2 ({aug['device']}, jit)", f"{aug['median_s'] * 1e3:.0f} ms "
                 "median of 5", f"first call incl. compile {aug['compile_and_first_s']:.1f} s"))

  print()
  command = " ".join(["PYTHONPATH=. python bench/input_pipeline.py"] + list(
      sys.argv[1:] if argv is None else argv))
  print(f"Command: `{command}`")
  load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
  print(f"Machine: {os.cpu_count()} CPUs (nproc), {cpu_model()}; python "
        f"{platform.python_version()}; load average at the end {load}")
  print(f"Dataset: {n_train} train clips x {args.frames} frames, short side {args.short_side}, "
        f"JPEG (built in {build_s:.0f} s at {dataset_dir})")
  print(f"Pipelines: batch {args.batch_size}, {args.num_batches} batches timed after the first, "
        "16 frames at rate 4, read_threads=0")
  print()
  print("| measurement | result | per core / note |")
  print("|---|---|---|")
  for row in rows:
    print("| " + " | ".join(row) + " |")
  return 0


if __name__ == "__main__":
  sys.exit(main())
