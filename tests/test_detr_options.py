"""DETR's fast-convergence options (each off by default): fused attention with masks,
Deformable DETR's sigmoid focal loss and focal matching cost, DN-DETR's denoising queries,
Group DETR's query groups, H-DETR's hybrid matching (one-to-many branch).

References are written out here in numpy (the focal loss and Deformable DETR's
``pos_cost_class - neg_cost_class``, softmax attention), by hand (the DN and group attention
masks), by scipy (matching) or by the one-group model / criterion run per group (Group DETR),
and the branch run as a DETR of its own queries (H-DETR).
"""
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from swin_jax.detection import criterion as crit
from swin_jax.models import create_model
from swin_jax.models import detr as detr_lib
from swin_jax.models import layers
from swin_jax.train import tasks


# ---------------------------------------------------------------- attention


def _np_attention(params, q_in, k_in, v_in, heads, allowed):
  """Softmax attention of torch's MHA in numpy: allowed bool [B, h, Lq, Lk] or None."""
  w, b = (np.asarray(params['in_proj'][k], np.float64) for k in ('kernel', 'bias'))
  d = w.shape[0]
  q, k, v = (x @ w[:, i * d:(i + 1) * d] + b[i * d:(i + 1) * d]
             for i, x in enumerate((q_in, k_in, v_in)))
  B, Lq, Lk, hd = q.shape[0], q.shape[1], k.shape[1], d // heads
  q = q.reshape(B, Lq, heads, hd).transpose(0, 2, 1, 3)
  k = k.reshape(B, Lk, heads, hd).transpose(0, 2, 1, 3)
  v = v.reshape(B, Lk, heads, hd).transpose(0, 2, 1, 3)
  logits = q @ k.transpose(0, 1, 3, 2) / np.sqrt(hd)
  if allowed is not None:
    logits = np.where(allowed, logits, -np.inf)
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p = p / p.sum(-1, keepdims=True)
  out = (p @ v).transpose(0, 2, 1, 3).reshape(B, Lq, d)
  return out @ np.asarray(params['out_proj']['kernel']) + np.asarray(params['out_proj']['bias'])


@pytest.fixture(scope='module')
def mha():
  rng = np.random.default_rng(0)
  B, Lq, Lk, d, h = 2, 5, 7, 16, 4
  q = rng.normal(size=(B, Lq, d)).astype(np.float32)
  kv = rng.normal(size=(B, Lk, d)).astype(np.float32)
  kpm = np.zeros((B, Lk), bool)
  kpm[0, 5:] = True  # image 0: last two keys padded
  am = rng.random((Lq, Lk)) > 0.4
  am[:, 0] = True  # every query keeps one key
  module = detr_lib.MultiheadAttention(d, h)
  params = jax.jit(module.init)(jax.random.key(0), q, kv, kv)["params"]
  return module, params, q, kv, kpm, am, h


@pytest.mark.parametrize('impl', ['einsum', 'xla'])  # the CPU and the TPU formulation
def test_attention_masks_match_numpy(mha, impl, monkeypatch):
  # DETR's attention is layers.dot_product_attention: force its formulation
  monkeypatch.setattr(layers, 'attention_implementation', lambda *a, **k: impl)
  module, params, q, kv, kpm, am, h = mha
  allowed = (~kpm)[:, None, None, :] & am[None, None]
  fn = jax.jit(lambda q, kv, kpm, am: module.apply({'params': params}, q, kv, kv, kpm,
                                                    attn_mask=am))
  got = np.asarray(fn(q, kv, kpm, am))
  want = _np_attention(params, q, kv, kv, h, np.broadcast_to(allowed, (2, h, 5, 7)))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # the mask matters (guards against an ignored attn_mask)
  unmasked = _np_attention(params, q, kv, kv, h, None)
  assert np.max(np.abs(got - unmasked)) > 1e-2
  # a per-head, per-image [B, h, Lq, Lk] mask is taken too, and an attn_mask alone
  am4 = np.broadcast_to(am, (2, h, 5, 7)).copy()
  am4[1, 2, :, 1:] = False
  got4 = np.asarray(module.apply({'params': params}, q, kv, kv, kpm, attn_mask=am4))
  np.testing.assert_allclose(got4, _np_attention(params, q, kv, kv, h, (~kpm)[:, None, None]
                                                 & am4), rtol=1e-5, atol=1e-5)
  alone = np.asarray(module.apply({'params': params}, q, kv, kv, attn_mask=am))
  np.testing.assert_allclose(alone, _np_attention(params, q, kv, kv, h, am[None, None]),
                             rtol=1e-5, atol=1e-5)


def test_attention_dropout_and_bf16_softmax(mha):
  module, params, q, kv, kpm, am, h = mha
  allowed = (~kpm)[:, None, None, :] & am[None, None]
  d = q.shape[-1]
  want = _np_attention(params, q, kv, kv, h, np.broadcast_to(allowed, (2, h, 5, 7)))
  drop = detr_lib.MultiheadAttention(d, h, dropout=0.5)
  # dropout configured but deterministic (eval): the exact attention
  np.testing.assert_allclose(np.asarray(drop.apply({'params': params}, q, kv, kv, kpm, True,
                                                   am)), want, rtol=1e-5, atol=1e-5)
  # dropout on: rate 0.5 zeroes weights, the output changes and stays finite
  got = drop.apply({'params': params}, q, kv, kv, kpm, False, am,
                   rngs={'dropout': jax.random.key(3)})
  assert np.isfinite(np.asarray(got)).all() and np.max(np.abs(np.asarray(got) - want)) > 1e-3
  # bf16 compute: matmuls bf16, softmax float32: within bf16 rounding of the reference
  bf = detr_lib.MultiheadAttention(d, h, dtype=jnp.bfloat16)
  got = bf.apply({'params': params}, q, kv, kv, kpm, attn_mask=am)
  assert got.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=0, atol=0.06)


