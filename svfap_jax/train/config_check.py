"""Validation of a run config before anything is built or compiled.

Every problem is collected and reported at once, naming the field and what to do.
"""
from __future__ import annotations

import os

import etils.epath as epath
import jax

from data_pipelines import records
from svfap_jax import optim
from svfap_jax import probe as probe_lib
from svfap_jax.models.layers import remat_policy
from svfap_jax.models.registry import MODELS, get_spec

CLASSIFICATION_METRICS = ("uar", "war", "weighted_f1", "macro_f1")
REGRESSION_METRICS = ("ccc", "pcc", "rmse", "acc_1_minus_mae")


class ConfigError(ValueError):
  pass


def spec_of(config):
  """The run's `ModelSpec`: `model.name` with `model.attention_impl` (auto when absent).

  Raises:
    KeyError: unknown model name; ValueError: an attention_impl the spec does not know.
  """
  return get_spec(config.model.name, attention_impl=config.model.get("attention_impl", "auto"))


def data_dir(config) -> str:
  return config.data.dir.replace("{fold}", str(config.get("fold", 0)))


def read_dataset_info(directory: str) -> dict:
  """`records.load_info` of data.dir, its errors as `ConfigError`s naming the field."""
  try:
    return records.load_info(directory)
  except FileNotFoundError:
    raise ConfigError(f"data.dir={directory!r} has no dataset_info.json; write the dataset with "
                      "`python -m svfap_jax prepare ... --out DIR` first") from None
  except ValueError as e:
    raise ConfigError(f"data.dir={directory!r}: {e}") from None


def validate(config, *, mode: str) -> dict:
  """Checks `config` for a `mode` run; returns the dataset info. Raises ConfigError."""
  errors = []

  def need(cond, msg):
    if not cond:
      errors.append(msg)

  need(config.mode == mode, f"mode={config.mode!r} but this is the {mode} command; use a {mode} "
       "config (e.g. configs/pretrain_voxceleb2.py or configs/finetune_dfew.py)")
  need(config.task in ("classification", "regression"),
       f"task={config.task!r} must be 'classification' or 'regression'")
  spec = None
  if config.model.name not in MODELS:
    errors.append(f"model.name={config.model.name!r} is not registered; known: {sorted(MODELS)}")
  else:
    try:
      spec = spec_of(config)
    except ValueError as e:
      errors.append(str(e))
  need(config.model.dtype in ("float32", "bfloat16"),
       f"model.dtype={config.model.dtype!r} must be float32 or bfloat16")
  try:
    remat_policy(config.model.remat)
  except ValueError as e:
    errors.append(f"model.remat: {e}")
  need(config.model.head_activation in ("", "sigmoid", "tanh", "relu"),
       f"model.head_activation={config.model.head_activation!r}: use '', sigmoid, tanh or relu")
  for field in ("drop_rate", "attn_drop_rate", "drop_path_rate"):
    need(0.0 <= config.model[field] < 1.0, f"model.{field}={config.model[field]} must be in [0, 1)")
  if config.model.original_pretrain_quirks:
    need(spec is None or spec.arch == "tpsbt",
         "model.original_pretrain_quirks applies to TPSBT models only")
  need(0.0 < config.mask.ratio < 1.0, f"mask.ratio={config.mask.ratio} must be in (0, 1)")
  need(config.mask.kind in ("tube", "random"), f"mask.kind={config.mask.kind!r}: tube or random")
  if spec is not None and config.mask.kind == "random":
    need(spec.arch == "vit", "mask.kind='random' needs a ViT; the TPSBT needs tube masks")
  if spec is not None:
    need(config.data.num_frames == spec.num_frames,
         f"data.num_frames={config.data.num_frames} but {spec and config.model.name} takes "
         f"{spec.num_frames} frames")
    need(config.data.img_size == spec.img_size,
         f"data.img_size={config.data.img_size} but {config.model.name} takes "
         f"{spec.img_size} px")
  need(config.data.sampling_rate >= 1, "data.sampling_rate must be >= 1")
  need(config.data.crop in ("fixed", "multiscale"),
       f"data.crop={config.data.crop!r} must be 'fixed' (upper-central) or 'multiscale'")
  need(config.batch_size > 0, f"batch_size={config.batch_size} must be positive")
  need(config.total_steps > 0 or config.num_epochs > 0,
       "set total_steps or num_epochs (both are 0)")
  need(config.optim.lr > 0, f"optim.lr={config.optim.lr} must be positive")
  need(0.0 < config.optim.layer_decay <= 1.0, "optim.layer_decay must be in (0, 1]")
  need(config.optim.accum_steps >= 1, "optim.accum_steps must be >= 1")
  need(0.0 <= config.optim.ema_decay < 1.0, "optim.ema_decay must be in [0, 1)")
  devices = jax.device_count()
  per_step = config.batch_size // max(config.optim.accum_steps, 1)
  need(config.batch_size % config.optim.accum_steps == 0,
       f"batch_size={config.batch_size} is not divisible by optim.accum_steps")
  mesh = {k: config.mesh[k] for k in config.mesh}
  from svfap_jax.sharding import mesh_shape  # pylint: disable=g-import-not-at-top
  try:
    shape = mesh_shape(mesh, devices)
    shards = shape[0] * shape[1]
    need(per_step % shards == 0,
         f"batch_size/accum_steps={per_step} must be divisible by the data*fsdp mesh size "
         f"{shards} (mesh {dict(zip(('data', 'fsdp', 'tensor'), shape))})")
  except ValueError as e:
    errors.append(f"mesh: {e}")
  need(per_step % jax.process_count() == 0,
       f"batch_size/accum_steps={per_step} must be divisible by the {jax.process_count()} processes")
  # Evaluation batches of any size run on any mesh: they are rounded up to the batch shards and
  # a short batch is padded with masked-out rows (train/evaluate.py), so only the sign matters.
  need(config.data.eval_batch_size >= 0,
       f"data.eval_batch_size={config.data.eval_batch_size} must be >= 0 (0 = batch_size)")
  if mode == "finetune":
    allowed = CLASSIFICATION_METRICS if config.task == "classification" else REGRESSION_METRICS
    need(config.best_metric in allowed,
         f"best_metric={config.best_metric!r} is not a {config.task} metric; use one of {allowed}")
  info = {}
  if not config.data.dir:
    errors.append("data.dir is empty: pass --config.data.dir=DIR (a directory written by "
                  "`python -m svfap_jax prepare`)")
  else:
    try:
      info = read_dataset_info(data_dir(config))
    except ConfigError as e:
      errors.append(str(e))
    splits = info.get("splits", {})
    wanted = [config.data.train_split] + (
        [config.data.eval_split, config.data.test_split] if mode == "finetune" else [])
    for split in wanted:
      if info and split not in splits:
        errors.append(f"split {split!r} is not in {data_dir(config)} (has {sorted(splits)})")
    if info and mode == "finetune" and config.task == "classification":
      need(info.get("num_classes", 0) >= 2,
           f"{data_dir(config)} has no class labels (num_classes={info.get('num_classes')}); "
           "fine-tuning for classification needs labelled clips")
  if config.init_from and not config.init_from.endswith((".pth", ".pt", ".safetensors")):
    need(epath.Path(config.init_from).exists(), f"init_from={config.init_from!r} does not exist")
  errors += optim.finetune_config_errors(config)
  errors += probe_lib.config_errors(config)
  errors += probe_lib.head_config_errors(config)
  if errors:
    raise ConfigError("invalid config:\n  - " + "\n  - ".join(errors))
  return info

