"""TPSBT: the Temporal Pyramid and Spatial Bottleneck Transformer encoder of SVFAP.

Stage 1 is a stack of plain pre-norm blocks over all T*S tokens. Each later stage halves the
temporal length with a strided Conv1d (temporal pyramid), pools every frame's S spatial tokens into
G bottleneck tokens (spatial attention), refines the bottleneck tokens with CSBlocks that
cross-attend to the stage's full-resolution tokens, and ends with a reverse CSBlock whose queries are
the full-resolution tokens and whose context is the bottleneck: that block restores S tokens per frame.

Two modes:
- full-token (fine-tuning): returns the last stage's tokens (B, T_last*S, C).
- visible-token (pre-training): runs on the visible tokens of a tube mask (same S_vis spatial
  positions in every frame), fuses the stages by nearest temporal upsampling to T and sums them, and
  applies the final LayerNorm `norm`.
"""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from svfap_jax.models import layers
from svfap_jax.models.registry import ModelSpec


class TPSBTEncoder(nn.Module):
  spec: ModelSpec
  drop_rate: float = 0.0
  attn_drop_rate: float = 0.0
  drop_path_rate: float = 0.0
  kernel_init: Any = layers.TRUNC_NORMAL_02
  dtype: Any = jnp.float32
  remat: str = "none"
  pretraining: bool = False
  # Reproduces the original pretraining encoder's two defects (see DESIGN §3): the reverse block
  # attends to the embeddings of ALL tokens, and fusion reshapes with the pre-downsampling length.
  original_pretrain_quirks: bool = False

  @nn.compact
  def __call__(self, video, visible_idx: Optional[jnp.ndarray] = None, *,
               deterministic: bool = True):
    """Encodes a clip.

    Args:
      video: float (B, T, H, W, 3) normalised frames, T = spec.num_frames, H = W = spec.img_size.
      visible_idx: int (B, n) ascending indices of the tokens to encode (pretraining: the
        visible tokens of a tube mask, the same spatial positions in every temporal slice);
        None encodes all spec.num_patches tokens.
      deterministic: False turns on dropout and drop path (needs a "dropout" rng).

    Returns:
      Without `pretraining`: (tokens, t), tokens in the compute dtype (B, t * s, spec.embed_dim)
      of the last stage, t temporal slices after the temporal downsamplings, s spatial positions
      each. With `pretraining`: the layer-normed sum of every stage's output upsampled back to
      the input's temporal resolution, (B, n, spec.embed_dim).
    """
    spec = self.spec
    all_tokens = layers.embed_video(video, embed_dim=spec.embed_dim, tubelet_size=spec.tubelet_size,
                                    patch_size=spec.patch_size, dtype=self.dtype,
                                    pos_embed=spec.pos_embed)
    x = all_tokens if visible_idx is None else layers.gather_tokens(all_tokens, visible_idx)
    t = spec.temporal_tokens
    block_rates = np.linspace(0.0, self.drop_path_rate, spec.depth)
    common = dict(num_heads=spec.num_heads, mlp_ratio=spec.mlp_ratio, qkv_bias=spec.qkv_bias,
                  drop_rate=self.drop_rate, attn_drop_rate=self.attn_drop_rate,
                  init_values=spec.init_values, eps=spec.layer_norm_eps,
                  deterministic=deterministic, kernel_init=self.kernel_init, dtype=self.dtype,
                  attention_impl=spec.attention_impl)
    block_cls = layers.maybe_remat(layers.Block, self.remat)
    cs_block_cls = layers.maybe_remat(layers.CSBlock, self.remat)

    index = 0
    for _ in range(spec.stage_depths[0]):
      x = block_cls(drop_path_rate=float(block_rates[index]), name=f"blocks_{index}", **common)(x)
      index += 1
    fused = x

    for stage, depth in enumerate(spec.stage_depths[1:], start=1):
      t_before = t
      t //= spec.temporal_kernel_size
      x = layers.TemporalDownsample(t_before, spec.temporal_kernel_size, self.dtype,
                                    name=f"temporal_downsamples_{stage - 1}")(x)
      full_res = x
      bottleneck = layers.SpatialAttention(
          t, spec.num_bottleneck_tokens, spec.spatial_hidden_dim, self.drop_rate,
          spec.layer_norm_eps, deterministic, self.kernel_init, self.dtype,
          name=f"spatial_downsamples_{stage - 1}")(full_res)
      for _ in range(depth - 1):
        bottleneck = cs_block_cls(drop_path_rate=float(block_rates[index]),
                                  name=f"blocks_{index}", **common)(bottleneck, full_res)
        index += 1
      quirky = self.pretraining and self.original_pretrain_quirks
      context = all_tokens if quirky else bottleneck
      x = cs_block_cls(drop_path_rate=float(block_rates[index]), name=f"blocks_{index}",
                       **common)(full_res, context)
      index += 1
      if self.pretraining:
        fused = fused + (self._quirky_upsample(x, t_before, stage) if quirky
                         else self._upsample(x, t))

    if not self.pretraining:
      return x, t
    return layers.layer_norm(spec.layer_norm_eps, name="norm", dtype=self.dtype)(fused)

  def _upsample(self, x, t):
    """Nearest temporal upsampling of (B, t*S, C) to (B, T*S, C) in (t, s) order."""
    b, n, c = x.shape
    factor = self.spec.temporal_tokens // t
    x = jnp.repeat(x.reshape(b, t, n // t, c), factor, axis=1)
    return x.reshape(b, -1, c)

  def _quirky_upsample(self, x, t_before, stage):
    b, n, c = x.shape
    if n % t_before:
      raise ValueError(
          f"original_pretrain_quirks fusion needs the stage-{stage + 1} token count ({n}) to be "
          f"divisible by the pre-downsampling temporal length {t_before}; choose a mask ratio "
          "leaving an even number of visible tokens per frame, or turn the quirks off")
    x = jnp.repeat(x.reshape(b, t_before, n // t_before, c),
                   self.spec.temporal_kernel_size ** stage, axis=1)
    return x.reshape(b, -1, c)
