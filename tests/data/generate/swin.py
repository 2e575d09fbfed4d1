"""Regenerates the goldens of tests/test_convert_swin.py with real timm and the official code.

Writes timm_swin.safetensors, official_swin.safetensors, swin_goldens.npz and
swin_official_masks.npz into --out (tests/data/README.md says what each holds). --swin_repo
is a copy of microsoft/Swin-Transformer at f82860b; its models/swin_transformer.py and
utils.py are imported from there, unmodified (they import timm for DropPath & co.):

  python tests/data/generate/swin.py --swin_repo=/path/to/Swin-Transformer --out=/tmp/goldens
  python tests/data/generate/compare.py --out=/tmp/goldens
"""
import logging
import os
import tempfile
import types

import numpy as np
import torch

import common

COMMIT = 'f82860b'
# timm: 16x16 and 8x8 maps, both larger than the window, so every odd block shifts.
TIMM_CFG = dict(img_size=32, patch_size=2, embed_dim=16, depths=(2, 2), num_heads=(2, 4),
                window_size=4, num_classes=10)
# official: the last stage (4x4 map) is one unshifted window.
OFFICIAL_CFG = dict(img_size=32, patch_size=2, embed_dim=8, depths=(2, 2, 2),
                    num_heads=(2, 2, 4), window_size=4, num_classes=10, drop_path_rate=0,
                    fused_window_process=False)
# mask name -> (map size, window, shift) of the official SwinTransformerBlock.
MASKS = {'mask_h4_ws2_s1': (4, 2, 1), 'mask_h56_ws7_s3': (56, 7, 3)}
INDEX_WINDOWS = (2, 4, 7, 12)


def official_w8_logits(official, utils, state_dict, x_nchw):
  """The official fine-tuning path: a {'model': state_dict} checkpoint loaded by
  utils.load_pretrained into the same model with window 8 (bias tables resized bicubic)."""
  model = official.SwinTransformer(**dict(OFFICIAL_CFG, window_size=8))
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, 'official_swin.pth')
    torch.save({'model': state_dict}, path)
    config = types.SimpleNamespace(MODEL=types.SimpleNamespace(PRETRAINED=path))
    utils.load_pretrained(config, model, logging.getLogger('load_pretrained'))
  table = model.layers[0].blocks[1].attn.relative_position_bias_table.detach().numpy()
  return common.logits(model, x_nchw), table


def official_masks(official):
  """The official attention masks (int8, 0 / -100) and relative position indices (int16)."""
  out = {}
  for name, (size, window, shift) in MASKS.items():
    block = official.SwinTransformerBlock(dim=4, input_resolution=(size, size), num_heads=1,
                                          window_size=window, shift_size=shift)
    out[name] = block.attn_mask.numpy().astype(np.int8)
  for window in INDEX_WINDOWS:
    attn = official.WindowAttention(dim=4, window_size=(window, window), num_heads=1)
    out[f'index_ws{window}'] = attn.relative_position_index.numpy().astype(np.int16)
  return out


def main():
  args = common.parse_flags(__doc__, 'swin_repo', 'microsoft/Swin-Transformer',
                            'models/swin_transformer.py', COMMIT)
  common.import_timm()
  from timm.models import swin_transformer as timm_swin  # pylint: disable=g-import-not-at-top
  # By path: the repo's models/__init__.py would import every model family (MoE, SimMIM).
  official = common.load_module('swin_official_model',
                                os.path.join(args.swin_repo, 'models', 'swin_transformer.py'))
  utils = common.load_module('swin_official_utils', os.path.join(args.swin_repo, 'utils.py'))

  x_nchw, x = common.nhwc_normal(0, (2, 3, 32, 32))
  gold = {'x': x}
  model = timm_swin.SwinTransformer(**TIMM_CFG)
  common.randomize_(model.named_parameters(), 0, common.norm_weights(model))
  common.save_safetensors(model.state_dict(), common.out_path(args.out, 'timm_swin.safetensors'))
  gold['logits_timm'] = common.logits(model, x_nchw)

  model = official.SwinTransformer(**OFFICIAL_CFG)
  common.randomize_(model.named_parameters(), 1, common.norm_weights(model))
  state_dict = model.state_dict()
  common.save_safetensors(state_dict, common.out_path(args.out, 'official_swin.safetensors'))
  gold['logits_official'] = common.logits(model, x_nchw)
  gold['logits_official_w8'], gold['table_w8'] = official_w8_logits(
      official, utils, {k: v.clone() for k, v in state_dict.items()}, x_nchw)
  common.save_npz(common.out_path(args.out, 'swin_goldens.npz'), gold)
  common.save_npz(common.out_path(args.out, 'swin_official_masks.npz'), official_masks(official),
                  compressed=True)


if __name__ == '__main__':
  main()
