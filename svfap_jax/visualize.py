"""MAE reconstruction grids: what the model was shown and what it predicted, frame by frame.

For each clip the grid has one labelled row per panel, one column per input frame:

  original         the clip as the model sees it (after pretraining preprocessing)
  masked input     masked patches grey: everything the encoder gets
  model output     masked patches as predicted. With per-patch normalised targets the prediction
                   has zero mean and unit variance per patch and channel, shown as 0.5 + 0.2 * x
                   (mid grey = the patch mean); visible patches are shown as given
  de-normalised    (normalised targets only) the prediction scaled by the TRUE mean and std of each
  with true stats  masked patch, the usual way to look at such MAEs. The colours and brightness of
                   this panel come from the ground truth, not from the model: only its shapes are
                   what the model learned
"""
from __future__ import annotations

import os
from typing import Optional

import jax
import numpy as np

from data_pipelines import augment
from svfap_jax import losses, masking


_JITTED: dict = {}
# Display scale of normalised predictions: +-2.5 standard deviations fill [0, 1].
_NORMALISED_GAIN = 0.2
_LABEL_WIDTH = 112


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
                normalize_target: bool = True) -> dict[str, np.ndarray]:
  """The panels of a reconstruction grid.

  Args:
    module, params: an `MAEPretrainModel` and its parameters.
    spec: the model's `ModelSpec`.
    video_uint8: uint8 (B, T, H, W, 3) clips at the model's input size.
    mask_ratio: fraction of tokens masked (tube mask for TPSBT, random for ViT).
    seed: mask seed.
    normalize_target: whether the model regresses per-patch normalised pixels.

  Returns:
    Ordered {panel name: float [0, 1] video (B, T, H, W, 3)}: "original", "masked input",
    "model output" and, with normalised targets, "de-normalised with true stats".
  """
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
  per_channel = raw.reshape(b, raw.shape[1], -1, 3)
  # Patch statistics as the loss computes them (losses.patchify_targets: unbiased std + 1e-6).
  mean = per_channel.mean(axis=2, keepdims=True)
  std = per_channel.std(axis=2, ddof=1, keepdims=True) + 1e-6
  output = per_channel.copy()
  denormalised = per_channel.copy()
  # The model returns masked tokens in ascending token order.
  masked_rows = np.argsort(mask, axis=1, kind="stable")[:, n_visible:]
  for i in range(b):
    rows = masked_rows[i]
    predicted = pred[i].reshape(len(rows), -1, 3)
    if normalize_target:
      output[i, rows] = 0.5 + _NORMALISED_GAIN * predicted
      denormalised[i, rows] = predicted * std[i, rows] + mean[i, rows]
    else:
      output[i, rows] = predicted
  masked_input = per_channel.copy()
  masked_input[mask] = 0.5
  panels = {"original": per_channel, "masked input": masked_input, "model output": output}
  if normalize_target:
    panels["de-normalised with true stats"] = denormalised
  return {name: np.clip(_unpatchify(x.reshape(raw.shape), spec), 0, 1)
          for name, x in panels.items()}


def _label(text: str, height: int) -> np.ndarray:
  """A white (height, _LABEL_WIDTH, 3) uint8 tile with `text` in black, wrapped at spaces."""
  from PIL import Image, ImageDraw  # pylint: disable=g-import-not-at-top
  tile = Image.new("RGB", (_LABEL_WIDTH, height), "white")
  draw = ImageDraw.Draw(tile)
  words, lines = text.split(), [""]
  for w in words:
    if len(lines[-1]) + len(w) + 1 > 17:
      lines.append(w)
    else:
      lines[-1] = f"{lines[-1]} {w}".strip()
  draw.multiline_text((3, 2), "\n".join(lines), fill="black", spacing=1)
  return np.asarray(tile)


def reconstruction_grid(module, params, spec, video_uint8: np.ndarray, *, mask_ratio: float,
                        seed: int = 0, path: Optional[str] = None, frames: Optional[int] = None,
                        normalize_target: bool = True) -> np.ndarray:
  """uint8 image: per clip one labelled row per panel of `reconstruct`, one column per frame.

  `frames` limits the columns to that many evenly spaced frames (default: every frame).
  Writes a PNG to `path` when given.
  """
  panels = reconstruct(module, params, spec, video_uint8, mask_ratio, seed, normalize_target)
  first = next(iter(panels.values()))
  num_frames = first.shape[1]
  idx = (np.arange(num_frames) if not frames or frames >= num_frames
         else np.linspace(0, num_frames - 1, frames).round().astype(int))
  height = first.shape[2]
  rows = []
  for i in range(first.shape[0]):
    for name, v in panels.items():
      strip = (np.concatenate([v[i, j] for j in idx], axis=1) * 255).round().astype(np.uint8)
      rows.append(np.concatenate([_label(name, height), strip], axis=1))
  image = np.concatenate(rows, axis=0)
  if path:
    from PIL import Image  # pylint: disable=g-import-not-at-top
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    Image.fromarray(image).save(path)
  return image
