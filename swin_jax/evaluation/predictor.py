"""A trained detector's predictions drawn on images (library; the CLI is swin_jax.predict).

  Predictor(config, variables)(image) -> scores, labels, boxes of one image, through the
      run's evaluation preprocessing (DETR's resize, normalisation, padding) and its
      PostProcess (softmax or, for a focal-loss run, Deformable DETR's sigmoid top-k:
      ``coco.classification_of``), so the scores are the ones COCO AP was computed on;
  draw(...) -> a PNG of the detections ``select_detections`` keeps;
  EvalPictures(config)(variables, step, outdir) -> one PNG grid of the first
      config.num_prediction_images eval images, predictions and ground truth, per
      evaluation (<outdir>/step_<N>.png); the trainer also writes it to TensorBoard.
"""
from __future__ import annotations

import io
import os
from typing import Any, Dict, List, Optional, Tuple

import jax
import numpy as np
from PIL import Image
import tensorflow as tf

from swin_jax.data import coco_ids, detection_pipeline, input_pipeline, loader
from swin_jax.detection import visualize
from swin_jax.evaluation.coco import classification_of, postprocess
from swin_jax.models.build import model_from_config
from swin_jax.train import checkpointing

# Default drawing threshold by config.loss.classification: DETR's demo notebook keeps
# softmax scores > 0.7; DINO's inference notebook (sigmoid focal scores, which run lower
# as each class is scored on its own) keeps > 0.3.
DEFAULT_DRAW_THRESHOLD = {'softmax': 0.7, 'focal': 0.3}
DEFAULT_DRAW_MAX_DETECTIONS = 10  # per image: a tiny canvas holds about that many tags


def class_names(config) -> Optional[List[str]]:
  """Names by class index: COCO names for label_map 'coco91', else the dataset's ClassLabel
  names when the dataset is prepared, else None (numbers are drawn)."""
  label_map = config.input.get('label_map')
  if label_map:
    return coco_ids.class_names(label_map)
  try:
    builder = input_pipeline.get_builder(config.input)
    return list(builder.info.features['objects']['label'].names)
  except Exception:  # pylint: disable=broad-except
    return None


def draw_settings(config) -> Tuple[float, int]:
  """(score threshold, max detections per image) of the pictures: config.eval's
  draw_score_threshold (None: 0.7 softmax / 0.3 focal) and draw_max_detections."""
  ev = config.get('eval') or {}
  get = lambda k, d: ev.get(k, d) if ev else d
  thr = get('draw_score_threshold', None)
  if thr is None:
    thr = DEFAULT_DRAW_THRESHOLD[classification_of(config)]
  cap = get('draw_max_detections', DEFAULT_DRAW_MAX_DETECTIONS)
  if not 0.0 <= float(thr) <= 1.0:
    raise ValueError(f'config.eval.draw_score_threshold={thr} must be in [0, 1] (or None: '
                     f'0.7 for softmax scores, 0.3 for focal ones).')
  if cap is None or int(cap) < 1:
    raise ValueError(f'config.eval.draw_max_detections={cap} must be >= 1 (detections '
                     f'drawn per image; default {DEFAULT_DRAW_MAX_DETECTIONS}).')
  return float(thr), int(cap)


def ground_truth(example: Dict[str, Any], image_hw, label_map=None):
  """A tfds record's boxes as the eval pipeline reads them (crowd boxes dropped, clamped,
  ``label_map`` applied): float32 [M, 4] (x0, y0, x1, y1) pixels, int32 [M] labels."""
  obj = example.get('objects') or {}
  if 'bbox' not in obj:
    return np.zeros((0, 4), np.float32), np.zeros((0,), np.int32)
  objects = {'bbox': tf.constant(np.asarray(obj['bbox'], np.float32).reshape(-1, 4)),
             'label': tf.constant(np.asarray(obj['label'], np.int64).reshape(-1))}
  if 'is_crowd' in obj:
    objects['is_crowd'] = tf.constant(np.asarray(obj['is_crowd'], bool).reshape(-1))
  boxes, labels, _ = detection_pipeline.coco_targets(
      tf.constant(np.asarray(image_hw[:2], np.int32)), objects, label_map)
  return boxes.numpy(), labels.numpy()


