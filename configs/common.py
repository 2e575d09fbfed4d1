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
  c.input.train_augment = 'inception_crop'  # timm RandomResizedCrop + horizontal flip
  # The ImageNet recipe's per-example augmentations (swin_jax/data/input_pipeline.py), off:
  c.input.rand_augment = ''  # timm string, e.g. 'rand-m9-mstd0.5-inc1'
  c.input.color_jitter = 0.0  # timm/torchvision ColorJitter strength; not with rand_augment
  c.input.random_erasing = 0.0  # probability of timm RandomErasing ('pixel'), after normalise
  c.input.repeated_augmentation = 1  # k > 1: each image k times in a row (DeiT's RASampler)
  c.input.eval_resize = 'center_crop'  # shorter side 224 / 0.875 = 256, central crop
  # The loader (grain, swin_jax/data/loader.py): read threads per process, batches
  # buffered ahead, worker processes (README "Input": how to size them per host).
  c.input.num_threads = ml_collections.FieldReference(None, field_type=int)  # None: min(4, cores)
  c.input.prefetch = 4
  c.input.num_workers = 0
  c.input.cache = False

  # Every field but `name` is passed to create_model(name, **fields).
  c.model = ml_collections.ConfigDict()
  c.model.name = 'vit_base_patch16_224'
  c.model.num_classes = c.input.get_ref('num_classes')
  c.model.img_size = c.input.get_ref('image_size')
  c.model.drop_path_rate = 0.0
  c.model.dtype = 'float32'  # compute dtype; params stay float32. 'bfloat16' on TPU/GPU.
  # ViT / Swin / Shunted: blocks as one nn.scan (stacked params; faster compiles) and
  # rematerialisation 'none' | 'full' | a jax.checkpoint_policies name (README "Scan and
  # remat"). None: the model's default (off); not passed to models without them (DETR).
  c.model.scan_blocks = config_dict.placeholder(bool)
  c.model.remat = config_dict.placeholder(str)

  c.batch_size = 1024  # global, over all devices and hosts
  c.eval_batch_size = 1024
  c.num_epochs = 300.0
  c.total_steps = config_dict.placeholder(int)  # overrides num_epochs when set
  c.label_smoothing = 0.1  # also smooths the Mixup / CutMix targets, as timm's --smoothing

  # Mixup / CutMix of each global batch in the train step (timm Mixup(mode='batch');
  # swin_jax/data/mixup.py), on when mixup_alpha > 0 or cutmix_alpha > 0.
  c.mixup = ml_collections.ConfigDict()
  c.mixup.mixup_alpha = 0.0  # Beta(a, a) of the mixup weight; recipe 0.8
  c.mixup.cutmix_alpha = 0.0  # Beta(a, a) of the CutMix area; recipe 1.0
  c.mixup.switch_prob = 0.5  # P(CutMix) when both are on
  c.mixup.prob = 1.0  # P(mixing a batch at all)
  c.mixup.correct_lam = True  # CutMix weight from the clipped box's real area

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
  c.optimizer.layer_decay = 0.0  # 0 or 1 disables; d: layer l of L at lr x d ** (L + 1 - l)

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

  # Fine-tuning switches (with init_from); the head is 'head' (ViT, Swin, Shunted) / 'fc'.
  c.finetune = ml_collections.ConfigDict()
  c.finetune.new_head = False  # True: re-initialise the loaded head (another label set)
  c.finetune.freeze = ''  # '' | 'backbone' (train the head only: linear probe) | 'head'
  c.log_every_steps = 50
  c.eval_every_steps = 0  # 0: evaluate at the end only
  c.progress_bar = True  # False (TPU launcher, sweeps): one printed line per log step instead
  # Upload metrics.jsonl / TensorBoard events of a gs:// workdir at most every this many
  # seconds (each upload rewrites the object); None: 30 s remote, every record locally.
  c.metrics_flush_secs = config_dict.placeholder(float)
  # (start, stop): a jax.profiler trace of steps start..stop-1 in <workdir>/tensorboard
  # (TensorBoard's Profile tab), e.g. (100, 105); () = off.
  c.profile_steps = ()

  c.sharding = ml_collections.ConfigDict()
  c.sharding.fsdp = False  # True: shard params/optimizer state over 'data' (ZeRO-3 style)

  c.distributed = ml_collections.ConfigDict()
  c.distributed.initialize = False  # True on multi-host (TPU pods: auto-discovery)
  c.distributed.coordinator_address = ''
  c.distributed.num_processes = 1
  c.distributed.process_id = 0
  c.distributed.initialization_timeout = 300  # seconds to wait for every process to join
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


def digits_resnet_config(image_size: int = 24, depths=(1, 1, 1), width: int = 16):
  """A small ResNet classifier on the embedded digits: the DETR demo's backbone, trained
  first as the paper's backbone is on ImageNet (configs/demo/detr_digits.py: pretrain).

  resnet50's torchvision layout made CPU-sized: len(depths) stages of width * 2**i planes,
  GroupNorm (trained from scratch; the official frozen statistics need a trained net).
  """
  c = digits_config(image_size=image_size)
  c.model.name = 'resnet50'
  del c.model['img_size']  # not a ResNet field (the net is fully convolutional)
  del c.model['drop_path_rate']
  c.model.depths = tuple(depths)
  c.model.width = width
  c.model.norm = 'group'
  c.optimizer.weight_decay = 1e-4
  return c


