"""A sweep's summary from its study and its workdirs: summary.csv / summary.md (best run
first, the state of each), summary.png (final metric against each swept value, training and
eval curves) and Optuna's optimisation history and parameter importances.

A run's row comes from its newest trial (state, trial number, final value) and from its
workdir (metrics.jsonl: final metrics, curves, train time) where this machine has it; a
run trained on another machine with no copy of its workdir here still shows its state and
the value it reported to the study.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
from typing import Any, Dict, List, Optional, Tuple

from swin_jax.sweep import study as st
from swin_jax.sweep.spec import (Run, Sweep, final_record, format_value,
                                 lower_is_better, metric_list, primary_metric, read_metrics,
                                 resolve_run, run_status)

HISTORY_PNG = 'optuna_history.png'
IMPORTANCES_PNG = 'optuna_importances.png'


@dataclasses.dataclass
class Row:
  """One run's line of the summary, and the records its curves are drawn from."""
  run: Run
  status: str
  trial: Optional[int]
  final: Dict[str, Any]
  best: Optional[float]
  best_step: Optional[int]
  train_loss: Optional[float]
  steps: Optional[int]
  train_time_s: Optional[float]
  records: List[Dict[str, Any]]


_STATES = {'COMPLETE': 'done', 'PRUNED': 'pruned', 'RUNNING': 'running', 'WAITING': 'pending'}


def _status(t, workdir_status: str) -> str:
  if t is None:
    return workdir_status
  if t.state.name == 'COMPLETE' and workdir_status == 'changed':
    return 'changed'
  if t.state.name == 'FAIL':
    return 'incomplete' if t.user_attrs.get('outcome') == 'interrupted' else 'failed'
  return _STATES[t.state.name]


def metric_names(sweep: Sweep, requested: Optional[str]) -> List[str]:
  """The table's metrics: --metric (comma list), else the primary one and its partner."""
  names = metric_list(requested or sweep.metric)
  if names:
    return names
  primary = primary_metric(sweep)
  return [primary] + {'accuracy': ['loss'], 'AP': ['AP50']}.get(primary, [])


def collect(sweep: Sweep, sweep_dir: str, study=None, metrics: Optional[str] = None
            ) -> Tuple[List[Row], List[str]]:
  """Every run's row, best first: finished runs by their final metric, then pruned runs by
  their best eval before the stop, then the rest in file / trial order."""
  names = metric_names(sweep, metrics)
  primary = names[0]
  latest = st.latest_trials(study) if study is not None else {}
  runs = {r.name: r for r in sweep.runs}
  for t in latest.values():
    run = st.run_of(sweep, t)
    if run is not None and run.name not in runs:
      resolve_run(sweep, run)
      runs[run.name] = run
  rows = []
  for name, run in runs.items():
    wd = os.path.join(sweep_dir, name)
    t = latest.get(name)
    records = read_metrics(wd)
    status = _status(t, run_status(wd, sweep, run))
    final = (final_record(records) or {}) if status in ('done', 'changed') else {}
    if not final and t is not None and status == 'done' and t.value is not None:
      final = {primary: t.value}  # trained elsewhere: the value it reported
    train = [r for r in records if r.get('split') == 'train']
    evals = [(r['step'], r[primary]) for r in records
             if r.get('split') == 'eval' and isinstance(r.get(primary), (int, float))]
    if not evals and t is not None:
      evals = sorted(t.intermediate_values.items()) + (
          [(None, t.value)] if status == 'done' and t.value is not None else [])
    best, best_step = None, None
    if evals:
      pick = min if lower_is_better(primary) else max
      best_step, best = pick(evals, key=lambda sv: sv[1])
    rows.append(Row(run=run, status=status, trial=None if t is None else t.number,
                    final=final, best=best, best_step=best_step,
                    train_loss=train[-1].get('loss') if train else None,
                    steps=max((r['step'] for r in records), default=None),
                    train_time_s=final.get('train_time_s'), records=records))
  sign = 1 if lower_is_better(primary) else -1
  order = {r.run.name: i for i, r in enumerate(rows)}

  def rank(r: Row):
    if r.final.get(primary) is not None:
      return (0, sign * r.final[primary], order[r.run.name])
    if r.status == 'pruned' and r.best is not None:
      return (1, sign * r.best, order[r.run.name])
    return (2, 0.0, order[r.run.name])

  return sorted(rows, key=rank), names


