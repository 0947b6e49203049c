"""AdamW with a warmup-cosine schedule, weight-decay mask, layer-wise lr decay and accumulation.

The optimizer follows the SVFAP/VideoMAE recipe (`optim_factory.create_optimizer` plus the
per-iteration `cosine_scheduler`):

- lr = optim.lr * batch_size / 256, linear warmup from optim.warmup_init_lr, then cosine to
  optim.min_lr;
- AdamW (decoupled weight decay multiplied by the lr, as in torch.optim.AdamW); no decay for 1-D
  parameters, biases, position tables, `cls_token` and `mask_token`;
- layer-wise lr decay for fine-tuning: the update of a parameter in layer i (0 = patch embedding,
  i = block i-1, L+1 = everything above the blocks) is multiplied by
  layer_decay ** (L + 1 - i); the decay term is scaled too, since the original multiplies the
  group lr, which torch's AdamW also applies to the decay;
- optional global-norm clipping of the (accumulated) gradient, gradient accumulation over
  `accum_steps` micro-batches, and an EMA of the parameters (`ema_update`).

Config fields read by `make_optimizer` (an ml_collections.ConfigDict, or any object with attribute
or item access):

  config.batch_size           effective batch of one optimizer update, over all devices and all
                              accumulated micro-batches; each micro-batch is
                              batch_size / accum_steps samples
  config.optim.lr             base lr, per 256 samples when scale_lr_by_batch
  config.optim.min_lr         final lr of the cosine (default 1e-6)
  config.optim.warmup_steps   linear-warmup length in optimizer updates (default 0)
  config.optim.warmup_init_lr lr at step 0 (default 0.0)
  config.optim.b1, .b2        Adam betas (defaults 0.9, 0.999; pretraining uses 0.9, 0.95)
  config.optim.eps            Adam epsilon (default 1e-8)
  config.optim.weight_decay   decoupled weight decay (default 0.05)
  config.optim.layer_decay    layer-wise lr decay; 1.0 = off (default 1.0; fine-tuning 0.75)
  config.optim.clip_grad      max global gradient norm; 0 = off (default 0.0)
  config.optim.accum_steps    micro-batches per optimizer update (default 1)
  config.optim.scale_lr_by_batch  multiply lr and min_lr by batch_size / 256 (default True)

`config.optim.ema_decay` (0 = off) is not read here: the train step applies `ema_update` after
each optimizer update. `total_steps` (an argument) and `warmup_steps` count optimizer updates,
not micro-batches; with accumulation, the schedule advances once per `accum_steps` calls.

Frozen and partial fine-tuning (`config.finetune`, optional; absent = 'full'):

  config.finetune.mode        'full' (default): everything trains;
                              'linear_probe': only the head (`head.*`) trains, on features
                              standardised by fixed statistics (`VideoClassifier(linear_probe=True)`);
                              'last_blocks': the last `trainable_last_blocks` encoder blocks and
                              everything above them (fc_norm, head) train, plus the temporal/
                              spatial downsampling modules of a stage whose first block trains;
                              patch and position embeddings stay frozen;
                              'regex': parameters whose PyTorch name (`blocks.11.mlp.fc1.weight`,
                              `head.weight`, ...) matches `trainable_regex` (re.search) train
  config.finetune.trainable_last_blocks   k for 'last_blocks' (1 <= k <= number of blocks)
  config.finetune.trainable_regex         pattern for 'regex'
  config.model.name           registry name; 'last_blocks' reads the TPSBT stage depths from it

Frozen parameters go through `optax.multi_transform` to `optax.set_to_zero()`: their updates are
exactly zero and the optimizer keeps no state for them (no Adam moments, no accumulation buffers);
the weight-decay mask, layer-wise lr decay, clipping (by the norm of the trainable gradients) and
accumulation apply to the trainable ones. Statistics stored among the parameters (the linear
probe's `head_norm/{mean,var}`) are frozen in every mode. `stop_frozen_gradients` lets a train step
skip the backward pass through frozen parameters.
"""
from __future__ import annotations

import re
from typing import Any, Mapping, Optional, Sequence

import flax.traverse_util as traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import optax

from svfap_jax.interop import mapping

