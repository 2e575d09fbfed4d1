"""Reproduce-the-tables (swin_jax/tools/tables.py, paper_numbers.py).

Every paper row is checked against what it cites, not against the functions `tables`
calls: its model is registered and, counted from `jax.eval_shape` of that registered model
at the row's input size, has the row's published parameter count at the row's precision;
its config file exists, and `get_config(variant)` with the row's evaluation flags builds that
model at that size, the way `swin_jax.main` builds it, and pins the row's score. Then the
Markdown / CSV outputs and the measured column through a fake evaluate runner (no
checkpoint, no dataset).

Cheap by design: shapes only (each network traced once per input size, shared by
every row and test through a module-level cache), FLOPs counted on one small model.
"""
import ast
import csv
import dataclasses
import decimal
import importlib
import io
import math
import os
import sys

import jax
import jax.numpy as jnp
import pytest
from absl import flags
from ml_collections import config_flags

from conftest import load_config, set_fields
from swin_jax.models import build
from swin_jax.models import create_model, list_models
from swin_jax.models import detr as detr_lib
from swin_jax.tools import paper_numbers as pn
from swin_jax.tools import tables

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _by_model(rows):
  return {(r.model, r.label): r for r in rows}


def _row_id(row):
  return f'{row.model}:{row.label}'


def _parse_flags(cmd):
  """The config that `swin_jax.main` would build from an evaluate command's --config flags."""
  argv = ['main'] + [a for a in cmd if a.startswith('--config')]
  fv = flags.FlagValues()
  # Overrides are defined from the argv they will parse (as absl's app.run passes sys.argv).
  config_flags.DEFINE_config_file('config', None, 'config', flag_values=fv, sys_argv=argv)
  fv(argv)
  return fv.config


# (architecture, (H, W)) -> jax.eval_shape of model.init. Every row and test below reads
# it from here, so each network is traced once per input size; the architecture is the
# module's class and fields, so two names of one network (deit_tiny_patch16_224 and
# vit_tiny_patch16_224) share a trace.
_ABSTRACT_VARIABLES = {}


def _abstract_variables(name, img_size):
  model = create_model(name)
  fields = {f.name: getattr(model, f.name) for f in dataclasses.fields(model)
            if f.name not in ('parent', 'name')}
  key = (type(model).__qualname__, repr(sorted(fields.items())), tuple(img_size))
  if key not in _ABSTRACT_VARIABLES:
    x = jax.ShapeDtypeStruct((1, *img_size, 3), jnp.float32)
    _ABSTRACT_VARIABLES[key] = jax.eval_shape(model.init, jax.random.key(0), x)
  return _ABSTRACT_VARIABLES[key]


def _size(leaves):
  return sum(math.prod(leaf.shape) for leaf in leaves)


def _params_as_source_counts(variables, source):
  """Parameters as the row's source counts them: every leaf of 'params', except that

  * torchvision's num_params also counts BatchNorm weight and bias (nn.Parameters there),
    which the frozen-BatchNorm ResNet keeps in 'frozen' beside the running statistics;
  * DETR's main.py prints (and Table 1 gives) the trainable parameters only
    (requires_grad: not the frozen stem and layer1).
  """
  if source == 'DETR T1':
    mask = detr_lib.trainable_mask(variables['params'])
    return _size(leaf for leaf, trained in zip(jax.tree.leaves(variables['params']),
                                               jax.tree.leaves(mask)) if trained)
  n = _size(jax.tree.leaves(variables['params']))
  if source == 'torchvision':
    n += _size(leaf for path, leaf in jax.tree_util.tree_leaves_with_path(variables['frozen'])
               if path[-1].key in ('weight', 'bias'))
  return n


# How each source prints a count in millions at its number of decimals. Most round; the
# Shunted README truncates (Shunted-T's 11.55M is 11.5); the DeiT README does both (DeiT-Ti's
# 5.72M is 5 and DeiT-B's 86.57M is 86, but DeiT-B 384's 86.86M is 87).
_ROUND, _TRUNCATE = decimal.ROUND_HALF_EVEN, decimal.ROUND_DOWN
_PRINTING = {
    'Swin README': (_ROUND,), 'ViT T1': (_ROUND,), 'timm results': (_ROUND,),
    'torchvision': (_ROUND,), 'DETR T1': (_ROUND,), 'Shunted README': (_TRUNCATE,),
    'DeiT README': (_ROUND, _TRUNCATE),
}


def _printed_as(n_params, published, source):
  """Whether n_params, in millions, prints as `published` (its decimals) by `source`."""
  value = decimal.Decimal(published)
  millions = decimal.Decimal(n_params) / decimal.Decimal(10 ** 6)
  return value in {millions.quantize(value, rounding=r) for r in _PRINTING[source]}


