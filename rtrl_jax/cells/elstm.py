r"""eLSTM: the element-wise LSTM of Irie et al. (ICLR 2024), with exact RTRL.

Equations (paper eqs. 5-7, with the biases of the official code); x ∈ R^D,
c ∈ R^N, ⊙ element-wise:

    z(t) = tanh(Z x(t) + w_z ⊙ c(t-1) + b_z)
    f(t) = σ(F x(t) + w_f ⊙ c(t-1) + b_f)
    c(t) = f(t) ⊙ c(t-1) + (1 - f(t)) ⊙ z(t)              (coupled input gate)
    o(t) = σ(O x(t) + W_o c(t) + b_o),   h(t) = o(t) ⊙ c(t)   (feed-forward)

Recurrent parameters θ_r = {Z, F ∈ R^{N×D}; w_z, w_f, b_z, b_f ∈ R^N}.
Read-out parameters θ_o = {O ∈ R^{N×D}, W_o ∈ R^{N×N}, b_o ∈ R^N}: they are not
in the recurrence, so they get ordinary backprop.

Sensitivity recursion (complete form, as in the official code; the paper's
printed eq. 8/11 omits the w_z ⊙ ẑ term, which makes gradients 8-26% wrong):

    ẑ(t) = (1 - f) ⊙ (1 - z²)                  ∂c/∂(z pre-activation)
    f̂(t) = (c(t-1) - z) ⊙ f ⊙ (1 - f)          ∂c/∂(f pre-activation)
    d(t) = f + w_z ⊙ ẑ + w_f ⊙ f̂               diagonal of ∂c(t)/∂c(t-1)

    Ẑ(t)   = d ⊙ Ẑ(t-1)   + ẑ ⊗ x              F̂(t)   = d ⊙ F̂(t-1)   + f̂ ⊗ x
    ŵ_z(t) = d ⊙ ŵ_z(t-1) + ẑ ⊙ c(t-1)          ŵ_f(t) = d ⊙ ŵ_f(t-1) + f̂ ⊙ c(t-1)
    b̂_z(t) = d ⊙ b̂_z(t-1) + ẑ                   b̂_f(t) = d ⊙ b̂_f(t-1) + f̂

where Ẑ_ij = ∂c_i/∂Z_ij (the only non-zero entries of ∂c/∂Z, because unit i
depends on row i only). Cost per example and step: space and time O(N·D)
(2·N·D + 4·N numbers), against O(N³) space and O(N⁴) time for a fully
recurrent network.

Reference: K. Irie, A. Gopalakrishnan, J. Schmidhuber, "Exploring the Promise
and Limits of Real-Time Recurrent Learning", ICLR 2024, Sec. 3.1.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp

from rtrl_jax.cells.base import ElementwiseCell
from rtrl_jax.checks import check_number_in, check_positive_int
from rtrl_jax.cells.initializers import check_forget_init, chrono_bias


@dataclasses.dataclass(frozen=True)
class ELSTM(ElementwiseCell):
  """eLSTM cell with hidden size N.

  Attributes:
    hidden_size: N.
    init_scale: std of the normal init of every recurrent parameter (0.1 in
      the paper's code).
    forget_bias: with forget_init="constant", added to the initial b_f
      (normal with std init_scale); > 0 starts with longer memory.
    forget_init: "constant" (b_f ~ N(forget_bias, init_scale²)) or "chrono"
      (b_f = log u, u ~ U[1, chrono_t_max − 1]; forget_bias is not used):
      rtrl_jax/cells/initializers.py.
    chrono_t_max: T_max of the chrono initialisation (> 2): the longest
      initial memory time scale, in steps.
  """

  hidden_size: int
  init_scale: float = 0.1
  forget_bias: float = 0.0
  forget_init: str = "constant"
  chrono_t_max: float = 100.0

  def __post_init__(self):
    super().__post_init__()
    check_number_in("ELSTM", "init_scale", self.init_scale, 0, math.inf,
                    high_open=True)
    check_number_in("ELSTM", "forget_bias", self.forget_bias, -math.inf,
                    math.inf, high_open=True)
    check_forget_init("ELSTM", self.forget_init, self.chrono_t_max)

  def init(self, key, input_size, dtype=jnp.float32):
    """Parameters for inputs of size D = `input_size`."""
    check_positive_int("ELSTM.init", "input_size", input_size)
    n, d = self.hidden_size, input_size
    keys = jax.random.split(key, 9)
    normal = lambda k, shape: self.init_scale * jax.random.normal(k, shape, dtype)
    # The read-out gate is a Linear over [x, c] with PyTorch's default init.
    bound = 1.0 / (n + d) ** 0.5
    uniform = lambda k, shape: jax.random.uniform(k, shape, dtype, -bound, bound)
    return {
        "recurrent": {
            "Z": normal(keys[0], (n, d)),
            "F": normal(keys[1], (n, d)),
            "w_z": normal(keys[2], (n,)),
            "w_f": normal(keys[3], (n,)),
            "b_z": normal(keys[4], (n,)),
            "b_f": (chrono_bias(keys[5], (n,), self.chrono_t_max, dtype)
                    if self.forget_init == "chrono" else
                    normal(keys[5], (n,))
                    + jnp.asarray(self.forget_bias, dtype)),
        },
        "readout": {
            "O": uniform(keys[6], (n, d)),
            "W_o": uniform(keys[7], (n, n)),
            "b_o": uniform(keys[8], (n,)),
        },
    }

  def input_size(self, params):
    return params["recurrent"]["Z"].shape[1]

  def initial_hidden(self, params):
    return jnp.zeros((self.hidden_size,), params["recurrent"]["Z"].dtype)

  def _gates(self, p, c_prev, x):
    # x Zᵀ, not Z x: the row form of `readout`, which keeps the batch axes
    # in front when the gates are batched with vmap (docs/BENCHMARKS.md,
    # "Short chunks for a narrow x(t)").
    z = jnp.tanh(x @ p["Z"].T + p["w_z"] * c_prev + p["b_z"])
    f = jax.nn.sigmoid(x @ p["F"].T + p["w_f"] * c_prev + p["b_f"])
    return z, f

  def transition(self, recurrent_params, hidden, inputs):
    z, f = self._gates(recurrent_params, hidden, inputs)
    return f * hidden + (1 - f) * z

  def sensitivity_factors(self, recurrent_params, hidden, inputs):
    """The recursion in factored form: S_k(t) = d ⊙ S_k(t-1) + a_k ⊗ x(t).

    Returns (d [N], {leaf k: (a_k [N], outer_k)}): outer_k True for Z and F
    (a_k ⊗ x(t), one row per unit), False for the vector leaves (S_k(t) =
    d ⊙ S_k(t-1) + a_k). `rtrl_jax.core` uses it to advance S over a whole
    segment in one pass (see `core._advance_in_one_pass`).
    """
    p, c_prev, x = recurrent_params, hidden, inputs
    z, f = self._gates(p, c_prev, x)
    z_hat = (1 - f) * (1 - z * z)
    f_hat = (c_prev - z) * f * (1 - f)
    decay = f + p["w_z"] * z_hat + p["w_f"] * f_hat
    return decay, {"Z": (z_hat, True), "F": (f_hat, True),
                   "w_z": (z_hat * c_prev, False),
                   "w_f": (f_hat * c_prev, False),
                   "b_z": (z_hat, False), "b_f": (f_hat, False)}

  def update_sensitivities(self, recurrent_params, hidden, inputs,
                           sensitivities):
    decay, terms = self.sensitivity_factors(recurrent_params, hidden, inputs)

    def update(s, term):
      a, outer = term
      if outer:
        return decay[:, None] * s + a[:, None] * inputs[None, :]
      return decay * s + a

    return {k: update(sensitivities[k], terms[k]) for k in sensitivities}

  def readout(self, readout_params, hidden, inputs):
    p = readout_params
    # x O^T rather than O x: batched over [T, B] after the scan (core's
    # `_cell_step`), the row form is one plain matrix product with the
    # batch axes in front; O x puts them last and costs a transpose.
    o = jax.nn.sigmoid(inputs @ p["O"].T + hidden @ p["W_o"].T + p["b_o"])
    return o * hidden
