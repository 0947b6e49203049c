"""Representation probes: how well frozen encoder embeddings separate the classes of a labelled set.

A falling reconstruction loss says that the MAE learns to fill in pixels, not that its encoder
represents affect. The probe measures the representation itself: every clip of a labelled dataset
goes through the frozen encoder, and two simple classifiers are fitted on the training clips'
embeddings and scored on the test clips':

  k-NN    sklearn `KNeighborsClassifier(metric="cosine", algorithm="brute")`: majority vote of
          the k most cosine-similar training clips (uniform weights; a tie goes to the smallest
          class index), k = min(knn_k, number of training clips), knn_k = 20 by default.
  linear  sklearn `StandardScaler` + `LogisticRegression` (lbfgs, L2 with C = 1, up to 5000
          iterations; whether it converged is reported).

Both give UAR (mean recall over the classes present in the test labels, i.e. balanced accuracy)
and WAR (accuracy), computed by `svfap_jax.metrics.classification_metrics`. Compare them with the
same architecture at random initialisation (`probe --baseline`; `ProbeMonitor` measures it once;
for MAE-pretrained weights both use the MAE model's initialisation for the run's seed, the
weights pretraining started from): pretraining helps when the encoder clearly beats its random
twin. Random encoders are not at chance: their pooled embeddings keep coarse image statistics
that a probe can use, which is why the baseline is measured rather than assumed.

The embedding of a clip is the fine-tuning classifier's pooled, normalised feature (token mean ->
`fc_norm`, the vector `extract` writes), averaged over deterministic views: `num_segments`
uniformly spaced temporal windows of the evaluation pipeline, each resized on the short side to
`eval_resize` (default img_size) and centre-cropped to img_size. For an MAE pretraining checkpoint
the classifier is built from the same spec and takes the pretraining encoder's parameters, the
way fine-tuning starts from it (the decoder and the encoder's final `norm` are dropped, `fc_norm`
is the identity). Clips without a class label (label -1) are left out and counted, as are records
that cannot be read.

Command line:

  python -m svfap_jax probe --data DIR --workdir W [--baseline] [--out report.json]
  python -m svfap_jax probe --data DIR --torch FILE.pth --model svfap_base
  python -m svfap_jax probe --data DIR --random-init --model svfap_tiny

Python:

  encoder = probe.load_encoder(workdir="runs/pretrain")       # or torch=..., or model=... random
  report = probe.probe_encoder(encoder, "datasets/dfew_fold1")   # {"knn_uar": ..., ...}

During pretraining, `ProbeMonitor(config, mesh, module)` probes the training state's encoder every
`probe.every_steps` steps (config fields `probe.*`, see configs/common.py).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import re
import sys
import time
import warnings
from typing import Any, Optional, Sequence

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_KNN_K = 20
# lbfgs on standardised features converges in a few hundred iterations on these sizes; the cap
# only guards against a pathological set.
LINEAR_MAX_ITER = 5000
LINEAR_C = 1.0


class ProbeError(ValueError):
  """Bad probe input (dataset, split, checkpoint or option); the message names it and the fix."""


# ------------------------------------------------------------------------------------------------
# The classifiers, on embeddings.
# ------------------------------------------------------------------------------------------------


def knn_predict(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                k: int = DEFAULT_KNN_K) -> tuple[np.ndarray, int]:
  """Cosine k-NN majority vote.

  Args:
    train_x: float (N, C) training embeddings.
    train_y: int (N,) their class indices (>= 0).
    test_x: float (M, C) embeddings to classify.
    k: neighbours; clipped to N.

  Returns:
    (int (M,) predicted classes, the k used).
  """
  from sklearn.neighbors import KNeighborsClassifier  # pylint: disable=g-import-not-at-top
  if len(train_x) == 0:
    raise ProbeError("k-NN needs at least one training clip")
  k = int(max(1, min(k, len(train_x))))
  knn = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute",
                             weights="uniform")
  knn.fit(np.asarray(train_x, np.float64), np.asarray(train_y))
  return knn.predict(np.asarray(test_x, np.float64)), k


def linear_predict(train_x: np.ndarray, train_y: np.ndarray,
                   test_x: np.ndarray) -> tuple[np.ndarray, bool]:
  """Logistic regression on standardised features.

  Args:
    train_x: float (N, C) training embeddings.
    train_y: int (N,) class indices.
    test_x: float (M, C).

  Returns:
    (int (M,) predicted classes, whether lbfgs converged). With a single training class every
    clip gets that class (there is nothing to fit).
  """
  from sklearn.pipeline import make_pipeline  # pylint: disable=g-import-not-at-top
  from sklearn.preprocessing import StandardScaler  # pylint: disable=g-import-not-at-top
  train_y = np.asarray(train_y)
  classes = np.unique(train_y)
  if len(classes) < 2:
    return np.full(len(test_x), classes[0] if len(classes) else 0, train_y.dtype), True
  model = make_pipeline(StandardScaler(), _logistic_regression())
  converged = _fit_converged(model, np.asarray(train_x, np.float64), train_y)
  return model.predict(np.asarray(test_x, np.float64)), converged


def _logistic_regression():
  """The linear probe's classifier: lbfgs, L2 with C = LINEAR_C, up to LINEAR_MAX_ITER steps."""
  from sklearn.linear_model import LogisticRegression  # pylint: disable=g-import-not-at-top
  return LogisticRegression(C=LINEAR_C, max_iter=LINEAR_MAX_ITER)


def _fit_converged(model, x: np.ndarray, y: np.ndarray) -> bool:
  """Fits `model` on (x, y); returns whether it converged (no ConvergenceWarning raised)."""
  from sklearn.exceptions import ConvergenceWarning  # pylint: disable=g-import-not-at-top
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always", ConvergenceWarning)
    model.fit(x, y)
  return not any(issubclass(w.category, ConvergenceWarning) for w in caught)


