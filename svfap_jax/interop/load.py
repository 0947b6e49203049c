"""Adapting foreign PyTorch checkpoints to one of our models before conversion.

Released and third-party checkpoints come wrapped (`module.` from DDP, `_orig_mod.` from
torch.compile, `model.` from Lightning, `backbone.`), as whole pretraining models when a classifier
is wanted, or with a head for another label set. This module turns such a state_dict into exactly
the keys of the target model and says what it did; a shape mismatch is never loaded silently, and a
checkpoint that does not fit is refused with a short diagnosis rather than every key.
"""
from __future__ import annotations

import collections
import dataclasses
import re
from typing import Mapping, Sequence

import numpy as np

from svfap_jax.interop import mapping

_PRETRAIN_ONLY = ("decoder.", "encoder_to_decoder.", "mask_token", "norm.")
_FIXED_TABLES = ("pos_embed",)
# Classifier parts a checkpoint may lack; they keep their fresh values. `head_norm.` holds the
# linear probe's feature statistics, which are set from the training data after loading.
_CLASSIFIER_TOP = ("fc_norm.", "head.", "head_norm.")
# Prefixes that training wrappers put in front of every key: DistributedDataParallel,
# torch.compile, Lightning's `self.model`, detection/segmentation style `backbone`.
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.", "backbone.")
# A wrapper prefix is taken off only when at least this share of the keys carries it (a Lightning
# module may hold a loss buffer or metric state beside its `model`).
_NEARLY_ALL = 0.9
_SHOWN = 5  # keys listed per kind in an error


class CheckpointMismatchError(ValueError):
  """A checkpoint's keys or shapes do not fit the target model; nothing was loaded.

  `str(error)` is a short, ranked diagnosis. The full lists are attributes:
  `missing` and `unexpected` (keys after the wrapper prefixes were taken off) and `mismatched`
  ((key, file shape, model shape) tuples).
  """

  def __init__(self, message: str, *, missing: Sequence[str] = (),
               unexpected: Sequence[str] = (),
               mismatched: Sequence[tuple[str, tuple[int, ...], tuple[int, ...]]] = ()):
    super().__init__(message)
    self.missing = list(missing)
    self.unexpected = list(unexpected)
    self.mismatched = list(mismatched)


@dataclasses.dataclass
class LoadReport:
  loaded: list[str]
  dropped: list[str]          # present in the file, not used by the target (with the reason)
  fresh: list[str]            # target parameters kept at their new initialisation
  notes: list[str] = dataclasses.field(default_factory=list)  # container taken, prefixes removed

  def summary(self) -> str:
    lines = list(self.notes) + [f"loaded {len(self.loaded)} tensors"]
    if self.dropped:
      lines.append(f"dropped {len(self.dropped)}: " + ", ".join(self.dropped))
    if self.fresh:
      lines.append(f"newly initialised {len(self.fresh)}: " + ", ".join(self.fresh))
    return "; ".join(lines)


def _as_target_key(key: str, pretrain: bool) -> str:
  """The target key a file key would load into; a classifier takes a pretraining `encoder.`."""
  if not pretrain and key.startswith("encoder."):
    return key[len("encoder."):]
  return key


def _fit(keys, shapes: Mapping, pretrain: bool) -> int:
  return len({_as_target_key(k, pretrain) for k in keys} & shapes.keys())


def _wrapper_chain(keys: Sequence[str]) -> list[str]:
  """Known wrapper prefixes that nearly every key carries, outermost first (any nesting)."""
  chain, under = [], list(keys)
  while under:
    for p in WRAPPER_PREFIXES:
      inner = [k[len(p):] for k in under if k.startswith(p)]
      if inner and len(inner) >= _NEARLY_ALL * len(keys):
        chain.append(p)
        under = inner
        break
    else:
      break
  return chain


