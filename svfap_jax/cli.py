"""Command line: `python -m svfap_jax <command> ...` (also installed as `svfap`).

Each command lives in its own module and is imported only when used, so `describe` does not pay
for TensorFlow and `prepare` does not pay for JAX compilation.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys

# command -> (module, function taking argv, one-line help)
COMMANDS = {
    "prepare": ("data_pipelines.build", "main", "videos / frame folders / CSV lists -> TFRecords"),
    "pretrain": ("svfap_jax.train.main", "pretrain_main", "MAE pretraining"),
    "finetune": ("svfap_jax.train.main", "finetune_main", "fine-tuning (classification/regression)"),
    "evaluate": ("svfap_jax.train.main", "evaluate_main", "multi-view test of a workdir"),
    "kfold": ("svfap_jax.train.main", "kfold_main", "fine-tune and test every fold"),
    "export": ("svfap_jax.cli", "export_main", "checkpoint -> PyTorch .pth/.safetensors"),
    "import": ("svfap_jax.cli", "import_main", "PyTorch checkpoint -> Orbax workdir"),
    "describe": ("svfap_jax.cli", "describe_main", "params and GMACs of a registered model"),
    "demo": ("svfap_jax.demo", "main", "synthetic data -> pretrain -> finetune -> report"),
    "predict": ("svfap_jax.predict", "predict_main", "face crop + per-window emotion scores"),
    "extract": ("svfap_jax.predict", "extract_main", "face crop + per-window/per-video embeddings"),
    "compile": ("svfap_jax.aot", "main", "ahead-of-time compile + memory check for a mesh"),
    "probe": ("svfap_jax.cli", "probe_main", "k-NN / linear probe of frozen encoder embeddings"),
}


def describe_main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(prog="svfap describe",
                                   description="Params and GMACs per 16-frame view (XLA cost "
                                   "analysis) of a registered model.")
  parser.add_argument("model", nargs="+", help="registered model name(s), e.g. svfap_base")
  parser.add_argument("--num-classes", type=int, default=7)
  parser.add_argument("--mask-ratio", type=float, default=0.9)
  parser.add_argument("--no-pretrain", action="store_true", help="skip the pretraining model")
  parser.add_argument("--json", action="store_true", help="print JSON lines")
  args = parser.parse_args(argv)
  from svfap_jax.describe import describe, format_report  # pylint: disable=g-import-not-at-top
  for name in args.model:
    result = describe(name, num_classes=args.num_classes, mask_ratio=args.mask_ratio,
                      pretrain=not args.no_pretrain)
    print(json.dumps(result) if args.json else format_report(result))
  return 0


def export_main(argv: list[str]) -> int:
  from svfap_jax.train import export as export_lib  # pylint: disable=g-import-not-at-top
  return export_lib.export_main(argv)


def import_main(argv: list[str]) -> int:
  """`svfap import`; a file that cannot be read or does not fit the model is a short error."""
  # pylint: disable=g-import-not-at-top
  from svfap_jax.interop import files, load
  from svfap_jax.train import export as export_lib
  # pylint: enable=g-import-not-at-top
  try:
    return export_lib.import_main(argv)
  except (load.CheckpointMismatchError, files.CheckpointFormatError, FileNotFoundError) as e:
    print(f"svfap import: error: {e}", file=sys.stderr)
  except KeyError as e:  # an unregistered --model name
    if not str(e.args[0] if e.args else "").startswith("unknown model"):
      raise
    print(f"svfap import: error: {e.args[0]}", file=sys.stderr)
  return 1


def probe_main(argv: list[str]) -> int:
  from svfap_jax import probe  # pylint: disable=g-import-not-at-top
  return probe.main(argv)


def _usage() -> str:
  width = max(map(len, COMMANDS))
  rows = "\n".join(f"  {name:<{width}}  {help_}" for name, (_, _, help_) in COMMANDS.items())
  return f"usage: python -m svfap_jax <command> [options]\n\ncommands:\n{rows}\n"


def main(argv: list[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if not argv or argv[0] in ("-h", "--help"):
    print(_usage())
    return 0
  command, rest = argv[0], argv[1:]
  if command not in COMMANDS:
    print(f"unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
    return 2
  module_name, function, _ = COMMANDS[command]
  result = getattr(importlib.import_module(module_name), function)(rest)
  return int(result or 0)