# Token and position embeddings: never decayed whatever their shape (the original's
# `no_weight_decay()` list), and below the first block in the layer-decay order.
TOKEN_NAMES = frozenset({"pos_embed", "cls_token", "mask_token"})
_BLOCK = re.compile(r"^blocks\.(\d+)\.")
_DOWNSAMPLE = re.compile(r"^(?:temporal|spatial)_downsamples\.(\d+)\.")

FINETUNE_MODES = ("full", "linear_probe", "last_blocks", "regex")
# Statistics kept among the parameters (PyTorch-name prefixes): constants, never trained.
STATISTICS_PREFIXES = ("head_norm.",)
TRAINABLE, FROZEN = "trainable", "frozen"

_DEFAULTS = {
    "min_lr": 1e-6,
    "warmup_steps": 0,
    "warmup_init_lr": 0.0,
    "b1": 0.9,
    "b2": 0.999,
    "eps": 1e-8,
    "weight_decay": 0.05,
    "layer_decay": 1.0,
    "clip_grad": 0.0,
    "accum_steps": 1,
    "scale_lr_by_batch": True,
}


def lr_schedule(base_lr: float, *, batch_size: int, total_steps: int, warmup_steps: int,
                min_lr: float, warmup_init_lr: float = 0.0,
                scale_by_batch: bool = True) -> optax.Schedule:
  """Per-update lr: linear warmup, then half-cosine down to `min_lr`.

  Matches the original per-iteration table: the warmup is `linspace(warmup_init_lr, lr,
  warmup_steps)` (so its last step already reaches lr) and step `warmup_steps + i` has
  `min_lr + 0.5 * (lr - min_lr) * (1 + cos(pi * i / (total_steps - warmup_steps)))`.
  Past `total_steps` the lr stays at `min_lr`.

  Args:
    base_lr: lr per 256 samples (or the absolute lr when `scale_by_batch` is False).
    batch_size: effective batch of one optimizer update.
    total_steps: optimizer updates in the whole run, warmup included.
    warmup_steps: linear-warmup updates.
    min_lr: final lr; scaled by the batch like `base_lr`, as the original does.
    warmup_init_lr: lr of the first update (not scaled).
    scale_by_batch: apply the linear scaling rule lr * batch_size / 256.

  Returns:
    An optax schedule: step -> lr.
  """
  if total_steps <= 0:
    raise ValueError(f"total_steps={total_steps} must be positive")
  if not 0 <= warmup_steps < total_steps:
    raise ValueError(f"warmup_steps={warmup_steps} must be in [0, total_steps={total_steps})")
  factor = batch_size / 256.0 if scale_by_batch else 1.0
  peak, end = base_lr * factor, min_lr * factor
  cosine = optax.cosine_decay_schedule(
      init_value=peak, decay_steps=total_steps - warmup_steps,
      alpha=end / peak if peak else 0.0)
  if warmup_steps == 0:
    return cosine
  if warmup_steps == 1:
    warmup = optax.constant_schedule(warmup_init_lr)
  else:
    # linspace(init, peak, w) reaches the peak at step w - 1, one step before the cosine starts.
    warmup = optax.linear_schedule(warmup_init_lr, peak, transition_steps=warmup_steps - 1)
  return optax.join_schedules([warmup, cosine], boundaries=[warmup_steps])


def _torch_names(params: Mapping, pretrain: bool) -> dict[tuple[str, ...], str]:
  """JAX path -> the original PyTorch parameter name."""
  return {path: name for name, path in mapping.key_map(params, pretrain=pretrain).items()}


def _tree_from_paths(params: Mapping, fn) -> Any:
  """A pytree shaped like `params` with `fn(path, leaf)` at every leaf."""
  flat = traverse_util.flatten_dict(params)
  return traverse_util.unflatten_dict({path: fn(path, leaf) for path, leaf in flat.items()})


def decays(name: str, shape: tuple[int, ...]) -> bool:
  """Whether the parameter with PyTorch name `name` gets weight decay (the original's rule)."""
  return not (len(shape) <= 1 or name.endswith(".bias")
              or name in TOKEN_NAMES or name.rsplit(".", 1)[-1] in TOKEN_NAMES)


def weight_decay_mask(params: Mapping, *, pretrain: bool) -> Any:
  """Pytree of bools shaped like `params`: True where weight decay applies.

  Excluded: every 1-D parameter (LayerNorm scales, q_bias/v_bias, layer-scale gammas), every
  bias, and position tables / `cls_token` / `mask_token`. `params` may hold arrays or
  `jax.ShapeDtypeStruct`s.
  """
  names = _torch_names(params, pretrain)
  return _tree_from_paths(params, lambda path, leaf: decays(names[path], tuple(leaf.shape)))