def demo_variant(c, arg, path: str):
  """Applies a demo variant: None (the full demo) or 'quick' (6 steps, for tests)."""
  if arg == 'quick':
    if c.get('pretrain'):
      demo_variant(c.pretrain, arg, path)
    c.total_steps = 6
    c.schedule.warmup_steps = 2
    c.checkpoint.every_steps = 2
    c.log_every_steps = 2
  elif arg:
    raise ValueError(f'unknown variant {arg!r} for {path}: use "quick".')
  return c


def detection_config():
  """The DETR base (configs/detr/*, configs/demo/detr_digits.py): COCO 2017 with the
  official recipe of facebookresearch/detr (main.py defaults, datasets/coco.py transforms).

  AdamW lr 1e-4, backbone 1e-5 (lr_mults), weight decay 1e-4, gradient clip 0.1, batch 64,
  lr x0.1 after epoch 400 of 500, no warm-up; loss / matching weights 1 (class), 5 (L1),
  2 (GIoU), no-object weight 0.1.
  """
  c = get_config()
  c.task = 'detection'
  c.input.dataset = 'coco/2017'  # tfds, prepared in config.input.data_dir
  c.input.train_split = 'train'
  c.input.eval_split = 'validation'
  c.input.num_classes = 91  # DETR: max COCO category id + 1 (sparse ids, 'coco91')
  c.input.label_map = 'coco91'
  c.input.train_scales = tuple(range(480, 801, 32))
  c.input.max_size = 1333
  c.input.flip = True
  c.input.crop = True  # RandomSelect(resize, resize + RandomSizeCrop + resize), p = 0.5
  c.input.crop_scales = (400, 500, 600)
  c.input.crop_size = (384, 600)
  c.input.eval_scale = 800
  c.input.pad_size = (1344, 1344)  # static shape for jit: >= max_size, multiple of 32
  c.input.max_boxes = 100
  del c.input.image_size, c.input.train_augment, c.input.eval_resize

  c.model = ml_collections.ConfigDict()
  c.model.name = 'detr_resnet50'
  c.model.num_classes = c.input.get_ref('num_classes')
  c.model.num_queries = 100
  c.model.aux_loss = True
  c.model.dtype = 'float32'
  # DN-DETR denoising queries (off: 0 groups); DN-DETR: 5 groups, noise 0.2 / 0.4.
  c.model.dn_groups = 0
  c.model.dn_label_noise = 0.2
  c.model.dn_box_noise = 0.4
  # Group DETR: K groups of num_queries queries in training, each matched one-to-one on its
  # own (1 = off; the paper: 11); inference keeps group 0.
  c.model.group_detr = 1
  # H-DETR's hybrid matching: this many one-to-many queries in training, matched to the
  # targets repeated loss.one2many_k times (0 = off; H-DETR: 1500 beside 300, k 6).
  c.model.one2many_queries = 0
  # > 0: class_embed bias -log((1 - p) / p) (Deformable DETR with its focal loss: 0.01)
  c.model.class_prior_prob = 0.0

  c.loss = ml_collections.ConfigDict()
  c.loss.matcher = 'hungarian'  # exact, pure JAX; 'greedy' | 'scipy' for comparisons
  c.loss.eos_coef = 0.1
  c.loss.ce, c.loss.bbox, c.loss.giou = 1.0, 5.0, 2.0
  c.loss.cost_class, c.loss.cost_bbox, c.loss.cost_giou = 1.0, 5.0, 2.0
  # 'softmax' (DETR) | 'focal': Deformable DETR's sigmoid focal loss + focal matching cost
  # (its weights: ce 2, cost_class 2; alpha 0.25, gamma 2).
  c.loss.classification = 'softmax'
  c.loss.focal_alpha = 0.25
  c.loss.focal_gamma = 2.0
  # H-DETR (model.one2many_queries > 0): k_one2many, lambda_one2many
  c.loss.one2many_k = 6
  c.loss.one2many_weight = 1.0

  c.eval = ml_collections.ConfigDict()
  # Official numbers: point this at annotations/instances_val2017.json (the ground truth
  # rebuilt from tfds rounds areas to integers).
  c.eval.annotation_file = ''
  # Prediction pictures (config.num_prediction_images > 0, and swin_jax.predict): draw the
  # detections with score >= threshold, best first, at most draw_max_detections per image.
  # None: 0.7 for softmax scores (DETR's demo notebook), 0.3 for focal sigmoid scores
  # (DINO's inference notebook). No NMS: the pictures show what COCO AP scores.
  c.eval.draw_score_threshold = config_dict.placeholder(float)
  c.eval.draw_max_detections = 10

  c.batch_size = 64
  c.eval_batch_size = 64
  c.num_epochs = 500.0
  c.label_smoothing = 0.0
  c.optimizer.lr = 1e-4
  c.optimizer.weight_decay = 1e-4
  c.optimizer.clip_grad_norm = 0.1
  c.optimizer.lr_mults = (('^backbone_0/', 0.1),)  # backbone lr 1e-5
  c.schedule.name = 'step'
  c.schedule.warmup_epochs = 0.0
  c.schedule.decay_epochs = (400,)
  c.schedule.decay_rate = 0.1
  c.checkpoint.every_steps = 2000
  c.log_every_steps = 100
  # > 0: after each evaluation, that many eval images with ground truth and predictions in
  # one grid, <workdir>/predictions/step_<N>.png and TensorBoard's eval/predictions image.
  c.num_prediction_images = 0
  return c
