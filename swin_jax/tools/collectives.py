"""Counts the cross-device collectives in a config's compiled train step.

    python -m swin_jax.tools.collectives --config=configs/demo/detr_digits.py:quick --devices=8

prints one line per collective kind (all-reduce, all-gather, reduce-scatter,
collective-permute, all-to-all) with its count in the whole step and inside while loops
(e.g. a matcher's assignment loop: a collective there runs on every iteration, every
device waiting for the slowest). Data parallelism needs only the gradient and metric
all-reduces (plus all-gather / reduce-scatter of the params under FSDP); anything else
is per-device work that leaked into collectives (tests/test_collectives.py keeps it so).

``--devices=N`` simulates N CPU devices (XLA_FLAGS, set before JAX starts), so the
command shows on a laptop what an 8-GPU or TPU run compiles.
"""
from __future__ import annotations

import collections
import os
import re
import sys
import tempfile
from typing import Dict, Iterable, Set

from swin_jax import cli

COLLECTIVES = ('all-reduce', 'all-gather', 'reduce-scatter', 'collective-permute',
               'all-to-all')
# An instruction line: "%name = <shape> <opcode>(operands), attributes" (ROOT optional);
# async collectives appear as <op>-start / <op>-done pairs: the -start counts.
_INSTR = re.compile(r'^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*.*?\s([a-z][a-z\-]*)\(')
_COMPUTATION = re.compile(r'^\s*(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$')
_CALLS = re.compile(r'(?:condition|body|to_apply|calls|branch_computations)=\{?%?([\w.\-, %]+)\}?')


def _opcode(line: str):
  m = _INSTR.match(line)
  if not m:
    return None
  op = m.group(1)
  return op[:-len('-start')] if op.endswith('-start') else op


def _computations(hlo: str) -> Dict[str, list]:
  """HLO module text -> {computation name: its instruction lines}."""
  comps, name = {}, None
  for line in hlo.splitlines():
    if name is None:
      m = _COMPUTATION.match(line)
      if m and '=' not in line.split('{')[0].split('(')[0]:
        name = m.group(1)
        comps[name] = []
    elif line.strip() == '}':
      name = None
    else:
      comps[name].append(line)
  return comps


def _called(lines: Iterable[str]) -> Set[str]:
  out = set()
  for line in lines:
    for m in _CALLS.finditer(line):
      out.update(n.strip().lstrip('%') for n in m.group(1).split(',') if n.strip())
  return out


def count_collectives(hlo: str) -> Dict[str, Dict[str, int]]:
  """{'total': {kind: n}, 'in_loops': {kind: n}} for a compiled HLO module's text.

  'in_loops' counts the collectives in the conditions and bodies of while loops and in
  every computation they call (transitively)."""
  comps = _computations(hlo)
  loop_roots = set()
  for lines in comps.values():
    for line in lines:
      if _opcode(line) == 'while':
        for key in ('condition', 'body'):
          m = re.search(key + r'=%?([\w.\-]+)', line)
          if m:
            loop_roots.add(m.group(1))
  in_loops, todo = set(), list(loop_roots)
  while todo:
    c = todo.pop()
    if c in in_loops or c not in comps:
      continue
    in_loops.add(c)
    todo.extend(_called(comps[c]))
  total, looped = collections.Counter(), collections.Counter()
  for name, lines in comps.items():
    for line in lines:
      op = _opcode(line)
      if op in COLLECTIVES:
        total[op] += 1
        if name in in_loops:
          looped[op] += 1
  return {'total': dict(total), 'in_loops': dict(looped)}


def train_step_hlo(config, workdir: str) -> str:
  """The compiled HLO text of ``config``'s train step on this process's devices (the
  trainer's own step, model, optimizer and shardings; one real input batch for shapes)."""
  import jax  # pylint: disable=g-import-not-at-top
  from swin_jax.train import loop, sharding as shd  # pylint: disable=g-import-not-at-top
  trainer = loop.Trainer(config, workdir)
  try:
    state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                         trainer.abstract_state, trainer.state_sharding)
    batch = shd.global_batch(next(trainer.task.train_iterator(config, 0)), trainer.mesh)
    return trainer.jit_train_step().lower(state, batch).compile().as_text()
  finally:
    trainer.ckpt.close()


def main(argv=None):
  cli.quiet_startup()
  argv = list(sys.argv if argv is None else argv)
  devices = next((a.split('=', 1)[1] for a in argv if a.startswith('--devices=')), None)
  argv = [a for a in argv if not a.startswith('--devices=')]
  if devices:
    if 'jax' in sys.modules:
      raise SystemExit('--devices must be set before JAX starts')
    os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                               f' --xla_force_host_platform_device_count={int(devices)}')
    os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  config_flag = config_flags.DEFINE_config_file('config', None, 'ml_collections config file.')

  def run(_):
    import jax  # pylint: disable=g-import-not-at-top
    with tempfile.TemporaryDirectory(prefix='swin_jax_hlo_') as tmp:
      counts = count_collectives(train_step_hlo(config_flag.value, tmp))
    print(f'train step of {config_flag.value.model.name} on {jax.device_count()} devices:')
    for kind in COLLECTIVES:
      print(f'  {kind:20s} {counts["total"].get(kind, 0):4d} in the step, '
            f'{counts["in_loops"].get(kind, 0):4d} inside while loops')
  flags.FLAGS.unparse_flags()
  app.run(run, argv=argv)


if __name__ == '__main__':
  main()
