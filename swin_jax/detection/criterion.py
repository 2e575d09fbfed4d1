"""DETR's set criterion (Hungarian matching + set losses) in pure JAX.

Follows facebookresearch/detr ``models/matcher.py`` (``HungarianMatcher``) and
``models/detr.py`` (``SetCriterion`` with losses ``labels``, ``boxes``,
``cardinality``) formula for formula, for targets padded to a fixed maximum so
that everything has static shapes and runs under ``jax.jit``.

Inputs:

* ``outputs``: dict with ``pred_logits [B, Q, C + 1]`` (the no-object class is
  the last one), ``pred_boxes [B, Q, 4]`` (cx, cy, w, h in [0, 1]) and
  optionally ``aux_outputs``, a list of dicts of the same two entries (one per
  intermediate decoder layer).
* ``targets``: dict with ``labels [B, T]`` int, ``boxes [B, T, 4]`` (cx, cy, w,
  h, normalised) and ``valid [B, T]`` bool (True for real boxes; all True if
  absent). Padding entries may hold anything: they are never matched to a
  prediction in place of a real target and never enter a loss.

Matching cost (``matching_cost``), per image, prediction i and target j:
``cost_class * (-softmax(logits_i)[label_j]) + cost_bbox * |box_i - box_j|_1 +
cost_giou * (-GIoU(xyxy(box_i), xyxy(box_j)))``. The matcher is chosen by name
(``swin_jax.detection.matchers``): 'hungarian' uses the exact pure-JAX
``hungarian_matcher_padded``; 'greedy' and 'scipy' get a prohibitive constant
cost on the padding targets instead.

Losses (per decoder layer, matched separately for each layer, as DETR):

* ``loss_ce``: cross-entropy of every query, matched queries against their
  target's class, the others against no-object, weighted by class (weight
  ``eos_coef`` for no-object, 1 otherwise): ``sum(w_i ce_i) / sum(w_i)``
  (``F.cross_entropy(..., weight=empty_weight)``).
* ``loss_bbox``: L1 of the matched (cx, cy, w, h) pairs, summed / num_boxes.
* ``loss_giou``: ``1 - GIoU`` of the matched pairs, summed / num_boxes.

``num_boxes`` is the number of real target boxes of the whole (global) batch,
clamped to at least 1. DETR averages the per-device count over devices and
normalises per-device sums by it, which, with the gradient averaging of data
parallelism, is the global sum over the global count: with ``jit`` on global
arrays the global count is what to use. An image without boxes trains only on
no-object (its box losses are 0).

Logged metrics (no gradients): ``class_error`` (100 - top-1 accuracy in % of
the matched queries of the last layer; 100 when there is no target, as DETR's
``accuracy``) and ``cardinality_error`` (mean over images of |number of queries
whose argmax is not no-object - number of targets|), for every layer.

Keys as DETR: ``loss_ce``, ``loss_bbox``, ``loss_giou``, ``class_error``,
``cardinality_error`` for the last layer, and ``loss_ce_i``, ``loss_bbox_i``,
``loss_giou_i``, ``cardinality_error_i`` for ``aux_outputs[i]``. The total loss
is ``sum(weights[k] * loss_k)`` over the three losses of every layer (DETR's
``weight_dict`` with ``bbox_loss_coef=5``, ``giou_loss_coef=2``).

Box losses use ``elementwise_generalized_box_iou`` (denominators clamped by a
tiny eps): identical to DETR for non-degenerate boxes, finite otherwise.

Options (off by default; DETR's numbers above are unchanged without them):

* ``focal=(alpha, gamma)`` (``config.loss.classification='focal'``): Deformable
  DETR's sigmoid focal classification. ``loss_ce`` = sum over every query and
  class of ``alpha_t (1 - p_t)^gamma BCE(logit, onehot)`` / num_boxes, the
  unmatched queries' targets all zero; matching cost class term
  ``alpha (1-p)^gamma (-log(p + 1e-8)) - (1-alpha) p^gamma (-log(1 - p + 1e-8))``
  at the target's class, p = sigmoid(logit). Deformable DETR's head has C
  outputs; the ``pred_logits [B, Q, C + 1]`` contract is kept and the last
  (no-object) column is ignored: it gets no loss and no gradient, and the
  scores are ``max_c sigmoid(logit_c)`` over the first C (``class_scores``).
  ``cardinality_error`` then counts queries with a max sigmoid score > 0.5.
  Deformable DETR's weights are class 2, L1 5, GIoU 2 for the loss and the cost.
* Denoising (DN-DETR): when ``outputs`` has ``dn_outputs`` (``DETR`` with
  ``dn_groups > 0`` in training), each real denoising query reconstructs its
  own ground truth, no matching: ``loss_ce_dn`` (the focal loss, or with the
  softmax cross-entropy the mean over the real dn queries, no eos weighting:
  every dn query is an object), ``loss_bbox_dn``, ``loss_giou_dn``, all sums over
  the real dn queries / their number (DN-DETR's ``num_tgt``), for the last layer
  and ``_dn_i`` for the aux layers, weighted as the matching part's losses.
  Padded dn queries (slots of missing targets) enter no loss.
* Group DETR: ``criterion(outputs, targets, num_groups=K)`` with K * Q queries per
  layer (``DETR`` with ``group_detr=K`` in training; group k = queries k*Q .. k*Q + Q - 1):
  each group is matched to the targets on its own (Hungarian, one-to-one within a group;
  every layer, aux included), and the losses run over all K * Q queries with num_boxes
  scaled by K, as Atten4Vis/ConditionalDETR's GroupDETR branch (``SetCriterion.forward``:
  ``num_boxes = sum(len(t["labels"])) * group_detr``, one loss over the concatenated
  matches of the groups, aux layers matched per group with the same num_boxes). So the
  box and focal losses are the mean over groups of each group's loss; so is DETR's
  weighted cross-entropy (every group has the same number of matched queries, hence the
  same weight sum). ``class_error`` pools the groups' matches; ``cardinality_error`` is the
  mean over (image, group) pairs (official: over all K * Q queries at once, against one
  image's targets). The dn losses are unchanged (added once).
* Hybrid matching (H-DETR): when ``outputs`` has ``one2many_outputs`` (``DETR`` with
  ``one2many_queries > 0`` in training), those queries get the whole set loss again
  (Hungarian matching, every layer) against the targets repeated ``one2many_k`` times,
  with num_boxes x k, and the total adds ``one2many_weight`` x it: HDETR/H-Deformable-DETR's
  ``train_hybrid`` (``boxes.repeat(k_one2many, 1)``, ``criterion(outputs_one2many,
  multi_targets)``, each loss x ``lambda_one2many`` under the same weights). So each
  object is matched to up to k of those queries. The metrics get ``_one2many`` keys.
"""
import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from swin_jax import parallel as shd
from swin_jax.detection.boxes import (box_cxcywh_to_xyxy,
                                      elementwise_generalized_box_iou,
                                      generalized_box_iou)
