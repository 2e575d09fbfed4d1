"""Parameters and FLOPs of a registered model, measured on the real JAX model.

    python -m swin_jax.tools.count vit_base_patch16_224 [--img-size 384 | --img-size 256 320]
    vit_base_patch16_224  img 224x224  params 86,567,656 (86.57 M)  FLOPs 17.58 G (MACs)  ...

FLOPs follow the Swin/ViT papers' (and fvcore's) convention: one multiply-add counts once,
and only matrix products and convolutions count. They are counted from the jaxpr of
``model.apply(variables, x, train=False)``, recursing into every sub-jaxpr (jit, custom_jvp,
custom_vjp, remat, cond = the most expensive branch, scan = ``length`` times the body,
while = the body once, since its trip count is unknown at trace time):

* ``dot_general``: batch x lhs-free x rhs-free x contracting elements;
* ``conv_general_dilated``: output elements x input features per group x kernel window.

XLA's ``compiled.cost_analysis()['flops']`` is reported beside it for reference ("XLA
flops"): it counts 2 per multiply-add plus elementwise work, so it is a bit more than twice
the MACs.

A ``scan_blocks=True`` model (``--model-arg scan_blocks=True``) has the same parameter count
(its blocks' params are stacked, not new) and the same MACs (the jaxpr walk multiplies the
scan body by its length); XLA's cost analysis counts a loop body once, so its flops are taken
from the unscanned equivalent, the same function.

Nothing is materialised: the variables come from ``jax.eval_shape(model.init, ...)`` and the
jaxpr from ``jax.make_jaxpr`` on ``ShapeDtypeStruct``s, so ViT-H costs no memory.
"""
from __future__ import annotations

import argparse
import math
import sys
from typing import Any, Dict, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from swin_jax import cli
from swin_jax.models import create_model, scan


def image_size(model: nn.Module) -> Tuple[int, int]:
  """The (H, W) in pixels that ``model`` was built for (its ``img_size`` field)."""
  s = getattr(model, 'img_size', None)
  if s is None:
    raise ValueError(f'{type(model).__name__} has no img_size field: pass input_shape '
                     f'explicitly')
  if isinstance(s, (tuple, list)):
    if len(s) != 2:
      raise ValueError(f'img_size={s!r}: expected an int or (H, W)')
    return int(s[0]), int(s[1])
  return int(s), int(s)


def input_shape_for(model: nn.Module, batch: int = 1) -> Tuple[int, int, int, int]:
  """NHWC image shape ``[batch, H, W, in_chans]`` the model expects."""
  H, W = image_size(model)
  return (batch, H, W, int(getattr(model, 'in_chans', 3)))


def make_inputs(model: nn.Module, input_shape: Sequence[int],
                dtype: Any = jnp.float32) -> Tuple[tuple, Dict[str, Any]]:
  """Abstract example inputs of ``model.apply`` beside the variables: ``(args, kwargs)``.

  Returns ``ShapeDtypeStruct``s: ``((images,), kwargs)`` with images NHWC ``input_shape``
  and, for a model with ``takes_mask`` (DETR), ``kwargs = {'mask': bool [B, H, W]}``, the
  padding mask it is trained and evaluated with (so the tools trace the same program);
  else ``{}``. This is the one place to teach the tools about models that take more than
  images.
  """
  shape = tuple(int(d) for d in input_shape)
  x = jax.ShapeDtypeStruct(shape, dtype)
  if getattr(model, 'takes_mask', False):
    return (x,), {'mask': jax.ShapeDtypeStruct(shape[:3], jnp.bool_)}
  return (x,), {}


def abstract_variables(model: nn.Module, input_shape: Sequence[int]):
  """Shapes/dtypes of ``model.init(rng, *inputs)`` via ``jax.eval_shape`` (no allocation).

  Raises the model's own error (e.g. a ValueError for an img_size it cannot take).
  """
  args, kwargs = make_inputs(model, input_shape)
  # kwargs as an argument, not closed over: eval_shape turns only arguments into tracers.
  return jax.eval_shape(lambda k, a, kw: model.init(k, *a, **kw), jax.random.key(0), args,
                        kwargs)


def count_params(variables) -> int:
  """Number of scalars in the ``params`` collection (arrays or ShapeDtypeStructs).

  Other collections (batch statistics, caches) are not counted; a tree without a ``params``
  collection counts 0.
  """
  params = variables['params'] if 'params' in variables else {}
  return int(sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(params)))


# --- jaxpr walking ---------------------------------------------------------------------------

