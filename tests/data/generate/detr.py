"""Regenerates the DETR goldens (tests/test_detr.py, tests/test_criterion.py) with the official
facebookresearch/detr code.

Writes detr_goldens.npz and detr_criterion_golden.npz into --out (tests/data/README.md says
what each holds). --detr_repo is a copy of facebookresearch/detr at 29901c5; its models/ and
util/ are imported from there, unmodified. torchvision is replaced by a stand-in module made
here (`install_torchvision_stand_in`): DETR asks torchvision only for the ResNet, the layer
getter and box_area, and PyPI has no torchvision build that loads with a CPU-only torch.

  python tests/data/generate/detr.py --detr_repo=/path/to/detr --out=/tmp/goldens
  python tests/data/generate/compare.py --out=/tmp/goldens
"""
import collections
import json
import os
import sys
import types

import numpy as np
import torch
from torch import nn

import common

COMMIT = '29901c5'
TESTS = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The two model configs: a ResNet with one Bottleneck per stage (real widths), hidden 32,
# 8 heads, 2 + 2 layers, FFN 64, 10 queries, 5 classes; name -> (DC5 dilation, pre-norm, seed).
MODELS = {'post': (False, False, 1000), 'dc5_pre': (True, True, 1001)}
RESNET_BLOCKS = (1, 1, 1, 1)
HIDDEN, HEADS, LAYERS, FFN, QUERIES, CLASSES = 32, 8, 2, 64, 10, 5
IMAGE_SEED, IMAGES, SMALL = 123, (2, 64, 96, 3), (48, 64)  # image 1 is 48x64, padded

# The criterion cases: real boxes per image; Q=10 queries, 2 aux layers, targets padded to 4.
CASES = {0: (3, 1), 1: (2, 0), 2: (0, 0)}
LAYERS_WITH_AUX, PAD, PAD_LABEL, PAD_BOX = 3, 4, 3, 0.5
WEIGHTS = {'loss_ce': 1, 'loss_bbox': 5, 'loss_giou': 2}


# ---------------------------------------------------------------------------------------------
# torchvision stand-in: the ResNet (torchvision's layout and strides, v1.5), the layer getter
# and box_area, which is all DETR asks of torchvision.


class Bottleneck(nn.Module):
  expansion = 4

  def __init__(self, inplanes, planes, stride, dilation, downsample, norm_layer):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
    self.bn1 = norm_layer(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride, padding=dilation, dilation=dilation,
                           bias=False)  # stride on the 3x3 (v1.5)
    self.bn2 = norm_layer(planes)
    self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
    self.bn3 = norm_layer(planes * 4)
    self.relu = nn.ReLU(inplace=True)
    self.downsample = downsample

  def forward(self, x):
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet(nn.Module):
  """torchvision.models.ResNet with Bottleneck blocks: same module names and strides."""

  def __init__(self, blocks, replace_stride_with_dilation, norm_layer, num_classes=1000):
    super().__init__()
    self.inplanes, self.dilation = 64, 1
    self.conv1 = nn.Conv2d(3, 64, 7, 2, padding=3, bias=False)
    self.bn1 = norm_layer(64)
    self.relu = nn.ReLU(inplace=True)
    self.maxpool = nn.MaxPool2d(3, 2, padding=1)
    dilate = [False] + list(replace_stride_with_dilation)
    for i, (planes, n) in enumerate(zip((64, 128, 256, 512), blocks)):
      setattr(self, f'layer{i + 1}',
              self._make_layer(planes, n, 1 if i == 0 else 2, dilate[i], norm_layer))
    self.avgpool = nn.AdaptiveAvgPool2d(1)
    self.fc = nn.Linear(512 * 4, num_classes)

  def _make_layer(self, planes, n, stride, dilate, norm_layer):
    first_dilation = self.dilation  # a dilated stage's first block keeps the old dilation
    if dilate:
      self.dilation *= stride
      stride = 1
    downsample = None
    if stride != 1 or self.inplanes != planes * 4:
      downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes * 4, 1, stride, bias=False),
                                 norm_layer(planes * 4))
    layers = [Bottleneck(self.inplanes, planes, stride, first_dilation, downsample, norm_layer)]
    self.inplanes = planes * 4
    layers += [Bottleneck(self.inplanes, planes, 1, self.dilation, None, norm_layer)
               for _ in range(1, n)]
    return nn.Sequential(*layers)


