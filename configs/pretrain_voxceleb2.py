"""SVFAP pretraining on VoxCeleb2 (dev set, 1.09M clips).

Paper run (Sun et al. 2024, §4.1): 100 epochs, 5 warmup, batch 256, lr 3e-4 * batch/256, AdamW
(0.9, 0.95), weight decay 0.05, 90 % tube masking, decoder 384 wide / 6 heads / 4 blocks, 16 frames
at stride 4, fixed upper-central 160 crop; 4x RTX 3090 for 5-6 days. The encoder then reaches
62.83 UAR / 74.27 WAR on DFEW (5-fold) after fine-tuning (configs/finetune_dfew.py).

  python -m svfap_jax prepare --recipe voxceleb2 --src /data/voxceleb2 --out gs://bucket/vox2
  python -m svfap_jax pretrain --config configs/pretrain_voxceleb2.py \
      --workdir gs://bucket/runs/pretrain_base --config.data.dir=gs://bucket/vox2

This code: not yet reproduced (no VoxCeleb2 run so far).

Hardware and runtime: one H100 runs ~910 pretraining clips/s (svfap_base, bf16, 90 % masking,
BENCHMARKS.md), so 100 epochs of 1.09M clips are about 33 h of train steps on one H100, ~4 h on
8x H100 or a v4-32 slice, provided the input keeps up (~180 clips per CPU-second: about 40 cores
for 8 GPUs). `:model=svfap_small` for SVFAP-S.
"""
from configs import common


def get_config(arg=None):
  args = common.parse_arg(arg, model="svfap_base", bf16=True)
  c = common.base("pretrain")
  c.model.name = args.model
  c.model.dtype = "bfloat16" if args.bf16 else "float32"
  c.data.crop = "fixed"
  c.checkpoint_every_steps = 2000
  return c
