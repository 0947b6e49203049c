"""Fine-tuning model: encoder -> token mean -> fc_norm -> head (-> optional activation)."""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from svfap_jax.models import layers
from svfap_jax.models.registry import ModelSpec
from svfap_jax.models.tpsbt import TPSBTEncoder
from svfap_jax.models.vit import ViTEncoder

# BatchNorm epsilon of the linear-probe standardisation (the MAE linear probe's BatchNorm1d).
LINEAR_PROBE_EPS = 1e-6

HEAD_ACTIVATIONS = {
    None: lambda x: x,
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
}


def encoder_class(spec: ModelSpec):
  return {"tpsbt": TPSBTEncoder, "vit": ViTEncoder}[spec.arch]


def linear_upsample_matrix(in_len: int, out_len: int) -> np.ndarray:
  """(out_len, in_len) weights of 1-D linear interpolation with half-pixel centres.

  Same sampling as PyTorch's `interpolate(mode='linear', align_corners=False)`.
  """
  scale = in_len / out_len
  src = np.maximum((np.arange(out_len) + 0.5) * scale - 0.5, 0.0)
  lo = np.floor(src).astype(np.int64)
  hi = np.minimum(lo + 1, in_len - 1)
  frac = src - lo
  weights = np.zeros((out_len, in_len), np.float32)
  np.add.at(weights, (np.arange(out_len), lo), 1.0 - frac)
  np.add.at(weights, (np.arange(out_len), hi), frac)
  return weights


def _scaled(init, scale: float):
  def scaled_init(key, shape, dtype=jnp.float32):
    return init(key, shape, dtype) * scale
  return scaled_init


class FeatureStandardization(nn.Module):
  """(x - mean) / sqrt(var + eps) per channel, with fixed statistics: BatchNorm without affine
  parameters, in inference form.

  `mean` and `var` (C,) are stored as parameters so that checkpoints, restores and sharding carry
  them like any other weight, but they are statistics, not weights: they are set once from the
  training features (`svfap_jax.probe.init_head_state`) and the optimizer never updates them
  (`optim.trainable_mask` freezes them in every mode). Initialised to 0 and 1 (the identity).
  """
  eps: float = 1e-6

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    partitioned = lambda init: nn.with_logical_partitioning(init, (layers.EMBED,))
    mean = self.param("mean", partitioned(nn.initializers.zeros_init()), (c,), jnp.float32)
    var = self.param("var", partitioned(nn.initializers.ones_init()), (c,), jnp.float32)
    mean, var = jax.lax.stop_gradient(mean), jax.lax.stop_gradient(var)
    return (x - mean) * jax.lax.rsqrt(var + self.eps)


def fold_feature_standardization(params: dict, eps: float = LINEAR_PROBE_EPS) -> dict:
  """A classifier tree with `head_norm` folded into `head`: same logits, the original's layout.

  With s = sqrt(var + eps): head(z) = ((x - mean) / s) W + b = x (W / s) + (b - (mean / s) W),
  so kernel' = W / s (per input channel) and bias' = b - (mean / s) W, computed in float64.
  The PyTorch classifier has no standardisation layer; `export` and `init_from` into a model
  without one use this. A tree without `head_norm` is returned unchanged.

  Args:
    params: classifier parameters (host or device arrays); `head/kernel` (C, K), `head/bias`
      (K,), `head_norm/{mean,var}` (C,).
    eps: the standardisation's epsilon (the module's).

  Returns:
    A new dict without `head_norm` (other entries shared with `params`), float32 head.
  """
  if "head_norm" not in params:
    return params
  mean = np.asarray(params["head_norm"]["mean"], np.float64)
  scale = np.sqrt(np.asarray(params["head_norm"]["var"], np.float64) + eps)
  kernel = np.asarray(params["head"]["kernel"], np.float64) / scale[:, None]
  bias = np.asarray(params["head"]["bias"], np.float64) - mean @ kernel
  out = {k: v for k, v in params.items() if k != "head_norm"}
  out["head"] = {"kernel": kernel.astype(np.float32), "bias": bias.astype(np.float32)}
  return out


class VideoClassifier(nn.Module):
  """Classifier / regressor on a video encoder.

  Returns logits (B, num_classes), or per-frame outputs (B, num_frames, num_classes) with
  `keep_temporal_dim` (the last stage's frames are spatially averaged and linearly upsampled in time
  to the input frame count). With num_classes == 0 (or `return_features`) returns the pooled,
  normalised embedding.

  With `linear_probe` the head reads the embedding standardised per channel by fixed statistics
  (`FeatureStandardization`, parameters `head_norm/{mean,var}`), as the MAE paper's linear probe
  puts a BatchNorm without affine parameters before its head; the embedding itself
  (`return_features`) is unchanged.
  """
  spec: ModelSpec
  num_classes: int
  init_scale: float = 1.0
  head_activation: Optional[str] = None
  keep_temporal_dim: bool = False
  drop_rate: float = 0.0
  attn_drop_rate: float = 0.0
  drop_path_rate: float = 0.0
  dtype: Any = jnp.float32
  remat: str = "none"
  linear_probe: bool = False

  @nn.compact
  def __call__(self, video, *, deterministic: bool = True, return_features: bool = False):
    if self.head_activation not in HEAD_ACTIVATIONS:
      raise ValueError(f"head_activation={self.head_activation!r}; choose one of "
                       f"{[k for k in HEAD_ACTIVATIONS if k]} or None")
    spec = self.spec
    tokens, t = encoder_class(spec)(
        spec, drop_rate=self.drop_rate, attn_drop_rate=self.attn_drop_rate,
        drop_path_rate=self.drop_path_rate, dtype=self.dtype, remat=self.remat,
        name="encoder")(video, deterministic=deterministic)
    tokens = tokens.astype(jnp.float32)
    if self.keep_temporal_dim:
      b, n, c = tokens.shape
      per_frame = tokens.reshape(b, t, n // t, c).mean(axis=2)
      upsample = jnp.asarray(linear_upsample_matrix(t, spec.num_frames))
      pooled = jnp.einsum("ft,btc->bfc", upsample, per_frame)
    else:
      pooled = tokens.mean(axis=1)
    features = layers.layer_norm(spec.layer_norm_eps, name="fc_norm")(pooled)
    if return_features or self.num_classes == 0:
      return features
    if self.linear_probe:
      features = FeatureStandardization(LINEAR_PROBE_EPS, name="head_norm")(features)
    logits = layers.dense(self.num_classes, (layers.EMBED, layers.CLASSES), name="head",
                          kernel_init=_scaled(layers.TRUNC_NORMAL_02, self.init_scale))(features)
    return HEAD_ACTIVATIONS[self.head_activation](logits)