def resnet(replace_stride_with_dilation=(False, False, False), pretrained=False,
           norm_layer=nn.BatchNorm2d):
  del pretrained  # random weights; DETR asks for ImageNet ones on its main process
  return ResNet(RESNET_BLOCKS, replace_stride_with_dilation, norm_layer)


class IntermediateLayerGetter(nn.ModuleDict):
  """The children of `model` up to the last of `return_layers`; forward returns their outputs
  {return_layers[name]: output} in order."""

  def __init__(self, model, return_layers):
    wanted, layers = dict(return_layers), collections.OrderedDict()
    for name, module in model.named_children():
      layers[name] = module
      wanted.pop(name, None)
      if not wanted:
        break
    super().__init__(layers)
    self.return_layers = dict(return_layers)

  def forward(self, x):
    out = collections.OrderedDict()
    for name, module in self.items():
      x = module(x)
      if name in self.return_layers:
        out[self.return_layers[name]] = x
    return out


def box_area(boxes):
  """[N, 4] x0, y0, x1, y1 -> [N]."""
  return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def install_torchvision_stand_in():
  def module(name, **attrs):
    m = types.ModuleType(name)
    m.__dict__.update(attrs)
    sys.modules[name] = m
    return m
  tv = module('torchvision', __version__='1.0+stand-in', _is_tracing=lambda: False)
  tv.models = module('torchvision.models', resnet50=resnet, resnet101=resnet)
  tv.models._utils = module('torchvision.models._utils',  # pylint: disable=protected-access
                            IntermediateLayerGetter=IntermediateLayerGetter)
  tv.ops = module('torchvision.ops')
  tv.ops.boxes = module('torchvision.ops.boxes', box_area=box_area)


# ---------------------------------------------------------------------------------------------
# Goldens.


def inputs():
  """NHWC images (image 1 zero beyond 48x64) and the padding mask (True on padding)."""
  images = np.random.default_rng(IMAGE_SEED).standard_normal(IMAGES).astype(np.float32)
  mask = np.ones(IMAGES[:3], bool)
  mask[0] = False
  mask[1, :SMALL[0], :SMALL[1]] = False
  images[mask] = 0
  return images, mask


def model_goldens(source_weights):
  from models.backbone import build_backbone  # pylint: disable=g-import-not-at-top
  from models.detr import DETR  # pylint: disable=g-import-not-at-top
  from models.transformer import build_transformer  # pylint: disable=g-import-not-at-top
  from util.misc import NestedTensor  # pylint: disable=g-import-not-at-top
  images, mask = inputs()
  gold = {'images': images, 'mask': mask}
  samples = NestedTensor(torch.from_numpy(images.transpose(0, 3, 1, 2).copy()),
                         torch.from_numpy(mask))
  for name, (dc5, pre_norm, seed) in MODELS.items():
    args = types.SimpleNamespace(
        backbone='resnet50', dilation=dc5, lr_backbone=1e-5, masks=False,
        position_embedding='sine', hidden_dim=HIDDEN, dropout=0.1, nheads=HEADS,
        dim_feedforward=FFN, enc_layers=LAYERS, dec_layers=LAYERS, pre_norm=pre_norm)
    model = DETR(build_backbone(args), build_transformer(args), num_classes=CLASSES,
                 num_queries=QUERIES, aux_loss=True)
    shapes = [[k, list(v.shape)] for k, v in model.state_dict().items()]
    weights = source_weights(shapes, seed)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
    model.eval()
    with torch.no_grad():
      out = model(samples)
    gold[f'{name}/shapes'] = np.array(json.dumps(shapes))
    gold[f'{name}/seed'] = np.int64(seed)
    gold[f'{name}/pred_logits'] = out['pred_logits'].numpy()
    gold[f'{name}/pred_boxes'] = out['pred_boxes'].numpy()
    gold[f'{name}/aux_logits'] = out['aux_outputs'][0]['pred_logits'].numpy()
    gold[f'{name}/aux_boxes'] = out['aux_outputs'][0]['pred_boxes'].numpy()
  return gold


