"""Swin Transformer on ImageNet-1k (Liu et al., ICCV 2021): one variant per row of Table 1.

  python -m swin_jax.main --config=configs/swin/swin_i1k.py:T --workdir=gs://bucket/swin_t \
      --config.input.data_dir=gs://bucket/tensorflow_datasets
  python -m swin_jax.main --config=configs/swin/swin_i1k.py:B-384-ft --workdir=... \
      --config.init_from=/path/to/swin_base_patch4_window7_224.pth

Variants follow big_vision's string convention, so a sweep is a list of strings. Top-1 of the
paper's Table 1 (the official README's released checkpoints in brackets where they differ),
parameters and FLOPs (multiply-adds; both measured on these models, see tests/test_swin.py):

  (a) Regular ImageNet-1K training, from scratch, 300 epochs:
    T          224  81.3 (81.2)   28.3M    4.5G   swin_tiny_patch4_window7_224
    S          224  83.0 (83.2)   49.6M    8.7G   swin_small_patch4_window7_224
    B          224  83.5          87.8M   15.4G   swin_base_patch4_window7_224
    B-384-ft   384  84.5          87.9M   47.1G   swin_base_patch4_window12_384  (from B)
  (b) ImageNet-22K pre-trained, then fine-tuned on ImageNet-1K:
    B-22k-ft       224  85.2      87.8M   15.4G   swin_base_patch4_window7_224
    B-384-22k-ft   384  86.4      87.9M   47.1G   swin_base_patch4_window12_384
    L-22k-ft       224  86.3     196.5M   34.5G   swin_large_patch4_window7_224
    L-384-22k-ft   384  87.3     196.7M  103.9G   swin_large_patch4_window12_384

From-scratch recipe (paper Sec. 4.1; official config.py): AdamW lr 1e-3 at batch 1024
(official BASE_LR 5e-4 x batch / 512), wd 0.05, 300 epochs, 20 warm-up epochs from 1e-6,
cosine to 1e-5, gradient clipping 5.0, label smoothing 0.1, drop-path 0.2 / 0.3 / 0.5 (T / S /
B), center-crop evaluation (crop ratio 0.875).

Augmentation (official config.py _C.AUG and data/build.py, the same for every row, fine-tunes
included: no yaml overrides AUG): Inception crop + flip, RandAugment rand-m9-mstd0.5-inc1,
random erasing 0.25 ('pixel', one box), Mixup 0.8 / CutMix 1.0 switching with probability
0.5 on every batch (MIXUP_PROB 1.0, mode 'batch'), targets smoothed by 0.1. COLOR_JITTER 0.4
is passed to timm's create_transform, which drops color jitter when auto_augment is set, so
it is 0 here. No repeated augmentation (a plain DistributedSampler), no EMA, no layer decay
(TRAIN.LAYER_DECAY 1.0; only the SimMIM fine-tunes use it). Differences left: timm resamples
bicubic (DATA.INTERPOLATION) where this pipeline resizes bilinear (antialiased) and
RandAugment's geometric ops use bilinear.

Fine-tuning recipe (`-ft` rows; official configs/swin/*_finetune.yaml and get_started.md:
8 GPUs x batch 64 x 2 accumulation steps = 1024): 30 epochs, 5 warm-up epochs, cosine,
AdamW lr 4e-5 at batch 1024 (BASE_LR 2e-5 x 1024 / 512; warm-up from 4e-8, min 4e-7), wd 1e-8,
clipping 5.0, label smoothing 0.1, drop-path 0.5 for B-384-ft and 0.2 for the 22K rows; the
384 rows evaluate on the image resized to 384x384 without a crop (TEST.CROP False). Point
`config.init_from` (empty by default) at the weights to start from: B-384-ft at the B row's
result (its workdir) or the official swin_base_patch4_window7_224.pth; the 22K rows at the
official 22K releases swin_{base,large}_patch4_window{7_224,12_384}_22k.pth. The 21,841-class
head is kept fresh (1,000 classes; the official utils.load_pretrained instead keeps the 1K
classes' rows of the 22K head, data/map22kto1k.txt, which this loader does not do); a
checkpoint with another window size (B-384-ft starts from window 7, the model has window 12)
needs its relative_position_bias_table resized. All weights train (config.finetune.freeze
''); B-384-ft keeps the loaded 1K head (config.finetune.new_head False).
"""
from configs import common

