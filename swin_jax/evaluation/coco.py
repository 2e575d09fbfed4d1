"""COCO box evaluation: DETR's PostProcess, a batch-wise evaluator, ground truth builders.

The numbers are pycocotools' own: ``COCOeval(gt, dt, 'bbox')`` over the ground truth
built in memory, so crowd regions, area ranges and ``maxDets`` behave exactly as in the
official evaluation. This file only adds the bookkeeping around it:

* ``postprocess`` (jittable, runs in the eval step) turns DETR outputs into scores,
  labels and absolute ``(x0, y0, x1, y1)`` boxes of the original image, as
  facebookresearch/detr ``models/detr.py:PostProcess`` does (softmax), or as Deformable
  DETR's ``PostProcess`` does for a focal-loss run (top 100 sigmoid (query, class) pairs);
  ``classification_of(config)`` says which, from config.loss.classification.
* ``CocoEvaluator`` collects those per image across batches (padding rows dropped) and
  ``summarize()`` returns the 12 COCOeval stats by name.
* ``groundtruth_from_json`` reads an official annotation file;
  ``groundtruth_from_tfds`` rebuilds one from tfds ``coco/2017`` records.

Official numbers should use ``instances_val2017.json``: tfds stores ``area`` rounded to
an integer and boxes as float32 fractions of the image size, so the rebuilt ground truth
differs from the json in the last digits, which moves the small/medium/large split of a
few boxes and the IoUs slightly (AP typically within ~0.1).
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
from typing import Any, Dict, Iterable, List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from swin_jax.data import loader
from swin_jax.data.coco_ids import COCO_CATEGORIES, COCO91_IDS, check_label_map
from swin_jax.detection.boxes import box_cxcywh_to_xyxy

STAT_NAMES = ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl',
              'AR1', 'AR10', 'AR100', 'ARs', 'ARm', 'ARl')  # COCOeval.stats order

_log = logging.getLogger(__name__)


# Deformable DETR's PostProcess keeps the best 100 (query, class) pairs of an image, the
# number COCOeval's maxDets=100 looks at.
FOCAL_NUM_SELECT = 100
CLASSIFICATIONS = ('softmax', 'focal')


def classification_of(config) -> str:
  """How the run's logits become scores: config.loss.classification, 'softmax' (DETR's
  cross-entropy with a no-object class) or 'focal' (Deformable DETR's sigmoid focal loss;
  the no-object column is never trained). The one place eval, pictures and predict ask."""
  loss = config.get('loss') if hasattr(config, 'get') else None
  kind = loss.get('classification', 'softmax') if loss else 'softmax'
  if kind not in CLASSIFICATIONS:
    raise ValueError(f"config.loss.classification={kind!r}: use 'softmax' (DETR) or "
                     f"'focal' (Deformable DETR's sigmoid focal loss).")
  return kind


def postprocess(pred_logits, pred_boxes, orig_sizes, classification='softmax',
                num_select: int = FOCAL_NUM_SELECT):
  """DETR outputs -> scored detections with absolute boxes (DETR's / Deformable DETR's
  PostProcess).

  Args:
    pred_logits: [B, Q, C+1] class logits; the last column is "no object".
    pred_boxes: [B, Q, 4] (cx, cy, w, h) as fractions of the *unpadded* image.
    orig_sizes: [B, 2] int (height, width) in pixels of the original image.
    classification: 'softmax' (DETR): one detection per query, its score the max class
      probability of a softmax over C+1 ("no object" excluded from the max). 'focal'
      (Deformable DETR): p = sigmoid of the first C logits, and the detections are the
      K = min(num_select, Q*C) best (query, class) pairs of all Q*C, so one query may
      give several labels.
    num_select: K's cap under 'focal' (Deformable DETR: 100).

  Returns:
    scores [B, K] float32 (K = Q under 'softmax'; sorted descending under 'focal'),
    labels [B, K] int32 class index in [0, C),
    boxes [B, K, 4] float32 (x0, y0, x1, y1) in pixels of the original image.
  """
  # float32: the model may run in bfloat16, whose 8-bit mantissa would make near-tied
  # scores collide and reorder COCOeval's ranking.
  logits = jnp.asarray(pred_logits, jnp.float32)
  boxes = box_cxcywh_to_xyxy(jnp.asarray(pred_boxes, jnp.float32))
  if classification == 'softmax':
    prob = jax.nn.softmax(logits, axis=-1)[..., :-1]
    scores = prob.max(axis=-1)
    labels = prob.argmax(axis=-1).astype(jnp.int32)
  elif classification == 'focal':
    b, q, c1 = logits.shape
    c = c1 - 1
    prob = jax.nn.sigmoid(logits[..., :c]).reshape(b, q * c)  # [B, Q*C], query-major
    scores, idx = jax.lax.top_k(prob, min(int(num_select), q * c))  # [B, K]
    labels = (idx % c).astype(jnp.int32)
    boxes = jnp.take_along_axis(boxes, (idx // c)[..., None], axis=1)  # [B, K, 4]
  else:
    raise ValueError(f"postprocess: classification={classification!r}, use 'softmax' or "
                     f"'focal' (config.loss.classification).")
  h, w = jnp.moveaxis(jnp.asarray(orig_sizes, jnp.float32), -1, 0)  # [B] each
  scale = jnp.stack([w, h, w, h], axis=-1)  # [B, 4]
  return scores, labels, boxes * scale[:, None, :]


def _check_groundtruth(gt: Dict[str, Any]) -> None:
  """Raises ValueError for ground truth that pycocotools would evaluate wrongly."""
  for key in ('images', 'annotations', 'categories'):
    if key not in gt:
      raise ValueError(f'COCO ground truth needs an {key!r} list (keys: {sorted(gt)}).')
  img_ids = [im['id'] for im in gt['images']]
  if len(set(img_ids)) != len(img_ids):
    raise ValueError('COCO ground truth has duplicate image ids.')
  img_ids = set(img_ids)
  ann_ids = [a['id'] for a in gt['annotations']]
  # COCOeval marks "unmatched" with gt id 0, so an annotation with id 0 silently never
  # counts as matched (and duplicate ids confuse the same bookkeeping).
  if ann_ids and min(ann_ids) < 1:
    raise ValueError('COCO annotation ids must be >= 1: pycocotools treats gt id 0 '
                     'as "unmatched".')
  if len(set(ann_ids)) != len(ann_ids):
    raise ValueError('COCO ground truth has duplicate annotation ids.')
  missing = {a['image_id'] for a in gt['annotations']} - img_ids
  if missing:
    raise ValueError(f'Annotations refer to unknown image ids {sorted(missing)[:5]}.')


def _coco(dataset: Dict[str, Any]):
  """An in-memory pycocotools COCO object (no file), its prints kept at debug level."""
  from pycocotools.coco import COCO
  coco = COCO()
  coco.dataset = dataset
  with _captured():
    coco.createIndex()
  return coco


@contextlib.contextmanager
def _captured():
  """Redirects pycocotools' prints to the debug log."""
  buf = io.StringIO()
  try:
    with contextlib.redirect_stdout(buf):
      yield
  finally:
    if buf.getvalue():
      _log.debug('pycocotools:\n%s', buf.getvalue().rstrip())


