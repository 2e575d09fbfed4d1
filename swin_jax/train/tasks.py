"""What differs between tasks: inputs, loss, evaluation. The loop is shared.

A task has:
  train_iterator(config, start_step) / eval_iterator(config, split)   [host, numpy batches]
  init_inputs(config) -> (args, kwargs) of zeros for model.init
  model_kwargs(batch) -> extra keyword arguments of model.apply (e.g. the pixel mask)
  train_batch(batch, rng) -> batch, optional: the whole global batch's on-device
    augmentation before the forward pass (classification: Mixup / CutMix) [train step]
  loss(outputs, batch) -> (scalar loss, dict of scalar metrics)            [train step]
  eval_outputs(outputs, batch) -> pytree of arrays                          [eval step]
  evaluator(config, split) -> object with add(eval_outputs, batch) and result() -> dict
  eval_pictures(config, state, step, workdir, outdir=None) -> uint8 [H, W, 3] or None,
    optional [main process, after each evaluation] pictures of the predictions (detection:
    a grid PNG in outdir, by default <workdir>/predictions), which the loop also writes to
    TensorBoard ('--mode=evaluate': <workdir>/predictions/evaluate, no TensorBoard)
  end_of_run(config, state, workdir)   [main process, after the final evaluation]
    what the task writes beside its metrics
"""
from __future__ import annotations

import logging
import os
from typing import Any, Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from swin_jax.data import detection_pipeline, input_pipeline
from swin_jax.data import mixup as mixup_lib
from swin_jax.detection.criterion import SetCriterion
from swin_jax.evaluation import coco, predictor

log = logging.getLogger('swin_jax')

LOGGED_DETECTION_METRICS = ('loss', 'loss_ce', 'loss_bbox', 'loss_giou', 'class_error',
                            'cardinality_error')


# config.mixup fields -> their defaults (off: both alphas 0), timm Mixup's arguments.
MIXUP_DEFAULTS = dict(mixup_alpha=0.0, cutmix_alpha=0.0, switch_prob=0.5, prob=1.0,
                      correct_lam=True)


def mixup_options(mixup_cfg) -> Optional[Dict[str, Any]]:
  """config.mixup -> checked keyword arguments of ``mixup.mixup_cutmix`` or None (off).

  Mixing is on when mixup_alpha > 0 or cutmix_alpha > 0, timm's ``mixup_active``.
  """
  if not mixup_cfg:
    return None
  cfg = mixup_cfg.to_dict() if hasattr(mixup_cfg, 'to_dict') else dict(mixup_cfg)
  unknown = sorted(set(cfg) - set(MIXUP_DEFAULTS))
  if unknown:
    raise ValueError(f'config.mixup has unknown field(s) {unknown}; the fields are '
                     f'{sorted(MIXUP_DEFAULTS)} (label smoothing is config.label_smoothing).')
  opts = dict(MIXUP_DEFAULTS, **{k: v for k, v in cfg.items() if v is not None})
  for k in ('mixup_alpha', 'cutmix_alpha'):
    if float(opts[k]) < 0:
      raise ValueError(f'config.mixup.{k}={opts[k]} must be >= 0 (0 = off; Swin / DeiT: '
                       f'mixup_alpha 0.8, cutmix_alpha 1.0).')
  for k in ('switch_prob', 'prob'):
    if not 0.0 <= float(opts[k]) <= 1.0:
      raise ValueError(f'config.mixup.{k}={opts[k]} is a probability: use a value in [0, 1].')
  if float(opts['mixup_alpha']) <= 0 and float(opts['cutmix_alpha']) <= 0:
    return None
  return {k: (bool(v) if k == 'correct_lam' else float(v)) for k, v in opts.items()}


# Folded into the step's rng for the Mixup / CutMix draws: far from the micro-batch indices
# 0..k-1 that make the dropout keys, so dropout is the same with mixing on or off.
MIX_RNG_STREAM = 0x6D6978  # 'mix'


