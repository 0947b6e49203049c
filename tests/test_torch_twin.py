"""Tests of the PyTorch twin (svfap_jax/interop/torch_twin.py), at tiny sizes.

The comparison against the original SVFAP code runs only when --original-repo names a directory
holding its modeling_finetune.py and modeling_pretrain.py.
"""
import importlib.util
import pathlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from svfap_jax.interop import torch_twin as tt  # pylint: disable=g-import-not-at-top
from svfap_jax.models.registry import get_spec  # pylint: disable=g-import-not-at-top

_REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _seed():
  torch.manual_seed(0)


def _video(spec, batch=2, seed=1):
  gen = torch.Generator().manual_seed(seed)
  return torch.randn(batch, spec.in_chans, spec.num_frames, spec.img_size, spec.img_size,
                     generator=gen)


def _tube_mask(spec, visible_per_sample):
  """Tube mask keeping the listed spatial positions of every frame visible (True = masked)."""
  rows = []
  for visible in visible_per_sample:
    frame = torch.ones(spec.spatial_tokens, dtype=torch.bool)
    frame[list(visible)] = False
    rows.append(frame.repeat(spec.temporal_tokens))
  return torch.stack(rows)


def _pixel_mask(spec, mask):
  """Expands a token mask (B, N) to the pixels those tokens cover, (B, 1, T, H, W)."""
  g = spec.img_size // spec.patch_size
  m = mask.reshape(-1, spec.temporal_tokens, g, g).float()
  m = m.repeat_interleave(spec.tubelet_size, 1).repeat_interleave(spec.patch_size, 2)
  return m.repeat_interleave(spec.patch_size, 3).bool().unsqueeze(1)


