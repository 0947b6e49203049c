"""The one parameter reader: trained or EMA parameters, meta with the step, clear errors."""
import numpy as np
import pytest

from svfap_jax import checkpoint


def _save(workdir, state, step, meta):
  ckpt = checkpoint.RunCheckpointer(str(workdir), async_save=False)
  ckpt.save(step, state, meta=meta, force=True)
  ckpt.close()


def test_restore_params_trained_or_ema(tmp_path):
  params = {"head": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3)}}
  ema = {"head": {"kernel": np.full((2, 3), 0.5, np.float32)}}
  _save(tmp_path / "with_ema", {"params": params, "ema_params": ema}, 7, {"model": "m"})
  got, meta = checkpoint.restore_params(str(tmp_path / "with_ema"))
  np.testing.assert_array_equal(got["head"]["kernel"], params["head"]["kernel"])
  assert meta == {"model": "m", "step": 7}
  got, _ = checkpoint.restore_params(str(tmp_path / "with_ema" / "checkpoints"), prefer_ema=True)
  np.testing.assert_array_equal(got["head"]["kernel"], ema["head"]["kernel"])
  assert isinstance(got["head"]["kernel"], np.ndarray)
  # A run without an EMA copy gives its trained parameters either way; a saved step is kept.
  _save(tmp_path / "plain", {"params": params}, 3, {"step": 3})
  got, meta = checkpoint.restore_params(str(tmp_path / "plain"), prefer_ema=True)
  np.testing.assert_array_equal(got["head"]["kernel"], params["head"]["kernel"])
  assert meta["step"] == 3
  with pytest.raises(FileNotFoundError, match="no Orbax checkpoint"):
    checkpoint.restore_params(str(tmp_path / "nothing"))
