r"""IndRNN: the independently recurrent network (Li et al., CVPR 2018), exact RTRL.

Equations; x ∈ R^D, h ∈ R^N, ⊙ element-wise, φ = tanh or ReLU:

    a(t) = W x(t) + u ⊙ h(t-1) + b
    h(t) = φ(a(t))                                   (the output is y(t) = h(t))

Recurrent parameters θ_r = {W ∈ R^{N×D}; u, b ∈ R^N}; no read-out parameters
(θ_o = {}): stack a layer on top for a read-out. Each unit sees only its own
past (the recurrent weight is the diagonal u), which is what SRU-style and
IndRNN-style cells have in common and what makes RTRL cheap.

Sensitivity recursion, with φ' = φ'(a(t)) and d(t) = φ' ⊙ u the diagonal of
∂h(t)/∂h(t-1):

    Ŵ(t) = d ⊙ Ŵ(t-1) + φ' ⊗ x(t)         Ŵ_ij = ∂h_i/∂W_ij  (N×D)
    û(t) = d ⊙ û(t-1) + φ' ⊙ h(t-1)
    b̂(t) = d ⊙ b̂(t-1) + φ'

Cost per example and step: space and time O(N·D) (N·D + 2·N numbers), the
size of θ_r.

Limits. |u_i| > 1 makes unit i unstable: with ReLU, h_i and its sensitivities
grow like |u_i|^t; with tanh, the unit saturates and φ' → 0, so its gradient
vanishes. The constructor therefore only initialises u in [0, u_init_max] with
u_init_max ≤ 1; training can still move u beyond 1 (clip it if needed).

Reference: S. Li, W. Li, C. Cook, C. Zhu, Y. Gao, "Independently Recurrent
Neural Network (IndRNN)", CVPR 2018; T. Lei et al., "Simple Recurrent Units
for Highly Parallelizable Recurrence", EMNLP 2018.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp

from rtrl_jax.cells.base import ElementwiseCell
from rtrl_jax.checks import check_choice, check_number_in, check_positive_int

ACTIVATIONS = ("tanh", "relu")


def _activation_and_derivative(name, a):
  """φ(a) and φ'(a) (ReLU'(0) = 0, as in jax.nn.relu's gradient)."""
  if name == "tanh":
    h = jnp.tanh(a)
    return h, 1 - h * h
  return jax.nn.relu(a), (a > 0).astype(a.dtype)


@dataclasses.dataclass(frozen=True)
class IndRNN(ElementwiseCell):
  """IndRNN cell with hidden size N.

  Attributes:
    hidden_size: N.
    activation: "tanh" (default) or "relu".
    u_init_max: u is initialised uniformly in [0, u_init_max]; must be in
      (0, 1] (|u| > 1 is unstable, see the module docstring).
    init_scale: W is initialised N(0, init_scale² / D); b starts at 0.
  """

  hidden_size: int
  activation: str = "tanh"
  u_init_max: float = 1.0
  init_scale: float = 1.0

  def __post_init__(self):
    super().__post_init__()
    check_choice("IndRNN", "activation", self.activation, ACTIVATIONS)
    check_number_in("IndRNN", "u_init_max", self.u_init_max, 0, 1,
                    why=" (|u| > 1 makes h(t) unstable)")
    check_number_in("IndRNN", "init_scale", self.init_scale, 0, math.inf,
                    high_open=True)

  def init(self, key, input_size, dtype=jnp.float32):
    """Parameters for inputs of size D = `input_size`."""
    check_positive_int("IndRNN.init", "input_size", input_size)
    n, d = self.hidden_size, input_size
    key_w, key_u = jax.random.split(key)
    return {
        "recurrent": {
            "W": (self.init_scale / d ** 0.5) * jax.random.normal(
                key_w, (n, d), dtype),
            "u": jax.random.uniform(key_u, (n,), dtype, 0.0, self.u_init_max),
            "b": jnp.zeros((n,), dtype),
        },
        "readout": {},
    }

  def input_size(self, params):
    return params["recurrent"]["W"].shape[1]

  def initial_hidden(self, params):
    return jnp.zeros((self.hidden_size,), params["recurrent"]["W"].dtype)

  def _preactivation(self, p, h_prev, x):
    return p["W"] @ x + p["u"] * h_prev + p["b"]

  def transition(self, recurrent_params, hidden, inputs):
    a = self._preactivation(recurrent_params, hidden, inputs)
    return _activation_and_derivative(self.activation, a)[0]

  def update_sensitivities(self, recurrent_params, hidden, inputs,
                           sensitivities):
    p, s, h_prev, x = recurrent_params, sensitivities, hidden, inputs
    a = self._preactivation(p, h_prev, x)
    _, slope = _activation_and_derivative(self.activation, a)
    decay = slope * p["u"]
    return {
        "W": decay[:, None] * s["W"] + slope[:, None] * x[None, :],
        "u": decay * s["u"] + slope * h_prev,
        "b": decay * s["b"] + slope,
    }

  def readout(self, readout_params, hidden, inputs):
    del readout_params, inputs
    return hidden
