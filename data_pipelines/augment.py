"""Device-side video augmentation: pure, jittable JAX on channels-last batches (B, T, H, W, 3).

The host pipeline only decodes and crops (uint8); everything per-pixel runs here, inside the
jitted training step:

  video, targets = augment.finetune_train_augment(rng, batch["video"], batch["label"],
                                                  num_classes, augment.AugmentConfig())
  video = augment.eval_preprocess(batch["video"])      # normalize only
  video = augment.pretrain_preprocess(batch["video"])  # normalize only

Randomness is per sample (one key per clip, split from `rng`) and every random parameter is shared
by all frames of a clip, so a clip stays temporally coherent. Output shapes depend only on the
input shapes and the config, so each function compiles once.

The fine-tuning recipe follows VideoMAE/SVFAP: random resized crop (scale 0.08-1, aspect 3/4-4/3),
horizontal flip, RandAugment (m7, n4, magnitude std 0.5, "increasing" op variants), ImageNet
normalization, mixup/cutmix with label smoothing and random erasing (p 0.25).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp

# The model input's normalisation (ImageNet statistics, as in the original data pipeline); the
# MAE targets (`svfap_jax.losses`) undo it with these same values.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Value revealed where geometric RandAugment ops move the image away (timm's default fill).
_FILL = 128.0
_GRAY = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as PIL's "L" conversion


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  """Fine-tuning augmentation settings (hashable, so it can be a static jit argument)."""
  img_size: int = 160
  crop_scale: tuple[float, float] = (0.08, 1.0)
  crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
  flip_prob: float = 0.5
  rand_augment: bool = True
  ra_num_ops: int = 4
  ra_magnitude: float = 7.0
  ra_magnitude_std: float = 0.5
  ra_op_prob: float = 0.5
  erase_prob: float = 0.25
  mixup_alpha: float = 0.8
  cutmix_alpha: float = 1.0
  mixup_switch_prob: float = 0.5
  mixup_prob: float = 1.0
  label_smoothing: float = 0.1


# ------------------------------------------------------------------------------------------------
# Normalization.
# ------------------------------------------------------------------------------------------------


def normalize(video: jax.Array, mean=IMAGENET_MEAN, std=IMAGENET_STD,
              dtype=jnp.float32) -> jax.Array:
  """(x / 255 - mean) / std per channel; uint8 or [0, 255] float in, `dtype` out."""
  x = video.astype(jnp.float32) / 255.0
  x = (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
  return x.astype(dtype)


def eval_preprocess(video_uint8: jax.Array, dtype=jnp.float32) -> jax.Array:
  """Evaluation input: the host already cropped to img_size, so normalize only."""
  return normalize(video_uint8, dtype=dtype)


def pretrain_preprocess(video_uint8: jax.Array, dtype=jnp.float32) -> jax.Array:
  """MAE pretraining input: the host crop is the only augmentation; normalize."""
  return normalize(video_uint8, dtype=dtype)


# ------------------------------------------------------------------------------------------------
# Affine resampling.
#
# Every geometric step (crop, flip, rotate, shear, translate) is an affine map from output pixel
# coordinates to source pixel coordinates; composing them first means a clip is resampled once.
# Coordinates are (row, col, 1) with pixel k's centre at k.
# ------------------------------------------------------------------------------------------------


def _crop_matrix(top, left, height, width, out_h: int, out_w: int) -> jax.Array:
  """Output pixel -> source pixel for the box (top, left, height, width) stretched to out size."""
  sy, sx = height / out_h, width / out_w
  return jnp.array([[sy, 0.0, top + 0.5 * sy - 0.5],
                    [0.0, sx, left + 0.5 * sx - 0.5],
                    [0.0, 0.0, 1.0]], jnp.float32)


def _flip_matrix(flip, out_w: int) -> jax.Array:
  """Mirrors output columns when `flip` (a traced bool)."""
  s = jnp.where(flip, -1.0, 1.0)
  return jnp.array([[1.0, 0.0, 0.0], [0.0, s, jnp.where(flip, out_w - 1.0, 0.0)],
                    [0.0, 0.0, 1.0]], jnp.float32)


def _about_centre(linear: jax.Array, height: int, width: int) -> jax.Array:
  """Homogeneous matrix applying the 2x2 `linear` around the frame centre."""
  c = jnp.array([(height - 1) / 2.0, (width - 1) / 2.0], jnp.float32)
  offset = c - linear @ c
  return jnp.concatenate([jnp.concatenate([linear, offset[:, None]], 1),
                          jnp.array([[0.0, 0.0, 1.0]], jnp.float32)], 0)


def affine_resample(video: jax.Array, matrix: jax.Array, out_h: int, out_w: int,
                    fill: float = _FILL) -> jax.Array:
  """Bilinearly samples one clip (T, H, W, C) at `matrix` @ (row, col, 1) of each output pixel.

  The same map is used for every frame. Points outside the frame by more than half a pixel get
  `fill`; within that margin the edge pixel is repeated. Returns float32 (T, out_h, out_w, C).
  """
  h, w = video.shape[1:3]
  rows, cols = jnp.meshgrid(jnp.arange(out_h, dtype=jnp.float32),
                            jnp.arange(out_w, dtype=jnp.float32), indexing="ij")
  y = matrix[0, 0] * rows + matrix[0, 1] * cols + matrix[0, 2]
  x = matrix[1, 0] * rows + matrix[1, 1] * cols + matrix[1, 2]
  inside = (y >= -0.5) & (y <= h - 0.5) & (x >= -0.5) & (x <= w - 0.5)
  y = jnp.clip(y, 0.0, h - 1.0)
  x = jnp.clip(x, 0.0, w - 1.0)
  y0 = jnp.floor(y)
  x0 = jnp.floor(x)
  wy = (y - y0)[None, :, :, None]
  wx = (x - x0)[None, :, :, None]
  y0 = y0.astype(jnp.int32)
  x0 = x0.astype(jnp.int32)
  y1 = jnp.minimum(y0 + 1, h - 1)
  x1 = jnp.minimum(x0 + 1, w - 1)

  def tap(yi, xi):
    return video[:, yi, xi, :].astype(jnp.float32)

  top = tap(y0, x0) * (1 - wx) + tap(y0, x1) * wx
  bottom = tap(y1, x0) * (1 - wx) + tap(y1, x1) * wx
  out = top * (1 - wy) + bottom * wy
  return jnp.where(inside[None, :, :, None], out, fill)


# ------------------------------------------------------------------------------------------------
# Random resized crop (its matrix and the flip's compose with RandAugment's geometry in
# `finetune_train_augment`).
# ------------------------------------------------------------------------------------------------


def sample_crop_box(rng: jax.Array, height: int, width: int,
                    scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), attempts: int = 10):
  """(top, left, h, w) of an Inception-style random resized crop, as torchvision draws it.

  Up to `attempts` (area, aspect) draws; the first that fits wins, otherwise the largest centred
  box with the aspect clamped into `ratio`.
  """
  k_area, k_ratio, k_top, k_left = jax.random.split(rng, 4)
  area = height * width * jax.random.uniform(k_area, (attempts,), minval=scale[0],
                                             maxval=scale[1])
  aspect = jnp.exp(jax.random.uniform(k_ratio, (attempts,), minval=math.log(ratio[0]),
                                      maxval=math.log(ratio[1])))
  w = jnp.round(jnp.sqrt(area * aspect))
  h = jnp.round(jnp.sqrt(area / aspect))
  fits = (w >= 1) & (w <= width) & (h >= 1) & (h <= height)
  first = jnp.argmax(fits)
  found = jnp.any(fits)
  h, w = h[first], w[first]
  top = jnp.floor(jax.random.uniform(k_top) * (height - h + 1))
  left = jnp.floor(jax.random.uniform(k_left) * (width - w + 1))
  in_ratio = width / height
  if in_ratio < ratio[0]:
    fb_w, fb_h = float(width), float(round(width / ratio[0]))
  elif in_ratio > ratio[1]:
    fb_h, fb_w = float(height), float(round(height * ratio[1]))
  else:
    fb_h, fb_w = float(height), float(width)
  fb_top, fb_left = (height - fb_h) // 2, (width - fb_w) // 2
  return (jnp.where(found, top, fb_top), jnp.where(found, left, fb_left),
          jnp.where(found, h, fb_h), jnp.where(found, w, fb_w))


def _per_sample(fn: Callable, rng: jax.Array, *args):
  """vmaps `fn(key, *sample_args)` over the batch with one key per sample."""
  keys = jax.random.split(rng, args[0].shape[0])
  return jax.vmap(fn)(keys, *args)


# ------------------------------------------------------------------------------------------------
# RandAugment.
#
# timm's "increasing" op set without Equalize. Each of `num_ops` layers picks an op uniformly (with
# replacement), a magnitude ~ N(m, std) clipped to [0, 10] and applies it with probability 0.5.
# The geometric ops of all layers are composed into one affine resampling that runs first; the
# colour ops then run in layer order. Colour ops are per-pixel, so this reordering only changes
# interpolation rounding and the colour of the revealed border.
# ------------------------------------------------------------------------------------------------


def _gray(x):
  return x @ jnp.asarray(_GRAY, jnp.float32)


def _blend(degenerate, x, factor):
  return jnp.clip(degenerate + factor * (x - degenerate), 0.0, 255.0)


def _enhance_factor(level, sign):
  return 1.0 + sign * 0.9 * level


def _autocontrast(x, level, sign):
  del level, sign
  lo = x.min(axis=(1, 2), keepdims=True)
  hi = x.max(axis=(1, 2), keepdims=True)
  scale = jnp.where(hi > lo, 255.0 / jnp.maximum(hi - lo, 1e-3), 1.0)
  return jnp.where(hi > lo, jnp.clip((x - lo) * scale, 0.0, 255.0), x)


def _invert(x, level, sign):
  del level, sign
  return 255.0 - x


def _posterize(x, level, sign):
  del sign
  shift = 8.0 - (4.0 - jnp.floor(level * 4.0))  # keep 4 .. 0 bits as the magnitude grows
  step = 2.0 ** shift
  return jnp.floor(x / step) * step


def _solarize(x, level, sign):
  del sign
  threshold = 256.0 - level * 256.0
  return jnp.where(x >= threshold, 255.0 - x, x)


def _solarize_add(x, level, sign):
  del sign
  return jnp.where(x < 128.0, jnp.minimum(x + level * 110.0, 255.0), x)


def _color(x, level, sign):
  return _blend(_gray(x)[..., None], x, _enhance_factor(level, sign))


def _contrast(x, level, sign):
  mean = _gray(x).mean(axis=(1, 2), keepdims=True)[..., None]  # per frame, as PIL per image
  return _blend(mean, x, _enhance_factor(level, sign))


def _brightness(x, level, sign):
  return _blend(jnp.zeros_like(x), x, _enhance_factor(level, sign))


def _sharpness(x, level, sign):
  # PIL's SMOOTH kernel [[1,1,1],[1,5,1],[1,1,1]] / 13; the one-pixel border stays unfiltered.
  p = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
  h, w = x.shape[1:3]
  box = sum(p[:, i:i + h, j:j + w] for i in range(3) for j in range(3))
  smooth = (box + 4.0 * x) / 13.0
  border = jnp.zeros((h, w), bool).at[1:-1, 1:-1].set(True)
  smooth = jnp.where(border[None, :, :, None], smooth, x)
  return _blend(smooth, x, _enhance_factor(level, sign))


COLOUR_OPS = (_autocontrast, _invert, _posterize, _solarize, _solarize_add, _color, _contrast,
              _brightness, _sharpness)
GEOMETRIC_OPS = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")
RAND_AUGMENT_OPS = tuple(f.__name__.lstrip("_") for f in COLOUR_OPS) + GEOMETRIC_OPS


def _geometric_matrix(op, level, sign, height: int, width: int) -> jax.Array:
  """Output -> source map of geometric op number `op` (0..4); identity for any other value."""
  angle = jnp.deg2rad(sign * level * 30.0)
  shear = sign * level * 0.3
  shift = sign * level * 0.45
  c, s = jnp.cos(angle), jnp.sin(angle)
  linears = jnp.stack([
      jnp.array([[c, -s], [s, c]]),
      jnp.array([[1.0, 0.0], [shear, 1.0]]),   # shear_x: col += shear * row
      jnp.array([[1.0, shear], [0.0, 1.0]]),   # shear_y: row += shear * col
      jnp.eye(2), jnp.eye(2), jnp.eye(2)])
  m = _about_centre(linears[jnp.clip(op, 0, 5)], height, width)
  m = m.at[1, 2].add(jnp.where(op == 3, shift * width, 0.0))
  m = m.at[0, 2].add(jnp.where(op == 4, shift * height, 0.0))
  identity = (op < 0) | (op > 4)
  return jnp.where(identity, jnp.eye(3), m)


@dataclasses.dataclass(frozen=True)
class _RandAugmentDraw:
  ops: jax.Array      # (num_ops,) int32 in [0, len(RAND_AUGMENT_OPS))
  levels: jax.Array   # (num_ops,) magnitude / 10
  signs: jax.Array    # (num_ops,) +-1
  active: jax.Array   # (num_ops,) bool


def _draw_rand_augment(rng, num_ops: int, magnitude: float, magnitude_std: float,
                       op_prob: float) -> _RandAugmentDraw:
  k_op, k_mag, k_sign, k_on = jax.random.split(rng, 4)
  ops = jax.random.randint(k_op, (num_ops,), 0, len(RAND_AUGMENT_OPS))
  mag = magnitude + magnitude_std * jax.random.normal(k_mag, (num_ops,))
  levels = jnp.clip(mag, 0.0, 10.0) / 10.0
  signs = jnp.where(jax.random.bernoulli(k_sign, 0.5, (num_ops,)), 1.0, -1.0)
  active = jax.random.bernoulli(k_on, op_prob, (num_ops,))
  return _RandAugmentDraw(ops, levels, signs, active)


def _rand_augment_geometry(draw: _RandAugmentDraw, height: int, width: int) -> jax.Array:
  """Composition, in layer order, of the drawn geometric ops (frame-centred)."""
  n_colour = len(COLOUR_OPS)
  m = jnp.eye(3)
  for i in range(draw.ops.shape[0]):
    op = jnp.where(draw.active[i], draw.ops[i] - n_colour, -1)
    # A layer maps its output to its input, so later layers compose on the right.
    m = m @ _geometric_matrix(op, draw.levels[i], draw.signs[i], height, width)
  return m


def _rand_augment_colour(clip: jax.Array, draw: _RandAugmentDraw) -> jax.Array:
  n_colour = len(COLOUR_OPS)
  for i in range(draw.ops.shape[0]):
    op = draw.ops[i]
    applied = jax.lax.switch(jnp.minimum(op, n_colour - 1), COLOUR_OPS, clip, draw.levels[i],
                             draw.signs[i])
    clip = jnp.where(draw.active[i] & (op < n_colour), applied, clip)
  return clip


def rand_augment(rng: jax.Array, video: jax.Array, num_ops: int = 4, magnitude: float = 7.0,
                 magnitude_std: float = 0.5, op_prob: float = 0.5) -> jax.Array:
  """RandAugment on (B, T, H, W, C) uint8 or [0, 255] float; returns float32 in [0, 255].

  Ops (`RAND_AUGMENT_OPS`): autocontrast, invert, posterize, solarize, solarize_add, color,
  contrast, brightness, sharpness, rotate, shear_x, shear_y, translate_x, translate_y.
  """
  h, w = video.shape[2:4]

  def one(key, clip):
    draw = _draw_rand_augment(key, num_ops, magnitude, magnitude_std, op_prob)
    clip = affine_resample(clip, _rand_augment_geometry(draw, h, w), h, w)
    return _rand_augment_colour(clip, draw)

  return _per_sample(one, rng, video)


# ------------------------------------------------------------------------------------------------
# Random erasing.
# ------------------------------------------------------------------------------------------------


def _erase_box(rng, height: int, width: int, area=(0.02, 1 / 3), log_ratio=(math.log(0.3),
                                                                           math.log(1 / 0.3)),
               attempts: int = 10):
  """(top, left, h, w, found) of one timm-style erasing rectangle."""
  k_area, k_ratio, k_top, k_left = jax.random.split(rng, 4)
  target = height * width * jax.random.uniform(k_area, (attempts,), minval=area[0],
                                               maxval=area[1])
  aspect = jnp.exp(jax.random.uniform(k_ratio, (attempts,), minval=log_ratio[0],
                                      maxval=log_ratio[1]))
  h = jnp.round(jnp.sqrt(target * aspect))
  w = jnp.round(jnp.sqrt(target / aspect))
  fits = (w < width) & (h < height) & (h >= 1) & (w >= 1)
  first = jnp.argmax(fits)
  h, w = h[first], w[first]
  top = jnp.floor(jax.random.uniform(k_top) * (height - h + 1))
  left = jnp.floor(jax.random.uniform(k_left) * (width - w + 1))
  return top, left, h, w, jnp.any(fits)


def random_erasing(rng: jax.Array, video: jax.Array, prob: float = 0.25) -> jax.Array:
  """With probability `prob` per clip, fills one rectangle with per-pixel N(0, 1) noise.

  The rectangle (2-33% of the frame, aspect 0.3-3.3) and its noise are the same in every frame of
  the clip, like a static occluder; one noise image per clip also keeps the random draws (the
  costliest part on CPUs) T times smaller. Meant for normalized video, where N(0, 1) is in range.
  """
  b, _, h, w, c = video.shape
  k_clip, k_noise = jax.random.split(rng)
  # Drawn flat and reshaped: XLA:CPU compiles a many-dimensional draw several times slower.
  noise = jax.random.normal(k_noise, (b * h * w * c,), video.dtype).reshape(b, 1, h, w, c)

  def one(key, clip, clip_noise):
    k_on, k_box = jax.random.split(key)
    top, left, bh, bw, found = _erase_box(k_box, h, w)
    rows = jnp.arange(h, dtype=jnp.float32)[:, None]
    cols = jnp.arange(w, dtype=jnp.float32)[None, :]
    inside = (rows >= top) & (rows < top + bh) & (cols >= left) & (cols < left + bw)
    on = jax.random.bernoulli(k_on, prob) & found
    return jnp.where((inside & on)[None, :, :, None], clip_noise, clip)  # noise: (1, H, W, C)

  return _per_sample(one, k_clip, video, noise)


# ------------------------------------------------------------------------------------------------
# Mixup / CutMix.
# ------------------------------------------------------------------------------------------------


def smooth_one_hot(labels: jax.Array, num_classes: int, smoothing: float = 0.1) -> jax.Array:
  """One-hot targets with `smoothing` spread evenly over all classes (rows sum to 1)."""
  off = smoothing / num_classes
  return jax.nn.one_hot(labels, num_classes) * (1.0 - smoothing) + off


def mixup_cutmix(rng: jax.Array, video: jax.Array, labels: jax.Array, num_classes: int,
                 mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0, switch_prob: float = 0.5,
                 prob: float = 1.0, label_smoothing: float = 0.1,
                 lam: Optional[jax.Array] = None) -> tuple[jax.Array, jax.Array]:
  """timm-style batch mixup/cutmix; each clip is mixed with the batch's mirror (B-1-i).

  One lambda per batch. With probability `switch_prob` (when both alphas are on) CutMix pastes a
  box covering about 1 - lambda of the frame (same box in every frame, lambda then corrected to
  the exact pasted area), otherwise Mixup blends whole clips. With probability 1 - `prob` nothing
  is mixed. `lam` forces the mixing weight (mainly for tests).

  Returns:
    (mixed video, soft targets (B, num_classes) = lam * y + (1 - lam) * y_mirror).
  """
  h, w = video.shape[2:4]
  k_on, k_switch, k_mix, k_box = jax.random.split(rng, 4)
  use_cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or switch_prob > 0)
  cut = jax.random.bernoulli(k_switch, switch_prob if mixup_alpha > 0 else 1.0) & use_cutmix
  if lam is None:
    # Both Beta draws from one Gamma call (Beta(a, a) = X / (X + Y), X, Y ~ Gamma(a)): the
    # rejection sampler behind it is the costliest thing here to compile.
    alphas = jnp.array([mixup_alpha] * 2 + [cutmix_alpha] * 2, jnp.float32)
    g = jax.random.gamma(k_mix, jnp.where(alphas > 0, alphas, 1.0))
    lam_mix = g[0] / (g[0] + g[1]) if mixup_alpha > 0 else 1.0
    lam_cut = g[2] / (g[2] + g[3]) if cutmix_alpha > 0 else 1.0
    lam = jnp.where(cut, lam_cut, lam_mix)
    lam = jnp.where(jax.random.bernoulli(k_on, prob), lam, 1.0)
  lam = jnp.asarray(lam, jnp.float32)
  # CutMix box: sides sqrt(1 - lam) of the frame around a uniform centre, clipped to the frame.
  cut_ratio = jnp.sqrt(1.0 - lam)
  ky, kx = jax.random.split(k_box)
  cy = jax.random.randint(ky, (), 0, h).astype(jnp.float32)
  cx = jax.random.randint(kx, (), 0, w).astype(jnp.float32)
  ch, cw = jnp.floor(h * cut_ratio), jnp.floor(w * cut_ratio)
  y0, y1 = jnp.clip(cy - ch // 2, 0, h), jnp.clip(cy + ch // 2, 0, h)
  x0, x1 = jnp.clip(cx - cw // 2, 0, w), jnp.clip(cx + cw // 2, 0, w)
  rows = jnp.arange(h, dtype=jnp.float32)[:, None]
  cols = jnp.arange(w, dtype=jnp.float32)[None, :]
  box = (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)
  lam_box = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)
  lam = jnp.where(cut, lam_box, lam)

  mirror = video[::-1]
  x = video.astype(jnp.float32)
  blended = lam * x + (1.0 - lam) * mirror.astype(jnp.float32)
  pasted = jnp.where(box[None, None, :, :, None], mirror, video).astype(jnp.float32)
  mixed = jnp.where(cut, pasted, blended).astype(video.dtype)
  y = smooth_one_hot(labels, num_classes, label_smoothing)
  targets = lam * y + (1.0 - lam) * y[::-1]
  return mixed, targets


# ------------------------------------------------------------------------------------------------
# Compositions.
# ------------------------------------------------------------------------------------------------


def finetune_train_augment(rng: jax.Array, video_uint8: jax.Array, labels: jax.Array,
                           num_classes: int, cfg: Optional[AugmentConfig] = None
                           ) -> tuple[jax.Array, jax.Array]:
  """The full fine-tuning augmentation of a host batch.

  Random resized crop + flip + RandAugment geometry are one resampling of the uint8 host crop to
  img_size; then RandAugment's colour ops, normalization, mixup/cutmix and random erasing.

  Erasing comes after mixing (VideoMAE erases each clip before mixing): mixing reads every clip
  twice (as itself and as its partner's mirror) and XLA fuses the erasing noise generator into
  both reads, which made the whole augmentation four times slower on CPU. The only difference is
  that an erased rectangle is not blended with the partner clip.

  Args:
    rng: PRNG key.
    video_uint8: (B, T, H, W, 3) uint8 host crops.
    labels: (B,) int class indices.
    num_classes: number of classes (static).
    cfg: settings; default `AugmentConfig()`.

  Returns:
    (video float32 (B, T, img_size, img_size, 3) normalized, soft targets (B, num_classes)).
  """
  cfg = cfg or AugmentConfig()
  size = cfg.img_size
  h, w = video_uint8.shape[2:4]
  k_clip, k_erase, k_mix = jax.random.split(rng, 3)

  def one(key, clip):
    k_box, k_flip, k_ra = jax.random.split(key, 3)
    box = sample_crop_box(k_box, h, w, cfg.crop_scale, cfg.crop_ratio)
    flip = jax.random.bernoulli(k_flip, cfg.flip_prob)
    # Output pixel -> (flip) -> crop box -> RandAugment geometry on the full frame -> source.
    m = _crop_matrix(*box, size, size) @ _flip_matrix(flip, size)
    if cfg.rand_augment:
      draw = _draw_rand_augment(k_ra, cfg.ra_num_ops, cfg.ra_magnitude, cfg.ra_magnitude_std,
                                cfg.ra_op_prob)
      m = _rand_augment_geometry(draw, h, w) @ m
    out = affine_resample(clip, m, size, size)
    if cfg.rand_augment:
      out = _rand_augment_colour(out, draw)
    return normalize(out)

  video = _per_sample(one, k_clip, video_uint8)
  if cfg.mixup_alpha > 0 or cfg.cutmix_alpha > 0:
    video, targets = mixup_cutmix(k_mix, video, labels, num_classes, cfg.mixup_alpha,
                                  cfg.cutmix_alpha, cfg.mixup_switch_prob, cfg.mixup_prob,
                                  cfg.label_smoothing)
  else:
    targets = smooth_one_hot(labels, num_classes, cfg.label_smoothing)
  if cfg.erase_prob > 0:
    video = random_erasing(k_erase, video, cfg.erase_prob)
  return video, targets
