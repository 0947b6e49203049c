"""Plain video ViT (VideoMAE): patch embedding, sin-cos positions, a stack of pre-norm blocks."""
from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from svfap_jax.models import layers
from svfap_jax.models.tpsbt import TPSBTEncoder


class ViTEncoder(TPSBTEncoder):
  """Same fields and interface as `TPSBTEncoder`: full-token mode returns (tokens, T); pretraining
  mode runs any visible subset (random or tube masks) and applies the final `norm`."""

  @nn.compact
  def __call__(self, video, visible_idx: Optional[jnp.ndarray] = None, *,
               deterministic: bool = True):
    if self.original_pretrain_quirks:
      raise ValueError("original_pretrain_quirks applies to the TPSBT encoder only")
    spec = self.spec
    x = layers.embed_video(video, embed_dim=spec.embed_dim, tubelet_size=spec.tubelet_size,
                           patch_size=spec.patch_size, dtype=self.dtype,
                           pos_embed=spec.pos_embed)
    if visible_idx is not None:
      x = layers.gather_tokens(x, visible_idx)
    block_cls = layers.maybe_remat(layers.Block, self.remat)
    for i, rate in enumerate(np.linspace(0.0, self.drop_path_rate, spec.depth)):
      x = block_cls(num_heads=spec.num_heads, mlp_ratio=spec.mlp_ratio, qkv_bias=spec.qkv_bias,
                    drop_rate=self.drop_rate, attn_drop_rate=self.attn_drop_rate,
                    drop_path_rate=float(rate), init_values=spec.init_values,
                    eps=spec.layer_norm_eps, deterministic=deterministic,
                    kernel_init=self.kernel_init, dtype=self.dtype,
                    attention_impl=spec.attention_impl, name=f"blocks_{i}")(x)
    if self.pretraining:
      return layers.layer_norm(spec.layer_norm_eps, name="norm", dtype=self.dtype)(x)
    return x, spec.temporal_tokens
