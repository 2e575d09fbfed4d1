"""Tests of swin_jax.tools: parameter / MAC counting and the count and benchmark CLIs."""
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
from jax import lax

from swin_jax.models import create_model
from swin_jax.tools import count

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# timm 1.0.x parameter counts, num_classes=1000.
TIMM_PARAMS = {
    'vit_tiny_patch16_224': 5_717_416,
    'vit_small_patch16_224': 22_050_664,
    'vit_base_patch16_224': 86_567_656,
    'vit_base_patch32_224': 88_224_232,
    'vit_large_patch16_224': 304_326_632,
    'vit_huge_patch14_224': 632_045_800,
}


def _sds(*shape):
  return jax.ShapeDtypeStruct(shape, jnp.float32)


@pytest.mark.parametrize('name', sorted(TIMM_PARAMS))
def test_vit_param_counts_match_timm(name):
  model = create_model(name)
  variables = count.abstract_variables(model, count.input_shape_for(model))
  assert count.count_params(variables) == TIMM_PARAMS[name]


def test_vit_base_flops_match_published():
  stats = count.model_stats('vit_base_patch16_224')
  assert stats['params'] == TIMM_PARAMS['vit_base_patch16_224']
  assert stats['input_shape'] == (1, 224, 224, 3)
  assert stats['img_size'] == (224, 224)
  assert abs(stats['macs'] - 17.58e9) / 17.58e9 < 0.02, stats['macs']


def test_macs_per_image_independent_of_batch():
  one = count.model_stats('vit_demo')['macs']
  assert count.model_stats('vit_demo', batch=3)['macs'] == one


def test_img_size_override_changes_macs_and_pos_embed():
  stats = count.model_stats('vit_demo', img_size=(32, 48))
  assert stats['img_size'] == (32, 48)
  # 8x12 patches + class token, 96 dims: pos_embed grows by (97 - 65) * 96 parameters.
  assert stats['params'] - count.model_stats('vit_demo')['params'] == (97 - 65) * 96


def test_bad_img_size_raises_model_error():
  with pytest.raises(ValueError, match='img_size'):
    count.model_stats('vit_demo', img_size=30)


def test_count_params_ignores_other_collections():
  variables = {'params': {'a': _sds(3, 4), 'b': {'c': _sds(5)}},
               'batch_stats': {'mean': _sds(100)}}
  assert count.count_params(variables) == 17
  assert count.count_params({'batch_stats': {'mean': _sds(100)}}) == 0


class _Dense(nn.Module):
  features: int

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    return nn.Dense(self.features)(x)


def test_macs_dense():
  assert count.count_flops(_Dense(7), (5, 3)) == 5 * 3 * 7
  # Leading dims are free dims of the lhs.
  assert count.count_flops(_Dense(7), (2, 4, 3)) == 2 * 4 * 3 * 7


class _Conv(nn.Module):
  features: int
  groups: int
  strides: int = 1

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    return nn.Conv(self.features, (3, 3), strides=self.strides, padding='SAME',
                   feature_group_count=self.groups)(x)


@pytest.mark.parametrize('groups', [1, 2, 4])
def test_macs_conv_with_groups(groups):
  # out elements (2*5*5*8) x in features per group (4/groups) x window (3*3).
  assert count.count_flops(_Conv(8, groups), (2, 5, 5, 4)) == 2 * 5 * 5 * 8 * (4 // groups) * 9


def test_macs_strided_depthwise_conv():
  # Depthwise 3x3 stride 2 on 6x6x4: output 3x3x4 per image, 1 input feature per group.
  assert count.count_flops(_Conv(4, 4, strides=2), (1, 6, 6, 4)) == 3 * 3 * 4 * 1 * 9


def test_macs_batched_einsum():
  f = lambda q, k: jnp.einsum('bhqd,bhkd->bhqk', q, k)
  jaxpr = jax.make_jaxpr(f)(_sds(2, 3, 5, 8), _sds(2, 3, 7, 8))
  assert count.jaxpr_macs(jaxpr) == 2 * 3 * 5 * 7 * 8


def test_macs_scan_counts_length_times():
  def f(x, w):
    y, _ = lax.scan(lambda c, _: (c @ w, None), x, None, length=6)
    return y
  jaxpr = jax.make_jaxpr(f)(_sds(4, 5), _sds(5, 5))
  assert count.jaxpr_macs(jaxpr) == 6 * 4 * 5 * 5


def test_macs_cond_takes_max_branch_and_recurses_into_calls():
  def f(p, x, w):
    y = lax.cond(p, lambda a: a @ w, lambda a: a * 2.0, x)  # 3*4*4 vs 0
    y = jax.checkpoint(lambda a: a @ w)(y)                 # 3*4*4 inside remat
    return jax.jit(lambda a: a @ w)(y)                     # 3*4*4 inside a jit call
  jaxpr = jax.make_jaxpr(f)(jax.ShapeDtypeStruct((), jnp.bool_), _sds(3, 4), _sds(4, 4))
  assert count.jaxpr_macs(jaxpr) == 3 * 3 * 4 * 4


def _run(module, *args):
  return subprocess.run([sys.executable, '-m', module, *args], cwd=REPO, capture_output=True,
                        text=True, timeout=300)


def test_count_cli():
  r = _run('swin_jax.tools.count', 'vit_demo')
  assert r.returncode == 0, r.stderr
  assert 'vit_demo' in r.stdout and 'params 407,368' in r.stdout
  assert 'FLOPs' in r.stdout and 'XLA flops' in r.stdout


@pytest.mark.parametrize('module', ['swin_jax.tools.count', 'swin_jax.tools.benchmark'])
def test_cli_bad_img_size(module):
  r = _run(module, 'vit_demo', '--img-size', '30', '--batch', '2')
  assert r.returncode == 2
  assert 'img_size' in r.stderr
  assert 'Traceback' not in r.stderr
  assert len(r.stderr.strip().splitlines()) == 1


def test_count_cli_unknown_model():
  r = _run('swin_jax.tools.count', 'vit_dem')
  assert r.returncode == 2
  assert 'unknown model name' in r.stderr and 'vit_demo' in r.stderr


def test_benchmark_cli():
  r = _run('swin_jax.tools.benchmark', 'vit_demo', '--batch', '2', '--steps', '2')
  assert r.returncode == 0, r.stderr
  assert r.stdout.count('images/s') == 2
  assert 'compile' in r.stdout and 'memory' in r.stdout
  assert f'backend {jax.default_backend()}' in r.stdout
