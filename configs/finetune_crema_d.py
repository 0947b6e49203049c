"""Fine-tuning on CREMA-D (7,442 clips, 91 actors, 6 classes, 5 subject-independent folds).

Paper protocol (Sun et al. 2024): AdamW (0.9, 0.999), lr 1e-3 * batch/256, batch 96, 100 epochs, 5
warmup, layer decay 0.75, drop path 0.1, weight decay 0.05, mixup 0.8 / cutmix 1.0 / label smoothing
0.1 (classification), RandAugment m7 n4, random erasing 0.25, 16 frames, 2 test clips. SVFAP-B
reaches: see `configs.common.DATASETS['crema_d']['paper']`.

  python -m svfap_jax prepare --recipe crema_d --src /data/CREMA-D --fold 1 \
      --out /data/crema_d_fold1
  python -m svfap_jax finetune --config configs/finetune_crema_d.py:fold=1 --workdir W \
      --config.data.dir=/data/crema_d_fold1 --config.init_from=PRETRAIN_WORKDIR

Meant for one 8-GPU host or a v4-8 (bf16); preset args: fold=N, model=svfap_small, bf16=false.
"""
from configs import common


def get_config(arg=None):
  return common.finetune("crema_d", arg)
