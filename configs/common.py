"""Shared config skeleton. Every run config starts from `base(mode)` and overrides fields.

Field reference (all overridable on the command line, e.g. `--config.batch_size=64`):
  mode                'pretrain' | 'finetune'
  task                'classification' | 'regression'
  model.*             registry name, precision, remat, drop path, head options
  data.*              prepared dataset dir (`python -m svfap_jax prepare`), splits, sampling
  mask.*              pretraining mask kind and ratio
  optim.*             AdamW / schedule / layer decay / clipping / accumulation / EMA
  augment.*           device-side augmentation of fine-tuning batches
  batch_size          global batch (all hosts together)
  total_steps         training steps; 0 = derive from num_epochs and the split size
  num_epochs, warmup_epochs   used when total_steps / optim.warmup_steps are 0
  mesh.*              device mesh sizes, -1 fills
  init_from           pretraining workdir/checkpoint dir or PyTorch .pth/.safetensors
  fold                fine-tuning fold; '{fold}' in data.dir is replaced by it
  finetune.*          which parameters train: full | linear_probe | last_blocks | regex
                      (svfap_jax/optim.py, configs/linear_probe.py)
  probe.*             k-NN / linear probe of the encoder during the run (svfap_jax/probe.py)
"""
from __future__ import annotations

import ml_collections


def parse_arg(arg, **defaults):
  """'fold=3,model=svfap_small' -> ConfigDict with typed values (types from `defaults`)."""
  cfg = ml_collections.ConfigDict(defaults)
  if not arg:
    return cfg
  for item in arg.split(","):
    if "=" not in item:
      raise ValueError(f"config argument {item!r} must look like key=value")
    key, value = item.split("=", 1)
    if key not in defaults:
      raise ValueError(f"unknown config argument {key!r}; known: {sorted(defaults)}")
    kind = type(defaults[key])
    cfg[key] = (value.lower() in ("1", "true", "yes")) if kind is bool else kind(value)
  return cfg


def base(mode: str) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.mode = mode
  c.task = "classification"
  c.seed = 0

  c.model = ml_collections.ConfigDict(dict(
      name="svfap_base",
      dtype="float32",           # compute dtype: float32 | bfloat16 (params stay float32)
      remat="none",              # none | full | dots | dots_saveable
      drop_rate=0.0,
      attn_drop_rate=0.0,
      drop_path_rate=0.0 if mode == "pretrain" else 0.1,
      original_pretrain_quirks=False,
      init_scale=0.001,
      head_activation="",        # '' | sigmoid | tanh | relu
      keep_temporal_dim=False,
      # Attention kernel (layers.resolve_attention_impl): auto | xla | cudnn | chunked | aten.
      attention_impl="auto",
  ))

  c.data = ml_collections.ConfigDict(dict(
      dir="",
      train_split="train",
      eval_split="test",         # evaluated during training (the original uses test as val)
      test_split="test",
      num_frames=16,
      sampling_rate=4,
      img_size=160,
      worker_count=0,
      prefetch=2,
      crop="fixed",              # pretrain crop: fixed (upper-central, as VoxCeleb2) | multiscale
      num_views=1,               # pretrain: masked views per decoded clip (repeated sampling)
      num_test_segments=2,
      num_test_crops=1,
      eval_batch_size=0,         # 0 = batch_size
      train_resize=0,            # resize the stored short side before cropping (0 = as stored)
      train_crop="random",       # host-side fine-tuning crop: random | centre
      train_crop_size=0,         # host crop side (0 = train_resize or the stored short side)
      eval_resize=0,             # eval/test: resize the short side before the centre crop
      pretrain_resize=0,
  ))

  # normalize_target: regress per-patch normalised pixels (paper/VideoMAE) or raw [0, 1] pixels.
  c.mask = ml_collections.ConfigDict(dict(kind="tube", ratio=0.9, normalize_target=True))

  c.optim = ml_collections.ConfigDict(dict(
      lr=3e-4 if mode == "pretrain" else 1e-3,   # base lr at batch 256
      scale_lr_by_batch=True,
      min_lr=1e-5 if mode == "pretrain" else 1e-6,
      warmup_steps=0,            # 0 = warmup_epochs * steps_per_epoch
      b1=0.9,
      b2=0.95 if mode == "pretrain" else 0.999,
      eps=1e-8,
      weight_decay=0.05,
      layer_decay=1.0 if mode == "pretrain" else 0.75,
      clip_grad=0.0,
      accum_steps=1,
      ema_decay=0.0,             # 0 = no EMA of parameters
  ))

  c.augment = ml_collections.ConfigDict(dict(
      mixup=0.8, cutmix=1.0, mixup_switch_prob=0.5, label_smoothing=0.1,
      randaug_magnitude=7, randaug_num_ops=4, reprob=0.25, flip=True,
      min_scale=0.08,
  ))

  c.batch_size = 256 if mode == "pretrain" else 96
  c.total_steps = 0
  c.num_epochs = 100
  c.warmup_epochs = 5

  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))

  # Frozen / partial fine-tuning (svfap_jax/optim.py): frozen parameters get zero updates and no
  # optimizer state. 'linear_probe': frozen encoder, features standardised by statistics of the
  # training split, only the head trains; 'last_blocks': the top `trainable_last_blocks` encoder
  # blocks and everything above them; 'regex': PyTorch names matching `trainable_regex`.
  # head_init 'linear_probe' (LP-FT): the head starts at a logistic-regression fit on the
  # starting encoder's features of the training split instead of at random (svfap_jax/probe.py,
  # `init_head_state`).
  c.finetune = ml_collections.ConfigDict(dict(
      mode="full",               # full | linear_probe | last_blocks | regex
      trainable_last_blocks=0,
      trainable_regex="",
      head_init="random",        # random | linear_probe
  ))

  # Representation probe during the run (svfap_jax/probe.py): k-NN (cosine) and logistic
  # regression on the frozen pooled embeddings of a labelled dataset, written to metrics.jsonl
  # as `probe_*` (and once `probe_random_*`, the same at random init). '' = off.
  c.probe = ml_collections.ConfigDict(dict(
      data=ml_collections.ConfigDict(dict(dir="")),  # a prepared dataset with both splits
      train_split="train",
      test_split="test",
      every_steps=1000,
      knn_k=20,
      batch_size=0,              # views per batch; 0 = batch_size
      num_segments=1,            # temporal views per clip, averaged
  ))

  c.init_from = ""
  c.dataset = ""
  c.fold = 0
  c.best_metric = "uar"          # finetune model selection: uar | war | ccc | ...
  c.log_every_steps = 50
  c.eval_every_steps = 0         # 0 = once per epoch
  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 2
  c.recon_image_every_steps = 0  # pretrain: reconstruction PNG every K steps (0 = off)
  c.nan_max_consecutive = 5
  c.profile_steps = ""           # e.g. '10,20': jax.profiler trace of those steps
  return c


