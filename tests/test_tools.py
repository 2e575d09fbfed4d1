"""Tests of swin_jax.tools: parameter / MAC counting and the count and benchmark CLIs."""
import os
import re
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
from jax import lax

from swin_jax.models import create_model
from swin_jax.tools import benchmark, count

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


# A DETR that compiles and runs in seconds on CPU: a 2-stage ResNet of width 8 (stride 8:
# 4x4 tokens at 32 px), 1 encoder + 2 decoder layers (so the aux loss is on), 6 queries.
TINY_DETR_ARGS = ('backbone_depths=(1,1)', 'backbone_width=8', 'hidden_dim=16', 'nheads=2',
                  'enc_layers=1', 'dec_layers=2', 'dim_feedforward=32', 'num_queries=6',
                  'num_classes=3')


def _benchmark_main(monkeypatch, capsys, *argv):
  """benchmark.main in this process (no second jax start-up): (rc, stdout, stderr, the
  benchmark() results it printed)."""
  # quiet_startup would leave its absl filter on for the tests that follow in this worker.
  monkeypatch.setattr(benchmark.cli, 'quiet_startup', lambda: None)
  reports, real = [], benchmark.benchmark
  monkeypatch.setattr(benchmark, 'benchmark',
                      lambda *a, **k: reports.append(real(*a, **k)) or reports[-1])
  rc = benchmark.main(list(argv))
  out = capsys.readouterr()
  return rc, out.out, out.err, reports


def test_benchmark_detr_trains_set_loss_with_model_args(monkeypatch, capsys):
  model_args = [a for kv in TINY_DETR_ARGS for a in ('--model-arg', kv)]
  rc, out, err, reports = _benchmark_main(
      monkeypatch, capsys, 'detr_resnet50', '--batch', '2', '--img-size', '32', '--steps', '1',
      '--boxes', '3', *model_args)
  assert rc == 0, err
  assert re.search(r'^train: +\d+\.\d images/s', out, re.M), out
  assert re.search(r'^inference: +\d+\.\d images/s', out, re.M), out
  assert 'loss DETR set criterion, 3 boxes/image' in out and 'img 32x32  batch 2' in out
  # The overrides reached the model: the tiny DETR's parameters, not DETR-R50's 41.5 M.
  tiny = create_model('detr_resnet50', **benchmark.parse_model_args(TINY_DETR_ARGS))
  expected = count.count_params(count.abstract_variables(tiny, (1, 32, 32, 3)))
  assert reports[0]['params'] == expected < 100_000
  assert reports[0]['train_images_per_s'] > 0


def test_detection_targets_are_padded_boxes_inside_the_image():
  t = benchmark.detection_targets(batch=2, num_slots=6, boxes_per_image=3, num_classes=4)
  assert t['labels'].shape == (2, 6) and t['boxes'].shape == (2, 6, 4)
  assert t['valid'].tolist() == [[True] * 3 + [False] * 3] * 2
  assert 0 <= int(t['labels'].min()) and int(t['labels'].max()) < 4
  cxcy, wh = t['boxes'][..., :2], t['boxes'][..., 2:]
  assert float((cxcy - wh / 2).min()) >= 0 and float((cxcy + wh / 2).max()) <= 1


def test_parse_model_args_reads_literals():
  got = benchmark.parse_model_args(['fast_cpu=True', 'depths=(1, 1)', 'drop_path_rate=0.1',
                                    'num_classes=10', 'backbone=resnet101', 'aux_loss=false'])
  assert got == dict(fast_cpu=True, depths=(1, 1), drop_path_rate=0.1, num_classes=10,
                     backbone='resnet101', aux_loss=False)
  for items, match in ((['depths'], 'KEY=VALUE'), (['img_size=64'], '--img-size'),
                       (['dtype=bfloat16'], '--dtype'), (['a=1', 'a=2'], 'twice')):
    with pytest.raises(ValueError, match=match):
      benchmark.parse_model_args(items)


@pytest.mark.parametrize('arg', ['no_such_field=1', 'depths'])
def test_benchmark_bad_model_arg_names_the_flag(monkeypatch, capsys, arg):
  rc, out, err, reports = _benchmark_main(monkeypatch, capsys, 'vit_demo', '--batch', '1',
                                          '--model-arg', arg)
  assert rc == 2 and not out and not reports  # refused before anything compiles
  assert len(err.strip().splitlines()) == 1 and '--model-arg' in err
  assert arg.split('=')[0] in err and 'Traceback' not in err


def test_profile_script_attributes_the_step_to_its_ops():
  """experiments/profile_cpu_step.py on a tiny ViT: the traced thunks are the compiled
  module's ops, with the matmuls among them, and their summed time is the same order as
  the step's wall time (concurrent thunks may exceed it)."""
  script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        'experiments', 'profile_cpu_step.py')
  res = subprocess.run([sys.executable, script, 'vit_demo', '--batch', '2', '--img-size', '16',
                        '--steps', '2', '--top', '5'], capture_output=True, text=True,
                       timeout=300)
  assert res.returncode == 0, res.stderr[-3000:]
  m = re.search(r'([\d.]+) ms per step .* thunks ([\d.]+) ms per step \((\d+) ops\)', res.stdout)
  assert m, res.stdout
  wall, thunks, ops = float(m.group(1)), float(m.group(2)), int(m.group(3))
  assert ops > 20 and 0.1 * wall < thunks < 4 * wall, res.stdout
  kinds = dict(re.findall(r'^  (\S+) +([\d.]+) +[\d.]+%$', res.stdout, re.M))
  assert any(k == 'dot' or k.startswith('fusion') for k in kinds), res.stdout
  assert 'dot' in res.stdout.split('by what they compute')[1], res.stdout
