"""MAE reconstruction grids: original / masked input / reconstruction, one row each per clip."""
from __future__ import annotations

import os
from typing import Optional

import jax
import numpy as np

from data_pipelines import augment
from svfap_jax import losses, masking


_JITTED: dict = {}


def _apply(module):
  """One compiled forward per module (eager Flax would dispatch op by op)."""
  if id(module) not in _JITTED:
    _JITTED[id(module)] = jax.jit(module.apply, static_argnames=("num_visible",))
  return _JITTED[id(module)]


def _unpatchify(patches: np.ndarray, spec) -> np.ndarray:
  """(B, N, tb*p*p*3) in (t h w) token order, (p0 p1 p2 c) inner order -> (B, T, H, W, 3)."""
  b = patches.shape[0]
  t, g, p, tb = spec.temporal_tokens, spec.img_size // spec.patch_size, spec.patch_size, \
      spec.tubelet_size
  x = patches.reshape(b, t, g, g, tb, p, p, 3)
  return x.transpose(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, t * tb, g * p, g * p, 3)


def reconstruct(module, params, spec, video_uint8: np.ndarray, mask_ratio: float, seed: int = 0,
                normalize_target: bool = True):
  """Returns (original, masked input, reconstruction) as float [0,1] videos (B, T, H, W, 3)."""
  video = augment.pretrain_preprocess(np.asarray(video_uint8))
  b = video.shape[0]
  mask = masking.tube_mask(jax.random.key(seed), b, spec.temporal_tokens, spec.spatial_tokens,
                           mask_ratio) if spec.arch == "tpsbt" else masking.random_mask(
                               jax.random.key(seed), b, spec.num_patches, mask_ratio)
  n_visible = int(np.asarray(~mask[0]).sum())
  pred = np.asarray(_apply(module)({"params": params}, video, mask, num_visible=n_visible))
  raw = np.asarray(losses.patchify_targets(video, tubelet=spec.tubelet_size,
                                           patch=spec.patch_size, normalize=False))
  mask = np.asarray(mask)
  # The model predicts per-patch normalised pixels; undo with the true patch statistics
  # (the usual way to look at normalised-target MAEs).
  per_channel = raw.reshape(b, raw.shape[1], -1, 3)
  mean = per_channel.mean(axis=2, keepdims=True)
  std = per_channel.std(axis=2, ddof=1, keepdims=True) + 1e-6
  recon = per_channel.copy()
  masked_rows = np.argsort(mask, axis=1, kind="stable")[:, n_visible:]
  for i in range(b):
    rows = masked_rows[i]
    predicted = pred[i].reshape(len(rows), -1, 3)
    recon[i, rows] = predicted * std[i, rows] + mean[i, rows] if normalize_target else predicted
  masked_input = per_channel.copy()
  masked_input[mask] = 0.5
  shape = raw.shape
  return tuple(np.clip(_unpatchify(x.reshape(shape), spec), 0, 1)
               for x in (per_channel, masked_input, recon))


def reconstruction_grid(module, params, spec, video_uint8: np.ndarray, *, mask_ratio: float,
                        seed: int = 0, path: Optional[str] = None, frames: int = 8,
                        normalize_target: bool = True) -> np.ndarray:
  """uint8 image: for each clip, rows original / masked / reconstruction over `frames` frames."""
  original, masked, recon = reconstruct(module, params, spec, video_uint8, mask_ratio, seed,
                                        normalize_target)
  idx = np.linspace(0, original.shape[1] - 1, frames).round().astype(int)
  rows = []
  for i in range(original.shape[0]):
    for v in (original, masked, recon):
      rows.append(np.concatenate([v[i, j] for j in idx], axis=1))
  image = (np.concatenate(rows, axis=0) * 255).round().astype(np.uint8)
  if path:
    from PIL import Image  # pylint: disable=g-import-not-at-top
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    Image.fromarray(image).save(path)
  return image
