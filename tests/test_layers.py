"""swin_jax.models.layers: attention formulations against a float64 numpy reference."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import jaxpr_eqns
from swin_jax.models import layers


def _reference(q, k, v, bias=None, mask=None):
  """softmax(q k^T / sqrt(d) + bias) v in float64; q [..., T, h, d], k / v [..., S, h, d]."""
  q, k, v = (np.asarray(t, np.float64) for t in (q, k, v))
  logits = np.einsum('...qhd,...khd->...hqk', q, k) / np.sqrt(q.shape[-1])
  if bias is not None:
    logits = logits + np.asarray(bias, np.float64)
  if mask is not None:
    logits = np.where(mask, logits, -np.inf)
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  return np.einsum('...hqk,...khd->...qhd', p, v)


def _inputs(lead, T, S, h=3, d=8, seed=0):
  rng = np.random.default_rng(seed)
  q = rng.standard_normal(lead + (T, h, d)).astype(np.float32)
  k = rng.standard_normal(lead + (S, h, d)).astype(np.float32)
  v = rng.standard_normal(lead + (S, h, d)).astype(np.float32)
  return q, k, v


# (lead dims, T, S, bias shape or None, mask shape or None): ViT ([B], no bias), Shunted
# (T != S), Swin windows ([B, nW] with relative bias [h, T, S] + shift mask [nW, 1, T, S] +
# padded keys [B, nW, 1, 1, S], as WindowAttention sums them), a boolean key mask (DETR).
CASES = [
    ((2,), 5, 5, None, None),
    ((2,), 6, 3, None, None),
    ((2, 4), 4, 4, 'swin', None),
    ((2,), 5, 7, (1, 1, 7), (2, 1, 1, 7)),
]


def _bias_mask(lead, T, S, bias, mask, h=3, seed=1):
  rng = np.random.default_rng(seed)
  if bias == 'swin':
    rel = rng.standard_normal((h, T, S)).astype(np.float32)
    region = np.where(rng.random((lead[1], 1, T, S)) < 0.3, -100.0, 0.0).astype(np.float32)
    pad = np.zeros(lead + (1, 1, S), np.float32)
    pad[0, 1, ..., -1] = -1e9  # one padded key in one window
    bias = rel + region + pad  # [B, nW, h, T, S]
  elif bias is not None:
    bias = rng.standard_normal(bias).astype(np.float32)
  if mask is not None:
    mask = np.ones(mask, bool)
    mask[1, ..., -2:] = False
  return bias, mask


@pytest.mark.parametrize('impl', ['einsum', 'xla', 'cudnn'])
@pytest.mark.parametrize('case', range(len(CASES)))
def test_attention_matches_numpy(impl, case):
  """Every formulation is softmax(q k^T / sqrt(d) + bias) v ('cudnn' on a machine without
  cuDNN falls back to XLA's path, which is what this checks there)."""
  lead, T, S, bias, mask = CASES[case]
  q, k, v = _inputs(lead, T, S)
  bias, mask = _bias_mask(lead, T, S, bias, mask)
  got = jax.jit(lambda q, k, v, b, m: layers.dot_product_attention(
      q, k, v, bias=b, mask=m, implementation=impl))(q, k, v, bias, mask)
  assert got.shape == q.shape and got.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(got), _reference(q, k, v, bias, mask), rtol=1e-5,
                             atol=1e-5)


def test_attention_gradients_agree_between_formulations():
  """The backward of jax.nn's path equals the einsum path's, incl. d(bias), which is how
  Swin's relative position table trains."""
  lead, T, S = (2, 4), 4, 4
  q, k, v = _inputs(lead, T, S)
  bias, _ = _bias_mask(lead, T, S, 'swin', None)
  rel = bias[0, 0]  # a [h, T, S] parameter broadcast over [B, nW]
  g = np.random.default_rng(2).standard_normal(q.shape).astype(np.float32)

  def grads(impl):
    def f(q, k, v, rel):
      out = layers.dot_product_attention(q, k, v, bias=rel + (bias - bias[0, 0]),
                                         implementation=impl)
      return jnp.vdot(out, g)
    return jax.jit(jax.grad(f, argnums=(0, 1, 2, 3)))(q, k, v, rel)

  for a, b in zip(grads('einsum'), grads('xla')):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('impl', ['einsum', 'xla'])