def layer_id(name: str, num_layers: int) -> int:
  """Layer index of a parameter for layer-wise lr decay, from its classifier PyTorch name.

  0 for the patch embedding and the token/position embeddings, i + 1 for `blocks.i`, and
  `num_layers + 1` for everything else (downsampling modules, norms, heads, the MAE decoder).
  """
  if name in TOKEN_NAMES or name.startswith("patch_embed"):
    return 0
  m = _BLOCK.match(name)
  if m:
    return int(m.group(1)) + 1
  return num_layers + 1


def num_encoder_blocks(params: Mapping) -> int:
  """The encoder depth L: the number of `blocks_*` modules under 'encoder'."""
  return sum(1 for key in params["encoder"] if re.fullmatch(r"blocks_\d+", key))


def layer_decay_scales(params: Mapping, *, layer_decay: float, pretrain: bool = False) -> Any:
  """Pytree of floats shaped like `params`: the lr multiplier of each parameter.

  Block i gets layer_decay ** (L - i), the patch embedding layer_decay ** (L + 1), the parts
  above the blocks 1.0. For a pretraining model the encoder's names are taken without their
  'encoder.' prefix, so its encoder is scaled like the classifier's and the decoder gets 1.0
  (the original pretrains without layer decay: keep layer_decay = 1.0 there).
  """
  num_layers = num_encoder_blocks(params)
  values = [layer_decay ** (num_layers + 1 - i) for i in range(num_layers + 2)]
  names = _torch_names(params, pretrain)

  def scale(path, _):
    name = names[path]
    if pretrain:
      if not name.startswith("encoder.") and name not in TOKEN_NAMES:
        return 1.0
      name = name.removeprefix("encoder.")
    return values[layer_id(name, num_layers)]

  return _tree_from_paths(params, scale)


def scale_by_tree(scales: Any) -> optax.GradientTransformation:
  """Multiplies each update by its fixed per-parameter factor in `scales`.

  Inside `optax.multi_transform` the updates of other groups are `optax.MaskedNode`s; they pass
  through unchanged.
  """
  def scale(s, u):
    return u if isinstance(u, optax.MaskedNode) else u * jnp.asarray(s, u.dtype)

  # `scales` leads the map: its leaves line up with array or MaskedNode subtrees of the updates.
  return optax.stateless(
      lambda updates, params=None: jax.tree_util.tree_map(scale, scales, updates))


# ------------------------------------------------------------------------------ partial training


def _maybe(obj: Any, name: str) -> Any:
  """`obj.name` or `obj[name]`, None when absent (configs may be ConfigDicts, dicts or objects)."""
  if obj is None:
    return None
  if isinstance(obj, Mapping):
    return obj.get(name)
  try:
    return obj[name]
  except (KeyError, TypeError, AttributeError):
    return getattr(obj, name, None)


def finetune_options(config: Any) -> tuple[str, int, str]:
  """(mode, trainable_last_blocks, trainable_regex) from `config.finetune` ('full' if absent)."""
  ft = _maybe(config, "finetune")
  return (str(_maybe(ft, "mode") or "full"), int(_maybe(ft, "trainable_last_blocks") or 0),
          str(_maybe(ft, "trainable_regex") or ""))


def finetune_config_errors(config: Any) -> list[str]:
  """Problems of `config.finetune` that need no parameters, one message per field (for the
  run's config check); `trainable_mask` also checks what needs the parameter tree."""
  mode, k, regex = finetune_options(config)
  errors = []
  if mode not in FINETUNE_MODES:
    errors.append(f"finetune.mode={mode!r} must be one of {FINETUNE_MODES}")
    return errors
  if mode in ("linear_probe", "last_blocks") and _maybe(config, "mode") == "pretrain":
    errors.append(f"finetune.mode={mode!r} is for fine-tuning runs; pretraining takes 'full' or "
                  "'regex'")
  if mode == "last_blocks" and k < 1:
    errors.append(f"finetune.trainable_last_blocks={k}: set the number of top encoder blocks "
                  "to train (>= 1) for finetune.mode='last_blocks'")
  if mode == "regex":
    if not regex:
      errors.append("finetune.trainable_regex is empty: give a pattern of PyTorch parameter "
                    "names to train, e.g. 'blocks\\.1[01]\\.|fc_norm|head'")
    else:
      try:
        re.compile(regex)
      except re.error as e:
        errors.append(f"finetune.trainable_regex={regex!r} is not a regular expression: {e}")
  return errors