# variant: (model name, image size, drop-path, fine-tune?, paper top-1)
_VARIANTS = {
    'T': ('swin_tiny_patch4_window7_224', 224, 0.2, False, 81.3),
    'S': ('swin_small_patch4_window7_224', 224, 0.3, False, 83.0),
    'B': ('swin_base_patch4_window7_224', 224, 0.5, False, 83.5),
    'B-384-ft': ('swin_base_patch4_window12_384', 384, 0.5, True, 84.5),
    'B-22k-ft': ('swin_base_patch4_window7_224', 224, 0.2, True, 85.2),
    'B-384-22k-ft': ('swin_base_patch4_window12_384', 384, 0.2, True, 86.4),
    'L-22k-ft': ('swin_large_patch4_window7_224', 224, 0.2, True, 86.3),
    'L-384-22k-ft': ('swin_large_patch4_window12_384', 384, 0.2, True, 87.3),
}


def get_config(arg='T'):
  if arg not in _VARIANTS:
    raise ValueError(f'unknown variant {arg!r} for configs/swin/swin_i1k.py: use one of '
                     f'{list(_VARIANTS)}')
  name, size, drop_path, finetune, _ = _VARIANTS[arg]
  c = common.get_config()
  c.input.image_size = size
  c.model.name = name
  c.model.drop_path_rate = drop_path
  c.batch_size = 1024
  c.eval_batch_size = 1000
  c.label_smoothing = 0.1
  c.optimizer.name = 'adamw'
  c.optimizer.weight_decay = 0.05
  c.optimizer.clip_grad_norm = 5.0
  c.schedule.name = 'cosine'
  # Official config.py _C.AUG (create_transform + Mixup in data/build.py):
  c.input.train_augment = 'inception_crop'  # RandomResizedCrop (0.08, 1) + flip 0.5
  c.input.rand_augment = 'rand-m9-mstd0.5-inc1'  # AUG.AUTO_AUGMENT
  c.input.color_jitter = 0.0  # AUG.COLOR_JITTER 0.4, dropped by timm with RandAugment on
  c.input.random_erasing = 0.25  # AUG.REPROB, REMODE 'pixel', RECOUNT 1
  c.input.repeated_augmentation = 1  # DistributedSampler: no repeated augmentation
  c.mixup.mixup_alpha = 0.8  # AUG.MIXUP
  c.mixup.cutmix_alpha = 1.0  # AUG.CUTMIX
  c.mixup.switch_prob = 0.5  # AUG.MIXUP_SWITCH_PROB
  c.mixup.prob = 1.0  # AUG.MIXUP_PROB (AUG.MIXUP_MODE 'batch')
  c.optimizer.ema_decay = 0.0  # no model EMA in the official Swin training
  c.optimizer.layer_decay = 0.0  # TRAIN.LAYER_DECAY 1.0 (off) for these rows
  if not finetune:
    c.num_epochs = 300.0
    c.optimizer.lr = 5e-4 * c.batch_size / 512  # 1e-3 at 1024
    c.schedule.warmup_epochs = 20.0
    c.schedule.warmup_init_lr = 5e-7 * c.batch_size / 512
    c.schedule.min_lr = 5e-6 * c.batch_size / 512
    c.input.eval_resize = 'center_crop'
    c.eval_every_steps = 12_500  # ~10 epochs at batch 1024
  else:
    c.num_epochs = 30.0
    c.optimizer.lr = 2e-5 * c.batch_size / 512  # 4e-5 at 1024
    c.optimizer.weight_decay = 1e-8
    c.schedule.warmup_epochs = 5.0
    c.schedule.warmup_init_lr = 2e-8 * c.batch_size / 512
    c.schedule.min_lr = 2e-7 * c.batch_size / 512
    c.input.eval_resize = 'direct' if size == 384 else 'center_crop'
    c.eval_every_steps = 2_500  # ~2 epochs at batch 1024
    # Weights to fine-tune (see the docstring): a workdir / step dir of the B row for
    # B-384-ft, or an official .pth (swin_base_patch4_window7_224.pth for B-384-ft,
    # swin_{base,large}_patch4_window{7_224,12_384}_22k.pth for the 22K rows).
    c.init_from = ''
    c.finetune.new_head = False  # 1K -> 1K keeps the head; a 22K head does not fit anyway
    c.finetune.freeze = ''  # every weight trains (official fine-tunes: no frozen layers)
  c.checkpoint.every_steps = 2000
  c.log_every_steps = 100
  return c
