"""Bipartite matchers for set prediction (DETR): exact Hungarian in pure JAX.

All matchers take ``cost [B, N, M]`` (N predictions, M targets; lower is
better) and return ``(pred_idx, tgt_idx)``, int32 ``[B, K]`` with
``K = min(N, M)``: for each batch element, K pairs ``(pred_idx[b, k],
tgt_idx[b, k])`` that use every prediction and every target at most once.

Ordering of the pairs: the smaller side comes in order.

* ``N >= M`` (the DETR case, more queries than objects): ``tgt_idx[b] ==
  arange(M)``, i.e. the pairs are sorted by target, and ``pred_idx[b, k]`` is the
  prediction matched to target k.
* ``N < M``: ``pred_idx[b] == arange(N)`` (sorted by prediction, scipy's
  row-sorted order) and ``tgt_idx[b, k]`` is the target matched to prediction k.

Set losses only sum over the pairs, so the order does not change them.

Matchers (``MATCHERS`` / ``get_matcher(name)`` for configs):

* ``hungarian`` (``hungarian_matcher``): exact minimum-cost assignment, pure JAX
  (no host callback): jit, vmap, any backend.
* ``greedy`` (``greedy_matcher``): repeatedly takes the globally cheapest
  remaining (prediction, target) pair; a fast, not optimal, baseline.
* ``scipy`` (``scipy_matcher``): ``scipy.optimize.linear_sum_assignment`` on the
  host through ``jax.pure_callback`` (jittable; copies the costs to the host).

Padding: ``hungarian_matcher_padded(cost, tgt_valid)`` takes targets padded to a
fixed ``M_max`` (static shapes) and returns the pairs plus a validity mask.

The Hungarian algorithm here is the shortest augmenting path method with dual
potentials (Jonker-Volgenant; the variant of Crouse 2016 that scipy's
``linear_sum_assignment`` implements), rewritten for fixed-size arrays:

* The smaller side is made the rows (``n <= m``); rows are added one at a time,
  each by a Dijkstra search over columns for the cheapest augmenting path
  (one ``O(m)`` vector step per visited column), then the path is flipped. The
  worst case is ``O(n^2 m)``; on DETR-like costs most rows find a free column in
  one or two steps.
* Only column potentials are stored: the potential of a matched row is implied
  by its matched edge being tight (``u_i = C[i, col(i)] - v[col(i)]``).
* The Dijkstra steps, the path flip and the move to the next row form a single
  ``lax.while_loop`` (a small state machine) rather than nested loops, so the
  batch runs ``max_b(total steps of b)`` iterations instead of ``sum over rows
  of max_b(steps of that row)``. The loop carries the batched state and only
  the step is vmapped (a finished element's step is a no-op), which avoids
  vmap-of-while's per-iteration select of the whole state; two steps run per
  loop iteration. Ties prefer a free column (scipy's rule), which keeps cost
  matrices with many equal entries fast.
* Each row's costs are shifted by the row minimum first (every row is matched
  exactly once, so this changes no optimum) to keep float32 reduced costs small.

Numerics: the computation runs in the cost's floating dtype (float32 by
default; float64 if the input is float64 with ``jax_enable_x64``; integer and
half-precision costs are promoted to at least float32). The result is optimal up
to float rounding: ties closer than about ``K * eps * max|C|`` may be broken
either way (``eps`` of the dtype), so with float32 and entries of 1e6 the total
cost matches the float64 optimum to about 1e-7 relative to ``K * max|C|``.

Non-finite costs (a diverged prediction gives a NaN row; ``+inf`` marks a
forbidden pair). Every matcher here returns a valid assignment for any input:
distinct prediction indices in ``[0, N)`` and distinct target indices in
``[0, M)`` (before, NaN gave ``-1`` or repeated indices, which a gather wraps
silently to the last query). Each batch element's costs are first sanitised:
with ``lo`` / ``hi`` the smallest / largest finite cost of the element (of its
real targets when padded; 0 if there is none) and
``P = (2K + 1) * max(hi - lo, |lo|, |hi|)`` (1 instead of 0), ``nan`` and
``+inf`` become ``hi + P`` and ``-inf`` becomes ``lo - P``; ``hungarian`` and
``scipy`` return an optimal assignment of that sanitised matrix (``greedy`` its
greedy one). Any two assignments' finite parts differ by at most
``K * (hi - lo) < P``, so the optimum first minimises
``#(nan or +inf pairs) - #(-inf pairs)``, then the cost with those entries
counted as ``hi`` / ``lo``. In particular, without ``-inf`` entries: whenever an
assignment avoids every ``nan`` / ``+inf`` entry the result avoids them too and
is the finite optimum (scipy's rule for ``+inf``: forbidden if avoidable), so a
NaN query is left unmatched when there are spare queries. With non-finite
entries the rounding bound above uses ``max|C|`` of the sanitised matrix.
Should the search ever stop at its iteration cap (it cannot with finite costs),
the rows left over get the unused columns in order: still an assignment, no
longer optimal.
"""
import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize

