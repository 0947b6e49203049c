"""Training losses: MAE reconstruction targets and loss, classification and regression losses.

Every loss returns a float32 scalar averaged over the batch, whatever the compute dtype of its
inputs, so bf16 model outputs are reduced in f32.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

# The normalisation of the model input, defined where the input is normalised.
from data_pipelines.augment import IMAGENET_MEAN, IMAGENET_STD
from svfap_jax.models.mae import split_mask

# Added to the per-patch standard deviation before dividing (the original's constant).
_TARGET_STD_EPS = 1e-6


def _patches(video: jax.Array, tubelet: int, patch: int) -> jax.Array:
  """(B, T, H, W, C) -> (B, N, tubelet * patch * patch, C), tokens in (t, h, w) order.

  Within a token the pixels run over (tubelet, patch_row, patch_col), matching the original's
  `b c (t p0) (h p1) (w p2) -> b (t h w) (p0 p1 p2) c`.
  """
  b, t, h, w, c = video.shape
  if t % tubelet or h % patch or w % patch:
    raise ValueError(f"video {video.shape} does not split into {tubelet}x{patch}x{patch} patches")
  x = video.reshape(b, t // tubelet, tubelet, h // patch, patch, w // patch, patch, c)
  x = x.transpose(0, 1, 3, 5, 2, 4, 6, 7)  # b, t, h, w, p0, p1, p2, c
  return x.reshape(b, -1, tubelet * patch * patch, c)


def patchify_targets(video: jax.Array, *, tubelet: int = 2, patch: int = 16,
                     normalize: bool = True, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> jax.Array:
  """MAE reconstruction targets for every token of a normalised video.

  Args:
    video: the model input (B, T, H, W, C), channels-last, normalised with `mean` / `std`.
    tubelet: frames per token.
    patch: pixels per token side.
    normalize: normalise each token's pixels per channel by their mean and unbiased std
      (+1e-6 on the std), the original's default target; False gives raw [0, 1] pixels.
    mean: per-channel mean used to normalise `video`.
    std: per-channel std used to normalise `video`.

  Returns:
    float32 (B, N, tubelet * patch * patch * C), N in (t, h, w) token order and each token
    flattened in (tubelet, patch_row, patch_col, channel) order.
  """
  video = video.astype(jnp.float32)
  pixels = video * jnp.asarray(std, jnp.float32) + jnp.asarray(mean, jnp.float32)
  x = _patches(pixels, tubelet, patch)
  if normalize:
    mu = x.mean(axis=-2, keepdims=True)
    sigma = jnp.sqrt(x.var(axis=-2, ddof=1, keepdims=True))
    x = (x - mu) / (sigma + _TARGET_STD_EPS)
  return x.reshape(x.shape[0], x.shape[1], -1)


def masked_targets(targets: jax.Array, mask: jax.Array, num_masked: int) -> jax.Array:
  """The targets of the masked tokens (B, num_masked, P), in ascending token order.

  That is the order in which the MAE decoder predicts them (`split_mask`), and the order of the
  original's boolean indexing `targets[mask]`.
  """
  _, masked_idx = split_mask(mask, mask.shape[1] - num_masked)
  return jnp.take_along_axis(targets, masked_idx[..., None], axis=1)


def pretrain_loss(pred: jax.Array, targets: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean squared error over the masked tokens only.

  Args:
    pred: decoder output (B, n_masked, P) for the masked tokens in ascending index order.
    targets: `patchify_targets` output for all tokens (B, N, P).
    mask: bool (B, N), True = masked; every row masks n_masked tokens.
  """
  labels = masked_targets(targets.astype(jnp.float32), mask, pred.shape[1])
  return jnp.mean(jnp.square(pred.astype(jnp.float32) - labels))


def _weighted_mean(x: jax.Array, weights) -> jax.Array:
  """Mean of `x` (B,) over the examples with weight > 0, weighted; 0.0 when none has weight."""
  if weights is None:
    return jnp.mean(x)
  w = jnp.asarray(weights, jnp.float32)
  return jnp.sum(jnp.where(w > 0, x * w, 0.0)) / jnp.maximum(jnp.sum(w), 1e-12)


def soft_target_cross_entropy(logits: jax.Array, soft_targets: jax.Array,
                              weights=None) -> jax.Array:
  """Cross-entropy against per-example class distributions (mixup/cutmix, label smoothing).

  Args:
    logits: (B, K) scores.
    soft_targets: (B, K) target distributions.
    weights: optional (B,) example weights; examples with weight 0 (e.g. unlabelled clips) are
      left out, and a batch without any weighted example gives 0.0 (and zero gradients).
  """
  ce = optax.softmax_cross_entropy(logits.astype(jnp.float32), soft_targets.astype(jnp.float32))
  return _weighted_mean(ce, weights)


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
  """Cross-entropy with integer labels; smoothing spreads `label_smoothing` uniformly over all
  classes (torch's `CrossEntropyLoss(label_smoothing=...)` and timm's definition). Labels < 0
  (unlabelled clips) are left out, like torch's `ignore_index`."""
  onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
  if label_smoothing:
    onehot = optax.smooth_labels(onehot, label_smoothing)
  return soft_target_cross_entropy(logits, onehot, weights=(labels >= 0).astype(jnp.float32))


def mse(pred: jax.Array, target: jax.Array) -> jax.Array:
  """Mean squared error over the target values that are present.

  A NaN target value marks a missing annotation (a clip without, say, its arousal rating): it is
  left out of the sum and of the count, so every other value still trains and the loss and its
  gradients stay finite. With no value present at all the loss is 0.0 with zero gradients.

  Args:
    pred: (B, K) or any shape; cast to float32.
    target: the same shape as `pred`; NaN = missing.

  Returns:
    float32 scalar: sum of squared errors over present values / number of present values.
  """
  target = target.astype(jnp.float32)
  present = ~jnp.isnan(target)
  # NaN never enters the graph: a NaN target times a zero mask would still give NaN gradients.
  diff = jnp.where(present, pred.astype(jnp.float32) - jnp.where(present, target, 0.0), 0.0)
  return jnp.sum(jnp.square(diff)) / jnp.maximum(jnp.sum(present), 1).astype(jnp.float32)
