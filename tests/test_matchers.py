"""Matchers: the pure-JAX Hungarian against scipy, padding, greedy, scipy callback.

Compiles dominate the run time, so the tests share a few shapes (jit caches by
shape) and hypothesis draws values, not shapes, from a short list.
"""
import hypothesis
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

from swin_jax.detection import matchers as M

hungarian = jax.jit(M.hungarian_matcher)
padded = jax.jit(M.hungarian_matcher_padded)
SHAPES = [(7, 4), (4, 7), (6, 6), (1, 5), (5, 1), (30, 10)]


def optimum(cost):
  """Per-element scipy optimum (float64) of cost [B, N, M] -> [B]."""
  cost = np.asarray(cost, np.float64)
  out = []
  for c in cost:
    r, k = scipy.optimize.linear_sum_assignment(c)
    out.append(c[r, k].sum())
  return np.array(out)


def totals(cost, pred, tgt):
  cost = np.asarray(cost, np.float64)
  return cost[np.arange(cost.shape[0])[:, None], np.asarray(pred), np.asarray(tgt)].sum(1)


def tolerance(cost):
  """float32 rounding of the optimum: ~ K * eps32 * max|C| (plus a floor)."""
  k = min(cost.shape[-2:])
  return 4 * k * np.finfo(np.float32).eps * max(float(np.abs(cost).max()), 1.0)


def check_assignment(cost, pred, tgt):
  """Shapes, dtypes, index ranges, each prediction / target used once, order."""
  b, n, m = cost.shape
  k = min(n, m)
  pred, tgt = np.asarray(pred), np.asarray(tgt)
  assert pred.shape == tgt.shape == (b, k)
  assert pred.dtype == tgt.dtype == np.int32
  assert ((0 <= pred) & (pred < n)).all() and ((0 <= tgt) & (tgt < m)).all()
  for e in range(b):
    assert len(set(pred[e].tolist())) == k and len(set(tgt[e].tolist())) == k
  # Ordering convention: the smaller side in order.
  side = tgt if n >= m else pred
  np.testing.assert_array_equal(side, np.broadcast_to(np.arange(k), (b, k)))


def check_optimal(cost, matcher=hungarian):
  cost = np.asarray(cost, np.float32)
  pred, tgt = matcher(jnp.asarray(cost))
  check_assignment(cost, pred, tgt)
  np.testing.assert_allclose(totals(cost, pred, tgt), optimum(cost), rtol=0,
                             atol=tolerance(cost))


@pytest.mark.parametrize('shape', SHAPES)
def test_random_float(shape):
  rng = np.random.default_rng(0)
  check_optimal(rng.random((8,) + shape, dtype=np.float32))
  check_optimal(rng.normal(size=(8,) + shape).astype(np.float32))  # negative costs


@pytest.mark.parametrize('shape', SHAPES)
def test_integer_ties(shape):
  rng = np.random.default_rng(1)
  check_optimal(rng.integers(0, 3, (8,) + shape).astype(np.float32))
  check_optimal(np.zeros((8,) + shape, np.float32))  # all tied
  if shape == (7, 4):
    check_optimal(rng.integers(0, 3, (8,) + shape).astype(np.int32))  # int input


@pytest.mark.parametrize('shape', [(7, 4), (4, 7), (30, 10)])
def test_large_and_mixed_scales(shape):
  rng = np.random.default_rng(2)
  check_optimal((rng.random((8,) + shape) * 1e6).astype(np.float32))
  check_optimal((1e6 + rng.integers(0, 5, (8,) + shape)).astype(np.float32))
  # Each entry at its own scale, 1e-3 .. 1e6.
  mixed = rng.random((8,) + shape) * 10.0 ** rng.uniform(-3, 6, (8,) + shape)
  check_optimal(mixed.astype(np.float32))
  # Rows offset by very different constants (row-min shift keeps this exact).
  offs = 10.0 ** rng.integers(0, 7, (8, shape[0], 1))
  check_optimal((rng.random((8,) + shape) + offs).astype(np.float32))


def test_known_example():
  # optax's docstring example: optimum 265.
  cost = np.array([[90, 80, 75, 70], [35, 85, 55, 65], [125, 95, 90, 95],
                   [45, 110, 95, 115], [50, 100, 90, 100]], np.float32)[None]
  pred, tgt = hungarian(jnp.asarray(cost))
  assert totals(cost, pred, tgt)[0] == 265
  np.testing.assert_array_equal(tgt, [[0, 1, 2, 3]])