__all__ = [
    'hungarian_matcher', 'hungarian_matcher_padded', 'greedy_matcher',
    'scipy_matcher', 'linear_sum_assignment', 'MATCHERS', 'get_matcher',
]


def _float_cost(cost):
  """Casts costs to a floating dtype of at least float32."""
  cost = jnp.asarray(cost)
  return cost.astype(jnp.promote_types(cost.dtype, jnp.float32))


def _sanitize(cost, real=None):
  """Non-finite costs -> finite ones, per batch element (module docstring).

  Args:
    cost: [B, n, m] float costs.
    real: optional bool, broadcastable to ``cost``: the entries that count
      (padding excluded) for the finite range ``lo`` .. ``hi``.

  Returns:
    [B, n, m] finite costs (identical where ``cost`` is finite).
  """
  k = min(cost.shape[1:])
  big = jnp.finfo(cost.dtype).max
  finite = jnp.isfinite(cost)
  ok = finite if real is None else finite & real
  axes = (1, 2)
  lo = jnp.min(jnp.where(ok, cost, big), axis=axes, keepdims=True)
  hi = jnp.max(jnp.where(ok, cost, -big), axis=axes, keepdims=True)
  any_ok = jnp.any(ok, axis=axes, keepdims=True)
  lo = jnp.where(any_ok, lo, 0)
  hi = jnp.where(any_ok, hi, 0)
  # The gap must exceed K * (hi - lo) (the most two assignments' finite parts
  # can differ) by more than the rounding of hi + gap: a scale of at least
  # |hi| keeps it clear of the ulp of hi (an offset like 1e10 + small ints).
  scale = jnp.maximum(hi - lo, jnp.maximum(jnp.abs(lo), jnp.abs(hi)))
  scale = jnp.where(scale > 0, scale, 1)
  gap = (2 * k + 1) * scale
  # Clipped so that costs near the float maximum still give finite entries.
  pos = jnp.minimum(hi + gap, big)
  neg = jnp.maximum(lo - gap, -big)
  return jnp.where(finite, cost, jnp.where(cost < 0, neg, pos))  # nan < 0: False


def _complete(col4row, m):
  """Makes col4row [B, n] (n <= m) an assignment: distinct columns in [0, m).

  The identity on a valid assignment (every exact search ends in one). Only if
  the search stopped at its cap: each column keeps its first row, and the other
  rows (unmatched, out of range or repeated) get the unused columns in order.
  """
  n = col4row.shape[1]
  rows = jnp.arange(n, dtype=jnp.int32)

  def one(c):
    inside = (c >= 0) & (c < m)
    slot = jnp.where(inside, c, m)  # m: a bin for the rows without a column
    first = jnp.full(m + 1, n, jnp.int32).at[slot].min(rows)
    keep = inside & (first[slot] == rows)
    used = jnp.zeros(m + 1, bool).at[jnp.where(keep, c, m)].set(True)[:m]
    unused = jnp.nonzero(~used, size=n, fill_value=0)[0].astype(jnp.int32)
    rank = jnp.cumsum(~keep) - 1  # rank among the rows that lost their column
    return jnp.where(keep, c, unused[jnp.clip(rank, 0, n - 1)])

  return jax.vmap(one)(col4row)


def _max_iters(n, m):
  """Search steps after which ``_lsa_rows`` stops (a guard, not a budget).

  Adding row r takes at most r + 1 Dijkstra steps (each visits a new column,
  and after the r matched ones the next is free) and r + 1 flip steps, the
  last Dijkstra step and the first flip sharing one step: 2r + 1, n^2 in all
  (c[i, j] = i * j takes exactly that; tests/test_matchers.py). The cap is at
  least twice that, so only a broken search (non-finite costs, which
  sanitising removes) reaches it.
  """
  return n * (m + n) + n + 1


_UNROLL = 2  # search steps per while-loop iteration (fewer loop overheads)