def best_row(rows: List[Row], names: List[str]) -> Optional[Row]:
  done = [r for r in rows if r.final.get(names[0]) is not None]
  return done[0] if done else None  # rows are sorted best first


def table(sweep: Sweep, rows: List[Row], names: List[str]) -> Tuple[List[str], List[list]]:
  """Header and cells of the summary (the same for CSV, Markdown and the console)."""
  header = (['run'] + [sweep.short[k] for k in sweep.swept] + [f'final {m}' for m in names] +
            [f'best {names[0]}', 'best step', 'final train loss', 'steps', 'train time (s)',
             'status', 'trial'])
  cells = []
  for r in rows:
    cells.append([r.run.name] + [r.run.values.get(k, r.run.own.get(k)) for k in sweep.swept] +
                 [r.final.get(m) for m in names] +
                 [r.best, r.best_step, r.train_loss, r.steps, r.train_time_s, r.status,
                  r.trial])
  return header, cells


def markdown(sweep: Sweep, rows: List[Row], names: List[str]) -> str:
  header, cells = table(sweep, rows, names)
  n_params = len(sweep.swept)

  def cell(j, v):
    if v is None:
      return ''
    if 1 <= j <= n_params:
      return format_value(v)
    if header[j] == 'train time (s)':
      return f'{v:.0f}'
    return f'{v:.4f}' if isinstance(v, float) else str(v)

  numeric = [1 <= j <= n_params or h not in ('run', 'status') for j, h in enumerate(header)]
  lines = ['| ' + ' | '.join(header) + ' |',
           '|' + '|'.join('---:' if num else '---' for num in numeric) + '|']
  lines += ['| ' + ' | '.join(cell(j, v) for j, v in enumerate(c)) + ' |' for c in cells]
  best = best_row(rows, names)
  if best is not None:
    own = ', '.join(f'{k}={format_value(v)}' for k, v in best.run.overrides.items())
    lines += ['', f'Best final {names[0]}: {best.final[names[0]]:.4f} ({best.run.name}'
                  f'{", trial " + str(best.trial) if best.trial is not None else ""}; '
                  f'overrides: {own or "none"}).']
  pruned = [r for r in rows if r.status == 'pruned']
  if pruned:
    lines += ['', f'Pruned: {", ".join(f"{r.run.name} (step {r.steps})" for r in pruned)}; '
                  f'`--unprune=NAME` (or `all`) trains one on from its checkpoint.']
  failed = [r.run.name for r in rows if r.status == 'failed']
  if failed:
    lines += ['', f'Failed: {", ".join(failed)} (see <run>/log.txt).']
  return '\n'.join(lines) + '\n'


def write_summary(sweep: Sweep, sweep_dir: str, study=None, metrics: Optional[str] = None,
                  plot: bool = True) -> Tuple[List[Row], List[str], str, List[str]]:
  """Writes summary.csv, summary.md and the PNGs; returns (rows, metrics, markdown, files)."""
  rows, names = collect(sweep, sweep_dir, study, metrics)
  os.makedirs(sweep_dir, exist_ok=True)
  header, cells = table(sweep, rows, names)
  with open(os.path.join(sweep_dir, 'summary.csv'), 'w', newline='') as f:
    w = csv.writer(f)
    w.writerow(header)
    w.writerows([['' if v is None else v for v in c] for c in cells])
  md = markdown(sweep, rows, names)
  with open(os.path.join(sweep_dir, 'summary.md'), 'w') as f:
    f.write(f'# Sweep {sweep.source}\n\n`--config={sweep.config}`, base: '
            f'{json.dumps(sweep.base) if sweep.base else "none"}' +
            (f', study `{study.study_name}`' if study is not None else '') + f'\n\n{md}')
  written = ['summary.csv', 'summary.md']
  if plot and any(r.records for r in rows):  # nothing to draw before a run has logged
    plot_summary(sweep, rows, names, os.path.join(sweep_dir, 'summary.png'))
    written.append('summary.png')
  if plot and study is not None:
    written += optuna_plots(study, names[0], sweep_dir)
  return rows, names, md, written


