r"""Quasi-RNN with f-pooling and a width-k input window (Bradbury et al., 2017).

Equations; x ∈ R^D, c ∈ R^N, k = window, ⊙ element-wise. The gates see the
last k inputs, stacked into X(t) = [x(t-k+1); ...; x(t)] ∈ R^{kD} (a causal
convolution of width k); inputs before an episode start are zeros:

    z(t) = tanh(W_z X(t) + b_z)
    f(t) = σ(W_f X(t) + b_f)
    c(t) = f(t) ⊙ c(t-1) + (1 - f(t)) ⊙ z(t)            (f-pooling)
    o(t) = σ(W_o X(t) + b_o),   y(t) = o(t) ⊙ c(t)        (output gate)

Recurrent parameters θ_r = {W_z, W_f ∈ R^{N×kD}; b_z, b_f ∈ R^N}; read-out
parameters θ_o = {W_o ∈ R^{N×kD}, b_o ∈ R^N}. Column block j of a weight
(columns j·D .. (j+1)·D - 1) multiplies x(t-k+1+j).

The window is part of the recurrent state: hidden = {"c": c(t), "window":
X(t) as [k, D]}, so a reset zeroes the remembered inputs together with c and
the window carries across segments. The window does not depend on θ, so only
c has sensitivities (shaped like θ_r).

Sensitivity recursion. The gates see inputs only, so ∂c(t)/∂c(t-1) = diag(f);
the sensitivities still decay by f (they are not just the current step's
term):

    ẑ(t) = (1 - f) ⊙ (1 - z²)            ∂c/∂(z pre-activation)
    f̂(t) = (c(t-1) - z) ⊙ f ⊙ (1 - f)    ∂c/∂(f pre-activation)

    Ŵ_z(t) = f ⊙ Ŵ_z(t-1) + ẑ ⊗ X(t)     Ŵ_f(t) = f ⊙ Ŵ_f(t-1) + f̂ ⊗ X(t)
    b̂_z(t) = f ⊙ b̂_z(t-1) + ẑ            b̂_f(t) = f ⊙ b̂_f(t-1) + f̂

Cost per example and step: space and time O(N·k·D) (2·N·k·D + 2·N numbers of
sensitivities, plus k·D for the window).

Limits: z and f saturate for large pre-activations (init keeps them O(1)).
Reference: J. Bradbury, S. Merity, C. Xiong, R. Socher, "Quasi-Recurrent
Neural Networks", ICLR 2017.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp

from rtrl_jax.cells.base import ElementwiseCell
from rtrl_jax.checks import check_number_in, check_positive_int


@dataclasses.dataclass(frozen=True)
class QRNN(ElementwiseCell):
  """Quasi-RNN (f-pooling) cell with hidden size N and input window k.

  Attributes:
    hidden_size: N.
    window: k ≥ 1, the number of inputs each gate sees (k = 1: current input).
    init_scale: weights are initialised N(0, init_scale² / (k·D)).
    forget_bias: initial b_f; > 0 starts with longer memory.
  """

  hidden_size: int
  window: int = 2
  init_scale: float = 1.0
  forget_bias: float = 0.0

  def __post_init__(self):
    super().__post_init__()
    check_positive_int("QRNN", "window", self.window)
    check_number_in("QRNN", "init_scale", self.init_scale, 0, math.inf,
                    high_open=True)
    check_number_in("QRNN", "forget_bias", self.forget_bias, -math.inf,
                    math.inf, high_open=True)

  def init(self, key, input_size, dtype=jnp.float32):
    """Parameters for inputs of size D = `input_size`."""
    check_positive_int("QRNN.init", "input_size", input_size)
    n, width = self.hidden_size, self.window * input_size
    keys = jax.random.split(key, 3)
    normal = lambda k: (self.init_scale / width ** 0.5) * jax.random.normal(
        k, (n, width), dtype)
    return {
        "recurrent": {
            "W_z": normal(keys[0]),
            "W_f": normal(keys[1]),
            "b_z": jnp.zeros((n,), dtype),
            "b_f": jnp.full((n,), self.forget_bias, dtype),
        },
        "readout": {
            "W_o": normal(keys[2]),
            "b_o": jnp.zeros((n,), dtype),
        },
    }

  def input_size(self, params):
    return params["recurrent"]["W_z"].shape[1] // self.window

  def initial_hidden(self, params):
    dtype = params["recurrent"]["W_z"].dtype
    return {"c": jnp.zeros((self.hidden_size,), dtype),
            "window": jnp.zeros((self.window, self.input_size(params)), dtype)}

  def _stacked_inputs(self, hidden, x):
    """X(t) as [k, D]: drop the oldest remembered input, append x(t)."""
    return jnp.concatenate([hidden["window"][1:], x[None, :]], axis=0)

  def _gates(self, p, stacked):
    flat = stacked.reshape(-1)
    z = jnp.tanh(p["W_z"] @ flat + p["b_z"])
    f = jax.nn.sigmoid(p["W_f"] @ flat + p["b_f"])
    return z, f

  def transition(self, recurrent_params, hidden, inputs):
    stacked = self._stacked_inputs(hidden, inputs)
    z, f = self._gates(recurrent_params, stacked)
    return {"c": f * hidden["c"] + (1 - f) * z, "window": stacked}

  def update_sensitivities(self, recurrent_params, hidden, inputs,
                           sensitivities):
    p, s, c_prev = recurrent_params, sensitivities, hidden["c"]
    stacked = self._stacked_inputs(hidden, inputs)
    z, f = self._gates(p, stacked)
    z_hat = (1 - f) * (1 - z * z)
    f_hat = (c_prev - z) * f * (1 - f)
    flat = stacked.reshape(-1)
    return {
        "W_z": f[:, None] * s["W_z"] + z_hat[:, None] * flat[None, :],
        "W_f": f[:, None] * s["W_f"] + f_hat[:, None] * flat[None, :],
        "b_z": f * s["b_z"] + z_hat,
        "b_f": f * s["b_f"] + f_hat,
    }

  def contract_sensitivities(self, hidden_cotangent, sensitivities):
    """dL/dθ_r = (dL/dc)ᵀ dc/dθ_r; the window has no sensitivity."""
    return super().contract_sensitivities(hidden_cotangent["c"], sensitivities)

  def readout(self, readout_params, hidden, inputs):
    del inputs  # x(t) is the newest row of the window.
    p = readout_params
    # Row form (x W^T, not W x): see `ELSTM.readout`.
    o = jax.nn.sigmoid(hidden["window"].reshape(-1) @ p["W_o"].T + p["b_o"])
    return o * hidden["c"]
