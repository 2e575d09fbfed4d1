"""Compares regenerated goldens with the committed ones in tests/data/.

  python tests/data/generate/compare.py --out=/tmp/goldens [--atol=0]

For every .npz / .safetensors file in --out: the keys, then per array its dtype, shape and
largest absolute difference. Prints one line per file (`bitwise` when every array is equal)
and exits non-zero when a key, dtype or shape differs or a difference exceeds --atol.
Needs only numpy and safetensors.
"""
import argparse
import os
import sys

import numpy as np

DATA = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read(path):
  if path.endswith('.npz'):
    with np.load(path) as f:
      return {k: f[k] for k in f.files}
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  return load_file(path)


def compare(new, old):
  """(problems, {key: max abs difference}) between two {key: array} dicts."""
  problems = [f'missing {k}' for k in old if k not in new]
  problems += [f'extra {k}' for k in new if k not in old]
  diffs = {}
  for k in old:
    if k not in new:
      continue
    a, b = new[k], old[k]
    if a.dtype != b.dtype or a.shape != b.shape:
      problems.append(f'{k}: {a.dtype}{list(a.shape)} vs committed {b.dtype}{list(b.shape)}')
    elif a.dtype.kind in 'US':
      diffs[k] = 0.0 if np.array_equal(a, b) else float('inf')
    else:
      diffs[k] = float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max(initial=0.0))
  return problems, diffs


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
  parser.add_argument('--out', required=True, help='directory of the regenerated files')
  parser.add_argument('--atol', type=float, default=0.0, help='largest difference accepted')
  parser.add_argument('--verbose', action='store_true', help='one line per differing array')
  args = parser.parse_args()
  names = sorted(n for n in os.listdir(args.out) if n.endswith(('.npz', '.safetensors')))
  if not names:
    sys.exit(f'no .npz / .safetensors files in {args.out}')
  failed = False
  for name in names:
    committed = os.path.join(DATA, name)
    if not os.path.exists(committed):
      print(f'{name}: not in tests/data')
      failed = True
      continue
    problems, diffs = compare(read(os.path.join(args.out, name)), read(committed))
    worst = max(diffs.values(), default=0.0)
    if problems:
      print(f'{name}: ' + '; '.join(problems))
    elif worst == 0.0:
      print(f'{name}: bitwise ({len(diffs)} arrays)')
    else:
      unequal = {k: d for k, d in diffs.items() if d}
      print(f'{name}: max abs difference {worst:.3g} ({len(unequal)} of {len(diffs)} arrays '
            'differ)')
      if args.verbose:
        for k, d in unequal.items():
          print(f'  {k}: {d:.3g}')
    failed |= bool(problems) or worst > args.atol
  sys.exit(1 if failed else 0)


if __name__ == '__main__':
  main()