def strip_wrappers(state_dict: Mapping[str, np.ndarray], shapes: Mapping[str, tuple[int, ...]], *,
                   pretrain: bool) -> tuple[dict[str, np.ndarray], str, int, list[str]]:
  """Takes off the wrapper prefixes that make the keys fit the target best.

  A prefix is removed only when nearly all keys carry it and removing it (with the prefixes
  inside it) matches more target keys than keeping it. Keys outside the removed wrapper stay as
  they are when they are target keys and are dropped otherwise.

  Returns:
    (state_dict, the removed prefix or '', number of keys it was removed from, dropped keys with
    their reason).
  """
  keys = list(state_dict)
  chain = _wrapper_chain(keys)
  best, best_fit = "", _fit(keys, shapes, pretrain)
  for i in range(1, len(chain) + 1):
    prefix = "".join(chain[:i])
    fit = _fit([k[len(prefix):] for k in keys if k.startswith(prefix)], shapes, pretrain)
    if fit > best_fit:
      best, best_fit = prefix, fit
  if not best:
    return dict(state_dict), "", 0, []
  out, dropped = {}, []
  for k, v in state_dict.items():
    if k.startswith(best):
      out[k[len(best):]] = v
    elif _as_target_key(k, pretrain) in shapes and k not in out:
      out[k] = v
    else:
      dropped.append(f"{k} (outside the {best!r} wrapper)")
  return out, best, sum(k.startswith(best) for k in keys), dropped


def match_state_dict(state_dict: Mapping[str, np.ndarray], template: Mapping, *,
                     pretrain: bool, source: str = "checkpoint"
                     ) -> tuple[dict[str, np.ndarray], LoadReport]:
  """Returns (state_dict restricted to the target's keys, report).

  Args:
    state_dict: {PyTorch key: array}, e.g. from `files.load_state_dict` (whose `origin`
      attribute, when present, is repeated in the report).
    template: the target's JAX parameter tree (arrays or shape structs).
    pretrain: whether the target is a pretraining (MAE) model.
    source: name of the file, for messages.

  Raises:
    CheckpointMismatchError: with a short diagnosis when a key's shape differs (other than a
      classifier head, which is replaced), the file lacks a target key (other than fc_norm/head
      when a classifier starts from a pretraining checkpoint) or has keys the target does not use.
  """
  shapes = mapping.torch_shapes(template, pretrain=pretrain)
  notes = []
  origin = getattr(state_dict, "origin", "")
  if origin:
    notes.append(origin)

  sd, prefix, stripped, dropped = strip_wrappers(state_dict, shapes, pretrain=pretrain)
  if prefix:
    notes.append(f"removed the wrapper prefix {prefix!r} from {stripped} keys")
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

  # In model order, the patch embedding first: its output width is the model's embed_dim.
  mismatched = sorted(((k, tuple(np.shape(sd[k])), shapes[k]) for k in shapes
                       if k in sd and tuple(np.shape(sd[k])) != shapes[k]),
                      key=lambda t: "patch_embed." not in t[0])
  unexpected = sorted(k for k in sd if k not in shapes)
  missing = sorted(k for k in shapes if k not in sd)
  if not pretrain:
    fresh = [k for k in missing if k.startswith(_CLASSIFIER_TOP)]
    missing = [k for k in missing if not k.startswith(_CLASSIFIER_TOP)]
  if mismatched or missing or unexpected:
    raise CheckpointMismatchError(
        _diagnosis(source, notes, sd, shapes, missing, unexpected, mismatched),
        missing=missing, unexpected=unexpected, mismatched=mismatched)
  loaded = sorted(sd)
  return {k: sd[k] for k in loaded}, LoadReport(loaded, dropped, fresh, notes)


# ------------------------------------------------------------------------------------------------
# Diagnosis of a checkpoint that does not fit.
# ------------------------------------------------------------------------------------------------


def _first(keys: Sequence[str], n: int = _SHOWN) -> str:
  shown = ", ".join(k if len(k) <= 70 else k[:67] + "..." for k in keys[:n])
  return shown + (f", ... ({len(keys) - n} more)" if len(keys) > n else "")


def _leading(keys: Sequence[str], depth: int) -> collections.Counter:
  """Counts the dotted prefixes of `depth` parts (with their trailing dot) among `keys`."""
  return collections.Counter(".".join(k.split(".")[:depth]) + "."
                             for k in keys if k.count(".") >= depth)


