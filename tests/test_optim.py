"""Optimizer: decay mask, layer-wise lr scales, schedule, AdamW step, accumulation, EMA."""
import math

import flax.traverse_util as traverse_util
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from svfap_jax import api, optim
from svfap_jax.interop import mapping


def _shapes(name, pretrain):
  """The parameter tree of a registered model as ShapeDtypeStructs (nothing is materialised)."""
  spec = api.get_spec(name)
  module = api.build_module(spec, pretrain=pretrain, num_classes=0 if pretrain else 7)
  tree = jax.eval_shape(lambda rng: api.init_params(module, spec, rng, pretrain)[0],
                        jax.random.key(0))
  return spec, tree


def _random_like(tree, seed):
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(
      lambda s: rng.standard_normal(s.shape).astype(np.float32), tree)


def _config(**optim_fields):
  fields = dict(lr=1e-3, min_lr=1e-6, warmup_steps=0, b1=0.9, b2=0.999, eps=1e-8,
                weight_decay=0.05, layer_decay=1.0, clip_grad=0.0, accum_steps=1,
                scale_lr_by_batch=True)
  fields.update(optim_fields)
  return ml_collections.ConfigDict({"batch_size": 64, "optim": fields})


def _stepper(tx):
  """A jitted (grads, opt_state, params) -> (updates, new params, new opt_state)."""
  def step(grads, state, params):
    updates, state = tx.update(grads, state, params)
    return updates, optax.apply_updates(params, updates), state
  return jax.jit(step)


def _by_torch_name(tree, pretrain):
  flat = traverse_util.flatten_dict(tree)
  return {name: flat[path] for name, path in mapping.key_map(tree, pretrain=pretrain).items()}


# ----------------------------------------------------------------------------- weight decay mask


def test_decay_mask_classifier():
  spec, tree = _shapes("svfap_tiny", pretrain=False)
  mask = _by_torch_name(optim.weight_decay_mask(tree, pretrain=False), pretrain=False)
  shapes = _by_torch_name(tree, pretrain=False)
  for name in ("blocks.0.attn.qkv.weight", "blocks.3.cross_attn.kv.weight",
               "blocks.5.mlp.fc2.weight", "patch_embed.proj.weight", "head.weight",
               "temporal_downsamples.0.weight", "spatial_downsamples.1.mlp.fc1.weight"):
    assert mask[name], name
  for name in ("blocks.0.attn.q_bias", "blocks.0.attn.v_bias", "blocks.0.norm1.weight",
               "blocks.0.norm1.bias", "blocks.0.attn.proj.bias", "blocks.3.cross_norm1.weight",
               "patch_embed.proj.bias", "fc_norm.weight", "fc_norm.bias", "head.bias",
               "temporal_downsamples.0.bias"):
    assert not mask[name], name
  # The rule as a whole: decay exactly the >= 2-D non-bias tensors.
  for name, decays in mask.items():
    assert decays == (len(shapes[name].shape) > 1 and not name.endswith(".bias")), name


def test_decay_mask_pretrain_and_gammas():
  _, tree = _shapes("svfap_tiny", pretrain=True)
  mask = _by_torch_name(optim.weight_decay_mask(tree, pretrain=True), pretrain=True)
  assert not mask["mask_token"]  # 3-D, excluded by name
  assert mask["encoder_to_decoder.weight"] and mask["decoder.head.weight"]
  assert mask["encoder.blocks.0.attn.qkv.weight"]
  assert not mask["decoder.norm.weight"] and not mask["encoder.norm.bias"]
  assert not mask["decoder.blocks.0.attn.q_bias"]
  # Layer-scale gammas are 1-D: never decayed.
  spec = api.get_spec("svfap_tiny", init_values=0.1)
  module = api.build_module(spec, num_classes=7)
  tree = jax.eval_shape(lambda r: api.init_params(module, spec, r, False)[0], jax.random.key(0))
  mask = _by_torch_name(optim.weight_decay_mask(tree, pretrain=False), pretrain=False)
  gammas = [n for n in mask if ".gamma_" in n]
  assert gammas and not any(mask[n] for n in gammas)