class ClassificationTask:
  """Softmax cross-entropy with soft targets; top-1 / top-5 accuracy.

  Targets: one-hot labels smoothed by ``label_smoothing`` (timm's LabelSmoothingCrossEntropy),
  or, with Mixup / CutMix on (``mixup``: kwargs of ``mixup.mixup_cutmix``, see
  ``mixup_options``), the mixed, smoothed soft targets that ``train_batch`` puts in
  batch['target'] (timm's Mixup + SoftTargetCrossEntropy, the one smoothing applied once).
  """

  name = 'classification'

  def __init__(self, num_classes: int, label_smoothing: float = 0.0,
               mixup: Optional[Dict[str, Any]] = None):
    self.num_classes = num_classes
    self.label_smoothing = label_smoothing
    self.mixup = mixup

  # ------------------------------------------------------------------ data
  def train_iterator(self, config, start_step: int):
    return input_pipeline.make_train_iterator(
        config.input, global_batch_size=config.batch_size, seed=config.seed,
        start_step=start_step, process_index=jax.process_index(),
        process_count=jax.process_count())

  def eval_iterator(self, config, split: str):
    return input_pipeline.make_eval_iterator(
        config.input, split=split,
        global_batch_size=config.get('eval_batch_size', config.batch_size),
        process_index=jax.process_index(), process_count=jax.process_count())

  def init_inputs(self, config):
    size = config.input.image_size
    return (jnp.zeros((1, size, size, 3), jnp.float32),), {}

  def model_kwargs(self, batch) -> Dict[str, Any]:
    del batch
    return {}

  # ------------------------------------------------------------------ train batch
  def train_batch(self, batch, rng):
    """Mixup / CutMix of a batch (timm ``Mixup(mode='batch')``), when configured.

    The train step calls it on each device's shard of the global batch (as timm mixes
    each GPU's batch): example i is paired with b - 1 - i of the same device, so no image
    crosses devices; every device uses the step's rng (one lam and box per step).

    Args:
      batch: {'image': float [b, H, W, 3], 'label': int [b], ...}, one device's rows.
      rng: the step's PRNG key (a pure function of the step, so resuming stays exact).

    Returns:
      The batch unchanged when mixing is off; else with 'image' mixed and 'target'
      float32 [B, classes] added: rows sum to 1, smoothed by ``label_smoothing``.
    """
    if self.mixup is None:
      return batch
    if batch['image'].shape[0] % 2:
      raise ValueError(f'Mixup / CutMix pair example i with b - 1 - i of each device\'s '
                       f'b = config.batch_size / devices examples and need an even b: got '
                       f'{batch["image"].shape[0]}. Use a config.batch_size that is an even '
                       f'multiple of the device count.')
    images, targets = mixup_lib.mixup_cutmix(
        jax.random.fold_in(rng, MIX_RNG_STREAM), batch['image'], batch['label'],
        num_classes=self.num_classes, label_smoothing=self.label_smoothing, **self.mixup)
    return dict(batch, image=images, target=targets)

  # ------------------------------------------------------------------ loss
  def targets(self, batch):
    """Soft targets [B, classes]: batch['target'] as given (Mixup's, already smoothed), else
    the labels one-hot (or soft [B, classes] labels) smoothed by ``label_smoothing``."""
    if 'target' in batch:
      return batch['target'].astype(jnp.float32)
    labels = batch['label']
    if labels.ndim == 1:
      labels = jax.nn.one_hot(labels, self.num_classes, dtype=jnp.float32)
    if self.label_smoothing:
      labels = optax.smooth_labels(labels, self.label_smoothing)
    return labels

  def loss(self, logits, batch):
    """Mean soft-target cross-entropy -sum_k t_k log softmax(logits)_k, and the accuracy.

    The accuracy is against the labels, or with Mixup / CutMix against the argmax of the
    mixed targets: the class that contributes most of each mixed image.
    """
    logits = logits.astype(jnp.float32)
    targets = self.targets(batch)
    loss = optax.softmax_cross_entropy(logits, targets).mean()
    metrics = {'loss': loss}
    if 'target' in batch or batch['label'].ndim == 2:
      truth = jnp.argmax(targets, -1)
    else:
      truth = batch['label']
    metrics['accuracy'] = (jnp.argmax(logits, -1) == truth).mean()
    return loss, metrics

  # ------------------------------------------------------------------ eval
  def eval_outputs(self, logits, batch):
    """Per-batch sums over real examples (batch['mask']): loss, top1, top5, count."""
    logits = logits.astype(jnp.float32)
    mask = batch['mask'].astype(jnp.float32)
    labels = batch['label']
    onehot = jax.nn.one_hot(labels, self.num_classes, dtype=jnp.float32)
    ce = optax.softmax_cross_entropy(logits, onehot)
    top1 = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    k = min(5, self.num_classes)
    topk = jnp.any(jax.lax.top_k(logits, k)[1] == labels[:, None], axis=-1).astype(jnp.float32)
    return {'loss': (ce * mask).sum(), 'top1': (top1 * mask).sum(),
            'top5': (topk * mask).sum(), 'count': mask.sum()}

  def summarize(self, sums):
    n = max(float(sums['count']), 1.0)
    return {'loss': float(sums['loss']) / n, 'accuracy': float(sums['top1']) / n,
            'top5_accuracy': float(sums['top5']) / n, 'num_examples': int(sums['count'])}

  def evaluator(self, config, split: str):
    return _SumEvaluator(self.summarize)

  def end_of_run(self, config, state, workdir: str) -> None:
    del config, state, workdir  # nothing beyond the metrics


