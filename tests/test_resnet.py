"""The ResNet classifier (models/resnet.py ResNet): torchvision's parameter counts, torchvision
weights giving torchvision's logits, and a classification workdir starting DETR's backbone.

The numerical reference is torchvision's ResNet forward written here with torch.nn.functional
(conv2d / batch_norm in eval mode / max_pool2d / adaptive_avg_pool2d / linear, the v1.5
bottleneck with the stride on the 3x3 conv), on the state_dict that is converted: another
framework and another layout (NCHW, OIHW) than the model under test.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from swin_jax.convert import load_torch_checkpoint
from swin_jax.models import create_model, model_family
from swin_jax.models import detr as detr_lib

# torchvision's published sizes (torchvision.models docs: "params" of ResNet50_Weights /
# ResNet101_Weights), BatchNorm weight and bias included.
TORCHVISION_PARAMS = {'resnet50': 25_557_032, 'resnet101': 44_549_160}


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize('name', sorted(TORCHVISION_PARAMS))
def test_param_counts_match_torchvision(name):
  assert model_family(name) == 'resnet'
  x = jnp.zeros((1, 224, 224, 3))
  group = jax.eval_shape(lambda: create_model(name, norm='group').init(jax.random.key(0), x))
  assert set(group) == {'params'} and _count(group) == TORCHVISION_PARAMS[name]
  # 'frozen': BatchNorm weight / bias are buffers there (with the running statistics).
  frozen = jax.eval_shape(lambda: create_model(name).init(jax.random.key(0), x))
  bn_affine = [v for p, v in jax.tree_util.tree_leaves_with_path(frozen['frozen'])
               if p[-1].key in ('weight', 'bias')]
  assert _count(frozen['params']) + _count(bn_affine) == TORCHVISION_PARAMS[name]


def _state_dict(depths, width, num_classes, seed=0):
  """Random torchvision-layout weights for a ResNet with `depths` bottlenecks per stage."""
  rng = np.random.default_rng(seed)
  sd = {}

  def conv(key, cout, cin, k):
    sd[key + '.weight'] = rng.normal(0, np.sqrt(2.0 / (cin * k * k)),
                                     (cout, cin, k, k)).astype(np.float32)

  def bn(key, c):
    sd[key + '.weight'] = rng.uniform(0.5, 1.5, c).astype(np.float32)
    sd[key + '.bias'] = rng.normal(0, 0.1, c).astype(np.float32)
    sd[key + '.running_mean'] = rng.normal(0, 0.1, c).astype(np.float32)
    sd[key + '.running_var'] = rng.uniform(0.5, 1.5, c).astype(np.float32)
    sd[key + '.num_batches_tracked'] = np.array(7)

  conv('conv1', width, 3, 7)
  bn('bn1', width)
  cin = width
  for i, depth in enumerate(depths):
    planes = width * 2 ** i
    for j in range(depth):
      p = f'layer{i + 1}.{j}'
      conv(p + '.conv1', planes, cin, 1)
      bn(p + '.bn1', planes)
      conv(p + '.conv2', planes, planes, 3)
      bn(p + '.bn2', planes)
      conv(p + '.conv3', planes * 4, planes, 1)
      bn(p + '.bn3', planes * 4)
      if j == 0:
        conv(p + '.downsample.0', planes * 4, cin, 1)
        bn(p + '.downsample.1', planes * 4)
      cin = planes * 4
  sd['fc.weight'] = rng.normal(0, 0.05, (num_classes, cin)).astype(np.float32)
  sd['fc.bias'] = rng.normal(0, 0.1, num_classes).astype(np.float32)
  return sd


def _torch_resnet(sd, depths, x_nchw):
  """torchvision.models.resnet.ResNet.forward in eval mode, from the state_dict."""
  import torch
  import torch.nn.functional as F
  t = {k: torch.from_numpy(np.asarray(v)) for k, v in sd.items()}

  def bn(x, k):
    return F.batch_norm(x, t[k + '.running_mean'], t[k + '.running_var'], t[k + '.weight'],
                        t[k + '.bias'], training=False, eps=1e-5)

  x = F.relu(bn(F.conv2d(x_nchw, t['conv1.weight'], stride=2, padding=3), 'bn1'))
  x = F.max_pool2d(x, 3, 2, 1)
  for i, depth in enumerate(depths):
    for j in range(depth):
      p = f'layer{i + 1}.{j}'
      stride = 2 if (i > 0 and j == 0) else 1
      out = F.relu(bn(F.conv2d(x, t[p + '.conv1.weight']), p + '.bn1'))
      out = F.relu(bn(F.conv2d(out, t[p + '.conv2.weight'], stride=stride, padding=1),
                      p + '.bn2'))
      out = bn(F.conv2d(out, t[p + '.conv3.weight']), p + '.bn3')
      idt = x
      if j == 0:
        idt = bn(F.conv2d(x, t[p + '.downsample.0.weight'], stride=stride), p + '.downsample.1')
      x = F.relu(out + idt)
  x = F.adaptive_avg_pool2d(x, 1).flatten(1)
  return F.linear(x, t['fc.weight'], t['fc.bias'])


def test_torchvision_weights_give_torchvision_logits():
  torch = pytest.importorskip('torch')
  depths, width, classes = (2, 1, 1, 1), 16, 7
  sd = _state_dict(depths, width, classes)
  over = dict(depths=depths, width=width, num_classes=classes)
  variables = load_torch_checkpoint('resnet50', sd, **over)
  assert set(variables) == {'params', 'frozen'}
  x = np.random.default_rng(1).normal(size=(2, 70, 54, 3)).astype(np.float32)  # odd sizes
  ours = create_model('resnet50', **over).apply(variables, x)
  with torch.no_grad():
    ref = _torch_resnet(sd, depths, torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
  # float32 through 6 conv layers: a few ulps of the logit scale.
  np.testing.assert_allclose(np.asarray(ours), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_bad_torchvision_checkpoints_name_the_fix():
  sd = _state_dict((1, 1, 1, 1), 16, 10)
  with pytest.raises(ValueError, match='num_classes=10'):
    load_torch_checkpoint('resnet50', sd, depths=(1, 1, 1, 1), width=16, num_classes=1000)
  with pytest.raises(ValueError, match="norm='frozen'"):
    load_torch_checkpoint('resnet50', sd, depths=(1, 1, 1, 1), width=16, num_classes=10,
                          norm='group')
  with pytest.raises(ValueError, match='does not fit'):
    load_torch_checkpoint('resnet50', sd, depths=(1, 2, 1, 1), width=16, num_classes=10)
  head = load_torch_checkpoint('resnet50', sd, depths=(1, 1, 1, 1), width=16, num_classes=5,
                               drop_head=True)
  assert 'fc' not in head['params']


def test_classifier_variables_map_onto_the_detr_backbone():
  """A ResNet classifier's body (params and frozen statistics) lands in DETR's backbone_0/body
  with every leaf matched; the head is left out."""
  over = dict(depths=(1, 1), width=8, norm='group')
  clf = create_model('resnet50', num_classes=10, **over)
  v = clf.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  mapped = detr_lib.backbone_variables_from_classifier(v)
  det = create_model('detr_resnet50', num_classes=10, backbone_depths=(1, 1), backbone_width=8,
                     backbone_norm='group', hidden_dim=16, nheads=2, enc_layers=1,
                     dec_layers=1, dim_feedforward=16, num_queries=3)
  dv = jax.eval_shape(lambda: det.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                                       mask=jnp.zeros((1, 32, 32), bool)))
  want = jax.tree.map(lambda x: x.shape, dv['params']['backbone_0'])
  got = jax.tree.map(lambda x: x.shape, mapped['params']['backbone_0'])
  assert got == want
  assert 'fc' not in str(jax.tree_util.tree_structure(mapped))


@pytest.mark.parametrize('hw', [(40, 40), (41, 39), (1, 2), (7, 8)])
def test_max_pool_equals_reduce_window(hw):
  import flax.linen as nn
  from swin_jax.models.resnet import max_pool_3x3_s2
  x = jax.random.normal(jax.random.PRNGKey(0), (2, *hw, 3))
  ref = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
  np.testing.assert_array_equal(max_pool_3x3_s2(x), ref)
  g = jax.grad(lambda x: (max_pool_3x3_s2(x) ** 2).sum())(x)
  g_ref = jax.grad(lambda x: (nn.max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1))) ** 2).sum())(x)
  np.testing.assert_allclose(g, g_ref, rtol=1e-6)