# ------------------------------------------------------------------------------ layer-wise decay


@pytest.mark.parametrize("name", ["svfap_tiny", "svfap_base"])
def test_layer_scales_classifier(name):
  spec, tree = _shapes(name, pretrain=False)
  num_layers = spec.depth
  assert optim.num_encoder_blocks(tree) == num_layers
  scales = _by_torch_name(optim.layer_decay_scales(tree, layer_decay=0.75), pretrain=False)
  for key, scale in scales.items():
    if key.startswith("blocks."):
      i = int(key.split(".")[1])
      assert scale == 0.75 ** (num_layers - i), key
    elif key.startswith("patch_embed."):
      assert scale == 0.75 ** (num_layers + 1), key
    else:
      assert key.split(".")[0] in ("temporal_downsamples", "spatial_downsamples", "fc_norm",
                                   "head"), key
      assert scale == 1.0, key
  assert scales[f"blocks.{num_layers - 1}.mlp.fc1.weight"] == 0.75


def test_layer_scales_pretrain():
  spec, tree = _shapes("svfap_tiny", pretrain=True)
  num_layers = spec.depth
  scales = _by_torch_name(optim.layer_decay_scales(tree, layer_decay=0.5, pretrain=True),
                          pretrain=True)
  assert scales["encoder.blocks.0.attn.qkv.weight"] == 0.5 ** num_layers
  assert scales["encoder.patch_embed.proj.weight"] == 0.5 ** (num_layers + 1)
  assert scales["mask_token"] == 0.5 ** (num_layers + 1)
  assert scales["decoder.blocks.0.attn.qkv.weight"] == 1.0
  assert scales["encoder.norm.weight"] == 1.0 and scales["encoder_to_decoder.weight"] == 1.0


# ------------------------------------------------------------------------------------- schedule


def _original_schedule(lr, min_lr, total, warmup):
  """The per-iteration table of the original code (linspace warmup + cosine)."""
  warm = np.linspace(0.0, lr, warmup)
  iters = np.arange(total - warmup)
  cos = min_lr + 0.5 * (lr - min_lr) * (1 + np.cos(np.pi * iters / len(iters)))
  return np.concatenate([warm, cos])


def test_schedule_matches_original_table():
  sched = optim.lr_schedule(1e-3, batch_size=64, total_steps=100, warmup_steps=10, min_lr=1e-6)
  peak, end = 1e-3 * 64 / 256, 1e-6 * 64 / 256
  expected = _original_schedule(peak, end, 100, 10)
  got = np.asarray(jax.jit(sched)(jnp.arange(100)))
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-12)
  assert float(sched(0)) == 0.0
  assert float(sched(9)) == pytest.approx(peak)      # warmup ends on the peak
  assert float(sched(10)) == pytest.approx(peak)     # cosine starts there
  assert float(sched(55)) == pytest.approx(end + 0.5 * (peak - end))  # middle of the cosine
  assert float(sched(99)) == pytest.approx(
      end + 0.5 * (peak - end) * (1 + math.cos(math.pi * 89 / 90)), rel=1e-5)
  assert float(sched(100)) == pytest.approx(end, rel=1e-5)
  assert float(sched(10_000)) == pytest.approx(end, rel=1e-5)


def test_schedule_variants():
  sched = optim.lr_schedule(3e-4, batch_size=512, total_steps=20, warmup_steps=0, min_lr=0.0,
                            scale_by_batch=False)
  assert float(sched(0)) == pytest.approx(3e-4) and float(sched(20)) == pytest.approx(0.0)
  sched = optim.lr_schedule(1.0, batch_size=256, total_steps=10, warmup_steps=5, min_lr=0.0,
                            warmup_init_lr=0.2)
  np.testing.assert_allclose(sched(jnp.arange(5)), np.linspace(0.2, 1.0, 5), rtol=1e-6)
  with pytest.raises(ValueError):
    optim.lr_schedule(1.0, batch_size=256, total_steps=10, warmup_steps=10, min_lr=0.0)


# ------------------------------------------------------------------------------ optimizer steps


