"""Where the CPU train step's time goes, op by op (issue: the CPU step against PyTorch's).

  python experiments/profile_cpu_step.py vit_small_patch16_224 --batch 8 [--steps 3]
      [--model-arg k=v ...] [--top 25] [--xla-flags '...']

Compiles the train step of swin_jax.tools.benchmark (AdamW, the model's real loss), runs
it under jax.profiler with XLA:CPU's per-thunk trace events on, and prints:
  * the wall time per step, and the summed thunk time per step (> wall where thunks ran
    concurrently, < wall where the host waited);
  * time by kind: the HLO op of each thunk (dot / convolution / custom-call (oneDNN,
    XNNPACK) / fusion kinds: loop, input (reductions), output (dot + epilogue) / copy /
    transpose / ...), from the compiled module's text;
  * the top thunks by time, with their kind and output shape.

Numbers are medians over ``--steps`` traced steps after a warm-up. Nothing is written
outside a temporary directory.
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import sys
import tempfile
import time


def _parse(argv):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('model')
  p.add_argument('--batch', type=int, default=8)
  p.add_argument('--img-size', type=int, default=None)
  p.add_argument('--steps', type=int, default=3)
  p.add_argument('--top', type=int, default=25)
  p.add_argument('--model-arg', action='append', default=[], metavar='KEY=VALUE')
  p.add_argument('--xla-flags', default='', help='extra XLA_FLAGS for this run')
  p.add_argument('--kind', action='append', default=[],
                 help='also list the top ops of this kind (e.g. fusion:loop)')
  p.add_argument('--hlo-out', default='', help='write the compiled HLO text here')
  return p.parse_args(argv)


def _hlo_kinds(hlo_text: str):
  """instruction name -> (kind, output shape) for the ENTRY computation's instructions
  (and the fusions' kind=kLoop / kInput / kOutput), from compiled HLO text."""
  kinds = {}
  pat = re.compile(r'^\s*(?:ROOT )?%?([\w.\-]+) = (\S+?(?:\[[^\]]*\])?(?:\{[^}]*\})?|\([^=]*?\)) '
                   r'([\w\-]+)\(')
  for line in hlo_text.splitlines():
    m = pat.match(line)
    if not m:
      continue
    name, shape, op = m.groups()
    if op == 'fusion':
      k = re.search(r'kind=(\w+)', line)
      op = f'fusion:{k.group(1)[1:].lower()}' if k else 'fusion'
      calls = re.search(r'calls=%?([\w.\-]+)', line)
      if calls and 'custom_call_target' in line:
        op = 'fusion:custom'
    elif op == 'custom-call':
      t = re.search(r'custom_call_target="([^"]+)"', line)
      op = f'custom-call:{t.group(1)}' if t else op
    kinds[name] = (op, re.sub(r'\{[^}]*\}', '', shape))
  return kinds


def _fused_opcodes(hlo_text: str):
  """fusion instruction name -> sorted opcodes of the computation it calls (dot, reduce,
  exponential, ...), parameters / constants / bitcasts left out."""
  bodies, current = {}, None
  for line in hlo_text.splitlines():
    m = re.match(r'^%?([\w.\-]+) .*\{$', line)
    if m and not line.startswith(' '):
      current = bodies.setdefault(m.group(1), set())
      continue
    if line.startswith('}'):
      current = None
      continue
    op = re.search(r' = \S+ ([\w\-]+)\(', line)
    if current is not None and op and op.group(1) not in (
        'parameter', 'constant', 'bitcast', 'broadcast', 'reshape', 'tuple',
        'get-tuple-element'):
      current.add(op.group(1))
  out = {}
  for line in hlo_text.splitlines():
    m = re.match(r'^\s*(?:ROOT )?%?([\w.\-]+) = .* fusion\(.*calls=%?([\w.\-]+)', line)
    if m:
      out[m.group(1)] = '+'.join(sorted(bodies.get(m.group(2), ()))) or '-'
  return out


def main(argv=None) -> int:
  args = _parse(argv if argv is not None else sys.argv[1:])
  os.environ['XLA_FLAGS'] = ' '.join(
      [os.environ.get('XLA_FLAGS', ''), '--xla_cpu_enable_xprof_traceme=true',
       args.xla_flags]).strip()
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from swin_jax import cli  # pylint: disable=g-import-not-at-top
  from swin_jax import host_memory  # pylint: disable=g-import-not-at-top
  host_memory.reuse_freed_memory()  # as the trainer
  from swin_jax.tools import benchmark  # pylint: disable=g-import-not-at-top

  overrides = cli.parse_model_args(args.model_arg)
  step, state, inputs = benchmark.train_step_for_profiling(
      args.model, args.batch, args.img_size, **overrides)
  compiled = step.lower(state, *inputs).compile()
  hlo = compiled.as_text()
  kinds = _hlo_kinds(hlo)
  bodies = _fused_opcodes(hlo)
  if args.hlo_out:
    with open(args.hlo_out, 'w') as f:
      f.write(hlo)
  for _ in range(2):  # warm-up
    state, loss = compiled(state, *inputs)
  loss.block_until_ready()

  walls, per_step = [], []
  with tempfile.TemporaryDirectory() as tmp:
    for _ in range(args.steps):
      t = time.perf_counter()
      state, loss = compiled(state, *inputs)
      loss.block_until_ready()
      walls.append(time.perf_counter() - t)
    jax.profiler.start_trace(tmp)
    for _ in range(args.steps):
      state, loss = compiled(state, *inputs)
      loss.block_until_ready()
    jax.profiler.stop_trace()
    paths = [os.path.join(d, f) for d, _, fs in os.walk(tmp) for f in fs
             if f.endswith('.xplane.pb')]
    data = jax.profiler.ProfileData.from_file(paths[0])
    times = collections.Counter()
    for plane in data.planes:
      if not plane.name.startswith('/host:CPU'):
        continue
      for line in plane.lines:
        for ev in line.events:
          if ev.name in kinds:
            times[ev.name] += ev.duration_ns / 1e9
    per_step = {k: v / args.steps for k, v in times.items()}

  if not per_step:
    raise SystemExit('the trace holds no XLA:CPU thunk events (this script reads the CPU '
                     'backend\'s per-thunk TraceMe events; on GPU / TPU use the profiler UI)')
  wall = float(np.median(walls))
  total = sum(per_step.values())
  print(f'{args.model} batch {args.batch} {overrides or ""}: {wall * 1e3:.1f} ms per step '
        f'({args.batch / wall:.2f} img/s), thunks {total * 1e3:.1f} ms per step '
        f'({len(per_step)} ops), backend {jax.default_backend()}, '
        f'{os.cpu_count()} CPUs')
  by_kind = collections.Counter()
  for k, v in per_step.items():
    by_kind[kinds[k][0]] += v
  print('\nby kind              ms/step   share')
  for k, v in by_kind.most_common():
    print(f'  {k:22s} {v * 1e3:8.1f} {v / total:7.1%}')
  print(f'\ntop {args.top} ops          ms/step   kind  shape')
  for k, v in sorted(per_step.items(), key=lambda kv: -kv[1])[:args.top]:
    print(f'  {k[:28]:28s} {v * 1e3:7.2f}  {kinds[k][0]}  {kinds[k][1][:60]}')
  stems = collections.Counter()
  for k, v in per_step.items():
    stems[(kinds[k][0], re.sub(r'\.\d+$', '', k))] += v
  print(f'\ntop {args.top} op names (numbered copies summed)   ms/step')
  for (kind, stem), v in stems.most_common(args.top):
    print(f'  {stem[:40]:40s} {v * 1e3:8.1f}  {kind}')
  sigs = collections.Counter()
  for k, v in per_step.items():
    if kinds[k][0].startswith('fusion'):
      sigs[(kinds[k][0], bodies.get(k, '?'))] += v
  print(f'\ntop {args.top} fusions by what they compute     ms/step')
  for (kind, sig), v in sigs.most_common(args.top):
    print(f'  {v * 1e3:8.1f}  {kind:14s} {sig[:90]}')
  for kind in args.kind:
    print(f'\ntop {args.top} {kind} ops     ms/step   shape')
    ops = [(k, v) for k, v in per_step.items() if kinds[k][0] == kind]
    for k, v in sorted(ops, key=lambda kv: -kv[1])[:args.top]:
      print(f'  {k[:28]:28s} {v * 1e3:7.2f}  {kinds[k][1][:70]}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
