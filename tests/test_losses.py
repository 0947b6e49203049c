"""Losses: MAE targets and masked loss against the original formula, CE, MSE."""
import einops
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from svfap_jax import losses
from svfap_jax.models.mae import split_mask

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def _video(seed=0, shape=(2, 4, 32, 48, 3)):
  """A normalised channels-last video: uniform [0, 1] pixels -> (x - mean) / std."""
  pixels = np.random.default_rng(seed).uniform(size=shape).astype(np.float32)
  return (pixels - MEAN) / STD


def _reference_targets(video_cl, normalize, tubelet=2, patch=16):
  """The original target recipe, on a channels-first torch copy (B, C, T, H, W)."""
  videos = torch.from_numpy(video_cl).permute(0, 4, 1, 2, 3)
  mean = torch.as_tensor(MEAN)[None, :, None, None, None]
  std = torch.as_tensor(STD)[None, :, None, None, None]
  unnorm = videos * std + mean
  if normalize:
    squeeze = einops.rearrange(unnorm, "b c (t p0) (h p1) (w p2) -> b (t h w) (p0 p1 p2) c",
                               p0=tubelet, p1=patch, p2=patch)
    norm = (squeeze - squeeze.mean(dim=-2, keepdim=True)) / (
        squeeze.var(dim=-2, unbiased=True, keepdim=True).sqrt() + 1e-6)
    return einops.rearrange(norm, "b n p c -> b n (p c)")
  return einops.rearrange(unnorm, "b c (t p0) (h p1) (w p2) -> b (t h w) (p0 p1 p2 c)",
                          p0=tubelet, p1=patch, p2=patch)


@pytest.mark.parametrize("normalize", [True, False])
def test_patchify_targets_match_original(normalize):
  video = _video()
  got = np.asarray(losses.patchify_targets(jnp.asarray(video), normalize=normalize))
  want = _reference_targets(video, normalize).numpy()
  assert got.shape == (2, 2 * 2 * 3, 2 * 16 * 16 * 3) == want.shape
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_patchify_token_and_pixel_order():
  # Raw targets of a video whose pixel value encodes its (t, y, x, c) coordinate.
  t, h, w = np.meshgrid(np.arange(4), np.arange(32), np.arange(32), indexing="ij")
  code = np.stack([t * 10000 + h * 100 + w + c * 0.25 for c in range(3)], axis=-1)
  pixels = (code[None] / 1e5).astype(np.float32)
  targets = np.asarray(losses.patchify_targets(jnp.asarray((pixels - MEAN) / STD),
                                               normalize=False))
  decoded = np.rint(targets * 1e5 * 4) / 4  # undo the scaling, up to float32 rounding
  token = 1 * 4 + 0 * 2 + 1  # t-slot 1, row 0, column 1 (2 x 2 spatial grid)
  values = decoded[0, token].reshape(2, 16, 16, 3)  # (p0, p1, p2, c)
  assert values[0, 0, 0, 0] == 2 * 10000 + 0 * 100 + 16
  assert values[1, 3, 5, 2] == 3 * 10000 + 3 * 100 + 16 + 5 + 0.5


def test_pretrain_loss_matches_boolean_indexing():
  video = _video(1)
  targets = losses.patchify_targets(jnp.asarray(video))
  n = targets.shape[1]
  rng = np.random.default_rng(0)
  mask = np.zeros((2, n), bool)
  for row in mask:
    row[rng.choice(n, size=8, replace=False)] = True
  pred = rng.standard_normal((2, 8, targets.shape[-1])).astype(np.float32)
  got = float(losses.pretrain_loss(jnp.asarray(pred), targets, jnp.asarray(mask)))
  labels = _reference_targets(video, True)[torch.from_numpy(mask)].reshape(2, -1, 1536)
  want = float(torch.nn.functional.mse_loss(torch.from_numpy(pred), labels))
  assert got == pytest.approx(want, rel=1e-5)
  # The gathered order is the decoder's order (split_mask) and the boolean-indexing order.
  _, masked_idx = split_mask(jnp.asarray(mask), n - 8)
  np.testing.assert_array_equal(masked_idx, np.stack([np.flatnonzero(r) for r in mask]))
  np.testing.assert_allclose(losses.masked_targets(targets, jnp.asarray(mask), 8),
                             labels.numpy(), rtol=1e-4, atol=1e-4)
  # A perfect prediction has zero loss.
  perfect = losses.masked_targets(targets, jnp.asarray(mask), 8)
  assert float(losses.pretrain_loss(perfect, targets, jnp.asarray(mask))) == 0.0


