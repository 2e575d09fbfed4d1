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


def test_empty_and_nonfinite_terminate():
  p, t = M.hungarian_matcher(jnp.zeros((2, 0, 5)))
  assert p.shape == t.shape == (2, 0)
  p, t, v = M.hungarian_matcher_padded(jnp.zeros((2, 5, 0)), jnp.zeros((2, 0), bool))
  assert p.shape == t.shape == v.shape == (2, 0)
  # nan costs are unsupported, but the loop must still end (iteration cap).
  cost = np.random.default_rng(4).random((8, 7, 4)).astype(np.float32)
  cost[0, 1, 2] = np.nan
  cost[1] = np.nan
  p, t = hungarian(jnp.asarray(cost))
  jax.block_until_ready((p, t))


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
