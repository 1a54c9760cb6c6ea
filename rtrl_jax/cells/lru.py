r"""Real-valued diagonal linear recurrent unit (LRU / RTU family), exact RTRL.

A diagonal complex linear recurrence, written with real 2×2 rotation blocks
so that no complex dtype is needed. Unit i holds a pair (c_i^re, c_i^im), i.e.
the complex number c_i = c_i^re + i·c_i^im. With x ∈ R^D:

    λ = r ⊙ e^{iθ},   r = exp(-exp(ν))  ∈ (0, 1)     (stable for every ν)
    c(t) = λ ⊙ c(t-1) + (B_re + i·B_im) x(t)

that is, for each unit, a rotation by θ_i and a contraction by r_i:

    [c^re(t)]   [r cos θ   -r sin θ] [c^re(t-1)]   [B_re x(t)]
    [c^im(t)] = [r sin θ    r cos θ] [c^im(t-1)] + [B_im x(t)]

followed by a non-linear read-out of the real and imaginary parts:

    y(t) = tanh(C_re c^re(t) + C_im c^im(t) + E x(t) + b_y)

Recurrent parameters θ_r = {ν, θ ∈ R^N; B_re, B_im ∈ R^{N×D}}; read-out
parameters θ_o = {C_re, C_im ∈ R^{N×N}, E ∈ R^{N×D}, b_y ∈ R^N}. hidden =
{"re": c^re, "im": c^im}.

Sensitivities (complex, one per unit and parameter entry; stored as re/im
pairs), with ∂λ/∂ν = -exp(ν) λ and ∂λ/∂θ = iλ:

    S_B(t) = λ ⊙ S_B(t-1) + 1 ⊗ x(t)        S_B[i, j] = ∂c_i/∂B_re[i, j]
    S_ν(t) = λ ⊙ S_ν(t-1) - exp(ν) ⊙ λ ⊙ c(t-1)
    S_θ(t) = λ ⊙ S_θ(t-1) + i λ ⊙ c(t-1)

∂c_i/∂B_im[i, j] = i·S_B[i, j]: it obeys the same linear recursion with input
i·x(t) and the same zero start and resets, so it is not stored. The gradient
contraction with g = dL/dc (g_re, g_im) is, per unit,

    dL/dB_re = g_re S_B^re + g_im S_B^im      dL/dB_im = -g_re S_B^im + g_im S_B^re
    dL/dν    = g_re S_ν^re + g_im S_ν^im      (same for θ)

Cost per example and step: space and time O(N·D) (2·N·D + 4·N numbers, about
|θ_r| = 2·N·D + 2·N rather than twice it, thanks to S_{B_im} = i·S_B).

Limits: |λ| = r < 1 always, so the state and the sensitivities stay bounded
for bounded inputs; as r → 1 (ν → -∞) the sensitivities S_ν, S_θ grow like
1/(1-r)², so keep r_max well below 1 for long episodes.

References: A. Orvieto et al., "Resurrecting Recurrent Neural Networks for
Long Sequences", ICML 2023 (LRU); E. Elelimy, A. White, M. Bowling, M. White,
"Real-Time Recurrent Learning using Trace Units in Reinforcement Learning",
NeurIPS 2024 (RTU).
"""

import dataclasses
import math

import jax
import jax.numpy as jnp

from rtrl_jax.cells.base import ElementwiseCell
from rtrl_jax.checks import check_number_in, check_positive_int


def _complex_multiply(a_re, a_im, b_re, b_im):
  """(a_re + i a_im)(b_re + i b_im) as (re, im)."""
  return a_re * b_re - a_im * b_im, a_re * b_im + a_im * b_re