from swin_jax.detection.matchers import get_matcher, hungarian_matcher_padded

__all__ = ['SetCriterion', 'matching_cost', 'match', 'num_target_boxes', 'split_groups',
           'layer_losses', 'dn_losses', 'sigmoid_focal_loss', 'focal_class_cost',
           'class_scores', 'DEFAULT_WEIGHTS', 'DEFAULT_COST_WEIGHTS',
           'FOCAL_WEIGHTS', 'FOCAL_COST_WEIGHTS']

DEFAULT_WEIGHTS = dict(ce=1.0, bbox=5.0, giou=2.0)
DEFAULT_COST_WEIGHTS = dict(class_=1.0, bbox=5.0, giou=2.0)
# Deformable DETR main.py: cls_loss_coef 2, bbox 5, giou 2; set_cost_class 2, bbox 5, giou 2.
FOCAL_WEIGHTS = dict(ce=2.0, bbox=5.0, giou=2.0)
FOCAL_COST_WEIGHTS = dict(class_=2.0, bbox=5.0, giou=2.0)

# A harmless box put in place of padding targets (keeps GIoU well defined).
_DUMMY_BOX = (0.5, 0.5, 1.0, 1.0)


def _float(x):
  x = jnp.asarray(x)
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _targets(targets):
  """(labels [B, T] int32, boxes [B, T, 4] float, valid [B, T] bool), cleaned.

  Padding labels become 0 and padding boxes a dummy valid box, so no junk
  (out-of-range labels, degenerate boxes) reaches any computation.
  """
  labels = jnp.asarray(targets['labels'], jnp.int32)
  boxes = _float(targets['boxes'])
  valid = targets.get('valid')
  valid = (jnp.ones(labels.shape, bool) if valid is None
           else jnp.asarray(valid, bool))
  labels = jnp.where(valid, labels, 0)
  boxes = jnp.where(valid[..., None], boxes,
                    jnp.asarray(_DUMMY_BOX, boxes.dtype))
  return labels, boxes, valid


