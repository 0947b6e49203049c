#!/usr/bin/env python
"""Checks the PyTorch twin against the original SVFAP PyTorch code.

The original's `modeling_finetune.py` and `modeling_pretrain.py` must sit in one directory (pass it
with --svfap-repo); keep that directory outside this repository. timm is not needed: the few timm
helpers the original imports are provided by stand-ins installed before the import.

Comparisons (fp32, eval mode, twin weights loaded into the original with strict=True):
  1. classifier logits: original TPSBT vs twin classifier;
  2. MAE reconstructions with a tube mask: original PretrainVisionTransformer vs the twin built with
     original_pretrain_quirks=True;
  3. the same inputs through the twin's default (paper) pretraining encoder, which differs from the
     original only by its two pretraining quirks, so a large difference is expected there.
Exits 1 if comparison 1 or 2 exceeds the relative-error tolerance (max|a - b| / max|b|).

Usage:
  PYTHONPATH=. python tools/check_against_original.py --svfap-repo /tmp/svfap_orig --model svfap_base
"""
from __future__ import annotations

import argparse
import functools
import importlib
import math
import os
import sys
import types
from typing import Any

import torch
from torch import nn

from svfap_jax.interop.torch_twin import build_torch_model, count_parameters
from svfap_jax.models.registry import ModelSpec, get_spec

DEFAULT_TOLERANCE = 1e-4


def install_timm_stand_ins() -> None:
  """Registers minimal `timm.models.layers` / `timm.models.registry` modules in sys.modules."""
  if "timm.models.layers" in sys.modules and "timm.models.registry" in sys.modules:
    return

  def drop_path(x, drop_prob: float = 0.0, training: bool = False):
    if drop_prob == 0.0 or not training:
      return x
    keep = 1.0 - drop_prob
    survive = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * survive / keep

  def to_2tuple(x):
    if isinstance(x, (tuple, list)):
      return tuple(x)
    return (x, x)

  def trunc_normal_(tensor, mean=0.0, std=1.0, a=-2.0, b=2.0):
    return nn.init.trunc_normal_(tensor, mean=mean, std=std, a=a, b=b)

  def register_model(fn):
    return fn

  timm = sys.modules.setdefault("timm", types.ModuleType("timm"))
  models = sys.modules.setdefault("timm.models", types.ModuleType("timm.models"))
  layers = types.ModuleType("timm.models.layers")
  layers.drop_path = drop_path
  layers.to_2tuple = to_2tuple
  layers.trunc_normal_ = trunc_normal_
  registry = types.ModuleType("timm.models.registry")
  registry.register_model = register_model
  timm.models = models
  models.layers = layers
  models.registry = registry
  sys.modules["timm.models.layers"] = layers
  sys.modules["timm.models.registry"] = registry


def load_original(svfap_repo: str) -> tuple[types.ModuleType, types.ModuleType]:
  """Imports the original modeling_finetune / modeling_pretrain modules from `svfap_repo`."""
  for name in ("modeling_finetune.py", "modeling_pretrain.py"):
    if not os.path.isfile(os.path.join(svfap_repo, name)):
      raise FileNotFoundError(f"{name} not found in {svfap_repo!r}")
  install_timm_stand_ins()
  repo = os.path.abspath(svfap_repo)
  # modeling_pretrain imports modeling_finetune by its bare name, so the directory goes on sys.path.
  sys.path.insert(0, repo)
  try:
    finetune = importlib.import_module("modeling_finetune")
    pretrain = importlib.import_module("modeling_pretrain")
  finally:
    sys.path.remove(repo)
  for module in (finetune, pretrain):
    if not os.path.abspath(module.__file__).startswith(repo):
      raise ImportError(f"{module.__name__} was imported from {module.__file__}, not {repo}")
  return finetune, pretrain


def _check_representable(spec: ModelSpec, pretrain: bool) -> None:
  if spec.arch != "tpsbt":
    raise ValueError("only TPSBT specs can be built with the original code")
  if spec.spatial_hidden_dim != 128:
    raise ValueError("the original hard-codes a spatial-attention hidden size of 128, got "
                     f"{spec.spatial_hidden_dim}")
  if pretrain and (spec.num_frames != 16 or spec.in_chans != 3):
    raise ValueError("the original pretraining encoder assumes 16 frames and 3 channels")


