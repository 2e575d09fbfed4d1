"""The package's import graph: no loops, module-level or function-local.

Read from the source with `ast` (nothing is imported), so it checks every module, every
`import` statement wherever it sits (a function-local import that closes a loop works only
because of the order modules happen to load in, and breaks when that order changes).
"""
import ast
import os
import subprocess
import sys

from conftest import ROOT

PACKAGE = 'swin_jax'


def _modules():
  """module name -> path of every module of the package."""
  out = {}
  for root, _, files in os.walk(os.path.join(ROOT, PACKAGE)):
    for f in files:
      if f.endswith('.py'):
        rel = os.path.relpath(os.path.join(root, f), ROOT)[:-3].split(os.sep)
        if rel[-1] == '__init__':
          rel = rel[:-1]
        out['.'.join(rel)] = os.path.join(root, f)
  return out


def _imports(name, path, modules):
  """The package modules `name` imports (any statement, anywhere in the file)."""
  is_pkg = path.endswith('__init__.py')
  targets = set()
  for node in ast.walk(ast.parse(open(path).read(), path)):
    if isinstance(node, ast.Import):
      bases = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      if node.level:  # relative: from . import x
        parts = name.split('.')[:len(name.split('.')) - node.level + is_pkg]
        base = '.'.join(parts + ([node.module] if node.module else []))
      else:
        base = node.module or ''
      # `from pkg import mod` imports pkg and, when it is a module, pkg.mod.
      bases = [base] + [f'{base}.{a.name}' for a in node.names]
    else:
      continue
    for b in bases:
      if b in modules:
        targets.add(b)
  targets.discard(name)
  # Importing a.b.c runs a/__init__ and a/b/__init__ first.
  for t in list(targets):
    parts = t.split('.')
    targets.update('.'.join(parts[:i]) for i in range(1, len(parts)) if
                   '.'.join(parts[:i]) in modules)
  return targets - {name} - {p for p in _parents(name)}


def _parents(name):
  parts = name.split('.')
  return ['.'.join(parts[:i]) for i in range(1, len(parts))]


def _cycle(graph):
  """One import loop as a list of modules, or None."""
  state = {}  # 1 = on the stack, 2 = done

  def visit(node, stack):
    state[node] = 1
    stack.append(node)
    for nxt in sorted(graph[node]):
      if state.get(nxt) == 1:
        return stack[stack.index(nxt):] + [nxt]
      if nxt not in state:
        found = visit(nxt, stack)
        if found:
          return found
    stack.pop()
    state[node] = 2
    return None

  for node in sorted(graph):
    if node not in state:
      found = visit(node, [])
      if found:
        return found
  return None


def test_the_checker_finds_a_loop():
  assert _cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']
  assert _cycle({'a': {'b'}, 'b': set()}) is None


def test_package_import_graph_has_no_loop():
  modules = _modules()
  graph = {m: _imports(m, p, modules) for m, p in modules.items()}
  assert graph['swin_jax.train.loop'] >= {'swin_jax.train.tasks', 'swin_jax.models.build'}
  loop = _cycle(graph)
  assert loop is None, 'import loop: ' + ' -> '.join(loop)


def test_the_training_loop_imports_no_cli_module():
  """The generic loop knows no task by name and draws nothing itself: task hooks do."""
  modules = _modules()
  graph = {m: _imports(m, p, modules) for m, p in modules.items()}
  for m in ('swin_jax.train.loop', 'swin_jax.train.tasks'):
    assert not graph[m] & {'swin_jax.predict', 'swin_jax.main', 'swin_jax.sweep'}, m
  assert "task.name ==" not in open(modules['swin_jax.train.loop']).read()


def test_entry_points_start_without_keras_and_tf_notices():
  """cli.quiet_startup() (every entry point's first line) before the trainer's imports:
  TensorFlow skips its eager Keras 3 load (~2 s of CPU in every run, sweep trial and test
  subprocess; swin_jax never uses Keras) and prints no C++ INFO notice."""
  code = ('from swin_jax import cli; cli.quiet_startup(); import swin_jax.train.loop, sys; '
          "print('KERAS', sorted(m for m in sys.modules if m.split('.')[0] == 'keras'))")
  env = {k: v for k, v in os.environ.items()
         if k not in ('TF_USE_LEGACY_KERAS', 'TF_CPP_MIN_LOG_LEVEL')}
  res = subprocess.run([sys.executable, '-c', code], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
  assert res.returncode == 0, res.stderr[-2000:]
  assert 'KERAS []' in res.stdout, res.stdout[-2000:]
  assert 'cpu_feature_guard' not in res.stderr, res.stderr[-2000:]