def test_bfloat16_logits_and_softmax_are_float32(impl):
  """With bfloat16 inputs the logits accumulate into float32 and the softmax runs in float32.

  Logits 256 and 256.5 (scaled q.k of exactly representable bf16 inputs) are one bf16 ulp
  (2.0) apart at most: bf16 logits round both to 256 and give weights (0.5, 0.5) instead of
  (0.378, 0.622).
  """
  q = np.array([16, 16, 0, 1], np.float32).reshape(1, 1, 1, 4)
  k = np.array([[16, 16, 0, 0], [16, 16, 0, 1]], np.float32).reshape(1, 2, 1, 4)
  v = np.array([[1, 0, 0, 0], [0, 1, 0, 0]], np.float32).reshape(1, 2, 1, 4)
  f = lambda q, k, v: layers.dot_product_attention(q, k, v, implementation=impl)
  args = [jnp.asarray(t, jnp.bfloat16) for t in (q, k, v)]
  got = np.asarray(jax.jit(f)(*args), np.float32)[0, 0, 0, :2]
  want = np.exp([0, 0.5]) / np.exp([0, 0.5]).sum()
  np.testing.assert_allclose(got, want, atol=4e-3)  # bf16 output rounding: 2^-9
  jaxpr = jax.make_jaxpr(f)(*args).jaxpr
  dots = [e for e in jaxpr_eqns(jaxpr) if e.primitive.name == 'dot_general']
  assert [str(e.outvars[0].aval.dtype) for e in dots] == ['float32', 'bfloat16']
  assert all(str(x.aval.dtype) == 'bfloat16' for e in dots for x in e.invars)
  exps = [e for e in jaxpr_eqns(jaxpr) if e.primitive.name == 'exp']
  assert exps and all(str(e.outvars[0].aval.dtype) == 'float32' for e in exps)


def test_attention_dropout_takes_the_einsum_path():
  """jax.nn's attention has no dropout: in training with attention dropout every requested
  formulation must still drop (not silently skip it)."""
  q, k, v = _inputs((2,), 5, 5)
  rng = jax.random.PRNGKey(0)

  @jax.jit
  def run(q, k, v):
    kw = dict(dropout_rng=rng, dropout_rate=0.5, deterministic=False)
    return (layers.dot_product_attention(q, k, v, implementation='einsum', **kw),
            layers.dot_product_attention(q, k, v, implementation='xla', **kw),
            layers.dot_product_attention(q, k, v, implementation='xla'))

  a, b, plain = (np.asarray(t) for t in run(q, k, v))
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(b, plain)


def test_implementation_per_backend():
  pick = layers.attention_implementation
  assert pick(jnp.float32, 64, 197, 197, False, backend='cpu') == 'einsum'
  assert pick(jnp.bfloat16, 64, 197, 197, False, backend='cpu') == 'einsum'
  assert pick(jnp.bfloat16, 64, 197, 197, False, backend='tpu') == 'xla'
  assert pick(jnp.bfloat16, 64, 197, 197, False, backend='gpu') == 'cudnn'  # ViT
  assert pick(jnp.float32, 64, 197, 197, False, backend='gpu') == 'xla'  # cuDNN: bf16/fp16
  assert pick(jnp.bfloat16, 32, 49, 49, True, backend='gpu') == 'xla'  # Swin 7x7: odd
  assert pick(jnp.bfloat16, 32, 144, 144, True, backend='gpu') == 'cudnn'  # Swin 12x12
  assert pick(jnp.bfloat16, 12, 64, 64, False, backend='gpu') == 'xla'  # head dim % 8
  with pytest.raises(ValueError, match='implementation'):
    layers.dot_product_attention(*_inputs((1,), 2, 2), implementation='flash')


def test_gelu_is_the_erf_gelu_with_its_derivative():
  """torch.nn.GELU() (exact, erf): x Phi(x), against scipy's float64 erf; the gradient
  against the closed form Phi(x) + x phi(x). float32 erf is accurate to a few ulp: 2e-6
  absolute over [-8, 8] (|gelu| <= 8), well below a tanh-approximation's 5e-4 error, which
  the test rejects."""
  from scipy.special import erf
  x = np.linspace(-8, 8, 4001).astype(np.float32)
  x64 = x.astype(np.float64)
  want = 0.5 * x64 * (1 + erf(x64 / np.sqrt(2)))
  got = np.asarray(jax.jit(layers.gelu)(x), np.float64)
  np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)
  tanh = np.asarray(jax.nn.gelu(x, approximate=True), np.float64)
  assert np.abs(tanh - want).max() > 1e-4  # the tolerance tells the two apart
  dwant = 0.5 * (1 + erf(x64 / np.sqrt(2))) + x64 * np.exp(-x64 ** 2 / 2) / np.sqrt(2 * np.pi)
  dgot = np.asarray(jax.jit(jax.vmap(jax.grad(layers.gelu)))(x), np.float64)
  np.testing.assert_allclose(dgot, dwant, rtol=0, atol=4e-6)
  assert layers.gelu(jnp.ones(3, jnp.bfloat16)).dtype == jnp.bfloat16


