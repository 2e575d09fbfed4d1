"""DETR (Carion et al., ECCV 2020), exact to facebookresearch/detr.

The reference is the official ``models/{detr, backbone, position_encoding, transformer}.py``.
Parameter names follow its state_dict with flax's ``_`` for list indices, so conversion is a
short mapping (``swin_jax.convert.detr``):

* ``backbone_0/body``: the ResNet (``swin_jax.models.resnet``; frozen BN vectors in the
  ``'frozen'`` collection), or a Swin (``backbone='swin_tiny_patch4_window7_224'``: its last
  stage map, with the padding mask handed to it).
* ``input_proj``: 1x1 conv to ``hidden_dim``; ``query_embed/embedding`` [Q, d] ([K * Q, d]
  with Group DETR; H-DETR's one-to-many queries in ``query_embed_one2many``).
* ``transformer/encoder/layers_{i}/{self_attn/{in_proj, out_proj}, linear1, linear2, norm1,
  norm2}`` (``in_proj`` is torch's fused ``in_proj_weight`` [3d, d] as one Dense d -> 3d);
  ``transformer/encoder/norm`` only with ``pre_norm``.
* ``transformer/decoder/layers_{i}/{self_attn, multihead_attn, linear1, linear2, norm1,
  norm2, norm3}``, ``transformer/decoder/norm``.
* ``class_embed`` (num_classes + 1, "no object" last), ``bbox_embed/layers_{0,1,2}``.

``model.apply(variables, images, mask=mask, train=False)`` with images NHWC [B, H, W, 3]
(normalised) and mask bool [B, H, W] (True = padded pixel; None = no padding) returns
``{'pred_logits': [B, Q, num_classes + 1], 'pred_boxes': [B, Q, 4] (cx, cy, w, h in [0, 1]),
'aux_outputs': [{'pred_logits', 'pred_boxes'}] * (dec_layers - 1)}`` (aux only with
``aux_loss``). ``train=True`` turns dropout on (rng 'dropout'); in training the options
add to it: ``dn_outputs`` (DN-DETR, ``dn_groups > 0``), ``one2many_outputs`` (H-DETR's
hybrid matching, ``one2many_queries > 0``) and, with Group DETR (``group_detr`` K > 1),
K * Q queries in place of Q (``DETR`` docstring).

Trainable leaves: as the official code, the ResNet stem and ``layer1`` get no gradient
(stop_gradient after layer1) and ``trainable_mask(params)`` marks them False for the
optimizer; the frozen BN vectors are not in ``'params'`` at all. DETR-R50 with 91 classes:
41,524,768 params, 41,302,368 trainable (the numbers ``main.py`` prints).
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from swin_jax.models import layers
from swin_jax.models.registry import create_model, register_model
from swin_jax.models.resnet import RESNET_DEPTHS, ResNetBody

Dtype = Any

# Transformer._reset_parameters: xavier_uniform_ on every matrix; torch MHA zero biases.
xavier = nn.initializers.xavier_uniform()


def interpolate_mask(mask, size) -> jax.Array:
  """``F.interpolate(mask[None].float(), size).bool()[0]``: torch's 'nearest' resize.

  mask: bool [B, H, W]; size: (h, w). Source index = floor(dst * (in / out)) computed in
  float32 as torch does, clipped to in - 1. Returns bool [B, h, w].
  """
  def index(n_in, n_out):
    scale = np.float32(n_in) / np.float32(n_out)
    idx = np.floor(np.arange(n_out, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(idx, n_in - 1)
  H, W = mask.shape[1:]
  return mask[:, index(H, size[0])][:, :, index(W, size[1])]


def sine_position_encoding(mask, num_pos_feats: int = 128, temperature: float = 10000.0,
                           normalize: bool = True, scale: float = 2 * math.pi) -> jax.Array:
  """PositionEmbeddingSine: mask bool [B, h, w] (True = pad) -> [B, h, w, 2 * num_pos_feats].

  Channels are (pos_y, pos_x), each interleaved sin/cos as ``stack(...).flatten``.
  """
  not_mask = (~mask).astype(jnp.float32)
  y_embed = jnp.cumsum(not_mask, axis=1)
  x_embed = jnp.cumsum(not_mask, axis=2)
  if normalize:
    eps = 1e-6
    y_embed = y_embed / (y_embed[:, -1:, :] + eps) * scale
    x_embed = x_embed / (x_embed[:, :, -1:] + eps) * scale
  dim_t = np.arange(num_pos_feats, dtype=np.float32)
  dim_t = jnp.asarray(temperature ** (2 * (dim_t // 2) / num_pos_feats), jnp.float32)
  pos_x = x_embed[..., None] / dim_t  # [B, h, w, F]
  pos_y = y_embed[..., None] / dim_t
  B, h, w = mask.shape

  def interleave(p):  # [..., F] -> (sin p0, cos p1, sin p2, cos p3, ...)
    return jnp.stack((jnp.sin(p[..., 0::2]), jnp.cos(p[..., 1::2])), axis=4).reshape(
        B, h, w, num_pos_feats)
  return jnp.concatenate((interleave(pos_y), interleave(pos_x)), axis=3)


class MultiheadAttention(nn.Module):
  """torch ``nn.MultiheadAttention`` (batch-first here): fused in_proj, out_proj.

  query [B, Lq, d], key/value [B, Lk, d], key_padding_mask bool [B, Lk] (True = ignore),
  attn_mask bool broadcastable to [B, heads, Lq, Lk] (True = may attend; the opposite of
  torch's bool ``attn_mask``, as ``jax.nn.dot_product_attention``) -> [B, Lq, d].

  The attention is ``layers.dot_product_attention`` (the formulation shared with ViT /
  Swin / Shunted, picked per backend by ``layers.attention_implementation``: written out on
  CPU, cuDNN's fused kernel on GPU for bf16 / fp16, XLA's elsewhere; with attention dropout
  in training always written out). Logits and softmax are float32 and masked entries get a
  finite large negative, so an all-masked row is uniform, not NaN (torch: -inf, NaN).
  """
  d_model: int
  num_heads: int
  dropout: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, query, key, value, key_padding_mask=None, deterministic: bool = True,
               attn_mask=None, groups: int = 1):
    """``groups`` G > 1 (self-attention only): the Lq = Lk queries are G consecutive
    groups that attend only within their group (Group DETR's block-diagonal mask), run as
    G x B independent attentions of Lq / G: G x fewer logits than the masked [Lq, Lk] one,
    the same result (masked logits contribute exactly 0)."""
    d, h = self.d_model, self.num_heads
    hd = d // h
    q, k, v = FusedInProj(d, self.dtype, name='in_proj')(query, key, value)
    if groups > 1:
      if key_padding_mask is not None or attn_mask is not None or q.shape[1] != k.shape[1]:
        raise ValueError('MultiheadAttention(groups > 1) is grouped self-attention: no masks.')
      B0, L0 = q.shape[:2]
      q, k, v = (x.reshape(B0 * groups, L0 // groups, d) for x in (q, k, v))
    B, Lq, Lk = q.shape[0], q.shape[1], k.shape[1]
    q = q.reshape(B, Lq, h, hd)
    k = k.reshape(B, Lk, h, hd)
    v = v.reshape(B, Lk, h, hd)
    allowed = None  # bool [B or 1, h or 1, Lq or 1, Lk], True = may attend
    if key_padding_mask is not None:
      allowed = ~jnp.asarray(key_padding_mask, bool)[:, None, None, :]
    if attn_mask is not None:
      am = jnp.asarray(attn_mask, bool)
      am = am.reshape((1,) * (4 - am.ndim) + am.shape)
      allowed = am if allowed is None else allowed & am
    rng = self.make_rng('dropout') if self.dropout > 0 and not deterministic else None
    out = layers.dot_product_attention(q, k, v, mask=allowed, dropout_rng=rng,
                                       dropout_rate=self.dropout,
                                       deterministic=deterministic)  # [B, Lq, h, hd]
    out = out.reshape(B, Lq, d)
    if groups > 1:
      out = out.reshape(B0, L0, d)  # [B, G * Lq, d], group-major as the input
    return layers.Dense(d, dtype=self.dtype, kernel_init=xavier, name='out_proj')(out)


class FusedInProj(nn.Module):
  """torch's fused ``in_proj_weight`` [3d, d] / ``in_proj_bias`` [3d] as one Dense-like
  kernel [d, 3d]: q, k and v are projected by its three column blocks (they may differ in
  input: positions are added to queries and keys only)."""
  d_model: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, query, key, value):
    d = self.d_model
    w = self.param('kernel', _fused_kernel_init, (d, 3 * d)).astype(self.dtype)
    b = self.param('bias', nn.initializers.zeros, (3 * d,)).astype(self.dtype)
    return tuple(x.astype(self.dtype) @ w[:, i * d:(i + 1) * d] + b[i * d:(i + 1) * d]
                 for i, x in enumerate((query, key, value)))


def _fused_kernel_init(key, shape, dtype=jnp.float32):
  # torch's MHA: xavier_uniform_ on the whole [3d, d] in_proj_weight.
  d, d3 = shape
  return nn.initializers.xavier_uniform()(key, (d3, d), dtype).T


def _with_pos(x, pos):
  return x if pos is None else x + pos.astype(x.dtype)


class EncoderLayer(nn.Module):
  """TransformerEncoderLayer: self-attention (positions on q, k only) + ReLU FFN."""
  d_model: int
  nhead: int
  dim_feedforward: int
  dropout: float
  pre_norm: bool
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, src, mask, pos, deterministic: bool):
    """src, pos: [B, L, d]; mask: bool [B, L] (True = pad)."""
    drop = lambda name: nn.Dropout(self.dropout, name=name)
    attn = MultiheadAttention(self.d_model, self.nhead, self.dropout, self.dtype,
                              name='self_attn')
    norm1 = layers.layer_norm(1e-5, 'norm1')
    norm2 = layers.layer_norm(1e-5, 'norm2')

    def ffn(x):
      x = layers.Dense(self.dim_feedforward, dtype=self.dtype, kernel_init=xavier,
                       name='linear1')(x)
      x = nn.Dropout(self.dropout, name='dropout')(nn.relu(x), deterministic=deterministic)
      return layers.Dense(self.d_model, dtype=self.dtype, kernel_init=xavier, name='linear2')(x)

    if self.pre_norm:
      s = layers.apply_norm(norm1, src)
      qk = _with_pos(s, pos)
      src = src + drop('dropout1')(attn(qk, qk, s, mask, deterministic), deterministic)
      s = layers.apply_norm(norm2, src)
      return src + drop('dropout2')(ffn(s), deterministic)
    qk = _with_pos(src, pos)
    src = src + drop('dropout1')(attn(qk, qk, src, mask, deterministic), deterministic)
    src = layers.apply_norm(norm1, src)
    src = src + drop('dropout2')(ffn(src), deterministic)
    return layers.apply_norm(norm2, src)


class DecoderLayer(nn.Module):
  """TransformerDecoderLayer: self-attn over queries, cross-attn to memory, ReLU FFN."""
  d_model: int
  nhead: int
  dim_feedforward: int
  dropout: float
  pre_norm: bool
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, tgt, memory, memory_mask, pos, query_pos, deterministic: bool,
               self_attn_mask=None, self_attn_groups: int = 1):
    """tgt, query_pos: [B, Q, d]; memory, pos: [B, L, d]; memory_mask bool [B, L];
    self_attn_mask bool broadcastable to [B, heads, Q, Q] (True = may attend) or None;
    self_attn_groups G > 1: the Q queries are G groups that attend only within their group
    (the block-diagonal mask, computed G x cheaper; MultiheadAttention ``groups``)."""
    drop = lambda name: nn.Dropout(self.dropout, name=name)
    self_attn = MultiheadAttention(self.d_model, self.nhead, self.dropout, self.dtype,
                                   name='self_attn')
    cross_attn = MultiheadAttention(self.d_model, self.nhead, self.dropout, self.dtype,
                                    name='multihead_attn')
    norms = [layers.layer_norm(1e-5, f'norm{i}') for i in (1, 2, 3)]

    def ffn(x):
      x = layers.Dense(self.dim_feedforward, dtype=self.dtype, kernel_init=xavier,
                       name='linear1')(x)
      x = nn.Dropout(self.dropout, name='dropout')(nn.relu(x), deterministic=deterministic)
      return layers.Dense(self.d_model, dtype=self.dtype, kernel_init=xavier, name='linear2')(x)

    mem_k = _with_pos(memory, pos)
    if self.pre_norm:
      t = layers.apply_norm(norms[0], tgt)
      qk = _with_pos(t, query_pos)
      tgt = tgt + drop('dropout1')(self_attn(qk, qk, t, None, deterministic, self_attn_mask,
                                             self_attn_groups), deterministic)
      t = layers.apply_norm(norms[1], tgt)
      tgt = tgt + drop('dropout2')(cross_attn(_with_pos(t, query_pos), mem_k, memory,
                                              memory_mask, deterministic), deterministic)
      t = layers.apply_norm(norms[2], tgt)
      return tgt + drop('dropout3')(ffn(t), deterministic)
    qk = _with_pos(tgt, query_pos)
    tgt = tgt + drop('dropout1')(self_attn(qk, qk, tgt, None, deterministic, self_attn_mask,
                                           self_attn_groups), deterministic)
    tgt = layers.apply_norm(norms[0], tgt)
    tgt = tgt + drop('dropout2')(cross_attn(_with_pos(tgt, query_pos), mem_k, memory,
                                            memory_mask, deterministic), deterministic)
    tgt = layers.apply_norm(norms[1], tgt)
    tgt = tgt + drop('dropout3')(ffn(tgt), deterministic)
    return layers.apply_norm(norms[2], tgt)


class Encoder(nn.Module):
  num_layers: int
  layer_kwargs: Dict[str, Any]
  pre_norm: bool

  @nn.compact
  def __call__(self, src, mask, pos, deterministic: bool):
    for i in range(self.num_layers):
      src = EncoderLayer(**self.layer_kwargs, pre_norm=self.pre_norm, name=f'layers_{i}')(
          src, mask, pos, deterministic)
    if self.pre_norm:  # the official encoder_norm exists only with normalize_before
      src = layers.apply_norm(layers.layer_norm(1e-5, 'norm'), src)
    return src


class Decoder(nn.Module):
  num_layers: int
  layer_kwargs: Dict[str, Any]
  pre_norm: bool

  @nn.compact
  def __call__(self, tgt, memory, memory_mask, pos, query_pos, deterministic: bool,
               self_attn_mask=None, self_attn_groups: int = 1):
    """Returns [num_layers, B, Q, d]: the shared final norm applied to every layer's output
    (return_intermediate=True)."""
    norm = layers.layer_norm(1e-5, 'norm')
    intermediate = []
    for i in range(self.num_layers):
      tgt = DecoderLayer(**self.layer_kwargs, pre_norm=self.pre_norm, name=f'layers_{i}')(
          tgt, memory, memory_mask, pos, query_pos, deterministic, self_attn_mask,
          self_attn_groups)
      intermediate.append(layers.apply_norm(norm, tgt))
    return jnp.stack(intermediate)


class Transformer(nn.Module):
  d_model: int = 256
  nhead: int = 8
  num_encoder_layers: int = 6
  num_decoder_layers: int = 6
  dim_feedforward: int = 2048
  dropout: float = 0.1
  pre_norm: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, src, mask, query_embed, pos, deterministic: bool, tgt=None,
               self_attn_mask=None, self_attn_groups: int = 1):
    """src, pos: [B, L, d]; mask bool [B, L]; query_embed [Q, d] or [B, Q, d] (positional
    queries); tgt [B, Q, d] content queries (None: zeros, as DETR); self_attn_mask bool
    broadcastable to [B, heads, Q, Q] (True = may attend) or self_attn_groups G > 1 (G
    groups of Q / G queries attending within their group) -> hs [layers, B, Q, d]."""
    kw = dict(d_model=self.d_model, nhead=self.nhead, dim_feedforward=self.dim_feedforward,
              dropout=self.dropout, dtype=self.dtype)
    B = src.shape[0]
    query_pos = (query_embed if query_embed.ndim == 3 else
                 jnp.broadcast_to(query_embed[None], (B,) + query_embed.shape))
    tgt = (jnp.zeros_like(query_pos, dtype=self.dtype) if tgt is None
           else tgt.astype(self.dtype))
    memory = Encoder(self.num_encoder_layers, kw, self.pre_norm, name='encoder')(
        src.astype(self.dtype), mask, pos, deterministic)
    return Decoder(self.num_decoder_layers, kw, self.pre_norm, name='decoder')(
        tgt, memory, mask, pos, query_pos, deterministic, self_attn_mask, self_attn_groups)


class MLP(nn.Module):
  """The official bbox MLP: Linear + ReLU between, ``layers_{i}``."""
  hidden_dim: int
  output_dim: int
  num_layers: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    for i in range(self.num_layers):
      last = i == self.num_layers - 1
      # nn.Dense, not layers.Dense: on [layers, B, Q, d] (hs) flattening would merge the
      # batch's sharded dim under the layers dim, and GSPMD all-gathers for that.
      x = nn.Dense(self.output_dim if last else self.hidden_dim, dtype=self.dtype,
                   name=f'layers_{i}')(x)
      if not last:
        x = nn.relu(x)
    return x


class Backbone(nn.Module):
  """``backbone_0``: the feature extractor, returning the last map [B, h, w, C]."""
  backbone: str = 'resnet50'
  dilation: bool = False
  backbone_depths: Optional[Sequence[int]] = None
  train_backbone: bool = True
  backbone_kwargs: Optional[Dict[str, Any]] = None
  dtype: Dtype = jnp.float32
  backbone_width: int = 64
  freeze_stem: bool = True
  backbone_norm: str = 'frozen'

  @nn.compact
  def __call__(self, x, mask, train: bool):
    if self.backbone.startswith('resnet'):
      depths = self.backbone_depths or RESNET_DEPTHS.get(self.backbone)
      if depths is None:
        raise ValueError(f'backbone={self.backbone!r}: expected one of '
                         f'{sorted(RESNET_DEPTHS)} or a registered Swin name')
      return ResNetBody(tuple(depths), self.dilation, self.train_backbone and self.freeze_stem,
                        self.dtype, self.backbone_width, self.backbone_norm, name='body')(x)
    # Any registered model whose apply(..., mask=, return_features=True) returns a list of
    # NHWC maps (Swin): DETR takes the last one; input_proj adapts to its channels.
    kwargs = dict(num_classes=0, **(self.backbone_kwargs or {}))
    body = create_model(self.backbone, **kwargs).clone(parent=self, name='body')
    return body(x, train=train, mask=mask, return_features=True)[-1]


def dn_noise(rng, labels, boxes, valid, groups: int, num_classes: int,
             label_noise: float = 0.2, box_noise: float = 0.4):
  """DN-DETR's noised copies of the ground truth (``prepare_for_dn``), static shapes.

  labels [B, T] int, boxes [B, T, 4] (cx, cy, w, h in [0, 1]), valid [B, T] bool: the
  padded targets. Every target is repeated in ``groups`` groups, slot ``g * T + t`` =
  target t of group g (P = groups * T slots, padding targets' slots invalid). Per slot:
  with probability ``label_noise`` the label is replaced by one drawn uniformly from the
  C classes (it may draw the same class); the centre moves by U(-1, 1) * box_noise * (w/2,
  h/2) and the size by U(-1, 1) * box_noise * (w, h), then everything is clipped to
  [0, 1].

  Returns (noised_labels [B, P] int32, noised_boxes [B, P, 4], gt_labels [B, P] int32,
  gt_boxes [B, P, 4], dn_valid [B, P] bool); padded slots hold label 0 and box 0.
  """
  valid = jnp.asarray(valid, bool)
  labels = jnp.where(valid, jnp.asarray(labels, jnp.int32), 0)
  boxes = jnp.where(valid[..., None], jnp.asarray(boxes, jnp.float32), 0.0)
  labels = jnp.tile(labels, (1, groups))  # [B, P]
  boxes = jnp.tile(boxes, (1, groups, 1))  # [B, P, 4]
  valid = jnp.tile(valid, (1, groups))
  k_flip, k_cls, k_box = jax.random.split(rng, 3)
  flip = jax.random.uniform(k_flip, labels.shape) < label_noise
  new = jax.random.randint(k_cls, labels.shape, 0, num_classes, jnp.int32)
  noised_labels = jnp.where(flip & valid, new, labels)
  wh = boxes[..., 2:]
  scale = jnp.concatenate([wh / 2, wh], axis=-1)
  shift = jax.random.uniform(k_box, boxes.shape, minval=-1.0, maxval=1.0)
  noised_boxes = jnp.clip(boxes + shift * scale * box_noise, 0.0, 1.0)
  return noised_labels, noised_boxes, labels, boxes, valid


def dn_attention_mask(num_queries: int, groups: int, group_size: int, dn_valid=None,
                      query_groups: int = 1, one2many: int = 0):
  """Decoder self-attention mask (True = may attend) of [query_groups x num_queries
  matching queries, then groups x group_size dn queries].

  DN-DETR's rule: matching queries never see dn queries; a dn query sees the matching
  queries and its own dn group. Group DETR (``query_groups`` K > 1): a matching query sees
  only its own group (block diagonal: K independent DETR decoders sharing weights), and a
  dn query sees the matching queries of group 0, the group kept at inference (so each dn
  group meets the context of the one-group decoder it trains, as in DN-DETR). With
  ``dn_valid`` [B, P] the padded dn queries are hidden from every query as well (DN-DETR
  lets them into attention; here they influence nothing). ``groups=0``: no dn queries.
  ``one2many`` M > 0 (H-DETR's one-to-many queries, after the matching ones, before the dn
  ones): they see only each other and no other query sees them, H-DETR's mask (its
  ``self_attn_mask``); dn queries do not see them either.

  Returns bool [n, n] (no dn_valid) or [B, 1, n, n], n = query_groups * num_queries + M + P.
  """
  nq = query_groups * num_queries + one2many
  # one label per query: matching group g -> g, one-to-many -> -1, dn group j ->
  # query_groups + j
  label = np.concatenate([np.repeat(np.arange(query_groups), num_queries),
                          np.full(one2many, -1),
                          query_groups + np.repeat(np.arange(groups), group_size)])
  row, col = label[:, None], label[None, :]
  allowed = (row == col) | ((row >= query_groups) & (col == 0))  # [n, n]
  if dn_valid is None:
    return jnp.asarray(allowed)
  key_ok = jnp.concatenate([jnp.ones((dn_valid.shape[0], nq), bool),
                            jnp.asarray(dn_valid, bool)], axis=1)  # [B, n]
  return jnp.asarray(allowed)[None, None] & key_ok[:, None, None, :]


def sine_box_embedding(boxes, num_feats: int, temperature: float = 10000.0) -> jax.Array:
  """Each of the 4 box coordinates in [0, 1] -> ``num_feats`` sine features (x 2 pi,
  interleaved sin / cos, as ``sine_position_encoding``): [..., 4] -> [..., 4 * num_feats]."""
  dim_t = np.arange(num_feats, dtype=np.float32)
  dim_t = jnp.asarray(temperature ** (2 * (dim_t // 2) / num_feats), jnp.float32)
  p = boxes[..., None].astype(jnp.float32) * (2 * math.pi) / dim_t  # [..., 4, F]
  p = jnp.stack((jnp.sin(p[..., 0::2]), jnp.cos(p[..., 1::2])), axis=-1)
  return p.reshape(boxes.shape[:-1] + (4 * num_feats,))


class DETR(nn.Module):
  """DETR detector; fields are the official ``main.py`` arguments.

  Denoising (DN-DETR, off unless ``dn_groups > 0``): in training, with ``targets=``
  ({'labels' [B, T], 'boxes' [B, T, 4], 'valid' [B, T]}), ``dn_groups`` noised copies of
  every ground-truth box (``dn_noise``: labels flipped with p ``dn_label_noise``, boxes
  moved / resized by up to ``dn_box_noise``) join the decoder as P = dn_groups * T extra
  queries after the Q matching ones: content = ``dn_label_embed`` of the noised label,
  position = ``dn_box_embed`` (MLP) of the noised box's sine embedding (DETR has no
  anchor boxes, so the box enters as a positional query, as DAB-DETR's
  ``ref_point_head``; DETR's matching queries keep content 0 and ``query_embed``).
  ``dn_attention_mask`` keeps the matching queries from seeing them and the groups from
  each other. The output gains ``dn_outputs``: {'pred_logits' [L, B, P, C + 1],
  'pred_boxes' [L, B, P, 4] for all L decoder layers, and the targets they reconstruct:
  'labels' [B, P], 'boxes' [B, P, 4], 'valid' [B, P]}. At inference there are no dn
  queries: the model is DETR (its extra parameters unused).

  Group DETR (Chen et al., ICCV 2023; off unless ``group_detr`` K > 1): ``query_embed``
  holds K groups of ``num_queries`` rows ([K * Q, d], group k = rows k*Q .. k*Q + Q - 1, as
  Atten4Vis/ConditionalDETR's GroupDETR branch). In training all K * Q queries run, the
  decoder self-attention block diagonal over the groups (``dn_attention_mask``), cross
  attention and heads shared, and ``pred_logits`` / ``pred_boxes`` / ``aux_outputs`` have
  K * Q queries (group-major); ``SetCriterion(..., num_groups=K)`` matches each group on its
  own. At inference only group 0 runs: the outputs have Q queries and equal those of a
  DETR whose query table is group 0's rows. Combines with dn (dn queries after the K * Q).

  Hybrid matching (H-DETR, Jia et al., CVPR 2023; off unless ``one2many_queries`` M > 0):
  in training M more queries (``query_embed_one2many`` [M, d]) run after the matching ones,
  hidden from them and they from the matching queries (``dn_attention_mask``'s one-to-many
  block, H-DETR's ``self_attn_mask``); heads shared. The output gains ``one2many_outputs``
  {'pred_logits' [B, M, C + 1], 'pred_boxes' [B, M, 4], 'aux_outputs'}, which
  ``SetCriterion`` matches to the targets repeated ``one2many_k`` times. At inference they
  do not run: the model is DETR. Combines with dn; not with Group DETR (H-DETR's branch is
  one extra group of another size and supervision).
  """
  num_classes: int = 91
  num_queries: int = 100
  hidden_dim: int = 256
  nheads: int = 8
  enc_layers: int = 6
  dec_layers: int = 6
  dim_feedforward: int = 2048
  dropout: float = 0.1
  pre_norm: bool = False
  aux_loss: bool = True
  backbone: str = 'resnet50'
  dilation: bool = False
  backbone_depths: Optional[Sequence[int]] = None  # override the ResNet's blocks per stage
  backbone_kwargs: Optional[Dict[str, Any]] = None  # create_model overrides (Swin backbone)
  backbone_width: int = 64  # ResNet base width (64 official; smaller for CPU demos)
  # Official: the pretrained stem + layer1 stay fixed. False trains them too (a backbone
  # trained from scratch, as the embedded-dataset demo does).
  freeze_stem: bool = True
  # 'frozen' (official: pretrained FrozenBatchNorm) or 'group' (GroupNorm, from scratch).
  backbone_norm: str = 'frozen'
  train_backbone: bool = True  # official lr_backbone > 0
  img_size: Any = (800, 1200)  # only the default size of the tools (FLOPs); any size runs
  in_chans: int = 3
  dtype: Dtype = jnp.float32
  # DN-DETR denoising queries (0 = off). DN-DETR: 5 groups, label noise 0.2, box noise 0.4.
  dn_groups: int = 0
  dn_label_noise: float = 0.2
  dn_box_noise: float = 0.4
  # Group DETR: K groups of num_queries queries in training (1 = off; the paper: 11).
  group_detr: int = 1
  # H-DETR's one-to-many queries in training (0 = off; H-DETR: 1500 beside 300, k = 6).
  one2many_queries: int = 0
  # > 0: class_embed's bias starts at -log((1 - p) / p), every class scored p by the
  # sigmoid (Deformable DETR with its focal loss: p = 0.01); 0: zeros, as here before.
  class_prior_prob: float = 0.0

  takes_mask = True  # swin_jax.tools.count.make_inputs passes mask= [B, H, W]

  def _check_dn(self):
    if not isinstance(self.dn_groups, (int, np.integer)) or self.dn_groups < 0:
      raise ValueError(f'config.model.dn_groups={self.dn_groups!r} must be an int >= 0 '
                       f'(0 = no denoising queries; DN-DETR: 5).')
    for k in ('dn_label_noise', 'dn_box_noise'):
      if not 0.0 <= float(getattr(self, k)) <= 1.0:
        raise ValueError(f'config.model.{k}={getattr(self, k)!r} must be in [0, 1] '
                         f'(DN-DETR: dn_label_noise 0.2, dn_box_noise 0.4).')
    if not isinstance(self.group_detr, (int, np.integer)) or self.group_detr < 1:
      raise ValueError(f'config.model.group_detr={self.group_detr!r} must be an int >= 1 '
                       f'(1 = off; Group DETR: 11 groups).')
    m = self.one2many_queries
    if not isinstance(m, (int, np.integer)) or m < 0:
      raise ValueError(f'config.model.one2many_queries={m!r} must be an int >= 0 '
                       f'(0 = off; H-DETR: 1500 next to 300 queries).')
    if m and self.group_detr > 1:
      raise ValueError(f'config.model.one2many_queries={m} with config.model.group_detr='
                       f'{self.group_detr}: use one of hybrid matching and Group DETR (set '
                       f'one2many_queries=0 or group_detr=1).')

  @nn.compact
  def __call__(self, x, mask: Optional[jax.Array] = None, train: bool = False,
               targets: Optional[Dict[str, jax.Array]] = None):
    """x: [B, H, W, 3]; mask bool [B, H, W] (True = padded) -> dict (module docstring).

    targets: the padded ground truth (class docstring), used only in training with
    ``dn_groups > 0``; the denoising noise draws from the 'dropout' rng.
    """
    self._check_dn()
    if x.ndim != 4 or x.shape[-1] != self.in_chans:
      raise ValueError(f'expected NHWC images [B, H, W, {self.in_chans}], got {x.shape}')
    B, H, W, _ = x.shape
    if mask is None:
      mask = jnp.zeros((B, H, W), bool)
    mask = jnp.asarray(mask, bool)
    if mask.shape != (B, H, W):
      raise ValueError(f'mask {mask.shape} must be [B, H, W] = {(B, H, W)} (True = padded)')
    deterministic = not train
    feat = Backbone(self.backbone, self.dilation, self.backbone_depths, self.train_backbone,
                    self.backbone_kwargs, self.dtype, self.backbone_width, self.freeze_stem,
                    self.backbone_norm, name='backbone_0')(x, mask, train)
    if not self.train_backbone:
      feat = jax.lax.stop_gradient(feat)
    h, w = feat.shape[1:3]
    fmask = interpolate_mask(mask, (h, w))  # [B, h, w]
    pos = sine_position_encoding(fmask, self.hidden_dim // 2)  # [B, h, w, d] float32
    src = nn.Conv(self.hidden_dim, (1, 1), dtype=self.dtype, name='input_proj')(feat)
    Q, d = self.num_queries, self.hidden_dim
    query_embed = nn.Embed(self.group_detr * Q, d, embedding_init=nn.initializers.normal(1.0),
                           name='query_embed').embedding  # [K * Q, d]
    groups = self.group_detr if train else 1  # Group DETR: inference keeps group 0 only
    nq = groups * Q  # matching queries in the decoder
    query_pos, tgt, dn = query_embed[:nq].astype(self.dtype), None, None
    # Group DETR without dn: the groups' block-diagonal self-attention runs as groups x B
    # attentions of Q queries (the official code's trick: K x fewer logits than the mask);
    # with dn queries beside them the mask (dn_attention_mask) says who sees whom.
    self_mask, attn_groups = None, groups
    m = self.one2many_queries if train else 0  # H-DETR: the one-to-many branch trains only
    if self.one2many_queries:
      one2many_embed = nn.Embed(self.one2many_queries, d,
                                embedding_init=nn.initializers.normal(1.0),
                                name='query_embed_one2many').embedding  # [M, d]
      if m:
        query_pos = jnp.concatenate([query_pos, one2many_embed.astype(self.dtype)], axis=0)
        self_mask, attn_groups = dn_attention_mask(Q, 0, 0, one2many=m), 1
    nm = nq + m  # the queries before the dn ones
    if self.dn_groups:
      dn_label_embed = nn.Embed(self.num_classes, d, name='dn_label_embed')
      dn_box_embed = MLP(d, d, 2, self.dtype, name='dn_box_embed')
      if train and targets is None:
        raise ValueError('config.model.dn_groups > 0 needs the ground truth in training: '
                         'model.apply(..., train=True, targets={labels, boxes, valid}) '
                         '(DetectionTask passes it), or set dn_groups=0.')
      if train:
        T = targets['labels'].shape[1]
        noised_labels, noised_boxes, gt_labels, gt_boxes, dn_valid = dn_noise(
            self.make_rng('dropout'), targets['labels'], targets['boxes'],
            targets.get('valid', jnp.ones(targets['labels'].shape, bool)), self.dn_groups,
            self.num_classes, self.dn_label_noise, self.dn_box_noise)
        live = dn_valid[..., None].astype(self.dtype)  # padded slots: zero queries
        dn_tgt = dn_label_embed(noised_labels).astype(self.dtype) * live
        dn_pos = dn_box_embed(sine_box_embedding(noised_boxes, d // 2)) * live
        query_pos = jnp.concatenate(
            [jnp.broadcast_to(query_pos[None], (B, nm, d)), dn_pos.astype(self.dtype)], axis=1)
        tgt = jnp.concatenate([jnp.zeros((B, nm, d), self.dtype), dn_tgt], axis=1)
        self_mask = dn_attention_mask(Q, self.dn_groups, T, dn_valid, query_groups=groups,
                                      one2many=m)
        attn_groups = 1
        dn = dict(labels=gt_labels, boxes=gt_boxes, valid=dn_valid)
      elif self.is_initializing():  # create the dn parameters, unused at inference
        dn_box_embed(sine_box_embedding(dn_label_embed(jnp.zeros((1,), jnp.int32))[:, :4],
                                        d // 2))
    hs = Transformer(d, self.nheads, self.enc_layers, self.dec_layers, self.dim_feedforward,
                     self.dropout, self.pre_norm, self.dtype, name='transformer')(
        src.reshape(B, h * w, d), fmask.reshape(B, h * w), query_pos,
        pos.reshape(B, h * w, d), deterministic, tgt, self_mask,
        attn_groups)  # [L, B, nq (+ P), d]
    p = float(self.class_prior_prob)
    if not 0.0 <= p < 1.0:
      raise ValueError(f'config.model.class_prior_prob={p} must be in [0, 1) (0: zero bias; '
                       f'Deformable DETR with the focal loss: 0.01).')
    bias_init = (nn.initializers.constant(-math.log((1 - p) / p)) if p > 0
                 else nn.initializers.zeros)
    logits = nn.Dense(self.num_classes + 1, dtype=self.dtype, bias_init=bias_init,
                      name='class_embed')(hs)  # nn.Dense on [layers, B, Q, d]: see MLP
    boxes = jax.nn.sigmoid(MLP(d, 4, 3, self.dtype, name='bbox_embed')(hs).astype(jnp.float32))
    logits = logits.astype(jnp.float32)
    if dn is not None:  # split off the denoising queries (after the nm others)
      dn = dict(dn, pred_logits=logits[:, :, nm:], pred_boxes=boxes[:, :, nm:])
    by_layer = lambda lo, bo: (
        {'pred_logits': lo[-1], 'pred_boxes': bo[-1]},
        [{'pred_logits': a, 'pred_boxes': b} for a, b in zip(lo[:-1], bo[:-1])])
    out, aux = by_layer(logits[:, :, :nq], boxes[:, :, :nq])
    if self.aux_loss:
      out['aux_outputs'] = aux
    if m:  # H-DETR's one-to-many branch, after the nq matching queries
      out['one2many_outputs'], aux = by_layer(logits[:, :, nq:nm], boxes[:, :, nq:nm])
      if self.aux_loss:
        out['one2many_outputs']['aux_outputs'] = aux
    if dn is not None:
      out['dn_outputs'] = dn
    return out


def backbone_variables_from_classifier(variables: Dict[str, Any]) -> Dict[str, Any]:
  """A classifier's variables -> DETR's ``backbone_0/body`` (its head left out).

  ``variables``: {'params', ...collections} of a swin_jax classification checkpoint: a
  ``resnet50``-family model (its ``body``) or a Swin (every top-level module but ``head``),
  as DETR builds its backbone from the same modules. Returns the same collections with
  each tree under ``backbone_0/body``; merged into a fresh DETR by ``config.init_from``
  (the DETR paper's start: an ImageNet-trained backbone, a fresh transformer).
  """
  out = {}
  for col, tree in variables.items():
    tree = dict(tree or {})
    if 'body' in tree and 'conv1' in tree['body']:  # ResNet classifier
      body = tree['body']
    else:
      body = {k: v for k, v in tree.items() if k not in ('head', 'fc')}
    if body:
      out[col] = {'backbone_0': {'body': body}}
  return out


def trainable_mask(params, train_backbone: bool = True, freeze_stem: bool = True):
  """Pytree of bools like ``params``: False for leaves the official DETR never trains.

  The ResNet stem (``backbone_0/body/conv1``) and ``layer1`` are frozen (unless
  ``freeze_stem=False``); with ``train_backbone=False`` the whole backbone. The trainer's
  optimizer gives False leaves no update at all (not even weight decay).
  """
  def is_trainable(path, _):
    keys = [getattr(p, 'key', str(p)) for p in path]
    if keys[:1] != ['backbone_0']:
      return True
    if not train_backbone:
      return False
    return not (freeze_stem and len(keys) > 2 and keys[1] == 'body' and
                (keys[2] == 'conv1' or keys[2].startswith('layer1_')))
  return jax.tree_util.tree_map_with_path(is_trainable, params)


def _detr(default_backbone: str, default_dilation: bool, **kw) -> DETR:
  kw.setdefault('backbone', default_backbone)
  kw.setdefault('dilation', default_dilation)
  return DETR(**kw)


for _name, _bb, _dil in (('detr_resnet50', 'resnet50', False),
                         ('detr_resnet101', 'resnet101', False),
                         ('detr_resnet50_dc5', 'resnet50', True),
                         ('detr_resnet101_dc5', 'resnet101', True)):
  register_model(_name, family='detr')(
      lambda _bb=_bb, _dil=_dil, **kw: _detr(_bb, _dil, **kw))
