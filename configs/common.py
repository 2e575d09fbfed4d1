"""Shared defaults for every experiment: optimizer, schedule, checkpointing, logging.

Experiment configs start from ``get_config()`` here and change what their paper says.
"""
import ml_collections
from ml_collections import config_dict

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def get_config():
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.input = ml_collections.ConfigDict()
  c.input.dataset = 'imagenet2012'
  c.input.data_dir = config_dict.placeholder(str)  # None: tfds default (~/tensorflow_datasets)
  c.input.train_split = 'train'
  c.input.eval_split = 'validation'
  c.input.image_size = 224
  c.input.num_classes = 1000
  c.input.mean = IMAGENET_MEAN
  c.input.std = IMAGENET_STD
  c.input.train_augment = 'inception_crop'
  c.input.eval_resize = 'center_crop'
  c.input.shuffle_buffer = 10_000
  c.input.cache = False

  # Every field but `name` is passed to create_model(name, **fields).
  c.model = ml_collections.ConfigDict()
  c.model.name = 'vit_base_patch16_224'
  c.model.num_classes = c.input.get_ref('num_classes')
  c.model.img_size = c.input.get_ref('image_size')
  c.model.drop_path_rate = 0.0
  c.model.dtype = 'float32'  # compute dtype; params stay float32. 'bfloat16' on TPU/GPU.

  c.batch_size = 1024  # global, over all devices and hosts
  c.eval_batch_size = 1024
  c.num_epochs = 300.0
  c.total_steps = config_dict.placeholder(int)  # overrides num_epochs when set
  c.label_smoothing = 0.1

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = 'adamw'
  c.optimizer.lr = 1e-3
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.999
  c.optimizer.eps = 1e-8
  c.optimizer.momentum = 0.9  # sgd only
  c.optimizer.weight_decay = 0.05
  c.optimizer.clip_grad_norm = 5.0  # 0 disables
  c.optimizer.grad_accum_steps = 1
  c.optimizer.ema_decay = 0.0  # 0 disables; e.g. 0.9999 evaluates the EMA params

  c.schedule = ml_collections.ConfigDict()
  c.schedule.name = 'cosine'  # cosine | linear | step | constant
  c.schedule.warmup_epochs = 20.0
  c.schedule.warmup_steps = config_dict.placeholder(int)  # overrides warmup_epochs
  c.schedule.warmup_init_lr = 0.0
  c.schedule.min_lr = 0.0
  c.schedule.decay_epochs = config_dict.placeholder(tuple)  # 'step' boundaries
  c.schedule.decay_steps = config_dict.placeholder(tuple)
  c.schedule.decay_rate = 0.1

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every_steps = 1000
  c.checkpoint.keep = 3
  c.checkpoint.async_save = True

  c.init_from = ''  # weights only (fine-tuning): a workdir, step dir, .pth/.safetensors/.npz
  c.log_every_steps = 50
  c.eval_every_steps = 0  # 0: evaluate at the end only
  c.progress_bar = True

  c.sharding = ml_collections.ConfigDict()
  c.sharding.fsdp = False  # True: shard params/optimizer state over 'data' (ZeRO-3 style)

  c.distributed = ml_collections.ConfigDict()
  c.distributed.initialize = False  # True on multi-host (TPU pods: auto-discovery)
  c.distributed.coordinator_address = ''
  c.distributed.num_processes = 1
  c.distributed.process_id = 0
  return c


def digits_config(image_size: int = 16):
  """The configs/demo/* base: the embedded digits dataset and a CPU-sized run.

  scikit-learn's 1,797 real 8x8 digits (1,437 train / 360 held-out test), upsampled to
  image_size; batch 64, 60 epochs (1,320 steps), AdamW lr 2e-3 with 2 warm-up epochs.
  """
  c = get_config()
  c.input.dataset = 'sklearn_digits'
  c.input.train_split = 'train'  # 1,437 images
  c.input.eval_split = 'test'  # 360 held-out images, disjoint from train
  c.input.image_size = image_size
  c.input.num_classes = 10
  c.input.mean = (0.5, 0.5, 0.5)
  c.input.std = (0.5, 0.5, 0.5)
  c.input.train_augment = 'digits'  # shift by up to 1 source pixel; no flips for digits
  c.input.eval_resize = 'direct'
  c.input.shuffle_buffer = 2048
  c.input.cache = True
  c.model.drop_path_rate = 0.0
  c.batch_size = 64
  c.eval_batch_size = 120
  c.num_epochs = 60.0
  c.label_smoothing = 0.0
  c.optimizer.lr = 2e-3
  c.optimizer.weight_decay = 0.05
  c.optimizer.clip_grad_norm = 1.0
  c.schedule.warmup_epochs = 2.0
  c.checkpoint.every_steps = 200
  c.log_every_steps = 20
  return c


def demo_variant(c, arg, path: str):
  """Applies a demo variant: None (the full demo) or 'quick' (6 steps, for tests)."""
  if arg == 'quick':
    c.total_steps = 6
    c.schedule.warmup_steps = 2
    c.checkpoint.every_steps = 2
    c.log_every_steps = 2
  elif arg:
    raise ValueError(f'unknown variant {arg!r} for {path}: use "quick".')
  return c