def test_vmap():
  rng = np.random.default_rng(3)
  cost = rng.random((3, 8, 7, 4), dtype=np.float32)  # extra leading batch dim
  pred, tgt = jax.jit(jax.vmap(M.hungarian_matcher))(jnp.asarray(cost))
  assert pred.shape == tgt.shape == (3, 8, 4)
  for a in range(3):
    check_assignment(cost[a], pred[a], tgt[a])
    np.testing.assert_allclose(totals(cost[a], pred[a], tgt[a]), optimum(cost[a]),
                               atol=tolerance(cost[a]))


def test_empty():
  p, t = M.hungarian_matcher(jnp.zeros((2, 0, 5)))
  assert p.shape == t.shape == (2, 0)
  p, t, v = M.hungarian_matcher_padded(jnp.zeros((2, 5, 0)), jnp.zeros((2, 0), bool))
  assert p.shape == t.shape == v.shape == (2, 0)


_values = st.one_of(
    st.integers(0, 2).map(float),
    st.floats(-1e3, 1e3, allow_nan=False, width=32),
)


@hypothesis.settings(max_examples=50, deadline=None)
@hypothesis.given(data=st.data())
def test_property_matches_scipy(data):
  shape = data.draw(st.sampled_from(SHAPES))
  cost = data.draw(hnp.arrays(np.float32, (8,) + shape, elements=_values))
  check_optimal(cost)


# ---- padding ----------------------------------------------------------------


def check_padded(cost, valid):
  cost = np.asarray(cost, np.float32)
  b, n, m = cost.shape
  pred, tgt, pair_valid = padded(jnp.asarray(cost), jnp.asarray(valid))
  check_assignment(cost, pred, tgt)
  pred, tgt, pair_valid = map(np.asarray, (pred, tgt, pair_valid))
  assert pair_valid.dtype == bool and pair_valid.shape == pred.shape
  for e in range(b):
    real = np.flatnonzero(valid[e])
    np.testing.assert_array_equal(pair_valid[e], valid[e][tgt[e]])
    # Every real target that can be matched is matched: a padding target never
    # takes a prediction while a real target is unmatched.
    assert pair_valid[e].sum() == min(n, len(real))
    # The real pairs are an optimal assignment of the real sub-matrix.
    got = cost[e][pred[e][pair_valid[e]], tgt[e][pair_valid[e]]].astype(np.float64).sum()
    sub = cost[e][:, real].astype(np.float64)
    r, k = scipy.optimize.linear_sum_assignment(sub)
    np.testing.assert_allclose(got, sub[r, k].sum(), atol=tolerance(cost))


@pytest.mark.parametrize('shape', [(7, 4), (4, 7), (6, 6), (10, 30)])
def test_padded_random_masks(shape):
  rng = np.random.default_rng(6)
  b = 8
  cost = rng.random((b,) + shape, dtype=np.float32)
  valid = rng.random((b, shape[1])) < rng.random((b, 1))  # 0..all real
  valid[0] = False
  valid[1] = True
  check_padded(cost, valid)
  # Ties, and padding entries that would be attractive if they were used.
  cost = rng.integers(0, 3, (b,) + shape).astype(np.float32)
  cost = np.where(valid[:, None, :], cost, -100.0).astype(np.float32)
  check_padded(cost, valid)


def test_padded_all_valid_equals_unpadded():
  rng = np.random.default_rng(7)
  for shape in [(7, 4), (4, 7)]:
    cost = rng.random((8,) + shape, dtype=np.float32)
    p, t, v = padded(jnp.asarray(cost), jnp.ones((8, shape[1]), bool))
    assert np.asarray(v).all()
    np.testing.assert_allclose(totals(cost, p, t), optimum(cost), atol=tolerance(cost))


@hypothesis.settings(max_examples=25, deadline=None)
@hypothesis.given(data=st.data())
def test_property_padded(data):
  shape = data.draw(st.sampled_from([(7, 4), (4, 7)]))
  cost = data.draw(hnp.arrays(np.float32, (8,) + shape, elements=_values))
  valid = data.draw(hnp.arrays(bool, (8, shape[1])))
  check_padded(cost, valid)


# ---- non-finite costs ----------------------------------------------------------


