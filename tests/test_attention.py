"""Attention kernels (`ModelSpec.attention_impl`) against the float32 reference attention.

Tolerances, for q, k, v drawn from N(0, 1) (outputs and gradients are O(1)):
  float32: max |kernel - reference| <= 1e-5 for outputs and for the gradients of q, k and v.
  bfloat16 (compute dtype of a bf16 model): <= 2e-2 absolute on outputs and gradients, against
  the float32 reference of the same bf16-rounded inputs.
Every kernel that can run on this machine is checked; cuDNN only where JAX runs on a GPU.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import svfap_jax
from svfap_jax import masking
from svfap_jax.models import layers
from svfap_jax.models.registry import ATTENTION_IMPLS, get_spec

F32_TOL = 1e-5
BF16_TOL = 2e-2


def _kernels_here():
  kernels = ["xla", "chunked"]
  if jax.default_backend() == "gpu":
    kernels.append("cudnn")
  torch_here = layers._torch_available()  # pylint: disable=protected-access
  if jax.default_backend() == "cpu" and torch_here:
    kernels.append("aten")
  return kernels


def _qkv(b, n, m, h, d, seed=0, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  draw = lambda length: jnp.asarray(rng.standard_normal((b, length, h, d)), jnp.float32)
  q, k, v, g = draw(n), draw(m), draw(m), draw(n)
  return q.astype(dtype), k.astype(dtype), v.astype(dtype), g


def _run(kernel, q, k, v, chunk=None):
  if kernel == "chunked":
    return layers.chunked_attention(q, k, v, chunk=chunk)
  if kernel == "aten":
    return layers.aten_attention(q, k, v)
  if kernel == "reference":
    return layers.reference_attention(q, k, v)
  return jax.nn.dot_product_attention(q, k, v, implementation=kernel)


def _grads(kernel, q, k, v, g, chunk=None):
  loss = lambda q, k, v: jnp.sum(_run(kernel, q, k, v, chunk).astype(jnp.float32) * g)
  return jax.grad(loss, argnums=(0, 1, 2))(q, k, v)


def _max_err(a, b):
  return float(jnp.max(jnp.abs(jnp.asarray(a, jnp.float32) - jnp.asarray(b, jnp.float32))))


@pytest.mark.parametrize("kernel", _kernels_here())
@pytest.mark.parametrize("b,n,m,h,d,chunk", [
    (2, 37, 37, 4, 16, 8),       # self-attention, ragged last chunk (37 = 4 * 8 + 5)
    (2, 50, 7, 2, 32, 16),       # cross-attention to a few bottleneck tokens
    (1, 9, 45, 3, 8, None),      # few queries, many keys (bottleneck -> full resolution)
    (1, 450, 450, 2, 16, None),  # longer than ATTENTION_CHUNK: the default chunking
])
def test_float32_kernels_match_reference(kernel, b, n, m, h, d, chunk):
  if kernel == "cudnn":
    pytest.skip("cuDNN takes bfloat16/float16 only; see the bfloat16 test")
  q, k, v, g = _qkv(b, n, m, h, d)
  want = _run("reference", q, k, v)
  got = jax.jit(lambda q, k, v: _run(kernel, q, k, v, chunk))(q, k, v)
  assert got.shape == want.shape == (b, n, h, d) and got.dtype == jnp.float32
  assert _max_err(got, want) <= F32_TOL
  want_grads = _grads("reference", q, k, v, g)
  got_grads = jax.jit(lambda q, k, v: _grads(kernel, q, k, v, g, chunk))(q, k, v)
  for name, a, b_ in zip("qkv", got_grads, want_grads):
    assert _max_err(a, b_) <= F32_TOL, f"d{name}"


@pytest.mark.parametrize("kernel", _kernels_here())
def test_bfloat16_kernels_match_reference(kernel):
  if kernel == "aten":
    pytest.skip("the aten kernel is float32 only (auto picks chunked for bfloat16 on CPU)")
  q, k, v, g = _qkv(2, 64, 64, 2, 64, seed=1, dtype=jnp.bfloat16)
  want = _run("reference", q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32))
  got = jax.jit(lambda q, k, v: _run(kernel, q, k, v, 24))(q, k, v)
  assert got.dtype == jnp.bfloat16
  assert _max_err(got, want) <= BF16_TOL
  want_grads = _grads("reference", *(t.astype(jnp.float32) for t in (q, k, v)), g)
  got_grads = jax.jit(lambda q, k, v: _grads(kernel, q, k, v, g, 24))(q, k, v)
  for name, a, b_ in zip("qkv", got_grads, want_grads):
    assert _max_err(a, b_) <= BF16_TOL * max(1.0, float(jnp.abs(b_).max())), f"d{name}"


def test_reference_is_softmax_attention():
  """The reference itself, against numpy in float64 on a hand-sized example."""
  q, k, v, _ = _qkv(1, 3, 4, 1, 2, seed=2)
  qn, kn, vn = (np.asarray(t, np.float64)[0, :, 0] for t in (q, k, v))
  logits = qn @ kn.T / np.sqrt(2.0)
  weights = np.exp(logits - logits.max(1, keepdims=True))
  weights /= weights.sum(1, keepdims=True)
  np.testing.assert_allclose(np.asarray(layers.reference_attention(q, k, v))[0, :, 0],
                             weights @ vn, atol=1e-6)


@pytest.mark.parametrize("backend,dtype,head_dim,want", [
    ("cpu", jnp.float32, 64, "chunked"),  # an explicit backend: a program compiled for elsewhere
    ("cpu", jnp.bfloat16, 64, "chunked"),
    ("gpu", jnp.bfloat16, 64, "cudnn"),
    ("gpu", jnp.float16, 128, "cudnn"),
    ("gpu", jnp.float32, 64, "xla"),      # cuDNN has no float32 flash attention
    ("gpu", jnp.bfloat16, 36, "xla"),     # head dim not a multiple of 8
    ("gpu", jnp.bfloat16, 160, "xla"),    # head dim above 128
    ("tpu", jnp.bfloat16, 64, "xla"),
])
def test_auto_picks_kernel_per_backend(backend, dtype, head_dim, want):
  assert layers.resolve_attention_impl("auto", dtype=dtype, head_dim=head_dim,
                                       backend=backend) == want


def test_auto_picks_aten_for_this_process_only_when_it_can_run(monkeypatch):
  """On a one-device CPU process with torch, float32 gets aten; bfloat16 and no torch chunked."""
  if jax.default_backend() != "cpu" or jax.device_count() != 1:
    pytest.skip("needs a one-device CPU process")
  monkeypatch.setattr(layers, "_torch_available", lambda: True)
  assert layers.resolve_attention_impl("auto", dtype=jnp.float32, head_dim=64) == "aten"
  assert layers.resolve_attention_impl("auto", dtype=jnp.bfloat16, head_dim=64) == "chunked"
  assert layers.resolve_attention_impl("auto", dtype=jnp.float32, head_dim=64,
                                       backend="cpu") == "chunked"
  monkeypatch.setattr(layers, "_torch_available", lambda: False)
  assert layers.resolve_attention_impl("auto", dtype=jnp.float32, head_dim=64) == "chunked"
  with pytest.raises(ValueError, match="torch is not installed"):
    layers.resolve_attention_impl("aten", dtype=jnp.float32, head_dim=64)


def test_aten_kernel_under_vmap_and_leading_dims():
  """The host callback flattens leading dims, so vmap (broadcast_all) gives the reference."""
  if "aten" not in _kernels_here():
    pytest.skip("needs a CPU backend with torch")
  q, k, v, g = _qkv(6, 20, 11, 2, 8, seed=3)
  split = lambda t: t.reshape(3, 2, *t.shape[1:])
  shared_v = split(v)[1]  # unbatched: broadcast to every vmapped call
  got = jax.jit(jax.vmap(layers.aten_attention, in_axes=(0, 0, None)))(
      split(q), split(k), shared_v)
  want = jax.vmap(layers.reference_attention, in_axes=(0, 0, None))(split(q), split(k), shared_v)
  assert got.shape == (3, 2, 20, 2, 8)
  assert _max_err(got, want) <= F32_TOL
  loss = lambda f: lambda q: jnp.sum(jax.vmap(f, in_axes=(0, 0, None))(q, split(k), shared_v)
                                     * split(g))
  assert _max_err(jax.jit(jax.grad(loss(layers.aten_attention)))(split(q)),
                  jax.grad(loss(layers.reference_attention))(split(q))) <= F32_TOL


def test_forced_kernels_and_errors():
  assert layers.resolve_attention_impl("xla", dtype=jnp.float32, head_dim=64,
                                       backend="gpu") == "xla"
  assert layers.resolve_attention_impl("chunked", dtype=jnp.float32, head_dim=64,
                                       backend="tpu") == "chunked"
  with pytest.raises(ValueError, match="NVIDIA GPUs only"):
    layers.resolve_attention_impl("cudnn", dtype=jnp.bfloat16, head_dim=64, backend="cpu")
  with pytest.raises(ValueError, match="float32"):
    layers.resolve_attention_impl("cudnn", dtype=jnp.float32, head_dim=64, backend="gpu")
  with pytest.raises(ValueError, match="multiple of 8"):
    layers.resolve_attention_impl("cudnn", dtype=jnp.bfloat16, head_dim=12, backend="gpu")
  with pytest.raises(ValueError, match="PyTorch's flash attention is called on the CPU"):
    layers.resolve_attention_impl("aten", dtype=jnp.float32, head_dim=64, backend="gpu")
  with pytest.raises(ValueError, match="takes float32"):
    layers.resolve_attention_impl("aten", dtype=jnp.bfloat16, head_dim=64, backend="cpu")
  with pytest.raises(ValueError, match="choose auto"):
    layers.resolve_attention_impl("flash", dtype=jnp.float32, head_dim=64, backend="cpu")


def test_spec_validates_attention_impl():
  assert get_spec("svfap_tiny").attention_impl == "auto"
  assert set(ATTENTION_IMPLS) == {"auto", "xla", "cudnn", "chunked", "aten"}
  with pytest.raises(ValueError, match="attention_impl='flash'"):
    get_spec("svfap_tiny", attention_impl="flash")


def _perturbed_params(model, scale=0.05):
  leaves, treedef = jax.tree_util.tree_flatten(model.params)
  rng = np.random.default_rng(0)
  return jax.tree_util.tree_unflatten(
      treedef, [x + scale * rng.standard_normal(np.shape(x)).astype(np.float32) for x in leaves])


# One block per stage keeps compilation short; every attention call site is still there.
_SHALLOW = {"svfap_tiny": (1, 1, 1), "vit_tiny": (2,)}


@pytest.mark.parametrize("name,pretrain", [("svfap_tiny", False), ("svfap_tiny", True),
                                           ("vit_tiny", True)])
def test_models_agree_across_kernels(name, pretrain, monkeypatch):
  """Whole models (outputs and parameter gradients) with every kernel; same parameter tree.

  The chunk size is lowered so the tiny models' 128 tokens run through several chunks.
  """
  monkeypatch.setattr(layers, "ATTENTION_CHUNK", 48)
  models = {kernel: svfap_jax.create_model(name, pretrain=pretrain,
                                           num_classes=0 if pretrain else 3, seed=4,
                                           attention_impl=kernel, stage_depths=_SHALLOW[name])
            for kernel in ("xla", "chunked", "aten") if kernel in _kernels_here()}
  trees = {k: jax.tree_util.tree_structure(m.params) for k, m in models.items()}
  assert all(tree == trees["xla"] for tree in trees.values())
  params = _perturbed_params(models["xla"])
  spec = models["xla"].spec
  rng = np.random.default_rng(1)
  video = jnp.asarray(rng.standard_normal((2, spec.num_frames, spec.img_size, spec.img_size, 3)),
                      jnp.float32)
  mask = masking.tube_mask(jax.random.key(0), 2, spec.temporal_tokens,
                                     spec.spatial_tokens, 0.75)
  visible = spec.num_patches - int(np.asarray(mask)[0].sum())
  outs, grads = {}, {}
  for kernel, model in models.items():
    def loss(p, model=model):
      if pretrain:
        out = model.module.apply({"params": p}, video, mask, num_visible=visible)
      else:
        out = model.module.apply({"params": p}, video)
      return jnp.sum(out ** 2), out
    (_, outs[kernel]), grads[kernel] = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
  scale = float(jnp.abs(outs["xla"]).max())
  for kernel in set(models) - {"xla"}:
    assert _max_err(outs[kernel], outs["xla"]) <= 1e-5 * max(1.0, scale), kernel
    for (path, a), b_ in zip(jax.tree_util.tree_leaves_with_path(grads[kernel]),
                             jax.tree_util.tree_leaves(grads["xla"])):
      assert _max_err(a, b_) <= 1e-4 * max(1.0, float(jnp.abs(b_).max())), (kernel, path)


def test_attention_dropout_runs_with_every_kernel():
  shallow = dict(stage_depths=(1,), num_classes=2)
  video = jnp.asarray(np.random.default_rng(0).standard_normal((1, 16, 64, 64, 3)), jnp.float32)
  for kernel in [k for k in _kernels_here() if k != "cudnn"]:
    model = svfap_jax.create_model("vit_tiny", attn_drop_rate=0.3, attention_impl=kernel,
                                   **shallow)
    train = jax.jit(lambda key, model=model: model.module.apply(
        {"params": model.params}, video, deterministic=False, rngs={"dropout": key}))
    a, b_ = train(jax.random.key(0)), train(jax.random.key(1))
    assert a.shape == (1, 2) and not np.allclose(a, b_)
    np.testing.assert_allclose(model(video), svfap_jax.create_model(
        "vit_tiny", attention_impl=kernel, **shallow)(video), atol=1e-6)


@pytest.mark.parametrize("parts,dtype,tol", [(3, jnp.float32, 1e-6), (2, jnp.bfloat16, 1e-2)])
def test_split_projection_is_the_fused_dense_cut_in_parts(parts, dtype, tol):
  """Same `kernel` parameter (shape, init, axes) as the fused bias-free Dense it replaces, and
  the same outputs and kernel gradient as slicing that Dense's output (float64 numpy reference)."""
  c, f = 24, 8
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 5, c)), jnp.float32)
  split = layers.SplitProjection(f, parts, (layers.EMBED, layers.HEADS), dtype=dtype)
  fused = layers.dense(parts * f, (layers.EMBED, layers.HEADS), name="qkv", use_bias=False)
  p_split = split.init(jax.random.key(3), x)["params"]
  p_fused = fused.init(jax.random.key(3), x)["params"]
  assert jax.tree_util.tree_structure(p_split) == jax.tree_util.tree_structure(p_fused)
  np.testing.assert_array_equal(nn.meta.unbox(p_split)["kernel"], nn.meta.unbox(p_fused)["kernel"])
  assert p_split["kernel"].names == p_fused["kernel"].names == (layers.EMBED, layers.HEADS)
  kernel = np.asarray(nn.meta.unbox(p_split)["kernel"], np.float64)
  outs = split.apply({"params": p_split}, x)
  want = np.asarray(x, np.float64) @ kernel
  assert len(outs) == parts and all(o.dtype == dtype and o.shape == (2, 5, f) for o in outs)
  for i, out in enumerate(outs):
    np.testing.assert_allclose(np.asarray(out, np.float64), want[..., i * f:(i + 1) * f],
                               atol=tol, rtol=tol)
  # Gradient of sum_i <w_i, out_i> w.r.t. the kernel is x^T [w_1 .. w_parts].
  w = np.random.default_rng(1).standard_normal((2, 5, parts * f))
  grad = jax.grad(lambda p: sum(jnp.sum(o.astype(jnp.float32) * w[..., i * f:(i + 1) * f])
                                for i, o in enumerate(split.apply({"params": p}, x))))(p_split)
  want_grad = np.einsum("bnc,bnk->ck", np.asarray(x, np.float64), w)
  np.testing.assert_allclose(np.asarray(nn.meta.unbox(grad)["kernel"]), want_grad,
                             atol=tol * 10, rtol=tol)