def _small_state():
  """A few-leaf classifier-shaped tree: cheap to compile, covers every naming rule."""
  block = lambda: {"attn": {"qkv": {"kernel": (8, 24)}, "q_bias": (8,), "v_bias": (8,),
                            "proj": {"kernel": (8, 8), "bias": (8,)}},
                   "norm1": {"scale": (8,), "bias": (8,)}}
  shapes = {"encoder": {"patch_embed": {"kernel": (2, 4, 4, 3, 8), "bias": (8,)},
                        "blocks_0": block(), "blocks_1": block(),
                        "temporal_downsamples_0": {"kernel": (2, 8, 8), "bias": (8,)}},
            "fc_norm": {"scale": (8,), "bias": (8,)},
            "head": {"kernel": (8, 3), "bias": (3,)}}
  tree = jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s, jnp.float32), shapes,
                                is_leaf=lambda x: isinstance(x, tuple))
  return tree, _random_like(tree, 0)


def test_one_step_equals_torch_style_adamw():
  tree, params = _small_state()
  grads = _random_like(tree, 1)
  cfg = _config(layer_decay=0.75, weight_decay=0.05, b1=0.9, b2=0.999)
  tx, sched = optim.make_optimizer(cfg, tree, pretrain=False, total_steps=50)
  updates, new, _ = _stepper(tx)(grads, jax.jit(tx.init)(params), params)

  lr = float(sched(0))
  assert lr == pytest.approx(1e-3 * 64 / 256)
  mask = optim.weight_decay_mask(tree, pretrain=False)
  scales = optim.layer_decay_scales(tree, layer_decay=0.75)

  def torch_adamw(p, g, decays, scale):
    # torch.optim.AdamW, first step, with the group lr = lr * lr_scale.
    group_lr, wd = lr * scale, (0.05 if decays else 0.0)
    p = p.astype(np.float64) * (1.0 - group_lr * wd)
    m, v = 0.1 * g, 0.001 * g.astype(np.float64) ** 2
    m_hat, v_hat = m / (1 - 0.9), v / (1 - 0.999)
    return p - group_lr * m_hat / (np.sqrt(v_hat) + 1e-8)

  expected = jax.tree_util.tree_map(torch_adamw, params, grads, mask, scales)
  for (path, got), want in zip(traverse_util.flatten_dict(new).items(),
                               traverse_util.flatten_dict(expected).values()):
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-7, err_msg=str(path))
  # The scale really differs across the tree: the first block moves less than the head.
  delta = lambda *p: np.abs(np.asarray(traverse_util.flatten_dict(updates)[p])).mean()
  assert delta("encoder", "blocks_0", "attn", "qkv", "kernel") < delta("head", "kernel")


def test_steps_equal_torch_adamw_param_groups():
  torch = pytest.importorskip("torch")
  tree, params = _small_state()
  cfg = _config(layer_decay=0.75, warmup_steps=2, lr=2e-3, b2=0.95)
  tx, sched = optim.make_optimizer(cfg, tree, pretrain=False, total_steps=10)
  step_fn = _stepper(tx)
  state = jax.jit(tx.init)(params)

  # The original's parameter groups: one per (layer id, decay) with its lr_scale.
  names = {path: n for n, path in mapping.key_map(tree, pretrain=False).items()}
  num_layers = optim.num_encoder_blocks(tree)
  flat = traverse_util.flatten_dict(params)
  tensors = {p: torch.tensor(np.asarray(v), dtype=torch.float64, requires_grad=True)
             for p, v in flat.items()}
  groups = {}
  for path, t in tensors.items():
    decays = optim.decays(names[path], tuple(t.shape))
    layer = optim.layer_id(names[path], num_layers)
    group = groups.setdefault((layer, decays), {
        "params": [], "weight_decay": 0.05 if decays else 0.0,
        "lr_scale": 0.75 ** (num_layers + 1 - layer)})
    group["params"].append(t)
  opt = torch.optim.AdamW(list(groups.values()), lr=0.0, betas=(0.9, 0.95), eps=1e-8)

  for step in range(3):
    grads = _random_like(tree, 10 + step)
    _, params, state = step_fn(grads, state, params)
    for g in opt.param_groups:
      g["lr"] = float(sched(step)) * g["lr_scale"]
    for path, g in traverse_util.flatten_dict(grads).items():
      tensors[path].grad = torch.tensor(np.asarray(g), dtype=torch.float64)
    opt.step()
  for path, got in traverse_util.flatten_dict(params).items():
    np.testing.assert_allclose(np.asarray(got), tensors[path].detach().numpy(), rtol=1e-5,
                               atol=1e-6, err_msg=str(path))


