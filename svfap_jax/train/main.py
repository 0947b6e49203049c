"""`pretrain`, `finetune`, `evaluate` and `kfold` commands (absl flags + ml_collections configs).

  python -m svfap_jax finetune --config configs/finetune_dfew.py:fold=1 --workdir W \
      --config.data.dir=D --config.init_from=P --config.batch_size=64
"""
from __future__ import annotations

import io
import json
import logging
import os
from typing import Sequence

from absl import flags
import etils.epath as epath
from ml_collections import config_flags

_REPO_CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "configs")


def _locate_config(argv: Sequence[str]) -> list[str]:
  """Lets `--config configs/x.py` work from any directory by falling back to our configs/."""
  argv = list(argv)
  for i, arg in enumerate(argv):
    value_index = None
    if arg == "--config" and i + 1 < len(argv):
      value_index, value = i + 1, argv[i + 1]
    elif arg.startswith("--config="):
      value = arg[len("--config="):]
    else:
      continue
    path, _, preset = value.partition(":")
    if not os.path.exists(path):
      candidate = os.path.join(_REPO_CONFIGS, os.path.basename(path))
      if os.path.exists(candidate):
        value = candidate + (":" + preset if preset else "")
        if value_index is None:
          argv[i] = "--config=" + value
        else:
          argv[value_index] = value
  return argv


def parse_flags(argv: Sequence[str], prog: str, *, need_config: bool = True):
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "config file (configs/*.py[:args])",
                                  flag_values=fv, lock_config=True)
  flags.DEFINE_string("workdir", None, "run directory (local path or gs://)", flag_values=fv)
  flags.DEFINE_string("coordinator", None, "jax.distributed coordinator HOST:PORT",
                      flag_values=fv)
  flags.DEFINE_integer("num_processes", None, "number of processes (jax.distributed)",
                       flag_values=fv)
  flags.DEFINE_integer("process_id", None, "this process's index (jax.distributed)",
                       flag_values=fv)
  flags.DEFINE_enum("checkpoint", "best", ["best", "last"], "evaluate: which checkpoint",
                    flag_values=fv)
  argv = [a.replace("--num-processes", "--num_processes").replace("--process-id", "--process_id")
          for a in _locate_config(argv)]
  fv([prog] + argv)
  if need_config and fv.config is None:
    raise SystemExit(f"{prog}: --config is required")
  if not fv.workdir:
    raise SystemExit(f"{prog}: --workdir is required")
  from svfap_jax import sharding  # pylint: disable=g-import-not-at-top
  sharding.initialize_distributed(fv.coordinator, fv.num_processes, fv.process_id)
  # Progress lines are printed; library INFO chatter (Orbax, absl) stays out of the console.
  logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  absl_logging.set_verbosity(absl_logging.WARNING)
  return fv


def _train(argv, prog, mode):
  fv = parse_flags(argv, prog)
  from svfap_jax.train import config_check, loop  # pylint: disable=g-import-not-at-top
  if fv.config.mode != mode:
    raise SystemExit(f"{prog}: config mode is {fv.config.mode!r}; use a {mode} config")
  try:
    summary = loop.train(fv.config, fv.workdir)
  except (config_check.ConfigError, loop.TrainingDiverged) as e:
    raise SystemExit(f"{prog}: {e}") from None
  print(json.dumps({k: v for k, v in summary.items() if not isinstance(v, dict)}))
  return 0


def pretrain_main(argv):
  return _train(argv, "svfap pretrain", "pretrain")


def finetune_main(argv):
  return _train(argv, "svfap finetune", "finetune")


def evaluate_main(argv):
  """Multi-view test of a fine-tuning workdir's best (default) or last checkpoint."""
  fv = parse_flags(argv, "svfap evaluate")
  import jax  # pylint: disable=g-import-not-at-top
  from svfap_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from svfap_jax.train import evaluate, loop  # pylint: disable=g-import-not-at-top
  config = fv.config
  trainer = loop.Trainer(config, fv.workdir)
  # The best checkpoint (kept alone in best/) unless --checkpoint last or there is none.
  for sub in ("best", "checkpoints") if fv.checkpoint == "best" else ("checkpoints",):
    try:
      params, meta = checkpoint.restore_params(os.path.join(fv.workdir, sub), prefer_ema=True)
      break
    except FileNotFoundError:
      continue
  else:
    raise SystemExit(f"svfap evaluate: no checkpoint in {fv.workdir}")
  step = meta["step"]
  params = jax.device_put(params, trainer.param_shardings)
  result = evaluate.evaluate(trainer.module, params, config, trainer.dataset_dir,
                             config.data.test_split, kind="test", mesh=trainer.mesh,
                             task=config.task, label_names=trainer.info.get("label_names"),
                             value_names=trainer.info.get("value_names"))
  name = f"evaluate_{fv.checkpoint}"
  evaluate.write_outputs(result, fv.workdir, prefix=name,
                         label_names=trainer.info.get("label_names"))
  trainer.writer.write_eval({"step": int(step), "split": f"{config.data.test_split}/{name}",
                             **result["metrics"]})
  trainer.writer.write_report({name: result["metrics"], f"{name}_step": int(step)})
  print(json.dumps({k: v for k, v in result["metrics"].items()
                    if isinstance(v, (int, float))}))
  return 0


def kfold_main(argv):
  """Fine-tunes and tests every fold (`{fold}` in data.dir), then pools the predictions."""
  fv = parse_flags(argv, "svfap kfold")
  from configs import common  # pylint: disable=g-import-not-at-top
  from svfap_jax import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  from svfap_jax.train import config_check, loop  # pylint: disable=g-import-not-at-top
  config = fv.config
  folds = common.DATASETS.get(config.dataset, {}).get("folds", 0)
  if not folds:
    raise SystemExit(f"svfap kfold: dataset {config.dataset!r} has no folds")
  if "{fold}" not in config.data.dir:
    raise SystemExit("svfap kfold: data.dir must contain '{fold}' (one prepared dir per fold)")
  per_fold = []
  for fold in range(1, folds + 1):
    fold_config = config.copy_and_resolve_references()
    fold_config.fold = fold
    workdir = epath.Path(fv.workdir) / f"fold{fold}"
    try:
      summary = loop.train(fold_config, os.fspath(workdir))
    except (config_check.ConfigError, loop.TrainingDiverged) as e:
      raise SystemExit(f"svfap kfold: fold {fold}: {e}") from None
    preds = _read_predictions(workdir / "test_last_predictions.csv")
    per_fold.append(preds)
    print(f"fold {fold}: {summary.get('test_last')}")
  pooled = metrics_lib.pool_folds(per_fold)
  (epath.Path(fv.workdir) / "kfold_report.json").write_text(
      json.dumps(pooled, indent=2, default=float))
  print(json.dumps(pooled, default=float))
  return 0


def _read_predictions(path):
  """(labels, predicted classes) of a predictions CSV's labelled clips (label -1 rows left out,
  as the fold's own metrics leave them out)."""
  import csv  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  text = epath.Path(path).read_bytes().decode("utf-8")
  rows = [r for r in csv.DictReader(io.StringIO(text, newline="")) if int(r["label"]) >= 0]
  y_true = np.array([int(r["label"]) for r in rows], np.int64)
  y_pred = np.array([int(r["predicted"]) for r in rows], np.int64)
  return y_true, y_pred