def _as_jaxpr(obj):
  """Returns the open ``Jaxpr`` of a ``Jaxpr`` / ``ClosedJaxpr``, else None."""
  if hasattr(obj, 'eqns'):
    return obj
  inner = getattr(obj, 'jaxpr', None)
  if inner is not None and hasattr(inner, 'eqns'):
    return inner
  return None


def _sub_jaxprs(params: Dict[str, Any]):
  """Every (Closed)Jaxpr among an equation's params, also inside tuples/lists (cond)."""
  for v in params.values():
    vs = v if isinstance(v, (tuple, list)) else (v,)
    for u in vs:
      j = _as_jaxpr(u)
      if j is not None:
        yield j


def _dot_general_macs(eqn) -> int:
  lhs, rhs = (v.aval.shape for v in eqn.invars[:2])
  (lc, rc), (lb, rb) = eqn.params['dimension_numbers']
  batch = math.prod(lhs[d] for d in lb)
  contract = math.prod(lhs[d] for d in lc)
  lhs_free = math.prod(s for d, s in enumerate(lhs) if d not in lc and d not in lb)
  rhs_free = math.prod(s for d, s in enumerate(rhs) if d not in rc and d not in rb)
  return batch * lhs_free * rhs_free * contract


def _conv_macs(eqn) -> int:
  rhs = eqn.invars[1].aval.shape
  out = eqn.outvars[0].aval.shape
  dn = eqn.params['dimension_numbers']
  rhs_spec = dn.rhs_spec  # (out-feature dim, in-feature dim, *spatial dims) of the kernel
  # The kernel's in-feature dim already is in_features / feature_group_count.
  in_per_group = rhs[rhs_spec[1]]
  window = math.prod(rhs[d] for d in rhs_spec[2:])
  return math.prod(out) * in_per_group * window


def jaxpr_macs(jaxpr) -> int:
  """Multiply-adds of ``dot_general`` and ``conv_general_dilated`` in a (Closed)Jaxpr."""
  jaxpr = _as_jaxpr(jaxpr)
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == 'dot_general':
      total += _dot_general_macs(eqn)
    elif name == 'conv_general_dilated':
      total += _conv_macs(eqn)
    elif name == 'cond':
      total += max((jaxpr_macs(b) for b in eqn.params['branches']), default=0)
    elif name == 'scan':
      total += int(eqn.params['length']) * jaxpr_macs(eqn.params['jaxpr'])
    else:  # jit/pjit, closed_call, custom_jvp/vjp_call, remat, while (body once), ...
      total += sum(jaxpr_macs(j) for j in _sub_jaxprs(eqn.params))
  return total


def _apply_fn(model: nn.Module, apply_kwargs: Dict[str, Any]):
  kw = dict(train=False)
  kw.update(apply_kwargs)
  return lambda variables, args, kwargs: model.apply(variables, *args, **kwargs, **kw)


def counting_model(model: nn.Module) -> nn.Module:
  """The formulation whose jaxpr counts the papers' multiply-adds: a Shunted model with
  ``fast_cpu`` (on by default on CPU: depthwise convs as shifted elementwise multiply-adds,
  which no conv equation shows) is counted as its convolutions (the same function and
  params)."""
  if getattr(model, 'fast_cpu', False) is not False and hasattr(model, 'clone'):
    return model.clone(fast_cpu=False)
  return model


def count_flops(model: nn.Module, input_shape: Sequence[int], *, variables=None,
                **apply_kwargs) -> int:
  """Multiply-adds (MACs) of one ``model.apply`` on a batch of ``input_shape`` (whole batch).

  ``apply_kwargs`` go to ``model.apply`` (default ``train=False``). ``variables`` may be
  given (arrays or ShapeDtypeStructs) to skip the abstract init.
  """
  model = counting_model(model)
  if variables is None:
    variables = abstract_variables(model, input_shape)
  args, kwargs = make_inputs(model, input_shape)
  closed = jax.make_jaxpr(_apply_fn(model, apply_kwargs))(variables, args, kwargs)
  return jaxpr_macs(closed)