def _run_cocoeval(coco_gt, detections: List[Dict[str, Any]],
                  img_ids: Optional[Sequence[int]]) -> Dict[str, float]:
  """COCOeval('bbox') of COCO-result dicts on `img_ids` (None: all gt images)."""
  from pycocotools.cocoeval import COCOeval
  with _captured():
    if detections:
      coco_dt = coco_gt.loadRes(detections)
    else:
      # loadRes indexes anns[0] and fails on []; an empty result set is what it would
      # build, and COCOeval then scores every category with ground truth 0.0 and every
      # (category, area range) without any -1, exactly its semantics for "no detections".
      coco_dt = _coco({'images': list(coco_gt.dataset['images']),
                       'categories': list(coco_gt.dataset['categories']),
                       'annotations': []})
    ev = COCOeval(coco_gt, coco_dt, 'bbox')
    if img_ids is not None:
      ev.params.imgIds = sorted(int(i) for i in img_ids)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
  return {k: float(v) for k, v in zip(STAT_NAMES, ev.stats)}


def _copy_groundtruth(gt: Dict[str, Any]) -> Dict[str, Any]:
  # COCOeval writes 'ignore' / '_ignore' into the annotation dicts: evaluate copies so
  # the caller's dict is left as it was.
  out = dict(gt)
  for key in ('images', 'annotations', 'categories'):
    out[key] = [dict(x) for x in gt[key]]
  return out


def evaluate_detections(groundtruth: Dict[str, Any],
                        detections: Iterable[Dict[str, Any]],
                        img_ids: Optional[Sequence[int]] = None) -> Dict[str, float]:
  """COCO box stats of COCO-result dicts (what a results json holds).

  Args:
    groundtruth: COCO-format dict (images, annotations with ids >= 1, categories).
    detections: dicts with image_id, category_id, bbox [x, y, w, h] pixels, score.
    img_ids: images to evaluate (default: all ground-truth images).

  Returns:
    {name: value} for STAT_NAMES; -1.0 where no ground truth falls in the setting.
  """
  _check_groundtruth(groundtruth)
  coco_gt = _coco(_copy_groundtruth(groundtruth))
  # loadRes writes id/area/iscrowd into the dicts: hand it copies.
  return _run_cocoeval(coco_gt, [dict(d) for d in detections], img_ids)


