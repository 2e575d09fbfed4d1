"""A trained detector's predictions drawn on images (library; the CLI is swin_jax.predict).

  Predictor(config, variables)(image) -> scores, labels, boxes of one image, through the
      run's evaluation preprocessing (DETR's resize, normalisation, padding) and PostProcess;
  draw(...) -> a PNG of the detections above a threshold;
  draw_split_examples(...) -> PNGs of the first images of an eval split (the detection
      task's end-of-run pictures, config.num_prediction_images).
"""
from __future__ import annotations

import io
import os
from typing import List, Optional, Tuple

import jax
import numpy as np
import tensorflow as tf

from swin_jax.data import coco_ids, detection_pipeline, input_pipeline, loader
from swin_jax.detection.visualize import save_detections
from swin_jax.evaluation.coco import postprocess
from swin_jax.models.build import model_from_config
from swin_jax.train import checkpointing


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


class Predictor:
  """Model + variables + eval preprocessing of a detection config; __call__(images)."""

  def __init__(self, config, variables):
    if config.get('task', 'classification') != 'detection':
      raise ValueError(f'swin_jax.predict draws detections; this workdir trained '
                       f'config.task={config.get("task", "classification")!r}.')
    self.cfg = detection_pipeline.parse_config(config.input)
    self.model = model_from_config(config)
    self.variables = variables

    def run(variables, image, mask, orig_size):
      out = self.model.apply(variables, image, mask=mask, train=False)
      return postprocess(out['pred_logits'], out['pred_boxes'], orig_size)
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
    """uint8 [H, W, 3] -> scores [Q], labels [Q], boxes [Q, 4] (x0, y0, x1, y1 pixels)."""
    image = np.asarray(image)
    if image.ndim == 2:
      image = np.repeat(image[..., None], 3, -1)
    if image.ndim != 3 or image.shape[-1] != 3:
      raise ValueError(f'expected an RGB image [H, W, 3], got shape {image.shape}')
    x, mask = self.preprocess(image)
    scores, labels, boxes = self._run(self.variables, x, mask,
                                      np.array([image.shape[:2]], np.int32))
    return np.asarray(scores[0]), np.asarray(labels[0]), np.asarray(boxes[0])


def draw(image, scores, labels, boxes, threshold: float, names, out: str):
  """Draws the detections with score >= threshold into the PNG ``out`` (a local or gs://
  path; its directory is created). Returns the bool mask of the drawn detections."""
  keep = scores >= threshold
  out = checkpointing.resolve_path(out)
  checkpointing.makedirs(os.path.dirname(out))
  png = io.BytesIO()
  save_detections(png, image, boxes[keep], labels[keep], scores[keep], class_names=names)
  checkpointing.as_path(out).write_bytes(png.getvalue())
  return keep


def draw_split_examples(config, variables, outdir: str, num: int, threshold: float = 0.5,
                        split: Optional[str] = None) -> List[str]:
  """Draws the predictions on the first ``num`` images of the eval split; returns the paths
  (``<outdir>/<split>_<image id>.png``)."""
  split = split or config.input.eval_split
  builder = input_pipeline.get_builder(config.input)
  source = loader.open_source(builder, split)  # images encoded
  predictor = Predictor(config, variables)
  names = class_names(config)
  paths = []
  for i in range(min(int(num), len(source))):
    ex = source[i]
    image = input_pipeline.decode_image(ex['image']).numpy()
    scores, labels, boxes = predictor(image)
    path = os.path.join(outdir, f'{split}_{int(ex.get("image/id", len(paths)))}.png')
    draw(image, scores, labels, boxes, threshold, names, path)
    paths.append(path)
  return paths
