"""MAE pretraining model: visible-token encoder + light transformer decoder over all tokens.

The decoder receives the encoder output projected to its width plus fixed positions at the visible
positions, and a shared learned mask token plus positions at the masked positions; it predicts the
pixels (tubelet x patch x patch x channels) of every masked token.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from svfap_jax.models import layers
from svfap_jax.models.classifier import encoder_class
from svfap_jax.models.registry import ModelSpec


class MAEDecoder(nn.Module):
  spec: ModelSpec
  dtype: Any = jnp.float32
  remat: str = "none"

  @nn.compact
  def __call__(self, x, num_masked: int):
    spec = self.spec
    block_cls = layers.maybe_remat(layers.Block, self.remat)
    for i in range(spec.decoder_depth):
      x = block_cls(num_heads=spec.decoder_num_heads, mlp_ratio=spec.mlp_ratio,
                    qkv_bias=spec.qkv_bias, init_values=spec.init_values,
                    eps=spec.layer_norm_eps, kernel_init=layers.XAVIER_UNIFORM, dtype=self.dtype,
                    attention_impl=spec.attention_impl, name=f"blocks_{i}")(x)
    x = layers.layer_norm(spec.layer_norm_eps, name="norm", dtype=self.dtype)(x[:, -num_masked:])
    return layers.dense(spec.patch_pixels, (layers.EMBED, None), name="head",
                        kernel_init=layers.XAVIER_UNIFORM, dtype=self.dtype)(x)


def split_mask(mask, num_visible: int):
  """Bool mask (B, N), True = masked -> (visible_idx, masked_idx), each ascending.

  A stable sort puts the visible (False) positions first in index order, so the count is static
  and a new mask never changes shapes.
  """
  order = jnp.argsort(mask, axis=1, stable=True)
  return order[:, :num_visible], order[:, num_visible:]


class MAEPretrainModel(nn.Module):
  spec: ModelSpec
  original_pretrain_quirks: bool = False
  drop_path_rate: float = 0.0
  dtype: Any = jnp.float32
  remat: str = "none"

  @nn.compact
  def __call__(self, video, mask, *, num_visible: int, deterministic: bool = True):
    spec = self.spec
    visible_idx, masked_idx = split_mask(mask, num_visible)
    encoded = encoder_class(spec)(
        spec, drop_path_rate=self.drop_path_rate, kernel_init=layers.XAVIER_UNIFORM,
        dtype=self.dtype, remat=self.remat, pretraining=True,
        original_pretrain_quirks=self.original_pretrain_quirks, name="encoder")(
            video, visible_idx, deterministic=deterministic)
    x = layers.dense(spec.decoder_embed_dim, (layers.EMBED, None), name="encoder_to_decoder",
                     use_bias=False, kernel_init=layers.XAVIER_UNIFORM, dtype=self.dtype)(encoded)
    mask_token = self.param(
        "mask_token",
        nn.with_logical_partitioning(
            nn.initializers.truncated_normal(0.02, lower=-1.0, upper=1.0), (None, None, None)),
        (1, 1, spec.decoder_embed_dim))
    table = jnp.asarray(layers.position_table(spec.pos_embed, spec.token_grid,
                                              spec.decoder_embed_dim), x.dtype)
    positions = jnp.broadcast_to(table[None], (x.shape[0],) + table.shape)
    num_masked = spec.num_patches - num_visible
    x = jnp.concatenate([
        x + layers.gather_tokens(positions, visible_idx),
        mask_token.astype(x.dtype) + layers.gather_tokens(positions, masked_idx),
    ], axis=1)
    pred = MAEDecoder(spec, self.dtype, self.remat, name="decoder")(x, num_masked)
    return pred.astype(jnp.float32)