# ---------------------------------------------------------------- focal loss and cost

ALPHA, GAMMA = 0.25, 2.0


def _np_focal(x, t, alpha=ALPHA, gamma=GAMMA):
  x, t = np.asarray(x, np.float64), np.asarray(t, np.float64)
  p = 1 / (1 + np.exp(-x))
  ce = -(t * np.log(p) + (1 - t) * np.log(1 - p))
  p_t = p * t + (1 - p) * (1 - t)
  return (alpha * t + (1 - alpha) * (1 - t)) * ce * (1 - p_t) ** gamma


def _np_focal_cost(logits, labels, alpha=ALPHA, gamma=GAMMA):
  """Deformable DETR's matcher: pos_cost_class[:, tgt] - neg_cost_class[:, tgt]."""
  p = 1 / (1 + np.exp(-np.asarray(logits, np.float64)[..., :-1]))  # [B, Q, C]
  neg = (1 - alpha) * p ** gamma * -np.log(1 - p + 1e-8)
  pos = alpha * (1 - p) ** gamma * -np.log(p + 1e-8)
  return np.stack([(pos - neg)[b][:, labels[b]] for b in range(len(labels))])


@pytest.fixture(scope='module')
def det_case():
  rng = np.random.default_rng(1)
  B, Q, T, C = 2, 6, 3, 4
  logits = (rng.normal(size=(B, Q, C + 1)) * 2).astype(np.float32)
  boxes = np.concatenate([rng.uniform(0.3, 0.7, (B, Q, 2)), rng.uniform(0.1, 0.4, (B, Q, 2))],
                         -1).astype(np.float32)
  tlabels = rng.integers(0, C, (B, T)).astype(np.int32)
  tboxes = np.concatenate([rng.uniform(0.3, 0.7, (B, T, 2)), rng.uniform(0.1, 0.4, (B, T, 2))],
                          -1).astype(np.float32)
  valid = np.array([[True, True, False], [True, True, True]])
  return logits, boxes, tlabels, tboxes, valid, C


def test_focal_loss_elementwise_matches_numpy():
  x = np.linspace(-8, 8, 41, dtype=np.float32)[:, None].repeat(2, 1)
  t = np.array([0.0, 1.0], np.float32)[None].repeat(41, 0)
  np.testing.assert_allclose(np.asarray(crit.sigmoid_focal_loss(x, t, ALPHA, GAMMA)),
                             _np_focal(x, t), rtol=1e-5, atol=1e-7)


def test_focal_cost_matches_deformable_formula(det_case):
  logits, boxes, tlabels, tboxes, valid, C = det_case
  want = _np_focal_cost(logits, tlabels)

  @jax.jit
  def costs(logits, boxes, tlabels, tboxes):
    return (crit.focal_class_cost(logits, tlabels, ALPHA, GAMMA),
            crit.matching_cost(logits, boxes, tlabels, tboxes, 2.0, 5.0, 2.0, (ALPHA, GAMMA)),
            crit.matching_cost(logits, boxes, tlabels, tboxes, 0.0, 5.0, 2.0))
  got, full, boxes_only = costs(logits, boxes, tlabels, tboxes)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)
  # inside the full cost: weight 2 on the focal term, the box terms as DETR's
  np.testing.assert_allclose(np.asarray(full - boxes_only), 2.0 * want, rtol=1e-5, atol=1e-5)


def test_focal_set_loss_matches_numpy(det_case):
  logits, boxes, tlabels, tboxes, valid, C = det_case
  c = crit.SetCriterion(C, weights=crit.FOCAL_WEIGHTS, cost_weights=crit.FOCAL_COST_WEIGHTS,
                        aux_loss=False, focal=(ALPHA, GAMMA))
  tg = {'labels': tlabels, 'boxes': tboxes, 'valid': valid}

  @jax.jit
  def run(logits):  # one compile: loss, metrics, matching, cost, gradient
    loss = lambda l: c({'pred_logits': l, 'pred_boxes': boxes}, tg)
    (total, m), g = jax.value_and_grad(loss, has_aux=True)(logits)
    cost = crit.matching_cost(logits, boxes, tlabels, tboxes, 2.0, 5.0, 2.0, (ALPHA, GAMMA))
    return total, m, c.match({'pred_logits': logits, 'pred_boxes': boxes}, tg), cost, g
  total, m, idx, cost, g = run(jnp.asarray(logits))
  pred_idx, tgt_idx, pair_valid = (np.asarray(a) for a in idx)
  onehot = np.zeros(logits.shape[:2] + (C,))
  for b in range(2):
    for p, t, ok in zip(pred_idx[b], tgt_idx[b], pair_valid[b]):
      if ok:
        onehot[b, p, tlabels[b, t]] = 1
  num_boxes = valid.sum()
  # Deformable DETR: focal.mean(1).sum() / num_boxes * Q == sum over all / num_boxes
  want_ce = _np_focal(logits[..., :-1], onehot).mean(1).sum() / num_boxes * logits.shape[1]
  np.testing.assert_allclose(float(m['loss_ce']), want_ce, rtol=1e-5)
  np.testing.assert_allclose(float(total), 2 * want_ce + 5 * float(m['loss_bbox'])
                             + 2 * float(m['loss_giou']), rtol=1e-5)
  # the matching is the optimum of the focal cost (scipy)
  import scipy.optimize
  cost = np.asarray(cost)
  for b in range(2):
    r, cc = scipy.optimize.linear_sum_assignment(cost[b][:, valid[b]])
    mine = sorted((p, t) for p, t, ok in zip(pred_idx[b], tgt_idx[b], pair_valid[b]) if ok)
    assert mine == sorted(zip(r, np.flatnonzero(valid[b])[cc]))
  # the no-object column gets no gradient under focal
  assert np.all(np.asarray(g)[..., -1] == 0) and np.any(np.asarray(g)[..., :-1] != 0)


