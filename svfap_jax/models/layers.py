"""Transformer building blocks shared by the TPSBT, the plain ViT and the MAE decoder.

Parameter names follow the PyTorch SVFAP modules (`qkv`, `q_bias`, `cross_norm1`, `fc1`, ...) so that
the mapping to a PyTorch state_dict in `svfap_jax.interop` is a mechanical renaming. Every parameter
carries logical axis names; `svfap_jax.sharding` maps them onto mesh axes.
"""
from __future__ import annotations

import functools
import warnings
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any
Initializer = Callable[..., jax.Array]

# Logical axis names used on parameters.
EMBED = "embed"        # model width (the residual stream)
HEADS = "heads"        # concatenated attention heads (q/k/v outputs, proj input)
MLP = "mlp"            # MLP hidden width
EMBED_OUT = "embed_out"  # output width of square projections that are not attention/MLP
CLASSES = "classes"

TRUNC_NORMAL_02 = nn.initializers.truncated_normal(stddev=0.02)
XAVIER_UNIFORM = nn.initializers.xavier_uniform()
# PyTorch's default Conv/Linear init: uniform(+-1/sqrt(fan_in)).
TORCH_DEFAULT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def sincos_table(num_positions: int, dim: int) -> np.ndarray:
  """Fixed sinusoid position table (num_positions, dim); sin on even, cos on odd channels."""
  pos = np.arange(num_positions, dtype=np.float64)[:, None]
  rates = np.power(10000.0, 2.0 * (np.arange(dim) // 2) / dim)
  angles = pos / rates[None, :]
  table = np.empty_like(angles)
  table[:, 0::2] = np.sin(angles[:, 0::2])
  table[:, 1::2] = np.cos(angles[:, 1::2])
  return table.astype(np.float32)


def position_table(kind: str, grid: tuple[int, int, int], dim: int) -> np.ndarray:
  """Fixed position table of a (t, h, w) token grid, float32 (t * h * w, dim), rows in (t, h, w)
  order.

  Args:
    kind: "sincos_1d": `sincos_table` over the flattened token index (the original SVFAP /
      VideoMAE table). "sincos_3d": separate sinusoid tables of t, h and w, concatenated along
      channels (t gets 2 * (dim // 8) channels, h and w split the rest), so tokens in the same row,
      column or time step share a sub-vector whatever the grid's size.
    grid: tokens along time, rows, columns.
    dim: channels.

  Raises:
    ValueError: unknown `kind`.
  """
  t, h, w = grid
  if kind == "sincos_1d":
    return sincos_table(t * h * w, dim)
  if kind != "sincos_3d":
    raise ValueError(f"unknown position table {kind!r}; use sincos_1d or sincos_3d")
  dim_t = 2 * (dim // 8)
  dim_h = 2 * ((dim - dim_t) // 4)
  dim_w = dim - dim_t - dim_h
  ti, hi, wi = np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing="ij")
  return np.concatenate([sincos_table(t, dim_t)[ti.reshape(-1)],
                         sincos_table(h, dim_h)[hi.reshape(-1)],
                         sincos_table(w, dim_w)[wi.reshape(-1)]], axis=1)


def _partitioned(init: Initializer, axes: tuple[Optional[str], ...]) -> Initializer:
  return nn.with_logical_partitioning(init, axes)


def dense(features: int, axes: tuple[Optional[str], Optional[str]], *, name: str,
          use_bias: bool = True, kernel_init: Initializer = TRUNC_NORMAL_02,
          dtype: Dtype = jnp.float32) -> nn.Dense:
  return nn.Dense(
      features, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32, name=name,
      kernel_init=_partitioned(kernel_init, axes),
      bias_init=_partitioned(nn.initializers.zeros_init(), (axes[1],)))


def layer_norm(eps: float, *, name: str, dtype: Dtype = jnp.float32) -> nn.LayerNorm:
  return nn.LayerNorm(
      epsilon=eps, dtype=dtype, param_dtype=jnp.float32, name=name,
      scale_init=_partitioned(nn.initializers.ones_init(), (EMBED,)),
      bias_init=_partitioned(nn.initializers.zeros_init(), (EMBED,)))


def gelu(x):
  """Exact (erf) GELU, 0.5 x (1 + erf(x / sqrt 2)), the formula of torch.nn.GELU.

  Same function as `jax.nn.gelu(x, approximate=False)` (within 1e-6), which goes through erfc;
  XLA:CPU's erf polynomial makes forward + backward about 3x cheaper than that.
  """
  return 0.5 * x * (1.0 + jax.lax.erf(x * np.asarray(1.0 / np.sqrt(2.0), x.dtype)))


class DropPath(nn.Module):
  """Per-sample stochastic depth: drops the whole residual branch of some samples."""
  rate: float
  deterministic: bool = True

  @nn.compact
  def __call__(self, x):
    if self.deterministic or self.rate == 0.0:
      return x
    keep = 1.0 - self.rate
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    mask = jax.random.bernoulli(self.make_rng("dropout"), keep, shape)
    return jnp.where(mask, x / keep, jnp.zeros_like(x))


class Mlp(nn.Module):
  hidden_dim: int
  out_dim: int
  drop_rate: float = 0.0
  deterministic: bool = True
  kernel_init: Initializer = TRUNC_NORMAL_02
  hidden_axis: str = MLP
  out_axis: str = EMBED
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    in_axis = EMBED
    x = dense(self.hidden_dim, (in_axis, self.hidden_axis), name="fc1",
              kernel_init=self.kernel_init, dtype=self.dtype)(x)
    x = gelu(x)
    x = dense(self.out_dim, (self.hidden_axis, self.out_axis), name="fc2",
              kernel_init=self.kernel_init, dtype=self.dtype)(x)
    return nn.Dropout(self.drop_rate)(x, deterministic=self.deterministic)


# ------------------------------------------------------------------------------------------------
# Attention kernels. `ModelSpec.attention_impl` is the one switch; `resolve_attention_impl` is the
# one place that turns "auto" into a kernel for the backend, dtype and head size at hand.
#
#   "xla"      jax.nn.dot_product_attention(implementation="xla"): einsum, softmax, einsum; XLA
#              differentiates it and keeps the (B, H, N, M) probabilities for the backward pass.
#   "cudnn"    jax.nn.dot_product_attention(implementation="cudnn"): cuDNN's fused flash attention.
#              GPU only, bfloat16/float16 inputs, head dim a multiple of 8 and <= 128 (<= 256 on
#              Hopper and later; 128 is the limit checked here), no attention dropout.
#   "chunked"  queries in static chunks of `ATTENTION_CHUNK` rows, each with its own softmax, and a
#              hand-written backward pass (`_chunk_attention`): every (B, H, chunk, M) block stays
#              cache-sized, and the backward pass reuses the saved probabilities and gets the
#              softmax correction from rowsum(dO * O) instead of a second pass over them.
#   "aten"     PyTorch's fused CPU flash attention (ATen's
#              `_scaled_dot_product_flash_attention_for_cpu` and its backward: blocked matmuls with
#              an online softmax, nothing of size N x M kept) called through `jax.pure_callback`
#              under a `custom_vjp` (`aten_attention`). CPU, float32, torch importable. XLA:CPU has
#              no fused attention; with this kernel a svfap_base train step runs about 1.3x faster
#              than with the chunked one (BENCHMARKS.md). The callback gets the whole array on the
#              host, so it is for one-device CPU programs; others use the pure-JAX kernels.
#   "auto"     cudnn on GPU where its constraints hold; on CPU aten where it can run (float32, torch
#              importable, one device in the process), else chunked (both measured faster than xla
#              there, BENCHMARKS.md); xla otherwise (TPU included: a Pallas splash-attention kernel
#              is not wired in).
#
# With attention dropout active (attn_drop_rate > 0 while training) every choice runs the explicit
# softmax path, the only one that can drop attention weights.
# ------------------------------------------------------------------------------------------------

ATTENTION_CHUNK = 200
_CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)


def resolve_attention_impl(impl: str, *, dtype, head_dim: int,
                           backend: Optional[str] = None) -> str:
  """The kernel that `impl` ("auto", "xla", "cudnn", "chunked", "aten") runs for these inputs.

  Args:
    impl: `ModelSpec.attention_impl`.
    dtype: compute dtype of q, k and v.
    head_dim: size of one head.
    backend: "cpu", "gpu" or "tpu"; default `jax.default_backend()` at trace time. Given
      explicitly (a program compiled for another platform), "auto" never picks "aten", which runs
      on this process's host.

  Returns:
    "xla", "cudnn", "chunked" or "aten".

  Raises:
    ValueError: unknown `impl`, or "cudnn" / "aten" asked for where it cannot run (cuDNN: not a
      GPU, float32, unsupported head size; aten: not a CPU, not float32, torch missing), naming
      the reason.
  """
  explicit_backend = backend is not None
  backend = backend or jax.default_backend()
  dtype = jnp.dtype(dtype)
  cudnn_problem = None
  if backend != "gpu":
    cudnn_problem = f"the backend is {backend}, cuDNN attention runs on NVIDIA GPUs only"
  elif dtype not in [jnp.dtype(d) for d in _CUDNN_DTYPES]:
    cudnn_problem = f"cuDNN attention takes bfloat16/float16, the model computes in {dtype.name}"
  elif head_dim % 8 or head_dim > 128:
    cudnn_problem = ("cuDNN attention needs a head dim that is a multiple of 8 and <= 128, "
                     f"got {head_dim}")
  if impl == "auto":
    if cudnn_problem is None:
      return "cudnn"
    if backend == "cpu":
      one_device = not explicit_backend and jax.device_count() == 1
      return "aten" if one_device and _aten_problem(backend, dtype) is None else "chunked"
    return "xla"
  if impl == "cudnn" and cudnn_problem is not None:
    raise ValueError(f"attention_impl='cudnn' cannot run here: {cudnn_problem}; "
                     "use 'auto' or 'xla'")
  aten_problem = _aten_problem(backend, dtype) if impl == "aten" else None
  if aten_problem is not None:
    raise ValueError(f"attention_impl='aten' cannot run here: {aten_problem}; "
                     "use 'auto' or 'chunked'")
  if impl not in ("xla", "cudnn", "chunked", "aten"):
    raise ValueError(f"attention_impl={impl!r}; choose auto, xla, cudnn, chunked or aten")
  return impl


def _aten_problem(backend: str, dtype) -> Optional[str]:
  """Why the aten kernel cannot run here, or None. Imports torch only when the rest allows it."""
  if backend != "cpu":
    return f"the backend is {backend}, PyTorch's flash attention is called on the CPU"
  if dtype != jnp.dtype(jnp.float32):
    return f"it takes float32 here, the model computes in {dtype.name}"
  if not _torch_available():
    return "torch is not installed"
  return None


@functools.lru_cache(maxsize=None)
def _torch_available() -> bool:
  try:
    import torch  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    return False
  return hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu_backward")


def reference_attention(q, k, v):
  """Softmax attention in float32, the definition every kernel is tested against.

  q (B, N, H, D), k and v (B, M, H, D) -> (B, N, H, D) in q's dtype; scale D^-0.5.
  """
  scale = q.shape[-1] ** -0.5
  logits = jnp.einsum("bqhd,bkhd->bhqk", q.astype(jnp.float32), k.astype(jnp.float32),
                      precision=jax.lax.Precision.HIGHEST) * scale
  weights = jax.nn.softmax(logits, axis=-1)
  out = jnp.einsum("bhqk,bkhd->bqhd", weights, v.astype(jnp.float32),
                   precision=jax.lax.Precision.HIGHEST)
  return out.astype(q.dtype)


def _chunk_forward(q, k, v):
  scale = q.shape[-1] ** -0.5
  logits = jnp.einsum("bqhd,bkhd->bhqk", q * jnp.asarray(scale, q.dtype), k)
  weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(q.dtype)
  return jnp.einsum("bhqk,bkhd->bqhd", weights, v), weights


@jax.custom_vjp
def _chunk_attention(q, k, v):
  """One query chunk: (B, n, H, D) queries against all (B, M, H, D) keys and values."""
  return _chunk_forward(q, k, v)[0]


def _chunk_attention_fwd(q, k, v):
  out, weights = _chunk_forward(q, k, v)
  return out, (q, k, v, weights, out)


def _chunk_attention_bwd(residuals, d_out):
  q, k, v, weights, out = residuals
  scale = jnp.asarray(q.shape[-1] ** -0.5, q.dtype)
  d_v = jnp.einsum("bhqk,bqhd->bkhd", weights, d_out)
  d_weights = jnp.einsum("bqhd,bkhd->bhqk", d_out, v)
  # Softmax backward: dS = P * (dP - sum_k P dP); sum_k P dP = sum_d dO * O, a (B, H, n) product
  # over the head dim instead of a reduction over the (B, H, n, M) block.
  row = jnp.einsum("bqhd,bqhd->bhq", d_out.astype(jnp.float32), out.astype(jnp.float32))
  d_logits = (weights.astype(jnp.float32) * (d_weights.astype(jnp.float32) - row[..., None]))
  d_logits = d_logits.astype(q.dtype) * scale
  d_q = jnp.einsum("bhqk,bkhd->bqhd", d_logits, k)
  d_k = jnp.einsum("bhqk,bqhd->bkhd", d_logits, q)
  return d_q, d_k, d_v


_chunk_attention.defvjp(_chunk_attention_fwd, _chunk_attention_bwd)


def chunked_attention(q, k, v, chunk: Optional[int] = None):
  """Attention over static query chunks (see the section comment); shapes as `reference_attention`.

  `chunk` query rows per block (default `ATTENTION_CHUNK`); the last block may be shorter.
  """
  chunk = chunk or ATTENTION_CHUNK
  n = q.shape[1]
  if n <= chunk:
    return _chunk_attention(q, k, v)
  outs = [_chunk_attention(q[:, i:i + chunk], k, v) for i in range(0, n, chunk)]
  return jnp.concatenate(outs, axis=1)


def _as_torch_heads_first(a: np.ndarray):
  """(..., N, H, D) host array -> torch view (L, H, N, D), L the product of the leading dims."""
  import torch  # pylint: disable=g-import-not-at-top
  a = np.asarray(a)
  with warnings.catch_warnings():
    # XLA hands callbacks read-only buffers; the kernels only read their inputs, so wrap them
    # without the copy that torch's warning about non-writable arrays suggests.
    warnings.simplefilter("ignore", UserWarning)
    return torch.from_numpy(a.reshape((-1,) + a.shape[-3:])).transpose(1, 2)


def _aten_forward_host(q, k, v):
  """Host side of the forward pass: (out (..., N, H, D), logsumexp (..., H, N) float32)."""
  import torch  # pylint: disable=g-import-not-at-top
  lead, n, h = q.shape[:-3], q.shape[-3], q.shape[-2]
  with torch.no_grad():
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        _as_torch_heads_first(q), _as_torch_heads_first(k), _as_torch_heads_first(v))[:2]
  return (out.transpose(1, 2).contiguous().numpy().reshape(q.shape),
          lse.contiguous().numpy().reshape(lead + (h, n)))


def _aten_backward_host(d_out, q, k, v, out, lse):
  """Host side of the backward pass: (dq, dk, dv) in the shapes of q, k, v."""
  import torch  # pylint: disable=g-import-not-at-top
  t = _as_torch_heads_first
  lse = np.array(lse).reshape((-1,) + lse.shape[-2:])  # small: (L, H, N)
  with torch.no_grad():
    grads = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
        t(d_out), t(q), t(k), t(v), t(out), torch.from_numpy(lse), 0.0, False)
  return tuple(g.transpose(1, 2).contiguous().numpy().reshape(a.shape)
               for g, a in zip(grads, (q, k, v)))