class _SumEvaluator:
  """Adds up the eval step's sums; result() = task.summarize(total)."""

  def __init__(self, summarize):
    self._summarize = summarize
    self._sums = None

  def add(self, outputs, batch):
    del batch
    self._sums = outputs if self._sums is None else jax.tree.map(np.add, self._sums, outputs)

  def result(self):
    if self._sums is None:
      raise ValueError('the evaluation split yielded no examples.')
    return self._summarize(self._sums)


def focal_options(loss_cfg):
  """config.loss.classification / focal_alpha / focal_gamma -> SetCriterion's ``focal``:
  None (DETR's softmax cross-entropy) or (alpha, gamma) (Deformable DETR's sigmoid focal)."""
  get = lambda k, d: loss_cfg.get(k, d) if loss_cfg else d
  kind = get('classification', 'softmax')
  if kind == 'softmax':
    return None
  if kind != 'focal':
    raise ValueError(f"config.loss.classification={kind!r}: use 'softmax' (DETR) or "
                     f"'focal' (Deformable DETR's sigmoid focal loss and matching cost).")
  alpha, gamma = float(get('focal_alpha', 0.25)), float(get('focal_gamma', 2.0))
  if not 0.0 <= alpha <= 1.0:
    raise ValueError(f'config.loss.focal_alpha={alpha} must be in [0, 1] (Deformable DETR: '
                     f'0.25).')
  if gamma < 0:
    raise ValueError(f'config.loss.focal_gamma={gamma} must be >= 0 (Deformable DETR: 2).')
  return alpha, gamma


def one2many_options(config):
  """config.loss.one2many_k / one2many_weight -> SetCriterion's (H-DETR's k_one2many and
  lambda_one2many), checked; only read when config.model.one2many_queries > 0."""
  lc = config.get('loss', {}) or {}
  k, weight = lc.get('one2many_k', 6), lc.get('one2many_weight', 1.0)
  if int(config.model.get('one2many_queries', 0) or 0) > 0:
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
      raise ValueError(f'config.loss.one2many_k={k!r} must be an int >= 1 (each target '
                       f'repeated k times for the one-to-many queries; H-DETR: 6).')
    if not isinstance(weight, (int, float)) or weight < 0:
      raise ValueError(f'config.loss.one2many_weight={weight!r} must be a number >= 0 '
                       f'(H-DETR\'s lambda_one2many: 1.0).')
  return {'one2many_k': int(k), 'one2many_weight': float(weight)}


