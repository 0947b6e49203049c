"""Fine-tuning on ChaLearn First Impressions 2016 (10,000 clips; Big-Five regression in [0,1], sigmoid head).

Paper protocol (Sun et al. 2024): AdamW (0.9, 0.999), lr 1e-3 * batch/256, batch 96, 100 epochs, 5
warmup, layer decay 0.75, drop path 0.1, weight decay 0.05, mixup 0.8 / cutmix 1.0 / label smoothing
0.1 (classification), RandAugment m7 n4, random erasing 0.25, 16 frames, 2 test clips.
Paper (SVFAP-B, Tables 8-13): CCC 0.6645, 1-MAE 0.9175 (Big-Five mean).
This code: not yet reproduced (no run on the real data so far).

  python -m svfap_jax prepare --regression train=fi_train.txt --regression test=fi_test.txt \
      --value-names openness,conscientiousness,extraversion,agreeableness,neuroticism --out DATA
  python -m svfap_jax finetune --config configs/finetune_first_impressions.py --workdir W \
      --config.data.dir=DATA --config.init_from=PRETRAIN_WORKDIR

The `<path> O C E A N` lists come from the annotation pickles through
`data_pipelines.recipes.convert_first_impressions(pkl, video_dir, out_list)`.

Hardware and runtime: one H100 runs ~370 fine-tuning clips/s (svfap_base, bf16, BENCHMARKS.md),
so 100 epochs of the official 6,000 = 6,000 training clips take about 27 min of train steps per run
(plus evaluation); an 8-GPU host or a v4-8 divides that if the input keeps up (~190 clips
per CPU-second). Preset args: fold=N, model=svfap_small, bf16=false.
"""
from configs import common


def get_config(arg=None):
  return common.finetune("first_impressions", arg)