def num_target_boxes(targets):
  """Number of real target boxes in the batch, as float32, clamped to >= 1."""
  _, _, valid = _targets(targets)
  return jnp.maximum(jnp.sum(valid).astype(jnp.float32), 1.0)


def sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=2.0):
  """Elementwise focal loss (RetinaNet; Deformable DETR's ``sigmoid_focal_loss``
  before its reduction): ``alpha_t * (1 - p_t)^gamma * BCE(logits, targets)``.

  logits, targets: float arrays of one shape (targets in {0, 1}). Returns that
  shape. alpha < 0 disables the alpha weighting, as the reference.
  """
  logits, targets = _float(logits), _float(targets)
  p = jax.nn.sigmoid(logits)
  # BCE with logits, stable: max(x, 0) - x t + log(1 + exp(-|x|)).
  ce = jnp.maximum(logits, 0) - logits * targets + jnp.log1p(jnp.exp(-jnp.abs(logits)))
  p_t = p * targets + (1 - p) * (1 - targets)
  loss = ce * (1 - p_t) ** gamma
  if alpha >= 0:
    loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
  return loss


def focal_class_cost(pred_logits, tgt_labels, alpha=0.25, gamma=2.0):
  """Deformable DETR's focal class cost, batched: [B, Q, C + 1] logits (the last
  column ignored), [B, T] labels in [0, C) -> [B, Q, T] (lower is better)."""
  p = jax.nn.sigmoid(_float(pred_logits)[..., :-1])  # [B, Q, C]
  neg = (1 - alpha) * p ** gamma * -jnp.log(1 - p + 1e-8)
  pos = alpha * (1 - p) ** gamma * -jnp.log(p + 1e-8)
  idx = jnp.broadcast_to(tgt_labels[:, None, :], p.shape[:2] + tgt_labels.shape[1:])
  return jnp.take_along_axis(pos - neg, idx, axis=-1)


def class_scores(pred_logits, focal=False):
  """Per-query class probabilities [B, Q, C] of [B, Q, C + 1] logits: softmax
  with the no-object column dropped (DETR's PostProcess), or with ``focal`` the
  sigmoid of the first C logits (Deformable DETR's)."""
  logits = _float(pred_logits)
  if focal:
    return jax.nn.sigmoid(logits[..., :-1])
  return jax.nn.softmax(logits, axis=-1)[..., :-1]


def matching_cost(pred_logits, pred_boxes, tgt_labels, tgt_boxes,
                  cost_class=1.0, cost_bbox=5.0, cost_giou=2.0, focal=None):
  """DETR's matching cost matrix (``HungarianMatcher``), batched.

  Args:
    pred_logits: [B, Q, C + 1] class logits.
    pred_boxes: [B, Q, 4] (cx, cy, w, h) predicted boxes.
    tgt_labels: [B, T] int target classes in [0, C].
    tgt_boxes: [B, T, 4] (cx, cy, w, h) target boxes.
    cost_class, cost_bbox, cost_giou: weights of the three terms.
    focal: None (DETR: -softmax prob) or (alpha, gamma): Deformable DETR's focal
      class cost (``focal_class_cost``).

  Returns:
    [B, Q, T] cost (lower is better).
  """
  if focal is not None:
    c_class = focal_class_cost(pred_logits, tgt_labels, *focal)
  else:
    prob = jax.nn.softmax(_float(pred_logits), axis=-1)  # [B, Q, C+1]
    idx = jnp.broadcast_to(tgt_labels[:, None, :],
                           prob.shape[:2] + tgt_labels.shape[1:])
    c_class = -jnp.take_along_axis(prob, idx, axis=-1)  # [B, Q, T]
  pred_boxes = _float(pred_boxes)
  c_bbox = jnp.sum(jnp.abs(pred_boxes[:, :, None, :] - tgt_boxes[:, None, :, :]),
                   axis=-1)  # [B, Q, T] (torch.cdist p=1)
  c_giou = -generalized_box_iou(box_cxcywh_to_xyxy(pred_boxes),
                                box_cxcywh_to_xyxy(tgt_boxes))  # [B, Q, T]
  return cost_bbox * c_bbox + cost_class * c_class + cost_giou * c_giou


