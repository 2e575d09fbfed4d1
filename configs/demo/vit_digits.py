"""Quickstart: a 4-layer ViT on the embedded digits dataset (scikit-learn's 1,797 real 8x8
handwritten digits, upsampled to 16x16: 4x4 patches of 4 pixels), on CPU in about 3 minutes.

  python -m swin_jax.main --config=configs/demo/vit_digits.py --workdir=runs/demo

Variants: `:quick` (a few steps, for tests).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position


def get_config(arg=None):
  c = common.get_config()
  c.input.dataset = 'sklearn_digits'
  c.input.train_split = 'train'  # 1,437 images
  c.input.eval_split = 'test'  # 360 held-out images, disjoint from train
  c.input.image_size = 16  # 32 (64 tokens) learns no better here and is 3.5x slower
  c.input.num_classes = 10
  c.input.mean = (0.5, 0.5, 0.5)
  c.input.std = (0.5, 0.5, 0.5)
  c.input.train_augment = 'digits'  # shift by up to 2 source pixels; no flips for digits
  c.input.eval_resize = 'direct'
  c.input.shuffle_buffer = 2048
  c.input.cache = True

  c.model.name = 'vit_demo'  # 4 blocks, dim 96, 3 heads, patch 4 -> 16 tokens + cls
  c.model.global_pool = 'avg'  # learned faster than the class token on this small set
  c.model.drop_path_rate = 0.0

  c.batch_size = 64
  c.eval_batch_size = 120
  c.num_epochs = 60.0  # 1,320 steps
  c.label_smoothing = 0.0
  c.optimizer.lr = 2e-3
  c.optimizer.weight_decay = 0.05
  c.optimizer.clip_grad_norm = 1.0
  c.schedule.warmup_epochs = 2.0
  c.checkpoint.every_steps = 200
  c.log_every_steps = 20

  if arg == 'quick':
    c.total_steps = 6
    c.schedule.warmup_steps = 2
    c.checkpoint.every_steps = 2
    c.log_every_steps = 2
  elif arg:
    raise ValueError(f'unknown variant {arg!r} for configs/demo/vit_digits.py: use "quick".')
  return c