def probe_features(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                   test_y: np.ndarray, *, num_classes: Optional[int] = None,
                   knn_k: int = DEFAULT_KNN_K) -> dict:
  """k-NN and linear probe scores of embeddings (labels must be >= 0: filter unlabelled first).

  Args:
    train_x, test_x: float (N, C) and (M, C) embeddings.
    train_y, test_y: int (N,) and (M,) class indices.
    num_classes: K (default: the largest label + 1).
    knn_k: k of the k-NN, clipped to N.

  Returns:
    {"knn_uar", "knn_war", "linear_uar", "linear_war"} as fractions in [0, 1], "knn_k" (the k
    used), "linear_converged", "num_train", "num_test".
  """
  from svfap_jax import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  train_y, test_y = np.asarray(train_y, np.int64), np.asarray(test_y, np.int64)
  if len(train_y) == 0 or len(test_y) == 0:
    raise ProbeError(f"the probe needs labelled training and test clips (got {len(train_y)} "
                     f"training and {len(test_y)} test clips)")
  if min(train_y.min(), test_y.min()) < 0:
    raise ProbeError("labels must be >= 0; leave unlabelled clips (label -1) out first")
  k_classes = int(num_classes or 0) or int(max(train_y.max(), test_y.max())) + 1
  k_classes = max(k_classes, int(max(train_y.max(), test_y.max())) + 1)
  knn, k = knn_predict(train_x, train_y, test_x, knn_k)
  linear, converged = linear_predict(train_x, train_y, test_x)
  out = {}
  for name, pred in (("knn", knn), ("linear", linear)):
    scores = metrics_lib.classification_metrics(test_y, np.asarray(pred, np.int64), k_classes)
    out[f"{name}_uar"], out[f"{name}_war"] = scores["uar"], scores["war"]
  out.update(knn_k=k, linear_converged=bool(converged), num_train=int(len(train_y)),
             num_test=int(len(test_y)))
  return out


# ------------------------------------------------------------------------------------------------
# Encoders.
# ------------------------------------------------------------------------------------------------


def classifier_encoder_params(params: Any) -> Any:
  """The parameters a head-less classifier needs, from a classifier or an MAE pretraining tree.

  An MAE tree ({"encoder", "encoder_to_decoder", "mask_token", "decoder"}) gives its encoder
  without the pretraining-only final `norm`, plus an identity `fc_norm` (scale 1, bias 0): the
  same tree `train.loop.load_initial_params` builds when fine-tuning starts from a pretraining
  checkpoint, taken here without a host round trip, so sharded arrays stay where they are.
  A classifier tree is returned as it is (its head is unused).
  """
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  if "decoder" not in params:
    return params
  encoder = {k: v for k, v in params["encoder"].items() if k != "norm"}
  width = encoder["patch_embed"]["kernel"].shape[-1]
  return {"encoder": encoder, "fc_norm": {"scale": jnp.ones((width,), jnp.float32),
                                          "bias": jnp.zeros((width,), jnp.float32)}}


@dataclasses.dataclass
class Encoder:
  """A frozen encoder to probe: a head-less classifier module, its parameters and input settings.

  Attributes:
    name: registry name, e.g. "svfap_base".
    spec: its `ModelSpec` (img_size and num_frames are the probe's input size).
    module: `VideoClassifier` with num_classes=0.
    params: its parameter tree (host or device arrays).
    source: where the parameters came from, for reports.
    sampling_rate: frame stride of the views (the checkpoint's data.sampling_rate by default).
    eval_resize: short side before the centre crop (None: img_size).
    options: what `build_module` got, so a random twin can be built (`random_twin`).
    mae_init: the parameters came out of MAE pretraining: `random_twin` draws the MAE model's
      initialisation (the weights pretraining started from) rather than the classifier's.
    seed: the run's seed (its `random_twin` default).
  """
  name: str
  spec: Any
  module: Any
  params: Any
  source: str
  sampling_rate: int = 4
  eval_resize: Optional[int] = None
  options: dict = dataclasses.field(default_factory=dict)
  mae_init: bool = False
  seed: int = 0

  def describe(self) -> dict:
    return {"source": self.source, "model": self.name, "img_size": self.spec.img_size,
            "num_frames": self.spec.num_frames, "sampling_rate": self.sampling_rate,
            "eval_resize": self.eval_resize or self.spec.img_size}


def _abs(path: str) -> str:
  """A local path made absolute against the current directory (Orbax needs absolute paths)."""
  if "://" in path:
    return path
  return os.path.abspath(os.path.expanduser(path))


def _spec_with(name: str, base_spec=None, *, img_size: Optional[int] = None,
               num_frames: Optional[int] = None):
  from svfap_jax.models.registry import get_spec  # pylint: disable=g-import-not-at-top
  overrides = {}
  if img_size:
    overrides["img_size"] = int(img_size)
  if num_frames:
    overrides["num_frames"] = int(num_frames)
  try:
    if base_spec is not None:
      return dataclasses.replace(base_spec, **overrides).validate()
    return get_spec(name, **overrides)
  except (KeyError, TypeError, ValueError) as e:
    raise ProbeError(f"model {name!r}: {e.args[0] if e.args else e}") from None


def _module(spec, **options):
  from svfap_jax import api  # pylint: disable=g-import-not-at-top
  return api.build_module(spec, pretrain=False, num_classes=0, **options)