def _lsa_rows(cost, col_pad=None, unroll=_UNROLL):
  """Exact assignment of every row of a batch of cost matrices with n <= m.

  Args:
    cost: [B, n, m] float costs, n <= m, finite (``_sanitize``).
    col_pad: optional [B, m] bool, True for padding columns. Padding columns
      are used only once every real column is taken (a padding column never
      takes a row while a real column is free), and the rows matched to real
      columns form an optimal assignment of the real sub-matrix.
    unroll: search steps per iteration of the while loop.

  Returns:
    col4row: [B, n] int32, the column of each row (all distinct per element).
    iters: [B] int32, search steps each element took (the loop stops at
      ``_max_iters(n, m)``); for tests of the headroom under the cap.
  """
  n, m = cost.shape[1:]
  dtype = cost.dtype
  inf = jnp.asarray(jnp.inf, dtype)
  zero = jnp.asarray(0, dtype)
  cols = jnp.arange(m, dtype=jnp.int32)
  padded = col_pad is not None

  if padded:
    real = ~col_pad[:, None, :]
    rmin = jnp.min(jnp.where(real, cost, inf), axis=2, keepdims=True)
    rmin = jnp.where(jnp.isfinite(rmin), rmin, zero)
    cost = jnp.where(real, cost, zero) - rmin
    # A padding entry costs (pad_cost + pad_base[i]) in shifted units: the same
    # constant pad_cost for every row in the original units, as it must be.
    pad_base = -rmin[:, :, 0]  # [B, n]
    n_real = jnp.sum(~col_pad, axis=1).astype(jnp.int32)  # [B]
  else:
    cost = cost - jnp.min(cost, axis=2, keepdims=True)
    col_pad = jnp.zeros(cost.shape[:1], bool)  # unused placeholders
    pad_base = jnp.zeros(cost.shape[:1], dtype)
    n_real = jnp.zeros(cost.shape[:1], jnp.int32)

  max_iters = _max_iters(n, m)

  def body(cost, col_pad, pad_base, s):
    """One search step + one path-flip step for one element; cost [n, m]."""
    (v, row4col, col4row, d, path, sc, cur, i, jprev, minval, aug, aug_j, it,
     allow_pad, pad_cost, real_free) = s
    active = cur < n  # finished: a no-op (its step count stays as it was)
    dijkstra = ~aug & active & (it < max_iters)

    # ---- one Dijkstra step: scan row i (reached through column jprev).
    row = cost[i]  # [m]
    if padded:
      row = jnp.where(col_pad, pad_cost + pad_base[i], row)
      forbidden = sc | (col_pad & ~allow_pad)
    else:
      forbidden = sc
    jp = jnp.maximum(jprev, 0)
    u_i = jnp.where(jprev >= 0, row[jp] - v[jp], zero)  # implied row potential
    r = (minval - u_i) + row - v  # [m] path cost through row i
    upd = dijkstra & ~forbidden & (r < d)
    d = jnp.where(upd, r, d)
    path = jnp.where(upd, i, path)
    dm = jnp.where(forbidden, inf, d)
    lowest = jnp.min(dm)
    free = row4col < 0
    # The cheapest column; among equally cheap ones prefer a free one (ends the
    # search sooner; scipy's rule).
    key = jnp.where(dm == lowest, jnp.where(free, cols, cols + m), 2 * m)
    j = jnp.min(key) % m
    sink = dijkstra & free[j]
    sc = sc | (dijkstra & (cols == j))
    # Sink reached: update the column potentials of the visited columns.
    v = jnp.where(sink & sc, v + d - lowest, v)
    step = dijkstra & ~sink
    i = jnp.where(step, row4col[j], i)
    jprev = jnp.where(step, j, jprev)
    minval = jnp.where(step, lowest, minval)
    aug = aug | sink
    aug_j = jnp.where(sink, j, aug_j)
    if padded:
      real_free = real_free - (sink & ~col_pad[j]).astype(jnp.int32)

    # ---- one step of flipping the augmenting path (sink back to row cur).
    ia = path[aug_j]
    nxt = col4row[ia]
    row4col = jnp.where(aug & (cols == aug_j), ia, row4col)
    col4row = jnp.where(aug & (jnp.arange(n) == ia), aug_j, col4row)
    aug_j = jnp.where(aug, nxt, aug_j)
    done_row = aug & (ia == cur)

    # ---- row done: start the next one.
    cur = cur + done_row.astype(jnp.int32)
    i = jnp.where(done_row, cur, i)
    jprev = jnp.where(done_row, -1, jprev)
    minval = jnp.where(done_row, zero, minval)
    d = jnp.where(done_row, inf, d)
    sc = sc & ~done_row
    aug = aug & ~done_row
    if padded:
      # All real columns taken: open the padding columns, at a cost that keeps
      # every reduced cost of a matched row non-negative (any constant gives
      # the same optimum: each later row adds exactly one padding column).
      switch = done_row & ~allow_pad & (real_free == 0)
      safe = jnp.maximum(col4row, 0)
      u = cost[jnp.arange(n), safe] - v[safe] - pad_base  # [n]
      u = jnp.max(jnp.where(col4row >= 0, u, -inf))
      pad_cost = jnp.where(switch & (u > -inf), u, pad_cost)
      allow_pad = allow_pad | switch
    return (v, row4col, col4row, d, path, sc, cur, i, jprev, minval, aug,
            aug_j, it + active.astype(jnp.int32), allow_pad, pad_cost, real_free)

  def init(n_real):
    i32 = lambda x: jnp.asarray(x, jnp.int32)
    return (
        jnp.zeros(m, dtype),  # v: column potentials
        jnp.full(m, -1, jnp.int32),  # row4col
        jnp.full(n, -1, jnp.int32),  # col4row
        jnp.full(m, jnp.inf, dtype),  # d: shortest path costs
        jnp.zeros(m, jnp.int32),  # path: row that reached each column
        jnp.zeros(m, bool),  # sc: visited columns
        i32(0),  # cur: row being added
        i32(0),  # i: row being scanned
        i32(-1),  # jprev: column through which i was reached
        zero,  # minval
        jnp.asarray(False),  # aug: flipping the path
        i32(0),  # aug_j
        i32(0),  # it
        n_real == 0,  # allow_pad
        zero,  # pad_cost
        n_real,  # real_free: free real columns
    )

  batched_body = jax.vmap(body)

  def loop_body(s):
    for _ in range(unroll):
      s = batched_body(cost, col_pad, pad_base, s)
    return s

  def cond(s):
    return jnp.any((s[6] < n) & (s[12] < max_iters))

  # The loop runs on the batched state (the body is vmapped, not the loop):
  # finished elements are no-ops without per-iteration selects of the state.
  out = jax.lax.while_loop(cond, loop_body, jax.vmap(init)(n_real))
  return _complete(out[2], m), out[12]


