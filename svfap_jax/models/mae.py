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
    """Reconstructs the masked patches of a clip.

    Args:
      video: float (B, T, H, W, 3) normalised frames (spec.num_frames x spec.img_size^2).
      mask: bool (B, spec.num_patches), True = masked, with `num_visible` False entries in every
        row; the TPSBT needs a tube mask (`masking.tube_mask`). `api.check_mask` validates one:
        a row with another count is not detected here.
      num_visible: visible tokens per row (static: one compiled program per value).
      deterministic: False turns on drop path (needs a "dropout" rng).

    Returns:
      float32 (B, spec.num_patches - num_visible, tubelet_size * patch_size^2 * 3): the pixels
      predicted for the masked patches, in ascending token order (the rows of
      `losses.patchify_targets` at the masked positions).
    """
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
    table = jnp.asarray(layers.position_table(spec.decoder_table, spec.token_grid,
                                              spec.decoder_embed_dim), x.dtype)
    positions = jnp.broadcast_to(table[None], (x.shape[0],) + table.shape)
    num_masked = spec.num_patches - num_visible
    x = jnp.concatenate([
        x + layers.gather_tokens(positions, visible_idx),
        mask_token.astype(x.dtype) + layers.gather_tokens(positions, masked_idx),
    ], axis=1)
    pred = MAEDecoder(spec, self.dtype, self.remat, name="decoder")(x, num_masked)
    return pred.astype(jnp.float32)