def test_classification_losses_match_torch():
  rng = np.random.default_rng(2)
  logits = rng.standard_normal((6, 7)).astype(np.float32) * 3
  labels = rng.integers(0, 7, 6)
  for smoothing in (0.0, 0.1):
    got = float(losses.cross_entropy(jnp.asarray(logits), jnp.asarray(labels), smoothing))
    want = float(torch.nn.functional.cross_entropy(
        torch.from_numpy(logits), torch.from_numpy(labels), label_smoothing=smoothing))
    assert got == pytest.approx(want, rel=1e-5)
  soft = rng.dirichlet(np.ones(7), size=6).astype(np.float32)
  got = float(losses.soft_target_cross_entropy(jnp.asarray(logits), jnp.asarray(soft)))
  want = float(torch.sum(-torch.from_numpy(soft) * torch.log_softmax(
      torch.from_numpy(logits), dim=-1), dim=-1).mean())
  assert got == pytest.approx(want, rel=1e-5)
  # bf16 logits are reduced in float32.
  out = losses.soft_target_cross_entropy(jnp.asarray(logits, jnp.bfloat16), jnp.asarray(soft))
  assert out.dtype == jnp.float32


def test_regression_losses():
  rng = np.random.default_rng(3)
  pred = rng.standard_normal((16, 3)).astype(np.float32)
  target = (0.5 * pred + rng.standard_normal((16, 3))).astype(np.float32)
  assert float(losses.mse(jnp.asarray(pred), jnp.asarray(target))) == pytest.approx(
      float(np.mean((pred - target) ** 2)), rel=1e-5)


def test_regression_losses_leave_missing_targets_out():
  """NaN targets (missing annotations) drop out of the MSE; gradients stay finite."""
  rng = np.random.default_rng(4)
  pred = rng.standard_normal((8, 2)).astype(np.float32)
  target = (0.5 * pred + rng.standard_normal((8, 2))).astype(np.float32)
  target[:3, 0] = np.nan          # 3 clips without valence
  target[5] = np.nan              # a clip without any value contributes nothing
  present = ~np.isnan(target)
  want = np.sum(np.where(present, pred - np.nan_to_num(target), 0.0) ** 2) / present.sum()
  assert float(losses.mse(jnp.asarray(pred), jnp.asarray(target))) == pytest.approx(want,
                                                                                  rel=1e-5)
  # Torch's reference: the mean over the present values only.
  mask = torch.from_numpy(present)
  ref = torch.nn.functional.mse_loss(torch.from_numpy(pred)[mask], torch.from_numpy(target)[mask])
  assert float(losses.mse(jnp.asarray(pred), jnp.asarray(target))) == pytest.approx(float(ref),
                                                                                  rel=1e-5)
  grad = jax.grad(losses.mse)(jnp.asarray(pred), jnp.asarray(target))
  assert np.all(np.isfinite(grad))
  np.testing.assert_array_equal(np.asarray(grad)[~present], 0.0)   # no pull from missing values
  # Nothing present: zero loss and zero gradients, not NaN.
  empty = jnp.full((2, 2), jnp.nan)
  assert float(losses.mse(jnp.zeros((2, 2)), empty)) == 0.0
  assert np.all(np.asarray(jax.grad(losses.mse)(jnp.zeros((2, 2)), empty)) == 0.0)


def test_classification_losses_leave_unlabelled_clips_out():
  """Label -1 (no class) drops out of the mean, like torch's ignore_index."""
  rng = np.random.default_rng(5)
  logits = rng.standard_normal((6, 4)).astype(np.float32)
  labels = np.array([0, -1, 3, 2, -1, 1])
  got = float(losses.cross_entropy(jnp.asarray(logits), jnp.asarray(labels), 0.1))
  want = float(torch.nn.functional.cross_entropy(torch.from_numpy(logits),
                                                 torch.from_numpy(labels), ignore_index=-1,
                                                 label_smoothing=0.1))
  assert got == pytest.approx(want, rel=1e-5)
  soft = jax.nn.one_hot(jnp.asarray(labels), 4)
  weights = jnp.asarray(labels >= 0, jnp.float32)
  got = float(losses.soft_target_cross_entropy(jnp.asarray(logits), soft, weights=weights))
  want = float(torch.nn.functional.cross_entropy(torch.from_numpy(logits),
                                                 torch.from_numpy(labels), ignore_index=-1))
  assert got == pytest.approx(want, rel=1e-5)
  assert float(losses.soft_target_cross_entropy(jnp.asarray(logits), soft,
                                                weights=jnp.zeros(6))) == 0.0