class CocoEvaluator:
  """Accumulates per-image detections batch by batch; `summarize` runs COCOeval.

  Only the images passed to `add` are evaluated (as DETR's CocoEvaluator sets
  ``params.imgIds``), so a partial pass over the validation set scores the images seen
  rather than counting the unseen ones as misses. An image added with zero detections
  still counts (its ground truth is all missed). If nothing was added at all, the whole
  ground truth is evaluated against no detections.
  """

  def __init__(self, groundtruth: Dict[str, Any]):
    """groundtruth: COCO-format dict (see `_check_groundtruth`); it is copied."""
    _check_groundtruth(groundtruth)
    self._gt = _copy_groundtruth(groundtruth)
    self._gt_ids = {int(im['id']) for im in self._gt['images']}
    self._coco_gt = None  # built lazily: index + eval in one place
    self._dets: Dict[int, tuple] = {}

  def __len__(self) -> int:
    """Number of images added so far."""
    return len(self._dets)

  def reset(self) -> None:
    self._dets = {}

  def add(self, image_ids, scores, labels, boxes_xyxy, valid=None) -> None:
    """Adds one batch of postprocessed detections (numpy or jax arrays).

    Args:
      image_ids: [B] int COCO image ids.
      scores: [B, Q] float.
      labels: [B, Q] int category ids (the ground truth's category ids).
      boxes_xyxy: [B, Q, 4] (x0, y0, x1, y1) pixels of the original image.
      valid: [B] bool, False for batch-padding rows (skipped); None: all real.

    Raises:
      ValueError: an image id added twice or unknown to the ground truth, or shapes
        that do not line up.
    """
    image_ids = np.asarray(image_ids).reshape(-1)
    scores = np.asarray(scores)
    labels = np.asarray(labels)
    boxes = np.asarray(boxes_xyxy)
    b = image_ids.shape[0]
    if (scores.ndim != 2 or scores.shape[0] != b or labels.shape != scores.shape
        or boxes.shape != scores.shape + (4,)):
      raise ValueError(
          f'CocoEvaluator.add: expected image_ids [B], scores/labels [B, Q], boxes '
          f'[B, Q, 4]; got {image_ids.shape}, {scores.shape}, {labels.shape}, '
          f'{boxes.shape}.')
    valid = np.ones([b], bool) if valid is None else np.asarray(valid, bool).reshape(-1)
    if valid.shape != (b,):
      raise ValueError(f'CocoEvaluator.add: valid has shape {valid.shape}, want ({b},).')
    for i in np.flatnonzero(valid):
      img_id = int(image_ids[i])
      if img_id not in self._gt_ids:
        raise ValueError(f'CocoEvaluator.add: image id {img_id} is not in the ground '
                         f'truth (wrong split, or a padding row not marked invalid?).')
      if img_id in self._dets:
        raise ValueError(f'CocoEvaluator.add: image id {img_id} was added twice (the '
                         f'eval iterator repeated it; COCOeval would count it twice).')
      self._dets[img_id] = (scores[i].copy(), labels[i].copy(), boxes[i].copy())

  def detections(self) -> List[Dict[str, Any]]:
    """COCO-result dicts (bbox [x, y, w, h]) in image-id then query order.

    The canonical order makes the stats independent of batching: COCOeval breaks
    score ties by result order.
    """
    out = []
    for img_id in sorted(self._dets):
      scores, labels, boxes = self._dets[img_id]
      b = boxes.astype(np.float64)
      xywh = np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=-1)  # [Q, 4]
      for s, c, bb in zip(scores.tolist(), labels.tolist(), xywh.tolist()):
        out.append({'image_id': img_id, 'category_id': int(c), 'bbox': bb,
                    'score': float(s)})
    return out

  def summarize(self) -> Dict[str, float]:
    """The 12 COCOeval box stats, {name: float} in STAT_NAMES order.

    Values are in [0, 1]; -1.0 where no ground truth falls in that setting (e.g. APs
    without small objects), as pycocotools reports.
    """
    if self._coco_gt is None:
      self._coco_gt = _coco(self._gt)
    img_ids = sorted(self._dets) if self._dets else None
    stats = _run_cocoeval(self._coco_gt, self.detections(), img_ids)
    _log.info('COCO box eval on %d images: %s', len(img_ids or self._gt_ids),
              ' '.join(f'{k}={v:.4f}' for k, v in stats.items()))
    return stats


def groundtruth_from_json(path: str) -> Dict[str, Any]:
  """Reads an official COCO annotation file (e.g. instances_val2017.json), checked.

  This is the ground truth to report official numbers against (see module docstring).
  """
  with open(path) as f:
    gt = json.load(f)
  _check_groundtruth(gt)
  return gt