def test_accumulation_equals_mean_gradient_step():
  tree, params = _small_state()
  micro = [_random_like(tree, 20 + i) for i in range(3)]
  mean = jax.tree_util.tree_map(lambda *g: sum(g) / 3.0, *micro)
  cfg = _config(layer_decay=0.75)

  tx, _ = optim.make_optimizer(cfg, tree, pretrain=False, total_steps=10)
  _, want, _ = _stepper(tx)(mean, jax.jit(tx.init)(params), params)

  cfg.optim.accum_steps = 3
  tx, _ = optim.make_optimizer(cfg, tree, pretrain=False, total_steps=10)
  step_fn = _stepper(tx)
  state, got = jax.jit(tx.init)(params), params
  for i, g in enumerate(micro):
    _, got, state = step_fn(g, state, got)
    assert bool(optim.did_update(state)) == (i == 2)
  for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)


def test_clipping_and_plain_dict_config():
  params = {"encoder": {"blocks_0": {"mlp": {"fc1": {"kernel": jnp.ones((4, 4))}}},
                        "patch_embed": {"kernel": jnp.ones((1, 2, 2, 1, 4))}},
            "head": {"kernel": jnp.ones((4, 2)), "bias": jnp.zeros((2,))}}
  grads = jax.tree_util.tree_map(lambda p: 100.0 * jnp.ones_like(p), params)
  norm = float(optax.global_norm(grads))
  base = {"lr": 0.1, "weight_decay": 0.0, "scale_lr_by_batch": False}
  clipped, _ = optim.make_optimizer({"batch_size": 8, "optim": {**base, "clip_grad": 1.0}},
                                    params, pretrain=False, total_steps=5)
  reference, _ = optim.make_optimizer({"batch_size": 8, "optim": base}, params, pretrain=False,
                                      total_steps=5)
  small = jax.tree_util.tree_map(lambda g: g / norm, grads)
  a, _, _ = _stepper(clipped)(grads, jax.jit(clipped.init)(params), params)
  b, _, _ = _stepper(reference)(small, jax.jit(reference.init)(params), params)
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5)
  with pytest.raises(KeyError, match="lr"):
    optim.make_optimizer({"batch_size": 8, "optim": {}}, params, pretrain=False, total_steps=5)


def test_ema_update():
  ema = {"w": jnp.array([1.0, 2.0])}
  params = {"w": jnp.array([3.0, 4.0])}
  out = optim.ema_update(ema, params, 0.9)
  np.testing.assert_allclose(out["w"], [1.2, 2.2], rtol=1e-6)
  held = jax.jit(lambda e, p, on: optim.ema_update(e, p, 0.9, enabled=on))(ema, params, False)
  np.testing.assert_array_equal(held["w"], ema["w"])
  assert bool(optim.did_update(optax.adamw(1e-3).init(params)))


@pytest.mark.parametrize("pretrain", [False, True])
def test_make_optimizer_traces_on_real_trees(pretrain):
  _, tree = _shapes("svfap_tiny", pretrain=pretrain)
  cfg = _config(layer_decay=1.0 if pretrain else 0.75, accum_steps=2, clip_grad=3.0,
                warmup_steps=5, b2=0.95 if pretrain else 0.999)
  tx, sched = optim.make_optimizer(cfg, tree, pretrain=pretrain, total_steps=40)
  state = jax.eval_shape(tx.init, tree)
  updates, _ = jax.eval_shape(tx.update, tree, state, tree)
  assert jax.tree_util.tree_structure(updates) == jax.tree_util.tree_structure(tree)
  assert float(sched(4)) == pytest.approx(1e-3 * 64 / 256)


# ---------------------------------------------------------------------- frozen / partial training


