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
