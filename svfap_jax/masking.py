"""MAE masks drawn on device from a PRNG key. True = masked (hidden from the encoder)."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def num_masked_per_frame(spatial_tokens: int, mask_ratio: float) -> int:
  return int(mask_ratio * spatial_tokens)


def tube_mask(rng, batch_size: int, temporal_tokens: int, spatial_tokens: int,
              mask_ratio: float) -> jax.Array:
  """One random spatial mask per sample, shared by every temporal slice: (B, T*S) bool.

  Every frame keeps the same S - int(ratio*S) spatial positions, which the TPSBT needs (its temporal
  convolution runs per spatial position).
  """
  n_mask = num_masked_per_frame(spatial_tokens, mask_ratio)
  ranks = jnp.argsort(jnp.argsort(jax.random.uniform(rng, (batch_size, spatial_tokens)), axis=1),
                      axis=1)
  frame_mask = ranks < n_mask
  return jnp.tile(frame_mask, (1, temporal_tokens))


def random_mask(rng, batch_size: int, num_tokens: int, mask_ratio: float) -> jax.Array:
  """Independent random token masking (plain ViT only): (B, N) bool with int(ratio*N) masked."""
  n_mask = int(mask_ratio * num_tokens)
  ranks = jnp.argsort(jnp.argsort(jax.random.uniform(rng, (batch_size, num_tokens)), axis=1),
                      axis=1)
  return ranks < n_mask


def num_visible(kind: str, temporal_tokens: int, spatial_tokens: int, mask_ratio: float) -> int:
  """Visible tokens per sample for a mask of `kind` ('tube' or 'random')."""
  if kind == "tube":
    return temporal_tokens * (spatial_tokens - num_masked_per_frame(spatial_tokens, mask_ratio))
  if kind == "random":
    n = temporal_tokens * spatial_tokens
    return n - int(mask_ratio * n)
  raise ValueError(f"unknown mask kind {kind!r}; use 'tube' or 'random'")
