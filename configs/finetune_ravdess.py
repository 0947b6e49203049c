"""Fine-tuning on RAVDESS speech (1,440 clips, 24 actors, 8 classes, 6 subject-independent folds).

Paper protocol (Sun et al. 2024): AdamW (0.9, 0.999), lr 1e-3 * batch/256, batch 96, 100 epochs, 5
warmup, layer decay 0.75, drop path 0.1, weight decay 0.05, mixup 0.8 / cutmix 1.0 / label smoothing
0.1 (classification), RandAugment m7 n4, random erasing 0.25, 16 frames, 2 test clips.
Paper (SVFAP-B, Tables 8-13): 75.15 UAR / 75.01 WAR.
This code: not yet reproduced (no run on the real data so far).

  python -m svfap_jax prepare --recipe ravdess --src /data/RAVDESS --fold 1 \
      --out /data/ravdess_fold1
  python -m svfap_jax finetune --config configs/finetune_ravdess.py:fold=1 --workdir W \
      --config.data.dir=/data/ravdess_fold1 --config.init_from=PRETRAIN_WORKDIR

Hardware and runtime: one H100 runs ~370 fine-tuning clips/s (svfap_base, bf16, BENCHMARKS.md),
so 100 epochs of 5/6 of 1,440 = 1,200 training clips take about 5 min of train steps per run
(plus evaluation); an 8-GPU host or a v4-8 divides that if the input keeps up (~190 clips
per CPU-second). Preset args: fold=N, model=svfap_small, bf16=false.
"""
from configs import common


def get_config(arg=None):
  return common.finetune("ravdess", arg)
