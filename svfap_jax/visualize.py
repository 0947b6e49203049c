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

`reconstruction_fit` puts a number on the same question: how much of the masked patches' change
over time (the motion part, where expressions live) the model reproduces, apart from their
appearance averaged over the clip (the static part).
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


def _masked_forward(module, params, spec, video_uint8: np.ndarray, mask_ratio: float, seed: int,
                    tube: bool):
  """One masked forward pass: (model input video, bool mask (B, N), n_visible, pred).

  The mask is a tube mask when `tube` (the TPSBT needs one) and a random one otherwise; `pred`
  (B, n_masked, P) holds the masked tokens in ascending token order, as the model returns them.
  """
  video = augment.pretrain_preprocess(np.asarray(video_uint8))
  b = video.shape[0]
  mask = masking.tube_mask(jax.random.key(seed), b, spec.temporal_tokens, spec.spatial_tokens,
                           mask_ratio) if tube else masking.random_mask(
                               jax.random.key(seed), b, spec.num_patches, mask_ratio)
  n_visible = int(np.asarray(~mask[0]).sum())
  pred = np.asarray(_apply(module)({"params": params}, video, mask, num_visible=n_visible))
  return video, np.asarray(mask), n_visible, pred


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
  video, mask, n_visible, pred = _masked_forward(module, params, spec, video_uint8, mask_ratio,
                                                 seed, tube=spec.arch == "tpsbt")
  raw = np.asarray(losses.patchify_targets(video, tubelet=spec.tubelet_size,
                                           patch=spec.patch_size, normalize=False))
  b = raw.shape[0]
  per_channel = raw.reshape(b, raw.shape[1], -1, 3)
  # Patch statistics as the loss computes them (losses.patchify_targets: unbiased std + 1e-6).
  mean = per_channel.mean(axis=2, keepdims=True)
  std = per_channel.std(axis=2, ddof=1, keepdims=True) + 1e-6
  output = per_channel.copy()
  denormalised = per_channel.copy()
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


def static_motion_fit(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
  """Splits a reconstruction of masked tubes into what stays and what changes over time.

  A video MAE can lower its loss a long way by predicting each masked position's appearance
  averaged over the clip (identity, lighting, background) while predicting none of its change
  over time, which is where facial expressions live. This separates the two: for every tube
  (one spatial position, all temporal slices) the static part is the mean over time and the
  motion part is the deviation from it.

  Args:
    pred, target: float (B, T, K, P): predictions and targets of K tubes masked in all T
      temporal slices, P values per token, in the space the loss compares them.

  Returns:
    float scalars: "motion_share" (the targets' motion energy / their total energy about the
    batch's mean token, in [0, 1]); "static_r2" (1 - squared error of the static parts / their
    energy about the batch's mean static token); "motion_r2" (1 - squared error of the motion
    parts / the targets' motion energy: 0 for a model that predicts no change over time, 1 for a
    perfect one, negative for wrong changes). A ratio whose denominator is 0 is NaN.

  Raises:
    ValueError: `pred` and `target` shapes differ or are not 4-D.
  """
  pred = np.asarray(pred, np.float64)
  target = np.asarray(target, np.float64)
  if pred.shape != target.shape or pred.ndim != 4:
    raise ValueError(f"pred {pred.shape} and target {target.shape} must both be (B, T, K, P)")
  target_static = target.mean(axis=1, keepdims=True)
  pred_static = pred.mean(axis=1, keepdims=True)
  target_motion, pred_motion = target - target_static, pred - pred_static
  static_energy = np.sum((target_static - target_static.mean(axis=(0, 2), keepdims=True)) ** 2)
  motion_energy = np.sum(target_motion ** 2)

  def ratio(num, den):
    return float(num / den) if den > 0 else float("nan")

  return {"motion_share": ratio(motion_energy, motion_energy + pred.shape[1] * static_energy),
          "static_r2": 1.0 - ratio(np.sum((pred_static - target_static) ** 2), static_energy),
          "motion_r2": 1.0 - ratio(np.sum((pred_motion - target_motion) ** 2), motion_energy)}


def reconstruction_fit(module, params, spec, video_uint8: np.ndarray, mask_ratio: float,
                       seed: int = 0, normalize_target: bool = True) -> dict[str, float]:
  """`static_motion_fit` of an MAE on clips, under a tube mask, in its own target space.

  Args:
    module, params, spec, video_uint8, seed, normalize_target: as `reconstruct`.
    mask_ratio: fraction of spatial positions masked in every temporal slice.

  Returns:
    {"recon_motion_share", "recon_static_r2", "recon_motion_r2"} (see `static_motion_fit`),
    float. The targets are per-patch normalised when `normalize_target`, raw [0, 1] pixels
    otherwise, as the loss sees them.
  """
  # A tube mask for both architectures: only a position hidden in every slice has a motion
  # part the model cannot copy from its own visible tokens.
  video, mask, _, pred = _masked_forward(module, params, spec, video_uint8, mask_ratio, seed,
                                         tube=True)
  b, t = video.shape[0], spec.temporal_tokens
  targets = np.asarray(losses.patchify_targets(video, tubelet=spec.tubelet_size,
                                               patch=spec.patch_size, normalize=normalize_target))
  masked = np.asarray(losses.masked_targets(targets, mask, pred.shape[1]))
  # Ascending (t, s) order with the same positions in every slice: rows split as (T, K).
  fit = static_motion_fit(pred.reshape(b, t, -1, pred.shape[-1]),
                          masked.reshape(b, t, -1, masked.shape[-1]))
  return {f"recon_{k}": v for k, v in fit.items()}


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
