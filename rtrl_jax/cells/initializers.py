r"""Forget-gate bias initialisation shared by the eLSTM and the LSTM.

Two schemes, chosen per cell by `forget_init`:

* "constant": the cell's own initial bias plus a constant `forget_bias`
  (σ(b) is the initial retention per step, so memory decays as σ(b)^t).
* "chrono" (Tallec & Ollivier, "Can recurrent neural networks warp time?",
  ICLR 2018): b_f = log u with u ~ U[1, T_max − 1] per unit, so that the
  initial characteristic forgetting times 1/(1 − σ(b_f)) ≈ 1 + u spread
  uniformly over [2, T_max] instead of all sitting at one time scale. The
  LSTM also sets its input-gate bias b_i = −b_f.
"""

import math

import jax
import jax.numpy as jnp

from rtrl_jax.checks import check_choice, check_number_in

FORGET_INITS = ("constant", "chrono")


def check_forget_init(owner, forget_init, chrono_t_max):
  """One-line ValueErrors for a bad scheme or T_max (must exceed 2)."""
  check_choice(owner, "forget_init", forget_init, FORGET_INITS)
  check_number_in(owner, "chrono_t_max", chrono_t_max, 2, math.inf,
                  high_open=True,
                  why=" (chrono draws u ~ U[1, T_max - 1])")


def chrono_bias(key, shape, t_max, dtype=jnp.float32):
  """b = log u, u ~ U[1, T_max − 1] element-wise (Tallec & Ollivier 2018)."""
  u = jax.random.uniform(key, shape, dtype, 1.0, t_max - 1.0)
  return jnp.log(u)