def _linear_probe_tree(num_classes=3):
  """svfap_tiny classifier with the linear-probe standardisation, as ShapeDtypeStructs."""
  from svfap_jax.models.registry import get_spec
  spec = get_spec("svfap_tiny")
  module = api.build_module(spec, num_classes=num_classes).clone(linear_probe=True)
  return jax.eval_shape(lambda rng: api.init_params(module, spec, rng, False)[0],
                        jax.random.key(0))


def _trainable_names(mask, tree):
  return {n for n, path in mapping.key_map(tree, pretrain=False).items()
          if traverse_util.flatten_dict(mask)[path]}


def test_trainable_masks_per_mode():
  tree = _linear_probe_tree()   # svfap_tiny: stages of 2/2/2 blocks, L = 6
  names = set(mapping.key_map(tree, pretrain=False))
  stats = {"head_norm.mean", "head_norm.var"}
  assert stats <= names
  lp = _trainable_names(optim.trainable_mask(tree, mode="linear_probe"), tree)
  assert lp == {"head.weight", "head.bias"}
  assert _trainable_names(optim.trainable_mask(tree, mode="full"), tree) == names - stats

  depths = (2, 2, 2)
  two = _trainable_names(optim.trainable_mask(tree, mode="last_blocks", last_blocks=2,
                                              stage_depths=depths), tree)
  blocks = {n.split(".")[1] for n in two if n.startswith("blocks.")}
  assert blocks == {"4", "5"}
  # Stage 3 starts at block 4: its downsampling modules train, stage 2's do not.
  assert any(n.startswith("temporal_downsamples.1.") for n in two)
  assert any(n.startswith("spatial_downsamples.1.") for n in two)
  assert not any(n.startswith(("temporal_downsamples.0.", "spatial_downsamples.0.",
                               "patch_embed")) for n in two)
  assert {"fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"} <= two
  assert not two & stats
  three = _trainable_names(optim.trainable_mask(tree, mode="last_blocks", last_blocks=3,
                                                stage_depths=depths), tree)
  assert {n.split(".")[1] for n in three if n.startswith("blocks.")} == {"3", "4", "5"}
  assert not any(n.startswith("spatial_downsamples.0.") for n in three)  # block 2 is frozen
  four = _trainable_names(optim.trainable_mask(tree, mode="last_blocks", last_blocks=4,
                                               stage_depths=depths), tree)
  assert any(n.startswith("spatial_downsamples.0.") for n in four)

  rx = _trainable_names(optim.trainable_mask(tree, mode="regex", regex=r"^blocks\.0\.|^head\."),
                        tree)
  assert rx and all(n.startswith(("blocks.0.", "head.")) for n in rx)
  assert "head.weight" in rx and "blocks.0.attn.qkv.weight" in rx


def test_trainable_mask_errors():
  tree = _linear_probe_tree()
  with pytest.raises(ValueError, match="finetune.mode='bogus'"):
    optim.trainable_mask(tree, mode="bogus")
  with pytest.raises(ValueError, match=r"trainable_last_blocks=7 must be in \[1, 6\]"):
    optim.trainable_mask(tree, mode="last_blocks", last_blocks=7)
  with pytest.raises(ValueError, match="no parameter name matches"):
    optim.trainable_mask(tree, mode="regex", regex="nothing_like_this")
  _, headless = _shapes("svfap_tiny", pretrain=True)
  with pytest.raises(ValueError, match="not to the MAE"):
    optim.trainable_mask(headless, mode="linear_probe", pretrain=True)
  cfg = ml_collections.ConfigDict({"mode": "finetune", "finetune": {
      "mode": "regex", "trainable_last_blocks": 0, "trainable_regex": "("}})
  assert "not a regular expression" in " ".join(optim.finetune_config_errors(cfg))
  cfg.finetune.mode, cfg.finetune.trainable_regex = "last_blocks", ""
  assert "trainable_last_blocks=0" in " ".join(optim.finetune_config_errors(cfg))
  cfg.finetune.mode = "linear_probe"
  assert optim.finetune_config_errors(cfg) == []
  cfg.mode = "pretrain"
  assert "fine-tuning runs" in " ".join(optim.finetune_config_errors(cfg))


