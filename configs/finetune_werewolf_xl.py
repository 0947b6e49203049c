"""Fine-tuning on Werewolf-XL (14,632 clips; arousal/valence/dominance regression, 5 session-independent folds).

Paper protocol (Sun et al. 2024): AdamW (0.9, 0.999), lr 1e-3 * batch/256, batch 96, 100 epochs, 5
warmup, layer decay 0.75, drop path 0.1, weight decay 0.05, mixup 0.8 / cutmix 1.0 / label smoothing
0.1 (classification), RandAugment m7 n4, random erasing 0.25, 16 frames, 2 test clips. SVFAP-B
reaches: see `configs.common.DATASETS['werewolf_xl']['paper']`.

  python -m svfap_jax prepare --regression train=ww_train_fold1.txt \
      --regression test=ww_test_fold1.txt --value-names valence,arousal,dominance \
      --out /data/werewolf_xl_fold1
  python -m svfap_jax finetune --config configs/finetune_werewolf_xl.py:fold=1 --workdir W \
      --config.data.dir=/data/werewolf_xl_fold1 --config.init_from=PRETRAIN_WORKDIR

The `<path> <valence> <arousal> <dominance>` lists come from the annotation table through
`data_pipelines.recipes.convert_werewolf_xl(table, video_dir, out_list)`, one pair per fold.

Meant for one 8-GPU host or a v4-8 (bf16); preset args: fold=N, model=svfap_small, bf16=false.
"""
from configs import common


def get_config(arg=None):
  return common.finetune("werewolf_xl", arg)
