"""The `make demo` runs: a small TPSBT on the built-in synthetic face clips, on 2 CPU cores.

  python -m svfap_jax pretrain --config configs/demo.py:pretrain --workdir P \
      --config.data.dir=D --config.probe.data.dir=D
  python -m svfap_jax finetune --config configs/demo.py:finetune --workdir W \
      --config.data.dir=D --config.init_from=P

Hardware: a 2-core CPU; the whole demo (data, pretraining with probes, four fine-tunings: from the
MAE checkpoint and from scratch, with all and with 10 % of the labels) is sized for 15 minutes.
There is no paper number for synthetic faces. Expected from `python -m svfap_jax demo` (aligned
faces, 150 clips per class, seed 0; 784 train / 266 test clips, ~15 min on the 2-core VM), test
UAR: frozen-encoder linear probe 72.9 % after pretraining against 56.0 % at random init;
fine-tuned 300 steps from the MAE checkpoint / from scratch, all labels 78.6 / 72.6 %, 10 % of
them 52.3 / 69.5 % (README "Demo"; PRETRAINING.md, "Position tables").

Sizing: `svfap_demo` (64 px, 8 px patches, 8 frames at stride 4) is the TPSBT that learns the
change of expression, not only each face's appearance, within the steps 2 cores afford: 75 % tube
masking, peak lr 6e-3 without weight decay and a few thousand steps over ~800 different faces
(shorter schedules, 90 % masking or the usual lr 1.5e-3 with weight decay 0.05 leave its probes at
or below its random init).
"""
from configs import common


def get_config(arg="finetune"):
  mode = arg or "finetune"
  if mode not in ("pretrain", "finetune"):
    raise ValueError(f"demo config argument must be 'pretrain' or 'finetune', got {mode!r}")
  c = common.base(mode)
  c.model.name = "svfap_demo"
  c.model.dtype = "float32"
  c.data.img_size = 64
  c.data.num_frames = 8
  c.data.sampling_rate = 4
  c.data.num_test_segments = 2
  c.mesh.data = -1
  c.batch_size = 16
  c.num_epochs = 0
  c.log_every_steps = 50
  c.checkpoint_every_steps = 400
  c.keep_checkpoints = 1
  if mode == "pretrain":
    c.total_steps = 2500
    c.mask.ratio = 0.75
    c.optim.lr = 6e-3 * 256 / 16   # base lr quoted at batch 256: peak 6e-3 at batch 16
    c.optim.scale_lr_by_batch = True
    c.optim.weight_decay = 0.0
    c.optim.warmup_steps = 20
    c.checkpoint_every_steps = 1000
    c.recon_image_every_steps = 1000
    # The clips are stored at 112 px with the face filling the frame: the fixed upper-centre
    # 64 px crop of the stored frames would show the MAE only forehead and eyes, zoomed 1.75x,
    # while fine-tuning sees whole faces at 64 px. Resize first, so both see the same view.
    c.data.pretrain_resize = c.data.img_size
    # Flat drawn backgrounds make per-patch normalised targets mostly JPEG noise; raw pixels
    # give the small demo model a learnable reconstruction task.
    c.mask.normalize_target = False
  else:
    c.total_steps = 300
    c.optim.lr = 1e-3 * 256 / 16
    c.optim.warmup_steps = 20
    c.optim.layer_decay = 0.75
    c.model.drop_path_rate = 0.05
    c.model.init_scale = 1.0
    c.augment.mixup = 0.0
    c.augment.cutmix = 0.0
    c.augment.randaug_num_ops = 0
    c.augment.reprob = 0.0
    # Random resized crops that cut into the face remove the mouth or brows of these small
    # inputs, so the label no longer matches what the crop shows; flips and the clips' own head
    # motion are the augmentation. (Studio faces, svfap_tiny: min_scale 0.6 gave 29-38 % test
    # UAR, 1.0 gave 75-78 %, same data.)
    c.augment.min_scale = 1.0
    c.eval_every_steps = 300
  return c
