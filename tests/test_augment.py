"""Device-side augmentation: shapes, one compilation, geometry, mixing, erasing, normalization."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data_pipelines import augment as A

B, T, H, W = 4, 3, 20, 24


def _video(seed=0, shape=(B, T, H, W, 3)):
  return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_finetune_augment_shapes_and_compiles_once():
  cfg = A.AugmentConfig(img_size=16, ra_num_ops=2)  # two RandAugment layers compile faster
  traces = []

  def step(rng, video, labels):
    traces.append(1)  # runs only while tracing
    return A.finetune_train_augment(rng, video, labels, 5, cfg)

  fn = jax.jit(step)
  labels = jnp.array([0, 1, 2, 4])
  outs = [fn(jax.random.PRNGKey(s), _video(s), labels) for s in range(3)]
  assert len(traces) == 1
  for video, targets in outs:
    assert video.shape == (B, T, 16, 16, 3) and video.dtype == jnp.float32
    assert targets.shape == (B, 5) and targets.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(video)))
    np.testing.assert_allclose(np.asarray(targets).sum(1), 1.0, rtol=1e-5)
  assert not np.allclose(outs[0][0], outs[1][0])


def test_normalize_and_eval_pretrain_preprocess_match_the_formula():
  v = _video(1)
  want = (v.astype(np.float32) / 255 - np.float32(A.IMAGENET_MEAN)) / np.float32(A.IMAGENET_STD)
  for fn in (A.normalize, A.eval_preprocess, A.pretrain_preprocess):
    out = jax.jit(fn)(v)
    assert out.dtype == jnp.float32 and out.shape == v.shape
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
  assert A.normalize(v, dtype=jnp.bfloat16).dtype == jnp.bfloat16


# Fine-tuning geometry only: no RandAugment, mixing or erasing, so the output is the crop/flip
# resampling of the clip, normalised.
_GEOMETRY_ONLY = dict(rand_augment=False, mixup_alpha=0.0, cutmix_alpha=0.0, erase_prob=0.0,
                      label_smoothing=0.0)


def _unnormalize(video):
  return (np.asarray(video) * np.float32(A.IMAGENET_STD) + np.float32(A.IMAGENET_MEAN)) * 255


def test_flip_mirrors_whole_clips():
  """The production flip matrix: probability 1 mirrors every frame, 0 leaves the clip alone and
  0.5 mirrors whole clips, never single frames."""
  square = _video(2, (B, T, 16, 16, 3))
  labels = jnp.zeros((B,), jnp.int32)
  whole = dict(img_size=16, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), **_GEOMETRY_ONLY)
  run = jax.jit(lambda r, v, p: A.finetune_train_augment(
      r, v, labels, 2, A.AugmentConfig(flip_prob=p, **whole))[0], static_argnums=2)
  np.testing.assert_allclose(_unnormalize(run(jax.random.PRNGKey(0), square, 1.0)),
                             square[:, :, :, ::-1], atol=1e-3)
  np.testing.assert_allclose(_unnormalize(run(jax.random.PRNGKey(0), square, 0.0)), square,
                             atol=1e-3)
  flipped = 0
  for seed in range(4):
    out = np.rint(_unnormalize(run(jax.random.PRNGKey(seed), square, 0.5)))
    for b in range(B):  # each clip is either untouched or mirrored in every frame
      mirrored = np.array_equal(out[b], square[b, :, :, ::-1])
      assert mirrored or np.array_equal(out[b], square[b])
      flipped += mirrored
  assert 0 < flipped < 4 * B


def test_random_resized_crop_identity_and_same_box_for_all_frames():
  """The production crop matrix: a full-frame box is the identity, and one box (its bilinear
  weights included) serves every frame of a clip."""
  labels = jnp.zeros((B,), jnp.int32)
  # Frame t = frame 0 + 10 t: one box for the clip keeps that offset after bilinear resampling.
  base = np.random.default_rng(4).integers(0, 200, (B, 1, H, W, 3)).astype(np.float32)
  clip = base + 10.0 * np.arange(T, dtype=np.float32)[None, :, None, None, None]
  crop = A.AugmentConfig(img_size=12, flip_prob=0.5, **_GEOMETRY_ONLY)
  out = jax.jit(lambda r, v: A.finetune_train_augment(r, v, labels, 2, crop)[0])(
      jax.random.PRNGKey(1), clip)
  out = _unnormalize(out)
  assert out.shape == (B, T, 12, 12, 3)
  for t in range(T):
    np.testing.assert_allclose(out[:, t] - out[:, 0], 10.0 * t, atol=1e-2)
  # A box of the whole frame, without flip, resamples the clip onto itself.
  square = _video(3, (B, T, 16, 16, 3))
  identity = A._crop_matrix(0.0, 0.0, 16.0, 16.0, 16, 16) @ A._flip_matrix(False, 16)
  np.testing.assert_allclose(A.affine_resample(square[0], identity, 16, 16), square[0],
                             atol=1e-4)
  # A crop of the left half stretched to the full width: output column j samples source column
  # (j + 0.5) / 2 - 0.5, bilinearly.
  half = np.asarray(A.affine_resample(square[0], A._crop_matrix(0.0, 0.0, 16.0, 8.0, 16, 16),
                                      16, 16))
  src = square[0].astype(np.float32)
  for j in range(16):
    x = min(max((j + 0.5) / 2 - 0.5, 0.0), 15.0)
    x0 = int(np.floor(x))
    want = src[:, :, x0] * (1 - (x - x0)) + src[:, :, min(x0 + 1, 15)] * (x - x0)
    np.testing.assert_allclose(half[:, :, j], want, atol=1e-3)
  # Boxes respect the scale range and stay inside the frame.
  keys = jax.random.split(jax.random.PRNGKey(2), 200)
  top, left, h, w = (np.asarray(x) for x in jax.jit(jax.vmap(
      lambda k: A.sample_crop_box(k, H, W)))(keys))
  assert np.all((top >= 0) & (top + h <= H) & (left >= 0) & (left + w <= W))
  assert np.all((h * w >= 0.08 * H * W * 0.8) & (h * w <= H * W))
  assert np.ptp(h * w) > H * W / 2  # the areas spread over the range


def test_rand_augment_ops_and_clip_consistency():
  assert len(A.RAND_AUGMENT_OPS) >= 8
  # Identical frames stay identical: the drawn ops and magnitudes are shared by the clip.
  frame = _video(5, (B, 1, H, W, 3))
  clip = np.repeat(frame, T, axis=1)
  # Two layers compile in half the time of four and exercise the same code.
  fn = jax.jit(lambda r, v: A.rand_augment(r, v, num_ops=2, magnitude=9.0, op_prob=1.0))
  changed = 0
  for s in range(3):
    out = np.asarray(fn(jax.random.PRNGKey(s), clip))
    assert out.shape == clip.shape and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 255
    for t in range(1, T):
      np.testing.assert_allclose(out[:, t], out[:, 0], atol=1e-4)
    changed += int(not np.allclose(out, clip))
  assert changed == 3
  x = jnp.asarray(frame[0], jnp.float32)
  np.testing.assert_allclose(A._invert(x, 0.7, 1.0), 255 - x)
  np.testing.assert_allclose(A._solarize(x, 0.5, 1.0), np.where(x >= 128, 255 - x, x))
  np.testing.assert_allclose(A._brightness(x, 0.0, 1.0), x)
  np.testing.assert_array_equal(np.unique(np.asarray(A._posterize(x, 0.7, 1.0)) % 64), [0])


def test_mixup_cutmix_targets():
  v = A.normalize(_video(6))
  labels = jnp.array([0, 1, 2, 3])
  mixed, targets = jax.jit(lambda r: A.mixup_cutmix(r, v, labels, 5, lam=1.0))(
      jax.random.PRNGKey(0))
  np.testing.assert_allclose(mixed, v)
  want = np.full((B, 5), 0.1 / 5, np.float32)
  want[np.arange(B), np.asarray(labels)] += 0.9
  np.testing.assert_allclose(targets, want, rtol=1e-6)
  fn = jax.jit(lambda r: A.mixup_cutmix(r, v, labels, 5))
  for s in range(6):
    mixed, targets = fn(jax.random.PRNGKey(s))
    t = np.asarray(targets)
    np.testing.assert_allclose(t.sum(1), 1.0, rtol=1e-5)
    # Each clip's target weights its own label by lambda and its mirror's by 1 - lambda.
    lam = (t[0, 0] - 0.02) / 0.9
    np.testing.assert_allclose(t[0, 3], 0.02 + 0.9 * (1 - lam), atol=1e-5)
    assert mixed.shape == v.shape


def test_random_erasing_rate_and_same_rectangle_in_every_frame():
  zeros = jnp.zeros((400, 2, 16, 16, 3), jnp.float32)
  out = np.asarray(jax.jit(lambda r, v: A.random_erasing(r, v, 0.25))(jax.random.PRNGKey(0),
                                                                     zeros))
  erased = np.abs(out) > 0
  frac = erased.reshape(400, -1).any(1).mean()
  assert 0.18 < frac < 0.32, frac
  np.testing.assert_array_equal(erased[:, 0].any(-1), erased[:, 1].any(-1))
  for clip in np.flatnonzero(erased.reshape(400, -1).any(1))[:20]:
    rows, cols = np.nonzero(erased[clip, 0].any(-1))
    area = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    assert area == rows.size  # one solid rectangle
    assert 0.02 * 256 * 0.5 <= area <= 256 / 3 * 1.5


def test_disabled_stages_leave_plain_crop_and_smoothing():
  cfg = A.AugmentConfig(img_size=16, rand_augment=False, erase_prob=0.0, mixup_alpha=0.0,
                        cutmix_alpha=0.0, flip_prob=0.0, crop_scale=(1, 1), crop_ratio=(1, 1))
  v = _video(7, (B, T, 16, 16, 3))
  video, targets = jax.jit(A.finetune_train_augment, static_argnums=(3, 4))(
      jax.random.PRNGKey(0), v, jnp.arange(B), 4, cfg)
  np.testing.assert_allclose(video, A.normalize(v), atol=1e-4)
  np.testing.assert_allclose(targets, A.smooth_one_hot(jnp.arange(B), 4, 0.1))


@pytest.mark.parametrize("flip", [False, True])
def test_crop_flip_matrices_compose(flip):
  v = _video(8, (1, 1, 8, 8, 3))[0]
  m = A._crop_matrix(0.0, 0.0, 8.0, 8.0, 8, 8) @ A._flip_matrix(jnp.bool_(flip), 8)
  out = np.asarray(A.affine_resample(v, m, 8, 8))
  np.testing.assert_allclose(out, v[:, :, ::-1] if flip else v, atol=1e-4)
