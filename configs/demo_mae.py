"""The `make demo` runs: MAE pretraining that pays, on landmark-aligned synthetic faces, 2 CPU cores.

  python -m svfap_jax pretrain --config configs/demo_mae.py:pretrain --workdir P \
      --config.data.dir=D --config.probe.data.dir=D
  python -m svfap_jax finetune --config configs/demo_mae.py:finetune --workdir W \
      --config.data.dir=D --config.init_from=P

(D: the `prepared` folder of `python -m svfap_jax demo`'s data, e.g. demo_out/data/prepared.)
Hardware: a 2-core CPU; the whole demo (data, pretraining with probes, four fine-tunings: from the
MAE checkpoint and from scratch, with all and with 10 % of the labels) is sized for 15 minutes.
There is no paper number for synthetic faces. Expected from `python -m svfap_jax demo` (aligned
faces, 150 clips per class, seed 0; 784 train / 266 test clips, 13.4 min on the idle 2-core VM), test
UAR: frozen-encoder linear probe 72.9 % after pretraining against 56.0 % at random init;
fine-tuned 300 steps from the MAE checkpoint / from scratch, all labels 78.6 / 72.6 %, 10 % of
them 52.3 / 69.5 % (README "Demo"; PRETRAINING.md, "Position tables").

Sizing: `svfap_demo` (64 px, 8 px patches, 8 frames at stride 4, the per-axis position table in
its decoder) is the TPSBT that learns the change of expression, not only each face's appearance,
within the steps 2 cores afford: 75 % tube masking, peak lr 6e-3 without weight decay and a few
thousand steps over ~800 different faces (shorter schedules, 90 % masking, the usual lr 1.5e-3
with weight decay 0.05, or the 1-D table in the decoder leave its probes at or below its random
init). Everything else is configs/demo.py's.
"""
from configs import demo


def get_config(arg="finetune"):
  c = demo.get_config(arg)
  c.model.name = "svfap_demo"
  c.data.num_frames = 8
  c.data.sampling_rate = 4
  if c.mode == "pretrain":
    c.total_steps = 2500
    c.mask.ratio = 0.75
    c.optim.lr = 6e-3 * 256 / 16   # base lr quoted at batch 256: peak 6e-3 at batch 16
    c.optim.weight_decay = 0.0
    c.checkpoint_every_steps = 1000
    c.recon_image_every_steps = 1000
  else:
    c.total_steps = 300
    c.eval_every_steps = 300
  return c