@dataclasses.dataclass(frozen=True)
class DiagonalLRU(ElementwiseCell):
  """Real-valued diagonal LRU/RTU with N complex units (2·N real numbers).

  Attributes:
    hidden_size: N (complex units; the state has 2·N real numbers and the
      read-out N outputs).
    r_min, r_max: the moduli r = exp(-exp(ν)) start uniform in
      [r_min, r_max], 0 < r_min ≤ r_max < 1.
    max_phase: the phases θ start uniform in [0, max_phase], 0 < max_phase ≤ 2π.
  """

  hidden_size: int
  r_min: float = 0.5
  r_max: float = 0.95
  max_phase: float = math.pi / 4

  def __post_init__(self):
    super().__post_init__()
    check_number_in("DiagonalLRU", "r_min", self.r_min, 0, 1, high_open=True)
    check_number_in("DiagonalLRU", "r_max", self.r_max, 0, 1, high_open=True,
                    why=" (r = 1 is not stable)")
    if self.r_min > self.r_max:
      raise ValueError(
          f"DiagonalLRU: r_min must be ≤ r_max, got r_min={self.r_min!r} > "
          f"r_max={self.r_max!r}")
    check_number_in("DiagonalLRU", "max_phase", self.max_phase, 0,
                    2 * math.pi)

  def init(self, key, input_size, dtype=jnp.float32):
    """Parameters for inputs of size D = `input_size`.

    B is scaled by sqrt(1 - r²) so that the state has roughly unit variance
    at init for unit-variance inputs (the LRU normalisation, folded into B).
    """
    check_positive_int("DiagonalLRU.init", "input_size", input_size)
    n, d = self.hidden_size, input_size
    keys = jax.random.split(key, 7)
    r = jax.random.uniform(keys[0], (n,), dtype, self.r_min, self.r_max)
    theta = jax.random.uniform(keys[1], (n,), dtype, 0.0, self.max_phase)
    input_scale = jnp.sqrt((1 - r * r) / (2 * d))[:, None]
    normal = lambda k, shape, std: std * jax.random.normal(k, shape, dtype)
    return {
        "recurrent": {
            "nu": jnp.log(-jnp.log(r)),
            "theta": theta,
            "B_re": normal(keys[2], (n, d), input_scale),
            "B_im": normal(keys[3], (n, d), input_scale),
        },
        "readout": {
            "C_re": normal(keys[4], (n, n), (1 / n) ** 0.5),
            "C_im": normal(keys[5], (n, n), (1 / n) ** 0.5),
            "E": normal(keys[6], (n, d), (1 / d) ** 0.5),
            "b_y": jnp.zeros((n,), dtype),
        },
    }

  def input_size(self, params):
    return params["recurrent"]["B_re"].shape[1]

  def initial_hidden(self, params):
    zeros = jnp.zeros((self.hidden_size,), params["recurrent"]["B_re"].dtype)
    return {"re": zeros, "im": zeros}

  @staticmethod
  def _eigenvalues(p):
    """λ = exp(-exp(ν) + iθ) as (re, im)."""
    r = jnp.exp(-jnp.exp(p["nu"]))
    return r * jnp.cos(p["theta"]), r * jnp.sin(p["theta"])

  def transition(self, recurrent_params, hidden, inputs):
    p = recurrent_params
    lam_re, lam_im = self._eigenvalues(p)
    re, im = _complex_multiply(lam_re, lam_im, hidden["re"], hidden["im"])
    return {"re": re + p["B_re"] @ inputs, "im": im + p["B_im"] @ inputs}

  def zero_sensitivities(self, params):
    """S_B as re/im pairs [N, D]; S_ν, S_θ as re/im pairs [N]."""
    p = params["recurrent"]
    pair = lambda leaf: {"re": jnp.zeros_like(leaf), "im": jnp.zeros_like(leaf)}
    return {"B": pair(p["B_re"]), "nu": pair(p["nu"]),
            "theta": pair(p["theta"])}

  def update_sensitivities(self, recurrent_params, hidden, inputs,
                           sensitivities):
    p, s, x = recurrent_params, sensitivities, inputs
    lam_re, lam_im = self._eigenvalues(p)
    # λ ⊙ c(t-1): the common factor of the ν and θ terms.
    lc_re, lc_im = _complex_multiply(lam_re, lam_im, hidden["re"], hidden["im"])
    rate = jnp.exp(p["nu"])

    def decay(pair, lam_re, lam_im):
      return _complex_multiply(lam_re, lam_im, pair["re"], pair["im"])

    b_re, b_im = decay(s["B"], lam_re[:, None], lam_im[:, None])
    nu_re, nu_im = decay(s["nu"], lam_re, lam_im)
    theta_re, theta_im = decay(s["theta"], lam_re, lam_im)
    return {
        "B": {"re": b_re + x[None, :], "im": b_im},
        "nu": {"re": nu_re - rate * lc_re, "im": nu_im - rate * lc_im},
        "theta": {"re": theta_re - lc_im, "im": theta_im + lc_re},
    }

  def contract_sensitivities(self, hidden_cotangent, sensitivities):
    """dL/dθ_r from g = dL/dc (re/im) and the complex sensitivities."""
    g_re, g_im, s = hidden_cotangent["re"], hidden_cotangent["im"], sensitivities
    real_part = lambda pair, g_re, g_im: g_re * pair["re"] + g_im * pair["im"]
    col = lambda v: v[:, None]
    return {
        "nu": real_part(s["nu"], g_re, g_im),
        "theta": real_part(s["theta"], g_re, g_im),
        "B_re": real_part(s["B"], col(g_re), col(g_im)),
        # ∂c/∂B_im = i·S_B = -S_B^im + i·S_B^re.
        "B_im": col(g_im) * s["B"]["re"] - col(g_re) * s["B"]["im"],
    }

  def readout(self, readout_params, hidden, inputs):
    p = readout_params
    # Row form (h C^T, not C h): see `ELSTM.readout`.
    return jnp.tanh(hidden["re"] @ p["C_re"].T + hidden["im"] @ p["C_im"].T
                    + inputs @ p["E"].T + p["b_y"])