def match(cost, valid, matcher='hungarian'):
  """Matches predictions to the real targets of a padded batch.

  Args:
    cost: [B, Q, T] matching cost (gradients are stopped).
    valid: [B, T] bool, True for real targets.
    matcher: 'hungarian' (exact, pure JAX, padding-aware), 'greedy' or 'scipy'
      (see ``swin_jax.detection.matchers``), or a callable ``cost [B, N, M] ->
      (pred_idx, tgt_idx)``.

  Returns:
    (pred_idx, tgt_idx, pair_valid): [B, K] int32, int32, bool with
    K = min(Q, T); pair k of image b is (query pred_idx[b, k], target
    tgt_idx[b, k]) and counts only where pair_valid[b, k].
  """
  cost = jax.lax.stop_gradient(_float(cost))
  valid = jnp.asarray(valid, bool)
  if matcher == 'hungarian':
    return hungarian_matcher_padded(cost, valid)
  fn = get_matcher(matcher) if isinstance(matcher, str) else matcher
  # Padding targets get one constant cost per image, above every real cost by
  # more than the spread of the real costs: a padding target never takes a
  # query while a real target is unmatched, and (a constant per image) the
  # optimum among the real targets is unchanged.
  real = valid[:, None, :]
  big = jnp.max(jnp.where(real, jnp.abs(cost), 0.0), axis=(1, 2), keepdims=True)
  cost = jnp.where(real, cost, 2.0 * big + 1.0)
  pred_idx, tgt_idx = fn(cost)
  return pred_idx, tgt_idx, jnp.take_along_axis(valid, tgt_idx, axis=1)