def sanitized(cost, real=None):
  """NumPy float64 version of the documented sanitising (matchers docstring):
  nan / +inf -> hi + P, -inf -> lo - P, P = (2K + 1) max(hi - lo, |lo|, |hi|).
  (Any P > K * (hi - lo) has the same optimal assignments, so a K counted with
  or without padding targets does not matter.)"""
  cost = np.asarray(cost, np.float64).copy()
  k = min(cost.shape[-2:])
  for e, c in enumerate(cost):
    fin = np.isfinite(c) if real is None else np.isfinite(c) & real[e]
    lo, hi = (c[fin].min(), c[fin].max()) if fin.any() else (0.0, 0.0)
    scale = max(hi - lo, abs(lo), abs(hi)) or 1.0
    gap = (2 * k + 1) * scale
    c[np.isnan(c) | (c == np.inf)] = hi + gap
    c[c == -np.inf] = lo - gap
  return cost


def nonfinite_cases(shape, rng):
  """[8, N, M] float32 costs, one kind of non-finite input per element."""
  n, m = shape
  cost = rng.random((8, n, m)).astype(np.float32)
  # 0: a nan line on the larger side (a diverged query when N > M): avoidable.
  if n >= m:
    cost[0, 2, :] = np.nan
  else:
    cost[0, :, 2] = np.nan
  cost[1] = np.nan
  cost[2] = np.inf
  cost[3] = -np.inf
  # 4: a mix of all three and finite costs.
  u = rng.random((n, m))
  cost[4][u < 0.2] = np.nan
  cost[4][(u >= 0.2) & (u < 0.4)] = np.inf
  cost[4][(u >= 0.4) & (u < 0.5)] = -np.inf
  # 5: forbidden pairs (+inf) off the diagonal band, a finite assignment exists.
  i, j = np.indices((n, m))
  cost[5][np.abs(i - j) > 1] = np.inf
  # 6: one -inf entry: it must be taken.
  cost[6, 1, 0] = -np.inf
  # 7: nan line on the smaller side (a target every assignment has to use).
  if n >= m:
    cost[7, :, 1] = np.nan
  else:
    cost[7, 1, :] = np.nan
  return cost


def check_nonfinite(cost, pred, tgt, tol):
  """Valid assignment, optimal for the sanitised matrix, plus the semantics in
  terms of the raw costs (independent of the sanitising formula)."""
  check_assignment(cost, pred, tgt)
  pred, tgt = np.asarray(pred), np.asarray(tgt)
  clean = sanitized(cost)
  # Optimal for the sanitised matrix. Its entries reach ~(2K + 2) * max|finite|,
  # so float32 rounding is ~K * eps * max|sanitised| (the module's numerics):
  # far below the gap P, so the number of non-finite pairs is checked exactly.
  np.testing.assert_allclose(totals(clean, pred, tgt), optimum(clean), rtol=0,
                             atol=tolerance(clean))
  raw = lambda e: np.asarray(cost[e], np.float64)[pred[e], tgt[e]]
  n, m = cost.shape[1:]
  assert np.isfinite(raw(0)).all()  # the nan query / target is avoided ...
  finite_rows = np.delete(cost[0], 2, axis=0 if n >= m else 1).astype(np.float64)
  np.testing.assert_allclose(raw(0).sum(), optimum(finite_rows[None])[0], atol=tol)
  # ... and scipy's rule for +inf (forbidden, if avoidable) holds: same optimum.
  assert np.isfinite(raw(5)).all()
  np.testing.assert_allclose(raw(5).sum(), optimum(cost[5:6])[0], atol=tol)
  assert (raw(6) == -np.inf).any()


@pytest.mark.parametrize('shape', [(7, 4), (4, 7)])
def test_nonfinite_costs_give_valid_assignments_optimal_when_sanitised(shape):
  # Before: nan gave -1 or repeated indices, which a gather wraps to the last query.
  rng = np.random.default_rng(10)
  cost = nonfinite_cases(shape, rng)
  tol = tolerance(np.nan_to_num(cost, posinf=0, neginf=0))
  pred, tgt = hungarian(jnp.asarray(cost))
  check_nonfinite(cost, pred, tgt, tol)
  # The padded matcher: nan in the padding targets is ignored, nan in a real one
  # follows the same rule on the real sub-matrix.
  valid = np.ones((8, shape[1]), bool)
  valid[:, -1] = False
  junk = cost.copy()
  junk[:, :, -1] = np.nan
  p, t, v = padded(jnp.asarray(junk), jnp.asarray(valid))
  check_assignment(junk, p, t)
  p, t, v = map(np.asarray, (p, t, v))
  sub = cost[:, :, :-1]
  clean = sanitized(sub)
  for e in range(8):
    assert v[e].sum() == min(shape[0], shape[1] - 1)
    got = clean[e][p[e][v[e]], t[e][v[e]]].sum()
    np.testing.assert_allclose(got, optimum(clean[e:e + 1])[0], atol=tolerance(clean))
  # The other matchers give valid assignments too (scipy refused nan before).
  check_assignment(cost, *jax.jit(M.greedy_matcher)(jnp.asarray(cost)))
  pred, tgt = jax.jit(M.scipy_matcher)(jnp.asarray(cost))
  check_nonfinite(cost, pred, tgt, tol)