def load_encoder(*, workdir: Optional[str] = None, torch: Optional[str] = None,
                 model: Optional[str] = None, seed: int = 0, img_size: Optional[int] = None,
                 num_frames: Optional[int] = None,
                 sampling_rate: Optional[int] = None) -> Encoder:
  """An `Encoder` from a run workdir, a PyTorch file, or (only `model`) a random initialisation.

  Args:
    workdir: a pretraining or fine-tuning workdir (or its checkpoints/, best/ or a step dir):
      its latest checkpoint, the EMA parameters when the run kept them, restored with
      `predict.predictor_from_checkpoint` (an MAE encoder goes through
      `train.loop.load_initial_params`, as fine-tuning does).
    torch: a `.pth`/`.safetensors` classifier or pretraining checkpoint with the original
      SVFAP keys; needs `model`.
    model: registry name (with `torch`, or alone for a random initialisation with `seed`).
    seed: initialisation seed of a random encoder.
    img_size, num_frames: override the input size (the parameters do not depend on it: the
      position table is fixed); default the checkpoint's / the model's.
    sampling_rate: frame stride (default the checkpoint's data.sampling_rate, else 4).

  Raises:
    ProbeError: no checkpoint at `workdir`, unknown model, a file that does not fit the model,
      or an impossible input size.
  """
  import jax  # pylint: disable=g-import-not-at-top
  if sum(x is not None for x in (workdir, torch)) > 1:
    raise ProbeError("give one of workdir and torch")
  if workdir is not None:
    from svfap_jax import predict  # pylint: disable=g-import-not-at-top
    path = _abs(workdir)
    try:
      meta = _run_meta(path)
      predictor = predict.predictor_from_checkpoint(path)
    except FileNotFoundError as e:
      raise ProbeError(str(e)) from None
    except (KeyError, ValueError) as e:
      raise ProbeError(f"{workdir}: {e}") from None
    spec = _spec_with(predictor.name, predictor.spec, img_size=img_size, num_frames=num_frames)
    # The same module settings, at the probe's input size, without a head.
    module = predictor.module.clone(spec=spec, num_classes=0, keep_temporal_dim=False)
    return Encoder(name=predictor.name, spec=spec, module=module,
                   params=classifier_encoder_params(predictor.params), source=workdir,
                   sampling_rate=int(sampling_rate or predictor.sampling_rate),
                   eval_resize=predictor.preprocessing.eval_resize,
                   options=dict(dtype=_dtype_name(module.dtype), remat=module.remat),
                   mae_init=meta.get("mode") == "pretrain",
                   seed=int((meta.get("config") or {}).get("seed", seed)))
  if model is None:
    raise ProbeError("name the architecture with --model (e.g. svfap_base)")
  spec = _spec_with(model, img_size=img_size, num_frames=num_frames)
  module = _module(spec)
  params = _init_params(module, spec, seed)
  if torch is None:
    return Encoder(name=model, spec=spec, module=module, params=params,
                   source=f"random init ({model}, seed {seed})",
                   sampling_rate=int(sampling_rate or 4), seed=seed)
  from svfap_jax.interop import files, load, mapping  # pylint: disable=g-import-not-at-top
  path = _abs(torch)
  if not os.path.exists(path) and "://" not in path:
    raise ProbeError(f"--torch {torch}: no such file")
  try:
    state_dict = files.load_state_dict(path)
    # The probe reads the embedding below the head: a fine-tuned head (of any label set) is not
    # part of the encoder being probed.
    kept = files.StateDict({k: v for k, v in state_dict.items() if not _HEAD_KEY.search(k)})
    kept.origin = getattr(state_dict, "origin", "")
    template = jax.device_get(params)
    matched, report = load.match_state_dict(kept, template, pretrain=False, source=path)
  except load.CheckpointMismatchError as e:
    raise ProbeError(f"{torch} does not fit {model}: {e}") from None
  except (OSError, ValueError, KeyError) as e:
    raise ProbeError(f"{torch}: {e}") from None
  full = mapping.to_torch_state_dict(template, pretrain=False)
  full.update(matched)
  params = mapping.from_torch_state_dict(full, template, pretrain=False)
  log.info("%s: %s (%d head tensors not used)", torch, report.summary(),
           len(state_dict) - len(kept))
  return Encoder(name=model, spec=spec, module=module, params=params, source=torch,
                 sampling_rate=int(sampling_rate or 4), seed=seed)


def _run_meta(path: str) -> dict:
  """The run metadata saved with the latest checkpoint under `path` (config, model, mode)."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from svfap_jax import checkpoint  # pylint: disable=g-import-not-at-top
  manager, step = checkpoint.find_checkpoint_dir(path)
  restored = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
  return dict(restored["meta"] or {})


# A classifier head's tensors (and the linear probe's statistics), also under training-wrapper
# prefixes (interop.load.WRAPPER_PREFIXES); the MAE decoder's `decoder.head` does not match.
_HEAD_KEY = re.compile(r"^(?:(?:module|_orig_mod|model|backbone)\.)*head(?:_norm)?\.[^.]+$")


def _dtype_name(dtype) -> str:
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  return "bfloat16" if dtype == jnp.bfloat16 else "float32"


def random_twin(encoder: Encoder, seed: Optional[int] = None) -> Encoder:
  """The same architecture and input settings at a random initialisation.

  For an MAE-pretrained encoder (`encoder.mae_init`) that is the MAE model's initialisation for
  `seed` (default: the run's seed), i.e. the weights pretraining started from and what
  `ProbeMonitor` reports as `probe_random_*`; otherwise the classifier's (what fine-tuning from
  scratch starts from). The two schemes differ (Xavier-uniform vs truncated-normal encoder
  weights), and so can their probe scores.
  """
  from svfap_jax import api  # pylint: disable=g-import-not-at-top
  seed = encoder.seed if seed is None else int(seed)
  module = _module(encoder.spec, **encoder.options)
  if encoder.mae_init:
    mae = api.build_module(encoder.spec, pretrain=True, **encoder.options)
    params = classifier_encoder_params(_init_params(mae, encoder.spec, seed, pretrain=True))
    source = f"random init ({encoder.name} MAE initialisation, seed {seed})"
  else:
    params = _init_params(module, encoder.spec, seed)
    source = f"random init ({encoder.name}, seed {seed})"
  return dataclasses.replace(encoder, module=module, params=params, source=source)


# ------------------------------------------------------------------------------------------------
# Embedding a split.
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class SplitEmbeddings:
  """Per-clip embeddings of one split (labelled clips only, in record order).

  Attributes:
    features: float32 (N, C), the mean over the clip's views.
    labels: int64 (N,) class indices.
    num_unlabelled: clips with label < 0, left out.
    num_corrupt: records that could not be read, left out.
    num_views: views per clip.
  """
  features: np.ndarray
  labels: np.ndarray
  num_unlabelled: int
  num_corrupt: int
  num_views: int



def _allgather(x: np.ndarray) -> np.ndarray:
  """Every process's rows of a host array, in process order (the array itself on one process)."""
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_count() == 1:
    return x
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _embed_views(module, params, video):
  from svfap_jax.train import steps  # pylint: disable=g-import-not-at-top
  out = steps.make_features_step(module)(classifier_encoder_params(params), {"video": video})
  # keep_temporal_dim modules give per-frame features; a view gets their mean.
  return out.mean(axis=1) if out.ndim == 3 else out


