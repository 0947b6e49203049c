"""Reconstruction grids: which panels, what each shows."""
import numpy as np
import pytest

from svfap_jax import api, visualize


@pytest.fixture(scope="module")
def mae():
  return api.create_model("svfap_tiny", pretrain=True, seed=0)


def _clips(spec, n=2):
  rng = np.random.default_rng(0)
  return rng.integers(0, 256, (n, spec.num_frames, spec.img_size, spec.img_size, 3), np.uint8)


@pytest.mark.parametrize("normalize", [True, False])
def test_panels_show_input_as_given_and_masks_in_grey(mae, normalize):
  spec = mae.spec
  panels = visualize.reconstruct(mae.module, mae.params, spec, _clips(spec), 0.9, seed=3,
                                 normalize_target=normalize)
  expected = ["original", "masked input", "model output"]
  if normalize:
    expected.append("de-normalised with true stats")
  assert list(panels) == expected
  original, masked, output = panels["original"], panels["masked input"], panels["model output"]
  hidden = np.all(masked == 0.5, axis=-1)           # (B, T, H, W): grey pixels = masked
  frac = hidden.mean()
  assert 0.85 <= frac <= 0.95, frac                 # 90 % tube mask (up to chance grey pixels)
  visible = ~hidden
  np.testing.assert_array_equal(output[visible], original[visible])
  # The masked region of the output is the model's prediction, not the input.
  assert np.abs(output[hidden] - original[hidden]).mean() > 0.01
  if normalize:
    # A prediction with zero mean would sit at mid grey in the normalised view.
    assert abs(float(output[hidden].mean()) - 0.5) < 0.2


def test_grid_has_a_labelled_row_per_panel_and_every_frame(mae, tmp_path):
  spec = mae.spec
  image = visualize.reconstruction_grid(mae.module, mae.params, spec, _clips(spec), mask_ratio=0.9,
                                        path=str(tmp_path / "g.png"))
  assert image.shape == (2 * 4 * spec.img_size, visualize._LABEL_WIDTH
                         + spec.num_frames * spec.img_size, 3)
  label = image[:spec.img_size, :visualize._LABEL_WIDTH]
  assert (label < 128).any() and (label == 255).mean() > 0.5  # dark text on white
  assert (tmp_path / "g.png").stat().st_size > 0


def _tubes(seed=0, shape=(3, 4, 5, 6)):
  """Targets (B, T, K, P) with both a static part per tube and a change over time."""
  rng = np.random.default_rng(seed)
  b, t, k, p = shape
  return rng.normal(size=(b, 1, k, p)) + 0.5 * rng.normal(size=shape)


def test_static_motion_fit_scores_a_perfect_and_a_motionless_prediction():
  target = _tubes()
  perfect = visualize.static_motion_fit(target, target)
  assert perfect["static_r2"] == pytest.approx(1.0) and perfect["motion_r2"] == pytest.approx(1.0)
  # Each tube's appearance averaged over the clip, no change over time: all static, no motion.
  frozen = np.broadcast_to(target.mean(axis=1, keepdims=True), target.shape)
  fit = visualize.static_motion_fit(frozen, target)
  assert fit["static_r2"] == pytest.approx(1.0) and fit["motion_r2"] == pytest.approx(0.0)
  # Motion share against a direct computation: energy about the per-tube mean over time vs the
  # energy about the batch's mean token.
  expected = (np.sum((target - target.mean(axis=1, keepdims=True)) ** 2)
              / np.sum((target - target.mean(axis=(0, 1, 2), keepdims=True)) ** 2))
  assert fit["motion_share"] == pytest.approx(expected)
  # Motion of the wrong sign costs more than predicting none.
  reversed_motion = 2 * frozen - target
  assert visualize.static_motion_fit(reversed_motion, target)["motion_r2"] == pytest.approx(-3.0)


def test_static_motion_fit_rejects_mismatched_shapes():
  with pytest.raises(ValueError, match="must both be"):
    visualize.static_motion_fit(np.zeros((2, 4, 5, 6)), np.zeros((2, 4, 5, 7)))


def test_reconstruction_fit_of_a_random_mae_predicts_no_motion(mae):
  """At init the decoder's output barely depends on time: the motion part is not reproduced,
  while a clip that changes over time has a motion share well above 0."""
  spec = mae.spec
  fit = visualize.reconstruction_fit(mae.module, mae.params, spec, _clips(spec, 4), 0.9, seed=1,
                                     normalize_target=False)
  assert set(fit) == {"recon_motion_share", "recon_static_r2", "recon_motion_r2"}
  assert 0.5 < fit["recon_motion_share"] <= 1.0    # i.i.d. noise frames: nearly all motion
  assert fit["recon_motion_r2"] < 0.1
