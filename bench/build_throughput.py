"""Throughput of `prepare` on the synthetic face-clip set: clips/s by input kind, face crop,
runner (the local process pool, Beam's multi-process DirectRunner) and workers.

  python bench/build_throughput.py [--clips-per-class 4] [--frames 32] [--size 128]
                                   [--short-side 112] [--workers 1,2] [--runners local,beam]
                                   [--out DIR]

Writes the synthetic clips once (frame folders and mp4), then times a fresh `prepare` for every
combination (start-up of the worker pool or of the Beam pipeline and its worker processes
included) and prints a markdown table. Runs of one combination follow each other, so the two
runners see the same machine load. Without apache-beam installed the Beam rows are left out
(with a note).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data_pipelines import build  # pylint: disable=g-import-not-at-top
from data_pipelines import synthetic  # pylint: disable=g-import-not-at-top
import machine  # pylint: disable=g-import-not-at-top


def run_once(list_path: str, out: str, workers: int, face_crop: bool, short_side: int,
             runner: str = "local") -> dict:
  """Times one fresh `prepare` (through `build.prepare` or `beam_build.prepare`)."""
  shutil.rmtree(out, ignore_errors=True)
  argv = ["--list", f"train={list_path}", "--out", out, "--workers", str(workers),
          "--short-side", str(short_side), "--num-shards", "2", "--quiet"]
  if face_crop:
    argv.append("--face-crop")
  args = build.build_parser().parse_args(argv)
  inputs = build.collect_inputs(args)
  start = time.perf_counter()
  if runner == "beam":
    from data_pipelines import beam_build  # pylint: disable=import-outside-toplevel
    report = beam_build.prepare(out, inputs, build.options_from_args(args), num_shards=2,
                                workers=workers, say=lambda s: None)
  else:
    report = build.prepare(out, inputs, build.options_from_args(args), num_shards=2,
                           workers=workers, say=lambda s: None)
  seconds = time.perf_counter() - start
  return {"clips": report["written"], "seconds": seconds,
          "face": (report.get("face_crop") or {}).get("mean_detected_fraction")}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--clips-per-class", type=int, default=4)
  p.add_argument("--frames", type=int, default=32)
  p.add_argument("--size", type=int, default=128)
  p.add_argument("--short-side", type=int, default=112)
  p.add_argument("--workers", default="1,2")
  p.add_argument("--runners", default="local,beam",
                 help="local (process pool) and/or beam (DirectRunner, multi-process)")
  p.add_argument("--out", help="work dir (default: a temporary one, removed afterwards)")
  args = p.parse_args(argv)
  runners = [r.strip() for r in args.runners.split(",") if r.strip()]
  note = ""
  if "beam" in runners and importlib.util.find_spec("apache_beam") is None:
    runners.remove("beam")
    note = " Beam rows left out: apache-beam is not installed (pip install -e .[beam])."
  work = args.out or tempfile.mkdtemp(prefix="svfap_build_bench_")
  try:
    t = time.perf_counter()
    raw = synthetic.write_dataset(os.path.join(work, "raw"), args.clips_per_class, args.frames,
                                  args.size, seed=0, test_fraction=0.0)
    gen = time.perf_counter() - t
    lists = {"jpeg folders": raw["lists"][1]["train"], "mp4": raw["video_lists"][1]["train"]}
    rows = []
    for kind, list_path in lists.items():
      for face_crop in (False, True):
        for workers in (int(w) for w in args.workers.split(",")):
          for runner in runners:
            r = run_once(list_path, os.path.join(work, "out"), workers, face_crop,
                         args.short_side, runner)
            rows.append((kind, face_crop, runner, workers, r))
            print(f"  {kind}, face_crop={face_crop}, {runner}, workers={workers}: "
                  f"{r['clips'] / r['seconds']:.2f} clips/s", file=sys.stderr, flush=True)
    print(f"\n`prepare` throughput: {raw['num_clips']} synthetic clips x {args.frames} frames, "
          f"{args.size}x{args.size} px in, short side {args.short_side} out, JPEG q90; "
          f"{machine.describe(with_jax=False)}; "
          f"generating the clips took {gen:.1f} s.{note}\n")
    print("| input | face crop | runner | workers | clips/s | frames/s | seconds | faces found |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for kind, face_crop, runner, workers, r in rows:
      rate = r["clips"] / r["seconds"]
      face = "-" if r["face"] is None else f"{100 * r['face']:.0f}% of frames"
      name = "Beam DirectRunner" if runner == "beam" else "local pool"
      print(f"| {kind} | {'yes' if face_crop else 'no'} | {name} | {workers} | {rate:.2f} | "
            f"{rate * args.frames:.0f} | {r['seconds']:.2f} | {face} |")
  finally:
    if not args.out:
      shutil.rmtree(work, ignore_errors=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
