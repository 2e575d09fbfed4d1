"""Reproduce the tables: every registered model, ours beside the papers'.

    python -m swin_jax.tools.tables [--out runs/tables] [--family swin shunted ...]
        [--skip-flops] [--checkpoints DIR --data_dir DIR [--coco_annotations FILE]]

For each row of ``swin_jax.tools.paper_numbers.PAPER_ROWS`` (and each registered model
without one, demos excluded) it prints: parameters and GFLOPs counted on our model by
``swin_jax.tools.count`` (abstract trace, nothing materialised; FLOPs = multiply-adds at the
row's input size) beside the source's, the source's top-1 / AP and, with ``--checkpoints``,
the top-1 / AP measured by ``python -m swin_jax.main --mode=evaluate`` on the row's config
with ``--config.init_from=<checkpoint>`` (the validation split of ``--data_dir``). A row
whose checkpoint file is not in the directory gets '-'; a failed evaluation is reported in
the cell and in the notes, and the table is still written.

Output: the Markdown table on stdout, and ``tables.md`` + ``tables.csv`` in ``--out``.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import jax

from swin_jax import cli
from swin_jax.models import create_model, list_models, model_family
from swin_jax.tools import count
from swin_jax.tools import paper_numbers
from swin_jax.tools.paper_numbers import PaperRow

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Tried in this order for a row whose official file name is unknown: <model><ext>.
CHECKPOINT_EXTS = ('.pth', '.safetensors', '.npz')
# The key of each metric in the JSON that evaluate prints (a fraction; tables show %).
_METRIC_KEYS = {'top-1': 'accuracy', 'AP': 'AP'}

CSV_FIELDS = ('model', 'row', 'family', 'input', 'params_ours', 'params_paper_m',
              'macs_ours', 'gflops_ours', 'gflops_paper', 'metric', 'score_paper',
              'score_measured', 'measured_status', 'params_source', 'gflops_source',
              'score_source', 'config', 'checkpoint', 'note')


class EvaluateError(RuntimeError):
  """``swin_jax.main --mode=evaluate`` failed or printed no usable metrics."""


@dataclasses.dataclass
class TableRow:
  """One printed row: a paper row (or a registered model no paper has) with our numbers.

  ``measured`` is the evaluated top-1 / AP in %; ``status`` says why it is missing
  ('' when measured or not requested, else e.g. 'no checkpoint', 'failed: ...').
  """
  model: str
  family: str
  paper: Optional[PaperRow]
  img_size: Optional[Tuple[int, int]]
  params: Optional[int] = None
  macs: Optional[int] = None
  measured: Optional[float] = None
  status: str = ''
  checkpoint: Optional[str] = None

  @property
  def label(self) -> str:
    return self.paper.label if self.paper else '-'

  @property
  def metric(self) -> str:
    return self.paper.metric if self.paper else '-'


# ------------------------------------------------------------------------------ our numbers

def source_param_count(name: str, variables) -> int:
  """Parameters of ``name`` counted as its source counts them.

  ``count.count_params`` (the ``params`` collection) everywhere but the ResNet classifiers:
  torchvision's ``num_params`` includes BatchNorm weight and bias (``nn.Parameter``s there),
  which the frozen-BatchNorm ResNet keeps in the ``frozen`` collection beside the running
  statistics. (DETR counts them as buffers, ``FrozenBatchNorm2d``, so not there.)
  """
  n = count.count_params(variables)
  if model_family(name) == 'resnet' and 'frozen' in variables:
    for path, leaf in jax.tree_util.tree_leaves_with_path(variables['frozen']):
      if getattr(path[-1], 'key', None) in ('weight', 'bias'):
        n += math.prod(leaf.shape)
  return n


def count_model(name: str, img_size: Optional[Tuple[int, int]],
                flops: bool = True) -> Tuple[int, Optional[int]]:
  """(parameters, multiply-adds per image at ``img_size`` or None) of model ``name``.

  The model is built with its registered defaults (1000 classes, 91 for DETR); the input
  size only sets the traced image, so fully convolutional models (ResNet, DETR) need no
  ``img_size`` field. Nothing is materialised.
  """
  model = create_model(name)
  if img_size is None:
    img_size = count.image_size(model)
  shape = (1, int(img_size[0]), int(img_size[1]), int(getattr(model, 'in_chans', 3)))
  variables = count.abstract_variables(model, shape)
  params = source_param_count(name, variables)
  macs = count.count_flops(model, shape, variables=variables) if flops else None
  return params, macs


# ------------------------------------------------------------------------------ evaluation

def find_checkpoint(row: PaperRow, directory: str) -> Optional[str]:
  """Path of ``row``'s checkpoint in ``directory``, or None.

  The official file name when the row knows it, else ``<model>.pth`` / ``.safetensors`` /
  ``.npz``.
  """
  names = ([row.checkpoint] if row.checkpoint else
           [row.model + ext for ext in CHECKPOINT_EXTS])
  for name in names:
    path = os.path.join(directory, name)
    if os.path.isfile(path):
      return path
  return None


def evaluate_command(row: PaperRow, checkpoint: str, data_dir: str, workdir: str,
                     extra_args: Sequence[str] = (),
                     coco_annotations: Optional[str] = None) -> List[str]:
  """The ``python -m swin_jax.main --mode=evaluate`` command line of ``row``.

  ``coco_annotations`` (instances_val2017.json) goes to the AP rows only, as
  ``config.eval.annotation_file`` (the classification configs have no ``config.eval``).
  """
  if not row.config:
    raise ValueError(f'{row.model} ({row.label}) has no config to evaluate it with')
  path, _, variant = row.config.partition(':')
  config = os.path.join(REPO_ROOT, path) + (f':{variant}' if variant else '')
  cmd = [sys.executable, '-m', 'swin_jax.main', '--mode=evaluate', f'--config={config}',
         f'--workdir={workdir}', f'--config.init_from={checkpoint}',
         f'--config.input.data_dir={data_dir}', *row.eval_flags]
  if coco_annotations and row.metric == 'AP':
    cmd.append(f'--config.eval.annotation_file={coco_annotations}')
  return cmd + list(extra_args)


def parse_metrics(stdout: str) -> Dict[str, Any]:
  """The metrics dict ``loop.evaluate`` prints: the last stdout line holding a JSON object."""
  for line in reversed(stdout.strip().splitlines()):
    line = line.strip()
    if line.startswith('{'):
      try:
        out = json.loads(line)
      except json.JSONDecodeError:
        continue
      if isinstance(out, dict):
        return out
  raise EvaluateError('evaluate printed no JSON metrics')


def run_evaluate(cmd: Sequence[str]) -> Dict[str, Any]:
  """Runs one evaluate command (in the repository root); returns its metrics dict.

  Raises EvaluateError with the command's last stderr line when it fails.
  """
  proc = subprocess.run(list(cmd), cwd=REPO_ROOT, capture_output=True, text=True,
                        check=False)
  if proc.returncode != 0:
    lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
    last = lines[-1].strip() if lines else '(no stderr)'
    raise EvaluateError(f'exit {proc.returncode}: {last[:300]}')
  return parse_metrics(proc.stdout)


def measure(row: PaperRow, checkpoint: str, data_dir: str, extra_args: Sequence[str] = (),
            runner: Optional[Callable[[Sequence[str]], Dict[str, Any]]] = None,
            coco_annotations: Optional[str] = None) -> float:
  """Top-1 / AP (%) of ``row`` evaluated from ``checkpoint`` in a throw-away workdir.

  ``runner(cmd) -> metrics`` defaults to ``run_evaluate`` (a subprocess).
  """
  runner = runner or run_evaluate
  workdir = tempfile.mkdtemp(prefix='swin_jax_tables_')
  try:
    metrics = runner(evaluate_command(row, checkpoint, data_dir, workdir, extra_args,
                                      coco_annotations))
  finally:
    shutil.rmtree(workdir, ignore_errors=True)
  key = _METRIC_KEYS[row.metric]
  if key not in metrics:
    raise EvaluateError(f'no {key!r} in the evaluate output {sorted(metrics)}')
  return 100.0 * float(metrics[key])


# ------------------------------------------------------------------------------ the table

def select_models(families: Optional[Sequence[str]] = None) -> List[str]:
  """Registered non-demo models, in the order of PAPER_ROWS, then the rest by name."""
  names = [n for n in list_models() if not paper_numbers.is_demo(n)]
  if families:
    names = [n for n in names if model_family(n) in families]
  order = {}
  for r in paper_numbers.PAPER_ROWS:
    order.setdefault(r.model, len(order))
  return sorted(names, key=lambda n: (order.get(n, len(order)), n))


def build_rows(models: Sequence[str], *, flops: bool = True,
               checkpoints: Optional[str] = None, data_dir: Optional[str] = None,
               extra_args: Sequence[str] = (), coco_annotations: Optional[str] = None,
               runner: Optional[Callable[[Sequence[str]], Dict[str, Any]]] = None,
               log: Callable[[str], None] = lambda msg: None) -> List[TableRow]:
  """One TableRow per paper row of ``models`` (or per model without one), counted and,
  when ``checkpoints`` is given, evaluated."""
  rows: List[TableRow] = []
  cache: Dict[Tuple[str, Any], Tuple[int, Optional[int]]] = {}
  for name in models:
    papers = paper_numbers.rows_for(name) or (None,)
    for paper in papers:
      size = paper.img_size if paper else None
      row = TableRow(name, model_family(name), paper, size)
      key = (name, size)
      if key not in cache:
        t = time.time()
        try:
          cache[key] = count_model(name, size, flops=flops)
          log(f'counted {name} at {_size_str(size)} in {time.time() - t:.1f} s')
        except (ValueError, TypeError) as e:  # e.g. a new model without img_size
          log(f'{name}: not counted ({" ".join(str(e).split())})')
          cache[key] = (None, None)
      row.params, row.macs = cache[key]
      if checkpoints:
        _fill_measured(row, checkpoints, data_dir, extra_args, coco_annotations, runner, log)
      rows.append(row)
  return rows


def _fill_measured(row, checkpoints, data_dir, extra_args, coco_annotations, runner, log):
  if row.paper is None:
    row.status = 'no paper row'
    return
  ckpt = find_checkpoint(row.paper, checkpoints)
  if ckpt is None:
    row.status = 'no checkpoint'
    return
  row.checkpoint = ckpt
  if not row.paper.config:
    row.status = 'no config'
    return
  t = time.time()
  try:
    row.measured = measure(row.paper, ckpt, data_dir, extra_args, runner, coco_annotations)
    log(f'evaluated {row.model} ({row.label}): {row.measured:.2f} in {time.time() - t:.0f} s')
  except (EvaluateError, OSError, ValueError) as e:
    row.status = f'failed: {" ".join(str(e).split())}'
    log(f'evaluate {row.model} ({row.label}) {row.status}')


def _size_str(size) -> str:
  if size is None:
    return '-'
  h, w = size
  return str(h) if h == w else f'{h}x{w}'


def _decimals(text: Optional[str]) -> int:
  return len(text.split('.')[1]) if text and '.' in text else 0


def _ours_vs_paper(ours: Optional[float], ref) -> str:
  paper = ref.value if ref else '-'
  if ours is None:
    return f'- / {paper}'
  return f'{ours:.{max(2, _decimals(ref.value if ref else None))}f} / {paper}'


def sources_cell(paper: Optional[PaperRow]) -> str:
  """'params, FLOPs: Swin README; top-1: Swin T1' (one key when all share a source)."""
  if paper is None:
    return '-'
  groups: Dict[str, List[str]] = {}
  for what, ref in (('params', paper.params_m), ('FLOPs', paper.gflops),
                    (paper.metric, paper.score)):
    if ref is not None:
      groups.setdefault(ref.source, []).append(what)
  if len(groups) == 1:
    return next(iter(groups))
  return '; '.join(f'{", ".join(whats)}: {src}' for src, whats in groups.items())


def measured_cell(row: TableRow) -> str:
  if row.measured is not None:
    return f'{row.measured:.2f}'
  return 'failed' if row.status.startswith('failed') else '-'


HEADER = ('model', 'paper row', 'input', 'params M (ours / paper)',
          'GFLOPs (ours / paper)', 'metric', 'paper', 'measured', 'sources')


def markdown_lines(rows: Sequence[TableRow]) -> List[str]:
  """The table rows as Markdown (header, alignment, one line per row)."""
  lines = ['| ' + ' | '.join(HEADER) + ' |',
           '|---|---|---|---:|---:|---|---:|---:|---|']
  for r in rows:
    p = r.paper
    cells = (r.model, r.label, _size_str(r.img_size),
             _ours_vs_paper(None if r.params is None else r.params / 1e6,
                            p.params_m if p else None),
             _ours_vs_paper(None if r.macs is None else r.macs / 1e9, p.gflops if p else None),
             r.metric, p.score.value if p and p.score else '-', measured_cell(r),
             sources_cell(p))
    lines.append('| ' + ' | '.join(cells) + ' |')
  return lines


def to_markdown(rows: Sequence[TableRow]) -> str:
  """The table, the sources it cites and notes on missing / failed numbers."""
  out = markdown_lines(rows)
  used = []
  for r in rows:
    for ref in (r.paper.params_m, r.paper.gflops, r.paper.score) if r.paper else ():
      if ref is not None and ref.source not in used:
        used.append(ref.source)
  out += ['', 'Ours: `swin_jax.tools.count` on the model built here (parameters counted as '
          'the source counts them; FLOPs = multiply-adds of one image at "input"). '
          'Measured: `python -m swin_jax.main --mode=evaluate` on the validation split '
          '("-": not run).', '', 'Sources:', '']
  out += [f'- {key}: {paper_numbers.SOURCES[key]}' for key in used]
  # Row notes shared by several models print once, naming them all.
  by_note: Dict[str, List[str]] = {}
  for r in rows:
    if r.paper and r.paper.note and r.model not in by_note.get(r.paper.note, []):
      by_note.setdefault(r.paper.note, []).append(r.model)
  notes = [f'- {", ".join(models)}: {note}' for note, models in by_note.items()]
  for r in rows:
    if r.status.startswith('failed'):
      notes.append(f'- {r.model} ({r.label}): evaluate {r.status}')
    elif r.status == 'no config':
      notes.append(f'- {r.model} ({r.label}): no config to evaluate the checkpoint with')
  if notes:
    out += ['', 'Notes:', ''] + notes
  return '\n'.join(out) + '\n'


def csv_records(rows: Sequence[TableRow]) -> List[Dict[str, Any]]:
  """One dict per row with CSV_FIELDS (numbers unformatted; '' where missing)."""
  recs = []
  for r in rows:
    p = r.paper
    val = lambda ref: ref.value if ref else ''
    src = lambda ref: ref.source if ref else ''
    recs.append({
        'model': r.model, 'row': r.label, 'family': r.family, 'input': _size_str(r.img_size),
        'params_ours': '' if r.params is None else r.params,
        'params_paper_m': val(p.params_m) if p else '',
        'macs_ours': '' if r.macs is None else r.macs,
        'gflops_ours': '' if r.macs is None else f'{r.macs / 1e9:.3f}',
        'gflops_paper': val(p.gflops) if p else '',
        'metric': p.metric if p else '', 'score_paper': val(p.score) if p else '',
        'score_measured': '' if r.measured is None else f'{r.measured:.3f}',
        'measured_status': r.status,
        'params_source': src(p.params_m) if p else '',
        'gflops_source': src(p.gflops) if p else '',
        'score_source': src(p.score) if p else '',
        'config': (p.config or '') if p else '', 'checkpoint': (p.checkpoint or '') if p else '',
        'note': p.note if p else ''})
  return recs


def to_csv(rows: Sequence[TableRow]) -> str:
  buf = io.StringIO()
  w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator='\n')
  w.writeheader()
  w.writerows(csv_records(rows))
  return buf.getvalue()


def write_outputs(rows: Sequence[TableRow], out_dir: str) -> Tuple[str, str]:
  """Writes tables.md and tables.csv into ``out_dir``; returns their paths."""
  os.makedirs(out_dir, exist_ok=True)
  md, cs = os.path.join(out_dir, 'tables.md'), os.path.join(out_dir, 'tables.csv')
  for path, text in ((md, to_markdown(rows)), (cs, to_csv(rows))):
    tmp = path + '.tmp'
    with open(tmp, 'w', encoding='utf-8') as f:
      f.write(text)
    os.replace(tmp, path)
  return md, cs


# ------------------------------------------------------------------------------ CLI

def main(argv: Optional[Sequence[str]] = None) -> int:
  cli.quiet_startup()
  parser = argparse.ArgumentParser(
      prog='python -m swin_jax.tools.tables',
      description='Parameters, FLOPs and top-1 / AP of every registered model beside the '
                  'papers\' (Markdown on stdout; tables.md and tables.csv in --out).')
  parser.add_argument('--out', default=os.path.join('runs', 'tables'),
                      help='directory for tables.md and tables.csv (default: runs/tables)')
  parser.add_argument('--family', nargs='+', metavar='FAMILY',
                      help='only these model families (vit swin shunted resnet detr)')
  parser.add_argument('--skip-flops', '--skip_flops', dest='skip_flops', action='store_true',
                      help='count parameters only (FLOPs print as -)')
  parser.add_argument('--checkpoints', metavar='DIR',
                      help='directory of official checkpoints (file names as in '
                           'swin_jax/tools/paper_numbers.py); each row found there is '
                           'evaluated')
  parser.add_argument('--data_dir', '--data-dir', dest='data_dir', metavar='DIR',
                      help='tfds data dir with imagenet2012 / coco/2017 prepared '
                           '(needed with --checkpoints)')
  parser.add_argument('--coco_annotations', '--coco-annotations', dest='coco_annotations',
                      metavar='FILE', help='instances_val2017.json for the official COCO '
                      'ground truth of the DETR rows (config.eval.annotation_file)')
  parser.add_argument('--eval-arg', '--eval_arg', dest='eval_args', action='append',
                      default=[], metavar='FLAG',
                      help='extra flag for every evaluation, e.g. '
                           '--eval-arg=--config.eval_batch_size=250 (repeatable)')
  args = parser.parse_args(argv)

  families = sorted({model_family(n) for n in list_models()})
  bad = [f for f in args.family or () if f not in families]
  if bad:
    parser.error(f'--family {" ".join(bad)}: unknown; use some of {" ".join(families)}')
  for flag, given in (('--data_dir', args.data_dir), ('--coco_annotations', args.coco_annotations),
                      ('--eval-arg', args.eval_args)):
    if given and not args.checkpoints:
      parser.error(f'{flag} is only used with --checkpoints DIR (the directory of official '
                   f'checkpoints to evaluate)')
  if args.checkpoints:
    if not os.path.isdir(args.checkpoints):
      parser.error(f'--checkpoints {args.checkpoints}: no such directory')
    if not args.data_dir:
      parser.error('--checkpoints needs --data_dir DIR: the tfds data dir holding '
                   'imagenet2012 (and coco/2017 for DETR)')
    if not os.path.isdir(args.data_dir):
      parser.error(f'--data_dir {args.data_dir}: no such directory')
    args.checkpoints = os.path.abspath(args.checkpoints)
    args.data_dir = os.path.abspath(args.data_dir)
  if args.coco_annotations:
    if not os.path.isfile(args.coco_annotations):
      parser.error(f'--coco_annotations {args.coco_annotations}: no such file')
    args.coco_annotations = os.path.abspath(args.coco_annotations)

  log = lambda msg: print(msg, file=sys.stderr, flush=True)
  t0 = time.time()
  models = select_models(args.family)
  rows = build_rows(models, flops=not args.skip_flops, checkpoints=args.checkpoints,
                    data_dir=args.data_dir, extra_args=args.eval_args,
                    coco_annotations=args.coco_annotations, log=log)
  md_path, csv_path = write_outputs(rows, args.out)
  sys.stdout.write(to_markdown(rows))
  log(f'{len(rows)} rows of {len(models)} models in {time.time() - t0:.1f} s; wrote '
      f'{md_path} and {csv_path}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
