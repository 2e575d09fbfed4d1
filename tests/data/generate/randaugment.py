"""Regenerates timm_randaugment.npz (tests/test_augment.py) with real timm's RandAugment ops.

Runs every op of timm's two RandAugment op lists through `timm.data.auto_augment.AugmentOp`
(its level-to-argument rule, then the PIL call) on one fixed uint8 image, at fixed magnitudes,
both signs of the signed ops and, for the geometric ops, NEAREST and BILINEAR resampling; and
records the parsed 'rand-m9-mstd0.5-inc1' policy (op list, layers, probability, magnitude
law) from `rand_augment_transform`.

  python tests/data/generate/randaugment.py --out=/tmp/goldens
  python tests/data/generate/compare.py --out=/tmp/goldens
"""
import random
from unittest import mock

import numpy as np

import common

MAGNITUDES = (2.6, 6.7, 9.0, 10.0)  # fractions (int() vs round() differ), the recipe, the clip
GEOMETRIC = ('Rotate', 'ShearX', 'ShearY', 'TranslateXRel', 'TranslateYRel')
# timm's _randomly_negate negates when random.random() > 0.5: these two stand-ins fix the
# sign (+1 keeps the level's sign, -1 negates it).
SIGN_DRAWS = {1: 0.25, -1: 0.75}
POLICY = 'rand-m9-mstd0.5-inc1'


def test_image():
  """uint8 [16, 20, 3]: smooth ramps plus noise, no channel spanning 0..255.

  320 pixels, so that PIL's equalize has a step > 0 (it needs more than 255 pixels), and
  ramps, so that a geometric op moves visible structure.
  """
  i, j = np.mgrid[0:16, 0:20]
  ramps = np.stack([30 + 8 * i + 3 * j, 200 - 5 * i - 4 * j, 60 + 2 * i + 6 * j], -1)
  noise = np.random.default_rng(0).integers(-6, 7, ramps.shape)
  return np.clip(ramps + noise, 0, 255).astype(np.uint8)


def main():
  args = common.parse_flags(__doc__)
  common.import_timm()
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from timm.data import auto_augment as aa  # pylint: disable=g-import-not-at-top
  from timm.data.constants import IMAGENET_DEFAULT_MEAN  # pylint: disable=g-import-not-at-top

  # timm's transforms_imagenet_train: the fill of the geometric ops.
  fill = tuple(min(255, round(255 * x)) for x in IMAGENET_DEFAULT_MEAN)
  interpolations = {'nearest': Image.Resampling.NEAREST,
                    'bilinear': Image.Resampling.BILINEAR}
  image = test_image()
  pil = Image.fromarray(image)
  out = {'image': image, 'fill': np.array(fill, np.int32)}

  def run(name, magnitude, sign, interpolation):
    op = aa.AugmentOp(name, prob=1.0, magnitude=magnitude,
                      hparams=dict(img_mean=fill, interpolation=interpolations[interpolation]))
    with mock.patch.object(random, 'random', lambda: SIGN_DRAWS[sign]):
      level_args = op.level_fn(magnitude, op.hparams) if op.level_fn else ()
      result = op(pil)
    return level_args, np.asarray(result)

  names = list(dict.fromkeys(list(aa._RAND_TRANSFORMS) + list(aa._RAND_INCREASING_TRANSFORMS)))
  cases, outputs, level_args, skipped = [], [], [], []
  for name in names:
    signed = run(name, 9.0, 1, 'nearest')[0] != run(name, 9.0, -1, 'nearest')[0]
    for magnitude in (MAGNITUDES if aa.LEVEL_TO_ARG[name] else (0.0,)):
      for sign in ((1, -1) if signed else (1,)):
        for interp in (('nearest', 'bilinear') if name in GEOMETRIC else ('nearest',)):
          case = f'{name}|{magnitude}|{sign:+d}|{interp}'
          try:
            args_, result = run(name, magnitude, sign, interp)
          except ValueError as e:  # Pillow >= 10: posterize(bits=0) raises
            skipped.append(f'{case}: {e}')
            continue
          assert len(args_) <= 1, (case, args_)  # every RandAugment op takes one argument
          cases.append(case)
          outputs.append(result)
          level_args.append(args_[0] if args_ else np.nan)
  out['cases'] = np.array(cases)
  out['outputs'] = np.stack(outputs).astype(np.uint8)
  out['args'] = np.array(level_args, np.float64)
  out['skipped'] = np.array(skipped)
  print(f'{len(cases)} cases; skipped (timm raises):', *skipped, sep='\n  ')

  hparams = dict(img_mean=fill, interpolation=Image.Resampling.BILINEAR)
  for config, prefix in ((POLICY, 'policy'), ('rand-m9-mstd0.5', 'policy_noinc')):
    ra = aa.rand_augment_transform(config, dict(hparams))
    op = ra.ops[0]
    out[f'{prefix}/ops'] = np.array([o.name for o in ra.ops])
    out[f'{prefix}/num_layers'] = np.array(ra.num_layers)
    out[f'{prefix}/prob'] = np.array(op.prob, np.float64)
    out[f'{prefix}/magnitude'] = np.array(op.magnitude, np.float64)
    out[f'{prefix}/magnitude_std'] = np.array(op.magnitude_std, np.float64)
    # AugmentOp.__call__ clips the drawn magnitude to [0, magnitude_max or _LEVEL_DENOM].
    out[f'{prefix}/magnitude_upper'] = np.array(op.magnitude_max or aa._LEVEL_DENOM,
                                                np.float64)
  common.save_npz(common.out_path(args.out, 'timm_randaugment.npz'), out, compressed=True)


if __name__ == '__main__':
  main()
