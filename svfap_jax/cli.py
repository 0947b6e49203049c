"""Command line: `python -m svfap_jax <command> ...` (also installed as `svfap`).

Each command lives in its own module and is imported only when used, so `describe` does not pay
for TensorFlow and `prepare` does not pay for JAX compilation. Every command parses its options
with argparse (dashed names: `--num-processes`); commands that run a config file build their
parser with `config_parser` and read it with `parse_config_args`, which hands `--config FILE[:ARGS]`
and the `--config.FIELD=VALUE` overrides to ml_collections.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from typing import Optional, Sequence

from svfap_jax import host_allocator

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


_REPO_CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                             "configs")
_OVERRIDE = "--config."


def config_parser(prog: str, description: str) -> argparse.ArgumentParser:
  """An argparse parser with `--config FILE[:ARGS]`; read it with `parse_config_args`."""
  parser = argparse.ArgumentParser(
      prog=prog, description=description, allow_abbrev=False,
      epilog="Any config field can be set on the command line: --config.FIELD=VALUE (e.g. "
      "--config.batch_size=64 --config.data.dir=/data/dfew_fold1).")
  parser.add_argument("--config", metavar="FILE[:ARGS]",
                      help="run config, e.g. configs/finetune_dfew.py:fold=1 (a name under "
                      "configs/ is found from any directory)")
  return parser


def _locate_config(value: str) -> str:
  """Lets `--config configs/x.py[:args]` work from any directory (falls back to our configs/)."""
  path, sep, preset = value.partition(":")
  if not os.path.exists(path):
    candidate = os.path.join(_REPO_CONFIGS, os.path.basename(path))
    if os.path.exists(candidate):
      return candidate + sep + preset
  return value


def _split_overrides(parser: argparse.ArgumentParser, rest: Sequence[str]) -> list[str]:
  """`--config.FIELD=VALUE` / `--config.FIELD VALUE` arguments as `--config.FIELD=VALUE`; any
  other leftover argument is a usage error."""
  overrides, i = [], 0
  while i < len(rest):
    arg = rest[i]
    if not arg.startswith(_OVERRIDE):
      parser.error(f"unrecognized argument: {arg}")
    if "=" not in arg and i + 1 < len(rest) and not rest[i + 1].startswith("--"):
      arg, i = f"{arg}={rest[i + 1]}", i + 1
    overrides.append(arg)
    i += 1
  return overrides


def load_config(value: str, overrides: Sequence[str] = (), *, prog: str = "svfap"):
  """The locked ml_collections config of `--config` VALUE (FILE[:ARGS]) with `--config.*`
  overrides applied (typed and checked by ml_collections).

  Raises:
    ValueError: the file cannot be loaded, a field does not exist or a value does not parse (the
      message names it).
  """
  # pylint: disable=g-import-not-at-top
  from absl import flags
  from ml_collections import config_flags
  # pylint: enable=g-import-not-at-top
  argv = [prog, f"--config={_locate_config(value)}", *overrides]
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "run config", flag_values=fv,
                                  lock_config=True, sys_argv=argv)
  try:
    fv(argv)
    config = fv.config
    config.keys()  # a file that failed to load raises its error on first use
  except (flags.Error, OSError, AttributeError, KeyError, TypeError, ValueError) as e:
    if isinstance(e, KeyError) or isinstance(e.__context__, KeyError):
      # ml_collections names only the missing key; say which override asked for it.
      key_error = e if isinstance(e, KeyError) else e.__context__
      # KeyError's str() is its repr: take the message itself, on one line.
      detail = " ".join(str(key_error.args[0] if key_error.args else key_error).split())
      raise ValueError(f"the config has no field named in {' '.join(overrides)} "
                       f"({detail})") from None
    # A config module's own error arrives with its traceback: keep the last line only.
    lines = [line for line in str(e).splitlines() if line.strip()]
    raise ValueError(f"--config {value}: {lines[-1].strip() if lines else e}") from None
  return config


def parse_config_args(parser: argparse.ArgumentParser, argv: Sequence[str], *,
                      need_config: bool = True) -> argparse.Namespace:
  """Parses `argv`; `args.config` is the loaded config (`load_config`) or None when absent.

  A bad option, a missing `--config` (with `need_config`) or a config that does not load is a
  usage error: argparse's message and exit status 2, no traceback.
  """
  args, rest = parser.parse_known_args(list(argv))
  overrides = _split_overrides(parser, rest)
  if args.config is None:
    if need_config:
      parser.error("--config is required")
    if overrides:
      parser.error(f"{overrides[0]} needs --config")
    return args
  try:
    args.config = load_config(args.config, overrides, prog=parser.prog)
  except ValueError as e:
    parser.error(str(e))
  return args


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


def apply_process_settings() -> dict[str, bool]:
  """Process-wide settings every command runs with; call before any JAX work.

  Benchmarks call this too, so that they time what `python -m svfap_jax` runs. Returns what was
  applied: {"host_allocator_retains_freed_memory": bool} (see svfap_jax/host_allocator.py: XLA:CPU
  frees and reallocates its scratch memory every step).
  """
  return {"host_allocator_retains_freed_memory": host_allocator.retain_freed_memory()}


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
  apply_process_settings()
  result = getattr(importlib.import_module(module_name), function)(rest)
  return int(result or 0)
