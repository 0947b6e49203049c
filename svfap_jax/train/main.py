"""`pretrain`, `finetune`, `evaluate` and `kfold` commands (argparse + ml_collections configs).

  python -m svfap_jax finetune --config configs/finetune_dfew.py:fold=1 --workdir W \
      --config.data.dir=D --config.init_from=P --config.batch_size=64
"""
from __future__ import annotations

import io
import json
import logging
import os
from typing import Sequence

import etils.epath as epath


def parse_flags(argv: Sequence[str], prog: str, *, need_config: bool = True,
                choose_checkpoint: bool = False):
  """Options of the run commands (argparse; see `svfap_jax.cli.parse_config_args`).

  Joins jax.distributed when --coordinator/--num-processes/--process-id (or their environment
  variables) say so and sets the console's log levels.

  Returns:
    argparse.Namespace: config (locked ml_collections ConfigDict, or None), workdir,
    coordinator, num_processes, process_id, and with choose_checkpoint (evaluate) checkpoint
    ('best' | 'last').
  """
  from svfap_jax import cli  # pylint: disable=g-import-not-at-top
  parser = cli.config_parser(prog, f"{prog}: run a config in a work directory.")
  parser.add_argument("--workdir", required=True, help="run directory (local path or gs://)")
  parser.add_argument("--coordinator", metavar="HOST:PORT",
                      help="jax.distributed coordinator (several processes)")
  parser.add_argument("--num-processes", "--num_processes", dest="num_processes", type=int,
                      help="number of processes (jax.distributed)")
  parser.add_argument("--process-id", "--process_id", dest="process_id", type=int,
                      help="this process's index (jax.distributed)")
  if choose_checkpoint:
    parser.add_argument("--checkpoint", choices=("best", "last"), default="best",
                        help="which checkpoint (default best)")
  args = cli.parse_config_args(parser, argv, need_config=need_config)
  from svfap_jax import sharding  # pylint: disable=g-import-not-at-top
  sharding.initialize_distributed(args.coordinator, args.num_processes, args.process_id)
  # Progress lines are printed; library INFO chatter (Orbax, absl) stays out of the console,
  # except clu's progress notes.
  logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
  # pylint: disable=g-import-not-at-top
  from absl import logging as absl_logging
  from svfap_jax.train import writer
  # pylint: enable=g-import-not-at-top
  absl_logging.set_verbosity(absl_logging.INFO)
  if writer.PROGRESS_NOTES not in absl_logging.get_absl_logger().filters:
    absl_logging.get_absl_logger().addFilter(writer.PROGRESS_NOTES)
  return args


def _train(argv, prog, mode, callbacks=()):
  fv = parse_flags(argv, prog)
  from svfap_jax.train import config_check, loop  # pylint: disable=g-import-not-at-top
  if fv.config.mode != mode:
    raise SystemExit(f"{prog}: config mode is {fv.config.mode!r}; use a {mode} config")
  try:
    summary = loop.train(fv.config, fv.workdir, callbacks)
  except (config_check.ConfigError, loop.TrainingDiverged) as e:
    raise SystemExit(f"{prog}: {e}") from None
  print(json.dumps({k: v for k, v in summary.items() if not isinstance(v, dict)}))
  return 0


def pretrain_main(argv, callbacks=()):
  """`svfap pretrain`; `callbacks` (`loop.Callback`) are handed to the trainer."""
  return _train(argv, "svfap pretrain", "pretrain", callbacks)


def finetune_main(argv, callbacks=()):
  """`svfap finetune`; `callbacks` (`loop.Callback`) are handed to the trainer."""
  return _train(argv, "svfap finetune", "finetune", callbacks)


def evaluate_main(argv):
  """Multi-view test of a fine-tuning workdir's best (default) or last checkpoint."""
  fv = parse_flags(argv, "svfap evaluate", choose_checkpoint=True)
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
