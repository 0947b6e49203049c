"""Parameter counts and MACs per view from XLA's cost analysis (no weights are materialised)."""
from __future__ import annotations

import jax
import numpy as np

from svfap_jax import api, masking
from svfap_jax.models.registry import get_spec


def _macs(fn, *args) -> float:
  """Multiply-accumulates of one call of `fn`: XLA counts 2 flops per MAC."""
  cost = jax.jit(fn).lower(*args).compile().cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost["flops"]) / 2.0


def describe(name: str, *, num_classes: int = 7, mask_ratio: float = 0.9,
             pretrain: bool = True) -> dict:
  """Params and GMACs per 16-frame view of the classifier and (optionally) of pretraining."""
  # XLA's attention: XLA's cost analysis does not see the work inside cuDNN custom calls or the
  # aten kernel's host callback, which `auto` may pick.
  spec = get_spec(name, attention_impl="xla")
  result = {"model": name, "arch": spec.arch, "embed_dim": spec.embed_dim,
            "stage_depths": list(spec.stage_depths), "num_heads": spec.num_heads}
  clf = api.build_module(spec, num_classes=num_classes)
  args, _ = api.example_inputs(spec, 1)
  variables = jax.eval_shape(lambda: clf.init(jax.random.key(0), *args))
  result["params"] = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(
      variables["params"]))
  result["gmacs"] = _macs(lambda v, x: clf.apply(v, x), variables, *args) / 1e9
  if pretrain:
    mae = api.build_module(spec, pretrain=True)
    kind = "tube" if spec.arch == "tpsbt" else "random"
    n_visible = masking.num_visible(kind, spec.temporal_tokens, spec.spatial_tokens, mask_ratio)
    (video, mask), _ = api.example_inputs(spec, 1, pretrain=True)
    mae_vars = jax.eval_shape(lambda: mae.init(jax.random.key(0), video, mask,
                                               num_visible=spec.num_patches))
    result["pretrain_params"] = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(
        mae_vars["params"]))
    result["mask_ratio"] = mask_ratio
    result["pretrain_gmacs"] = _macs(
        lambda v, x, m: mae.apply(v, x, m, num_visible=n_visible), mae_vars, video, mask) / 1e9
  return result


def format_report(r: dict) -> str:
  lines = [f"{r['model']} ({r['arch']}, width {r['embed_dim']}, depths {r['stage_depths']}, "
           f"{r['num_heads']} heads)",
           f"  classifier: {r['params'] / 1e6:.2f}M params, {r['gmacs']:.2f} GMACs per view"]
  if "pretrain_gmacs" in r:
    lines.append(f"  pretraining ({r['mask_ratio']:.0%} mask): {r['pretrain_params'] / 1e6:.2f}M "
                 f"params, {r['pretrain_gmacs']:.2f} GMACs per view (encoder + decoder forward)")
  return "\n".join(lines)