def _image_hw(image) -> tuple:
  """(height, width) of encoded image bytes (header only) or of a decoded [H, W, C] array."""
  if isinstance(image, np.ndarray) and image.dtype != object:
    return int(image.shape[0]), int(image.shape[1])
  data = image.item() if isinstance(image, np.ndarray) else image
  # Image.open parses the header only (pixels are decoded lazily, never here), so the
  # 5k COCO val images cost a file read each, not a JPEG decode.
  with Image.open(io.BytesIO(data)) as im:
    w, h = im.size
  return int(h), int(w)


def groundtruth_from_tfds(builder_or_dataset, split: Optional[str] = None,
                          label_map: Optional[str] = None,
                          class_names: Optional[Sequence[str]] = None) -> Dict[str, Any]:
  """COCO-format ground truth rebuilt from tfds ``coco/2017``-style records.

  Args:
    builder_or_dataset: a tfds builder (read with images left encoded) or a
      tf.data.Dataset of examples with ``image`` (encoded bytes, or a decoded uint8
      [H, W, 3]), ``image/id``, ``objects`` {``bbox`` [N, 4] (ymin, xmin, ymax, xmax)
      fractions of the image, ``label``, ``is_crowd``, optional ``area``, ``id``}.
    split: the split to read from a builder (ignored for a dataset).
    label_map: None (category id = tfds label) or 'coco91' (official sparse ids).
    class_names: category names by tfds label (default: the builder's label names).

  Returns:
    COCO dict: images {id, height, width}; annotations {id, image_id, category_id,
    bbox [x, y, w, h] pixels, area pixels^2 (the record's original area when > 0,
    else w * h), iscrowd}; categories {id, name}. Crowd regions are kept: COCOeval
    needs them to ignore detections on crowds. Annotation ids are the records' own
    when all present, >= 1 and unique, else 1..N in record order.
  """
  check_label_map(label_map)
  if hasattr(builder_or_dataset, 'as_data_source'):
    if split is None:
      raise ValueError('groundtruth_from_tfds: pass split= with a tfds builder.')
    builder = builder_or_dataset
    source = loader.open_source(builder, split)  # ArrayRecord, images left encoded
    examples = (source[i] for i in range(len(source)))
    if class_names is None:
      try:
        class_names = builder.info.features['objects']['label'].names
      except (KeyError, AttributeError, TypeError):
        class_names = None
  else:
    examples = tfds.as_numpy(builder_or_dataset)

  images, anns, seen_labels = [], [], set()
  for ex in examples:
    img_id = int(ex['image/id'])
    h, w = _image_hw(ex['image'])
    images.append({'id': img_id, 'height': h, 'width': w})
    obj = ex['objects']
    bbox = np.asarray(obj['bbox'], np.float64).reshape(-1, 4)  # [N, 4] ymin xmin ymax xmax
    labels = np.asarray(obj['label']).reshape(-1)
    crowd = np.asarray(obj.get('is_crowd', np.zeros(len(labels), bool))).reshape(-1)
    area = np.asarray(obj.get('area', np.zeros(len(labels)))).reshape(-1)
    ids = obj.get('id')
    for j in range(len(labels)):
      x, y = bbox[j, 1] * w, bbox[j, 0] * h
      bw, bh = (bbox[j, 3] - bbox[j, 1]) * w, (bbox[j, 2] - bbox[j, 0]) * h
      lab = int(labels[j])
      seen_labels.add(lab)
      anns.append({
          'id': int(ids[j]) if ids is not None else 0,
          'image_id': img_id,
          'category_id': int(COCO91_IDS[lab]) if label_map == 'coco91' else lab,
          'bbox': [float(x), float(y), float(bw), float(bh)],
          'area': float(area[j]) if area[j] > 0 else float(bw * bh),
          'iscrowd': int(bool(crowd[j])),
      })
  ann_ids = [a['id'] for a in anns]
  if not ann_ids or min(ann_ids) < 1 or len(set(ann_ids)) != len(ann_ids):
    for k, a in enumerate(anns):
      a['id'] = k + 1  # COCOeval needs ids >= 1 (0 means "unmatched")

  if label_map == 'coco91':
    categories = [{'id': i, 'name': n} for i, n in COCO_CATEGORIES]
  else:
    n = len(class_names) if class_names is not None else max(seen_labels, default=-1) + 1
    categories = [{'id': i, 'name': class_names[i] if class_names is not None else str(i)}
                  for i in range(n)]
  gt = {'images': images, 'annotations': anns, 'categories': categories}
  _check_groundtruth(gt)
  return gt