# -------------------------------------------------------------------------------- plots
def _pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top  (plotting only: slow import)
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def optuna_plots(study, metric: str, sweep_dir: str) -> List[str]:
  """Optuna's optimisation history and parameter importances (fANOVA), where it can draw
  them: the history from one finished trial, importances from three (fANOVA ranks any two
  points, but two say nothing about which value mattered)."""
  from optuna.trial import TrialState  # pylint: disable=g-import-not-at-top
  from optuna.visualization import matplotlib as ovm  # pylint: disable=g-import-not-at-top
  plt = _pyplot()
  done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
  out = []
  jobs = [(HISTORY_PNG, ovm.plot_optimization_history, 1),
          (IMPORTANCES_PNG, ovm.plot_param_importances, 3)]
  for path, fn, needed in jobs:
    if os.path.exists(os.path.join(sweep_dir, path)):
      os.remove(os.path.join(sweep_dir, path))  # an old one would not say what this one says
    if len(done) < needed or (needed > 1 and not any(t.params for t in done)):
      continue
    try:
      ax = fn(study, target_name=metric)
    except (ValueError, RuntimeError, ZeroDivisionError):
      continue  # e.g. every param constant over the finished trials: nothing to rank
    fig = ax.figure
    fig.set_size_inches(7, 4.5)
    fig.tight_layout()
    fig.savefig(os.path.join(sweep_dir, path), dpi=100, bbox_inches='tight')  # its legend
    plt.close(fig)
    out.append(path)
  return out


def _is_number(v: Any) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool)


