"""Linear probe: a frozen pretrained encoder, fixed feature standardisation, a trained linear head.

The protocol of the MAE paper's linear probe (He et al. 2022, appendix A.2) in this trainer: only
`head.*` trains (`finetune.mode='linear_probe'`; the encoder's parameters get zero updates and
have no optimizer state, see svfap_jax/optim.py); the pooled embedding goes through a BatchNorm
without affine parameters before the head, whose statistics are computed once over the training
split before the first step and stored with the parameters (`head_norm/{mean,var}`); no mixup,
cutmix, RandAugment, random erasing, label smoothing or drop path; no weight decay; the head starts
at trunc-normal std 0.01. AdamW replaces the paper's LARS (there is one linear layer on
standardised inputs, which Adam handles at a plain lr).

Use it to check what pretraining bought, next to `python -m svfap_jax probe` (k-NN and a
logistic regression on the same frozen embeddings, no training run needed):

  python -m svfap_jax finetune --config configs/linear_probe.py:dataset=dfew,fold=1 --workdir W \
      --config.data.dir=/data/dfew_fold1 --config.init_from=PRETRAIN_WORKDIR
  python -m svfap_jax finetune --config configs/linear_probe.py --workdir LP \
      --config.data.dir=demo_out/data/prepared --config.init_from=demo_out/pretrain

The second line probes the `make demo` pretraining (`dataset=demo`, the default: the demo's
fine-tuning settings, svfap_demo at 64 px, batch 16, 600 steps). Without init_from the frozen
encoder is a random initialisation: the baseline the pretrained encoder should beat.

Preset args (comma separated): dataset=demo|dfew|ferv39k|mafw|crema_d|ravdess|enterface05|...
(configs/common.py DATASETS), and for the datasets fold=N, model=NAME, bf16=true|false, data=DIR.

Hardware: the demo preset runs on a 2-core CPU; the dataset presets are sized like the fine-tuning
configs (batch 96; one 8-GPU host or a v4-8, bf16) and run faster than fine-tuning, since no
gradient flows into the encoder.

Expected numbers. Datasets: not yet measured. Demo preset, on the clips and pretraining of a
`make demo` run (aligned faces, 784 train / 266 test clips, 7 classes, chance 14.3 % UAR; 2-core
CPU, 600 steps in about 3 minutes; test UAR over 2 views per clip):

  frozen encoder                          linear-probe run    `probe` in pretraining (logistic)
  demo MAE pretraining (2500 steps)       62.4 %              72.9 %
  random init, no init_from               66.9 %              56.0 %

The two protocols disagree on these encoders: the run trains its head for 600 Adam steps on
augmented views (random temporal offset, horizontal flips) and ends with a training loss near
1.0, while `probe` fits a logistic regression to completion on one fixed, unflipped view per clip.
With the first version of the demo (svfap_tiny, studio faces, 1000 pretraining steps) both said the
pretrained encoder was worse than random weights (run 15.2 against 35.2 %, `probe` 25.7 against
34.3 %). A falling reconstruction loss does not show that the encoder learned affect; these
measurements are how to check.
"""
from configs import common
from configs import demo_mae


def _split_dataset(arg):
  """('dfew', 'fold=1,model=...') from 'dataset=dfew,fold=1,model=...'."""
  dataset, rest = "demo", []
  for item in (arg or "").split(","):
    if item.startswith("dataset="):
      dataset = item.split("=", 1)[1]
    elif item:
      rest.append(item)
  return dataset, ",".join(rest)


def get_config(arg=None):
  dataset, rest = _split_dataset(arg)
  if dataset == "demo":
    if rest:
      raise ValueError(f"dataset=demo takes no further arguments, got {rest!r}")
    c = demo_mae.get_config("finetune")
    c.total_steps = 600
    c.warmup_epochs = 0
    c.optim.warmup_steps = 20
    c.eval_every_steps = 200
    c.optim.lr = 1e-2 * 256 / 16   # 1e-2 per update at batch 16
  else:
    if dataset not in common.DATASETS:
      raise ValueError(f"unknown dataset {dataset!r}; known: demo, {sorted(common.DATASETS)}")
    c = common.finetune(dataset, rest)
    c.num_epochs = 90
    c.warmup_epochs = 10
    c.optim.lr = 1e-2              # per 256 clips
    c.augment.min_scale = 0.08     # RandomResizedCrop + flip are the only augmentation
  c.finetune.mode = "linear_probe"
  c.optim.weight_decay = 0.0
  c.optim.layer_decay = 1.0        # only the head trains; its layer scale is 1 anyway
  c.model.init_scale = 0.5         # trunc_normal(0.02) * 0.5: the paper's std 0.01
  c.model.drop_rate = c.model.attn_drop_rate = c.model.drop_path_rate = 0.0
  c.augment.mixup = c.augment.cutmix = 0.0
  c.augment.randaug_num_ops = 0
  c.augment.reprob = 0.0
  c.augment.label_smoothing = 0.0
  return c