def _prefix_findings(file_keys, missing, unexpected, shapes, pretrain) -> list[str]:
  """Prefixes that, taken off the file's keys or put on them, would explain the misfit."""
  findings = []
  want = set(missing)
  best = None
  for depth in (1, 2, 3):
    for p, n in _leading(unexpected, depth).items():
      if any(k.startswith(p) for k in shapes):
        continue
      hits = len({_as_target_key(k[len(p):], pretrain) for k in unexpected if k.startswith(p)}
                 & want)
      if hits and (best is None or hits > best[1]):
        best = (p, hits, n)
  if best:
    p, hits, n = best
    who = ("every key of the file starts" if n == len(file_keys) else
           f"{n} of the file's {len(file_keys)} keys start")
    findings.append(
        f"{who} with {p!r}, which the model's keys do not have; without it "
        f"they match {hits} of the {len(missing)} missing keys: " +
        (f"strip it ({{k.removeprefix({p!r}): v for k, v in state_dict.items()}})."
         if n == len(file_keys) else
         f"keep only the keys under it and strip it ({{k.removeprefix({p!r}): v for k, v in "
         f"state_dict.items() if k.startswith({p!r})}})."))
  best = None
  for p, n in _leading(missing, 1).items():
    if any(k.startswith(p) for k in file_keys):
      continue
    hits = sum(1 for k in unexpected if p + k in want)
    if hits and (best is None or hits > best[1]):
      best = (p, hits)
  if best:
    p, hits = best
    advice = ("it looks like a classifier or encoder-only checkpoint: import it as a classifier "
              "(without --pretrain)" if pretrain and p == "encoder." else
              f"add the prefix {p!r} to the file's keys")
    findings.append(f"the model's keys start with {p!r} and the file's do not ({hits} would match "
                    f"with it): {advice}.")
  return findings


def _size(keys_shapes: Mapping[str, tuple[int, ...]]) -> tuple[str, int | None, int]:
  """(arch, embed_dim, number of encoder blocks) read off PyTorch key shapes."""
  arch = "tpsbt" if any(k.startswith("temporal_downsamples.") for k in keys_shapes) else "vit"
  width = keys_shapes.get("patch_embed.proj.weight")
  blocks = {m.group(1) for k in keys_shapes for m in [re.match(r"blocks\.(\d+)\.", k)] if m}
  return arch, (width[0] if width else None), len(blocks)


def _size_hint(sd, shapes, pretrain) -> str:
  file_shapes = {_as_target_key(k, pretrain).removeprefix("encoder."): tuple(np.shape(v))
                 for k, v in sd.items()}
  model_shapes = {k.removeprefix("encoder."): v for k, v in shapes.items()}
  arch, width, depth = _size(file_shapes)
  m_arch, m_width, m_depth = _size(model_shapes)
  if width is None or (width, depth) == (m_width, m_depth):
    return ""
  from svfap_jax.models import registry  # pylint: disable=g-import-not-at-top
  names = [n for n, s in registry.MODELS.items()
           if (s.arch, s.embed_dim, s.depth) == (arch, width, depth)]
  kind = "TPSBT" if arch == "tpsbt" else "ViT"
  fits = (f"registered model(s) of that size: {', '.join(names)}; pass it as --model / name"
          if names else "no registered model has that size; register a ModelSpec for it")
  return (f"the file holds another model size: a {kind} with embed_dim {width} and {depth} blocks, "
          f"the target is a {'TPSBT' if m_arch == 'tpsbt' else 'ViT'} with embed_dim {m_width} and "
          f"{m_depth} blocks; {fits}.")


def _diagnosis(source, notes, sd, shapes, missing, unexpected, mismatched) -> str:
  pretrain = any(k.startswith("encoder.") for k in shapes)
  head = f"{source} does not fit the target model ({len(shapes)} tensors); nothing was loaded"
  if notes:
    head += f" ({'; '.join(notes)})"
  lines = [head + "."]
  causes = _prefix_findings(list(sd), missing, unexpected, shapes, pretrain)
  hint = _size_hint(sd, shapes, pretrain) if mismatched or missing or unexpected else ""
  if hint:
    causes.append(hint)
  lines += [f"{i}. {c}" for i, c in enumerate(causes, 1)]
  if mismatched:
    lines.append(f"{len(mismatched)} key(s) with another shape:")
    lines += [f"  {k}: file {a} vs model {b}" for k, a, b in mismatched[:_SHOWN]]
    if len(mismatched) > _SHOWN:
      lines.append(f"  ... ({len(mismatched) - _SHOWN} more)")
  if missing:
    lines.append(f"{len(missing)} model key(s) missing from the file: {_first(missing)}")
  if unexpected:
    lines.append(f"{len(unexpected)} file key(s) the model does not have: {_first(unexpected)}")
  return "\n".join(lines)