def split_groups(outputs, num_groups: int):
  """Group DETR's K * Q queries as K images of Q queries: ``pred_logits`` /
  ``pred_boxes`` [B, K * Q, .] -> [B * K, Q, .] (row b * K + k = group k of image b, so
  a batch split over devices keeps each image's groups together), aux layers too;
  ``dn_outputs`` is passed through. Pair with ``jnp.repeat(targets, K, axis=0)``."""
  def split(x):
    b, n = x.shape[:2]
    if n % num_groups:
      raise ValueError(f'{n} queries do not split into num_groups={num_groups} groups '
                       f'(config.model.group_detr must match the model\'s).')
    return x.reshape((b * num_groups, n // num_groups) + x.shape[2:])
  def layer(out):
    return {k: split(out[k]) for k in ('pred_logits', 'pred_boxes')}
  new = dict(outputs, **layer(outputs))
  if outputs.get('aux_outputs') is not None:
    new['aux_outputs'] = [layer(a) for a in outputs['aux_outputs']]
  return new


def _match_layers(costs, valid, matcher='hungarian'):
  """``match`` of L layers' costs [L, B, Q, T] against the same targets (valid
  [B, T]) in one batched call; returns (pred_idx, tgt_idx, pair_valid), each
  [L, B, K]."""
  num_layers, b = costs.shape[:2]
  out = match(costs.reshape((num_layers * b,) + costs.shape[2:]),
              jnp.tile(valid, (num_layers, 1)), matcher)
  return tuple(x.reshape((num_layers, b) + x.shape[1:]) for x in out)


def layer_losses(pred_logits, pred_boxes, tgt_labels, tgt_boxes, valid,
                 indices, num_boxes, eos_coef=0.1, log=True, focal=None):
  """DETR's losses of one decoder layer for a given matching.

  Args:
    pred_logits: [B, Q, C + 1] class logits (no-object last).
    pred_boxes: [B, Q, 4] (cx, cy, w, h) predicted boxes.
    tgt_labels: [B, T] int32 target classes in [0, C) (padding: any valid id).
    tgt_boxes: [B, T, 4] (cx, cy, w, h) target boxes (padding: a valid box).
    valid: [B, T] bool, True for real targets.
    indices: (pred_idx, tgt_idx, pair_valid), [B, K] each, from ``match``.
    num_boxes: scalar normaliser of the box losses (>= 1).
    eos_coef: class weight of no-object in the cross-entropy.
    log: also return ``class_error``.
    focal: None (softmax cross-entropy) or (alpha, gamma): the sigmoid focal
      loss over the first C logits, summed / num_boxes (Deformable DETR).

  Returns:
    dict of scalars: loss_ce, loss_bbox, loss_giou, cardinality_error and,
    with ``log``, class_error.
  """
  pred_logits = _float(pred_logits)
  pred_boxes = _float(pred_boxes)
  pred_idx, tgt_idx, pair_valid = indices
  b, q, c1 = pred_logits.shape
  num_classes = c1 - 1

  # ---- labels: weighted cross-entropy over all queries.
  matched_labels = jnp.take_along_axis(tgt_labels, tgt_idx, axis=1)  # [B, K]
  # Query pred_idx[b, k] gets matched_labels[b, k] (valid pairs), the others
  # no-object. As a one-hot sum rather than a scatter: the same integers (pred_idx
  # are distinct within an image, so a query is hit at most once), and a
  # batch-sharded scatter would make XLA gather the whole batch on every device.
  hit = (pred_idx[:, :, None] == jnp.arange(q)[None, None, :]) & pair_valid[:, :, None]
  target_classes = jnp.where(
      hit.any(axis=1), jnp.sum(jnp.where(hit, matched_labels[:, :, None], 0), axis=1),
      num_classes).astype(jnp.int32)  # [B, Q]
  if focal is not None:
    # one-hot over C + 1 with the no-object column dropped: unmatched rows all 0
    onehot = jax.nn.one_hot(target_classes, c1, dtype=pred_logits.dtype)[..., :-1]
    fl = sigmoid_focal_loss(pred_logits[..., :-1], onehot, *focal)
    losses = {'loss_ce': jnp.sum(fl) / num_boxes}
  else:
    logp = jax.nn.log_softmax(pred_logits, axis=-1)
    ce = -jnp.take_along_axis(logp, target_classes[..., None], axis=-1)[..., 0]
    w = jnp.where(target_classes == num_classes, eos_coef, 1.0).astype(ce.dtype)
    losses = {'loss_ce': jnp.sum(w * ce) / jnp.sum(w)}
  class_logits = pred_logits[..., :-1] if focal is not None else pred_logits

  if log:  # DETR's accuracy(): top-1 of the matched queries, 0 if none.
    src_logits = jnp.take_along_axis(class_logits, pred_idx[..., None], axis=1)
    correct = (jnp.argmax(src_logits, axis=-1) == matched_labels) & pair_valid
    n = jnp.sum(pair_valid)
    acc = jnp.where(n > 0, 100.0 * jnp.sum(correct) / jnp.maximum(n, 1), 0.0)
    losses['class_error'] = jax.lax.stop_gradient(100.0 - acc)

  # ---- boxes: L1 and GIoU of the matched pairs.
  src = jnp.take_along_axis(pred_boxes, pred_idx[..., None], axis=1)  # [B,K,4]
  tgt = jnp.take_along_axis(tgt_boxes, tgt_idx[..., None], axis=1)  # [B,K,4]
  l1 = jnp.sum(jnp.abs(src - tgt), axis=-1)  # [B, K]
  giou = elementwise_generalized_box_iou(box_cxcywh_to_xyxy(src),
                                         box_cxcywh_to_xyxy(tgt))  # [B, K]
  losses['loss_bbox'] = jnp.sum(jnp.where(pair_valid, l1, 0.0)) / num_boxes
  losses['loss_giou'] = jnp.sum(jnp.where(pair_valid, 1.0 - giou, 0.0)) / num_boxes

  # ---- cardinality (logging only).
  if focal is not None:  # no no-object column: a query "detects" at sigmoid > 0.5
    card_pred = jnp.sum(jnp.max(class_logits, axis=-1) > 0, axis=1)
  else:
    card_pred = jnp.sum(jnp.argmax(pred_logits, axis=-1) != num_classes, axis=1)
  card_tgt = jnp.sum(valid, axis=1)
  losses['cardinality_error'] = jax.lax.stop_gradient(
      jnp.mean(jnp.abs(card_pred - card_tgt).astype(jnp.float32)))
  return losses


def dn_losses(pred_logits, pred_boxes, tgt_labels, tgt_boxes, valid, num_dn,
              focal=None):
  """DN-DETR's denoising losses of one decoder layer: no matching, query i
  reconstructs its own ground truth.

  Args:
    pred_logits: [B, P, C + 1] logits of the P (padded) denoising queries.
    pred_boxes: [B, P, 4] (cx, cy, w, h) their predicted boxes.
    tgt_labels: [B, P] int, each dn query's (un-noised) ground-truth class.
    tgt_boxes: [B, P, 4] its (un-noised) ground-truth box.
    valid: [B, P] bool, False for padded dn queries (they enter no loss).
    num_dn: scalar >= 1, the number of real dn queries (DN-DETR's num_tgt).
    focal: None (cross-entropy over C + 1, mean over the real dn queries) or
      (alpha, gamma) (focal over the first C, summed / num_dn).

  Returns:
    dict of scalars loss_ce, loss_bbox, loss_giou.
  """
  pred_logits, pred_boxes = _float(pred_logits), _float(pred_boxes)
  tgt_boxes = _float(tgt_boxes)
  tgt_labels = jnp.where(valid, tgt_labels, 0).astype(jnp.int32)
  tgt_boxes = jnp.where(valid[..., None], tgt_boxes, jnp.asarray(_DUMMY_BOX, tgt_boxes.dtype))
  vf = valid.astype(jnp.float32)
  if focal is not None:
    onehot = jax.nn.one_hot(tgt_labels, pred_logits.shape[-1] - 1, dtype=jnp.float32)
    fl = sigmoid_focal_loss(pred_logits[..., :-1], onehot, *focal).sum(-1)  # [B, P]
    loss_ce = jnp.sum(vf * fl) / num_dn
  else:
    logp = jax.nn.log_softmax(pred_logits, axis=-1)
    ce = -jnp.take_along_axis(logp, tgt_labels[..., None], axis=-1)[..., 0]
    loss_ce = jnp.sum(vf * ce) / num_dn
  l1 = jnp.sum(jnp.abs(pred_boxes - tgt_boxes), axis=-1)
  giou = elementwise_generalized_box_iou(box_cxcywh_to_xyxy(pred_boxes),
                                         box_cxcywh_to_xyxy(tgt_boxes))
  return {'loss_ce': loss_ce, 'loss_bbox': jnp.sum(vf * l1) / num_dn,
          'loss_giou': jnp.sum(vf * (1.0 - giou)) / num_dn}


class SetCriterion:
  """DETR's set criterion: per-layer Hungarian matching + weighted set losses.

  Jit-able: ``jax.jit(criterion)`` or call it inside a jitted train step (the
  settings are static Python values).

  Args:
    num_classes: number of object classes C (logits have C + 1 entries).
    matcher: 'hungarian' | 'greedy' | 'scipy', or a matcher callable.
    eos_coef: cross-entropy weight of the no-object class.
    weights: loss weights, keys ce, bbox, giou (DETR: 1, 5, 2).
    cost_weights: matching cost weights, keys class_, bbox, giou (DETR: 1, 5,
      2).
    aux_loss: also apply the losses to ``outputs['aux_outputs']`` (and to the
      aux layers of ``outputs['dn_outputs']``).
    focal: None (DETR's softmax cross-entropy and cost) or (alpha, gamma):
      Deformable DETR's sigmoid focal loss and focal matching cost (module
      docstring); pass FOCAL_WEIGHTS / FOCAL_COST_WEIGHTS for its weights.
    one2many_k, one2many_weight: H-DETR's k_one2many and lambda_one2many (6, 1.0),
      used when the outputs have ``one2many_outputs`` (module docstring).
  """

  def __init__(self, num_classes, matcher='hungarian', eos_coef=0.1,
               weights=None, cost_weights=None, aux_loss=True, focal=None,
               one2many_k=6, one2many_weight=1.0):
    self.num_classes = num_classes
    self.one2many_k = int(one2many_k)
    self.one2many_weight = float(one2many_weight)
    self.focal = None if focal is None else (float(focal[0]), float(focal[1]))
    self.matcher = matcher
    self.eos_coef = eos_coef
    self.weights = dict(DEFAULT_WEIGHTS, **(weights or {}))
    self.cost_weights = dict(DEFAULT_COST_WEIGHTS, **(cost_weights or {}))
    self.aux_loss = aux_loss

  @property
  def weight_dict(self):
    """Weights by loss name (last layer; aux keys add the suffix ``_i``)."""
    return {'loss_ce': self.weights['ce'], 'loss_bbox': self.weights['bbox'],
            'loss_giou': self.weights['giou']}

  def match(self, outputs, targets, num_groups=1):
    """Matching of one layer's outputs: (pred_idx, tgt_idx, pair_valid) [B, M].

    With ``num_groups`` G (Group DETR, pred_* [B, G * Q, .]) each group is matched on
    its own and the G matchings are concatenated, pred_idx in the full G * Q numbering
    (group g's pairs g * m .. g * m + m - 1, pred_idx in [g * Q, g * Q + Q), m = min(Q,
    T), M = G * m), as the official GroupDETR matcher returns them.
    """
    G = int(num_groups)
    labels, boxes, valid = _targets(targets)
    if G > 1:
      outputs = split_groups(outputs, G)
      labels, boxes, valid = (jnp.repeat(x, G, axis=0) for x in (labels, boxes, valid))
    cw = self.cost_weights
    cost = matching_cost(outputs['pred_logits'], outputs['pred_boxes'], labels,
                         boxes, cw['class_'], cw['bbox'], cw['giou'], self.focal)
    idx = match(cost, valid, self.matcher)
    if G == 1:
      return idx
    q = outputs['pred_logits'].shape[1]
    offset = (jnp.arange(G, dtype=jnp.int32) * q)[None, :, None]
    pred_idx, tgt_idx, ok = (x.reshape((-1, G) + x.shape[1:]) for x in idx)  # [B, G, m]
    return tuple(x.reshape(x.shape[0], -1) for x in (pred_idx + offset, tgt_idx, ok))

  def __call__(self, outputs, targets, num_boxes=None, num_groups=1):
    """Total loss and metrics.

    Args:
      outputs: dict with pred_logits [B, Q, C + 1], pred_boxes [B, Q, 4] and
        optionally aux_outputs (list of such dicts) and dn_outputs (``DETR``'s
        denoising part: pred_logits [L, B, P, C + 1], pred_boxes [L, B, P, 4],
        labels [B, P], boxes [B, P, 4], valid [B, P]).
      targets: dict with labels [B, T], boxes [B, T, 4], valid [B, T].
      num_boxes: optional normaliser of the box losses (e.g. a global count);
        default: the number of valid targets in ``targets``, clamped >= 1.
      num_groups: Group DETR's K (static): pred_* hold K groups of Q queries
        [B, K * Q, .], matched group by group; num_boxes is multiplied by K
        (clamped >= 1 after, as the official code). 1: DETR.
      outputs['one2many_outputs'] (H-DETR): {pred_logits, pred_boxes, aux_outputs}
        of the one-to-many queries, given the whole loss again against the targets
        repeated one2many_k times (num_boxes x k), weighted one2many_weight; its
        metrics get the suffix ``_one2many``.

    Returns:
      (total_loss scalar, metrics dict of scalars): the DETR loss dict
      (loss_ce, loss_bbox, loss_giou, class_error, cardinality_error and the
      ``_i`` suffixed aux entries; ``_dn`` / ``_dn_i`` ones with
      ``dn_outputs``) plus ``loss`` (the total).
    """
    if self.num_classes != outputs['pred_logits'].shape[-1] - 1:
      raise ValueError(
          f'pred_logits has {outputs["pred_logits"].shape[-1]} classes, '
          f'expected num_classes + 1 = {self.num_classes + 1}.')
    labels, boxes, valid = _targets(targets)
    G = int(num_groups)
    if G < 1:
      raise ValueError(f'num_groups={num_groups!r} must be >= 1 (Group DETR\'s K; 1 = DETR).')
    if num_boxes is None:
      num_boxes = jnp.sum(valid).astype(jnp.float32)
    real_boxes = jnp.asarray(num_boxes, jnp.float32)  # before the groups and the clamp
    num_boxes = jnp.maximum(G * real_boxes, 1.0)
    if G > 1:  # Group DETR: every group an image of its own, against the same targets
      outputs = split_groups(outputs, G)
      labels, boxes, valid = (jnp.repeat(x, G, axis=0) for x in (labels, boxes, valid))

    layers = [('', outputs, True)]
    if self.aux_loss:
      layers += [(f'_{i}', aux, False)
                 for i, aux in enumerate(outputs.get('aux_outputs') or [])]
    # All layers are matched in one batched matcher call ([L * b, Q, T]): one
    # assignment loop instead of L (faster to compile and to run), on each
    # device's images (shd.per_device): the loop's exit test never waits for
    # another device's matching, and no cost matrix crosses devices.
    cw = self.cost_weights
    costs = [matching_cost(out['pred_logits'], out['pred_boxes'], labels, boxes,
                           cw['class_'], cw['bbox'], cw['giou'], self.focal)
             for _, out, _ in layers]
    if len({c.shape for c in costs}) == 1:
      all_idx = shd.per_device(
          functools.partial(_match_layers, matcher=self.matcher),
          in_specs=(P(None, shd.DATA), P(shd.DATA)),
          out_specs=P(None, shd.DATA))(jnp.stack(costs), valid)
      per_layer = [tuple(x[i] for x in all_idx) for i in range(len(costs))]
    else:  # e.g. aux layers with a different number of queries
      per_layer = [shd.per_device(
          functools.partial(match, matcher=self.matcher),
          in_specs=(P(shd.DATA), P(shd.DATA)), out_specs=P(shd.DATA))(c, valid)
                   for c in costs]

    metrics = {}
    total = jnp.zeros((), jnp.float32)
    for (suffix, out, log), indices in zip(layers, per_layer):
      losses = layer_losses(out['pred_logits'], out['pred_boxes'], labels, boxes,
                            valid, indices, num_boxes, self.eos_coef, log=log,
                            focal=self.focal)
      for k, wt in self.weight_dict.items():
        total = total + wt * losses[k]
      metrics.update({k + suffix: v for k, v in losses.items()})

    dn = outputs.get('dn_outputs')
    if dn is not None:  # DN-DETR: [L, B, P, .] predictions of the denoising queries
      dn_valid = jnp.asarray(dn['valid'], bool)
      num_dn = jnp.maximum(jnp.sum(dn_valid).astype(jnp.float32), 1.0)
      n_layers = dn['pred_logits'].shape[0]
      for i in (range(n_layers) if self.aux_loss else [n_layers - 1]):
        suffix = '_dn' if i == n_layers - 1 else f'_dn_{i}'
        losses = dn_losses(dn['pred_logits'][i], dn['pred_boxes'][i], dn['labels'],
                           dn['boxes'], dn_valid, num_dn, self.focal)
        for k, wt in self.weight_dict.items():
          total = total + wt * losses[k]
        metrics.update({k + suffix: v for k, v in losses.items()})
    one2many = outputs.get('one2many_outputs')
    if one2many is not None:  # H-DETR's hybrid branch: the targets repeated k times
      k = self.one2many_k
      if k < 1:
        raise ValueError(f'one2many_k={k} must be >= 1 (config.loss.one2many_k; H-DETR: 6).')
      repeated = {'labels': jnp.tile(labels, (1, k)), 'boxes': jnp.tile(boxes, (1, k, 1)),
                  'valid': jnp.tile(valid, (1, k))}
      o2m_total, o2m = self(one2many, repeated, num_boxes=k * real_boxes)
      total = total + self.one2many_weight * o2m_total
      metrics.update({key + '_one2many': v for key, v in o2m.items() if key != 'loss'})
    metrics['loss'] = total
    return total, metrics
