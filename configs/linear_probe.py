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

The second line probes the `make demo` pretraining (`dataset=demo`, the default: svfap_tiny at
64 px, batch 16, 600 steps). Without init_from the frozen encoder is a random initialisation: the
baseline the pretrained encoder should beat.

Preset args (comma separated): dataset=demo|dfew|ferv39k|mafw|crema_d|ravdess|enterface05|...
(configs/common.py DATASETS), and for the datasets fold=N, model=NAME, bf16=true|false, data=DIR.

Hardware: the demo preset runs on a 2-core CPU; the dataset presets are sized like the fine-tuning
configs (batch 96; one 8-GPU host or a v4-8, bf16) and run faster than fine-tuning, since no
gradient flows into the encoder.

Expected numbers. Datasets: not yet measured. Demo preset, measured on a 2-core CPU shared with
other jobs, on synthetic clips made like the demo's but fewer (`make_synthetic_dataset(...,
num_clips_per_class=60, num_frames=40, size=112, variation="studio")`: 315 train / 105 test clips,
7 classes, chance 14.3 % UAR), with `init_from` the demo pretraining (configs/demo.py:pretrain,
1000 steps on the same clips; its loss fell from 0.139 to 0.031); 600 steps take about 4.5 min:

  frozen encoder                          linear-probe run, test UAR   `probe` k-NN / logistic UAR
  demo MAE pretraining (1000 steps)       15.2 %                       10.5 % / 25.7 %
  random init, no init_from               35.2 %                       19.0 % / 34.3 %
  MAE initialisation (pretraining step 0)   -                          27.6 % / 27.6 %

(test UAR over 2 views per clip; `probe` of the linear-probe run's workdir gives the pretrained
row's numbers again: its encoder did not move.) The tiny demo encoder's pretraining does not make
expressions more linearly separable than random weights on these clips, although its
reconstruction loss fell and the fine-tuned demo models reach 75-78 % either way (README): a
falling loss does not show that the encoder learned affect, this measurement does.
"""
from configs import common
from configs import demo


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
    c = demo.get_config("finetune")
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