def test_search_stopped_at_its_cap_still_returns_an_assignment():
  # The safety net behind the sanitising: the search loop fed raw nan / inf runs
  # to its cap and leaves rows unmatched (-1); _complete gives them the unused
  # columns, so even this path returns distinct, in-range indices.
  cost = nonfinite_cases((4, 7), np.random.default_rng(10))  # rows: the smaller side
  col4row, iters = map(np.asarray, jax.jit(M._lsa_rows)(jnp.asarray(cost)))
  assert (iters >= M._max_iters(4, 7)).sum() >= 4  # the cap was reached
  check_assignment(cost, np.broadcast_to(np.arange(4, dtype=np.int32), (8, 4)), col4row)


# ---- DETR-sized problems -------------------------------------------------------

Q = T_MAX = 100  # DETR's 100 queries; targets padded to 100 (a crowded COCO image)


def detr_costs(num_real, rng, collapse=None):
  """DETR matching costs [B, Q, T_MAX] (criterion.matching_cost, 10 classes)
  and target masks [B, T_MAX] with num_real[b] real targets, the rest padding
  as the criterion pads them. collapse: queries squeezed to one box and one
  class distribution (as early in training), so all targets want the same few."""
  from swin_jax.detection.criterion import matching_cost
  b = len(num_real)
  logits = rng.normal(size=(b, Q, 11))
  boxes = rng.uniform(0.2, 0.8, (b, Q, 4))
  if collapse is not None:
    logits = logits[:, :1] + collapse * logits
    boxes = boxes[:, :1] + collapse * (boxes - 0.5)
  labels = rng.integers(0, 10, (b, T_MAX))
  tboxes = rng.uniform(0.2, 0.8, (b, T_MAX, 4))
  valid = np.arange(T_MAX) < np.asarray(num_real)[:, None]
  labels = np.where(valid, labels, 0)  # criterion._targets: label 0, dummy box
  tboxes = np.where(valid[..., None], tboxes, [0.5, 0.5, 1.0, 1.0])
  cost = jax.jit(matching_cost)(*(jnp.asarray(x, jnp.float32) for x in (logits, boxes)),
                                jnp.asarray(labels), jnp.asarray(tboxes, jnp.float32))
  return list(np.asarray(cost)), list(valid)


@pytest.fixture(scope='module')
def detr_batch():
  """[B, Q, T_MAX] costs, [B, T_MAX] masks and a kind per element: DETR costs
  for 1..100 real targets, collapsed queries and heavy ties."""
  rng = np.random.default_rng(11)
  kinds, costs, valids = [], [], []

  def add(kind, c, v):
    kinds.extend([kind] * len(c))
    costs.extend(c)
    valids.extend(v)

  add('detr', *detr_costs([1, 2, 3, 7, 12, 25, 40, 50, 64, 80, 99, 100], rng))
  add('collapsed', *detr_costs([1, 10, 50, 100], rng, collapse=1e-2))
  for t, hi in ((1, 3), (5, 3), (25, 3), (60, 3), (100, 3), (50, 5), (100, 5)):
    valid = np.arange(T_MAX) < t
    ties = rng.integers(0, hi, (Q, T_MAX))
    add('ties', [np.where(valid, ties, -100.0)], [valid])  # attractive padding
  full = np.ones(T_MAX, bool)
  add('ties', [np.zeros((Q, T_MAX))], [full])
  return np.array(kinds), np.stack(costs).astype(np.float32), np.stack(valids)


def check_real_optimum(cost, valid, pred, tgt, pair_valid):
  """Every real target matched; the real pairs' total is scipy's optimum of
  the real sub-matrix (float64), to float32 rounding (``tolerance``)."""
  for e in range(cost.shape[0]):
    real = np.flatnonzero(valid[e])
    assert pair_valid[e].sum() == len(real)
    assert set(tgt[e][pair_valid[e]].tolist()) == set(real.tolist())
    got = cost[e][pred[e][pair_valid[e]], tgt[e][pair_valid[e]]].astype(np.float64).sum()
    sub = cost[e][:, real]
    want = optimum(sub[None])[0]
    np.testing.assert_allclose(got, want, rtol=0, atol=tolerance(sub[None]))