def xla_flops(model: nn.Module, input_shape: Sequence[int], *, variables=None,
              **apply_kwargs) -> Optional[float]:
  """XLA's ``cost_analysis()['flops']`` of the compiled apply (whole batch), or None.

  Counts 2 per multiply-add plus elementwise ops; compiles for the default backend. XLA
  counts a while-loop body once, so a scan_blocks=True model is compiled unscanned (same
  function, per-block params).
  """
  model = counting_model(model)
  if scan.is_scanned(model):
    model, variables = scan.unscanned(model), None
  if variables is None:
    variables = abstract_variables(model, input_shape)
  args, kwargs = make_inputs(model, input_shape)
  fn = _apply_fn(model, apply_kwargs)
  compiled = jax.jit(fn).lower(variables, args, kwargs).compile()
  ca = compiled.cost_analysis()
  if isinstance(ca, (list, tuple)):  # Older jax: one dict per computation.
    ca = ca[0] if ca else None
  if not ca or 'flops' not in ca:
    return None
  return float(ca['flops'])


def model_stats(name: str, img_size=None, *, batch: int = 1, xla: bool = False,
                **overrides) -> Dict[str, Any]:
  """Parameters and per-image MACs of the registered model ``name``.

  Args:
    name: registry name, e.g. 'vit_base_patch16_224'.
    img_size: optional int or (H, W) override of the model's ``img_size``.
    batch: batch size the jaxpr is traced with (MACs are reported per image).
    xla: also compile and report XLA's flops per image (slower).
    **overrides: further ``create_model`` overrides.

  Returns:
    dict with 'name', 'params' (int), 'macs' (int, per image), 'input_shape'
    ([batch, H, W, C]), 'img_size' ((H, W) pixels) and, if ``xla``, 'xla_flops' (per image,
    float or None).
  """
  if img_size is not None:
    overrides['img_size'] = img_size
  model = create_model(name, **overrides)
  shape = input_shape_for(model, batch)
  variables = abstract_variables(model, shape)
  stats = dict(name=name, params=count_params(variables),
               macs=count_flops(model, shape, variables=variables) // batch,
               input_shape=shape, img_size=image_size(model))
  if xla:
    f = xla_flops(model, shape, variables=variables)
    stats['xla_flops'] = None if f is None else f / batch
  return stats


def _si(n: float) -> str:
  for unit, scale in (('G', 1e9), ('M', 1e6), ('K', 1e3)):
    if abs(n) >= scale:
      return f'{n / scale:.2f} {unit}'
  return f'{n:.0f}'


def format_stats(stats: Dict[str, Any]) -> str:
  H, W = stats['img_size']
  p = stats['params']
  line = (f'{stats["name"]}  img {H}x{W}  params {p:,} ({p / 1e6:.2f} M)  '
          f'FLOPs {_si(stats["macs"])} (MACs)')
  if 'xla_flops' in stats:
    f = stats['xla_flops']
    line += f'  XLA flops {"n/a" if f is None else _si(f)}'
  return line


def one_line_error(e: BaseException) -> str:
  return ' '.join(str(e).split()) or type(e).__name__


def parse_img_size(values: Optional[Sequence[int]], parser: argparse.ArgumentParser):
  """``--img-size N`` -> N, ``--img-size H W`` -> (H, W), absent -> None."""
  if values is None:
    return None
  if len(values) == 1:
    return values[0]
  if len(values) == 2:
    return tuple(values)
  parser.error(f'--img-size takes N or H W, got {len(values)} values')


def main(argv: Optional[Sequence[str]] = None) -> int:
  cli.quiet_startup()
  parser = argparse.ArgumentParser(
      prog='python -m swin_jax.tools.count',
      description='Parameters and FLOPs (multiply-adds, as the Swin/ViT papers) of a model.')
  parser.add_argument('model', help='registered model name, e.g. vit_base_patch16_224')
  parser.add_argument('--img-size', type=int, nargs='+', metavar='N',
                      help='input size: N (square) or H W; default: the model\'s img_size')
  parser.add_argument('--batch', type=int, default=1,
                      help='batch size to trace with; FLOPs are reported per image')
  parser.add_argument('--no-xla', action='store_true',
                      help='skip compiling for XLA\'s cost analysis (faster for big models)')
  parser.add_argument('--model-arg', action='append', metavar='KEY=VALUE',
                      help='create_model override (repeatable), e.g. scan_blocks=True')
  args = parser.parse_args(argv)
  if args.batch < 1:
    parser.error(f'--batch must be >= 1, got {args.batch}')
  img_size = parse_img_size(args.img_size, parser)
  try:
    overrides = cli.parse_model_args(args.model_arg, {'img_size': '--img-size'})
    stats = model_stats(args.model, img_size, batch=args.batch, xla=not args.no_xla,
                        **overrides)
  except (ValueError, TypeError) as e:
    print(f'error: {one_line_error(e)}', file=sys.stderr)
    return 2
  print(format_stats(stats))
  return 0


if __name__ == '__main__':
  sys.exit(main())