def _empty(cost):
  b = cost.shape[0]
  z = jnp.zeros((b, 0), jnp.int32)
  return z, z


def _hungarian(cost):
  """``hungarian_matcher`` plus the search steps [B] (0 for empty costs)."""
  cost = _float_cost(cost)
  b, n, m = cost.shape
  if n == 0 or m == 0:
    return _empty(cost) + (jnp.zeros(b, jnp.int32),)
  cost = _sanitize(cost)
  k = min(n, m)
  ar = jnp.broadcast_to(jnp.arange(k, dtype=jnp.int32), (b, k))
  if n >= m:
    pred_idx, iters = _lsa_rows(jnp.swapaxes(cost, 1, 2))
    return pred_idx, ar, iters
  tgt_idx, iters = _lsa_rows(cost)
  return ar, tgt_idx, iters


def hungarian_matcher(cost):
  """Exact minimum-cost bipartite matching, batched, pure JAX.

  Args:
    cost: [B, N, M] costs; nan / inf entries are sanitised (module docstring).

  Returns:
    (pred_idx, tgt_idx): int32 [B, min(N, M)] of an optimal assignment per
    batch element. N >= M: tgt_idx[b] = arange(M) (sorted by target);
    N < M: pred_idx[b] = arange(N) (sorted by prediction).
  """
  return _hungarian(cost)[:2]


def _hungarian_padded(cost, tgt_valid):
  """``hungarian_matcher_padded`` plus the search steps [B] (0 for empty)."""
  cost = _float_cost(cost)
  tgt_valid = jnp.asarray(tgt_valid, bool)
  b, n, m = cost.shape
  if n == 0 or m == 0:
    p, t = _empty(cost)
    return p, t, jnp.zeros((b, 0), bool), jnp.zeros(b, jnp.int32)
  k = min(n, m)
  ar = jnp.broadcast_to(jnp.arange(k, dtype=jnp.int32), (b, k))
  if n >= m:
    # Targets are the rows. A padding row of constant cost changes no real
    # row's optimum: every target is matched, and all completions of the real
    # rows cost the same.
    real = tgt_valid[:, :, None]
    rows = jnp.where(real, jnp.swapaxes(cost, 1, 2), 0)
    pred_idx, iters = _lsa_rows(_sanitize(rows, real))
    return pred_idx, ar, tgt_valid, iters
  tgt_idx, iters = _lsa_rows(_sanitize(cost, tgt_valid[:, None, :]), ~tgt_valid)
  return ar, tgt_idx, jnp.take_along_axis(tgt_valid, tgt_idx, axis=1), iters