def test_detr_sized_padded_matches_scipy_well_under_the_cap(detr_batch):
  kinds, cost, valid = detr_batch
  # One compile for the whole batch; _hungarian_padded is the public function
  # plus the search steps of each element.
  pred, tgt, pair_valid, iters = map(np.asarray, jax.jit(M._hungarian_padded)(
      jnp.asarray(cost), jnp.asarray(valid)))
  check_assignment(cost, pred, tgt)
  check_real_optimum(cost, valid, pred, tgt, pair_valid)
  # Measured here: DETR costs <= 686 steps (100 targets), collapsed queries
  # 2625 (at most 4337 over 16 seeds), ties <= 134; each padding target takes
  # one step. The cap is 20101 (worst case: the next test).
  cap = M._max_iters(T_MAX, Q)
  assert iters.max() <= cap // 4, dict(zip(kinds, iters))


def test_search_steps_worst_case_reaches_half_the_cap():
  # Adding target r takes at most 2r + 1 search steps (M._max_iters), n^2 in
  # all, half the cap. c = q * t reaches that bound exactly: every new target
  # re-routes all earlier ones (the optimum pairs large q with small t). So the
  # cap leaves a factor 2 even in the worst case, and is never what stops an
  # exact search.
  q, t = np.indices((Q, T_MAX))
  cost = np.stack([q * t, -q * t]).astype(np.float32)  # [2, Q, T]: N >= M
  pred, tgt, iters = map(np.asarray, jax.jit(M._hungarian)(jnp.asarray(cost)))
  check_optimal(cost, lambda c: (pred, tgt))
  n = T_MAX
  assert iters[0] == n * n and iters.max() <= n * n
  assert n * n <= M._max_iters(n, Q) // 2


def test_detr_sized_large_cost_padding_matches_scipy(detr_batch):
  # The criterion's other padding (greedy, scipy, any callable matcher): one
  # constant above every real cost on the padding targets, unpadded matcher.
  from swin_jax.detection.criterion import match
  _, cost, valid = detr_batch
  pred, tgt, pair_valid = map(np.asarray, jax.jit(
      lambda c, v: match(c, v, M.hungarian_matcher))(jnp.asarray(cost), jnp.asarray(valid)))
  check_assignment(cost, pred, tgt)
  check_real_optimum(cost, valid, pred, tgt, pair_valid)


# ---- greedy, scipy, registry --------------------------------------------------


@pytest.mark.parametrize('shape', [(7, 4), (4, 7), (30, 10)])
def test_greedy_valid_not_better_than_optimal(shape):
  rng = np.random.default_rng(8)
  cost = rng.random((8,) + shape, dtype=np.float32)
  pred, tgt = jax.jit(M.greedy_matcher)(jnp.asarray(cost))
  check_assignment(cost, pred, tgt)
  assert (totals(cost, pred, tgt) >= optimum(cost) - 1e-5).all()
  # Greedy takes the globally cheapest pair first.
  flat = cost.reshape(8, -1).argmin(1)
  for e in range(8):
    i, j = divmod(flat[e], shape[1])
    assert j in tgt[e][pred[e] == i]


@pytest.mark.parametrize('shape', [(7, 4), (4, 7)])
def test_scipy_matcher_equals_scipy(shape):
  rng = np.random.default_rng(9)
  cost = rng.random((8,) + shape, dtype=np.float32)
  pred, tgt = jax.jit(M.scipy_matcher)(jnp.asarray(cost))
  check_assignment(cost, pred, tgt)
  np.testing.assert_allclose(totals(cost, pred, tgt), optimum(cost), rtol=1e-12)
  ref_p, ref_t = M.linear_sum_assignment(cost)
  np.testing.assert_array_equal(pred, ref_p)
  np.testing.assert_array_equal(tgt, ref_t)
  # Under vmap (extra leading dim): one host call for the whole batch.
  p2, t2 = jax.jit(jax.vmap(M.scipy_matcher))(jnp.asarray(cost[None].repeat(2, 0)))
  np.testing.assert_array_equal(p2[1], ref_p)
  np.testing.assert_array_equal(t2[0], ref_t)


def test_registry():
  assert set(M.MATCHERS) == {'hungarian', 'greedy', 'scipy'}
  assert M.get_matcher('hungarian') is M.hungarian_matcher
  assert M.get_matcher('greedy') is M.greedy_matcher
  assert M.get_matcher('scipy') is M.scipy_matcher
  with pytest.raises(ValueError, match='hungarian'):
    M.get_matcher('auction')
