"""Regenerates timm_cutmix.npz (tests/test_augment.py) with real timm: CutMix boxes and lam.

For a grid of image sizes and lam values, each under its own `np.random.seed`, runs timm's
`timm.data.mixup.cutmix_bbox_and_lam` (margin 0, no minmax, correct_lam=True: what
`Mixup(mode='batch')` calls), which draws the box centre with `np.random.randint`. Every draw
is recorded with the range it was drawn from, so the test can hand our `rand_bbox` the same
draws (ours draws them from a jax key) and compare the deterministic rest: box and lam.

  python tests/data/generate/mixup.py --out=/tmp/goldens
  python tests/data/generate/compare.py --out=/tmp/goldens
"""
import math
from unittest import mock

import numpy as np

import common

# (H, W): square, non-square (so a swapped axis shows) and odd sides.
SIZES = ((224, 224), (32, 48), (7, 5))
SEEDS_PER_CASE = 2


def lam_values():
  """float32 lam values: a regular grid (both ends included) and Beta(1, 1) draws.

  float32 because that is the dtype of our lam; timm gets the same value as a float64.
  """
  grid = np.linspace(0.0, 1.0, 21)
  drawn = np.random.default_rng(0).beta(1.0, 1.0, 12)  # CutMix's lam law (cutmix_alpha 1)
  return np.concatenate([grid, drawn]).astype(np.float32)


def knife_edge(size, lam):
  """True when a box side size * sqrt(1 - lam) is within 1e-4 of an integer, not on it.

  There our float32 arithmetic may truncate the side differently from timm's float64 (lam
  = float32(0.36), side 5: 3.99999995 in float64). A continuous lam lands there with
  probability ~1e-4 per side, so such values are left out; sides that are exact integers
  (lam 0, 0.75, 1) stay.
  """
  for n in size:
    side = n * math.sqrt(1.0 - float(lam))
    if 0.0 < abs(side - round(side)) < 1e-4:
      return True
  return False


def main():
  args = common.parse_flags(__doc__)
  common.import_timm()
  from timm.data import mixup as timm_mixup  # pylint: disable=g-import-not-at-top

  real_randint = np.random.randint
  draws = []

  def recording_randint(low, high=None, size=None, dtype=int):
    value = real_randint(low, high, size=size, dtype=dtype)
    draws.append((low, high, value))
    return value

  out = {k: [] for k in ('size', 'lam', 'seed', 'draw_range', 'draws', 'box',
                         'lam_corrected')}
  seed = 0
  for size in SIZES:
    for lam in lam_values():
      if knife_edge(size, lam):
        continue
      for _ in range(SEEDS_PER_CASE):
        np.random.seed(seed)
        del draws[:]
        with mock.patch.object(np.random, 'randint', recording_randint):
          box, lam_c = timm_mixup.cutmix_bbox_and_lam(
              (2, 3) + size, float(lam), ratio_minmax=None, correct_lam=True)
        assert len(draws) == 2 and all(np.ndim(v) == 0 for _, _, v in draws), draws
        out['size'].append(size)
        out['lam'].append(lam)
        out['seed'].append(seed)
        out['draw_range'].append([(low, high) for low, high, _ in draws])
        out['draws'].append([v for _, _, v in draws])
        out['box'].append([int(v) for v in box])
        out['lam_corrected'].append(lam_c)
        seed += 1
  arrays = {
      'size': np.array(out['size'], np.int32),
      'lam': np.array(out['lam'], np.float32),
      'seed': np.array(out['seed'], np.int32),
      'draw_range': np.array(out['draw_range'], np.int32),
      'draws': np.array(out['draws'], np.int32),
      'box': np.array(out['box'], np.int32),
      'lam_corrected': np.array(out['lam_corrected'], np.float64),
  }
  common.save_npz(common.out_path(args.out, 'timm_cutmix.npz'), arrays, compressed=True)


if __name__ == '__main__':
  main()
