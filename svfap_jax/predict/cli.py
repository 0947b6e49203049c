"""`svfap predict` and `svfap extract`: the command lines over `predictor` and `outputs`."""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from typing import Sequence

from data_pipelines import video_io
from svfap_jax.predict.outputs import public, render, write_embeddings, write_predictions
from svfap_jax.predict.predictor import extract, load_predictor, predict

LIST_EXTENSIONS = (".txt", ".lst", ".list")


def is_list_file(path: str) -> bool:
  return os.path.isfile(path) and path.lower().endswith(LIST_EXTENSIONS)


def read_video_list(path: str) -> list[str]:
  """Video paths of a list file (relative paths from its folder; blank and # lines skipped)."""
  base = os.path.dirname(os.path.abspath(path))
  out = []
  with open(path, encoding="utf-8") as f:
    for line in f:
      line = line.strip()
      if not line or line.startswith("#"):
        continue
      candidate = line if os.path.isabs(line) else os.path.join(base, line)
      if not os.path.exists(candidate) and len(line.split()) > 1:
        first = line.split()[0]
        candidate = first if os.path.isabs(first) else os.path.join(base, first)
      out.append(candidate)
  if not out:
    raise video_io.InputError(path, "the video list is empty")
  return out


def _parser(command: str) -> argparse.ArgumentParser:
  what = ("per-window expression probabilities" if command == "predict"
          else "per-window and per-video encoder embeddings")
  parser = argparse.ArgumentParser(
      prog=f"svfap {command}",
      description=f"Face crop + sliding windows -> {what}. See svfap_jax/predict/__init__.py for "
      "output schema.")
  src = parser.add_mutually_exclusive_group(required=True)
  src.add_argument("--workdir", help="fine-tuning run directory (latest checkpoint)")
  src.add_argument("--checkpoint", help="a checkpoint directory (W/best, W/checkpoints, or a "
                   "step directory)")
  parser.add_argument("--video", required=True, help="video file, frame folder, or a .txt list "
                      "of them (one per line)")
  if command == "predict":
    parser.add_argument("--out", help=".json (default: printed) or .csv")
    parser.add_argument("--render", help="write the video with the face box and a score bar "
                        "chart (a directory for a list input)")
  else:
    parser.add_argument("--out", required=True, help=".npy (+ sidecar .json) or .parquet")
  parser.add_argument("--window", type=int, default=None,
                      help="model frames per window (default and only choice: the model's)")
  parser.add_argument("--stride", type=int, default=8, help="source frames between windows")
  parser.add_argument("--rate", type=int, default=None,
                      help="source frames between a window's frames (default: the checkpoint's "
                      "data.sampling_rate)")
  parser.add_argument("--face-crop", choices=("auto", "on", "off"), default="auto",
                      help="auto: as the checkpoint was trained")
  parser.add_argument("--batch", type=int, default=8, help="windows per model call")
  parser.add_argument("--folder-fps", type=float, default=None,
                      help="frame rate of frame folders (default: the checkpoint's spec, 25)")
  parser.add_argument("--quiet", action="store_true", help="no progress bar")
  return parser


def _show_warnings() -> set[str]:
  """Prints Python warnings as plain `warning: ...` lines; returns the set of those printed."""
  shown: set[str] = set()

  def show(message, *unused_args, **unused_kwargs):
    shown.add(str(message))
    print(f"warning: {message}", file=sys.stderr)

  warnings.showwarning = show
  return shown


def _run_cli(argv: Sequence[str], command: str) -> int:
  parser = _parser(command)
  args = parser.parse_args(argv)
  shown = _show_warnings()
  as_list = is_list_file(args.video)
  try:
    paths = read_video_list(args.video) if as_list else [args.video]
  except video_io.InputError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  source = args.workdir or args.checkpoint
  try:
    predictor = load_predictor(source)
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  common = dict(window=args.window, stride=args.stride, rate=args.rate,
                face_crop=args.face_crop, batch_size=args.batch, folder_fps=args.folder_fps,
                strict=False, progress=as_list and not args.quiet)
  try:
    if command == "predict":
      results = predict(predictor, paths, keep_frames=bool(args.render), **common)
    else:
      results = extract(predictor, paths, **common)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  failed = [r for r in results if "error" in r]
  for r in failed:
    print(f"error: {r['error']}", file=sys.stderr)
  for r in results:
    for note in r.get("warnings", []):
      if note not in shown:
        print(f"warning: {r['video']}: {note}", file=sys.stderr)
  if len(failed) == len(results):
    return 1
  if command == "predict":
    if args.render:
      used: set[str] = set()
      for i, r in enumerate(results):
        if "error" in r:
          continue
        target = args.render
        if as_list:
          stem = os.path.splitext(os.path.basename(os.path.normpath(r["video"])))[0]
          name = f"{stem}.mp4" if f"{stem}.mp4" not in used else f"{i:04d}_{stem}.mp4"
          used.add(name)
          target = os.path.join(args.render, name)
        render(r, r["_prepared"], target)
        print(f"rendered {target}", file=sys.stderr)
    if args.out:
      write_predictions(results, args.out, as_list=as_list)
      print(f"wrote {args.out} ({sum(len(r.get('windows', [])) for r in results)} windows, "
            f"{len(results) - len(failed)} of {len(results)} videos)", file=sys.stderr)
    else:
      payload = [public(r) for r in results] if as_list else public(results[0])
      print(json.dumps(payload, indent=1))
  else:
    written = write_embeddings(results, args.out)
    print(f"wrote {', '.join(written)}", file=sys.stderr)
  return 1 if failed else 0


def predict_main(argv: Sequence[str]) -> int:
  return _run_cli(argv, "predict")


def extract_main(argv: Sequence[str]) -> int:
  return _run_cli(argv, "extract")
