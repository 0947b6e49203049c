"""JAX parameter trees <-> PyTorch state_dicts with the original SVFAP key names and layouts.

The JAX trees are named after the PyTorch modules, so the mapping is a renaming plus a layout change
per parameter kind:
- Dense `kernel` (in, out) <-> Linear `weight` (out, in)
- PatchEmbed `kernel` (t, h, w, in, out) <-> Conv3d `patch_embed.proj.weight` (out, in, t, h, w)
- TemporalDownsample `kernel` (k, in, out) <-> Conv1d `weight` (out, in, k)
- LayerNorm `scale` <-> `weight`
Indexed submodules `blocks_3` <-> `blocks.3`. A classifier's `encoder/` scope is the PyTorch model's
top level; a pretraining model keeps the `encoder.` prefix.
"""
from __future__ import annotations

import re
from typing import Mapping

import flax.traverse_util as traverse_util
import numpy as np

_INDEXED = re.compile(r"^(blocks|temporal_downsamples|spatial_downsamples)_(\d+)$")
_KERNEL_TO_TORCH = {2: (1, 0), 3: (2, 1, 0), 5: (4, 3, 0, 1, 2)}


def _torch_key(path: tuple[str, ...], pretrain: bool) -> str:
  parts = list(path)
  if not pretrain and parts[0] == "encoder":
    parts = parts[1:]
  names = []
  for i, part in enumerate(parts):
    m = _INDEXED.match(part)
    if m:
      names += [m.group(1), m.group(2)]
    elif i == len(parts) - 1:
      if parts[i - 1] == "patch_embed":
        names.append("proj")  # the PyTorch PatchEmbed wraps its Conv3d as `proj`
      names.append("weight" if part in ("kernel", "scale") else part)
    else:
      names.append(part)
  return ".".join(names)


def _to_torch_layout(path: tuple[str, ...], value: np.ndarray) -> np.ndarray:
  if path[-1] == "kernel":
    return np.ascontiguousarray(np.transpose(value, _KERNEL_TO_TORCH[value.ndim]))
  return value


def _from_torch_layout(path: tuple[str, ...], value: np.ndarray) -> np.ndarray:
  if path[-1] == "kernel":
    return np.ascontiguousarray(np.transpose(value, np.argsort(_KERNEL_TO_TORCH[value.ndim])))
  return value


def key_map(params: Mapping, *, pretrain: bool) -> dict[str, tuple[str, ...]]:
  """PyTorch key -> JAX parameter path, for every parameter of `params`."""
  flat = traverse_util.flatten_dict(params)
  return {_torch_key(path, pretrain): path for path in flat}


def to_torch_state_dict(params: Mapping, *, pretrain: bool) -> dict[str, np.ndarray]:
  """JAX params -> {torch key: float32 numpy array in PyTorch layout}."""
  flat = traverse_util.flatten_dict(params)
  return {_torch_key(path, pretrain): _to_torch_layout(path, np.asarray(value, np.float32))
          for path, value in flat.items()}


def torch_shape(path: tuple[str, ...], jax_shape: tuple[int, ...]) -> tuple[int, ...]:
  if path[-1] == "kernel":
    return tuple(jax_shape[i] for i in _KERNEL_TO_TORCH[len(jax_shape)])
  return tuple(jax_shape)


def torch_shapes(params: Mapping, *, pretrain: bool) -> dict[str, tuple[int, ...]]:
  """PyTorch key -> PyTorch shape for every parameter of `params` (arrays or shape structs)."""
  return {_torch_key(path, pretrain): torch_shape(path, np.shape(value))
          for path, value in traverse_util.flatten_dict(params).items()}


def from_torch_state_dict(state_dict: Mapping[str, np.ndarray], template: Mapping, *,
                          pretrain: bool) -> dict:
  """{torch key: array} -> JAX param tree shaped like `template`. Keys must match exactly;
  use `svfap_jax.interop.load.match_state_dict` first to adapt foreign checkpoints."""
  mapping = key_map(template, pretrain=pretrain)
  missing = sorted(set(mapping) - set(state_dict))
  unexpected = sorted(set(state_dict) - set(mapping))
  if missing or unexpected:
    raise KeyError(f"state_dict does not match the model: missing {missing}, "
                   f"unexpected {unexpected}")
  flat = {path: _from_torch_layout(path, np.asarray(state_dict[key], np.float32))
          for key, path in mapping.items()}
  return traverse_util.unflatten_dict(flat)