def _stage_depths(config: Any) -> Optional[tuple[int, ...]]:
  name = _maybe(_maybe(config, "model"), "name")
  if not name:
    return None
  from svfap_jax.models.registry import get_spec  # pylint: disable=g-import-not-at-top
  return tuple(get_spec(name).stage_depths)


def trainable_mask(params: Mapping, *, mode: str = "full", last_blocks: int = 0,
                   regex: str = "", pretrain: bool = False,
                   stage_depths: Optional[Sequence[int]] = None) -> Any:
  """Pytree of bools shaped like `params`: True where the parameter trains.

  Args:
    params: parameter tree (arrays or ShapeDtypeStructs).
    mode: one of FINETUNE_MODES (see the module docstring).
    last_blocks: k for 'last_blocks'.
    regex: pattern for 'regex', searched in each parameter's PyTorch name.
    pretrain: whether `params` is an MAE pretraining tree ('full' and 'regex' only).
    stage_depths: the TPSBT's blocks per stage, which places its downsampling modules for
      'last_blocks' (None: a ViT, or downsampling modules stay frozen).

  Raises:
    ValueError: unknown mode, a mode the tree cannot take, k out of range, or nothing to train.
  """
  if mode not in FINETUNE_MODES:
    raise ValueError(f"finetune.mode={mode!r} must be one of {FINETUNE_MODES}")
  if pretrain and mode in ("linear_probe", "last_blocks"):
    raise ValueError(f"finetune.mode={mode!r} applies to a classifier, not to the MAE "
                     "pretraining model")
  names = _torch_names(params, pretrain)
  num_layers = num_encoder_blocks(params)
  first = num_layers - last_blocks
  if mode == "last_blocks" and not 1 <= last_blocks <= num_layers:
    raise ValueError(f"finetune.trainable_last_blocks={last_blocks} must be in [1, "
                     f"{num_layers}] (the encoder has {num_layers} blocks)")
  pattern = re.compile(regex) if mode == "regex" else None
  stage_starts = np.cumsum([0] + list(stage_depths or ())).tolist()

  def trains(name: str) -> bool:
    if name.startswith(STATISTICS_PREFIXES):
      return False
    if mode == "full":
      return True
    if mode == "linear_probe":
      return name.startswith("head.")
    if mode == "regex":
      return pattern.search(name) is not None
    block = _BLOCK.match(name)
    if block:
      return int(block.group(1)) >= first
    down = _DOWNSAMPLE.match(name)
    if down:  # the entry of stage index + 1, just below that stage's first block
      stage = int(down.group(1)) + 1
      return stage < len(stage_starts) - 1 and stage_starts[stage] >= first
    return layer_id(name, num_layers) == num_layers + 1

  mask = _tree_from_paths(params, lambda path, _: trains(names[path]))
  if not any(jax.tree_util.tree_leaves(mask)):
    detail = {"linear_probe": "the model has no head: build it with num_classes > 0",
              "regex": f"no parameter name matches trainable_regex={regex!r} (names look like "
                       f"{', '.join(sorted(names.values())[:3])})"}.get(mode, "")
    raise ValueError(f"finetune.mode={mode!r} leaves no parameter to train: {detail}")
  return mask


def trainable_mask_for(config: Any, params: Mapping, *, pretrain: bool) -> Any:
  """`trainable_mask` with the settings of `config.finetune` (and the model's stage depths)."""
  mode, k, regex = finetune_options(config)
  depths = _stage_depths(config) if mode == "last_blocks" else None
  return trainable_mask(params, mode=mode, last_blocks=k, regex=regex, pretrain=pretrain,
                        stage_depths=depths)


def partition_labels(mask: Any) -> Any:
  """The `optax.multi_transform` labels of a trainable mask."""
  return jax.tree_util.tree_map(lambda t: TRAINABLE if t else FROZEN, mask)


def freeze(tx: optax.GradientTransformation, mask: Any) -> optax.GradientTransformation:
  """`tx` on the parameters where `mask` is True, exactly zero updates (and no state) elsewhere."""
  return optax.multi_transform({TRAINABLE: tx, FROZEN: optax.set_to_zero()},
                               partition_labels(mask))