def _aten_fwd(q, k, v):
  lead, n, h = q.shape[:-3], q.shape[-3], q.shape[-2]
  out, lse = jax.pure_callback(
      _aten_forward_host,
      (jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct(lead + (h, n), jnp.float32)),
      q, k, v, vmap_method="broadcast_all")
  return out, (q, k, v, out, lse)


def _aten_bwd(residuals, d_out):
  q, k, v, out, lse = residuals
  return jax.pure_callback(
      _aten_backward_host, tuple(jax.ShapeDtypeStruct(a.shape, a.dtype) for a in (q, k, v)),
      d_out, q, k, v, out, lse, vmap_method="broadcast_all")


@jax.custom_vjp
def aten_attention(q, k, v):
  """PyTorch's CPU flash attention (see the section comment); shapes as `reference_attention`.

  float32 on CPU with torch installed (`resolve_attention_impl("aten", ...)` checks that and names
  what is missing; this function does not). The forward pass keeps the (B, H, N) log-sum-exp of
  every query row for the backward pass, which recomputes the probabilities block by block as
  ATen's kernel does.
  """
  return _aten_fwd(q, k, v)[0]


aten_attention.defvjp(_aten_fwd, _aten_bwd)


def multi_head_attention(q, k, v, *, impl: str = "auto", attn_drop_rate: float = 0.0,
                         deterministic: bool = True):
  """Softmax attention of q (B, N, H, D) over k, v (B, M, H, D) -> (B, N, H, D); scale D^-0.5.

  `impl` is `ModelSpec.attention_impl` (see `resolve_attention_impl`). Attention dropout, when
  active, draws from the calling module's "dropout" RNG stream, so this must run inside a Flax
  module's compact method in that case.
  """
  if attn_drop_rate > 0.0 and not deterministic:
    scale = q.shape[-1] ** -0.5
    logits = jnp.einsum("bqhd,bkhd->bhqk", q * scale, k)
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(q.dtype)
    weights = nn.Dropout(attn_drop_rate)(weights, deterministic=False)
    return jnp.einsum("bhqk,bkhd->bqhd", weights, v)
  kernel = resolve_attention_impl(impl, dtype=q.dtype, head_dim=q.shape[-1])
  if kernel == "chunked":
    return chunked_attention(q, k, v)
  if kernel == "aten":
    return aten_attention(q, k, v)
  return jax.nn.dot_product_attention(q, k, v, implementation=kernel)


