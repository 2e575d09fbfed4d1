"""ViT trained from scratch on ImageNet-1k with the DeiT recipe (Touvron et al., 2021).

  python -m swin_jax.main --config=configs/vit/deit_i1k.py:B/16 --workdir=gs://bucket/deit_b16 \
      --config.input.data_dir=gs://bucket/tensorflow_datasets

Variants (`:Ti/16`, `:S/16`, `:B/16`) follow big_vision's string convention, so a sweep is a
list of strings. Top-1 from the DeiT paper, Table 7 (no distillation, 224, 300 epochs):
  Ti/16 72.2   S/16 79.8   B/16 81.8
Recipe (DeiT paper, Table 9): AdamW lr 5e-4 x batch/512, wd 0.05, batch 1024, 300 epochs,
5 warm-up epochs, cosine to 1e-5, label smoothing 0.1, drop-path 0.1, no gradient clipping.
RandAugment, Mixup/CutMix and random erasing arrive with the ImageNet recipe issue; until
then the pipeline uses Inception crop + flip.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position

_VARIANTS = {
    'Ti/16': ('vit_tiny_patch16_224', 72.2),
    'S/16': ('vit_small_patch16_224', 79.8),
    'B/16': ('vit_base_patch16_224', 81.8),
}


def get_config(arg='B/16'):
  if arg not in _VARIANTS:
    raise ValueError(f'unknown variant {arg!r} for configs/vit/deit_i1k.py: use one of '
                     f'{list(_VARIANTS)}')
  name, _ = _VARIANTS[arg]
  c = common.get_config()
  c.model.name = name
  c.model.drop_path_rate = 0.1
  c.batch_size = 1024
  c.eval_batch_size = 1000
  c.num_epochs = 300.0
  c.label_smoothing = 0.1
  c.optimizer.lr = 5e-4 * c.batch_size / 512
  c.optimizer.weight_decay = 0.05
  c.optimizer.clip_grad_norm = 0.0
  c.schedule.warmup_epochs = 5.0
  c.schedule.warmup_init_lr = 1e-6
  c.schedule.min_lr = 1e-5
  c.checkpoint.every_steps = 2000
  c.log_every_steps = 100
  c.eval_every_steps = 12_500  # ~10 epochs at batch 1024
  return c
