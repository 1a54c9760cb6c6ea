r"""Linear Transformer / fast-weight programmer (additive update), exact RTRL.

Equations, per head (H heads; x ∈ R^D, keys and queries d_k = key_size,
values d_v = hidden_size, φ a positive feature map, elu(·)+1 by default):

    k(t) = W_k x(t),   v(t) = W_v x(t),   q(t) = W_q x(t)
    W(t) = W(t-1) + v(t) ⊗ φ(k(t))              fast weights, d_v × d_k
    y(t) = W(t) φ(q(t))                          heads concatenated: H·d_v

Recurrent parameters θ_r = {W_k ∈ R^{H×d_k×D}, W_v ∈ R^{H×d_v×D}}; read-out
parameters θ_o = {W_q ∈ R^{H×d_k×D}} (queries only read the state). hidden =
the fast weights W, [H, d_v, d_k]. (No attention normaliser: y is the
un-normalised linear attention.)

Sensitivities (paper-notes §1.2). ∂W(t)/∂W(t-1) is the identity, so the
sensitivities are running sums with no Jacobian product, and they do not
depend on the sequence length:

    ∂W_ab/∂W_v[a', j] = δ_aa' · P_bj,   P(t) = P(t-1) + φ(k(t)) ⊗ x(t)          d_k × D
    ∂W_ab/∂W_k[b', j] = δ_bb' · Q_abj,  Q(t) = Q(t-1) + (v(t) ⊗ φ'(k(t))) ⊗ x(t)  d_v × d_k × D

per head. They are not shaped like θ_r (P is shared by all rows a of W_v; Q
has an extra d_v axis), so this cell overrides `zero_sensitivities` and
`contract_sensitivities`. With G = dL/dW (d_v × d_k):

    dL/dW_v = G P,      dL/dW_k[b, j] = Σ_a G_ab Q_abj.

Cost per example and step, per head: space d_k·D + d_v·d_k·D numbers
(O(d_v·d_k·D): cubic in the head size, independent of T), time
O(d_v·d_k·D) for the Q update and the contraction. Compare |θ_r| =
(d_k + d_v)·D: the W_k sensitivity is d_v times larger than W_k itself.

Limits: without normalisation or decay, ‖W(t)‖ grows linearly with the time
since the last reset, and so does y; keep episodes (or resets) bounded.
The delta-rule update (DeltaNet) has a dense Jacobian and is not tractable
this way. Reference: A. Katharopoulos et al., "Transformers are RNNs", ICML
2020; I. Schlag, K. Irie, J. Schmidhuber, "Linear Transformers Are Secretly
Fast Weight Programmers", ICML 2021; Irie et al. ICLR 2024, App. A.2.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp

from rtrl_jax.cells.base import ElementwiseCell
from rtrl_jax.checks import check_choice, check_positive_int

FEATURE_MAPS = ("elu_plus_one", "relu")


def _feature_map_and_derivative(name, k):
  """φ(k) and φ'(k)."""
  if name == "elu_plus_one":
    return jax.nn.elu(k) + 1, jnp.where(k > 0, 1.0, jnp.exp(k)).astype(k.dtype)
  return jax.nn.relu(k), (k > 0).astype(k.dtype)