class DetectionTask:
  """DETR: Hungarian set loss (``SetCriterion``) in training, COCO AP (pycocotools) in eval.

  config.loss: matcher ('hungarian' | 'greedy' | 'scipy'), eos_coef, ce / bbox / giou
  (loss weights), cost_class / cost_bbox / cost_giou (matching costs). DETR: 1, 5, 2 both.
  classification: 'softmax' (DETR) or 'focal' (Deformable DETR's sigmoid focal loss and
  focal matching cost with focal_alpha / focal_gamma, 0.25 / 2; its weights: ce 2,
  cost_class 2): the eval scores are then Deformable DETR's PostProcess, the top 100
  sigmoid scores of all query x class pairs, the no-object column ignored
  (``coco.postprocess``; the pictures and swin_jax.predict score the same way).
  config.model.dn_groups > 0 (DN-DETR denoising queries): the model gets the ground truth
  in training (``model_kwargs``) and the criterion adds the ``*_dn`` losses.
  config.model.one2many_queries = M > 0 (H-DETR's hybrid matching): M more queries in
  training, matched to the targets repeated config.loss.one2many_k times (6) and weighted
  config.loss.one2many_weight (1.0); the criterion adds the ``*_one2many`` losses.
  config.model.group_detr = K > 1 (Group DETR): the training outputs hold K * num_queries
  queries, matched group by group (``SetCriterion(..., num_groups=K)``); eval outputs
  (group 0 only) are scored as DETR's.
  config.eval.annotation_file: an official COCO json (e.g. instances_val2017.json) for the
  ground truth; empty = rebuilt from the tfds records of the eval split.
  """

  name = 'detection'

  def __init__(self, config):
    lc = config.get('loss', {})
    get = lambda k, d: lc.get(k, d) if lc else d
    self.num_classes = int(config.model.num_classes)
    self.focal = focal_options(lc)
    self.classification = coco.classification_of(config)  # how eval turns logits to scores
    self.dn = int(config.model.get('dn_groups', 0) or 0) > 0
    self.group_detr = int(config.model.get('group_detr', 1) or 1)
    self.num_queries = int(config.model.get('num_queries', 100))
    self.criterion = SetCriterion(
        self.num_classes, matcher=get('matcher', 'hungarian'), eos_coef=get('eos_coef', 0.1),
        weights={'ce': get('ce', 1.0), 'bbox': get('bbox', 5.0), 'giou': get('giou', 2.0)},
        cost_weights={'class_': get('cost_class', 1.0), 'bbox': get('cost_bbox', 5.0),
                      'giou': get('cost_giou', 2.0)},
        aux_loss=bool(config.model.get('aux_loss', True)), focal=self.focal,
        **one2many_options(config))
    self.one2many = int(config.model.get('one2many_queries', 0) or 0) > 0
    self.logged = LOGGED_DETECTION_METRICS + (
        ('loss_ce_dn', 'loss_bbox_dn', 'loss_giou_dn') if self.dn else ()) + (
        ('loss_ce_one2many', 'loss_bbox_one2many', 'loss_giou_one2many')
        if self.one2many else ())
    self._groundtruth: Dict[str, Any] = {}
    self._pictures = None  # predictor.EvalPictures, built at the first evaluation
    if config.get('num_prediction_images', 0):
      predictor.draw_settings(config)  # a bad config.eval.draw_* fails now, not mid-run

  # ------------------------------------------------------------------ data
  def train_iterator(self, config, start_step: int):
    return detection_pipeline.make_detection_train_iterator(
        config.input, global_batch_size=config.batch_size, seed=config.seed,
        start_step=start_step, process_index=jax.process_index(),
        process_count=jax.process_count())

  def eval_iterator(self, config, split: str):
    return detection_pipeline.make_detection_eval_iterator(
        config.input, split=split,
        global_batch_size=config.get('eval_batch_size', config.batch_size),
        process_index=jax.process_index(), process_count=jax.process_count())

  def init_inputs(self, config):
    h, w = pad_hw(config.input.pad_size)
    return (jnp.zeros((1, h, w, 3), jnp.float32),), {'mask': jnp.zeros((1, h, w), bool)}

  def model_kwargs(self, batch) -> Dict[str, Any]:
    kwargs = {'mask': batch['image_mask']}
    if self.dn and 'labels' in batch:  # DN-DETR's noised ground-truth queries (train only)
      kwargs['targets'] = {k: batch[k] for k in ('labels', 'boxes', 'valid')}
    return kwargs

  # ------------------------------------------------------------------ loss
  def loss(self, outputs, batch):
    targets = {'labels': batch['labels'], 'boxes': batch['boxes'], 'valid': batch['valid']}
    loss, metrics = self.criterion(outputs, targets, num_groups=self.num_groups(outputs))
    return loss, {k: metrics[k] for k in self.logged}

  def num_groups(self, outputs) -> int:
    """Group DETR's K for these outputs: K in training (K * Q queries), 1 at eval (Q)."""
    n, K, Q = outputs['pred_logits'].shape[1], self.group_detr, self.num_queries
    if K > 1 and n == K * Q:
      return K
    if K > 1 and n != Q:
      raise ValueError(f'the model returned {n} queries: expected config.model.num_queries='
                       f'{Q} or group_detr x num_queries = {K * Q}.')
    return 1

  # ------------------------------------------------------------------ eval
  def eval_outputs(self, outputs, batch):
    """DETR's PostProcess: scores, labels, boxes (x0, y0, x1, y1 in original pixels) per
    query, with the image ids and the real-example mask of the (global) batch."""
    scores, labels, boxes = coco.postprocess(outputs['pred_logits'], outputs['pred_boxes'],
                                             batch['orig_size'], self.classification)
    return {'scores': scores, 'labels': labels, 'boxes': boxes,
            'image_id': batch['image_id'], 'mask': batch['mask']}

  def groundtruth(self, config, split: str):
    """COCO-format ground truth of ``split`` (cached): the annotation file or tfds."""
    ann = config.get('eval', {}).get('annotation_file', '') if config.get('eval') else ''
    key = ann or split
    if key not in self._groundtruth:
      if ann:
        self._groundtruth[key] = coco.groundtruth_from_json(ann)
      else:
        builder = input_pipeline.get_builder(config.input)
        self._groundtruth[key] = coco.groundtruth_from_tfds(
            builder, split, label_map=config.input.get('label_map'))
    return self._groundtruth[key]

  def evaluator(self, config, split: str):
    return _CocoAdapter(coco.CocoEvaluator(self.groundtruth(config, split)))

  def eval_pictures(self, config, state, step: int, workdir: str,
                    outdir: Optional[str] = None) -> Optional[np.ndarray]:
    """After each evaluation (main process): the first config.num_prediction_images eval
    images with ground truth and the model's detections (EMA params when kept), one grid
    in <outdir or workdir/predictions>/step_<step>.png; returns it (uint8 [H, W, 3]) for
    TensorBoard, or None when config.num_prediction_images is 0."""
    num_pictures = config.get('num_prediction_images', 0)
    if not num_pictures:
      return None
    if self._pictures is None:
      self._pictures = predictor.EvalPictures(config, num_pictures)
    params = state.ema_params if state.ema_params is not None else state.params
    path, grid = self._pictures(jax.device_get({'params': params, **state.model_state}), step,
                                outdir or os.path.join(workdir, 'predictions'))
    log.info('Drew predictions on %d eval images into %s', num_pictures, path)
    return grid

  def end_of_run(self, config, state, workdir: str) -> None:
    """Nothing: the pictures are drawn after every evaluation (``eval_pictures``)."""
    del config, state, workdir


class _CocoAdapter:
  """Feeds eval-step outputs (replicated global batches) to a CocoEvaluator."""

  def __init__(self, evaluator):
    self.evaluator = evaluator
    self.count = 0

  def add(self, outputs, batch):
    del batch  # the outputs carry the global batch's image ids and mask
    self.count += int(np.sum(outputs['mask']))
    self.evaluator.add(outputs['image_id'], outputs['scores'], outputs['labels'],
                       outputs['boxes'], valid=outputs['mask'])

  def result(self):
    if not self.count:
      raise ValueError('the evaluation split yielded no examples.')
    stats = self.evaluator.summarize()
    return dict(stats, num_examples=self.count)


def pad_hw(pad_size):
  """config.input.pad_size (int or (H, W)) -> (H, W)."""
  if isinstance(pad_size, int):
    return pad_size, pad_size
  h, w = pad_size
  return int(h), int(w)


def task_from_config(config):
  name = config.get('task', 'classification')
  if name == 'classification':
    return ClassificationTask(config.input.num_classes, config.get('label_smoothing', 0.0),
                              mixup=mixup_options(config.get('mixup')))
  if name == 'detection':
    return DetectionTask(config)
  raise ValueError(f"config.task={name!r}: use 'classification' or 'detection'.")
