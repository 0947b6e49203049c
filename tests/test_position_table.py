"""Position tables (models/layers.position_table) and the models that use them."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from svfap_jax import api
from svfap_jax.interop import torch_twin
from svfap_jax.models import layers, registry
from svfap_jax.train import export


def _sinusoid(p: int, j: int, dim: int) -> float:
  """One entry of the sinusoid table, from its formula (sine on even, cosine on odd channels)."""
  angle = p / 10000 ** (2 * (j // 2) / dim)
  return math.sin(angle) if j % 2 == 0 else math.cos(angle)


def test_sincos_1d_is_the_original_flat_table():
  table = layers.position_table("sincos_1d", (8, 4, 4), 32)
  np.testing.assert_allclose(table, torch_twin.sincos_table(128, 32), atol=1e-6)


def test_sincos_3d_concatenates_per_axis_sinusoids():
  grid, dim = (4, 3, 5), 40   # t: 10 channels, h: 14, w: 16
  table = layers.position_table("sincos_3d", grid, dim)
  assert table.shape == (60, 40) and table.dtype == np.float32
  for row, (t, h, w) in enumerate(np.ndindex(*grid)):
    expect = ([_sinusoid(t, j, 10) for j in range(10)] + [_sinusoid(h, j, 14) for j in range(14)]
              + [_sinusoid(w, j, 16) for j in range(16)])
    np.testing.assert_allclose(table[row], expect, atol=1e-6, err_msg=f"token {(t, h, w)}")


def test_unknown_table_is_refused():
  with pytest.raises(ValueError, match="sincos_1d or sincos_3d"):
    layers.position_table("learned", (2, 2, 2), 8)
  with pytest.raises(ValueError, match="pos_embed"):
    registry.get_spec("svfap_tiny", pos_embed="rope")


def test_demo_decoder_uses_its_table():
  """svfap_demo's decoder on the per-axis table, its encoder on the original's: a 1-D decoder
  table gives different outputs on the same weights."""
  spec = registry.get_spec("svfap_demo")
  assert spec.token_grid == (4, 8, 8)
  assert (spec.pos_embed, spec.decoder_table) == ("sincos_1d", "sincos_3d")
  video = jax.random.normal(jax.random.key(1), (2, 8, 64, 64, 3))
  mask = np.zeros((2, 4, 64), bool)
  mask[:, :, 6:] = True   # tube mask: the same 6 visible tokens in every frame
  mask = jnp.asarray(mask.reshape(2, -1))
  outs = []
  for table in ("sincos_3d", "sincos_1d"):
    # One block per stage keeps compilation short; the table enters the decoder's input.
    s = registry.get_spec("svfap_demo", decoder_pos_embed=table, stage_depths=(1, 1, 1))
    module = api.build_module(s, pretrain=True)
    params = jax.jit(lambda k, m=module, s=s: api.init_params(m, s, k, True)[0])(jax.random.key(0))
    if outs:
      params = outs[0][1]   # same weights: only the table differs
    apply = jax.jit(lambda p, m=module: m.apply({"params": p}, video, mask, num_visible=24))
    outs.append((apply(params), params))
  assert outs[0][0].shape == (2, 256 - 24, spec.patch_pixels)
  assert float(jnp.abs(outs[0][0] - outs[1][0]).max()) > 1e-3


def test_decoder_table_is_validated():
  with pytest.raises(ValueError, match="decoder_pos_embed='learned'"):
    registry.get_spec("svfap_tiny", decoder_pos_embed="learned")
  assert registry.get_spec("svfap_tiny").decoder_table == "sincos_1d"


@pytest.mark.parametrize("model,params,field", [
    ("encoder_3d", {"encoder": {}}, "pos_embed"),
    # A pretraining checkpoint carries the decoder, whose table the original code would replace.
    ("svfap_demo", {"encoder": {}, "decoder": {}}, "decoder_pos_embed"),
])
def test_export_refuses_a_table_the_original_code_lacks(monkeypatch, tmp_path, capsys, model,
                                                        params, field):
  monkeypatch.setitem(registry.MODELS, "encoder_3d",
                      registry.get_spec("svfap_tiny", pos_embed="sincos_3d"))
  monkeypatch.setattr(export.checkpoint, "restore_params",
                      lambda path: (params, {"model": model, "step": 1}))
  out = tmp_path / "m.pth"
  assert export.export_main(["--workdir", str(tmp_path), "--out", str(out)]) == 2
  assert not out.exists()
  assert f" {field}='sincos_3d'" in capsys.readouterr().err


def test_export_takes_a_fine_tuned_demo_model(monkeypatch, tmp_path):
  """svfap_demo's encoder keeps the original table, so its fine-tuned weights export."""
  from svfap_jax.interop import files
  spec = registry.get_spec("svfap_demo")
  module = api.build_module(spec, pretrain=False, num_classes=7)
  params = jax.jit(lambda k: api.init_params(module, spec, k, False)[0])(jax.random.key(0))
  monkeypatch.setattr(export.checkpoint, "restore_params",
                      lambda path: (jax.device_get(params), {"model": "svfap_demo", "step": 1}))
  out = tmp_path / "m.pth"
  assert export.export_main(["--workdir", str(tmp_path), "--out", str(out)]) == 0
  state = files.load_state_dict(str(out))
  assert state["head.weight"].shape == (7, 64) and not any(k.startswith("decoder") for k in state)


def test_import_refuses_a_target_table_the_original_lacks(tmp_path, capsys):
  """PyTorch checkpoints carry the 1-D table's training; a per-axis decoder would misplace them.
  The check comes before the file is read (the path here does not exist)."""
  argv = ["--torch", str(tmp_path / "absent.pth"), "--workdir", str(tmp_path / "w"),
          "--model", "svfap_demo", "--pretrain"]
  assert export.import_main(argv) == 2
  err = capsys.readouterr().err
  assert "decoder_pos_embed='sincos_3d'" in err
  assert "without --pretrain" in err and not (tmp_path / "w").exists()
  # The classifier of the same spec keeps the original table and gets past the check.
  with pytest.raises(FileNotFoundError):
    export.import_main(argv[:-1])