@dataclasses.dataclass(frozen=True)
class LinearTransformer(ElementwiseCell):
  """Linear-Transformer layer with the additive fast-weight update.

  Attributes:
    hidden_size: d_v, the value size per head (the output has
      num_heads · hidden_size features).
    key_size: d_k, the key/query size per head (None: = hidden_size).
    num_heads: H.
    feature_map: "elu_plus_one" (default) or "relu".
  """

  hidden_size: int
  key_size: int = None
  num_heads: int = 1
  feature_map: str = "elu_plus_one"

  def __post_init__(self):
    super().__post_init__()
    if self.key_size is not None:
      check_positive_int("LinearTransformer", "key_size", self.key_size)
    check_positive_int("LinearTransformer", "num_heads", self.num_heads)
    check_choice("LinearTransformer", "feature_map", self.feature_map,
                 FEATURE_MAPS)

  @property
  def _key_size(self):
    return self.hidden_size if self.key_size is None else self.key_size

  def init(self, key, input_size, dtype=jnp.float32):
    """Parameters for inputs of size D = `input_size`; weights N(0, 1/D)."""
    check_positive_int("LinearTransformer.init", "input_size", input_size)
    h, dk, dv, d = self.num_heads, self._key_size, self.hidden_size, input_size
    keys = jax.random.split(key, 3)
    normal = lambda k, shape: jax.random.normal(k, shape, dtype) / d ** 0.5
    return {
        "recurrent": {"W_k": normal(keys[0], (h, dk, d)),
                      "W_v": normal(keys[1], (h, dv, d))},
        "readout": {"W_q": normal(keys[2], (h, dk, d))},
    }

  def input_size(self, params):
    return params["recurrent"]["W_k"].shape[2]

  def initial_hidden(self, params):
    return jnp.zeros((self.num_heads, self.hidden_size, self._key_size),
                     params["recurrent"]["W_k"].dtype)

  def _keys_and_values(self, p, x):
    k = jnp.einsum("hkd,d->hk", p["W_k"], x)
    v = jnp.einsum("hvd,d->hv", p["W_v"], x)
    return _feature_map_and_derivative(self.feature_map, k), v

  def transition(self, recurrent_params, hidden, inputs):
    (phi_k, _), v = self._keys_and_values(recurrent_params, inputs)
    return hidden + v[:, :, None] * phi_k[:, None, :]

  def zero_sensitivities(self, params):
    """P [H, d_k, D] (for W_v) and Q [H, d_v, d_k, D] (for W_k), zeros."""
    h, dk, dv = self.num_heads, self._key_size, self.hidden_size
    d, dtype = self.input_size(params), params["recurrent"]["W_k"].dtype
    return {"W_v": jnp.zeros((h, dk, d), dtype),
            "W_k": jnp.zeros((h, dv, dk, d), dtype)}

  def update_sensitivities(self, recurrent_params, hidden, inputs,
                           sensitivities):
    del hidden  # The Jacobian ∂W(t)/∂W(t-1) is the identity.
    s, x = sensitivities, inputs
    (phi_k, phi_k_slope), v = self._keys_and_values(recurrent_params, x)
    return {
        "W_v": s["W_v"] + phi_k[:, :, None] * x,
        "W_k": s["W_k"] + (v[:, :, None] * phi_k_slope[:, None, :])[..., None]
               * x,
    }

  def contract_sensitivities(self, hidden_cotangent, sensitivities):
    """dL/dW_v = G P, dL/dW_k[b, j] = Σ_a G_ab Q_abj (per head)."""
    g, s = hidden_cotangent, sensitivities
    return {"W_v": jnp.einsum("hab,hbj->haj", g, s["W_v"]),
            "W_k": jnp.einsum("hab,habj->hbj", g, s["W_k"])}

  def contract_sensitivities_batch(self, hidden_cotangent, sensitivities):
    """Σ_b over the batch axis B of `contract_sensitivities`: the batch
    becomes one more contracted axis of each einsum (full precision)."""
    g, s = hidden_cotangent, sensitivities
    einsum = functools.partial(jnp.einsum,
                               precision=jax.lax.Precision.HIGHEST)
    return {"W_v": einsum("zhab,zhbj->haj", g, s["W_v"]),
            "W_k": einsum("zhab,zhabj->hbj", g, s["W_k"])}

  def readout(self, readout_params, hidden, inputs):
    q = jnp.einsum("hkd,d->hk", readout_params["W_q"], inputs)
    phi_q, _ = _feature_map_and_derivative(self.feature_map, q)
    return jnp.einsum("hvk,hk->hv", hidden, phi_q).reshape(-1)
