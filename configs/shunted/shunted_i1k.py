"""Shunted Transformer on ImageNet-1k (Ren et al., CVPR 2022): one variant per row of the
paper's ImageNet table.

  python -m swin_jax.main --config=configs/shunted/shunted_i1k.py:S --workdir=gs://bucket/shunted_s \
      --config.input.data_dir=gs://bucket/tensorflow_datasets

Variants follow big_vision's string convention, so a sweep is a list of strings. Top-1 of the
paper / the official README (OliverRensu/Shunted-Transformer, 224, 300 epochs from scratch),
parameters (= the official SSA.py models) and FLOPs (multiply-adds; both measured on these
models, see tests/test_shunted.py; paper 2.1G / 4.9G / 8.1G):

    T   224  79.8   11.55M  2.15G   shunted_t
    S   224  82.9   22.40M  4.99G   shunted_s
    B   224  84.0   39.61M  8.15G   shunted_b

Recipe (the official main.py, DeiT's, and configs/Shunted/shunted_{T,S,B}.py; dist_train.sh:
8 GPUs x batch 128 = 1024): AdamW lr 5e-4 x batch / 512 (1e-3 at 1024), wd 0.05, 300 epochs,
5 warm-up epochs from 1e-6, cosine to 1e-5, label smoothing 0.1, drop-path 0.1 / 0.2 / 0.3
(T / S / B), gradient clipping 1.0 for B only, center-crop evaluation.

Augmentation (the official main.py defaults, DeiT's): Inception crop + flip, RandAugment
rand-m9-mstd0.5-inc1, random erasing 0.25 ('pixel', one box), Mixup 0.8 / CutMix 1.0 switching
with probability 0.5 on every batch (--mixup-prob 1.0, mode 'batch'), targets smoothed by 0.1,
repeated augmentation x3 (set_defaults(repeated_aug=True); samplers.py RASampler repeats each
index 3 times). --color-jitter 0.4 is passed to timm's create_transform, which drops color
jitter when --aa is set, so it is 0 here. The model EMA of DeiT's main.py is commented out in
Shunted's: no EMA. timm resamples bicubic (--train-interpolation) where this pipeline
resizes bilinear (antialiased).

The stem's BatchNorm statistics (the ``batch_stats`` collection) are computed over the global
batch (one jit over all devices) and saved with the checkpoints.
"""
from configs import common

# variant: (model name, drop-path, gradient clipping (0 = off), paper top-1)
_VARIANTS = {
    'T': ('shunted_t', 0.1, 0.0, 79.8),
    'S': ('shunted_s', 0.2, 0.0, 82.9),
    'B': ('shunted_b', 0.3, 1.0, 84.0),
}


def get_config(arg='T'):
  if arg not in _VARIANTS:
    raise ValueError(f'unknown variant {arg!r} for configs/shunted/shunted_i1k.py: use one of '
                     f'{list(_VARIANTS)}')
  name, drop_path, clip, _ = _VARIANTS[arg]
  c = common.get_config()
  c.input.image_size = 224  # a multiple of 32, as every Shunted input must be
  c.input.eval_resize = 'center_crop'
  c.model.name = name
  c.model.drop_path_rate = drop_path
  c.batch_size = 1024
  c.eval_batch_size = 1000
  c.num_epochs = 300.0
  c.label_smoothing = 0.1
  c.optimizer.name = 'adamw'
  c.optimizer.lr = 5e-4 * c.batch_size / 512
  c.optimizer.weight_decay = 0.05
  c.optimizer.clip_grad_norm = clip
  c.schedule.name = 'cosine'
  c.schedule.warmup_epochs = 5.0
  c.schedule.warmup_init_lr = 1e-6
  c.schedule.min_lr = 1e-5
  # Official main.py defaults (datasets.py create_transform, timm Mixup):
  c.input.train_augment = 'inception_crop'  # RandomResizedCrop (0.08, 1) + flip 0.5
  c.input.rand_augment = 'rand-m9-mstd0.5-inc1'  # --aa
  c.input.color_jitter = 0.0  # --color-jitter 0.4, dropped by timm with --aa on
  c.input.random_erasing = 0.25  # --reprob, --remode pixel, --recount 1
  c.input.repeated_augmentation = 3  # --repeated-aug (default on): RASampler, 3 copies
  c.mixup.mixup_alpha = 0.8  # --mixup
  c.mixup.cutmix_alpha = 1.0  # --cutmix
  c.mixup.switch_prob = 0.5  # --mixup-switch-prob
  c.mixup.prob = 1.0  # --mixup-prob (--mixup-mode batch)
  c.optimizer.ema_decay = 0.0  # main.py's model EMA is commented out
  c.checkpoint.every_steps = 2000
  c.log_every_steps = 100
  c.eval_every_steps = 12_500  # ~10 epochs at batch 1024
  return c