def _eval_overrides(eval_flags):
  """A row's '--config.a.b=v' flags as {'a.b': v}: Python literals parsed, else strings
  (what ml_collections' config flags do with them)."""
  out = {}
  for flag in eval_flags:
    assert flag.startswith('--config.'), flag
    key, value = flag[len('--config.'):].split('=', 1)
    try:
      out[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      out[key] = value
  return out


def _row_config(row):
  """get_config(variant) of the row's config file, its evaluation flags applied."""
  path, _, variant = row.config.partition(':')
  assert os.path.isfile(os.path.join(ROOT, path)), row.config
  return set_fields(load_config(path, variant or None), _eval_overrides(row.eval_flags))


# Model fields a config may set to other values than the registered model's without changing
# any parameter's shape (regularisation, compute dtype, which outputs are returned).
_SHAPE_NEUTRAL_FIELDS = ('drop_path_rate', 'dtype', 'aux_loss')


# ---------------------------------------------------------------------------- paper rows

def test_every_registered_model_has_a_sourced_row():
  models = [m for m in list_models() if not pn.is_demo(m)]
  assert {'vit_demo', 'swin_demo'} <= set(list_models()) - set(models)
  with_rows = {r.model for r in pn.PAPER_ROWS}
  assert set(models) <= with_rows, sorted(set(models) - with_rows)
  assert with_rows <= set(models), sorted(with_rows - set(models))  # nothing unregistered
  for r in pn.PAPER_ROWS:
    refs = [x for x in (r.params_m, r.gflops, r.score) if x is not None]
    assert refs, r
    for ref in refs:
      assert ref.source in pn.SOURCES, ref
      float(ref.value)  # a number, as printed by the source
    assert r.metric in ('top-1', 'AP')
  assert len({(r.model, r.label) for r in pn.PAPER_ROWS}) == len(pn.PAPER_ROWS)
  assert sorted(tables.select_models()) == sorted(models)


@pytest.mark.parametrize('row', [r for r in pn.PAPER_ROWS if r.params_m], ids=_row_id)
def test_row_params_are_the_registered_models(row):
  """The published count, at the row's precision, is the registered model's at its size."""
  variables = _abstract_variables(row.model, row.img_size)
  n = _params_as_source_counts(variables, row.params_m.source)
  assert _printed_as(n, row.params_m.value, row.params_m.source), (
      f'{row.model}: {n:,} parameters do not print as {row.params_m.value}M '
      f'({row.params_m.source})')


@pytest.mark.parametrize('row', [r for r in pn.PAPER_ROWS if r.config], ids=_row_id)
def test_row_config_builds_the_rows_model_at_its_size(row):
  """The config the row is evaluated with builds the row's model (as swin_jax.main does,
  build.model_from_config) at the row's input size, with the registered model's parameter
  shapes (so the parameters counted above are the evaluated model's)."""
  c = _row_config(row)
  assert c.model.name == row.model
  model = build.model_from_config(c)
  registered = create_model(row.model)
  for field in build.model_overrides(c):
    if field not in _SHAPE_NEUTRAL_FIELDS:
      assert getattr(model, field) == getattr(registered, field), field
  if row.metric == 'top-1':  # ImageNet-1k at the row's resolution
    assert (c.input.image_size, c.input.image_size) == row.img_size
    size = model.img_size
    assert (tuple(size) if isinstance(size, (tuple, list)) else (size, size)) == row.img_size
    assert c.model.num_classes == 1000
  else:  # DETR on COCO: the row's size (its FLOPs size) is one the config evaluates at
    assert c.input.eval_scale == min(row.img_size)
    assert max(row.img_size) <= c.input.max_size
    assert c.model.num_classes == 91  # DETR's coco91 ids


# The rows whose config pins their score: all with a config but the AugReg rows, which
# borrow DeiT's config for its evaluation pipeline only (model and normalisation come from
# their flags, the score from timm's results).
def _pins_the_rows_score(row):
  return row.config and row.score and row.score.source != 'timm results'


@pytest.mark.parametrize('row', [r for r in pn.PAPER_ROWS if _pins_the_rows_score(r)],
                         ids=_row_id)
def test_row_score_is_the_one_its_config_pins(row):
  """Each config's variant table records the paper score it reproduces (last entry)."""
  path, _, variant = row.config.partition(':')
  module = importlib.import_module(os.path.splitext(path)[0].replace('/', '.'))
  table = getattr(module, '_VARIANTS', None) or module._ROWS
  pinned = table[variant][-1]
  if row.label == 'DeiT-S':
    # Two published values: the row cites the DeiT README (79.9), the config the DeiT
    # paper's Table 7 (79.8), one rounding step apart.
    assert abs(pinned - float(row.score.value)) <= 0.1 + 1e-9, (pinned, row.score)
  else:
    assert pinned == float(row.score.value), (pinned, row.score)


@pytest.mark.parametrize('row', [r for r in pn.PAPER_ROWS if r.config], ids=_row_id)
def test_evaluate_command_parses_into_the_rows_model(row, tmp_path):
  """Every row's evaluate command is a valid swin_jax.main config: the model, the input
  size, init_from and data_dir (and the COCO annotations for AP rows) land in the config."""
  cmd = tables.evaluate_command(row, '/ckpts/x.pth', '/data', str(tmp_path),
                                coco_annotations='/ann/instances_val2017.json')
  assert cmd[1:4] == ['-m', 'swin_jax.main', '--mode=evaluate']
  c = _parse_flags(cmd)
  assert c.model.name == row.model
  assert c.init_from == '/ckpts/x.pth' and c.input.data_dir == '/data'
  if row.metric == 'AP':
    assert c.eval.annotation_file == '/ann/instances_val2017.json'
  else:
    assert c.input.image_size == row.img_size[0] == row.img_size[1]
    assert not any('annotation_file' in a for a in cmd)
  if 'AugReg' in row.label:
    assert tuple(c.input.mean) == (0.5, 0.5, 0.5) and tuple(c.input.std) == (0.5, 0.5, 0.5)


# ---------------------------------------------------------------------------- our numbers

def test_flops_path_on_a_small_model():
  (row,) = tables.build_rows(['vit_tiny_patch16_224'])
  assert row.params == _params_as_source_counts(
      _abstract_variables(row.model, row.img_size), row.paper.params_m.source)
  published = row.paper.gflops.value  # timm's benchmark: 1.26 GMACs
  assert abs(row.macs / (float(published) * 1e9) - 1) < 0.02
  line = tables.markdown_lines([row])[2]
  assert f'| {row.macs / 1e9:.2f} / {published} |' in line
  assert f'| {row.params / 1e6:.2f} / {row.paper.params_m.value} |' in line


# ---------------------------------------------------------------------------- outputs

def _table_lines(md):
  return [l for l in md.splitlines() if l.startswith('| ') and not l.startswith('| model')]


def test_cli_writes_markdown_and_csv_that_agree(tmp_path, capsys):
  out = tmp_path / 'tables'
  assert tables.main(['--family', 'resnet', '--skip-flops', '--out', str(out)]) == 0
  stdout = capsys.readouterr().out
  md = (out / 'tables.md').read_text()
  assert stdout == md
  lines = _table_lines(md)
  recs = list(csv.DictReader(io.StringIO((out / 'tables.csv').read_text())))
  assert [r['model'] for r in recs] == ['resnet50', 'resnet101'] and len(lines) == 2
  for line, rec in zip(lines, recs):
    # The parameters as torchvision counts them (BatchNorm affine included).
    assert int(rec['params_ours']) == _params_as_source_counts(
        _abstract_variables(rec['model'], (224, 224)), 'torchvision')
    cells = [c.strip() for c in line.strip('|').split('|')]
    assert cells[0] == rec['model'] and cells[1] == rec['row'] and cells[2] == rec['input']
    ours, paper = cells[3].split(' / ')
    assert float(ours) == pytest.approx(int(rec['params_ours']) / 1e6, abs=1e-6)
    assert paper == rec['params_paper_m'] and cells[6] == rec['score_paper']
    assert cells[4] == '- / ' + rec['gflops_paper'] and rec['macs_ours'] == ''
    assert cells[7] == '-' and rec['score_measured'] == ''
  assert '- torchvision: ' in md and 'Notes:' in md


# ---------------------------------------------------------------------------- measured column

def test_measured_column_with_a_fake_runner(tmp_path, monkeypatch):
  ckpts = tmp_path / 'ckpts'
  ckpts.mkdir()
  (ckpts / 'swin_tiny_patch4_window7_224.pth').write_bytes(b'')
  (ckpts / 'shunted_t.pth').write_bytes(b'')  # no official name: <model>.pth
  (ckpts / 'resnet50-0676ba61.pth').write_bytes(b'')  # a checkpoint, but no config
  calls = []

  def fake(cmd):
    calls.append(cmd)
    if any('shunted' in a for a in cmd):
      raise tables.EvaluateError('exit 2: error: config.input.dataset=imagenet2012 is not '
                                 'prepared')
    return {'accuracy': 0.81234, 'top5_accuracy': 0.95, 'num_examples': 50000}

  monkeypatch.setattr(tables, 'count_model', lambda name, size, flops=True: (1, None))
  monkeypatch.setattr(tables, 'run_evaluate', fake)
  rows = tables.build_rows(['swin_tiny_patch4_window7_224', 'shunted_t', 'shunted_s',
                            'resnet50'], checkpoints=str(ckpts), data_dir='/data')
  by = _by_model(rows)
  swin = by['swin_tiny_patch4_window7_224', 'Swin-T']
  assert swin.measured == pytest.approx(81.234) and swin.status == ''
  assert by['shunted_t', 'Shunted-T'].measured is None
  assert by['shunted_t', 'Shunted-T'].status.startswith('failed: exit 2')
  assert by['shunted_s', 'Shunted-S'].status == 'no checkpoint'
  assert by['resnet50', 'ResNet-50 (torchvision V1)'].status == 'no config'
  assert len(calls) == 2
  swin_cmd = calls[0]
  assert f'--config={os.path.join(ROOT, "configs/swin/swin_i1k.py")}:T' in swin_cmd
  assert f'--config.init_from={ckpts / "swin_tiny_patch4_window7_224.pth"}' in swin_cmd
  workdir = [a for a in swin_cmd if a.startswith('--workdir=')][0].split('=', 1)[1]
  assert not os.path.exists(workdir)  # the throw-away workdir is removed

  md = tables.to_markdown(rows)
  cells = {l.split('|')[1].strip(): [c.strip() for c in l.split('|')[1:-1]]
           for l in _table_lines(md)}
  assert cells['swin_tiny_patch4_window7_224'][7] == '81.23'
  assert cells['shunted_t'][7] == 'failed'
  assert cells['shunted_s'][7] == '-' and cells['resnet50'][7] == '-'
  assert 'shunted_t (Shunted-T): evaluate failed: exit 2: error: config.input.dataset' in md
  assert 'resnet50 (ResNet-50 (torchvision V1)): no config to evaluate' in md
  rec = {r['model']: r for r in csv.DictReader(io.StringIO(tables.to_csv(rows)))}
  assert rec['swin_tiny_patch4_window7_224']['score_measured'] == '81.234'
  assert rec['shunted_t']['measured_status'].startswith('failed')


def test_detection_rows_read_ap():
  row = pn.rows_for('detr_resnet50')[0]
  got = tables.measure(row, '/c/detr-r50-e632da11.pth', '/data',
                       runner=lambda cmd: {'AP': 0.4201, 'AP50': 0.62})
  assert got == pytest.approx(42.01)
  with pytest.raises(tables.EvaluateError, match="no 'AP'"):
    tables.measure(row, '/c/x.pth', '/data', runner=lambda cmd: {'accuracy': 0.5})


def test_run_evaluate_subprocess_success_and_failure():
  ok = tables.run_evaluate([sys.executable, '-c',
                            'print("progress"); print(\'{"accuracy": 0.5}\')'])
  assert ok == {'accuracy': 0.5}
  with pytest.raises(tables.EvaluateError, match=r'exit 2: error: boom'):
    tables.run_evaluate([sys.executable, '-c',
                         'import sys; print("log", file=sys.stderr); '
                         'print("error: boom", file=sys.stderr); sys.exit(2)'])
  with pytest.raises(tables.EvaluateError, match='no JSON'):
    tables.run_evaluate([sys.executable, '-c', 'print("nothing")'])


@pytest.mark.parametrize('argv, flag', [
    (['--checkpoints', '{tmp}'], '--data_dir'),
    (['--data_dir', '{tmp}'], '--checkpoints'),
    (['--checkpoints', '{tmp}/missing', '--data_dir', '{tmp}'], '--checkpoints'),
    (['--family', 'vitt'], '--family'),
])
def test_cli_errors_name_the_flag(argv, flag, tmp_path, capsys):
  with pytest.raises(SystemExit) as e:
    tables.main([a.format(tmp=tmp_path) for a in argv] + ['--out', str(tmp_path / 'o')])
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert flag in err
  assert not (tmp_path / 'o').exists()


def test_a_model_without_a_paper_row_still_gets_a_row(monkeypatch):
  """A newly registered model shows up with our numbers and '-' for the paper's."""
  monkeypatch.setattr(pn, 'rows_for', lambda name: ())
  monkeypatch.setattr(tables, 'count_model', lambda name, size, flops=True: (1_500_000, None))
  rows = tables.build_rows(['shunted_t'], checkpoints='/nowhere', data_dir='/data')
  assert rows[0].label == '-' and rows[0].status == 'no paper row'
  line = tables.markdown_lines(rows)[2]
  assert line == '| shunted_t | - | - | 1.50 / - | - / - | - | - | - | - |'
