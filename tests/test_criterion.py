"""Tests of swin_jax.detection.criterion against the official DETR criterion."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

from swin_jax.detection.criterion import (SetCriterion, match, matching_cost,
                                          num_target_boxes)

GOLDEN = os.path.join(os.path.dirname(__file__), 'data',
                      'detr_criterion_golden.npz')
NUM_CLASSES = 5
LAST_KEYS = ('loss_ce', 'loss_bbox', 'loss_giou', 'class_error',
             'cardinality_error')


@pytest.fixture(scope='module')
def golden():
  with np.load(GOLDEN) as g:
    return dict(g)


def _case(g, c):
  """(outputs, targets, official losses) of golden case c."""
  p = f'c{c}_'
  logits, boxes = g[p + 'pred_logits'], g[p + 'pred_boxes']  # [L, B, Q, .]
  outputs = dict(pred_logits=logits[-1], pred_boxes=boxes[-1],
                 aux_outputs=[dict(pred_logits=l, pred_boxes=b)
                              for l, b in zip(logits[:-1], boxes[:-1])])
  targets = dict(labels=g[p + 'labels'], boxes=g[p + 'boxes'],
                 valid=g[p + 'valid'])
  ref = {k[len(p) + 5:]: float(v) for k, v in g.items()
         if k.startswith(p + 'loss/')}
  return outputs, targets, ref


_JITS = {}


def _jitted(matcher='hungarian', aux_loss=True):
  """One jitted criterion per setting, shared by the tests (compiles once)."""
  key = (matcher, aux_loss)
  if key not in _JITS:
    _JITS[key] = jax.jit(SetCriterion(NUM_CLASSES, matcher=matcher,
                                      aux_loss=aux_loss).__call__)
  return _JITS[key]


_match = jax.jit(match, static_argnums=2)


def _run(outputs, targets, num_boxes=None, matcher='hungarian', aux_loss=True,
         num_classes=NUM_CLASSES):
  if num_classes == NUM_CLASSES:
    fn = _jitted(matcher, aux_loss)
  else:
    fn = jax.jit(SetCriterion(num_classes, matcher=matcher,
                              aux_loss=aux_loss).__call__)
  total, metrics = fn(outputs, targets, num_boxes)
  return float(total), {k: float(v) for k, v in metrics.items()}


@pytest.mark.parametrize('matcher', ['hungarian', 'scipy'])
@pytest.mark.parametrize('case', [0, 1, 2])
def test_matches_official_losses(golden, case, matcher):
  """Cases: boxes (3, 1); (2, 0); (0, 0) per image; Q=10, 5 classes, 2 aux."""
  outputs, targets, ref = _case(golden, case)
  total, metrics = _run(outputs, targets, matcher=matcher)
  expected_keys = set(LAST_KEYS) | {
      f'{k}_{i}' for i in range(2)
      for k in ('loss_ce', 'loss_bbox', 'loss_giou', 'cardinality_error')}
  assert set(metrics) == expected_keys | {'loss'}
  assert set(ref) == expected_keys | {'total'}
  for k in expected_keys:
    np.testing.assert_allclose(metrics[k], ref[k], rtol=1e-5, atol=1e-7,
                               err_msg=k)
  np.testing.assert_allclose(total, ref['total'], rtol=1e-5)
  np.testing.assert_allclose(metrics['loss'], total)


def test_matching_equals_official(golden):
  for c in range(3):
    outputs, targets, _ = _case(golden, c)
    cost = matching_cost(outputs['pred_logits'], outputs['pred_boxes'],
                         targets['labels'].clip(0, NUM_CLASSES - 1),
                         targets['boxes'])
    pred_idx, tgt_idx, pair_valid = map(np.asarray,
                                        _match(cost, targets['valid'],
                                               'hungarian'))
    got = np.full(targets['valid'].shape, -1, np.int32)
    for b in range(got.shape[0]):
      got[b, tgt_idx[b][pair_valid[b]]] = pred_idx[b][pair_valid[b]]
    np.testing.assert_array_equal(got, golden[f'c{c}_pred_for_tgt'])


@pytest.mark.parametrize('b,q,t,matchers', [
    (2, 10, 4, ['hungarian']), (4, 4, 7, ['hungarian', 'scipy', 'greedy'])])
def test_matching_equals_scipy(b, q, t, matchers):
  """Optimal on the real targets (scipy on the sub-matrix), also for Q < T."""
  rng = np.random.default_rng(q + t)
  logits = rng.standard_normal((b, q, NUM_CLASSES + 1)).astype(np.float32)
  boxes = np.concatenate([0.2 + 0.6 * rng.random((b, q, 2)),
                          0.05 + 0.4 * rng.random((b, q, 2))], -1)
  labels = rng.integers(0, NUM_CLASSES, (b, t)).astype(np.int32)
  tboxes = np.concatenate([0.2 + 0.6 * rng.random((b, t, 2)),
                           0.05 + 0.4 * rng.random((b, t, 2))], -1)
  valid = np.arange(t)[None] < np.array([t, t - 2, 1, 0])[:b, None]
  cost = np.asarray(matching_cost(logits, boxes.astype(np.float32), labels,
                                  tboxes.astype(np.float32)))
  for name in matchers:
    p, tg, pv = map(np.asarray, _match(cost, valid, name))
    for e in range(b):
      sub = cost[e][:, valid[e]]
      n_pairs = min(q, sub.shape[1])
      assert pv[e].sum() == n_pairs, name
      # Real targets only; each query at most once.
      assert valid[e][tg[e][pv[e]]].all()
      assert len(set(p[e][pv[e]].tolist())) == n_pairs
      if name == 'greedy' or sub.shape[1] == 0:
        continue
      r, cidx = scipy.optimize.linear_sum_assignment(sub)
      ref = sub[r, cidx].sum()
      np.testing.assert_allclose(cost[e][p[e][pv[e]], tg[e][pv[e]]].sum(), ref,
                                 rtol=1e-6, err_msg=name)


def test_padding_invariance(golden):
  """More padding targets (holding junk) change nothing."""
  outputs, targets, _ = _case(golden, 0)
  total, metrics = _run(outputs, targets)
  b, t = targets['labels'].shape
  extra = 5
  padded = dict(
      labels=np.concatenate([targets['labels'],
                             np.full((b, extra), 99, np.int32)], 1),
      boxes=np.concatenate([targets['boxes'],
                            np.zeros((b, extra, 4), np.float32)], 1),
      valid=np.concatenate([targets['valid'], np.zeros((b, extra), bool)], 1))
  total2, metrics2 = _run(outputs, padded)
  np.testing.assert_allclose(total2, total, rtol=1e-6)
  for k in metrics:
    np.testing.assert_allclose(metrics2[k], metrics[k], rtol=1e-6, err_msg=k)


def test_no_boxes_finite_with_gradients(golden):
  outputs, targets, _ = _case(golden, 1)  # image 1 has no boxes
  # The matcher does not matter here (all-empty matching with 'hungarian' is
  # in the golden case 2); 'scipy' compiles faster.
  crit = SetCriterion(NUM_CLASSES, matcher='scipy', aux_loss=False)
  # Only the empty image.
  one = lambda x: x[1:]
  outputs = jax.tree_util.tree_map(one, outputs)
  targets = jax.tree_util.tree_map(one, targets)
  assert not targets['valid'].any()
  loss_fn = lambda o: crit(o, targets)
  (total, metrics), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
      outputs)
  assert np.isfinite(float(total))
  for k, v in metrics.items():
    assert np.isfinite(float(v)), k
  for k in ('loss_bbox', 'loss_giou'):
    assert float(metrics[k]) == 0.0
  assert float(metrics['class_error']) == 100.0  # DETR: accuracy 0 if empty
  for g in jax.tree_util.tree_leaves(grads):
    assert np.isfinite(np.asarray(g)).all()
  np.testing.assert_array_equal(np.asarray(grads['pred_boxes']), 0.0)
  assert np.abs(np.asarray(grads['pred_logits'])).sum() > 0


def test_num_boxes_and_aux_loss(golden):
  outputs, targets, ref = _case(golden, 0)
  assert float(num_target_boxes(targets)) == 4.0
  # An explicit (e.g. global) num_boxes rescales only the box losses;
  # aux_loss=False ignores aux_outputs.
  total, m = _run(outputs, targets, num_boxes=8.0, matcher='scipy',
                  aux_loss=False)
  assert set(m) == set(LAST_KEYS) | {'loss'}
  for k in LAST_KEYS:
    ratio = 0.5 if k in ('loss_bbox', 'loss_giou') else 1.0
    np.testing.assert_allclose(m[k], ratio * ref[k], rtol=1e-5, err_msg=k)
  np.testing.assert_allclose(
      total, ref['loss_ce'] + 0.5 * (5 * ref['loss_bbox'] + 2 * ref['loss_giou']),
      rtol=1e-5)


def test_class_and_cardinality_error():
  """Hand-made: image 0 has 2 targets with perfect boxes, one predicted with
  the right class and one with a wrong one, plus a spurious object; image 1 has
  no target and one spurious object."""
  c, q, t = NUM_CLASSES, 10, 4
  rng = np.random.default_rng(0)
  labels = np.array([[1, 2, 0, 0], [0, 0, 0, 0]], np.int32)
  valid = np.array([[True, True, False, False], [False] * 4])
  tboxes = np.full((2, t, 4), 0.5, np.float32)
  tboxes[0, :2] = [[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.2]]
  pred_boxes = np.concatenate([0.85 + 0.1 * rng.random((2, q, 2)),
                               0.01 + 0.02 * rng.random((2, q, 2))], -1)
  pred_boxes[0, 4], pred_boxes[0, 7] = tboxes[0, 0], tboxes[0, 1]
  logits = np.full((2, q, c + 1), -5.0, np.float32)
  logits[:, :, c] = 5.0  # no-object everywhere ...
  logits[0, 4, 1] = 6.0  # ... but query 4 -> target 0, right class
  logits[0, 7, 0] = 6.0  # query 7 -> target 1, wrong class (0, target 2)
  logits[0, 7, 2] = 5.5
  logits[0, 1, 3] = 6.0  # spurious: 3 predicted objects vs 2 targets
  logits[1, 5, 4] = 6.0  # spurious: 1 predicted object vs 0 targets
  out = dict(pred_logits=logits, pred_boxes=pred_boxes.astype(np.float32))
  outputs = dict(out, aux_outputs=[out, out])
  targets = dict(labels=labels, boxes=tboxes, valid=valid)
  _, m = _run(outputs, targets)
  for suffix in ('', '_0', '_1'):
    assert m['cardinality_error' + suffix] == pytest.approx(1.0)
    assert m['loss_bbox' + suffix] == pytest.approx(0.0, abs=1e-6)
    assert m['loss_giou' + suffix] == pytest.approx(0.0, abs=1e-6)
  assert m['class_error'] == pytest.approx(50.0)
  # loss_ce by hand: weight 1 for the two matched queries (targets 1 and 2),
  # 0.1 for the 18 no-object ones.
  logp = np.asarray(jax.nn.log_softmax(logits, -1))
  tgt = np.full((2, q), c)
  tgt[0, 4], tgt[0, 7] = 1, 2
  ce = -np.take_along_axis(logp, tgt[..., None], -1)[..., 0]
  w = np.where(tgt == c, 0.1, 1.0)
  assert m['loss_ce'] == pytest.approx((w * ce).sum() / w.sum(), rel=1e-5)