class SplitProjection(nn.Module):
  """A bias-free Dense whose (in, parts * features) kernel is applied part by part.

  Same parameter (`kernel`, float32, same init and logical axes) as `dense(parts * features, ...,
  use_bias=False)`, so checkpoints and the PyTorch mapping do not change. Input (..., in); returns
  a tuple of `parts` arrays (..., features) in `dtype`.

  Why: separate matmuls give q, k and v as contiguous arrays. Slicing one fused (B, N, 3C) output
  makes XLA copy every slice in the forward pass and pad-and-add the three gradients back into
  one array in the backward pass; slicing the (C, 3C) kernel instead is cheap. For forward +
  backward of a svfap_base stage-1/stage-2 block stack (batch 4) XLA counts 4.6 % fewer bytes
  accessed, at the same speed within the noise of a shared 2-core machine (BENCHMARKS.md).
  """
  features: int
  parts: int
  axes: tuple[Optional[str], Optional[str]]
  kernel_init: Initializer = TRUNC_NORMAL_02
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", _partitioned(self.kernel_init, self.axes),
                        (x.shape[-1], self.parts * self.features), jnp.float32)
    x = x.astype(self.dtype)
    kernel = kernel.astype(self.dtype)
    return tuple(x @ kernel[:, i * self.features:(i + 1) * self.features]
                 for i in range(self.parts))


