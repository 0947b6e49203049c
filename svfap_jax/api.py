"""The public Python API: build, run, export and import SVFAP models.

    m = create_model("svfap_base", num_classes=7, seed=0)       # classifier
    p = create_model("svfap_base", pretrain=True, seed=0)        # MAE pretraining model
    logits = m(video)              # float32 (B, 16, 160, 160, 3), normalised -> (B, 7)
    recon = p(video, mask)         # bool (B, 800), True = masked -> (B, n_masked, 1536)
    export_torch(m, "m.pth"); m2 = import_torch("m.pth", "svfap_base", num_classes=7)
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from svfap_jax.interop import files, load, mapping
from svfap_jax.models.classifier import VideoClassifier
from svfap_jax.models.mae import MAEPretrainModel
from svfap_jax.models.registry import ModelSpec, get_spec

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def build_module(spec: ModelSpec, *, pretrain: bool = False, num_classes: int = 0,
                 original_pretrain_quirks: bool = False, init_scale: float = 1.0,
                 head_activation: Optional[str] = None, keep_temporal_dim: bool = False,
                 drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, dtype: str = "float32",
                 remat: str = "none") -> nn.Module:
  """The Flax module for a spec (no parameters)."""
  if dtype not in _DTYPES:
    raise ValueError(f"dtype={dtype!r}; choose one of {sorted(_DTYPES)}")
  if pretrain:
    return MAEPretrainModel(spec, original_pretrain_quirks, drop_path_rate, _DTYPES[dtype], remat)
  if original_pretrain_quirks:
    raise ValueError("original_pretrain_quirks only exists for pretraining models (pretrain=True)")
  return VideoClassifier(spec, num_classes, init_scale, head_activation, keep_temporal_dim,
                         drop_rate, attn_drop_rate, drop_path_rate, _DTYPES[dtype], remat)


def module_from_config(config, spec: ModelSpec, num_outputs: int, pretrain: bool) -> nn.Module:
  """The Flax module a run config describes (training, `evaluate` and `predict` build it here).

  Args:
    config: the run's ml_collections config (its `model` fields, and `finetune.mode` for a
      linear-probe head).
    spec: the registered model's spec.
    num_outputs: classes or regression values of the head (ignored when pretraining).
    pretrain: the MAE pretraining model instead of the classifier.

  Returns:
    An unbound `VideoClassifier` or `MAEPretrainModel`.
  """
  from svfap_jax import optim  # pylint: disable=g-import-not-at-top
  m = config.model
  module = build_module(
      spec, pretrain=pretrain, num_classes=0 if pretrain else num_outputs,
      original_pretrain_quirks=m.original_pretrain_quirks, init_scale=m.init_scale,
      head_activation=m.head_activation or None, keep_temporal_dim=m.keep_temporal_dim,
      drop_rate=m.drop_rate, attn_drop_rate=m.attn_drop_rate, drop_path_rate=m.drop_path_rate,
      dtype=m.dtype, remat=m.remat)
  # A linear-probe head keeps its standardisation wherever the run's module is rebuilt.
  if not pretrain and optim.finetune_options(config)[0] == "linear_probe":
    module = module.clone(linear_probe=True)
  return module


def example_inputs(spec: ModelSpec, batch_size: int = 1, pretrain: bool = False):
  video = jnp.zeros((batch_size, spec.num_frames, spec.img_size, spec.img_size, spec.in_chans),
                    jnp.float32)
  if not pretrain:
    return (video,), {}
  mask = jnp.zeros((batch_size, spec.num_patches), bool)
  return (video, mask), {"num_visible": spec.num_patches}


def init_params(module: nn.Module, spec: ModelSpec, rng, pretrain: bool):
  """Returns (params, logical PartitionSpecs of params)."""
  args, kwargs = example_inputs(spec, 1, pretrain)
  variables = module.init(rng, *args, **kwargs)
  return nn.meta.unbox(variables["params"]), nn.get_partition_spec(variables)["params"]


def check_mask(spec: ModelSpec, mask: np.ndarray) -> int:
  """Validates a host-side bool mask and returns its (common) visible-token count."""
  mask = np.asarray(mask)
  if mask.dtype != np.bool_ or mask.ndim != 2 or mask.shape[1] != spec.num_patches:
    raise ValueError(f"mask must be bool of shape (batch, {spec.num_patches}), True = masked; "
                     f"got {mask.dtype} {mask.shape}")
  visible = (~mask).sum(axis=1)
  if not np.all(visible == visible[0]):
    raise ValueError(f"every sample needs the same number of visible tokens; got {sorted(set(visible.tolist()))}")
  if visible[0] == 0 or visible[0] == spec.num_patches:
    raise ValueError("the mask must hide some tokens and keep some visible")
  if spec.arch == "tpsbt":
    frames = mask.reshape(mask.shape[0], spec.temporal_tokens, spec.spatial_tokens)
    if not np.all(frames == frames[:, :1]):
      raise ValueError("the TPSBT encoder needs a tube mask: the same spatial positions masked in "
                       "every temporal slice (see svfap_jax.masking.tube_mask)")
  return int(visible[0])


@dataclasses.dataclass
class Model:
  """A Flax module with its parameters, callable on numpy arrays."""
  name: str
  spec: ModelSpec
  module: nn.Module
  params: Any
  pretrain: bool
  options: dict
  trace_count: int = 0

  def __post_init__(self):
    self._forward = jax.jit(self._apply, static_argnames=("num_visible",))

  def _apply(self, params, video, mask=None, num_visible=None):
    self.trace_count += 1  # runs only while tracing: counts compilations
    if self.pretrain:
      return self.module.apply({"params": params}, video, mask, num_visible=num_visible)
    return self.module.apply({"params": params}, video)

  def __call__(self, video, mask=None) -> np.ndarray:
    video = jnp.asarray(video, jnp.float32)
    if self.pretrain:
      if mask is None:
        raise ValueError("a pretraining model needs a mask: p(video, mask)")
      n_visible = check_mask(self.spec, mask)
      return np.asarray(self._forward(self.params, video, jnp.asarray(mask), n_visible))
    return np.asarray(self._forward(self.params, video))

  @property
  def num_params(self) -> int:
    return sum(int(np.size(x)) for x in jax.tree_util.tree_leaves(self.params))

  def state_dict(self) -> dict[str, np.ndarray]:
    return mapping.to_torch_state_dict(self.params, pretrain=self.pretrain)


def create_model(name: str, *, num_classes: int = 0, pretrain: bool = False, seed: int = 0,
                 original_pretrain_quirks: bool = False, init_scale: float = 1.0,
                 head_activation: Optional[str] = None, keep_temporal_dim: bool = False,
                 drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, dtype: str = "float32", remat: str = "none",
                 **spec_overrides) -> Model:
  """Builds a registered model with freshly initialised parameters.

  The returned `Model` is callable on numpy arrays. A classifier takes normalised float32 video
  (B, T, H, W, 3) (T, H, W from the spec: 16 x 160 x 160 for the SVFAP sizes; ImageNet mean/std
  as `data_pipelines.augment.normalize`) and returns float32 (B, num_classes), (B, T, num_classes)
  with `keep_temporal_dim`, or the pooled embedding (B, embed_dim) when num_classes is 0. A
  pretraining model (`pretrain=True`) takes (video, mask) with mask bool (B, num_patches), True =
  masked, the same visible count in every sample (a tube mask for the TPSBT), and returns the
  reconstruction of the masked patches, float32 (B, num_masked, patch_t * patch^2 * 3).

  Args:
    name: a registered model (`svfap_jax.models.registry`), e.g. "svfap_base", "svfap_tiny".
    num_classes: head size; 0 = no head.
    pretrain: build the MAE pretraining model (encoder + decoder) instead of a classifier.
    seed: PRNG seed of the initialisation.
    original_pretrain_quirks: reproduce the original code's two pretraining defects (README).
    init_scale: multiplies the head's initial weights.
    head_activation: None, "sigmoid", "tanh" or "relu" after the head.
    keep_temporal_dim: per-frame outputs instead of one per clip.
    drop_rate: dropout after the MLP layers (training only); attn_drop_rate: on attention
      weights.
    drop_path_rate: stochastic depth, linearly increasing over the blocks.
    dtype: compute dtype, "float32" or "bfloat16" (parameters stay float32).
    remat: activation recomputation, "none", "full" or "dots".
    **spec_overrides: `ModelSpec` fields to change (e.g. img_size=64, num_frames=8).

  Raises:
    KeyError: `name` is not registered (the message lists the registered names).
    TypeError: a spec override names no `ModelSpec` field.
    ValueError: a spec override or option is invalid.
  """
  spec = get_spec(name, **spec_overrides)
  options = dict(num_classes=num_classes, original_pretrain_quirks=original_pretrain_quirks,
                 init_scale=init_scale, head_activation=head_activation,
                 keep_temporal_dim=keep_temporal_dim, drop_rate=drop_rate,
                 attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate, dtype=dtype,
                 remat=remat)
  module = build_module(spec, pretrain=pretrain, **options)
  params, _ = init_params(module, spec, jax.random.key(seed), pretrain)
  return Model(name, spec, module, params, pretrain, options)


def export_torch(model: Model, path: str) -> str:
  """Writes the model as a PyTorch state_dict with the original SVFAP key names.

  `.pth` -> {'model': state_dict} (torch.save); `.safetensors` -> the flat state_dict.
  """
  return files.save_state_dict(model.state_dict(), path)


def import_torch(path: str, name: str, *, num_classes: int = 0, pretrain: bool = False,
                 seed: int = 0, verbose: bool = True, **kwargs) -> Model:
  """Builds `name` and loads a PyTorch checkpoint into it (see interop.load.match_state_dict)."""
  model = create_model(name, num_classes=num_classes, pretrain=pretrain, seed=seed, **kwargs)
  model.params, report = load_torch_params(path, model.params, pretrain=pretrain)
  if verbose:
    print(f"{path}: {report.summary()}")
  return model


def load_torch_params(path: str, params, *, pretrain: bool):
  """Returns (params with the checkpoint's tensors, LoadReport); fresh entries keep `params`."""
  state_dict, report = load.match_state_dict(files.load_state_dict(path), params,
                                             pretrain=pretrain, source=str(path))
  full = dict(mapping.to_torch_state_dict(params, pretrain=pretrain))
  full.update(state_dict)
  return mapping.from_torch_state_dict(full, params, pretrain=pretrain), report