def hungarian_matcher_padded(cost, tgt_valid):
  """Exact matching with targets padded to a fixed maximum.

  The real targets (``tgt_valid``) get an optimal assignment among themselves
  (the optimum of the sub-matrix of real targets, sanitised as the module
  docstring says), and a padding target never takes a prediction while a real
  target is unmatched. Padding targets are then paired with leftover
  predictions so the pairs still use each prediction and target at most once;
  ``pair_valid`` marks the pairs with a real target.

  Args:
    cost: [B, N, M_max] costs; entries of padding targets are ignored.
    tgt_valid: [B, M_max] bool, True for real targets.

  Returns:
    (pred_idx, tgt_idx, pair_valid): [B, K] int32, int32, bool with
    K = min(N, M_max), in the order of ``hungarian_matcher``.
  """
  return _hungarian_padded(cost, tgt_valid)[:3]


def greedy_matcher(cost):
  """Greedy matching: repeatedly takes the cheapest remaining pair (not optimal).

  Args:
    cost: [B, N, M] costs.

  Returns:
    (pred_idx, tgt_idx): int32 [B, min(N, M)], in the order of
    ``hungarian_matcher``.
  """
  cost = _float_cost(cost)
  b, n, m = cost.shape
  if n == 0 or m == 0:
    return _empty(cost)
  cost = _sanitize(cost)  # finite: the inf that marks a taken row is then unique
  transpose = n >= m
  c = jnp.swapaxes(cost, 1, 2) if transpose else cost  # [B, k, l], k <= l
  k, l = c.shape[1:]

  def one(c):
    def step(_, s):
      masked, col4row = s
      flat = jnp.argmin(masked)
      r, q = flat // l, flat % l
      col4row = col4row.at[r].set(q.astype(jnp.int32))
      masked = masked.at[r, :].set(jnp.inf).at[:, q].set(jnp.inf)
      return masked, col4row
    _, col4row = jax.lax.fori_loop(
        0, k, step, (c, jnp.zeros(k, jnp.int32)))
    return col4row

  other = jax.vmap(one)(c)
  ar = jnp.broadcast_to(jnp.arange(k, dtype=jnp.int32), (b, k))
  return (other, ar) if transpose else (ar, other)


def linear_sum_assignment(cost):
  """NumPy/scipy reference with this module's conventions (host, not jittable).

  Args:
    cost: [B, N, M] array-like (float64 is used on the host).

  Returns:
    (pred_idx, tgt_idx): NumPy int32 [B, min(N, M)].
  """
  cost = np.asarray(cost, np.float64)
  b, n, m = cost.shape
  k = min(n, m)
  pred = np.empty((b, k), np.int32)
  tgt = np.empty((b, k), np.int32)
  for e in range(b):
    if n >= m:
      t, p = scipy.optimize.linear_sum_assignment(cost[e].T)
    else:
      p, t = scipy.optimize.linear_sum_assignment(cost[e])
    pred[e], tgt[e] = p, t
  return pred, tgt


def _scipy_host(cost):
  cost = np.asarray(cost)
  lead = cost.shape[:-2]
  p, t = linear_sum_assignment(cost.reshape((-1,) + cost.shape[-2:]))
  k = p.shape[-1]
  return p.reshape(lead + (k,)), t.reshape(lead + (k,))


def scipy_matcher(cost):
  """``scipy.optimize.linear_sum_assignment`` through ``jax.pure_callback``.

  Jittable and vmappable (the batch goes to the host in one call). For
  comparison and debugging: every call copies the costs to the host.

  Args:
    cost: [B, N, M] costs.

  Returns:
    (pred_idx, tgt_idx): int32 [B, min(N, M)], in the order of
    ``hungarian_matcher``.
  """
  cost = _float_cost(cost)
  b, n, m = cost.shape
  if n == 0 or m == 0:
    return _empty(cost)
  shape = jax.ShapeDtypeStruct((b, min(n, m)), jnp.int32)
  # Sanitised as the other matchers (scipy refuses nan and infeasible inf).
  return jax.pure_callback(_scipy_host, (shape, shape), _sanitize(cost),
                           vmap_method='broadcast_all')


MATCHERS = {
    'hungarian': hungarian_matcher,
    'greedy': greedy_matcher,
    'scipy': scipy_matcher,
}


def get_matcher(name):
  """The matcher called ``name``: 'hungarian' | 'greedy' | 'scipy'."""
  try:
    return MATCHERS[name]
  except KeyError:
    raise ValueError(
        f'Unknown matcher {name!r}; choose one of {sorted(MATCHERS)}.') from None
