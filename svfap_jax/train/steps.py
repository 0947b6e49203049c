"""Pure train / eval step functions. Each `make_*` returns a function (state, batch) -> ...
meant for `jax.jit`; nothing here touches the host or the data pipeline."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from data_pipelines import augment
from svfap_jax import losses, masking, optim
from svfap_jax.models.registry import ModelSpec
from svfap_jax.train.state import TrainState


def apply_gradients(state: TrainState, grads, tx: optax.GradientTransformation,
                    ema_decay: float = 0.0):
  """Optimizer update with a NaN/Inf guard: a step with non-finite gradients changes nothing
  (but advances the step counter, so the data stream and RNG move on) and reports `nonfinite=1`.

  The guard tests the global gradient norm, which the metrics report anyway: a NaN or Inf in any
  gradient makes it non-finite, and so does a finite gradient whose squared norm overflows
  float32 (about 1.8e19), which is skipped as well. It is one `lax.cond`, so a taken step runs
  only the update and a skipped one returns the old parameters and optimizer state untouched;
  a `where` over parameters and AdamW state instead re-reads and re-writes all of them every step
  (about 0.25 s of a svfap_base step on a 2-core CPU, BENCHMARKS.md).
  """
  grad_norm = optax.global_norm(grads)
  finite = jnp.isfinite(grad_norm)

  def update(operands):
    params, opt_state = operands
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  params, opt_state = jax.lax.cond(finite, update, lambda operands: operands,
                                   (state.params, state.opt_state))
  ema = state.ema_params
  if ema is not None and ema_decay > 0:
    # With gradient accumulation the parameters move only every k-th call.
    ema = optim.ema_update(ema, params, ema_decay,
                           enabled=jnp.logical_and(finite, optim.did_update(opt_state)))
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema)
  return new_state, {"grad_norm": grad_norm, "nonfinite": 1 - finite.astype(jnp.int32)}


def make_pretrain_step(module, tx, spec: ModelSpec, *, mask_kind: str, mask_ratio: float,
                       normalize_target: bool = True, ema_decay: float = 0.0) -> Callable:
  """The MAE pretraining step: draws a mask, reconstructs, updates.

  Args:
    module: `MAEPretrainModel` built for `spec`.
    tx: the optax optimizer of `state.opt_state`.
    spec: the model spec (token grid, patch sizes).
    mask_kind: "tube" (the same spatial positions in every temporal slice) or "random".
    mask_ratio: fraction of tokens masked, in (0, 1).
    normalize_target: regress per-patch normalised pixels (the paper) instead of raw ones.
    ema_decay: > 0 keeps `state.ema_params` as an exponential moving average.

  Returns:
    step(state, batch) -> (state, metrics), for `jax.jit`. batch["video"] is uint8
    (B, T, H, W, 3) at spec.num_frames x spec.img_size^2; metrics are float32 scalars "loss"
    (masked-patch MSE) and "grad_norm" and int32 "nonfinite" (1: the update was skipped).

  Raises:
    ValueError: an unknown mask_kind (config_check refuses ratios outside (0, 1) earlier).
  """
  num_visible = masking.num_visible(mask_kind, spec.temporal_tokens, spec.spatial_tokens,
                                    mask_ratio)

  def step(state: TrainState, batch: dict[str, Any]):
    mask_key, dropout_key = jax.random.split(state.step_key())
    video = augment.pretrain_preprocess(batch["video"])
    b = video.shape[0]
    if mask_kind == "tube":
      mask = masking.tube_mask(mask_key, b, spec.temporal_tokens, spec.spatial_tokens, mask_ratio)
    else:
      mask = masking.random_mask(mask_key, b, spec.num_patches, mask_ratio)
    targets = losses.patchify_targets(video, tubelet=spec.tubelet_size, patch=spec.patch_size,
                                      normalize=normalize_target)

    def loss_fn(params):
      pred = module.apply({"params": params}, video, mask, num_visible=num_visible,
                          deterministic=False, rngs={"dropout": dropout_key})
      return losses.pretrain_loss(pred, targets, mask)

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    state, info = apply_gradients(state, grads, tx, ema_decay)
    return state, {"loss": loss, **info}

  return step


def make_finetune_step(module, tx, *, task: str, num_outputs: int, augment_cfg,
                       ema_decay: float = 0.0) -> Callable:
  """The fine-tuning step: device-side augmentation, forward, loss, update.

  Args:
    module: the classifier / regressor (`VideoClassifier`).
    tx: the optax optimizer of `state.opt_state`.
    task: "classification" (soft-target cross entropy after mixup/cutmix; label -1 is left out)
      or "regression" (MSE on batch["values"]; NaN values are left out, no mixing).
    num_outputs: classes or regression dimensions.
    augment_cfg: `augment.AugmentConfig` (static).
    ema_decay: > 0 keeps `state.ema_params` as an exponential moving average.

  Returns:
    step(state, batch) -> (state, metrics), for `jax.jit`. batch: "video" uint8
    (B, T, H, W, 3) host crops (cropped to augment_cfg.img_size on device), "label" int32 (B,),
    "values" float32 (B, K). metrics: float32 "loss", "grad_norm"; int32 "nonfinite" (1: the
    update was skipped) and "missing_targets" (unlabelled clips or NaN values in the batch).
  """
  def step(state: TrainState, batch: dict[str, Any]):
    aug_key, dropout_key = jax.random.split(state.step_key())
    if task == "classification":
      video, targets = augment.finetune_train_augment(aug_key, batch["video"], batch["label"],
                                                      num_outputs, augment_cfg)
    else:
      # Mixing videos would need mixed targets too; regression runs the per-clip pixel
      # augmentations only.
      video, _ = augment.finetune_train_augment(
          aug_key, batch["video"], jnp.zeros_like(batch["label"]), 1,
          dataclasses.replace(augment_cfg, mixup_alpha=0.0, cutmix_alpha=0.0))
      targets = batch["values"]

    if task == "classification":
      # Unlabelled clips (label -1) have nothing to learn from; they are left out of the loss.
      labelled = batch["label"] >= 0
      missing = jnp.sum(~labelled)
    else:
      # NaN values are missing annotations; the loss leaves them out (losses.mse).
      labelled = None
      missing = jnp.sum(jnp.isnan(targets))

    def loss_fn(params):
      out = module.apply({"params": params}, video, deterministic=False,
                         rngs={"dropout": dropout_key})
      if task == "classification":
        return losses.soft_target_cross_entropy(out, targets, weights=labelled)
      return losses.mse(out, targets)

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    state, info = apply_gradients(state, grads, tx, ema_decay)
    return state, {"loss": loss, "missing_targets": missing.astype(jnp.int32), **info}

  return step


def make_eval_step(module, *, task: str) -> Callable:
  """(params, batch) -> per-example float32 scores, (B, K): softmax probabilities
  (classification) or regression outputs. batch["video"]: uint8 (B, T, H, W, 3) at img_size."""
  def step(params, batch):
    video = augment.eval_preprocess(batch["video"])
    out = module.apply({"params": params}, video, deterministic=True)
    return jax.nn.softmax(out, axis=-1) if task == "classification" else out
  return step


def make_features_step(module) -> Callable:
  """(params, batch) -> pooled, normalised encoder embeddings (B, embed_dim) (the input of the
  head; `probe` uses them). batch["video"]: uint8 (B, T, H, W, 3) at img_size."""
  def step(params, batch):
    video = augment.eval_preprocess(batch["video"])
    return module.apply({"params": params}, video, deterministic=True, return_features=True)
  return step