def _frozen_config(mode, **fields):
  cfg = _config(layer_decay=0.75, weight_decay=0.05, clip_grad=1.0, **fields)
  with cfg.unlocked():
    cfg.finetune = {"mode": mode, "trainable_last_blocks": 2,
                    "trainable_regex": r"^blocks\.0\.|^head\."}
  return cfg


def _small_probe_state():
  """`_small_state` with four blocks, a second downsampling module and the linear-probe
  statistics: every kind of parameter the partial-training modes tell apart, cheap to compile."""
  tree, _ = _small_state()
  shapes = jax.tree_util.tree_map(lambda s: s.shape, tree)
  shapes["encoder"]["blocks_2"] = shapes["encoder"]["blocks_0"]
  shapes["encoder"]["blocks_3"] = shapes["encoder"]["blocks_0"]
  shapes["encoder"]["spatial_downsamples_0"] = {"mlp": {"fc1": {"kernel": (8, 4), "bias": (4,)}}}
  shapes["head_norm"] = {"mean": (8,), "var": (8,)}
  tree = jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s, jnp.float32), shapes,
                                is_leaf=lambda x: isinstance(x, tuple))
  return tree, _random_like(tree, 0)


def _array_paths(tree):
  return {p for p, v in traverse_util.flatten_dict(tree).items()
          if not isinstance(v, optax.MaskedNode)}