# Fine-tuning targets: classes / regression dims, folds, sampling rate, selection metric, and the
# paper's SVFAP-B result (Sun et al. 2024, Tables 8-13).
DATASETS = {
    "dfew": dict(task="classification", num_outputs=7, folds=5, sampling_rate=4, metric="uar",
                 paper="62.83 UAR / 74.27 WAR (5-fold pooled)"),
    "ferv39k": dict(task="classification", num_outputs=7, folds=0, sampling_rate=1, metric="uar",
                    paper="42.14 UAR / 52.29 WAR"),
    "mafw": dict(task="classification", num_outputs=11, folds=5, sampling_rate=4, metric="uar",
                 paper="41.19 UAR / 54.28 WAR (5-fold pooled)"),
    "crema_d": dict(task="classification", num_outputs=6, folds=5, sampling_rate=4, metric="uar",
                    paper="77.31 UAR / 77.37 WAR"),
    "ravdess": dict(task="classification", num_outputs=8, folds=6, sampling_rate=4, metric="uar",
                    paper="75.15 UAR / 75.01 WAR"),
    "enterface05": dict(task="classification", num_outputs=6, folds=5, sampling_rate=4,
                        metric="uar", paper="60.58 UAR / 60.54 WAR"),
    "werewolf_xl": dict(task="regression", num_outputs=3, folds=5, sampling_rate=4, metric="ccc",
                        paper="PCC/CCC arousal .2351/.1896, valence .6711/.6427, "
                              "dominance .3461/.2969"),
    "avcaffe": dict(task="classification", num_outputs=5, folds=0, sampling_rate=4,
                    metric="weighted_f1", paper="weighted F1 arousal 40.36, valence 41.49"),
    "first_impressions": dict(task="regression", num_outputs=5, folds=0, sampling_rate=4,
                              metric="acc_1_minus_mae", head_activation="sigmoid",
                              paper="CCC 0.6645, 1-MAE 0.9175 (Big-Five mean)"),
}


def finetune(dataset: str, arg=None) -> ml_collections.ConfigDict:
  """Fine-tuning config for one dataset; `arg` = 'fold=3,model=svfap_small,bf16=false,data=DIR'."""
  info = DATASETS[dataset]
  args = parse_arg(arg, fold=1 if info["folds"] else 0, model="svfap_base", bf16=True, data="")
  if info["folds"] and not 1 <= args.fold <= info["folds"]:
    raise ValueError(f"{dataset} has folds 1..{info['folds']}, got fold={args.fold}")
  c = base("finetune")
  c.dataset = dataset
  c.fold = args.fold
  c.task = info["task"]
  c.model.name = args.model
  c.model.dtype = "bfloat16" if args.bf16 else "float32"
  c.model.head_activation = info.get("head_activation", "")
  c.data.sampling_rate = info["sampling_rate"]
  c.data.dir = args.data
  # One prepared dataset dir per fold (`prepare --recipe dfew --fold N`); `{fold}` in data.dir
  # is replaced by the fold number, which lets the k-fold runner visit every fold.
  c.best_metric = info["metric"]
  if c.task == "regression":
    c.augment.mixup = c.augment.cutmix = 0.0
    c.augment.label_smoothing = 0.0
  return c
