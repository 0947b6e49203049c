"""Model structure, masking behaviour, compilation and PyTorch-format round trips (JAX side)."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import svfap_jax
from svfap_jax import api, masking
from svfap_jax.interop import files, load, mapping
from svfap_jax.models.classifier import linear_upsample_matrix


def _param_count(name, **kw):
  spec = svfap_jax.get_spec(name)
  module = api.build_module(spec, **kw)
  args, kwargs = api.example_inputs(spec, 1, kw.get("pretrain", False))
  shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), *args, **kwargs))["params"]
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(shapes))


@pytest.mark.parametrize("name,expected,tol", [
    ("svfap_base", 77.6e6, 0.1e6),      # paper: 77.6M
    ("svfap_small", 29.7e6, 0.1e6),     # measured on the original: 29.7M
    ("vanilla_vit_base", 76.4e6, 0.1e6),  # paper Table 3: 76.4M
    ("vit_base", 86.2e6, 0.1e6),        # VideoMAE ViT-B at 160 px: 86.2M
])
def test_parameter_counts(name, expected, tol):
  assert abs(_param_count(name, num_classes=7) - expected) <= tol


def test_pretrain_model_has_decoder_and_same_encoder_width():
  enc_only = _param_count("svfap_base", num_classes=0)
  full = _param_count("svfap_base", pretrain=True)
  d, c, pixels = 384, 512, 1536
  attn = 3 * d * d + 2 * d + (d * d + d)          # qkv, q/v biases, proj
  mlp = (d * 4 * d + 4 * d) + (4 * d * d + d)     # fc1, fc2
  block = attn + mlp + 4 * d                      # + two LayerNorms
  decoder = 4 * block + 2 * d + (d * pixels + pixels)
  # encoder.norm replaces fc_norm (same size); add encoder_to_decoder (no bias) and the mask token.
  assert full - enc_only == decoder + c * d + d


def _video(spec, b=2, seed=0):
  rng = np.random.default_rng(seed)
  return rng.standard_normal((b, spec.num_frames, spec.img_size, spec.img_size, 3)).astype(np.float32)


def _tube(spec, b, seed, ratio=0.9):
  return np.array(masking.tube_mask(jax.random.key(seed), b, spec.temporal_tokens,
                                     spec.spatial_tokens, ratio))


def test_tube_mask_layout():
  mask = _tube(svfap_jax.get_spec("svfap_base"), 4, 0)
  assert mask.shape == (4, 800) and mask.dtype == bool
  frames = mask.reshape(4, 8, 100)
  assert (frames == frames[:, :1]).all()           # same spatial positions in every slice
  assert (frames.sum(-1) == 90).all()              # 90 % of each slice masked
  assert not (frames[0, 0] == frames[1, 0]).all()  # differs across samples


@pytest.mark.parametrize("quirks", [False, True])
def test_masked_pixels_invisible_only_without_quirks(quirks):
  p = svfap_jax.create_model("svfap_tiny", pretrain=True, original_pretrain_quirks=quirks)
  spec = p.spec
  video = _video(spec)
  mask = _tube(spec, 2, 1, ratio=0.75)  # 4 visible per frame: even, as the quirks mode needs
  # Overwrite only the pixels of masked patches.
  token_mask = mask.reshape(2, spec.temporal_tokens, 4, 4)
  pixel_mask = np.repeat(np.repeat(np.repeat(token_mask, 2, 1), 16, 2), 16, 3)[..., None]
  changed = np.where(pixel_mask, _video(spec, seed=7) * 5, video)
  assert not np.allclose(changed, video)
  out, out_changed = p(video, mask), p(changed, mask)
  if quirks:
    assert np.abs(out - out_changed).max() > 1e-3   # the original leaks masked pixels
  else:
    np.testing.assert_array_equal(out, out_changed)


def test_new_mask_does_not_recompile():
  p = svfap_jax.create_model("svfap_tiny", pretrain=True)
  video = _video(p.spec)
  outs = [p(video, _tube(p.spec, 2, seed)) for seed in range(3)]
  assert p.trace_count == 1
  assert not np.allclose(outs[0], outs[1])
  p(video, _tube(p.spec, 2, 9, ratio=0.5))  # another visible count is another program
  assert p.trace_count == 2


def test_mask_validation_messages():
  p = svfap_jax.create_model("svfap_tiny", pretrain=True)
  video = _video(p.spec)
  bad = _tube(p.spec, 2, 0)
  # In the first slice only, swap one masked and one visible position: counts stay, tube breaks.
  first = bad[0, :16]
  i, j = np.flatnonzero(first)[0], np.flatnonzero(~first)[0]
  first[i], first[j] = False, True
  with pytest.raises(ValueError, match="tube mask"):
    p(video, bad)
  with pytest.raises(ValueError, match="same number of visible"):
    ragged = _tube(p.spec, 2, 0)
    ragged[1] = _tube(p.spec, 1, 3, ratio=0.5)[0]
    p(video, ragged)


def test_vit_pretraining_accepts_random_masks():
  p = svfap_jax.create_model("vit_tiny", pretrain=True)
  mask = np.asarray(masking.random_mask(jax.random.key(0), 2, p.spec.num_patches, 0.9))
  out = p(_video(p.spec), mask)
  assert out.shape == (2, int(0.9 * p.spec.num_patches), 1536)


@pytest.mark.parametrize("name", ["svfap_tiny", "vit_tiny"])
def test_classifier_outputs(name):
  video = _video(svfap_jax.get_spec(name))
  m = svfap_jax.create_model(name, num_classes=3, head_activation="sigmoid")
  out = m(video)
  assert out.shape == (2, 3) and (out > 0).all() and (out < 1).all()
  per_frame = svfap_jax.create_model(name, num_classes=2, keep_temporal_dim=True)(video)
  assert per_frame.shape == (2, 16, 2)


def test_linear_upsample_matches_half_pixel_interpolation():
  w = linear_upsample_matrix(2, 16)
  out = w @ np.array([0.0, 1.0])
  # Half-pixel centres: outputs clamp to the ends for the first/last quarter, linear in between.
  np.testing.assert_allclose(out[:4], 0.0)
  np.testing.assert_allclose(out[-4:], 1.0)
  np.testing.assert_allclose(np.diff(out[4:12]), 1 / 8, rtol=1e-6)
  np.testing.assert_allclose(w.sum(1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("pretrain,ext", [(False, ".pth"), (True, ".safetensors"),
                                          (False, ".safetensors"), (True, ".pth")])
def test_export_import_round_trip_is_exact(tmp_path, pretrain, ext):
  kw = dict(pretrain=True) if pretrain else dict(num_classes=4)
  m = svfap_jax.create_model("svfap_tiny", seed=3, **kw)
  path = svfap_jax.export_torch(m, str(tmp_path / f"model{ext}"))
  m2 = svfap_jax.import_torch(path, "svfap_tiny", seed=99, verbose=False, **kw)
  for a, b in zip(jax.tree_util.tree_leaves(m.params), jax.tree_util.tree_leaves(m2.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_state_dict_keys_and_layouts():
  m = svfap_jax.create_model("svfap_tiny", num_classes=7)
  sd = m.state_dict()
  c = m.spec.embed_dim
  assert sd["patch_embed.proj.weight"].shape == (c, 3, 2, 16, 16)
  assert sd["patch_embed.proj.bias"].shape == (c,)
  assert sd["blocks.0.attn.qkv.weight"].shape == (3 * c, c)
  assert "blocks.0.attn.qkv.bias" not in sd
  assert sd["blocks.0.attn.q_bias"].shape == (c,)
  assert sd["temporal_downsamples.0.weight"].shape == (c, c, 2)
  assert sd["spatial_downsamples.1.mlp.fc1.weight"].shape == (m.spec.spatial_hidden_dim, c)
  assert sd["spatial_downsamples.1.mlp.fc2.weight"].shape == (m.spec.num_bottleneck_tokens,
                                                              m.spec.spatial_hidden_dim)
  last = m.spec.depth - 1
  assert sd[f"blocks.{last}.cross_attn.kv.weight"].shape == (2 * c, c)
  assert {"fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"} <= set(sd)
  assert not any("pos_embed" in k for k in sd)
  p = svfap_jax.create_model("svfap_tiny", pretrain=True).state_dict()
  assert p["mask_token"].shape == (1, 1, 32)
  assert p["encoder_to_decoder.weight"].shape == (32, c)
  assert p["decoder.head.weight"].shape == (1536, 32)
  assert "encoder.norm.weight" in p and "encoder_to_decoder.bias" not in p


def test_import_adapts_prefixes_and_heads(tmp_path):
  src = svfap_jax.create_model("svfap_tiny", num_classes=7, seed=1)
  sd = {"module." + k: v for k, v in src.state_dict().items()}
  path = files.save_state_dict(sd, str(tmp_path / "ddp.safetensors"))
  m = svfap_jax.import_torch(path, "svfap_tiny", num_classes=3, verbose=False)
  got, want = m.state_dict(), src.state_dict()
  np.testing.assert_array_equal(got["blocks.0.attn.qkv.weight"], want["blocks.0.attn.qkv.weight"])
  assert got["head.weight"].shape == (3, m.spec.embed_dim)  # replaced, not loaded


def test_import_refuses_shape_mismatch_with_short_diagnosis(tmp_path):
  src = svfap_jax.create_model("svfap_tiny", num_classes=7, embed_dim=96)
  path = svfap_jax.export_torch(src, str(tmp_path / "wide.pth"))
  with pytest.raises(load.CheckpointMismatchError) as err:
    svfap_jax.import_torch(path, "svfap_tiny", num_classes=7, verbose=False)
  msg = str(err.value)
  assert "nothing was loaded" in msg
  assert "patch_embed.proj.weight: file (96, 3, 2, 16, 16) vs model (64, 3, 2, 16, 16)" in msg
  target = svfap_jax.create_model("svfap_tiny", num_classes=7).state_dict()
  wrong = [k for k, v in src.state_dict().items()
           if not k.startswith("head.") and v.shape != target[k].shape]
  assert f"{len(wrong)} key(s) with another shape" in msg and len(msg) < 1500
  assert sorted(k for k, _, _ in err.value.mismatched) == sorted(wrong)


def test_pth_reader_without_torch_matches_torch(tmp_path, monkeypatch):
  m = svfap_jax.create_model("svfap_tiny", num_classes=2)
  path = svfap_jax.export_torch(m, str(tmp_path / "m.pth"))
  with_torch = files.load_state_dict(path)
  without = files._unwrap_state_dict(files._read_pth_without_torch(path), path)
  assert with_torch.keys() == without.keys()
  for k in with_torch:
    np.testing.assert_array_equal(with_torch[k], without[k])


def test_pth_reader_refuses_code(tmp_path):
  import pickle
  import torch

  class Evil:
    def __reduce__(self):
      return (os.system, ("echo pwned",))
  path = str(tmp_path / "evil.pth")
  torch.save({"model": {"w": torch.zeros(2)}, "x": Evil()}, path)
  with pytest.raises(files.CheckpointFormatError, match="refusing|refused"):
    files._read_pth_without_torch(path)
  with pytest.raises(files.CheckpointFormatError):
    files.load_state_dict(path)