def test_loss_config_fields_are_checked():
  cfg = lambda **kw: ml_collections.ConfigDict({'classification': 'softmax', **kw})
  assert tasks.focal_options(cfg()) is None
  assert tasks.focal_options(cfg(classification='focal')) == (0.25, 2.0)
  with pytest.raises(ValueError, match='config.loss.classification'):
    tasks.focal_options(cfg(classification='sigmoid'))
  with pytest.raises(ValueError, match='config.loss.focal_alpha'):
    tasks.focal_options(cfg(classification='focal', focal_alpha=1.5))
  with pytest.raises(ValueError, match='config.model.dn_groups'):
    create_model('detr_resnet50', dn_groups=-1).init(jax.random.key(0),
                                                    jnp.zeros((1, 32, 32, 3)))


# ---------------------------------------------------------------- denoising queries


def test_dn_attention_mask_written_out():
  # 2 matching queries (m), 2 groups (a, b) of 2 dn queries; rows attend to columns.
  #                m m a a b b
  want = np.array([[1, 1, 0, 0, 0, 0],   # m: matching only
                   [1, 1, 0, 0, 0, 0],
                   [1, 1, 1, 1, 0, 0],   # a: matching + own group
                   [1, 1, 1, 1, 0, 0],
                   [1, 1, 0, 0, 1, 1],   # b
                   [1, 1, 0, 0, 1, 1]], bool)
  np.testing.assert_array_equal(np.asarray(detr_lib.dn_attention_mask(2, 2, 2)), want)
  # second target of each group padded: its column hidden from every row
  got = np.asarray(detr_lib.dn_attention_mask(2, 2, 2, np.array([[True, False, True, False]])))
  want_p = want.copy()
  want_p[:, [3, 5]] = False
  np.testing.assert_array_equal(got[0, 0], want_p)


def test_dn_noise_statistics():
  B, T, G, C, lam = 4, 250, 5, 10, 0.4
  rng = np.random.default_rng(2)
  labels = rng.integers(0, C, (B, T)).astype(np.int32)
  wh = rng.uniform(0.05, 0.3, (B, T, 2))
  boxes = np.concatenate([rng.uniform(0.35, 0.65, (B, T, 2)), wh], -1).astype(np.float32)
  valid = np.ones((B, T), bool)
  valid[:, -50:] = False
  nl, nb, gl, gb, dv = (np.asarray(a) for a in jax.jit(
      detr_lib.dn_noise, static_argnums=(4, 5))(jax.random.key(0), labels, boxes, valid,
                                               G, C, 0.2, lam))
  assert nl.shape == (B, G * T) and nb.shape == (B, G * T, 4)
  np.testing.assert_array_equal(gl[:, :T][valid], labels[valid])  # group 0 = the targets
  np.testing.assert_array_equal(gl, np.tile(np.where(valid, labels, 0), (1, G)))
  np.testing.assert_array_equal(dv, np.tile(valid, (1, G)))
  n = dv.sum()
  # label: replaced with p 0.2 by a uniform class, so it differs with p 0.2 * (C - 1) / C
  p_flip = 0.2 * (C - 1) / C
  flips = (nl != gl)[dv].mean()
  assert abs(flips - p_flip) < 4 * np.sqrt(p_flip * (1 - p_flip) / n), flips
  assert np.all(nl[~dv] == 0)
  # boxes: centre shift within +-lam * w / 2, size change within +-lam * w, both uniform
  nb, gb = nb[dv], gb[dv]
  u_c = (nb[:, :2] - gb[:, :2]) / (lam * gb[:, 2:] / 2)
  u_s = (nb[:, 2:] - gb[:, 2:]) / (lam * gb[:, 2:])
  for u in (u_c, u_s):  # no clipping here (boxes well inside the image)
    assert np.abs(u).max() <= 1 + 1e-5
    assert abs(u.mean()) < 4 * np.sqrt(1 / 3 / u.size)
    assert abs(u.var() - 1 / 3) < 0.02  # U(-1, 1): var 1/3; sd of the estimate ~0.002
  assert (nb >= 0).all() and (nb <= 1).all()


TINY = dict(backbone_depths=(1,), backbone_width=8, backbone_norm='group',
            hidden_dim=32, nheads=4, enc_layers=1, dec_layers=2, dim_feedforward=64,
            num_queries=5, num_classes=4, dropout=0.0, dn_groups=3, class_prior_prob=0.01)


def _targets(pad_label=0, pad_box=0.5):
  labels = np.array([[1, 3, pad_label], [2, pad_label, pad_label]], np.int32)
  boxes = np.full((2, 3, 4), pad_box, np.float32)
  boxes[0, :2] = [[0.3, 0.4, 0.2, 0.3], [0.6, 0.6, 0.3, 0.2]]
  boxes[1, 0] = [0.5, 0.5, 0.4, 0.4]
  valid = np.array([[True, True, False], [True, False, False]])
  return {'labels': labels, 'boxes': boxes, 'valid': valid}