# ---------------------------------------------------------------------------------------------
# layers.Dense: nn.Dense's parameters and function, multiplied as one 2-D matrix.

@pytest.mark.parametrize('lead', [(3,), (2, 5), (2, 3, 4)])
def test_dense_is_nn_dense_on_any_leading_dims(lead):
  rng = np.random.default_rng(0)
  x = rng.standard_normal(lead + (6,)).astype(np.float32)
  import flax.linen as nn
  variables = layers.Dense(4).init(jax.random.PRNGKey(0), x)
  ref = nn.Dense(4)
  assert jax.tree.map(np.shape, variables) == jax.tree.map(
      np.shape, ref.init(jax.random.PRNGKey(0), x))  # {'params': {'kernel', 'bias'}}
  k, b = (np.asarray(variables['params'][n], np.float64) for n in ('kernel', 'bias'))
  np.testing.assert_allclose(layers.Dense(4).apply(variables, x), x @ k + b,
                             rtol=1e-5, atol=1e-6)
  g = rng.standard_normal(lead + (4,)).astype(np.float32)
  grad = jax.grad(lambda v: jnp.sum(layers.Dense(4).apply(v, x) * g))(variables)['params']
  x2, g2 = x.reshape(-1, 6).astype(np.float64), g.reshape(-1, 4).astype(np.float64)
  np.testing.assert_allclose(grad['kernel'], x2.T @ g2, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(grad['bias'], g2.sum(0), rtol=1e-5, atol=1e-5)


def test_dense_kernel_gradient_reads_its_operands_without_a_transposed_copy():
  # What layers.Dense is for: on XLA:CPU the kernel gradient of a [B, N, C] input is one dot
  # of x and g as they lie; nn.Dense's needs a transposed copy of g ([F, B*N]) first.
  import flax.linen as nn
  if jax.default_backend() != 'cpu':
    pytest.skip('a fact about XLA:CPU layouts')
  x = jnp.ones((8, 50, 64))
  g = jnp.ones((8, 50, 96))

  def hlo(cls):
    def kernel_grad(v, x, g):
      return jax.grad(lambda v: jnp.sum(cls(96).apply(v, x) * g))(v)['params']['kernel']
    v = cls(96).init(jax.random.PRNGKey(0), x)
    return jax.jit(kernel_grad).lower(v, x, g).compile().as_text()

  moves = lambda text: [l for l in text.splitlines()
                        if ' transpose(' in l or ' copy(' in l or 'copy_' in l.split('=')[0]]
  assert moves(hlo(nn.Dense)), 'nn.Dense: the transposed copy this test is about is gone'
  assert not moves(hlo(layers.Dense)), moves(hlo(layers.Dense))


def test_drop_path_keeps_a_sample_where_its_uniform_is_below_keep():
  """timm's drop_path: branch * (1 / keep) where the sample is kept, 0 where dropped; with
  given uniforms (layers.drop_path_noise), sample b is kept iff noise[b] < keep."""
  x = jnp.arange(1.0, 5.0)[:, None, None] * jnp.ones((4, 2, 3))
  noise = jnp.asarray([0.1, 0.8, 0.7499, 0.75])
  out = layers.DropPath(0.25).apply({}, x, False, noise=noise)
  want = np.asarray([1, 0, 3, 0], np.float32)[:, None, None] / 0.75 * np.ones((4, 2, 3))
  np.testing.assert_allclose(out, want, rtol=1e-6)
  assert layers.DropPath(0.25).apply({}, x, True, noise=noise) is x  # eval: the identity
  assert layers.drop_path_noise(None, (3, 2, 4), True, True) is None


def test_drop_path_drops_each_sample_with_its_rate():
  """Drawn uniforms: over 20,000 samples the dropped fraction is the rate within 5 binomial
  standard deviations (rate 0.3: sd 0.0032)."""
  n, rate = 20000, 0.3
  out = layers.DropPath(rate).apply({}, jnp.ones((n, 1)), False,
                                    rngs={'dropout': jax.random.key(0)})
  dropped = float(np.mean(np.asarray(out)[:, 0] == 0))
  assert abs(dropped - rate) < 5 * np.sqrt(rate * (1 - rate) / n)
  np.testing.assert_allclose(np.asarray(out)[np.asarray(out)[:, 0] > 0], 1 / (1 - rate),
                             rtol=1e-6)