class Predictor:
  """Model + variables + eval preprocessing of a detection config; __call__(images)."""

  def __init__(self, config, variables):
    if config.get('task', 'classification') != 'detection':
      raise ValueError(f'swin_jax.predict draws detections; this workdir trained '
                       f'config.task={config.get("task", "classification")!r}.')
    self.cfg = detection_pipeline.parse_config(config.input)
    self.model = model_from_config(config)
    self.variables = variables  # may be replaced (the trainer's pictures of each eval)
    self.classification = classification_of(config)

    def run(variables, image, mask, orig_size):
      out = self.model.apply(variables, image, mask=mask, train=False)
      return postprocess(out['pred_logits'], out['pred_boxes'], orig_size,
                         self.classification)
    self._run = jax.jit(run)

  def preprocess(self, image: np.ndarray):
    """uint8 [H, W, 3] -> (image [1, Hp, Wp, 3], mask [1, Hp, Wp]) as the eval pipeline."""
    dp = detection_pipeline
    img = tf.convert_to_tensor(image, tf.uint8)
    img, boxes = dp.resize(img, tf.zeros([0, 4], tf.float32), self.cfg.eval_scale,
                           self.cfg.max_size)
    packed = dp.pad_and_pack(img, boxes, tf.zeros([0], tf.int32), self.cfg)
    return packed['image'].numpy()[None], packed['image_mask'].numpy()[None]

  def __call__(self, image: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uint8 [H, W, 3] -> scores [K], labels [K], boxes [K, 4] (x0, y0, x1, y1 pixels);
    K = Q queries (softmax) or min(100, Q * classes) (focal), see coco.postprocess."""
    image = np.asarray(image)
    if image.ndim == 2:
      image = np.repeat(image[..., None], 3, -1)
    if image.ndim != 3 or image.shape[-1] != 3:
      raise ValueError(f'expected an RGB image [H, W, 3], got shape {image.shape}')
    x, mask = self.preprocess(image)
    scores, labels, boxes = self._run(self.variables, x, mask,
                                      np.array([image.shape[:2]], np.int32))
    return np.asarray(scores[0]), np.asarray(labels[0]), np.asarray(boxes[0])


def draw(image, scores, labels, boxes, threshold: float, names, out: str,
         max_detections: Optional[int] = None):
  """Draws the detections ``visualize.select_detections`` keeps (score >= threshold, best
  first, at most max_detections; None: all) into the PNG ``out`` (a local or gs:// path;
  its directory is created). Returns the kept indices, best first."""
  keep = visualize.select_detections(scores, threshold, max_detections)
  png = io.BytesIO()
  visualize.save_detections(png, image, boxes[keep], labels[keep], scores[keep],
                            class_names=names, margin=None)  # room for tags at the edges
  _write(out, png.getvalue())
  return keep


def _write(path: str, data: bytes) -> str:
  path = checkpointing.resolve_path(path)
  checkpointing.makedirs(os.path.dirname(path))
  checkpointing.as_path(path).write_bytes(data)
  return path


class EvalPictures:
  """The pictures of each evaluation: the first ``num`` images of the eval split with
  their ground truth and the model's detections, one grid per call.

  The images, ground truth and the jitted Predictor are built once (first call) and kept:
  later evaluations only run the model on the ``num`` images.
  """

  def __init__(self, config, num: int, split: Optional[str] = None):
    self.config = config
    self.num = int(num)
    self.split = split or config.input.eval_split
    self.threshold, self.max_detections = draw_settings(config)
    self.classification = classification_of(config)
    self._predictor: Optional[Predictor] = None
    self._examples: Optional[List[Tuple[int, np.ndarray, np.ndarray, np.ndarray]]] = None
    self._names: Optional[List[str]] = None

  def _load(self):
    builder = input_pipeline.get_builder(self.config.input)
    source = loader.open_source(builder, self.split)  # images encoded
    label_map = self.config.input.get('label_map')
    self._examples = []
    for i in range(min(self.num, len(source))):
      ex = source[i]
      image = input_pipeline.decode_image(ex['image']).numpy()
      if image.ndim == 2 or image.shape[-1] == 1:
        image = np.repeat(image.reshape(image.shape[:2] + (1,)), 3, -1)
      gt_boxes, gt_labels = ground_truth(ex, image.shape, label_map)
      self._examples.append((int(ex.get('image/id', i)), image, gt_boxes, gt_labels))
    self._names = class_names(self.config)

  def title(self, step: int) -> List[str]:
    """The grid's header phrases: what is drawn and by which rule."""
    return [f'step {step}', f'{self.split}: first {len(self._examples or [])} images',
            'dashed white/black + "gt name": ground truth',
            f'solid + "name score": {self.classification} score >= {self.threshold:g}, '
            f'best {self.max_detections}']

  def __call__(self, variables, step: int, outdir: Optional[str] = None
               ) -> Tuple[Optional[str], np.ndarray]:
    """Draws the grid with ``variables``; writes <outdir>/step_<step>.png unless outdir is
    None. Returns (path or None, uint8 [H, W, 3] grid)."""
    if self._examples is None:
      self._load()
    if not self._examples:
      raise ValueError(f'config.input.eval_split={self.split!r} holds no image to draw '
                       f'(config.num_prediction_images={self.num}).')
    # On one local device once, not copied from the host for each of the num images.
    variables = jax.device_put(variables, jax.local_devices()[0])
    if self._predictor is None:
      self._predictor = Predictor(self.config, variables)
    self._predictor.variables = variables
    panels, captions = [], []
    for image_id, image, gt_boxes, gt_labels in self._examples:
      scores, labels, boxes = self._predictor(image)
      keep = visualize.select_detections(scores, self.threshold, self.max_detections)
      panels.append(visualize.draw_detections(
          image, boxes[keep], labels[keep], scores[keep], self._names,
          gt_boxes=gt_boxes, gt_labels=gt_labels, margin=None))
      captions.append(f'image {image_id}: {len(gt_boxes)} gt, {len(keep)} drawn')
    grid = visualize.make_grid(panels, captions, title=self.title(step))
    path = None
    if outdir is not None:
      png = io.BytesIO()
      Image.fromarray(grid).save(png, format='PNG')
      path = _write(os.path.join(outdir, f'step_{int(step)}.png'), png.getvalue())
    return path, grid
