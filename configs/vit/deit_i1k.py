"""ViT trained from scratch on ImageNet-1k with the DeiT recipe (Touvron et al., 2021).

  python -m swin_jax.main --config=configs/vit/deit_i1k.py:B/16 --workdir=gs://bucket/deit_b16 \
      --config.input.data_dir=gs://bucket/tensorflow_datasets
  python -m swin_jax.main --config=configs/vit/deit_i1k.py:B/16-384-ft --workdir=... \
      --config.init_from=/path/to/deit_base_patch16_224-b5f2ef4d.pth

Variants (`:Ti/16`, `:S/16`, `:B/16`, `:B/16-384-ft`) follow big_vision's string convention,
so a sweep is a list of strings. Top-1 from the DeiT paper, Table 7 (no distillation, 224,
300 epochs):
  Ti/16 72.2   S/16 79.8   B/16 81.8
and the official README_deit.md for the 384 fine-tune: B/16-384-ft 82.9 (deit_base_patch16_384).

Recipe (DeiT paper, Table 9; the official main.py defaults): AdamW lr 5e-4 x batch/512, wd
0.05, batch 1024, 300 epochs, 5 warm-up epochs from 1e-6, cosine to 1e-5, label smoothing 0.1,
drop-path 0.1, no gradient clipping. Augmentation (main.py defaults, datasets.py
create_transform, timm Mixup): Inception crop + flip, RandAugment rand-m9-mstd0.5-inc1, random
erasing 0.25 ('pixel', one box), Mixup 0.8 / CutMix 1.0 switching with probability 0.5 on every
batch, targets smoothed by 0.1, repeated augmentation x3 (set_defaults(repeated_aug=True);
samplers.py RASampler, num_repeats 3). --color-jitter 0.3 is passed to timm's
create_transform, which drops color jitter when --aa is set, so it is 0 here. main.py also
keeps a model EMA (0.99996) but evaluates and reports the plain model, so EMA is off here
(this trainer evaluates the EMA params when it is on). Evaluation: shorter side
int(size / 0.875), center crop (datasets.py, eval_crop_ratio 0.875) at 224 and at 384.
timm resamples bicubic (--train-interpolation) where this pipeline resizes bilinear.

B/16-384-ft (README_deit.md): from a 224 DeiT-B (config.init_from: a B/16 workdir or the
official deit_base_patch16_224-b5f2ef4d.pth; pos_embed is resampled 14x14 -> 24x24), batch
32 x 16 GPUs = 512, lr 5e-6 (main.py scales lr x batch / 512), wd 1e-8, 30 epochs, min lr
5e-6 (so constant after the 5 warm-up epochs), the same augmentation; the 1,000-class head is
kept (config.finetune.new_head False) and every weight trains.
"""
from configs import common

# variant: (model name, image size, fine-tune?, top-1)
_VARIANTS = {
    'Ti/16': ('vit_tiny_patch16_224', 224, False, 72.2),
    'S/16': ('vit_small_patch16_224', 224, False, 79.8),
    'B/16': ('vit_base_patch16_224', 224, False, 81.8),
    'B/16-384-ft': ('vit_base_patch16_224', 384, True, 82.9),  # built at img_size 384
}


def get_config(arg='B/16'):
  if arg not in _VARIANTS:
    raise ValueError(f'unknown variant {arg!r} for configs/vit/deit_i1k.py: use one of '
                     f'{list(_VARIANTS)}')
  name, size, finetune, _ = _VARIANTS[arg]
  c = common.get_config()
  c.model.name = name
  c.input.image_size = size  # c.model.img_size follows (a reference)
  c.model.drop_path_rate = 0.1
  c.batch_size = 1024
  c.eval_batch_size = 1000
  c.num_epochs = 300.0
  c.label_smoothing = 0.1  # --smoothing
  c.optimizer.lr = 5e-4 * c.batch_size / 512
  c.optimizer.weight_decay = 0.05
  c.optimizer.clip_grad_norm = 0.0
  c.schedule.warmup_epochs = 5.0
  c.schedule.warmup_init_lr = 1e-6
  c.schedule.min_lr = 1e-5
  # Official main.py defaults (datasets.py create_transform, timm Mixup):
  c.input.train_augment = 'inception_crop'  # RandomResizedCrop (0.08, 1) + flip 0.5
  c.input.rand_augment = 'rand-m9-mstd0.5-inc1'  # --aa
  c.input.color_jitter = 0.0  # --color-jitter 0.3, dropped by timm with --aa on
  c.input.random_erasing = 0.25  # --reprob, --remode pixel, --recount 1
  c.input.repeated_augmentation = 3  # --repeated-aug (default on): RASampler, 3 copies
  c.input.eval_resize = 'center_crop'  # datasets.py: int(size / 0.875), CenterCrop(size)
  c.mixup.mixup_alpha = 0.8  # --mixup
  c.mixup.cutmix_alpha = 1.0  # --cutmix
  c.mixup.switch_prob = 0.5  # --mixup-switch-prob
  c.mixup.prob = 1.0  # --mixup-prob (--mixup-mode batch)
  c.optimizer.ema_decay = 0.0  # main.py's EMA is tracked but never evaluated
  c.optimizer.layer_decay = 0.0  # DeiT uses none
  if finetune:  # README_deit.md: fine-tune DeiT-B at 384
    c.batch_size = 512  # 32 per GPU x 2 nodes x 8 GPUs
    c.eval_batch_size = 500
    c.num_epochs = 30.0
    c.optimizer.lr = 5e-6 * c.batch_size / 512  # --lr 5e-6, scaled by batch / 512
    c.optimizer.weight_decay = 1e-8
    c.schedule.min_lr = 5e-6  # --min-lr 5e-6: constant after warm-up
    c.init_from = ''  # a B/16 workdir or deit_base_patch16_224-b5f2ef4d.pth
    c.finetune.new_head = False  # 1K -> 1K: the loaded head is kept
    c.finetune.freeze = ''  # every weight trains
  c.checkpoint.every_steps = 2000
  c.log_every_steps = 100
  c.eval_every_steps = 12_500 if not finetune else 2_500  # ~10 / ~1 epochs
  return c