_JITTED: dict = {}


def _embed_fn():
  """The jitted view embedding; the module is static, so equal modules share one program."""
  if "embed" not in _JITTED:
    import jax  # pylint: disable=g-import-not-at-top
    _JITTED["embed"] = jax.jit(_embed_views, static_argnums=0)
  return _JITTED["embed"]


def _init_params(module, spec, seed: int, pretrain: bool = False):
  """`module.init` parameters for `seed`, compiled (eager initialisation is slow on CPU)."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from svfap_jax import api  # pylint: disable=g-import-not-at-top
  key = ("init", module, pretrain)
  if key not in _JITTED:
    args, kwargs = api.example_inputs(spec, 1, pretrain)
    _JITTED[key] = jax.jit(lambda rng: nn.meta.unbox(module.init(rng, *args, **kwargs)["params"]))
  return _JITTED[key](jax.random.key(seed))


class Embedder:
  """Runs a head-less classifier over the views of a split, batched and sharded over a mesh.

  Args:
    module: `VideoClassifier` (its `return_features` output is used).
    mesh: the device mesh; the batch is split over its ('data', 'fsdp') axes. Parameters may be
      sharded over it already (a training state's) or be host arrays (replicated here).
  """

  def __init__(self, module, mesh):
    self.module = module
    self.mesh = mesh

  def place(self, params):
    """Host arrays -> replicated on the mesh; device arrays are left where they are."""
    import jax  # pylint: disable=g-import-not-at-top
    from svfap_jax import sharding  # pylint: disable=g-import-not-at-top
    devices = set(self.mesh.devices.flat)
    target = sharding.replicated(self.mesh)

    def one(x):
      if isinstance(x, jax.Array) and set(x.sharding.device_set) == devices:
        return x  # already laid out over the mesh (a training state's parameters)
      return jax.device_put(np.asarray(x), target)

    return jax.tree_util.tree_map(one, classifier_encoder_params(params))

  def batch_size(self, requested: int) -> int:
    """Per-process batch: `requested` rounded up so the global batch splits over the mesh."""
    import jax  # pylint: disable=g-import-not-at-top
    from svfap_jax import sharding  # pylint: disable=g-import-not-at-top
    unit = math.lcm(sharding.batch_shards(self.mesh), jax.process_count())
    return max(unit, -(-int(requested) // unit) * unit) // jax.process_count()

  def embed(self, params, dataset_dir: str, split: str, *, batch_size: int, num_frames: int,
            sampling_rate: int, img_size: int, eval_resize: Optional[int] = None,
            num_segments: int = 1, worker_count: int = 0) -> SplitEmbeddings:
    """Embeds every clip of `split` (all processes must call it together).

    Returns every labelled clip of the split on every process (views averaged per clip).
    """
    from data_pipelines import grain_pipeline  # pylint: disable=g-import-not-at-top
    from svfap_jax import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
    from svfap_jax import sharding  # pylint: disable=g-import-not-at-top
    params = self.place(params)
    kind = "eval" if num_segments == 1 else "test"
    options = {} if kind == "eval" else dict(num_segments=num_segments, num_crops=1)
    pipeline = grain_pipeline.make_pipeline(
        kind, dataset_dir, split, batch_size=self.batch_size(batch_size), num_frames=num_frames,
        sampling_rate=sampling_rate, img_size=img_size, seed=0, worker_count=worker_count,
        eval_resize=eval_resize or None, **options)
    feats, index, labels, keep, corrupt = [], [], [], [], []
    for batch in pipeline:
      video = sharding.host_to_global({"video": batch["video"]}, self.mesh)["video"]
      feats.append(
          sharding.local_rows(_embed_fn()(self.module, params, video)).astype(np.float32))
      index.append(np.asarray(batch["index"], np.int64))
      labels.append(np.asarray(batch["label"], np.int64))
      keep.append(np.asarray(batch["mask"], bool))
      corrupt.append(np.asarray(batch.get("corrupt", np.zeros(len(batch["mask"]))), np.int64))
    if not feats:
      raise ProbeError(f"split {split!r} of {dataset_dir} gave no clips")
    keep = _allgather(np.concatenate(keep))
    index = _allgather(np.concatenate(index))[keep]
    labels = _allgather(np.concatenate(labels))[keep]
    feats = _allgather(np.concatenate(feats))[keep]
    num_corrupt = int(_allgather(np.concatenate(corrupt)).sum())
    clips, mean = metrics_lib.aggregate_views(index.tolist(), feats)
    first = {}
    for i, clip in enumerate(index.tolist()):
      first.setdefault(clip, i)
    clip_labels = labels[[first[c] for c in clips]]
    labelled = clip_labels >= 0
    return SplitEmbeddings(features=np.asarray(mean, np.float32)[labelled],
                           labels=clip_labels[labelled],
                           num_unlabelled=int((~labelled).sum()), num_corrupt=num_corrupt,
                           num_views=int(num_segments))


def _check_dataset(dataset_dir: str, splits: Sequence[str],
                   fields: str = "--train-split/--test-split") -> dict:
  from data_pipelines import records  # pylint: disable=g-import-not-at-top
  try:
    info = records.load_info(dataset_dir)
  except (FileNotFoundError, ValueError) as e:
    raise ProbeError(str(e)) from None
  have = sorted(set(info.get("splits", {})) | set(records.list_splits(dataset_dir)))
  for split in splits:
    if split not in have:
      raise ProbeError(f"{dataset_dir} has no split {split!r} (it has {have}); pick others "
                       f"with {fields}")
  return info


def probe_embeddings(train: SplitEmbeddings, test: SplitEmbeddings, *, num_classes: int,
                     knn_k: int, where: str = "") -> dict:
  """`probe_features` of two embedded splits, plus their left-out counts."""
  for name, part in (("train", train), ("test", test)):
    if len(part.labels) == 0:
      raise ProbeError(f"{where}{name} split has no labelled clips ({part.num_unlabelled} "
                       f"unlabelled, {part.num_corrupt} unreadable)")
  out = probe_features(train.features, train.labels, test.features, test.labels,
                       num_classes=num_classes, knn_k=knn_k)
  out.update(num_unlabelled_train=train.num_unlabelled, num_unlabelled_test=test.num_unlabelled,
             num_corrupt=train.num_corrupt + test.num_corrupt, views_per_clip=train.num_views)
  return out


def probe_encoder(encoder: Encoder, dataset_dir: str, *, train_split: str = "train",
                  test_split: str = "test", knn_k: int = DEFAULT_KNN_K, batch_size: int = 16,
                  num_segments: int = 2, worker_count: int = 0, mesh=None) -> dict:
  """Embeds both splits with `encoder` and probes them (see the module docstring).

  Args:
    encoder: from `load_encoder` / `random_twin`.
    dataset_dir: a prepared dataset (`python -m svfap_jax prepare`).
    train_split, test_split: split names.
    knn_k: k of the k-NN (clipped to the training clips).
    batch_size: views per batch (rounded up to a multiple of the device count).
    num_segments: temporal views per clip (uniformly spaced windows, centre crop each).
    worker_count: grain decoding processes (0: this process).
    mesh: device mesh (default: all devices on the 'data' axis).

  Returns:
    `probe_features`' dict plus num_unlabelled_train/test, num_corrupt, views_per_clip.

  Raises:
    ProbeError: missing dataset/split, no labelled clips in a split.
  """
  from svfap_jax import sharding  # pylint: disable=g-import-not-at-top
  dataset_dir = _abs(dataset_dir)
  info = _check_dataset(dataset_dir, (train_split, test_split))
  mesh = mesh or sharding.create_mesh({"data": -1, "fsdp": 1, "tensor": 1})
  embedder = Embedder(encoder.module, mesh)
  spec = encoder.spec
  common = dict(batch_size=batch_size, num_frames=spec.num_frames,
                sampling_rate=encoder.sampling_rate, img_size=spec.img_size,
                eval_resize=encoder.eval_resize, num_segments=num_segments,
                worker_count=worker_count)
  train = embedder.embed(encoder.params, dataset_dir, train_split, **common)
  test = embedder.embed(encoder.params, dataset_dir, test_split, **common)
  return probe_embeddings(train, test, num_classes=int(info.get("num_classes") or 0),
                          knn_k=knn_k, where=f"{dataset_dir}: ")


# ------------------------------------------------------------------------------------------------
# Fine-tuning heads set from the training features: statistics, LP-FT.
# ------------------------------------------------------------------------------------------------

# `finetune.head_init`: 'random' (the head's own initialiser) or 'linear_probe' (LP-FT).
HEAD_INITS = ("random", "linear_probe")
# Bias of a class the training split lacks, below the smallest fitted bias: its logit stays
# e^-8 (~3e-4) times the odds of the least likely fitted class at equal scores.
_ABSENT_CLASS_MARGIN = 8.0


def head_init_of(config) -> str:
  """`config.finetune.head_init` ('random' when absent)."""
  ft = config.get("finetune") if hasattr(config, "get") else None
  return str((ft.get("head_init") if ft is not None else None) or "random")


def fit_linear_head(features: np.ndarray, labels: np.ndarray, num_classes: int, *,
                    mean: np.ndarray, var: np.ndarray,
                    eps: float = 1e-6) -> tuple[np.ndarray, np.ndarray, bool]:
  """A softmax head fitted by logistic regression on standardised features (the linear probe).

  The same classifier as `linear_predict` (lbfgs, L2 with C = LINEAR_C) on z = (x - mean) /
  sqrt(var + eps), written as a head: logits = z @ kernel + bias. A two-class fit (one weight
  vector w, b) becomes the softmax pair (-w/2, -b/2), (w/2, b/2), which gives the same
  probabilities; classes absent from `labels` get a zero kernel column and a bias
  `_ABSENT_CLASS_MARGIN` below the smallest fitted one.

  Args:
    features: float (N, C) training embeddings; labels: int (N,) in [0, num_classes).
    num_classes: K, the head's outputs.
    mean, var: (C,) standardisation statistics.
    eps: the standardisation's epsilon.

  Returns:
    (kernel float32 (C, K), bias float32 (K,), whether lbfgs converged).

  Raises:
    ProbeError: no labelled clips, or labels outside [0, num_classes).
  """
  labels = np.asarray(labels, np.int64)
  if len(labels) == 0:
    raise ProbeError("the linear-probe head needs labelled training clips")
  if labels.min() < 0 or labels.max() >= num_classes:
    raise ProbeError(f"training labels span [{labels.min()}, {labels.max()}], outside the "
                     f"head's {num_classes} classes")
  z = (np.asarray(features, np.float64) - mean) / np.sqrt(np.asarray(var, np.float64) + eps)
  kernel = np.zeros((z.shape[1], num_classes))
  bias = np.zeros(num_classes)
  classes = np.unique(labels)
  converged = True
  if len(classes) > 1:
    model = _logistic_regression()
    converged = _fit_converged(model, z, labels)
    coef, intercept = model.coef_, model.intercept_
    if len(classes) == 2:
      coef, intercept = np.concatenate([-coef, coef]) / 2, np.array([-1.0, 1.0]) * intercept / 2
    kernel[:, classes], bias[classes] = coef.T, intercept
  absent = np.setdiff1d(np.arange(num_classes), classes)
  bias[absent] = bias[classes].min() - _ABSENT_CLASS_MARGIN
  return kernel.astype(np.float32), bias.astype(np.float32), converged


def _like(old, new):
  """`new` as a float32 array laid out like `old` (sharded like it when `old` is a jax.Array)."""
  import jax  # pylint: disable=g-import-not-at-top
  new = np.asarray(new, np.float32).reshape(np.shape(old))
  return jax.device_put(new, old.sharding) if isinstance(old, jax.Array) else new


def head_config_errors(config) -> list[str]:
  """Problems of `finetune.head_init` for this run, one message each (none when 'random')."""
  head_init = head_init_of(config)
  if head_init == "random":
    return []
  if head_init not in HEAD_INITS:
    return [f"finetune.head_init={head_init!r} must be one of {HEAD_INITS}"]
  errors = []
  if config.mode != "finetune" or config.task != "classification":
    errors.append("finetune.head_init='linear_probe' fits a softmax head: it needs a "
                  f"classification fine-tuning run (mode={config.mode!r}, task={config.task!r}); "
                  "use 'random'")
  elif config.model.keep_temporal_dim:
    errors.append("finetune.head_init='linear_probe' fits a head on clip embeddings; with "
                  "model.keep_temporal_dim=True use 'random'")
  return errors


def with_feature_statistics(params, mean: np.ndarray, var: np.ndarray):
  """`params` with `head_norm/{mean,var}` replaced (each laid out like the array it replaces)."""
  if "head_norm" not in params:
    raise ValueError("the parameters have no head_norm: build the classifier with "
                     "linear_probe=True")
  out = dict(params)
  out["head_norm"] = {"mean": _like(params["head_norm"]["mean"], mean),
                      "var": _like(params["head_norm"]["var"], var)}
  return out


def init_head_state(state, config, module, dataset_dir: str, mesh):
  """A fresh train state whose head is set from the training split's embeddings, where asked.

  Two settings read the frozen starting encoder's pooled features of `data.train_split` (one
  centre view per clip, the evaluation pipeline's) before the first step:
  - a standardised head (`module.linear_probe`, e.g. finetune.mode='linear_probe'): the
    per-channel mean and (biased) variance go into `head_norm/{mean,var}`, which stay fixed;
  - finetune.head_init='linear_probe' (LP-FT; Kumar et al., "Fine-Tuning can Distort Pretrained
    Features and Underperform Out-of-Distribution", ICLR 2022): the head starts at the
    logistic-regression fit of `fit_linear_head` instead of at random, so the first updates of a
    full fine-tuning follow a head that already reads the pretrained features rather than the
    gradient of a random one. Without a standardised head the fit is folded onto the raw features
    (`classifier.fold_feature_standardization`): the starting logits are the fit's either way.
  Other runs get `state` back unchanged. Also sets the EMA copy (evaluation reads it; an average
  would only creep towards the values). The optimizer state is unaffected (statistics are frozen;
  Adam moments of a head start at zero either way). Call once before the first step, not when
  resuming (the checkpoint holds the values); every process must call it.

  Reads data.{train_split, num_frames, sampling_rate, img_size, eval_resize, eval_batch_size,
  worker_count}, batch_size, finetune.head_init.

  Raises:
    ProbeError: the split has no labelled clips.
  """
  from svfap_jax.models import classifier  # pylint: disable=g-import-not-at-top
  standardize = bool(getattr(module, "linear_probe", False))
  fit = head_init_of(config) == "linear_probe"
  if not (standardize or fit):
    return state
  d = config.data
  start = time.time()
  emb = Embedder(module, mesh).embed(
      state.params, dataset_dir, d.train_split, batch_size=d.eval_batch_size or config.batch_size,
      num_frames=d.num_frames, sampling_rate=d.sampling_rate, img_size=d.img_size,
      eval_resize=d.eval_resize or None, num_segments=1, worker_count=d.worker_count)
  if len(emb.features) == 0:
    raise ProbeError(f"split {d.train_split!r} of {dataset_dir} has no labelled clips to set the "
                     "head from")
  feats = emb.features.astype(np.float64)
  mean, var = feats.mean(axis=0), feats.var(axis=0)
  params = dict(state.params)
  if standardize:
    params = with_feature_statistics(params, mean, var)
  if fit:
    kernel, bias, converged = fit_linear_head(feats, emb.labels, int(module.num_classes),
                                              mean=mean, var=var, eps=classifier.LINEAR_PROBE_EPS)
    head = {"head": {"kernel": kernel, "bias": bias}}
    if not standardize:
      head = classifier.fold_feature_standardization(
          {**head, "head_norm": {"mean": mean, "var": var}})
    params["head"] = {k: _like(params["head"][k], v) for k, v in head["head"].items()}
    if not converged:
      log.warning("linear-probe head: the logistic regression did not converge in %d iterations",
                  LINEAR_MAX_ITER)
  log.info("head from %d %s clips%s%s (%.0f s)", len(feats), d.train_split,
           ": feature statistics" if standardize else "",
           ", linear-probe fit (LP-FT)" if fit else "", time.time() - start)
  ema = state.ema_params
  if ema is not None:
    import jax  # pylint: disable=g-import-not-at-top
    ema = dict(ema)
    # Own buffers: the train step donates the state, and one buffer cannot be donated twice.
    for name in ["head_norm"] * standardize + ["head"] * fit:
      ema[name] = jax.tree_util.tree_map(lambda x: x.copy(), params[name])
  return state.replace(params=params, ema_params=ema)


# ------------------------------------------------------------------------------------------------
# During pretraining.
# ------------------------------------------------------------------------------------------------


def config_errors(config) -> list[str]:
  """Problems of the `probe.*` config fields (none when probing is off), one message each."""
  p = config.get("probe") if hasattr(config, "get") else None
  if not p or not p.data.dir:
    return []
  errors = []
  for field, low in (("every_steps", 1), ("knn_k", 1), ("batch_size", 0), ("num_segments", 1)):
    if int(p[field]) < low:
      errors.append(f"probe.{field}={p[field]} must be >= {low}")
  try:
    _check_dataset(_abs(p.data.dir), (p.train_split, p.test_split),
                   "probe.train_split/probe.test_split")
  except ProbeError as e:
    errors.append(f"probe.data.dir: {e}")
  return errors


class ProbeMonitor:
  """Probes the encoder of a training state every `config.probe.every_steps` steps.

  Built by the run loop next to its model:

    monitor = probe.ProbeMonitor.from_config(config, mesh, module)   # None when probing is off
    if monitor and monitor.due(step):
      writer.write_eval({"step": step, "split": "probe", **monitor.run(step, state.params)})

  `run` returns {"probe_knn_uar", "probe_knn_war", "probe_linear_uar", "probe_linear_war",
  "probe_num_train", "probe_num_test", "probe_num_unlabelled_train", "probe_num_unlabelled_test"},
  and in its first call also the same metrics of the random initialisation as
  "probe_random_knn_uar", ...: the parameters `module.init` gives for `config.seed`, which are the
  run's step-0 parameters when it does not start from `init_from`. Every process must call `run`
  (embedding is sharded over the mesh); all get the same numbers.

  Args:
    config: the run config; reads probe.{data.dir, train_split, test_split, every_steps, knn_k,
      batch_size, num_segments}, data.{num_frames, sampling_rate, img_size, eval_resize,
      worker_count}, seed and init_from.
    mesh: the run's mesh.
    module: the run's model: an `MAEPretrainModel` or a `VideoClassifier` (its encoder is probed
      through a head-less classifier of the same spec).
  """

  def __init__(self, config, mesh, module):
    from svfap_jax import api  # pylint: disable=g-import-not-at-top
    from svfap_jax.models.classifier import VideoClassifier  # pylint: disable=g-import-not-at-top
    p = config.probe
    self.config = config
    self.dataset_dir = _abs(p.data.dir)
    self.train_split, self.test_split = p.train_split, p.test_split
    self.every_steps = int(p.every_steps)
    self.knn_k = int(p.knn_k)
    self.info = _check_dataset(self.dataset_dir, (self.train_split, self.test_split),
                               "probe.train_split/probe.test_split")
    self.run_module = module
    self.spec = module.spec
    self.pretrain = not isinstance(module, VideoClassifier)
    self.module = api.build_module(self.spec, pretrain=False, num_classes=0,
                                   dtype=_dtype_name(module.dtype), remat=module.remat)
    self.embedder = Embedder(self.module, mesh)
    d = config.data
    self._embed_options = dict(
        batch_size=int(p.batch_size or config.batch_size), num_frames=d.num_frames,
        sampling_rate=d.sampling_rate, img_size=d.img_size, eval_resize=d.eval_resize or None,
        num_segments=int(p.num_segments), worker_count=d.worker_count)
    self.baseline: Optional[dict] = None

  @classmethod
  def from_config(cls, config, mesh, module) -> Optional["ProbeMonitor"]:
    """A monitor, or None when `probe.data.dir` is empty (probing off)."""
    probe_cfg = config.get("probe") if hasattr(config, "get") else None
    if not probe_cfg or not probe_cfg.data.dir:
      return None
    return cls(config, mesh, module)

  def due(self, step: int) -> bool:
    return self.every_steps > 0 and step % self.every_steps == 0

  def measure(self, params) -> dict:
    """Probe metrics of `params` (the run module's tree), keys without the "probe_" prefix."""
    train = self.embedder.embed(params, self.dataset_dir, self.train_split, **self._embed_options)
    test = self.embedder.embed(params, self.dataset_dir, self.test_split, **self._embed_options)
    return probe_embeddings(train, test, num_classes=int(self.info.get("num_classes") or 0),
                            knn_k=self.knn_k, where=f"probe.data.dir={self.dataset_dir}: ")

  def _random_params(self):
    return _init_params(self.run_module, self.spec, self.config.seed, self.pretrain)

  @staticmethod
  def _row(metrics: dict, prefix: str) -> dict:
    keys = ("knn_uar", "knn_war", "linear_uar", "linear_war", "num_train", "num_test",
            "num_unlabelled_train", "num_unlabelled_test")
    return {f"{prefix}{k}": metrics[k] for k in keys}

  def run(self, step: int, params) -> dict:
    """Probe metrics of the current parameters (and, the first time, of the random init)."""
    start = time.time()
    out = {}
    if self.baseline is None:
      self.baseline = self.measure(self._random_params())
      out.update(self._row(self.baseline, "probe_random_"))
    if step == 0 and not self.config.init_from:
      current = self.baseline  # the step-0 parameters are that initialisation
    else:
      current = self.measure(params)
    out.update(self._row(current, "probe_"))
    out["probe_seconds"] = time.time() - start
    log.info("probe at step %d: k-NN UAR %.3f, linear UAR %.3f (%.0f s)", step,
             current["knn_uar"], current["linear_uar"], out["probe_seconds"])
    return out


# ------------------------------------------------------------------------------------------------
# Command line.
# ------------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="svfap probe",
      description="k-NN and linear probes of frozen encoder embeddings on a labelled dataset "
      "(UAR/WAR on its test split), optionally against the same architecture at random init.")
  parser.add_argument("--data", required=True, help="prepared dataset dir with train/test splits")
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument("--workdir", help="pretraining or fine-tuning workdir (or checkpoint dir)")
  source.add_argument("--torch", help="PyTorch .pth/.safetensors checkpoint (needs --model)")
  source.add_argument("--random-init", action="store_true",
                      help="a random initialisation of --model")
  parser.add_argument("--model", help="registry name (with --torch / --random-init)")
  parser.add_argument("--baseline", action="store_true",
                      help="also probe the same architecture at random init (for a pretraining "
                      "workdir: the MAE initialisation the run started from)")
  parser.add_argument("--img-size", type=int, help="input side (default: the checkpoint's)")
  parser.add_argument("--num-frames", type=int, help="frames per view (default: the model's)")
  parser.add_argument("--sampling-rate", type=int,
                      help="frame stride (default: the checkpoint's, else 4)")
  parser.add_argument("--views", type=int, default=2,
                      help="temporal views per clip, averaged (default 2)")
  parser.add_argument("--batch-size", type=int, default=16, help="views per batch (default 16)")
  parser.add_argument("--knn-k", type=int, default=DEFAULT_KNN_K, help="k of the k-NN (20)")
  parser.add_argument("--train-split", default="train")
  parser.add_argument("--test-split", default="test")
  parser.add_argument("--seed", type=int,
                      help="seed of random initialisations (default: the run's, else 0)")
  parser.add_argument("--workers", type=int, default=0, help="decoding processes (0: inline)")
  parser.add_argument("--out", help="write the report as JSON here")
  return parser


def _percent(x: float) -> str:
  return f"{100.0 * x:5.1f}"


def format_report(report: dict) -> str:
  """The console table of a `probe` report."""
  res, data = report["probe"], report["data"]
  enc = report["encoder"]
  lines = [
      f"probe of {enc['source']} ({enc['model']}, {enc['img_size']} px, {enc['num_frames']} "
      f"frames, rate {enc['sampling_rate']}, {res['views_per_clip']} view(s) per clip)",
      f"data {data['dir']}: {res['num_train']} train / {res['num_test']} test clips "
      f"({res['num_unlabelled_train']} + {res['num_unlabelled_test']} unlabelled and "
      f"{res['num_corrupt']} unreadable left out), {data['num_classes']} classes",
      f"{'':14}{'k-NN (k=' + str(res['knn_k']) + ')':>15}{'linear':>16}",
      f"{'':14}{'UAR %':>8}{'WAR %':>7}{'UAR %':>9}{'WAR %':>7}"]
  rows = [("encoder", res)] + ([("random init", report["baseline"])]
                               if report.get("baseline") else [])
  for name, r in rows:
    lines.append(f"{name:<14}{_percent(r['knn_uar']):>8}{_percent(r['knn_war']):>7}"
                 f"{_percent(r['linear_uar']):>9}{_percent(r['linear_war']):>7}")
  if report.get("baseline"):
    b = report["baseline"]
    lines.append(f"gain over random init: k-NN UAR {100 * (res['knn_uar'] - b['knn_uar']):+.1f}, "
                 f"linear UAR {100 * (res['linear_uar'] - b['linear_uar']):+.1f} points")
  if not res["linear_converged"]:
    lines.append(f"warning: the logistic regression did not converge in {LINEAR_MAX_ITER} "
                 "iterations")
  return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
  """`python -m svfap_jax probe ...`; returns the exit status."""
  parser = _parser()
  args = parser.parse_args(list(argv))
  if args.workdir is None and not args.model:
    parser.error(f"--{'torch' if args.torch else 'random-init'} needs --model NAME")
  if args.workdir is not None and args.model:
    parser.error("--model goes with --torch or --random-init; a workdir names its own model")
  for name in ("img_size", "num_frames", "sampling_rate", "views", "batch_size", "knn_k"):
    value = getattr(args, name)
    if value is not None and value < 1:
      parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
  logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
  try:
    # The dataset first: a wrong path should not wait for a model to load and compile.
    info = _check_dataset(_abs(args.data), (args.train_split, args.test_split))
    encoder = load_encoder(workdir=args.workdir, torch=args.torch, model=args.model,
                           seed=args.seed or 0, img_size=args.img_size, num_frames=args.num_frames,
                           sampling_rate=args.sampling_rate)
    options = dict(train_split=args.train_split, test_split=args.test_split, knn_k=args.knn_k,
                   batch_size=args.batch_size, num_segments=args.views,
                   worker_count=args.workers)
    result = probe_encoder(encoder, args.data, **options)
    baseline = probe_encoder(random_twin(encoder, args.seed), args.data, **options) \
        if args.baseline else None
  except ProbeError as e:
    print(f"svfap probe: error: {e}", file=sys.stderr)
    return 1
  report = {"encoder": encoder.describe(),
            "data": {"dir": args.data, "train_split": args.train_split,
                     "test_split": args.test_split,
                     "num_classes": int(info.get("num_classes") or 0),
                     "label_names": info.get("label_names")},
            "probe": result}
  if baseline is not None:
    report["baseline"] = baseline
  print(format_report(report))
  if args.out:
    out = _epath(_abs(args.out))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
  return 0


def _epath(path: str):
  import etils.epath as epath  # pylint: disable=g-import-not-at-top
  return epath.Path(path)