@pytest.mark.parametrize("mode,accum", [("linear_probe", 1), ("last_blocks", 2), ("regex", 1)])
def test_frozen_parameters_do_not_move_and_have_no_state(mode, accum):
  tree, params = _small_probe_state()
  cfg = _frozen_config(mode, accum_steps=accum)
  tx, _ = optim.make_optimizer(cfg, tree, pretrain=False, total_steps=20)
  mask = optim.trainable_mask_for(cfg, tree, pretrain=False)
  flat_mask = traverse_util.flatten_dict(mask)
  trainable = {p for p, t in flat_mask.items() if t}
  assert 0 < len(trainable) < len(flat_mask)

  step_fn = _stepper(tx)
  state, new = jax.jit(tx.init)(params), params
  grads = [_random_like(tree, 30 + i) for i in range(3 * accum)]  # nonzero everywhere
  for i, g in enumerate(grads):
    _, new, state = step_fn(g, state, new)
    assert bool(optim.did_update(state)) == ((i + 1) % accum == 0)

  before, after = traverse_util.flatten_dict(params), traverse_util.flatten_dict(new)
  for path, t in flat_mask.items():
    a, b = np.asarray(before[path]), np.asarray(after[path])
    if t:
      assert not np.array_equal(a, b), path
    else:
      assert a.tobytes() == b.tobytes(), path   # bit-identical

  # The Adam moments (and accumulation buffers) exist for the trainable leaves only.
  adam = [s for s in jax.tree_util.tree_leaves(
      state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
          if isinstance(s, optax.ScaleByAdamState)]
  assert len(adam) == 1
  assert _array_paths(adam[0].mu) == _array_paths(adam[0].nu) == trainable
  numel = lambda paths: sum(int(np.prod(traverse_util.flatten_dict(tree)[p].shape))
                            for p in paths)
  stored = sum(int(np.size(x)) for x in jax.tree_util.tree_leaves(state) if np.ndim(x) > 0)
  assert stored == (2 + (accum > 1)) * numel(trainable)

  # The trainable leaves move exactly as under the whole-model optimizer (weight-decay mask,
  # layer decay, clipping) when the frozen gradients are zero.
  full_cfg = _frozen_config("full", accum_steps=accum)
  full_tx, _ = optim.make_optimizer(full_cfg, tree, pretrain=False, total_steps=20)
  full_step = _stepper(full_tx)
  full_state, ref = jax.jit(full_tx.init)(params), params
  for g in grads:
    g = jax.tree_util.tree_map(lambda x, t: x if t else np.zeros_like(x), g, mask)
    _, ref, full_state = full_step(g, full_state, ref)
  ref = traverse_util.flatten_dict(ref)
  for path in trainable:
    np.testing.assert_allclose(np.asarray(after[path]), np.asarray(ref[path]), rtol=1e-6,
                               atol=1e-7, err_msg=str(path))


def test_full_mode_keeps_the_plain_optimizer_state():
  """Without frozen parameters nothing changes (checkpoints of earlier runs still restore)."""
  _, tree = _shapes("svfap_tiny", pretrain=False)
  cfg = _frozen_config("full")
  tx, _ = optim.make_optimizer(cfg, tree, pretrain=False, total_steps=20)
  plain, _ = optim.make_optimizer(_config(layer_decay=0.75, clip_grad=1.0), tree,
                                  pretrain=False, total_steps=20)
  assert (jax.tree_util.tree_structure(jax.eval_shape(tx.init, tree))
          == jax.tree_util.tree_structure(jax.eval_shape(plain.init, tree)))


def test_stop_frozen_gradients_skips_the_encoder():
  from svfap_jax.models.registry import get_spec
  spec = get_spec("vit_tiny", img_size=32, num_frames=4, stage_depths=(1,))
  module = api.build_module(spec, num_classes=3).clone(linear_probe=True)
  args, _ = api.example_inputs(spec, 1)
  params = jax.jit(lambda key: api.init_params(module, spec, key, False)[0])(jax.random.key(0))
  mask = optim.trainable_mask(params, mode="linear_probe")
  video = jax.random.normal(jax.random.key(1), (2, 4, 32, 32, 3))

  def loss(p):
    return module.apply({"params": optim.stop_frozen_gradients(p, mask)}, video).sum()

  grads = traverse_util.flatten_dict(jax.jit(jax.grad(loss))(params))
  for path, g in grads.items():
    if path[0] == "head":
      assert np.abs(np.asarray(g)).sum() > 0, path
    else:
      assert not np.asarray(g).any(), path


def test_nonfinite_guard_skips_the_update_without_per_parameter_selects():
  """apply_gradients: a NaN in any leaf, or a gradient whose squared norm overflows float32,
  leaves parameters and AdamW state bit-identical (step still advances); the compiled update is
  one conditional, not a select over every parameter and optimizer-state leaf."""
  from svfap_jax.train import state as state_lib  # pylint: disable=import-outside-toplevel
  from svfap_jax.train import steps  # pylint: disable=import-outside-toplevel
  leaves = 60
  params = {f"w{i:02d}": jnp.full((3, 4), float(i)) for i in range(leaves)}
  tx = optax.adamw(0.1)
  state = state_lib.TrainState.create(params, tx, seed=0)
  update = jax.jit(lambda s, g: steps.apply_gradients(s, g, tx))
  good = {k: jnp.ones_like(v) for k, v in params.items()}
  for name, value in (("nan", jnp.nan), ("inf", -jnp.inf), ("overflow", 1e30)):
    bad = dict(good, w37=good["w37"].at[1, 2].set(value))
    skipped, metrics = update(state, bad)
    assert int(metrics["nonfinite"]) == 1 and int(skipped.step) == 1, name
    for a, b in zip(jax.tree_util.tree_leaves((skipped.params, skipped.opt_state)),
                    jax.tree_util.tree_leaves((state.params, state.opt_state))):
      np.testing.assert_array_equal(a, b)
  moved, metrics = update(state, good)
  assert int(metrics["nonfinite"]) == 0
  np.testing.assert_allclose(float(metrics["grad_norm"]), np.sqrt(leaves * 12), rtol=1e-6)
  assert not np.array_equal(moved.params["w05"], params["w05"])
  # The same update as optax's own, with no guard (eager: rounding may differ by an ulp).
  updates, _ = tx.update(good, state.opt_state, state.params)
  want = optax.apply_updates(state.params, updates)
  for k in params:
    np.testing.assert_allclose(moved.params[k], want[k], rtol=1e-6, atol=1e-7)
  text = update.lower(state, good).compile().as_text()
  assert sum(" conditional(" in line for line in text.splitlines()) == 1
  selects = sum(" select(" in line for line in text.splitlines())
  assert selects < leaves, selects
