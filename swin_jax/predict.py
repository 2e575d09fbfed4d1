"""Draw a trained detector's boxes, labels and scores on an image.

  python -m swin_jax.predict --workdir runs/detr_demo --image IN.png --out OUT.png \
      [--threshold T] [--max_detections K] [--step N]

The workdir's config.json rebuilds the model and the evaluation preprocessing (DETR's resize
of the shorter side to config.input.eval_scale, longer side at most max_size, normalisation,
padding to pad_size); its latest checkpoint (EMA params when the run kept them) gives the
weights. Scores are those of the run's evaluation: softmax (DETR's PostProcess) or, for a
run trained with config.loss.classification='focal', Deformable DETR's (top 100 sigmoid
scores of all query x class pairs). Boxes come back in pixels of the input image and the
detections with score >= T, best first, at most K (defaults: the run's
config.eval.draw_score_threshold / draw_max_detections, see predictor.draw_settings) are
drawn on it (upscaled for legibility when small, tags placed so they do not overlap) and
printed, one per line.
"""
from __future__ import annotations

import io
import json
import os
import sys
from typing import Optional, Sequence

from absl import app, flags
import ml_collections
import numpy as np
from PIL import Image

from swin_jax import cli
from swin_jax.evaluation.predictor import Predictor, class_names, draw, draw_settings
from swin_jax.train.checkpointing import as_path, load_variables

FLAGS = flags.FLAGS


def _define_flags():
  # Defined when run as a program, not at import: a process that imports this module
  # beside swin_jax.main (whose --workdir exists) stays valid.
  flags.DEFINE_string('workdir', None, 'Training workdir (config.json + checkpoints/).')
  flags.DEFINE_string('image', None, 'Input image (PNG / JPEG).')
  flags.DEFINE_string('out', None, 'Output PNG.')
  flags.DEFINE_float('threshold', None, 'Draw detections with score >= threshold (default: '
                     "the run's config.eval.draw_score_threshold: 0.7 softmax, 0.3 focal).")
  flags.DEFINE_integer('max_detections', None, 'Draw at most this many, best first '
                       "(default: the run's config.eval.draw_max_detections, 10).")
  flags.DEFINE_integer('step', None, 'Checkpoint step (default: the latest).')


def load_config(workdir: str):
  """The run's config from <workdir>/config.json (a local or gs:// workdir)."""
  path = as_path(os.path.join(workdir, 'config.json'))
  if not path.exists():
    raise FileNotFoundError(f'--workdir={workdir} has no config.json: give the workdir of a '
                            f'training run (python -m swin_jax.main ... --workdir=DIR).')
  return ml_collections.ConfigDict(json.loads(path.read_text()))


def read_image(path: str) -> np.ndarray:
  """uint8 [H, W, 3] of a PNG / JPEG file (a local or gs:// path)."""
  if not as_path(path).exists():
    raise FileNotFoundError(f'--image={path} does not exist.')
  try:
    with Image.open(io.BytesIO(as_path(path).read_bytes())) as im:
      return np.asarray(im.convert('RGB'))
  except OSError as e:
    raise ValueError(f'--image={path} is not a readable image ({e}).') from None


def predict_file(workdir: str, image_path: str, out: str, threshold: Optional[float] = None,
                 step: Optional[int] = None, max_detections: Optional[int] = None):
  config = load_config(workdir)
  default_threshold, default_max = draw_settings(config)
  threshold = default_threshold if threshold is None else float(threshold)
  max_detections = default_max if max_detections is None else int(max_detections)
  variables, step = load_variables(workdir, step)
  predictor = Predictor(config, variables)
  image = read_image(image_path)
  scores, labels, boxes = predictor(image)
  names = class_names(config)
  keep = draw(image, scores, labels, boxes, threshold, names, out, max_detections)
  lines = []
  for s, l, b in zip(scores[keep], labels[keep], boxes[keep]):
    name = names[l] if names and l < len(names) else str(int(l))
    lines.append(f'{name}\t{s:.3f}\t' + ' '.join(f'{v:.1f}' for v in b))
  print(f'{len(keep)} detections with score >= {threshold} (checkpoint step {step}), best '
        f'first, at most {max_detections}; wrote {out}')
  print('\n'.join(lines))
  return scores, labels, boxes


def main(argv: Sequence[str]):
  del argv
  for name in ('workdir', 'image', 'out'):
    if not getattr(FLAGS, name):
      print(f'error: --{name} is required', file=sys.stderr)
      sys.exit(2)
  try:
    predict_file(FLAGS.workdir, FLAGS.image, FLAGS.out, FLAGS.threshold, FLAGS.step,
                 FLAGS.max_detections)
  except (FileNotFoundError, ValueError) as e:
    if os.environ.get('SWIN_JAX_DEBUG'):
      raise
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)


def run():
  cli.quiet_startup()
  _define_flags()
  app.run(main)


if __name__ == '__main__':
  run()
