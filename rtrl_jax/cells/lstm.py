r"""A standard (fully recurrent) LSTM in the cell protocol, for TBPTT baselines.

    [i, f, g, o] = [σ, σ, tanh, σ](W x(t) + U h(t-1) + b)
    c(t) = f ⊙ c(t-1) + i ⊙ g,     h(t) = o ⊙ tanh(c(t))

The recurrent state is (c, h). U is a full N×N matrix, so exact RTRL would need
O(N³) sensitivities per example: this cell is *not* in `rtrl_jax.CELLS` and
works with `bptt` only (`rtrl` raises). Reference: Hochreiter & Schmidhuber,
"Long Short-Term Memory", 1997 (with a forget gate, Gers et al. 2000).
"""

import dataclasses

import jax
import jax.numpy as jnp

from rtrl_jax.cells.base import Cell
from rtrl_jax.cells.initializers import check_forget_init, chrono_bias

_NO_RTRL = ("LSTM has full recurrence (O(N^3) sensitivities): use bptt/TBPTT, "
            "or a cell from rtrl_jax.CELLS for RTRL (initial_state(..., "
            "sensitivities=False) makes a state for bptt)")


@dataclasses.dataclass(frozen=True)
class LSTM(Cell):
  """LSTM with hidden size N; the output is h(t) (no separate read-out).

  Attributes:
    hidden_size: N.
    forget_bias: with forget_init="constant", the initial b_f (all other
      biases 0).
    forget_init: "constant" or "chrono" (b_f = log u, u ~ U[1, chrono_t_max
      − 1], and b_i = −b_f; forget_bias is not used):
      rtrl_jax/cells/initializers.py.
    chrono_t_max: T_max of the chrono initialisation (> 2).
  """

  hidden_size: int
  forget_bias: float = 1.0
  forget_init: str = "constant"
  chrono_t_max: float = 100.0

  def __post_init__(self):
    super().__post_init__()
    check_forget_init("LSTM", self.forget_init, self.chrono_t_max)

  def init(self, key, input_size, dtype=jnp.float32):
    n = self.hidden_size
    k_w, k_u = jax.random.split(key)
    # Glorot-uniform input weights, orthogonal recurrent weights.
    w = jax.nn.initializers.glorot_uniform()(k_w, (input_size, 4 * n), dtype).T
    u = jax.nn.initializers.orthogonal()(k_u, (4 * n, n), dtype)
    b = jnp.zeros((4 * n,), dtype)       # gates [i, f, g, o]
    if self.forget_init == "chrono":
      b_f = chrono_bias(jax.random.fold_in(key, 2), (n,), self.chrono_t_max,
                        dtype)
      b = b.at[:n].set(-b_f).at[n:2 * n].set(b_f)
    else:
      b = b.at[n:2 * n].set(self.forget_bias)
    return {"recurrent": {"W": w, "U": u, "b": b}, "readout": {}}

  def input_size(self, params):
    return params["recurrent"]["W"].shape[1]

  def initial_hidden(self, params):
    zeros = jnp.zeros((self.hidden_size,), params["recurrent"]["W"].dtype)
    return (zeros, zeros)

  def transition(self, recurrent_params, hidden, inputs):
    p, (c, h) = recurrent_params, hidden
    i, f, g, o = jnp.split(p["W"] @ inputs + p["U"] @ h + p["b"], 4)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    return c, jax.nn.sigmoid(o) * jnp.tanh(c)

  def update_sensitivities(self, recurrent_params, hidden, inputs,
                           sensitivities):
    raise NotImplementedError(_NO_RTRL)

  def zero_sensitivities(self, params):
    raise NotImplementedError(_NO_RTRL)

  def contract_sensitivities(self, hidden_cotangent, sensitivities):
    raise NotImplementedError(_NO_RTRL)

  def readout(self, readout_params, hidden, inputs):
    del readout_params, inputs
    return hidden[1]
