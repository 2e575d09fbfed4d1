"""Draw a trained detector's boxes, labels and scores on an image.

  python -m swin_jax.predict --workdir runs/detr_demo --image IN.png --out OUT.png \
      [--threshold 0.5] [--step N]

The workdir's config.json rebuilds the model and the evaluation preprocessing (DETR's resize
of the shorter side to config.input.eval_scale, longer side at most max_size, normalisation,
padding to pad_size); its latest checkpoint (EMA params when the run kept them) gives the
weights. Boxes come back in pixels of the input image (DETR's PostProcess) and are drawn on
it (upscaled for legibility when small); the detections are also printed, one per line.
"""
from __future__ import annotations

import io
import json
import os
import sys
from typing import List, Optional, Sequence, Tuple

from absl import app, flags
import numpy as np

FLAGS = flags.FLAGS


def _define_flags():
  # Only when run as a program: the trainer imports this module (end-of-run pictures) in a
  # process whose absl flags (main.py's --workdir) are already defined.
  flags.DEFINE_string('workdir', None, 'Training workdir (config.json + checkpoints/).')
  flags.DEFINE_string('image', None, 'Input image (PNG / JPEG).')
  flags.DEFINE_string('out', None, 'Output PNG.')
  flags.DEFINE_float('threshold', 0.5, 'Draw detections with score >= threshold.')
  flags.DEFINE_integer('step', None, 'Checkpoint step (default: the latest).')


def load_config(workdir: str):
  """The run's config from <workdir>/config.json (a local or gs:// workdir)."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from swin_jax.train.checkpointing import as_path  # pylint: disable=g-import-not-at-top
  path = as_path(os.path.join(workdir, 'config.json'))
  if not path.exists():
    raise FileNotFoundError(f'--workdir={workdir} has no config.json: give the workdir of a '
                            f'training run (python -m swin_jax.main ... --workdir=DIR).')
  return ml_collections.ConfigDict(json.loads(path.read_text()))


def class_names(config) -> Optional[List[str]]:
  """Names by class index: COCO names for label_map 'coco91', else the dataset's ClassLabel
  names when the dataset is prepared, else None (numbers are drawn)."""
  from swin_jax.data import coco_ids  # pylint: disable=g-import-not-at-top
  label_map = config.input.get('label_map')
  if label_map:
    return coco_ids.class_names(label_map)
  try:
    from swin_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
    builder = input_pipeline.get_builder(config.input)
    return list(builder.info.features['objects']['label'].names)
  except Exception:  # pylint: disable=broad-except
    return None


class Predictor:
  """Model + variables + eval preprocessing of a detection config; __call__(images)."""

  def __init__(self, config, variables):
    import jax  # pylint: disable=g-import-not-at-top
    from swin_jax.data import detection_pipeline  # pylint: disable=g-import-not-at-top
    from swin_jax.evaluation.coco import postprocess  # pylint: disable=g-import-not-at-top
    from swin_jax.train.loop import model_from_config  # pylint: disable=g-import-not-at-top
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
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    from swin_jax.data import detection_pipeline as dp  # pylint: disable=g-import-not-at-top
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
  from swin_jax.detection.visualize import save_detections  # pylint: disable=g-import-not-at-top
  from swin_jax.train import checkpointing  # pylint: disable=g-import-not-at-top
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
  from swin_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
  from swin_jax.data import loader  # pylint: disable=g-import-not-at-top
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


def read_image(path: str) -> np.ndarray:
  """uint8 [H, W, 3] of a PNG / JPEG file (a local or gs:// path)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from swin_jax.train.checkpointing import as_path  # pylint: disable=g-import-not-at-top
  if not as_path(path).exists():
    raise FileNotFoundError(f'--image={path} does not exist.')
  try:
    with Image.open(io.BytesIO(as_path(path).read_bytes())) as im:
      return np.asarray(im.convert('RGB'))
  except OSError as e:
    raise ValueError(f'--image={path} is not a readable image ({e}).') from None


def predict_file(workdir: str, image_path: str, out: str, threshold: float = 0.5,
                 step: Optional[int] = None):
  from swin_jax.train.checkpointing import load_variables  # pylint: disable=g-import-not-at-top
  config = load_config(workdir)
  variables, step = load_variables(workdir, step)
  predictor = Predictor(config, variables)
  image = read_image(image_path)
  scores, labels, boxes = predictor(image)
  names = class_names(config)
  keep = draw(image, scores, labels, boxes, threshold, names, out)
  lines = []
  for s, l, b in zip(scores[keep], labels[keep], boxes[keep]):
    name = names[l] if names and l < len(names) else str(int(l))
    lines.append(f'{name}\t{s:.3f}\t' + ' '.join(f'{v:.1f}' for v in b))
  print(f'{int(keep.sum())} detections with score >= {threshold} (checkpoint step {step}); '
        f'wrote {out}')
  print('\n'.join(lines))
  return scores, labels, boxes


def main(argv: Sequence[str]):
  del argv
  for name in ('workdir', 'image', 'out'):
    if not getattr(FLAGS, name):
      print(f'error: --{name} is required', file=sys.stderr)
      sys.exit(2)
  try:
    predict_file(FLAGS.workdir, FLAGS.image, FLAGS.out, FLAGS.threshold, FLAGS.step)
  except (FileNotFoundError, ValueError) as e:
    if os.environ.get('SWIN_JAX_DEBUG'):
      raise
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)


def run():
  _define_flags()
  app.run(main)


if __name__ == '__main__':
  run()
