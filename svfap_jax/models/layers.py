"""Transformer building blocks shared by the TPSBT, the plain ViT and the MAE decoder.

Parameter names follow the PyTorch SVFAP modules (`qkv`, `q_bias`, `cross_norm1`, `fc1`, ...) so that
the mapping to a PyTorch state_dict in `svfap_jax.interop` is a mechanical renaming. Every parameter
carries logical axis names; `svfap_jax.sharding` maps them onto mesh axes.
"""
from __future__ import annotations

import functools
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
    x = nn.gelu(x, approximate=False)
    x = dense(self.out_dim, (self.hidden_axis, self.out_axis), name="fc2",
              kernel_init=self.kernel_init, dtype=self.dtype)(x)
    return nn.Dropout(self.drop_rate)(x, deterministic=self.deterministic)


def _attend(q, k, v, *, attn_drop_rate: float, deterministic: bool):
  """Multi-head attention core on (B, N, H, D) tensors, scale D^-0.5."""
  if attn_drop_rate == 0.0 or deterministic:
    return jax.nn.dot_product_attention(q, k, v)
  scale = q.shape[-1] ** -0.5
  logits = jnp.einsum("bqhd,bkhd->bhqk", q * scale, k)
  weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(q.dtype)
  weights = nn.Dropout(attn_drop_rate)(weights, deterministic=False)
  return jnp.einsum("bhqk,bkhd->bqhd", weights, v)


class Attention(nn.Module):
  """Self-attention with a bias-free qkv projection plus separate q and v biases (k has none)."""
  num_heads: int
  qkv_bias: bool = True
  attn_drop_rate: float = 0.0
  proj_drop_rate: float = 0.0
  deterministic: bool = True
  kernel_init: Initializer = TRUNC_NORMAL_02
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, n, c = x.shape
    qkv = dense(3 * c, (EMBED, HEADS), name="qkv", use_bias=False,
                kernel_init=self.kernel_init, dtype=self.dtype)(x)
    if self.qkv_bias:
      q_bias = self.param("q_bias", _partitioned(nn.initializers.zeros_init(), (HEADS,)), (c,))
      v_bias = self.param("v_bias", _partitioned(nn.initializers.zeros_init(), (HEADS,)), (c,))
      qkv = qkv + jnp.concatenate([q_bias, jnp.zeros_like(q_bias), v_bias]).astype(qkv.dtype)
    qkv = qkv.reshape(b, n, 3, self.num_heads, c // self.num_heads)
    out = _attend(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], attn_drop_rate=self.attn_drop_rate,
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

  @nn.compact
  def __call__(self, x, context):
    b, n, c = x.shape
    m = context.shape[1]
    q = dense(c, (EMBED, HEADS), name="q", use_bias=False, kernel_init=self.kernel_init,
              dtype=self.dtype)(x)
    kv = dense(2 * c, (EMBED, HEADS), name="kv", use_bias=False, kernel_init=self.kernel_init,
               dtype=self.dtype)(context)
    if self.qkv_bias:
      q_bias = self.param("q_bias", _partitioned(nn.initializers.zeros_init(), (HEADS,)), (c,))
      v_bias = self.param("v_bias", _partitioned(nn.initializers.zeros_init(), (HEADS,)), (c,))
      q = q + q_bias.astype(q.dtype)
      kv = kv + jnp.concatenate([jnp.zeros_like(v_bias), v_bias]).astype(kv.dtype)
    head_dim = c // self.num_heads
    q = q.reshape(b, n, self.num_heads, head_dim)
    kv = kv.reshape(b, m, 2, self.num_heads, head_dim)
    out = _attend(q, kv[:, :, 0], kv[:, :, 1], attn_drop_rate=self.attn_drop_rate,
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

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    drop_path = DropPath(self.drop_path_rate, self.deterministic)
    y = Attention(self.num_heads, self.qkv_bias, self.attn_drop_rate, self.drop_rate,
                  self.deterministic, self.kernel_init, self.dtype, name="attn")(
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
                       self.deterministic, self.kernel_init, self.dtype, name="cross_attn")(
                           norm(name="cross_norm1")(x), norm(name="cross_norm2")(context))
    x = x + drop_path(_layer_scale(self, y, "gamma_0", self.init_values))
    y = Attention(self.num_heads, self.qkv_bias, self.attn_drop_rate, self.drop_rate,
                  self.deterministic, self.kernel_init, self.dtype, name="attn")(
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
    x = jnp.einsum("bTaHiWjc,aijcd->bTHWd", x, kernel.astype(self.dtype))
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
    x = x.reshape(b, t // k, k, n // t, c)
    x = jnp.einsum("btksc,kcd->btsd", x, kernel.astype(self.dtype))
    return x.reshape(b, -1, c) + bias.astype(self.dtype)


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
                dtype: Dtype = jnp.float32):
  """Patch embedding (submodule `patch_embed`) plus the fixed sin-cos position table.

  Must be called inside a compact module. The table is a constant, not a parameter.
  """
  x = PatchEmbed(embed_dim, tubelet_size, patch_size, dtype, name="patch_embed")(video)
  table = sincos_table(x.shape[1], embed_dim)
  return x + jnp.asarray(table, dtype=x.dtype)[None]


def gather_tokens(x, idx):
  """x (B, N, C), idx (B, K) int -> (B, K, C)."""
  return jnp.take_along_axis(x, idx[..., None], axis=1)
