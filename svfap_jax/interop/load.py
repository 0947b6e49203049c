"""Adapting foreign PyTorch checkpoints to one of our models before conversion.

Released and third-party checkpoints come wrapped (`module.` from DDP, `backbone.`), as whole
pretraining models when a classifier is wanted, or with a head for another label set. This module
turns such a state_dict into exactly the keys of the target model and says what it did; a shape
mismatch is never loaded silently.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

import numpy as np

from svfap_jax.interop import mapping

_PRETRAIN_ONLY = ("decoder.", "encoder_to_decoder.", "mask_token", "norm.")
_FIXED_TABLES = ("pos_embed",)
_CLASSIFIER_TOP = ("fc_norm.", "head.")


class CheckpointMismatchError(ValueError):
  pass


@dataclasses.dataclass
class LoadReport:
  loaded: list[str]
  dropped: list[str]          # present in the file, not used by the target (with the reason)
  fresh: list[str]            # target parameters kept at their new initialisation

  def summary(self) -> str:
    lines = [f"loaded {len(self.loaded)} tensors"]
    if self.dropped:
      lines.append(f"dropped {len(self.dropped)}: " + ", ".join(self.dropped))
    if self.fresh:
      lines.append(f"newly initialised {len(self.fresh)}: " + ", ".join(self.fresh))
    return "; ".join(lines)


def _strip(key: str, prefixes: tuple[str, ...]) -> str:
  changed = True
  while changed:
    changed = False
    for p in prefixes:
      if key.startswith(p):
        key, changed = key[len(p):], True
  return key


def match_state_dict(state_dict: Mapping[str, np.ndarray], template: Mapping, *,
                     pretrain: bool, source: str = "checkpoint"
                     ) -> tuple[dict[str, np.ndarray], LoadReport]:
  """Returns (state_dict restricted to the target's keys, report).

  Raises CheckpointMismatchError naming every key whose shape differs (other than a classifier
  head, which is replaced) and every target key the file lacks (other than fc_norm/head when a
  classifier starts from a pretraining checkpoint).
  """
  shapes = mapping.torch_shapes(template, pretrain=pretrain)

  sd = {_strip(k, ("module.", "backbone.")): v for k, v in state_dict.items()}
  dropped = []
  if not pretrain and any(k.startswith("encoder.") for k in sd):
    encoder_sd = {}
    for k, v in sd.items():
      if k.startswith("encoder.") and not k.startswith("encoder.norm."):
        encoder_sd[k[len("encoder."):]] = v
      else:
        dropped.append(f"{k} (pretraining only)")
    sd = encoder_sd
  for k in list(sd):
    if k in shapes:
      continue
    if k.split(".")[0] in _FIXED_TABLES:
      dropped.append(f"{k} (positions are a fixed sin-cos table here)")
    elif pretrain or not k.startswith(_PRETRAIN_ONLY):
      continue  # reported as unexpected below
    else:
      dropped.append(f"{k} (pretraining only)")
    del sd[k]

  fresh = []
  if not pretrain:
    head_keys = [k for k in shapes if k.startswith("head.")]
    if any(k in sd and tuple(np.shape(sd[k])) != shapes[k] for k in head_keys):
      for k in head_keys:
        if k in sd:
          dropped.append(f"{k} {tuple(np.shape(sd.pop(k)))} (head for another label set)")

  mismatched = [f"{k}: file {tuple(np.shape(v))} vs model {shapes[k]}"
                for k, v in sd.items() if k in shapes and tuple(np.shape(v)) != shapes[k]]
  unexpected = sorted(k for k in sd if k not in shapes)
  missing = sorted(k for k in shapes if k not in sd)
  if not pretrain:
    fresh = [k for k in missing if k.startswith(_CLASSIFIER_TOP)]
    missing = [k for k in missing if not k.startswith(_CLASSIFIER_TOP)]
  problems = []
  if mismatched:
    problems.append(f"{len(mismatched)} shape mismatch(es):\n  " + "\n  ".join(mismatched))
  if missing:
    problems.append(f"{len(missing)} missing key(s): " + ", ".join(missing))
  if unexpected:
    problems.append(f"{len(unexpected)} unexpected key(s): " + ", ".join(unexpected))
  if problems:
    raise CheckpointMismatchError(
        f"{source} does not fit the target model; nothing was loaded.\n" + "\n".join(problems) +
        "\nCheck that the model name/size (embed_dim, depths, heads) matches the checkpoint.")
  loaded = sorted(sd)
  return {k: sd[k] for k in loaded}, LoadReport(loaded, dropped, fresh)