def original_classifier(finetune: types.ModuleType, spec: ModelSpec, num_classes: int) -> nn.Module:
  """The original TPSBT classifier configured like `spec` (as svfap_base_patch16_160 does)."""
  _check_representable(spec, pretrain=False)
  return finetune.TPSBT(
      img_size=spec.img_size, patch_size=spec.patch_size, in_chans=spec.in_chans,
      num_classes=num_classes, embed_dim=spec.embed_dim, num_heads=spec.num_heads,
      mlp_ratio=spec.mlp_ratio, qkv_bias=spec.qkv_bias,
      norm_layer=functools.partial(nn.LayerNorm, eps=spec.layer_norm_eps),
      init_values=spec.init_values, init_scale=1.0, all_frames=spec.num_frames,
      tubelet_size=spec.tubelet_size, stage_depths=tuple(spec.stage_depths),
      num_bottleneck_tokens=(spec.num_bottleneck_tokens,),
      temporal_kernel_size=spec.temporal_kernel_size)


def original_pretrain(pretrain: types.ModuleType, spec: ModelSpec) -> nn.Module:
  """The original PretrainVisionTransformer with encoder and decoder sized like `spec`."""
  _check_representable(spec, pretrain=True)
  return pretrain.PretrainVisionTransformer(
      img_size=spec.img_size, patch_size=spec.patch_size, encoder_in_chans=spec.in_chans,
      encoder_num_classes=0, encoder_embed_dim=spec.embed_dim, encoder_num_heads=spec.num_heads,
      decoder_num_classes=spec.patch_pixels, decoder_embed_dim=spec.decoder_embed_dim,
      decoder_depth=spec.decoder_depth, decoder_num_heads=spec.decoder_num_heads,
      mlp_ratio=spec.mlp_ratio, qkv_bias=spec.qkv_bias,
      norm_layer=functools.partial(nn.LayerNorm, eps=spec.layer_norm_eps),
      init_values=spec.init_values, tubelet_size=spec.tubelet_size,
      stage_depths=tuple(spec.stage_depths), num_bottleneck_tokens=(spec.num_bottleneck_tokens,),
      temporal_kernel_size=spec.temporal_kernel_size)


def perturb_(model: nn.Module, seed: int, scale: float = 0.02) -> nn.Module:
  """Adds noise to every parameter.

  Fresh inits leave biases at zero and norms at identity, which would hide swapped or missing
  biases/affines; noise makes every parameter matter.
  """
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * scale)
  return model


def tube_mask(spec: ModelSpec, batch: int, ratio: float, seed: int) -> torch.Tensor:
  """A random tube mask (same hidden spatial positions in every frame), True = masked."""
  gen = torch.Generator().manual_seed(seed)
  s = spec.spatial_tokens
  num_masked = int(ratio * s)
  rows = []
  for _ in range(batch):
    frame = torch.zeros(s, dtype=torch.bool)
    frame[torch.randperm(s, generator=gen)[:num_masked]] = True
    rows.append(frame.repeat(spec.temporal_tokens))
  return torch.stack(rows)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
  """max|a - b| and max|a - b| / max|b| (b is the reference)."""
  diff = (a.double() - b.double()).abs().max().item()
  ref = b.double().abs().max().item()
  return {"max_abs": diff, "max_rel": diff / ref if ref else math.inf}


def _random_video(spec: ModelSpec, batch: int, seed: int) -> torch.Tensor:
  gen = torch.Generator().manual_seed(seed)
  return torch.randn(batch, spec.in_chans, spec.num_frames, spec.img_size, spec.img_size,
                     generator=gen)


