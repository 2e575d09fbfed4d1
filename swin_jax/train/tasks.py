"""What differs between tasks: the loss and the metrics. The loop is shared.

A task has:
  loss(outputs, batch) -> (scalar loss, dict of scalar metrics)       [train step]
  eval_sums(outputs, batch) -> dict of per-batch sums, incl. 'count'   [eval step]
  summarize(sums) -> dict of final metrics                              [host]
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


class ClassificationTask:
  """Softmax cross-entropy with optional label smoothing; top-1 / top-5 accuracy."""

  def __init__(self, num_classes: int, label_smoothing: float = 0.0):
    self.num_classes = num_classes
    self.label_smoothing = label_smoothing

  def targets(self, batch):
    """One-hot (or already soft, e.g. mixup) targets [B, classes], smoothed as configured."""
    labels = batch['label']
    if labels.ndim == 1:
      labels = jax.nn.one_hot(labels, self.num_classes, dtype=jnp.float32)
    if self.label_smoothing:
      labels = optax.smooth_labels(labels, self.label_smoothing)
    return labels

  def loss(self, logits, batch):
    logits = logits.astype(jnp.float32)
    loss = optax.softmax_cross_entropy(logits, self.targets(batch)).mean()
    metrics = {'loss': loss}
    if batch['label'].ndim == 1:
      metrics['accuracy'] = (jnp.argmax(logits, -1) == batch['label']).mean()
    return loss, metrics

  def eval_sums(self, logits, batch):
    logits = logits.astype(jnp.float32)
    mask = batch['mask'].astype(jnp.float32)
    labels = batch['label']
    onehot = jax.nn.one_hot(labels, self.num_classes, dtype=jnp.float32)
    ce = optax.softmax_cross_entropy(logits, onehot)
    top1 = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    k = min(5, self.num_classes)
    topk = jnp.any(jax.lax.top_k(logits, k)[1] == labels[:, None], axis=-1).astype(jnp.float32)
    return {'loss': (ce * mask).sum(), 'top1': (top1 * mask).sum(),
            'top5': (topk * mask).sum(), 'count': mask.sum()}

  def summarize(self, sums):
    n = max(float(sums['count']), 1.0)
    return {'loss': float(sums['loss']) / n, 'accuracy': float(sums['top1']) / n,
            'top5_accuracy': float(sums['top5']) / n, 'num_examples': int(sums['count'])}