def plot_summary(sweep: Sweep, rows: List[Row], names: List[str], path: str) -> None:
  """summary.png: the final metric against each swept value (runs that differ only in that
  value joined by a line; pruned runs at their best eval before the stop), the
  training-loss curves and, where runs evaluated more than once, the eval-metric curves
  (pruned runs dashed)."""
  plt = _pyplot()
  primary = names[0]
  varying = [k for k in sweep.swept
             if len({json.dumps(r.run.values.get(k), default=str) for r in rows}) > 1]
  multi_eval = any(
      sum(1 for x in r.records if x.get('split') == 'eval' and primary in x) > 1 for r in rows)
  panels = ([('param', k) for k in varying] + [('train', None)] +
            ([('eval', None)] if multi_eval else []))
  cols = 2 if len(panels) == 4 else min(3, len(panels))
  nrows = math.ceil(len(panels) / cols)
  fig, axes = plt.subplots(nrows, cols, figsize=(5.4 * cols, 4.2 * nrows), squeeze=False)
  for ax in axes.flat[len(panels):]:
    ax.axis('off')
  colors = plt.get_cmap('tab10' if len(rows) <= 10 else 'tab20')
  run_color = {r.run.name: colors(i % colors.N) for i, r in enumerate(rows)}
  best = best_row(rows, names)

  for ax, (kind, key) in zip(axes.flat, panels):
    if kind == 'param':
      drawn = sweep.search is not None and sweep.search.params.get(key, ('choice',))[0] != (
          'choice')
      _param_panel(ax, key, varying, sweep.short, rows, primary, best, plt,
                   label_values=not drawn)
      continue
    metric = 'loss' if kind == 'train' else primary
    for r in rows:
      pts = [(x['step'], x[metric]) for x in r.records if x.get('split') == kind and metric in x]
      if pts:
        ax.plot(*zip(*pts), marker='.' if kind == 'eval' else None, lw=1.4,
                ls='--' if r.status == 'pruned' else '-', color=run_color[r.run.name],
                label=r.run.name + (' (pruned)' if r.status == 'pruned' else ''))
    ax.set_title(f'{"training loss" if kind == "train" else "eval " + metric} vs step')
    ax.set_xlabel('step')
    ax.set_ylabel(f'train {metric}' if kind == 'train' else f'eval {metric}')
    ys = [l.get_ydata() for l in ax.get_lines()]
    lo = min((min(y) for y in ys), default=1.0)
    hi = max((max(y) for y in ys), default=1.0)
    if kind == 'train' and lo > 0 and hi / lo > 20:
      ax.set_yscale('log')
    if ax.get_lines() and len(rows) <= 12:
      ax.legend(fontsize=7, title='run', title_fontsize=7)
    ax.grid(alpha=0.3)
  title = f'Sweep {os.path.basename(sweep.source)}: {len(rows)} runs of {sweep.config}'
  if best is not None:
    title += f'; best final {primary} {best.final[primary]:.4f} ({best.run.name})'
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _param_panel(ax, key, varying, short, rows, metric, best, plt, label_values=True):
  """Final metric against one swept value; runs equal in every other swept value form one
  line, labelled by those values; pruned runs hollow at their best eval; failed runs red
  crosses on the x axis."""
  import matplotlib.transforms as mtransforms  # pylint: disable=g-import-not-at-top
  others = [k for k in varying if k != key]
  values = [r.run.values.get(key) for r in rows]
  numeric = all(_is_number(v) for v in values)
  if numeric:
    xs = {id(r): float(v) for r, v in zip(rows, values)}
  else:
    cats = list(dict.fromkeys(format_value(v) for v in values))
    xs = {id(r): float(cats.index(format_value(v))) for r, v in zip(rows, values)}
    ax.set_xticks(range(len(cats)), cats, rotation=20 if len(cats) > 4 else 0)
  finished = [r for r in rows if r.final.get(metric) is not None]
  groups: Dict[str, List[Row]] = {}
  for r in finished:
    label = ', '.join(f'{short[k]}={format_value(r.run.values.get(k))}' for k in others)
    groups.setdefault(label, []).append(r)
  if len(groups) <= 10:
    cmap = plt.get_cmap('tab10')
    for j, (label, grp) in enumerate(groups.items()):
      grp = sorted(grp, key=lambda r: xs[id(r)])
      ax.plot([xs[id(r)] for r in grp], [r.final[metric] for r in grp], marker='o',
              color=cmap(j), label=label or None)
  else:  # a random or TPE search: too many combinations for a legend
    ax.scatter([xs[id(r)] for r in finished], [r.final[metric] for r in finished], s=18)
  pruned = [r for r in rows if r.status == 'pruned' and r.best is not None]
  if pruned:
    ax.scatter([xs[id(r)] for r in pruned], [r.best for r in pruned], s=30,
               facecolors='none', edgecolors='gray', label='pruned (best eval)')
  if best is not None and any(r is best for r in finished):
    ax.plot([xs[id(best)]], [best.final[metric]], marker='*', ms=16, color='gold',
            markeredgecolor='black', ls='none', zorder=5, label='best run')
  failed = [r for r in rows if r.status == 'failed']
  if failed:  # x in data units, y at the bottom of the axes, below the points
    ax.margins(y=0.15)
    ax.plot([xs[id(r)] for r in failed], [0.03] * len(failed), marker='x', ms=9, mew=2,
            color='red', ls='none', label='failed', clip_on=False,
            transform=mtransforms.blended_transform_factory(ax.transData, ax.transAxes))
  missing = len(rows) - len(finished) - len(failed) - len(pruned)
  if missing:
    ax.text(0.99, 0.01, f'{missing} unfinished run(s) not shown', transform=ax.transAxes,
            ha='right', va='bottom', fontsize=7, color='gray')
  pos = [x for x in xs.values() if x > 0]
  if numeric and pos and len(pos) == len(xs) and max(pos) / min(pos) >= 10:
    ax.set_xscale('log')  # lr-like values spanning 10x or more
  if label_values and numeric and 0 < len(set(xs.values())) <= 8:  # a grid's values
    shown = {xs[id(r)]: format_value(v) for r, v in zip(rows, values)}
    ax.set_xticks(sorted(shown), [shown[t] for t in sorted(shown)])
    ax.minorticks_off()
  if ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize=7)
  ax.set_title(f'final {metric} vs {short[key]}')
  ax.set_xlabel(key + (' (log scale)' if ax.get_xscale() == 'log' else ''))
  ax.set_ylabel(f'final eval {metric}')
  ax.grid(alpha=0.3)
