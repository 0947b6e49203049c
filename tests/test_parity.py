"""JAX model -> exported state_dict -> our PyTorch twin: same outputs in fp32.

The twin is an independent PyTorch implementation (svfap_jax/interop/torch_twin.py) that loads into
the original SVFAP modules with strict=True and matches them (tools/check_against_original.py).
Tolerance: max |jax - torch| / max |torch| <= 1e-4.
"""
import jax
import numpy as np
import pytest

import svfap_jax
from svfap_jax import masking

torch = pytest.importorskip("torch")
from svfap_jax.interop import torch_twin  # pylint: disable=g-import-not-at-top

RTOL = 1e-4


def _perturbed(model, seed=0, scale=0.05):
  """Adds noise to every parameter so zero biases / identity norms cannot hide a mapping error."""
  leaves, treedef = jax.tree_util.tree_flatten(model.params)
  rng = np.random.default_rng(seed)
  model.params = jax.tree_util.tree_unflatten(
      treedef, [np.asarray(x) + scale * rng.standard_normal(np.shape(x)).astype(np.float32)
                for x in leaves])
  return model


def _twin(model, **kw):
  twin = torch_twin.build_torch_model(model.spec, pretrain=model.pretrain, **kw)
  sd = {k: torch.from_numpy(np.array(v)) for k, v in model.state_dict().items()}
  twin.load_state_dict(sd, strict=True)
  return twin.eval()


def _rel_err(a, b):
  return np.abs(a - b).max() / np.abs(b).max()


def _video(spec, batch=2, seed=0):
  rng = np.random.default_rng(seed)
  return rng.standard_normal((batch, spec.num_frames, spec.img_size, spec.img_size, 3),
                             dtype=np.float32)


def _to_torch(video):
  return torch.from_numpy(np.ascontiguousarray(video.transpose(0, 4, 1, 2, 3)))


@pytest.mark.parametrize("name,kw", [
    ("svfap_tiny", dict(num_classes=5)),
    ("vit_tiny", dict(num_classes=5)),
    ("svfap_tiny", dict(num_classes=3, keep_temporal_dim=True, head_activation="tanh")),
    ("svfap_tiny", dict(num_classes=4, init_values=0.1)),   # layer scale gammas
])
def test_classifier_parity(name, kw):
  spec_kw = {k: kw.pop(k) for k in list(kw) if k == "init_values"}
  model = _perturbed(svfap_jax.create_model(name, seed=1, **kw, **spec_kw))
  twin = _twin(model, **kw)
  video = _video(model.spec)
  with torch.no_grad():
    want = twin(_to_torch(video)).numpy()
  got = model(video)
  assert got.shape == want.shape
  assert _rel_err(got, want) <= RTOL


@pytest.mark.parametrize("name,quirks,kind,ratio", [
    ("svfap_tiny", False, "tube", 0.9),
    ("svfap_tiny", True, "tube", 0.75),
    ("vit_tiny", False, "random", 0.9),
])
def test_pretrain_parity(name, quirks, kind, ratio):
  model = _perturbed(svfap_jax.create_model(name, pretrain=True, seed=2,
                                            original_pretrain_quirks=quirks))
  twin = _twin(model, original_pretrain_quirks=quirks)
  spec = model.spec
  key = jax.random.key(5)
  mask = np.array(masking.tube_mask(key, 2, spec.temporal_tokens, spec.spatial_tokens, ratio)
                  if kind == "tube" else masking.random_mask(key, 2, spec.num_patches, ratio))
  video = _video(spec)
  with torch.no_grad():
    want = twin(_to_torch(video), torch.from_numpy(mask)).numpy()
  got = model(video, mask)
  assert got.shape == want.shape == (2, int(mask[0].sum()), 1536)
  assert _rel_err(got, want) <= RTOL


@pytest.mark.slow
def test_svfap_base_parity():
  """Full-size classifier and pretraining model (default and quirks), batch 1."""
  video = _video(svfap_jax.get_spec("svfap_base"), batch=1)
  model = _perturbed(svfap_jax.create_model("svfap_base", num_classes=7), scale=0.01)
  with torch.no_grad():
    want = _twin(model, num_classes=7)(_to_torch(video)).numpy()
  assert _rel_err(model(video), want) <= RTOL
  spec = model.spec
  mask = np.array(masking.tube_mask(jax.random.key(0), 1, 8, 100, 0.9))
  for quirks in (False, True):
    p = _perturbed(svfap_jax.create_model("svfap_base", pretrain=True,
                                          original_pretrain_quirks=quirks), scale=0.01)
    with torch.no_grad():
      want = _twin(p, original_pretrain_quirks=quirks)(_to_torch(video),
                                                       torch.from_numpy(mask)).numpy()
    assert _rel_err(p(video, mask), want) <= RTOL
