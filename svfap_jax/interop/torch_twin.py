"""PyTorch twin of the SVFAP models, used to prove parity with the original PyTorch code.

The modules here produce state_dicts with the original's key names and shapes (so a checkpoint moves
between the twin, the original code and our exporter/importer without renaming) and compute the same
function. Sizes come from `svfap_jax.models.registry`.

Two things differ from the original on purpose:
  * The pretraining encoder follows the paper by default: the reverse cross/self block of stages >= 2
    attends to the bottleneck tokens, and multi-scale fusion upsamples each stage output in time in
    its own (T_i, S) layout. `original_pretrain_quirks=True` restores the original's behaviour
    (reverse block attends to all patch embeddings, masked ones included; fusion reshapes with the
    pre-downsampling temporal length) for bit-parity checks and for continuing its checkpoints.
  * `keep_temporal_dim` works for TPSBT (the original reshapes with the stage-1 temporal length and
    fails) and returns (B, num_frames, num_classes) instead of a flattened (B, num_frames * classes).

torch is an optional dependency of the project: only this module (and its tests/tools) imports it.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Union

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from svfap_jax.models.registry import ModelSpec, get_spec

__all__ = [
    "build_torch_model",
    "sincos_table",
    "TwinClassifier",
    "TwinPretrainModel",
    "TwinEncoder",
    "TwinDecoder",
]

_HEAD_ACTIVATIONS = {
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
}


def sincos_table(n_position: int, dim: int) -> np.ndarray:
  """Fixed sinusoid position table, (n_position, dim) float64.

  angle[p, j] = p / 10000^(2 * (j // 2) / dim); sine on even j, cosine on odd j.
  """
  pos = np.arange(n_position, dtype=np.float64)[:, None]
  j = np.arange(dim)
  # Computed as pos / power(...) (not pos * power(..., -1)) so the float64 values match the reference
  # table bit for bit before the cast to float32.
  angle = pos / np.power(10000, 2 * (j // 2) / dim)
  table = np.empty_like(angle)
  table[:, 0::2] = np.sin(angle[:, 0::2])
  table[:, 1::2] = np.cos(angle[:, 1::2])
  return table


def _table_buffer(n_position: int, dim: int) -> torch.Tensor:
  return torch.from_numpy(sincos_table(n_position, dim)).to(torch.float32).unsqueeze(0)


class DropPath(nn.Module):
  """Per-sample stochastic depth: zeroes a residual branch for whole samples while training."""

  def __init__(self, drop_prob: float = 0.0):
    super().__init__()
    self.drop_prob = float(drop_prob)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    if self.drop_prob == 0.0 or not self.training:
      return x
    keep = 1.0 - self.drop_prob
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    survive = torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(keep)
    # Rescaled so the expected branch output is the same as in eval mode.
    return x * survive / keep

  def extra_repr(self) -> str:
    return f"p={self.drop_prob}"


class Mlp(nn.Module):
  """Linear -> exact GELU -> Linear."""

  def __init__(self, dim: int, hidden: int, out: Optional[int] = None):
    super().__init__()
    self.fc1 = nn.Linear(dim, hidden)
    self.act = nn.GELU()
    self.fc2 = nn.Linear(hidden, out or dim)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.fc2(self.act(self.fc1(x)))


def _split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
  b, n, _ = x.shape
  return x.reshape(b, n, num_heads, -1).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
  b, h, n, d = x.shape
  return x.transpose(1, 2).reshape(b, n, h * d)


class SelfAttention(nn.Module):
  """Multi-head self attention with a bias-free fused qkv weight and separate q/v biases.

  The key bias is fixed at zero (it cancels in the softmax), which is why only q_bias and v_bias are
  parameters.
  """

  def __init__(self, dim: int, num_heads: int, qkv_bias: bool):
    super().__init__()
    self.num_heads = num_heads
    self.scale = (dim // num_heads) ** -0.5
    self.qkv = nn.Linear(dim, 3 * dim, bias=False)
    if qkv_bias:
      self.q_bias = nn.Parameter(torch.zeros(dim))
      self.v_bias = nn.Parameter(torch.zeros(dim))
    else:
      self.q_bias = None
      self.v_bias = None
    self.proj = nn.Linear(dim, dim)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    bias = None
    if self.q_bias is not None:
      bias = torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias])
    q, k, v = F.linear(x, self.qkv.weight, bias).chunk(3, dim=-1)
    q, k, v = (_split_heads(t, self.num_heads) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
    return self.proj(_merge_heads(out))


class CrossAttention(nn.Module):
  """Multi-head attention of queries `x` over a separate `context` sequence."""

  def __init__(self, dim: int, num_heads: int, qkv_bias: bool):
    super().__init__()
    self.num_heads = num_heads
    self.scale = (dim // num_heads) ** -0.5
    self.q = nn.Linear(dim, dim, bias=False)
    self.kv = nn.Linear(dim, 2 * dim, bias=False)
    if qkv_bias:
      self.q_bias = nn.Parameter(torch.zeros(dim))
      self.v_bias = nn.Parameter(torch.zeros(dim))
    else:
      self.q_bias = None
      self.v_bias = None
    self.proj = nn.Linear(dim, dim)

  def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    kv_bias = None
    if self.v_bias is not None:
      kv_bias = torch.cat([torch.zeros_like(self.v_bias), self.v_bias])
    q = F.linear(x, self.q.weight, self.q_bias)
    k, v = F.linear(context, self.kv.weight, kv_bias).chunk(2, dim=-1)
    q, k, v = (_split_heads(t, self.num_heads) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
    return self.proj(_merge_heads(out))


class Block(nn.Module):
  """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

  def __init__(self, spec: ModelSpec, dim: int, num_heads: int, drop_path: float = 0.0):
    super().__init__()
    eps = spec.layer_norm_eps
    self.norm1 = nn.LayerNorm(dim, eps=eps)
    self.attn = SelfAttention(dim, num_heads, spec.qkv_bias)
    self.drop_path = DropPath(drop_path)
    self.norm2 = nn.LayerNorm(dim, eps=eps)
    self.mlp = Mlp(dim, int(dim * spec.mlp_ratio))
    if spec.init_values > 0:
      self.gamma_1 = nn.Parameter(torch.full((dim,), float(spec.init_values)))
      self.gamma_2 = nn.Parameter(torch.full((dim,), float(spec.init_values)))
    else:
      self.gamma_1 = None
      self.gamma_2 = None

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = x + self.drop_path(_scaled(self.gamma_1, self.attn(self.norm1(x))))
    return x + self.drop_path(_scaled(self.gamma_2, self.mlp(self.norm2(x))))


class CSBlock(nn.Module):
  """Cross/self block: cross attention to a context, then self attention, then the MLP."""

  def __init__(self, spec: ModelSpec, drop_path: float = 0.0):
    super().__init__()
    dim, eps = spec.embed_dim, spec.layer_norm_eps
    self.cross_attn = CrossAttention(dim, spec.num_heads, spec.qkv_bias)
    self.cross_norm1 = nn.LayerNorm(dim, eps=eps)
    self.cross_norm2 = nn.LayerNorm(dim, eps=eps)
    self.norm1 = nn.LayerNorm(dim, eps=eps)
    self.attn = SelfAttention(dim, spec.num_heads, spec.qkv_bias)
    self.drop_path = DropPath(drop_path)
    self.norm2 = nn.LayerNorm(dim, eps=eps)
    self.mlp = Mlp(dim, int(dim * spec.mlp_ratio))
    if spec.init_values > 0:
      self.gamma_0 = nn.Parameter(torch.full((dim,), float(spec.init_values)))
      self.gamma_1 = nn.Parameter(torch.full((dim,), float(spec.init_values)))
      self.gamma_2 = nn.Parameter(torch.full((dim,), float(spec.init_values)))
    else:
      self.gamma_0 = None
      self.gamma_1 = None
      self.gamma_2 = None

  def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    cross = self.cross_attn(self.cross_norm1(x), self.cross_norm2(context))
    x = x + self.drop_path(_scaled(self.gamma_0, cross))
    x = x + self.drop_path(_scaled(self.gamma_1, self.attn(self.norm1(x))))
    return x + self.drop_path(_scaled(self.gamma_2, self.mlp(self.norm2(x))))


def _scaled(gamma: Optional[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
  return x if gamma is None else gamma * x


class SpatialAttention(nn.Module):
  """Pools the S spatial tokens of every frame into G bottleneck tokens.

  Each token gets G scores from a small MLP; a softmax over the frame's spatial tokens turns every
  score column into pooling weights.
  """

  def __init__(self, spec: ModelSpec):
    super().__init__()
    self.norm = nn.LayerNorm(spec.embed_dim, eps=spec.layer_norm_eps)
    self.mlp = Mlp(spec.embed_dim, spec.spatial_hidden_dim, spec.num_bottleneck_tokens)

  def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
    b, n, c = x.shape
    s = n // num_frames
    scores = self.mlp(self.norm(x)).reshape(b, num_frames, s, -1)
    weights = scores.softmax(dim=2)
    pooled = torch.einsum("btsg,btsc->btgc", weights, x.reshape(b, num_frames, s, c))
    return pooled.reshape(b, -1, c)


class PatchEmbed(nn.Module):
  """Non-overlapping tubelet embedding; tokens come out in (t, h, w) order."""

  def __init__(self, spec: ModelSpec):
    super().__init__()
    self.spec = spec
    kernel = (spec.tubelet_size, spec.patch_size, spec.patch_size)
    self.proj = nn.Conv3d(spec.in_chans, spec.embed_dim, kernel_size=kernel, stride=kernel)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    spec = self.spec
    expected = (spec.in_chans, spec.num_frames, spec.img_size, spec.img_size)
    if tuple(x.shape[1:]) != expected:
      raise ValueError(f"expected input of shape (B, {', '.join(map(str, expected))}), "
                       f"got {tuple(x.shape)}")
    return self.proj(x).flatten(2).transpose(1, 2)


def _drop_path_rates(rate: float, n: int) -> list[float]:
  return [float(r) for r in torch.linspace(0, rate, n)] if n else []


class TwinEncoder(nn.Module):
  """TPSBT or plain-ViT encoder; the parameter-holding trunk shared by classifier and MAE encoder.

  Submodule names are the original's so that `state_dict()` keys match it directly.
  """

  def __init__(self, spec: ModelSpec, *, drop_path_rate: float = 0.0, final_norm: bool = False):
    super().__init__()
    self.spec = spec
    self.patch_embed = PatchEmbed(spec)
    self.register_buffer("pos_table", _table_buffer(spec.num_patches, spec.embed_dim),
                         persistent=False)
    rates = _drop_path_rates(drop_path_rate, spec.depth)
    self.blocks = nn.ModuleList()
    # Empty for a ViT, so they add no state_dict keys.
    self.temporal_downsamples = nn.ModuleList()
    self.spatial_downsamples = nn.ModuleList()
    for stage, depth in enumerate(spec.stage_depths):
      first = len(self.blocks)
      if stage == 0:
        self.blocks.extend(Block(spec, spec.embed_dim, spec.num_heads, rates[first + i])
                           for i in range(depth))
        continue
      k = spec.temporal_kernel_size
      self.temporal_downsamples.append(
          nn.Conv1d(spec.embed_dim, spec.embed_dim, kernel_size=k, stride=k))
      self.spatial_downsamples.append(SpatialAttention(spec))
      self.blocks.extend(CSBlock(spec, rates[first + i]) for i in range(depth))
    self.norm = nn.LayerNorm(spec.embed_dim, eps=spec.layer_norm_eps) if final_norm else None

  @property
  def is_tpsbt(self) -> bool:
    return self.spec.arch == "tpsbt"

  def embed(self, x: torch.Tensor) -> torch.Tensor:
    """Patch embeddings plus the fixed position table, (B, N, C)."""
    tokens = self.patch_embed(x)
    return tokens + self.pos_table.to(tokens.dtype)

  def stage_block_ranges(self) -> list[range]:
    ranges, start = [], 0
    for depth in self.spec.stage_depths:
      ranges.append(range(start, start + depth))
      start += depth
    return ranges

  def run_first_stage(self, x: torch.Tensor) -> torch.Tensor:
    for i in self.stage_block_ranges()[0]:
      x = self.blocks[i](x)
    return x

  def run_pyramid_stage(self, stage: int, x: torch.Tensor, num_frames: int,
                        reverse_context: Optional[torch.Tensor] = None) -> torch.Tensor:
    """One TPSBT stage >= 1 (0-based) on `x` laid out as (B, num_frames * S, C).

    Returns the stage output, (B, (num_frames / k) * S, C). `reverse_context` replaces the bottleneck
    tokens as the context of the stage's last block (only for the original's pretraining quirk).
    """
    b, n, c = x.shape
    s = n // num_frames
    # The temporal convolution runs along time separately for every spatial position.
    seq = x.reshape(b, num_frames, s, c).permute(0, 2, 3, 1).reshape(b * s, c, num_frames)
    seq = self.temporal_downsamples[stage - 1](seq)
    t_out = seq.shape[-1]
    full = seq.reshape(b, s, c, t_out).permute(0, 3, 1, 2).reshape(b, t_out * s, c)
    bottleneck = self.spatial_downsamples[stage - 1](full, t_out)
    block_ids = self.stage_block_ranges()[stage]
    for i in block_ids[:-1]:
      bottleneck = self.blocks[i](bottleneck, full)
    context = bottleneck if reverse_context is None else reverse_context
    # The last block swaps roles: full-resolution queries read from the bottleneck, which restores
    # the stage's spatial resolution.
    return self.blocks[block_ids[-1]](full, context)

  def forward_tokens(self, tokens: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Runs all stages on complete token sets; returns (B, T_last * S, C) and T_last."""
    if not self.is_tpsbt:
      for blk in self.blocks:
        tokens = blk(tokens)
      return tokens, self.spec.temporal_tokens
    x = self.run_first_stage(tokens)
    t = self.spec.temporal_tokens
    for stage in range(1, len(self.spec.stage_depths)):
      x = self.run_pyramid_stage(stage, x, t)
      t //= self.spec.temporal_kernel_size
    return x, t


class TwinClassifier(TwinEncoder):
  """Encoder + mean pooling + fc_norm + linear head (+ optional activation)."""

  def __init__(self, spec: ModelSpec, *, num_classes: int = 0, init_scale: float = 1.0,
               head_activation: Optional[str] = None, keep_temporal_dim: bool = False,
               drop_path_rate: float = 0.0):
    super().__init__(spec, drop_path_rate=drop_path_rate, final_norm=False)
    if head_activation is not None and head_activation not in _HEAD_ACTIVATIONS:
      raise ValueError(f"head_activation={head_activation!r}; expected None or one of "
                       f"{sorted(_HEAD_ACTIVATIONS)}")
    self.num_classes = num_classes
    self.keep_temporal_dim = keep_temporal_dim
    self.fc_norm = nn.LayerNorm(spec.embed_dim, eps=spec.layer_norm_eps)
    self.head = nn.Linear(spec.embed_dim, num_classes) if num_classes > 0 else nn.Identity()
    self.head_activation = (_HEAD_ACTIVATIONS[head_activation]() if head_activation
                            else nn.Identity())
    _init_weights(self)
    if isinstance(self.head, nn.Linear):
      with torch.no_grad():
        self.head.weight.mul_(init_scale)
        self.head.bias.mul_(init_scale)

  def forward_features(self, x: torch.Tensor) -> torch.Tensor:
    """Pooled, fc_norm-ed features: (B, C), or (B, num_frames, C) with keep_temporal_dim."""
    tokens, t_last = self.forward_tokens(self.embed(x))
    if not self.keep_temporal_dim:
      return self.fc_norm(tokens.mean(dim=1))
    b, n, c = tokens.shape
    per_frame = tokens.reshape(b, t_last, n // t_last, c).mean(dim=2)
    # Linear upsampling back to one vector per input frame (align_corners=False, as the reference).
    per_frame = F.interpolate(per_frame.transpose(1, 2), size=self.spec.num_frames, mode="linear",
                              align_corners=False).transpose(1, 2)
    return self.fc_norm(per_frame)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.head_activation(self.head(self.forward_features(x)))


class TwinDecoder(nn.Module):
  """MAE decoder: standard blocks at decoder width, final norm, linear pixel head."""

  def __init__(self, spec: ModelSpec, drop_path_rate: float = 0.0):
    super().__init__()
    dim = spec.decoder_embed_dim
    rates = _drop_path_rates(drop_path_rate, spec.decoder_depth)
    self.blocks = nn.ModuleList(Block(spec, dim, spec.decoder_num_heads, rates[i])
                                for i in range(spec.decoder_depth))
    self.norm = nn.LayerNorm(dim, eps=spec.layer_norm_eps)
    self.head = nn.Linear(dim, spec.patch_pixels)

  def forward(self, x: torch.Tensor, num_predicted: int) -> torch.Tensor:
    for blk in self.blocks:
      x = blk(x)
    return self.head(self.norm(x[:, x.shape[1] - num_predicted:]))


class TwinPretrainModel(nn.Module):
  """Masked-autoencoder model: encoder on visible tokens, decoder predicts masked-token pixels."""

  def __init__(self, spec: ModelSpec, *, original_pretrain_quirks: bool = False,
               drop_path_rate: float = 0.0):
    super().__init__()
    self.spec = spec
    self.original_pretrain_quirks = original_pretrain_quirks
    self.mask_token = nn.Parameter(torch.zeros(1, 1, spec.decoder_embed_dim))
    self.encoder = TwinEncoder(spec, drop_path_rate=drop_path_rate, final_norm=True)
    # The reference also gives the decoder blocks their own 0..rate stochastic-depth schedule.
    self.decoder = TwinDecoder(spec, drop_path_rate=drop_path_rate)
    self.encoder_to_decoder = nn.Linear(spec.embed_dim, spec.decoder_embed_dim, bias=False)
    self.register_buffer("decoder_pos_table",
                         _table_buffer(spec.num_patches, spec.decoder_embed_dim), persistent=False)
    _init_weights(self)
    nn.init.trunc_normal_(self.mask_token, std=0.02, a=-0.02, b=0.02)

  def check_mask(self, mask: torch.Tensor) -> None:
    """Raises ValueError if `mask` cannot be batched through the visible-token encoder."""
    spec = self.spec
    if mask.dtype != torch.bool or mask.ndim != 2 or mask.shape[1] != spec.num_patches:
      raise ValueError(f"mask must be a bool tensor of shape (B, {spec.num_patches}), got "
                       f"{mask.dtype} {tuple(mask.shape)}")
    visible = (~mask).sum(dim=1)
    if bool((visible != visible[0]).any()):
      raise ValueError("every sample must keep the same number of visible tokens, got "
                       f"{visible.tolist()}")
    if int(visible[0]) == 0:
      raise ValueError("the mask hides every token")
    if spec.arch == "tpsbt":
      frames = mask.reshape(mask.shape[0], spec.temporal_tokens, spec.spatial_tokens)
      if bool((frames != frames[:, :1]).any()):
        raise ValueError("a TPSBT encoder needs tube masking: every frame of a sample must hide the "
                         "same spatial positions")

  def encode(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Normalised encoder output for the visible tokens, (B, N_vis, C), in ascending token order."""
    self.check_mask(mask)
    enc = self.encoder
    tokens = enc.embed(x)
    b, _, c = tokens.shape
    vis = tokens[~mask].reshape(b, -1, c)
    if not enc.is_tpsbt:
      for blk in enc.blocks:
        vis = blk(vis)
      return enc.norm(vis)
    spec = self.spec
    k = spec.temporal_kernel_size
    t_full = spec.temporal_tokens
    s_vis = vis.shape[1] // t_full
    h = enc.run_first_stage(vis)
    fused = h
    t = t_full
    for stage in range(1, len(spec.stage_depths)):
      reverse_context = tokens if self.original_pretrain_quirks else None
      h = enc.run_pyramid_stage(stage, h, t, reverse_context=reverse_context)
      t_out = t // k
      if self.original_pretrain_quirks:
        up = self._quirky_upsample(h, t, k ** stage, stage)
      else:
        up = h.reshape(b, t_out, s_vis, c).repeat_interleave(t_full // t_out, dim=1)
      fused = fused + up.reshape(b, -1, c)
      t = t_out
    return enc.norm(fused)

  @staticmethod
  def _quirky_upsample(h: torch.Tensor, t_before: int, repeats: int, stage: int) -> torch.Tensor:
    # Reproduces the reference fusion: it splits the stage output into `t_before` (the length before
    # this stage's downsampling) groups and repeats each group, which scrambles spatial positions.
    b, n, c = h.shape
    if n % t_before:
      raise ValueError(
          f"original_pretrain_quirks: stage {stage + 1} has {n} visible tokens, which the original "
          f"fusion cannot split into {t_before} temporal groups; use a mask ratio whose visible "
          "token count per frame is divisible by the temporal kernel size, or the default fusion")
    return h.reshape(b, t_before, n // t_before, c).repeat_interleave(repeats, dim=1)

  def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Pixel predictions for the masked tokens, (B, n_masked, patch_pixels), ascending token order."""
    enc = self.encoder_to_decoder(self.encode(x, mask))
    b, _, c = enc.shape
    table = self.decoder_pos_table.to(enc.dtype).expand(b, -1, -1)
    vis = enc + table[~mask].reshape(b, -1, c)
    masked = self.mask_token.to(enc.dtype) + table[mask].reshape(b, -1, c)
    return self.decoder(torch.cat([vis, masked], dim=1), masked.shape[1])


def _init_weights(module: nn.Module) -> None:
  for m in module.modules():
    if isinstance(m, nn.Linear):
      nn.init.trunc_normal_(m.weight, std=0.02, a=-2.0, b=2.0)
      if m.bias is not None:
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
      nn.init.ones_(m.weight)
      nn.init.zeros_(m.bias)


def _resolve_spec(name_or_spec: Union[str, ModelSpec], overrides: dict) -> ModelSpec:
  if isinstance(name_or_spec, ModelSpec):
    if "stage_depths" in overrides:
      overrides = dict(overrides, stage_depths=tuple(overrides["stage_depths"]))
    return dataclasses.replace(name_or_spec, **overrides).validate()
  return get_spec(name_or_spec, **overrides)


def build_torch_model(name_or_spec: Union[str, ModelSpec], *, num_classes: int = 0,
                      pretrain: bool = False, original_pretrain_quirks: bool = False,
                      init_scale: float = 1.0, head_activation: Optional[str] = None,
                      keep_temporal_dim: bool = False, drop_path_rate: float = 0.0,
                      **spec_overrides) -> nn.Module:
  """Builds the twin of an SVFAP/VideoMAE model named in the registry (or given as a spec).

  Args:
    name_or_spec: a registry name such as "svfap_base", or a `ModelSpec`.
    num_classes: classifier outputs; 0 leaves the head out (features are returned).
    pretrain: build the masked-autoencoder model instead of the classifier.
    original_pretrain_quirks: pretraining only; reproduce the original code's encoder behaviour.
    init_scale: classifier only; multiplies the initial head weight and bias.
    head_activation: classifier only; None, "sigmoid", "tanh" or "relu", applied after the head.
    keep_temporal_dim: classifier only; return (B, num_frames, num_classes) per-frame outputs.
    drop_path_rate: stochastic depth rate of the last encoder block (linear from 0).
    **spec_overrides: `ModelSpec` fields replacing the named spec's.

  Returns:
    A `TwinPretrainModel` if `pretrain`, otherwise a `TwinClassifier`.
  """
  spec = _resolve_spec(name_or_spec, spec_overrides)
  if pretrain:
    return TwinPretrainModel(spec, original_pretrain_quirks=original_pretrain_quirks,
                             drop_path_rate=drop_path_rate)
  return TwinClassifier(spec, num_classes=num_classes, init_scale=init_scale,
                        head_activation=head_activation, keep_temporal_dim=keep_temporal_dim,
                        drop_path_rate=drop_path_rate)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
  return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def state_dict_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
  return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def expected_state_dict_shapes(spec: ModelSpec, *, num_classes: int = 0, pretrain: bool = False
                               ) -> dict[str, tuple[int, ...]]:
  """The original code's state_dict layout for `spec`, derived from the spec alone."""
  c = spec.embed_dim
  out: dict[str, tuple[int, ...]] = {}

  def block(prefix: str, dim: int, cross: bool) -> None:
    hidden = int(dim * spec.mlp_ratio)
    parts: dict[str, tuple[int, ...]] = {}
    norms = ["norm1", "norm2"] + (["cross_norm1", "cross_norm2"] if cross else [])
    for norm in norms:
      parts[f"{norm}.weight"] = (dim,)
      parts[f"{norm}.bias"] = (dim,)
    parts["attn.qkv.weight"] = (3 * dim, dim)
    parts["attn.proj.weight"] = (dim, dim)
    parts["attn.proj.bias"] = (dim,)
    parts["mlp.fc1.weight"] = (hidden, dim)
    parts["mlp.fc1.bias"] = (hidden,)
    parts["mlp.fc2.weight"] = (dim, hidden)
    parts["mlp.fc2.bias"] = (dim,)
    attns = ["attn"]
    if cross:
      attns.append("cross_attn")
      parts["cross_attn.q.weight"] = (dim, dim)
      parts["cross_attn.kv.weight"] = (2 * dim, dim)
      parts["cross_attn.proj.weight"] = (dim, dim)
      parts["cross_attn.proj.bias"] = (dim,)
    if spec.qkv_bias:
      for a in attns:
        parts[f"{a}.q_bias"] = (dim,)
        parts[f"{a}.v_bias"] = (dim,)
    if spec.init_values > 0:
      for g in ["gamma_1", "gamma_2"] + (["gamma_0"] if cross else []):
        parts[g] = (dim,)
    out.update({f"{prefix}{k}": v for k, v in parts.items()})

  enc = "encoder." if pretrain else ""
  t, p = spec.tubelet_size, spec.patch_size
  out[f"{enc}patch_embed.proj.weight"] = (c, spec.in_chans, t, p, p)
  out[f"{enc}patch_embed.proj.bias"] = (c,)
  index = 0
  for stage, depth in enumerate(spec.stage_depths):
    for _ in range(depth):
      block(f"{enc}blocks.{index}.", c, cross=stage > 0)
      index += 1
    if stage > 0:
      k = stage - 1
      kernel = spec.temporal_kernel_size
      h, g = spec.spatial_hidden_dim, spec.num_bottleneck_tokens
      out[f"{enc}temporal_downsamples.{k}.weight"] = (c, c, kernel)
      out[f"{enc}temporal_downsamples.{k}.bias"] = (c,)
      out[f"{enc}spatial_downsamples.{k}.norm.weight"] = (c,)
      out[f"{enc}spatial_downsamples.{k}.norm.bias"] = (c,)
      out[f"{enc}spatial_downsamples.{k}.mlp.fc1.weight"] = (h, c)
      out[f"{enc}spatial_downsamples.{k}.mlp.fc1.bias"] = (h,)
      out[f"{enc}spatial_downsamples.{k}.mlp.fc2.weight"] = (g, h)
      out[f"{enc}spatial_downsamples.{k}.mlp.fc2.bias"] = (g,)
  if pretrain:
    d = spec.decoder_embed_dim
    out["encoder.norm.weight"] = (c,)
    out["encoder.norm.bias"] = (c,)
    out["encoder_to_decoder.weight"] = (d, c)
    out["mask_token"] = (1, 1, d)
    for i in range(spec.decoder_depth):
      block(f"decoder.blocks.{i}.", d, cross=False)
    out["decoder.norm.weight"] = (d,)
    out["decoder.norm.bias"] = (d,)
    out["decoder.head.weight"] = (spec.patch_pixels, d)
    out["decoder.head.bias"] = (spec.patch_pixels,)
  else:
    out["fc_norm.weight"] = (c,)
    out["fc_norm.bias"] = (c,)
    if num_classes > 0:
      out["head.weight"] = (num_classes, c)
      out["head.bias"] = (num_classes,)
  return out