def _other_targets():
  """Other real ground truth (labels, boxes, count) than ``_targets``."""
  t = _targets()
  t['labels'] = np.array([[0, 2, 1], [3, 3, 0]], np.int32)
  t['boxes'] = np.array([[[0.7, 0.2, 0.3, 0.3], [0.2, 0.8, 0.2, 0.2], [0.5, 0.5, 0.5, 0.6]],
                         [[0.4, 0.3, 0.2, 0.5], [0.6, 0.6, 0.3, 0.3], [0.5, 0.5, 0.1, 0.1]]],
                        np.float32)
  t['valid'] = np.array([[True, True, True], [True, True, False]])
  return t


# The tiny DN model is also a Group DETR (2 groups of 5 queries): the dn tests hold with
# groups, and the group tests below share its compiled training pass.
TINY_G = dict(TINY, group_detr=2)
K_G, Q_G = TINY_G['group_detr'], TINY_G['num_queries']


@pytest.fixture(scope='module')
def dn_run():
  """One compiled training pass of the tiny DN + Group DETR model, run on three target
  sets, its compiled inference, and one compiled focal criterion (loss + gradient w.r.t.
  the dn predictions, at the real dn predictions and with garbage in the padded slots)."""
  model = create_model('detr_resnet50', **TINY_G)
  x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 32, 32, 3)), jnp.float32)
  # init and the training pass in one compiled program (the same keys: the same weights)
  train = jax.jit(lambda tg: model.init_with_output(
      {'params': jax.random.key(0), 'dropout': jax.random.key(1)}, x, train=True,
      targets=tg))
  runs = [jax.tree.map(np.asarray, train(t))
          for t in (_targets(), _targets(pad_label=3, pad_box=0.9), _other_targets())]
  outs, variables = [r[0] for r in runs], runs[0][1]
  infer = jax.tree.map(np.asarray, jax.jit(lambda v: model.apply(v, x, train=False))(variables))
  criterion = crit.SetCriterion(TINY['num_classes'], focal=(ALPHA, GAMMA), aux_loss=False)

  @jax.jit
  def losses(out, tg):
    def total(logits, boxes):
      dn = dict(out['dn_outputs'], pred_logits=logits, pred_boxes=boxes)
      return criterion(dict(out, dn_outputs=dn), tg, num_groups=K_G)[0]
    lg, bx = out['dn_outputs']['pred_logits'], out['dn_outputs']['pred_boxes']
    pad = ~out['dn_outputs']['valid'][None, :, :, None]
    t0, (gl, gb) = jax.value_and_grad(total, argnums=(0, 1))(lg, bx)
    t1 = total(jnp.where(pad, 50.0, lg), jnp.where(pad, 0.0, bx))
    return t0, t1, gl, gb
  return (outs, infer, jax.tree.map(np.asarray, losses(outs[0], _targets())), variables,
          (model, x))