def compare_classifier(finetune: types.ModuleType, spec: ModelSpec, *, num_classes: int = 7,
                       batch: int = 2, seed: int = 0) -> dict[str, Any]:
  """Loads a (perturbed) twin classifier into the original and compares logits."""
  torch.manual_seed(seed)
  twin = perturb_(build_torch_model(spec, num_classes=num_classes), seed).eval()
  orig = original_classifier(finetune, spec, num_classes).eval()
  orig.load_state_dict(twin.state_dict(), strict=True)
  x = _random_video(spec, batch, seed + 1)
  with torch.no_grad():
    ours, theirs = twin(x), orig(x)
  result = relative_error(ours, theirs)
  result.update(shape=tuple(ours.shape), params=count_parameters(twin))
  return result


def compare_pretrain(pretrain: types.ModuleType, spec: ModelSpec, *, batch: int = 2,
                     mask_ratio: float = 0.9, seed: int = 0) -> dict[str, Any]:
  """Loads a (perturbed) quirks-mode twin into the original MAE model and compares predictions.

  Also runs the same weights through the default (paper) twin; its error against the original is
  returned under "paper_*" keys.
  """
  torch.manual_seed(seed)
  twin = perturb_(build_torch_model(spec, pretrain=True, original_pretrain_quirks=True), seed)
  twin.eval()
  orig = original_pretrain(pretrain, spec).eval()
  orig.load_state_dict(twin.state_dict(), strict=True)
  paper = build_torch_model(spec, pretrain=True).eval()
  paper.load_state_dict(twin.state_dict(), strict=True)
  x = _random_video(spec, batch, seed + 1)
  mask = tube_mask(spec, batch, mask_ratio, seed + 2)
  with torch.no_grad():
    ours, theirs, ours_paper = twin(x, mask), orig(x, mask), paper(x, mask)
  result = relative_error(ours, theirs)
  paper_err = relative_error(ours_paper, theirs)
  result.update(shape=tuple(ours.shape), params=count_parameters(twin),
                paper_max_abs=paper_err["max_abs"], paper_max_rel=paper_err["max_rel"])
  return result


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--svfap-repo", default=os.environ.get("SVFAP_ORIGINAL_REPO"),
                      help="directory holding the original modeling_finetune.py and "
                           "modeling_pretrain.py (default: $SVFAP_ORIGINAL_REPO)")
  parser.add_argument("--model", choices=["svfap_small", "svfap_base"], default="svfap_base")
  parser.add_argument("--batch", type=int, default=2)
  parser.add_argument("--num-classes", type=int, default=7)
  parser.add_argument("--mask-ratio", type=float, default=0.9)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                      help="maximum relative error (max|a-b| / max|b|) for comparisons 1 and 2")
  args = parser.parse_args(argv)
  if not args.svfap_repo:
    parser.error("--svfap-repo is required (or set SVFAP_ORIGINAL_REPO)")

  finetune, pretrain = load_original(args.svfap_repo)
  spec = get_spec(args.model)
  print(f"model {args.model}: {spec}")

  cls = compare_classifier(finetune, spec, num_classes=args.num_classes, batch=args.batch,
                           seed=args.seed)
  print(f"[1] classifier logits {cls['shape']} (twin params {cls['params']:,}): "
        f"max abs err {cls['max_abs']:.3e}, max rel err {cls['max_rel']:.3e}")

  pre = compare_pretrain(pretrain, spec, batch=args.batch, mask_ratio=args.mask_ratio,
                         seed=args.seed)
  print(f"[2] pretrain reconstructions, quirks twin {pre['shape']} (twin params "
        f"{pre['params']:,}, mask ratio {args.mask_ratio}): max abs err {pre['max_abs']:.3e}, "
        f"max rel err {pre['max_rel']:.3e}")
  print(f"[3] pretrain reconstructions, default (paper) twin vs original: max abs err "
        f"{pre['paper_max_abs']:.3e}, max rel err {pre['paper_max_rel']:.3e} "
        "(large is expected: the original's pretraining quirks)")

  failed = [name for name, r in (("classifier", cls), ("pretrain", pre))
            if not r["max_rel"] <= args.tolerance]
  if failed:
    print(f"FAIL: {', '.join(failed)} above max relative error {args.tolerance:g}")
    return 1
  print(f"OK: comparisons 1 and 2 within max relative error {args.tolerance:g}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
