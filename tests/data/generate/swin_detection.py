"""Regenerates the goldens of the Swin detection backbone (tests/test_swin.py and
tests/test_convert_swin.py) with the official detection code.

Writes swin_detection_official.safetensors and swin_detection_goldens.npz into --out
(tests/data/README.md says what each holds). --det_repo is a copy of
SwinTransformer/Swin-Transformer-Object-Detection at c7b2011; its
mmdet/models/backbones/swin_transformer.py is imported from there, unmodified. It imports
mmcv_custom, mmdet.utils and mmdet's BACKBONES registry only to load checkpoints, log and
register the class: small stand-ins take their place here (no mmcv / mmdet install), and timm
provides DropPath & co.:

  python tests/data/generate/swin_detection.py \
      --det_repo=/path/to/Swin-Transformer-Object-Detection --out=/tmp/goldens
  python tests/data/generate/compare.py --out=/tmp/goldens
"""
import os
import sys
import types

import numpy as np
import torch

import common

COMMIT = 'c7b2011'
DATA = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A tiny backbone with the release's window 7 and four stages (patch 2 instead of 4 keeps the
# inputs small for the same token maps). On 50x66 pixels the token maps are 25x33 -> 13x17 ->
# 7x9 -> 4x5: every map pads to whole windows (28x35, 14x21, 7x14, 7x7), the first three
# merges pad an odd side, and the last stage (smaller than one window) still shifts, where
# the classification rule would give it a 4x4 window and no shift. 37x47 also pads the patch
# embedding (19x24 tokens from 38x48 pixels -> 10x12 -> 5x6 -> 3x3).
CFG = dict(patch_size=2, embed_dim=4, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4],
           window_size=7, mlp_ratio=2.0, drop_path_rate=0.0, out_indices=(0, 1, 2, 3))
INPUTS = {'x_a': ((2, 3, 50, 66), 0), 'x_b': ((1, 3, 37, 47), 1)}
# The official classification checkpoint of tests/data/official_swin.safetensors (generate/
# swin.py: patch 2, dims 8/16/32, window 4) as a detection backbone, the way the detection
# configs' pretrained= starts one: init_weights() (LayerNorms 1 / 0), then the classifier's
# state_dict loaded with strict=False (mmcv_custom.load_checkpoint; the bias tables have the
# model's shape, so nothing is resized). What that gives is stored: the keys of the loaded
# backbone and its norm0..norm2, the only tensors not from the classifier.
CLS_CFG = dict(patch_size=2, embed_dim=8, depths=[2, 2, 2], num_heads=[2, 2, 4], window_size=4,
               mlp_ratio=4.0, drop_path_rate=0.0, out_indices=(0, 1, 2))

def import_official(repo):
  """The official backbone module, with stand-ins for what it imports from mmcv / mmdet."""
  def module(name, **attrs):
    m = types.ModuleType(name)
    m.__path__ = []  # a package, so the file's relative import resolves
    m.__dict__.update(attrs)
    sys.modules[name] = m
    return m

  class Registry:
    def register_module(self):
      return lambda cls: cls

  def not_here(*_, **__):
    raise RuntimeError('the goldens load weights with torch load_state_dict, not mmcv')

  module('mmcv_custom', load_checkpoint=not_here)
  module('mmdet')
  module('mmdet.utils', get_root_logger=not_here)
  module('mmdet.models')
  module('mmdet.models.builder', BACKBONES=Registry())
  module('mmdet.models.backbones')
  return common.load_module('mmdet.models.backbones.swin_transformer',
                            os.path.join(repo, 'mmdet', 'models', 'backbones',
                                         'swin_transformer.py'))


@torch.no_grad()
def stages(model, x_nchw):
  """The backbone's outputs, NHWC float32 numpy arrays."""
  model.eval()
  return [o.permute(0, 2, 3, 1).numpy() for o in model(torch.from_numpy(x_nchw))]


def main():
  args = common.parse_flags(__doc__, 'det_repo', 'SwinTransformer/Swin-Transformer-Object-'
                            'Detection', 'mmdet/models/backbones/swin_transformer.py', COMMIT)
  common.import_timm()
  official = import_official(args.det_repo)

  model = official.SwinTransformer(**CFG)
  common.randomize_(model.named_parameters(), 2, common.norm_weights(model))
  gold = {}
  for name, (shape, seed) in INPUTS.items():
    x_nchw, gold[name] = common.nhwc_normal(seed, shape)
    for i, out in enumerate(stages(model, x_nchw)):
      gold[f'{name}_stage{i}'] = out
  # The relative_position_index buffers are left out: the model rebuilds them (and our
  # converter ignores them, as mmcv_custom's loader overwrites them with the same values).
  state_dict = {k: v for k, v in model.state_dict().items()
                if not k.endswith('relative_position_index')}
  common.save_safetensors(state_dict,
                          common.out_path(args.out, 'swin_detection_official.safetensors'))

  from safetensors.torch import load_file  # pylint: disable=g-import-not-at-top
  classifier = load_file(os.path.join(DATA, 'official_swin.safetensors'))
  model = official.SwinTransformer(**CLS_CFG)
  torch.manual_seed(0)  # init_weights' trunc_normal_ draws, all overwritten by the load
  model.init_weights()
  result = model.load_state_dict(classifier, strict=False)
  want_missing = {f'norm{i}.{leaf}' for i in range(3) for leaf in ('weight', 'bias')}
  assert set(result.missing_keys) == want_missing, result.missing_keys
  assert all(k.startswith(('norm.', 'head.')) or k.endswith('attn_mask')
             for k in result.unexpected_keys), result.unexpected_keys
  loaded = {k: v for k, v in model.state_dict().items()
            if not k.endswith('relative_position_index')}
  for k, v in loaded.items():
    if k in classifier:
      assert torch.equal(v, classifier[k]), k
  gold['cls_keys'] = np.array(sorted(loaded))
  for k in sorted(want_missing):
    gold['cls_' + k] = loaded[k].numpy()
  common.save_npz(common.out_path(args.out, 'swin_detection_goldens.npz'), gold,
                  compressed=True)


if __name__ == '__main__':
  main()