def _shapes(model):
  return {k: tuple(v.shape) for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------- position table


def test_sincos_table_formula():
  n, dim = 7, 10
  table = tt.sincos_table(n, dim)
  assert table.shape == (n, dim) and table.dtype == np.float64
  for p in range(n):
    for j in range(dim):
      angle = p / 10000 ** (2 * (j // 2) / dim)
      want = np.sin(angle) if j % 2 == 0 else np.cos(angle)
      assert table[p, j] == pytest.approx(want, abs=1e-15)


@pytest.mark.parametrize("name", ["svfap_tiny", "vit_tiny"])
@pytest.mark.parametrize("pretrain", [False, True])
def test_position_tables_are_not_in_state_dict(name, pretrain):
  model = tt.build_torch_model(name, num_classes=3, pretrain=pretrain)
  assert not any("pos" in k for k in model.state_dict())
  spec = get_spec(name)
  encoder = model.encoder if pretrain else model
  np.testing.assert_array_equal(encoder.pos_table[0].numpy(),
                                tt.sincos_table(spec.num_patches, spec.embed_dim).astype(np.float32))
  if pretrain:
    np.testing.assert_array_equal(
        model.decoder_pos_table[0].numpy(),
        tt.sincos_table(spec.num_patches, spec.decoder_embed_dim).astype(np.float32))


# ----------------------------------------------------------------------------- state_dict layout


def test_tpsbt_classifier_state_dict():
  spec = get_spec("svfap_tiny")  # C=64, stages (2, 2, 2), G=4, hidden 32
  shapes = _shapes(tt.build_torch_model("svfap_tiny", num_classes=7))
  assert shapes == tt.expected_state_dict_shapes(spec, num_classes=7)
  c = 64
  assert shapes["patch_embed.proj.weight"] == (c, 3, 2, 16, 16)
  assert shapes["patch_embed.proj.bias"] == (c,)
  assert shapes["blocks.0.attn.qkv.weight"] == (3 * c, c)
  assert "blocks.0.attn.qkv.bias" not in shapes
  assert shapes["blocks.1.attn.q_bias"] == shapes["blocks.1.attn.v_bias"] == (c,)
  assert shapes["blocks.1.mlp.fc1.weight"] == (4 * c, c)
  assert not any(k.startswith(("blocks.0.cross", "blocks.1.cross")) for k in shapes)
  for i in range(2, 6):  # stage-2/3 blocks carry the cross-attention parameters
    assert shapes[f"blocks.{i}.cross_attn.q.weight"] == (c, c)
    assert shapes[f"blocks.{i}.cross_attn.kv.weight"] == (2 * c, c)
    assert shapes[f"blocks.{i}.cross_attn.q_bias"] == (c,)
    assert shapes[f"blocks.{i}.cross_attn.v_bias"] == (c,)
    assert shapes[f"blocks.{i}.cross_attn.proj.weight"] == (c, c)
    assert shapes[f"blocks.{i}.cross_norm1.weight"] == (c,)
    assert shapes[f"blocks.{i}.cross_norm2.bias"] == (c,)
    assert shapes[f"blocks.{i}.attn.qkv.weight"] == (3 * c, c)
  assert "blocks.6.norm1.weight" not in shapes
  for k in range(2):
    assert shapes[f"temporal_downsamples.{k}.weight"] == (c, c, 2)
    assert shapes[f"temporal_downsamples.{k}.bias"] == (c,)
    assert shapes[f"spatial_downsamples.{k}.norm.weight"] == (c,)
    assert shapes[f"spatial_downsamples.{k}.mlp.fc1.weight"] == (32, c)
    assert shapes[f"spatial_downsamples.{k}.mlp.fc2.weight"] == (4, 32)
    assert shapes[f"spatial_downsamples.{k}.mlp.fc2.bias"] == (4,)
  assert "temporal_downsamples.2.weight" not in shapes
  assert shapes["fc_norm.weight"] == (c,)
  assert shapes["head.weight"] == (7, c) and shapes["head.bias"] == (7,)
  assert not any("gamma" in k or k.startswith("norm.") for k in shapes)
  # 6 blocks: 2 x 13 plain-block tensors + 4 x (13 + 10 cross) tensors; 2 x 8 downsample tensors.
  assert len(shapes) == 2 + 2 * 13 + 4 * 23 + 2 * 8 + 2 + 2


def test_tpsbt_pretrain_state_dict():
  spec = get_spec("svfap_tiny")
  shapes = _shapes(tt.build_torch_model("svfap_tiny", pretrain=True))
  assert shapes == tt.expected_state_dict_shapes(spec, pretrain=True)
  classifier = _shapes(tt.build_torch_model("svfap_tiny", num_classes=7))
  encoder_keys = {k for k in classifier if not k.startswith(("fc_norm.", "head."))}
  assert {k[len("encoder."):] for k in shapes if k.startswith("encoder.")} == (
      encoder_keys | {"norm.weight", "norm.bias"})
  assert shapes["encoder_to_decoder.weight"] == (32, 64)
  assert "encoder_to_decoder.bias" not in shapes
  assert shapes["mask_token"] == (1, 1, 32)
  assert shapes["decoder.blocks.0.attn.qkv.weight"] == (96, 32)
  assert shapes["decoder.blocks.0.mlp.fc1.weight"] == (128, 32)
  assert "decoder.blocks.1.norm1.weight" not in shapes
  assert shapes["decoder.norm.weight"] == (32,)
  assert shapes["decoder.head.weight"] == (spec.patch_pixels, 32) == (1536, 32)
  assert shapes["decoder.head.bias"] == (1536,)


def test_vit_state_dicts():
  spec = get_spec("vit_tiny")
  cls = _shapes(tt.build_torch_model("vit_tiny", num_classes=5))
  assert cls == tt.expected_state_dict_shapes(spec, num_classes=5)
  assert {k.split(".")[1] for k in cls if k.startswith("blocks.")} == {"0", "1", "2"}
  assert not any("cross" in k or "downsample" in k for k in cls)
  assert {"fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"} <= set(cls)
  pre = _shapes(tt.build_torch_model("vit_tiny", pretrain=True))
  assert pre == tt.expected_state_dict_shapes(spec, pretrain=True)
  assert {"encoder.norm.weight", "mask_token", "encoder_to_decoder.weight"} <= set(pre)
  assert not any(k.startswith(("fc_norm", "head", "encoder.fc_norm", "encoder.head")) for k in pre)


def test_layer_scale_and_qkv_bias_switches():
  spec = get_spec("svfap_tiny", init_values=0.1, qkv_bias=False)
  shapes = _shapes(tt.build_torch_model(spec, num_classes=2, pretrain=False))
  assert shapes == tt.expected_state_dict_shapes(spec, num_classes=2)
  assert "blocks.0.gamma_1" in shapes and "blocks.0.gamma_2" in shapes
  assert "blocks.0.gamma_0" not in shapes
  assert shapes["blocks.3.gamma_0"] == (64,)
  assert not any("q_bias" in k or "v_bias" in k for k in shapes)
  pre = _shapes(tt.build_torch_model(spec, pretrain=True))
  assert "decoder.blocks.0.gamma_1" in pre


def test_num_classes_zero_returns_features():
  model = tt.build_torch_model("vit_tiny").eval()
  assert not any(k.startswith("head.") for k in model.state_dict())
  with torch.no_grad():
    assert model(_video(model.spec, batch=1)).shape == (1, 64)


# ----------------------------------------------------------------------------- classifier


@pytest.mark.parametrize("name", ["svfap_tiny", "vit_tiny"])
def test_classifier_outputs(name):
  spec = get_spec(name)
  x = _video(spec)
  plain = tt.build_torch_model(name, num_classes=7).eval()
  with torch.no_grad():
    logits = plain(x)
  assert logits.shape == (2, 7) and torch.isfinite(logits).all()
  for activation, fn in [("sigmoid", torch.sigmoid), ("tanh", torch.tanh), ("relu", torch.relu)]:
    model = tt.build_torch_model(name, num_classes=7, head_activation=activation).eval()
    model.load_state_dict(plain.state_dict(), strict=True)
    with torch.no_grad():
      torch.testing.assert_close(model(x), fn(logits), rtol=0, atol=0)


def test_init_scale_scales_head():
  torch.manual_seed(3)
  one = tt.build_torch_model("vit_tiny", num_classes=4)
  torch.manual_seed(3)
  tenth = tt.build_torch_model("vit_tiny", num_classes=4, init_scale=0.1)
  torch.testing.assert_close(tenth.head.weight, one.head.weight * 0.1)
  torch.testing.assert_close(tenth.blocks[0].attn.qkv.weight, one.blocks[0].attn.qkv.weight)


@pytest.mark.parametrize("name", ["svfap_tiny", "vit_tiny"])
def test_keep_temporal_dim(name):
  spec = get_spec(name)
  model = tt.build_torch_model(name, num_classes=3, keep_temporal_dim=True,
                               head_activation="tanh").eval()
  with torch.no_grad():
    out = model(_video(spec))
  assert out.shape == (2, spec.num_frames, 3)
  assert bool((out.abs() <= 1).all())
  # Frames inside one interpolation segment differ, so the time axis really carries information.
  assert not torch.allclose(out[:, 0], out[:, -1])


def test_keep_temporal_dim_interpolates_frame_features():
  spec = get_spec("svfap_tiny")
  model = tt.build_torch_model(spec, num_classes=2, keep_temporal_dim=True).eval()
  x = _video(spec, batch=1)
  with torch.no_grad():
    tokens, t_last = model.forward_tokens(model.embed(x))
    per_frame = tokens.reshape(1, t_last, -1, spec.embed_dim).mean(2)[0]  # (T_last, C)
    feats = model.forward_features(x)[0]
  assert t_last == 2
  scale = spec.num_frames / t_last
  want = []
  for i in range(spec.num_frames):
    src = min(max((i + 0.5) / scale - 0.5, 0.0), t_last - 1)
    lo = int(np.floor(src))
    hi = min(lo + 1, t_last - 1)
    w = src - lo
    want.append((1 - w) * per_frame[lo] + w * per_frame[hi])
  want = model.fc_norm(torch.stack(want))
  torch.testing.assert_close(feats, want, rtol=1e-5, atol=1e-5)


def test_bad_head_activation():
  with pytest.raises(ValueError, match="head_activation"):
    tt.build_torch_model("vit_tiny", num_classes=2, head_activation="softmax")


def test_drop_path_schedule_and_train_mode():
  model = tt.build_torch_model("svfap_tiny", num_classes=2, drop_path_rate=0.5)
  rates = [blk.drop_path.drop_prob for blk in model.blocks]
  np.testing.assert_allclose(rates, np.linspace(0, 0.5, 6), rtol=1e-6)
  x = _video(model.spec, batch=4)
  model.eval()
  with torch.no_grad():
    a, b = model(x), model(x)
  torch.testing.assert_close(a, b, rtol=0, atol=0)
  model.train()
  with torch.no_grad():
    c = model(x)
  assert not torch.allclose(a, c)


def test_spec_overrides():
  model = tt.build_torch_model(get_spec("svfap_tiny"), num_classes=2, stage_depths=[1, 2])
  assert model.spec.stage_depths == (1, 2)
  assert len(model.blocks) == 3 and len(model.temporal_downsamples) == 1
  with pytest.raises(TypeError):
    tt.build_torch_model("svfap_tiny", not_a_field=1)


# ----------------------------------------------------------------------------- pretraining


@pytest.mark.parametrize("name", ["svfap_tiny", "vit_tiny"])
def test_pretrain_default_ignores_masked_pixels(name):
  spec = get_spec(name)
  model = tt.build_torch_model(name, pretrain=True).eval()
  mask = _tube_mask(spec, [(0, 5), (3, 15)])  # 2 of 16 positions visible
  x = _video(spec)
  noise = _video(spec, seed=7) * 5
  x_changed = torch.where(_pixel_mask(spec, mask), noise, x)
  assert not torch.equal(x, x_changed)
  with torch.no_grad():
    out = model(x, mask)
    out_changed = model(x_changed, mask)
  n_masked = int(mask[0].sum())
  assert out.shape == (2, n_masked, spec.patch_pixels)
  assert torch.equal(out, out_changed)


def test_pretrain_quirks_see_masked_pixels():
  spec = get_spec("svfap_tiny")
  model = tt.build_torch_model(spec, pretrain=True, original_pretrain_quirks=True).eval()
  mask = _tube_mask(spec, [(0, 5), (3, 15)])
  x = _video(spec)
  x_changed = torch.where(_pixel_mask(spec, mask), _video(spec, seed=7) * 5, x)
  with torch.no_grad():
    assert not torch.equal(model(x, mask), model(x_changed, mask))


def test_pretrain_modes_share_weights_but_differ():
  spec = get_spec("svfap_tiny")
  paper = tt.build_torch_model(spec, pretrain=True).eval()
  quirks = tt.build_torch_model(spec, pretrain=True, original_pretrain_quirks=True).eval()
  quirks.load_state_dict(paper.state_dict(), strict=True)
  mask = _tube_mask(spec, [(0, 5), (3, 15)])
  x = _video(spec)
  with torch.no_grad():
    assert not torch.allclose(paper(x, mask), quirks(x, mask))


def test_pretrain_predictions_follow_token_order():
  """Predictions follow the visible tokens and come out in ascending masked-token order."""
  spec = get_spec("vit_tiny")
  model = tt.build_torch_model(spec, pretrain=True).eval()
  mask = torch.ones(1, spec.num_patches, dtype=torch.bool)
  mask[0, :4] = False
  x = _video(spec, batch=1)
  with torch.no_grad():
    out = model(x, mask)
    enc = model.encoder_to_decoder(model.encode(x, mask))
    table = model.decoder_pos_table
    tokens = torch.cat([enc + table[:, :4], model.mask_token + table[:, 4:]], dim=1)
    want = model.decoder(tokens, spec.num_patches - 4)
  torch.testing.assert_close(out, want, rtol=0, atol=0)


def test_mask_validation():
  spec = get_spec("svfap_tiny")
  model = tt.build_torch_model(spec, pretrain=True).eval()
  x = _video(spec)
  unequal = _tube_mask(spec, [(0, 1), (2,)])
  with pytest.raises(ValueError, match="same number of visible tokens"):
    model(x, unequal)
  not_tube = _tube_mask(spec, [(0, 1), (0, 1)])
  not_tube[0, spec.spatial_tokens + 0] = True  # frame 1 of sample 0: hide 0, show 2
  not_tube[0, spec.spatial_tokens + 2] = False
  not_tube[1, spec.spatial_tokens + 0] = True
  not_tube[1, spec.spatial_tokens + 2] = False
  with pytest.raises(ValueError, match="tube masking"):
    model(x, not_tube)
  with pytest.raises(ValueError, match="bool"):
    model(x, not_tube.long())
  with pytest.raises(ValueError, match="every token"):
    model(x, torch.ones(2, spec.num_patches, dtype=torch.bool))
  # A plain ViT only needs equal visible counts.
  vit = tt.build_torch_model("vit_tiny", pretrain=True).eval()
  with torch.no_grad():
    assert vit(x, not_tube).shape == (2, spec.num_patches - 2 * spec.temporal_tokens, 1536)


def test_quirks_reject_uneven_fusion_split():
  spec = get_spec("svfap_tiny")
  three_visible = _tube_mask(spec, [(0, 1, 2), (4, 8, 9)])
  quirks = tt.build_torch_model(spec, pretrain=True, original_pretrain_quirks=True).eval()
  with pytest.raises(ValueError, match="original fusion"):
    quirks(_video(spec), three_visible)
  paper = tt.build_torch_model(spec, pretrain=True).eval()
  with torch.no_grad():
    assert paper(_video(spec), three_visible).shape == (2, 8 * 13, 1536)


# ----------------------------------------------------------------------------- original code


def _checker():
  path = _REPO_ROOT / "tools" / "check_against_original.py"
  module_spec = importlib.util.spec_from_file_location("check_against_original", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize("overrides", [{}, {"init_values": 0.1, "stage_depths": (1, 3, 2)}])
def test_matches_original_code(overrides, original_repo):
  checker = _checker()
  finetune, pretrain = checker.load_original(original_repo)
  # svfap_tiny, except for the spatial-attention width the original hard-codes.
  spec = get_spec("svfap_tiny", spatial_hidden_dim=128, **overrides)
  cls = checker.compare_classifier(finetune, spec, num_classes=7)
  assert cls["max_rel"] < 1e-4, cls
  pre = checker.compare_pretrain(pretrain, spec, mask_ratio=0.75)
  assert pre["max_rel"] < 1e-4, pre
  assert pre["paper_max_abs"] > 0, pre
