"""Fine-tuning on FERV39k (38,935 clips, 7 classes, official 80/20 split; sampling rate 1).

Paper protocol (Sun et al. 2024): AdamW (0.9, 0.999), lr 1e-3 * batch/256, batch 96, 100 epochs, 5
warmup, layer decay 0.75, drop path 0.1, weight decay 0.05, mixup 0.8 / cutmix 1.0 / label smoothing
0.1 (classification), RandAugment m7 n4, random erasing 0.25, 16 frames, 2 test clips.
Paper (SVFAP-B, Tables 8-13): 42.14 UAR / 52.29 WAR.
This code: not yet reproduced (no run on the real data so far).

  python -m svfap_jax prepare --recipe ferv39k --src /data/FERV39k --out DATA
  python -m svfap_jax finetune --config configs/finetune_ferv39k.py --workdir W \
      --config.data.dir=DATA --config.init_from=PRETRAIN_WORKDIR

Hardware and runtime: one H100 runs ~370 fine-tuning clips/s (svfap_base, bf16, BENCHMARKS.md),
so 100 epochs of 80 % of 38,935 = 31,148 training clips take about 2.3 h of train steps per run
(plus evaluation); an 8-GPU host or a v4-8 divides that if the input keeps up (~190 clips
per CPU-second). Preset args: fold=N, model=svfap_small, bf16=false.
"""
from configs import common


def get_config(arg=None):
  return common.finetune("ferv39k", arg)