def stop_frozen_gradients(params: Any, mask: Any) -> Any:
  """`params` with `jax.lax.stop_gradient` on the frozen leaves.

  Used inside a loss function, it makes the gradients of frozen parameters zero without a
  backward pass through them (for a linear probe, none through the encoder at all).
  """
  return jax.tree_util.tree_map(lambda p, t: p if t else jax.lax.stop_gradient(p), params, mask)


def _field(obj: Any, name: str, default: Any = None) -> Any:
  """Reads `obj.name` or `obj[name]`; `default` when absent (None default = required)."""
  if isinstance(obj, Mapping):
    value = obj.get(name, default)
  else:
    value = getattr(obj, name, default)
  if value is None:
    raise KeyError(f"optimizer config has no field {name!r}")
  return value


def make_optimizer(config: Any, params: Mapping, *, pretrain: bool,
                   total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Builds the training optimizer from `config.optim`, `config.batch_size` and `config.finetune`.

  Chain per update: clip by global norm (if clip_grad > 0) -> AdamW with the decay mask and the
  lr schedule -> per-parameter layer-decay scale (if layer_decay < 1); wrapped in
  `optax.MultiSteps` when accum_steps > 1, which averages the micro-batch gradients and applies
  the chain once per `accum_steps` calls (other calls return zero updates). When some parameters
  are frozen (`trainable_mask_for`), that whole chain runs on the trainable ones only and the
  frozen ones get `optax.set_to_zero()` (`freeze`).

  Args:
    config: has `batch_size` and `optim` (see the module docstring for the fields).
    params: the parameter tree (arrays or ShapeDtypeStructs); only names and shapes are used.
    pretrain: whether `params` is the MAE pretraining tree (selects the PyTorch names).
    total_steps: optimizer updates in the run.

  Returns:
    (transformation, schedule); `schedule(update_index)` is the base lr before layer scaling.
  """
  opt = _field(config, "optim")
  get = lambda name: _field(opt, name, _DEFAULTS.get(name))
  schedule = lr_schedule(
      get("lr"), batch_size=_field(config, "batch_size"), total_steps=total_steps,
      warmup_steps=int(get("warmup_steps")), min_lr=get("min_lr"),
      warmup_init_lr=get("warmup_init_lr"), scale_by_batch=bool(get("scale_lr_by_batch")))
  chain = []
  if get("clip_grad") > 0:
    chain.append(optax.clip_by_global_norm(get("clip_grad")))
  chain.append(optax.adamw(schedule, b1=get("b1"), b2=get("b2"), eps=get("eps"),
                           weight_decay=get("weight_decay"),
                           mask=weight_decay_mask(params, pretrain=pretrain)))
  if get("layer_decay") != 1.0:
    chain.append(scale_by_tree(
        layer_decay_scales(params, layer_decay=get("layer_decay"), pretrain=pretrain)))
  tx = optax.chain(*chain)
  accum = int(get("accum_steps"))
  if accum > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=accum).gradient_transformation()
  mask = trainable_mask_for(config, params, pretrain=pretrain)
  if not all(jax.tree_util.tree_leaves(mask)):
    tx = freeze(tx, mask)
  return tx, schedule


def ema_update(ema_params: Any, params: Any, decay: float, *, enabled: Any = True) -> Any:
  """One EMA step: ema <- decay * ema + (1 - decay) * params (timm's ModelEma rule).

  With gradient accumulation the parameters only move on every `accum_steps`-th call; pass
  `enabled=did_update(opt_state)` so the average advances once per real update. `enabled` may be
  a traced bool.
  """
  new = optax.incremental_update(params, ema_params, step_size=1.0 - decay)
  if enabled is True:
    return new
  return jax.tree_util.tree_map(lambda n, o: jnp.where(enabled, n, o), new, ema_params)


def did_update(opt_state: Any) -> jax.Array:
  """True when the last `tx.update` applied a real update (always, without accumulation)."""
  is_multi = lambda x: isinstance(x, optax.MultiStepsState)
  # With frozen parameters the MultiSteps state sits inside the multi_transform state.
  for leaf in jax.tree_util.tree_leaves(opt_state, is_leaf=is_multi):
    if is_multi(leaf):
      # MultiSteps resets its micro-step counter to 0 right after the inner update.
      return leaf.mini_step == 0
  return jnp.asarray(True)