def random_boxes(rng, shape):
  """cx, cy in [0.2, 0.8], w, h in [0.05, 0.45]; shape + [4] float32."""
  cxcy = rng.uniform(0.2, 0.8, shape + (2,))
  wh = rng.uniform(0.05, 0.45, shape + (2,))
  return np.concatenate([cxcy, wh], -1).astype(np.float32)


def criterion_case(case, counts):
  """One case's inputs from default_rng(case): per layer (aux 0, aux 1, last) the logits and
  boxes, then per image its labels and boxes."""
  rng = np.random.default_rng(case)
  logits, boxes = [], []
  for _ in range(LAYERS_WITH_AUX):
    layer = (2 * rng.standard_normal((len(counts), QUERIES, CLASSES + 1))).astype(np.float32)
    layer[..., -1] += 1  # no-object
    logits.append(layer)
    boxes.append(random_boxes(rng, (len(counts), QUERIES)))
  labels = np.full((len(counts), PAD), PAD_LABEL, np.int32)
  target_boxes = np.full((len(counts), PAD, 4), PAD_BOX, np.float32)
  valid = np.zeros((len(counts), PAD), bool)
  for b, n in enumerate(counts):
    labels[b, :n] = rng.integers(0, CLASSES, n)
    target_boxes[b, :n] = random_boxes(rng, (n,))
    valid[b, :n] = True
  return np.stack(logits), np.stack(boxes), labels, target_boxes, valid


def criterion_goldens():
  from models.detr import SetCriterion  # pylint: disable=g-import-not-at-top
  from models.matcher import HungarianMatcher  # pylint: disable=g-import-not-at-top
  weight_dict = dict(WEIGHTS)
  for i in range(LAYERS_WITH_AUX - 1):
    weight_dict.update({f'{k}_{i}': v for k, v in WEIGHTS.items()})
  matcher = HungarianMatcher(cost_class=1, cost_bbox=5, cost_giou=2)
  criterion = SetCriterion(CLASSES, matcher=matcher, weight_dict=weight_dict, eos_coef=0.1,
                           losses=['labels', 'boxes', 'cardinality'])
  gold = {}
  for case, counts in CASES.items():
    logits, boxes, labels, target_boxes, valid = criterion_case(case, counts)
    p = f'c{case}_'
    gold.update({p + 'pred_logits': logits, p + 'pred_boxes': boxes, p + 'labels': labels,
                 p + 'boxes': target_boxes, p + 'valid': valid})
    layers = [{'pred_logits': torch.from_numpy(l), 'pred_boxes': torch.from_numpy(b)}
              for l, b in zip(logits, boxes)]
    outputs = dict(layers[-1], aux_outputs=layers[:-1])
    targets = [{'labels': torch.from_numpy(labels[b, :n]).long(),
                'boxes': torch.from_numpy(target_boxes[b, :n])} for b, n in enumerate(counts)]
    losses = criterion(outputs, targets)
    total = sum(losses[k] * weight_dict[k] for k in losses if k in weight_dict)  # engine.py
    for k, v in losses.items():
      gold[f'{p}loss/{k}'] = np.float64(v.item())
    gold[f'{p}loss/total'] = np.float64(total.item())
    pred_for_tgt = np.full((len(counts), PAD), -1, np.int32)
    for b, (src, tgt) in enumerate(matcher(layers[-1], targets)):
      pred_for_tgt[b, tgt.numpy()] = src.numpy()
    gold[p + 'pred_for_tgt'] = pred_for_tgt
  return gold


def main():
  args = common.parse_flags(__doc__, 'detr_repo', 'facebookresearch/detr',
                            'models/detr.py', COMMIT)
  # The weights are drawn by the test itself from the stored seed: one definition for both.
  source_weights = common.load_module('test_detr', os.path.join(TESTS, 'test_detr.py')
                                      ).source_weights
  install_torchvision_stand_in()
  sys.path.insert(0, os.path.abspath(args.detr_repo))  # its packages: models, util
  common.save_npz(common.out_path(args.out, 'detr_goldens.npz'), model_goldens(source_weights),
                  compressed=True)
  common.save_npz(common.out_path(args.out, 'detr_criterion_golden.npz'), criterion_goldens())


if __name__ == '__main__':
  main()