def test_dn_queries_hidden_from_matching_and_padding_inert(dn_run):
  (out, junk, other), infer, _, variables, _ = dn_run
  dn = out['dn_outputs']
  assert dn['pred_logits'].shape == (2, 2, 3 * 3, 5) and dn['valid'].shape == (2, 9)
  assert 'dn_outputs' not in infer  # dropped at inference
  # class_prior_prob=0.01: every class logit's bias starts at -log(99) (Deformable DETR)
  np.testing.assert_allclose(variables['params']['class_embed']['bias'], -np.log(99.0),
                             rtol=1e-6)
  # the matching queries never see the dn queries: other ground truth (so other dn
  # queries, another count of them) leaves their outputs unchanged (dropout is 0)
  assert np.abs(other['dn_outputs']['pred_boxes'] - dn['pred_boxes']).max() > 1e-3
  np.testing.assert_allclose(other['pred_logits'], out['pred_logits'], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(other['pred_boxes'], out['pred_boxes'], rtol=1e-5, atol=1e-6)
  # junk in the padding targets changes nothing: padded dn queries influence no output
  v = dn['valid']
  np.testing.assert_allclose(junk['dn_outputs']['pred_boxes'][:, v], dn['pred_boxes'][:, v],
                             rtol=1e-5, atol=1e-6)


def test_dn_loss_matches_numpy_and_padding_contributes_nothing(dn_run):
  (out, _, _), _, (t0, t1, gl, gb), _, _ = dn_run
  dn = out['dn_outputs']
  v = dn['valid']
  n = v.sum()
  lg, pb, tb = dn['pred_logits'][-1][v], dn['pred_boxes'][-1][v], dn['boxes'][v]
  lab = dn['labels'][v]
  z = lg - lg.max(-1, keepdims=True)
  want_ce = {None: -(z[np.arange(len(lab)), lab] - np.log(np.exp(z).sum(-1))),
             (ALPHA, GAMMA): _np_focal(lg[:, :-1], np.eye(lg.shape[-1] - 1)[lab]).sum(-1)}
  dn_fn = jax.jit(crit.dn_losses, static_argnums=6)
  for focal, ce in want_ce.items():
    got = dn_fn(dn['pred_logits'][-1], dn['pred_boxes'][-1], dn['labels'], dn['boxes'], v,
                float(n), focal)
    np.testing.assert_allclose(float(got['loss_ce']), ce.sum() / n, rtol=1e-5)
    np.testing.assert_allclose(float(got['loss_bbox']), np.abs(pb - tb).sum() / n, rtol=1e-5)
  # padded dn queries: garbage predictions there change no loss and get no gradient
  np.testing.assert_allclose(float(t0), float(t1), rtol=1e-6)
  assert np.all(gl[:, ~v] == 0) and np.all(gb[:, ~v] == 0)
  assert np.any(gl[:, v] != 0) and np.any(gb[:, v] != 0)


def test_detection_task_wires_focal_and_dn():
  from configs import common
  c = common.detection_config()
  c.model.num_classes = 4
  c.loss.classification = 'focal'
  c.model.dn_groups = 2
  task = tasks.DetectionTask(c)
  assert task.criterion.focal == (0.25, 2.0) and 'loss_ce_dn' in task.logged
  batch = dict(_targets(), image_mask=np.zeros((2, 8, 8), bool))
  assert set(task.model_kwargs(batch)['targets']) == {'labels', 'boxes', 'valid'}
  # default config: DETR exactly (softmax, no dn, no targets passed to the model)
  d = tasks.DetectionTask(common.detection_config())
  assert d.criterion.focal is None and 'targets' not in d.model_kwargs(batch)


def test_fast_coco_configs():
  from conftest import load_config
  from swin_jax.train import loop, validate
  want = {'focal': ('detr_resnet50_dc5', 300, 0, 'focal', 1),
          'dn': ('detr_resnet50', 100, 5, 'softmax', 1),
          'focal+dn': ('detr_resnet50', 300, 5, 'focal', 1),
          'group': ('detr_resnet50', 100, 0, 'softmax', 11),
          'focal+group': ('detr_resnet50', 300, 0, 'focal', 11),
          'group+dn': ('detr_resnet50', 100, 5, 'softmax', 11),
          'hybrid': ('detr_resnet50', 100, 0, 'softmax', 1),
          'focal+hybrid': ('detr_resnet50', 300, 0, 'focal', 1),
          'hybrid+dn': ('detr_resnet50', 100, 5, 'softmax', 1)}
  for arg, (name, queries, groups, cls, query_groups) in want.items():
    c = load_config('configs/detr/detr_fast.py', arg)
    validate.check_config(c)
    model = loop.model_from_config(c)
    assert (model.__class__.__name__, model.num_queries, model.dn_groups,
            model.group_detr) == ('DETR', queries, groups, query_groups)
    # H-DETR: 5 x the one-to-one queries (1500 : 300), k 6, lambda 1
    assert model.one2many_queries == (5 * queries if 'hybrid' in arg else 0)
    assert (c.loss.one2many_k, c.loss.one2many_weight) == (6, 1.0)
    assert c.model.name == name and c.loss.classification == cls
    assert (c.loss.ce, c.loss.cost_class) == ((2.0, 2.0) if cls == 'focal' else (1.0, 1.0))
    assert c.num_epochs == 50 and c.schedule.decay_epochs == (40,)
    assert model.class_prior_prob == (0.01 if cls == 'focal' else 0.0)


# ---------------------------------------------------------------- Group DETR


def test_group_attention_mask_written_out():
  # Group DETR alone: K = 2 groups (g0, g1) of Q = 3 queries: block diagonal.
  g = np.kron(np.eye(2, dtype=int), np.ones((3, 3), int)).astype(bool)
  want = np.array([[1, 1, 1, 0, 0, 0],
                   [1, 1, 1, 0, 0, 0],
                   [1, 1, 1, 0, 0, 0],
                   [0, 0, 0, 1, 1, 1],
                   [0, 0, 0, 1, 1, 1],
                   [0, 0, 0, 1, 1, 1]], bool)
  np.testing.assert_array_equal(g, want)
  np.testing.assert_array_equal(np.asarray(detr_lib.dn_attention_mask(3, 0, 0, query_groups=2)),
                                want)
  # with dn: K = 2 groups of Q = 2 (g0, g1), then 2 dn groups (a, b) of 1 query each
  #                 g0 g0 g1 g1 a  b
  want = np.array([[1, 1, 0, 0, 0, 0],   # g0: own group only
                   [1, 1, 0, 0, 0, 0],
                   [0, 0, 1, 1, 0, 0],   # g1: own group only
                   [0, 0, 1, 1, 0, 0],
                   [1, 1, 0, 0, 1, 0],   # a: group 0 (kept at inference) + itself
                   [1, 1, 0, 0, 0, 1]], bool)
  np.testing.assert_array_equal(
      np.asarray(detr_lib.dn_attention_mask(2, 2, 1, query_groups=2)), want)
  got = np.asarray(detr_lib.dn_attention_mask(2, 2, 1, np.array([[True, False]]),
                                              query_groups=2))
  want[:, 5] = False  # dn query b padded: hidden from every row
  np.testing.assert_array_equal(got[0, 0], want)


def _group(out, k, q=Q_G):
  """Group k's queries of a Group DETR training output (no dn)."""
  sl = lambda d: {n: d[n][:, k * q:(k + 1) * q] for n in ('pred_logits', 'pred_boxes')}
  return dict(sl(out), aux_outputs=[sl(a) for a in out['aux_outputs']])


@pytest.fixture(scope='module')
def group_run(dn_run):
  """dn_run's Group DETR (K = 2 groups of 5 queries, 3 dn groups): its training and
  inference outputs, its training outputs without dn (dn_groups=0; the dn parameters
  unused), and the one-group model's (group_detr=1, else the same) training outputs with
  group k's rows of the query table as its own (k = 0, 1; one compile)."""
  (out, _, _), infer, _, variables, (model, x) = dn_run
  one = model.clone(group_detr=1)
  no_dn_apply = lambda v: model.clone(dn_groups=0).apply(v, x, train=True)
  no_dn = jax.jit(no_dn_apply)(variables)
  one_train = jax.jit(lambda v: one.apply(v, x, train=True, targets=_targets(),
                                          rngs={'dropout': jax.random.key(1)}))  # same noise

  def rows(k):
    p = dict(variables['params'])
    p['query_embed'] = {'embedding': p['query_embed']['embedding'][k * Q_G:(k + 1) * Q_G]}
    return dict(variables, params=p)
  return types.SimpleNamespace(
      variables=variables, train=out, infer=infer, train_no_dn=jax.tree.map(np.asarray, no_dn),
      jaxpr_no_dn=str(jax.make_jaxpr(no_dn_apply)(variables)),
      one_train=[jax.tree.map(np.asarray, one_train(rows(k))) for k in range(K_G)])


def test_group_detr_groups_are_independent_and_inference_keeps_group_0(group_run):
  r = group_run
  assert r.variables['params']['query_embed']['embedding'].shape == (K_G * Q_G, 32)
  out = r.train
  assert out['pred_logits'].shape == (2, K_G * Q_G, 5) and out['pred_boxes'].shape == (
      2, K_G * Q_G, 4)
  assert len(out['aux_outputs']) == 1 and out['aux_outputs'][0]['pred_logits'].shape == (
      2, K_G * Q_G, 5)
  # each group computes what a one-group DETR with that group's queries computes: the
  # groups never see each other (block-diagonal self-attention), nor the dn queries;
  # with dn queries and without (Group DETR alone)
  assert 'dn_outputs' not in r.train_no_dn
  for k in range(K_G):
    for got in (_group(out, k), _group(r.train_no_dn, k)):
      want = r.one_train[k]
      for name in ('pred_logits', 'pred_boxes'):
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got['aux_outputs'][0][name],
                                   want['aux_outputs'][0][name], rtol=1e-5, atol=1e-5)
  # Without dn the groups' self-attention runs as K x B attentions over Q queries (the
  # official trick): its logits are [K * B, heads, Q, Q], never [B, heads, K * Q, K * Q].
  B, heads = out['pred_logits'].shape[0], TINY_G.get('nheads', 8)
  assert f'[{K_G * B},{heads},{Q_G},{Q_G}]' in r.jaxpr_no_dn
  assert f'{K_G * Q_G},{K_G * Q_G}]' not in r.jaxpr_no_dn
  # ... and the groups differ (their queries do): the comparison above is not vacuous
  assert np.abs(r.one_train[0]['pred_boxes'] - r.one_train[1]['pred_boxes']).max() > 1e-3
  # the dn queries see group 0 only: as in the one-group model with group 0's table
  for name in ('pred_logits', 'pred_boxes'):
    np.testing.assert_allclose(out['dn_outputs'][name], r.one_train[0]['dn_outputs'][name],
                               rtol=1e-5, atol=1e-5)
  # inference: group 0 only, the public contract, equal to the group-0-table model (its
  # matching outputs in training are its inference outputs: dropout 0, and the matching
  # queries never see dn queries, test_dn_queries_hidden_from_matching_and_padding_inert)
  inf = r.infer
  assert set(inf) == {'pred_logits', 'pred_boxes', 'aux_outputs'}
  assert inf['pred_logits'].shape == (2, Q_G, 5) and inf['pred_boxes'].shape == (2, Q_G, 4)
  for name in ('pred_logits', 'pred_boxes'):
    np.testing.assert_allclose(inf[name], r.one_train[0][name], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(inf['aux_outputs'][0][name],
                               r.one_train[0]['aux_outputs'][0][name], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(inf['pred_boxes'], out['pred_boxes'][:, :Q_G], rtol=1e-5,
                             atol=1e-6)


def test_group_loss_is_the_official_combination_of_per_group_losses(group_run):
  """Atten4Vis/ConditionalDETR (GroupDETR branch) SetCriterion.forward: every group
  matched on its own, num_boxes x K, one loss over all K * Q queries: for the box and focal
  losses sum / (K * num_boxes) = the mean of the per-group losses; for DETR's weighted
  cross-entropy too (equal weight sums per group). The dn losses are added once.

  Reference: the one-group criterion on each group's slice, matched by scipy (a host
  callback: cheap to compile, and independent of the pure-JAX Hungarian under test)."""
  out, tg = group_run.train, _targets()
  nodn = {k: v for k, v in out.items() if k != 'dn_outputs'}
  C = TINY_G['num_classes']
  # the grouped loss with the training default (pure-JAX Hungarian) for focal, scipy for
  # softmax (one Hungarian program less to compile; the grouping code is the same)
  kinds = {'softmax': dict(matcher='scipy'),
           'focal': dict(focal=(ALPHA, GAMMA), weights=crit.FOCAL_WEIGHTS,
                         cost_weights=crit.FOCAL_COST_WEIGHTS)}
  for name, kw in kinds.items():
    c, ref_c = crit.SetCriterion(C, **kw), crit.SetCriterion(C, **dict(kw, matcher='scipy'))
    total_dn, m = jax.tree.map(np.asarray, jax.jit(
        lambda o, c=c: c(o, tg, num_groups=K_G))(out))
    ref = jax.jit(lambda o, c=ref_c: c(o, tg))
    per_group = [jax.tree.map(np.asarray, ref(_group(nodn, k))) for k in range(K_G)]
    for k in [k + s for k in ('loss_ce', 'loss_bbox', 'loss_giou') for s in ('', '_0')]:
      np.testing.assert_allclose(m[k], np.mean([pg[1][k] for pg in per_group]), rtol=1e-5,
                                 err_msg=f'{name} {k}')
    # the total: the mean of the groups' totals, plus the dn losses once (unscaled)
    dn = sum(c.weight_dict[k] * m[k + s] for k in c.weight_dict for s in ('_dn', '_dn_0'))
    np.testing.assert_allclose(total_dn - dn, np.mean([pg[0] for pg in per_group]), rtol=1e-5)

  # SetCriterion.match with groups: group g's pairs use group g's queries only (numbered in
  # the K * Q layout), an optimum of group g's own cost
  import scipy.optimize
  c = crit.SetCriterion(C, matcher='scipy')
  cw = c.cost_weights

  @jax.jit
  def matched(out):
    costs = [crit.matching_cost(g['pred_logits'], g['pred_boxes'], tg['labels'], tg['boxes'],
                                cw['class_'], cw['bbox'], cw['giou'])
             for g in (_group(out, k) for k in range(K_G))]
    return c.match(out, tg, num_groups=K_G), costs
  (pred_idx, tgt_idx, ok), costs = jax.tree.map(np.asarray, matched(nodn))
  valid = tg['valid']
  m_per = min(Q_G, valid.shape[1])
  assert pred_idx.shape == (2, K_G * m_per)
  for g in range(K_G):
    sl = slice(g * m_per, (g + 1) * m_per)
    assert np.all((pred_idx[:, sl] >= g * Q_G) & (pred_idx[:, sl] < (g + 1) * Q_G))
    for b in range(2):
      r_, c_ = scipy.optimize.linear_sum_assignment(costs[g][b][:, valid[b]])
      mine = sorted((p - g * Q_G, t) for p, t, v in zip(pred_idx[b, sl], tgt_idx[b, sl],
                                                          ok[b, sl]) if v)
      assert mine == sorted(zip(r_, np.flatnonzero(valid[b])[c_])), (g, b)


def test_group_detr_config_checked_and_task_counts_groups():
  with pytest.raises(ValueError, match='config.model.group_detr'):
    create_model('detr_resnet50', group_detr=0).init(jax.random.key(0),
                                                    jnp.zeros((1, 32, 32, 3)))
  from configs import common
  c = common.detection_config()
  assert c.model.group_detr == 1  # off by default
  c.model.group_detr, c.model.num_queries = 3, 4
  task = tasks.DetectionTask(c)
  shaped = lambda n: {'pred_logits': jnp.zeros((1, n, 92))}
  assert (task.num_groups(shaped(12)), task.num_groups(shaped(4))) == (3, 1)  # train, eval
  with pytest.raises(ValueError, match='config.model.num_queries'):
    task.num_groups(shaped(8))


# ---------------------------------------------------------------- hybrid matching (H-DETR)


def test_hybrid_attention_mask_written_out():
  # 2 matching queries (m), 3 one-to-many (o): H-DETR's self_attn_mask, neither sees the other
  #                m  m  o  o  o
  want = np.array([[1, 1, 0, 0, 0],
                   [1, 1, 0, 0, 0],
                   [0, 0, 1, 1, 1],
                   [0, 0, 1, 1, 1],
                   [0, 0, 1, 1, 1]], bool)
  np.testing.assert_array_equal(np.asarray(detr_lib.dn_attention_mask(2, 0, 0, one2many=3)),
                                want)
  # with dn: 2 matching, 2 one-to-many, 2 dn groups (a, b) of 1 query
  #                 m  m  o  o  a  b
  want = np.array([[1, 1, 0, 0, 0, 0],
                   [1, 1, 0, 0, 0, 0],
                   [0, 0, 1, 1, 0, 0],   # o: the one-to-many queries only
                   [0, 0, 1, 1, 0, 0],
                   [1, 1, 0, 0, 1, 0],   # a: the matching queries + itself, as without o
                   [1, 1, 0, 0, 0, 1]], bool)
  np.testing.assert_array_equal(np.asarray(detr_lib.dn_attention_mask(2, 2, 1, one2many=2)),
                                want)


TINY_H = dict(TINY, one2many_queries=6)  # with TINY's 3 dn groups: hybrid + dn
M_H = TINY_H['one2many_queries']


@pytest.fixture(scope='module')
def hybrid_run():
  """The tiny DN + hybrid DETR (5 matching + 6 one-to-many queries, 3 dn groups): its
  training and inference outputs, the same weights without the hybrid branch
  (one2many_queries=0) in training, and a DETR with 6 queries whose query table is
  query_embed_one2many (no dn) in training; one compile each."""
  model = create_model('detr_resnet50', **TINY_H)
  x = jnp.asarray(np.random.default_rng(4).normal(size=(2, 32, 32, 3)), jnp.float32)
  train_kw = dict(train=True, targets=_targets(), rngs={'dropout': jax.random.key(1)})
  out, variables = jax.jit(lambda: model.init_with_output(
      {'params': jax.random.key(0), 'dropout': jax.random.key(1)}, x, train=True,
      targets=_targets()))()
  params = dict(variables['params'])
  table = params.pop('query_embed_one2many')['embedding']
  plain = dict(variables, params=params)
  no_hybrid = jax.jit(lambda v: model.clone(one2many_queries=0).apply(v, x, **train_kw))(plain)
  as_detr = dict(variables, params=dict(params, query_embed={'embedding': table}))
  branch = jax.jit(lambda v: model.clone(one2many_queries=0, dn_groups=0, num_queries=M_H)
                   .apply(v, x, train=True))(as_detr)
  infer = jax.jit(lambda v: model.apply(v, x))(variables)
  host = lambda t: jax.tree.map(np.asarray, t)
  return types.SimpleNamespace(train=host(out), variables=host(variables),
                               no_hybrid=host(no_hybrid), branch=host(branch), infer=host(infer))


def test_hybrid_branch_is_hidden_both_ways_and_dropped_at_inference(hybrid_run):
  r = hybrid_run
  o2m = r.train['one2many_outputs']
  assert r.variables['params']['query_embed_one2many']['embedding'].shape == (M_H, 32)
  assert o2m['pred_logits'].shape == (2, M_H, 5) and o2m['pred_boxes'].shape == (2, M_H, 4)
  assert len(o2m['aux_outputs']) == 1
  close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  names = ('pred_logits', 'pred_boxes')
  # the matching and dn queries never see the one-to-many ones: their outputs are those of
  # the model without the branch
  for n in names:
    close(r.train[n], r.no_hybrid[n])
    close(r.train['aux_outputs'][0][n], r.no_hybrid['aux_outputs'][0][n])
    close(r.train['dn_outputs'][n], r.no_hybrid['dn_outputs'][n])
  # ... and they see only each other: the branch is a DETR of its own 6 queries
  for n in names:
    close(o2m[n], r.branch[n])
    close(o2m['aux_outputs'][0][n], r.branch['aux_outputs'][0][n])
  assert np.abs(o2m['pred_boxes'][:, :5] - r.train['pred_boxes']).max() > 1e-3  # not vacuous
  # inference: no branch, the public contract, the model without it
  assert set(r.infer) == {'pred_logits', 'pred_boxes', 'aux_outputs'}
  for n in names:
    np.testing.assert_allclose(r.infer[n], r.no_hybrid[n], rtol=1e-5, atol=1e-6)


def test_hybrid_loss_is_h_detr_train_hybrid(hybrid_run):
  """HDETR/H-Deformable-DETR engine.train_hybrid: loss = criterion(one-to-one, targets) +
  lambda x criterion(one-to-many, each image's targets repeated k times), num_boxes x k.
  Reference: the one-to-one criterion on its own, and for the branch scipy's assignment of
  its cost against the repeated real targets, the L1 / GIoU sums written out in numpy."""
  import scipy.optimize
  from swin_jax.detection import boxes as box_ops
  out, tg = hybrid_run.train, _targets()
  C, k, lam = TINY['num_classes'], 2, 0.5
  nodn = {n: v for n, v in out.items() if n != 'dn_outputs'}
  c = crit.SetCriterion(C, matcher='scipy', one2many_k=k, one2many_weight=lam)
  total, m = jax.tree.map(np.asarray, jax.jit(lambda o: c(o, tg))(nodn))
  one2one = {n: v for n, v in nodn.items() if n != 'one2many_outputs'}
  t_one, m_one = jax.tree.map(np.asarray, jax.jit(lambda o: c(o, tg))(one2one))
  for n in ('loss_ce', 'loss_bbox', 'loss_giou', 'loss_ce_0'):
    np.testing.assert_allclose(m[n], m_one[n], rtol=1e-6)  # the one-to-one part unchanged
  # the branch, last layer: scipy on the cost against the k-times repeated real targets
  o2m = out['one2many_outputs']
  n_real = tg['valid'].sum()
  cw = c.cost_weights
  l1 = giou = 0.0
  for b in range(2):
    real = np.flatnonzero(tg['valid'][b])
    rep_labels = np.tile(tg['labels'][b, real], k)
    rep_boxes = np.tile(tg['boxes'][b, real], (k, 1))
    cost = np.asarray(crit.matching_cost(o2m['pred_logits'][b:b + 1], o2m['pred_boxes'][b:b + 1],
                                         rep_labels[None], rep_boxes[None], cw['class_'],
                                         cw['bbox'], cw['giou']))[0]
    rows, cols = scipy.optimize.linear_sum_assignment(cost)
    assert len(rows) == k * len(real)  # every repeated target gets its own query
    pb, tb = o2m['pred_boxes'][b, rows], rep_boxes[cols]
    l1 += np.abs(pb - tb).sum()
    g = np.asarray(box_ops.generalized_box_iou(box_ops.box_cxcywh_to_xyxy(jnp.asarray(pb)),
                                               box_ops.box_cxcywh_to_xyxy(jnp.asarray(tb))))
    giou += (1 - np.diag(g)).sum()
  np.testing.assert_allclose(m['loss_bbox_one2many'], l1 / (k * n_real), rtol=1e-5)
  np.testing.assert_allclose(m['loss_giou_one2many'], giou / (k * n_real), rtol=1e-5)
  # the total: the one-to-one total + lambda x the branch's weighted losses (every layer)
  branch = sum(c.weight_dict[n] * m[n + s + '_one2many'] for n in c.weight_dict
               for s in ('', '_0'))
  np.testing.assert_allclose(total, t_one + lam * branch, rtol=1e-5)


def test_hybrid_config_checked_and_task_wired():
  with pytest.raises(ValueError, match='config.model.one2many_queries'):
    create_model('detr_resnet50', one2many_queries=-1).init(jax.random.key(0),
                                                           jnp.zeros((1, 32, 32, 3)))
  with pytest.raises(ValueError, match='one2many_queries=0 or group_detr=1'):
    create_model('detr_resnet50', one2many_queries=4, group_detr=2).init(
        jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  from configs import common
  c = common.detection_config()
  assert not c.model.get('one2many_queries')  # off by default: DETR's loss and logs
  assert 'loss_ce_one2many' not in tasks.DetectionTask(c).logged
  c.model.one2many_queries = 30
  task = tasks.DetectionTask(c)
  assert (task.criterion.one2many_k, task.criterion.one2many_weight) == (6, 1.0)
  assert 'loss_bbox_one2many' in task.logged
  c.loss.one2many_k = 0
  with pytest.raises(ValueError, match=r'config\.loss\.one2many_k=0'):
    tasks.DetectionTask(c)
  c.loss.one2many_k, c.loss.one2many_weight = 3, -1.0
  with pytest.raises(ValueError, match=r'config\.loss\.one2many_weight=-1\.0'):
    tasks.DetectionTask(c)