class Attention(nn.Module):
  """Self-attention with a bias-free qkv projection plus separate q and v biases (k has none)."""
  num_heads: int
  qkv_bias: bool = True
  attn_drop_rate: float = 0.0
  proj_drop_rate: float = 0.0
  deterministic: bool = True
  kernel_init: Initializer = TRUNC_NORMAL_02
  dtype: Dtype = jnp.float32
  attention_impl: str = "auto"

  @nn.compact
  def __call__(self, x):
    b, n, c = x.shape
    q, k, v = SplitProjection(c, 3, (EMBED, HEADS), self.kernel_init, self.dtype, name="qkv")(x)
    if self.qkv_bias:
      q_bias = self.param("q_bias", _partitioned(nn.initializers.zeros_init(), (HEADS,)), (c,))
      v_bias = self.param("v_bias", _partitioned(nn.initializers.zeros_init(), (HEADS,)), (c,))
      q = q + q_bias.astype(q.dtype)
      v = v + v_bias.astype(v.dtype)
    heads = lambda t: t.reshape(b, n, self.num_heads, c // self.num_heads)
    out = multi_head_attention(heads(q), heads(k), heads(v), impl=self.attention_impl,
                               attn_drop_rate=self.attn_drop_rate,
                               deterministic=self.deterministic)
    out = dense(c, (HEADS, EMBED), name="proj", kernel_init=self.kernel_init,
                dtype=self.dtype)(out.reshape(b, n, c))
    return nn.Dropout(self.proj_drop_rate)(out, deterministic=self.deterministic)


class CrossAttention(nn.Module):
  """Queries from `x`, keys and values from `context`; q and v biases as in `Attention`."""
  num_heads: int
  qkv_bias: bool = True
  attn_drop_rate: float = 0.0
  proj_drop_rate: float = 0.0
  deterministic: bool = True
  kernel_init: Initializer = TRUNC_NORMAL_02
  dtype: Dtype = jnp.float32
  attention_impl: str = "auto"

  @nn.compact
  def __call__(self, x, context):
    b, n, c = x.shape
    m = context.shape[1]
    q = dense(c, (EMBED, HEADS), name="q", use_bias=False, kernel_init=self.kernel_init,
              dtype=self.dtype)(x)
    k, v = SplitProjection(c, 2, (EMBED, HEADS), self.kernel_init, self.dtype,
                           name="kv")(context)
    if self.qkv_bias:
      q_bias = self.param("q_bias", _partitioned(nn.initializers.zeros_init(), (HEADS,)), (c,))
      v_bias = self.param("v_bias", _partitioned(nn.initializers.zeros_init(), (HEADS,)), (c,))
      q = q + q_bias.astype(q.dtype)
      v = v + v_bias.astype(v.dtype)
    head_dim = c // self.num_heads
    q = q.reshape(b, n, self.num_heads, head_dim)
    k = k.reshape(b, m, self.num_heads, head_dim)
    v = v.reshape(b, m, self.num_heads, head_dim)
    out = multi_head_attention(q, k, v, impl=self.attention_impl,
                               attn_drop_rate=self.attn_drop_rate,
                               deterministic=self.deterministic)
    out = dense(c, (HEADS, EMBED), name="proj", kernel_init=self.kernel_init,
                dtype=self.dtype)(out.reshape(b, n, c))
    return nn.Dropout(self.proj_drop_rate)(out, deterministic=self.deterministic)


def _layer_scale(module: nn.Module, x, name: str, init_value: float):
  """Multiplies by a learned per-channel gamma (`name`) when layer scale is on."""
  if init_value <= 0:
    return x
  gamma = module.param(name, _partitioned(nn.initializers.constant(init_value), (EMBED,)),
                       (x.shape[-1],))
  return x * gamma.astype(x.dtype)


class Block(nn.Module):
  """Pre-norm transformer block: x + attn(norm1(x)); x + mlp(norm2(x))."""
  num_heads: int
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  drop_rate: float = 0.0
  attn_drop_rate: float = 0.0
  drop_path_rate: float = 0.0
  init_values: float = 0.0
  eps: float = 1e-6
  deterministic: bool = True
  kernel_init: Initializer = TRUNC_NORMAL_02
  dtype: Dtype = jnp.float32
  attention_impl: str = "auto"

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    drop_path = DropPath(self.drop_path_rate, self.deterministic)
    y = Attention(self.num_heads, self.qkv_bias, self.attn_drop_rate, self.drop_rate,
                  self.deterministic, self.kernel_init, self.dtype, self.attention_impl,
                  name="attn")(
                      layer_norm(self.eps, name="norm1", dtype=self.dtype)(x))
    x = x + drop_path(_layer_scale(self, y, "gamma_1", self.init_values))
    y = Mlp(int(c * self.mlp_ratio), c, self.drop_rate, self.deterministic, self.kernel_init,
            dtype=self.dtype, name="mlp")(layer_norm(self.eps, name="norm2", dtype=self.dtype)(x))
    return x + drop_path(_layer_scale(self, y, "gamma_2", self.init_values))


class CSBlock(Block):
  """Cross-attention to `context`, then self-attention, then MLP (all pre-norm residual).

  Same hyper-parameters as `Block`, plus the `cross_attn`, `cross_norm1/2` (and `gamma_0`) params.
  """

  @nn.compact
  def __call__(self, x, context):
    c = x.shape[-1]
    drop_path = DropPath(self.drop_path_rate, self.deterministic)
    norm = functools.partial(layer_norm, self.eps, dtype=self.dtype)
    y = CrossAttention(self.num_heads, self.qkv_bias, self.attn_drop_rate, self.drop_rate,
                       self.deterministic, self.kernel_init, self.dtype, self.attention_impl,
                       name="cross_attn")(
                           norm(name="cross_norm1")(x), norm(name="cross_norm2")(context))
    x = x + drop_path(_layer_scale(self, y, "gamma_0", self.init_values))
    y = Attention(self.num_heads, self.qkv_bias, self.attn_drop_rate, self.drop_rate,
                  self.deterministic, self.kernel_init, self.dtype, self.attention_impl,
                  name="attn")(
                      norm(name="norm1")(x))
    x = x + drop_path(_layer_scale(self, y, "gamma_1", self.init_values))
    y = Mlp(int(c * self.mlp_ratio), c, self.drop_rate, self.deterministic, self.kernel_init,
            dtype=self.dtype, name="mlp")(norm(name="norm2")(x))
    return x + drop_path(_layer_scale(self, y, "gamma_2", self.init_values))


class PatchEmbed(nn.Module):
  """Tubelet embedding: a Conv3d with kernel = stride = (tubelet, patch, patch), as a matmul.

  Input (B, T, H, W, C) channels-last; output (B, T/tubelet * H/patch * W/patch, D) in (t, h, w)
  token order, the order of the PyTorch model's `flatten(2)`.
  """
  embed_dim: int
  tubelet_size: int
  patch_size: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, video):
    b, t, h, w, c = video.shape
    tb, p = self.tubelet_size, self.patch_size
    kernel = self.param("kernel", _partitioned(TORCH_DEFAULT, (None, None, None, None, EMBED)),
                        (tb, p, p, c, self.embed_dim))
    bias = self.param("bias", _partitioned(nn.initializers.zeros_init(), (EMBED,)),
                      (self.embed_dim,))
    x = video.astype(self.dtype).reshape(b, t // tb, tb, h // p, p, w // p, p, c)
    patches = x.transpose(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, tb * p * p * c)
    # One materialised patch matrix serves the forward matmul and the kernel gradient. Without
    # the barrier XLA fuses whatever produced `video` (the whole on-device augmentation) into two
    # separate transposes and runs it twice.
    patches = jax.lax.optimization_barrier(patches)
    x = patches @ kernel.reshape(-1, self.embed_dim).astype(self.dtype)
    return x.reshape(b, -1, self.embed_dim) + bias.astype(self.dtype)


class TemporalDownsample(nn.Module):
  """Conv1d over time with kernel = stride = k, applied at every spatial position.

  Tokens (B, T*S, C) in (t, s) order -> (B, T/k*S, C).
  """
  temporal_len: int
  kernel_size: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, n, c = x.shape
    k, t = self.kernel_size, self.temporal_len
    kernel = self.param("kernel", _partitioned(TORCH_DEFAULT, (None, EMBED, EMBED_OUT)), (k, c, c))
    bias = self.param("bias", _partitioned(nn.initializers.zeros_init(), (EMBED_OUT,)), (c,))
    # Frame pairs are adjacent (t, s)-ordered blocks: one matmul per kernel offset on a strided
    # view, summed, keeps the tokens in place (a single einsum over (k, c) makes XLA transpose the
    # token tensor to (b, t/k, s, k, c) in the forward pass and back in the backward pass).
    x = x.reshape(b, t // k, k, n // t, c)
    kernel = kernel.astype(self.dtype)
    out = sum(x[:, :, i] @ kernel[i] for i in range(k))
    return out.reshape(b, -1, c) + bias.astype(self.dtype)


class SpatialAttention(nn.Module):
  """Pools the S spatial tokens of each frame into G bottleneck tokens.

  Weights come from LN -> Linear(C, hidden) -> GELU -> Linear(hidden, G) and are softmax-normalised
  over the spatial tokens of each frame. (B, T*S, C) -> (B, T*G, C).
  """
  temporal_len: int
  num_tokens: int
  hidden_dim: int = 128
  drop_rate: float = 0.0
  eps: float = 1e-6
  deterministic: bool = True
  kernel_init: Initializer = TRUNC_NORMAL_02
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, n, c = x.shape
    t = self.temporal_len
    logits = Mlp(self.hidden_dim, self.num_tokens, self.drop_rate, self.deterministic,
                 self.kernel_init, hidden_axis=None, out_axis=None, dtype=self.dtype, name="mlp")(
                     layer_norm(self.eps, name="norm", dtype=self.dtype)(x))
    logits = logits.reshape(b, t, n // t, self.num_tokens)
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=2).astype(x.dtype)
    pooled = jnp.einsum("btsg,btsc->btgc", weights, x.reshape(b, t, n // t, c))
    return pooled.reshape(b, t * self.num_tokens, c)


def remat_policy(name: str):
  """Maps a config string to a jax.checkpoint policy (None = no rematerialisation)."""
  policies = {
      "none": None,
      "full": jax.checkpoint_policies.nothing_saveable,
      "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
      "dots_saveable": jax.checkpoint_policies.dots_saveable,
  }
  if name not in policies:
    raise ValueError(f"unknown remat policy {name!r}; choose one of {sorted(policies)}")
  return policies[name]


def maybe_remat(cls, policy_name: str):
  policy = remat_policy(policy_name)
  if policy_name == "none":
    return cls
  return nn.remat(cls, policy=policy, prevent_cse=True)


def embed_video(video, *, embed_dim: int, tubelet_size: int, patch_size: int,
                dtype: Dtype = jnp.float32, pos_embed: str = "sincos_1d"):
  """Patch embedding (submodule `patch_embed`) plus the fixed position table (`position_table`).

  Must be called inside a compact module. The table is a constant, not a parameter.
  """
  x = PatchEmbed(embed_dim, tubelet_size, patch_size, dtype, name="patch_embed")(video)
  _, frames, height, width, _ = video.shape
  grid = (frames // tubelet_size, height // patch_size, width // patch_size)
  table = position_table(pos_embed, grid, embed_dim)
  return x + jnp.asarray(table, dtype=x.dtype)[None]


def gather_tokens(x, idx):
  """x (B, N, C), idx (B, K) int -> (B, K, C)."""
  return jnp.take_along_axis(x, idx[..., None], axis=1)
