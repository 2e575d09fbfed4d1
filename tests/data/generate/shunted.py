"""Regenerates the goldens of tests/test_convert_shunted.py with the official Shunted code.

Writes shunted_official_tiny.safetensors and shunted_goldens.npz into --out
(tests/data/README.md says what each holds). --shunted_repo is a copy of
OliverRensu/Shunted-Transformer at 6861101; its SSA.py is imported from there, unmodified (it
imports timm for DropPath, register_model & co.):

  python tests/data/generate/shunted.py --shunted_repo=/path/to/Shunted-Transformer \
      --out=/tmp/goldens
  python tests/data/generate/compare.py --out=/tmp/goldens
"""
import functools
import os

import numpy as np
import torch
from torch import nn

import common

COMMIT = '6861101'
# Every attention kind (sr 2 with the 1x1 fine branch, 8, 4 and sr 1) and a stem with one
# extra 3x3 block; stage 1 must have the stem's 64 channels.
CFG = dict(img_size=64, num_classes=10, embed_dims=[64, 8, 8, 16], num_heads=[2, 2, 2, 4],
           mlp_ratios=[1, 2, 2, 2], qkv_bias=True, depths=[1, 1, 2, 2], sr_ratios=[2, 8, 4, 1],
           num_conv=1)
STEM_BATCH_NORMS = (1, 4)  # patch_embed1.conv.{1,4}


def main():
  args = common.parse_flags(__doc__, 'shunted_repo', 'OliverRensu/Shunted-Transformer',
                            'SSA.py', COMMIT)
  common.import_timm()
  ssa = common.load_module('shunted_official_ssa', os.path.join(args.shunted_repo, 'SSA.py'))

  model = ssa.ShuntedTransformer(**CFG, norm_layer=functools.partial(nn.LayerNorm, eps=1e-6))
  state_dict = model.state_dict()  # shares storage with the model
  common.randomize_(state_dict.items(), 0,
                    common.norm_weights(model, (nn.LayerNorm, nn.BatchNorm2d)))
  # float16 keeps the file under 300 KB; the goldens are computed from the rounded values.
  with torch.no_grad():
    for t in state_dict.values():
      if t.is_floating_point():
        t.copy_(t.half())
  common.save_safetensors({k: v.half() if v.is_floating_point() else v
                           for k, v in state_dict.items()},
                          common.out_path(args.out, 'shunted_official_tiny.safetensors'))

  x_nchw, x = common.nhwc_normal(0, (2, 3, 64, 64))
  gold = {'x': x}
  features = {}
  for i in range(1, 5):
    getattr(model, f'norm{i}').register_forward_hook(
        lambda module, inputs, output, i=i: features.__setitem__(i, output.detach()))
  gold['logits'] = common.logits(model, x_nchw)
  for i in range(1, 5):
    gold[f'feature_mean{i}'] = features[i].mean(1).numpy()  # [B, N, C] -> [B, C]
    gold[f'feature_tokens{i}'] = np.int64(features[i].shape[1])

  model.train()  # the stem's BatchNorms on batch statistics; no dropout / drop-path here
  with torch.no_grad():
    gold['logits_train'] = model(torch.from_numpy(x_nchw)).numpy()
  for idx in STEM_BATCH_NORMS:
    bn = model.patch_embed1.conv[idx]
    gold[f'bn{idx}_running_mean'] = bn.running_mean.numpy().copy()
    gold[f'bn{idx}_running_var'] = bn.running_var.numpy().copy()
  common.save_npz(common.out_path(args.out, 'shunted_goldens.npz'), gold)


if __name__ == '__main__':
  main()
