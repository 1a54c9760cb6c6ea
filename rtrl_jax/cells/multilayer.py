r"""Several recurrent layers: exact RTRL for two, and the practical approximation.

Stacking element-wise recurrent layers brings back full recurrence: the input
of layer 2 at time t is layer 1's output y¹(t), which depends on every past
h¹ through layer 1's recurrence, and θ¹ reaches h²(t) through all of them
(paper-notes §3). Exact RTRL must then carry the cross-layer sensitivity
∂h²/∂θ¹, which is dense over the units of layer 2: N₂ numbers per parameter of
layer 1.

`ExactTwoLayer` is that exact RTRL, as a cell of the usual protocol (so
`rtrl`, `bptt`, the oracle and the adapters all take it). Recursion, per
example and step, with h¹(t) = T¹(θ¹_r, h¹(t-1), x(t)), y¹(t) = R¹(θ¹_o, h¹(t),
x(t)), h²(t) = T²(θ²_r, h²(t-1), y¹(t)):

    S¹(t)   = the lower cell's own element-wise recursion       (∂h¹/∂θ¹_r)
    S²²(t)  = the upper cell's own recursion on inputs y¹(t)    (∂h²/∂θ²_r)
    d(t)    = diag ∂h²(t)/∂h²(t-1)                              (element-wise)
    A(t)    = ∂h²(t)/∂h¹(t) = ∂T²/∂y¹ · ∂R¹/∂h¹                 N₂ × N₁
    S²¹_r(t)[n, i, …] = d_n S²¹_r(t-1)[n, i, …] + A_ni S¹(t)[i, …]
    S²¹_o(t) = d ⊙ S²¹_o(t-1) + ∂h²(t)/∂θ¹_o                     (direct)

Both layer-1 sub-trees θ¹_r and θ¹_o are recurrent for the stack (θ¹_o shapes
layer 2's input). The gradient contraction with g¹ = dL/dh¹, g² = dL/dh² is

    dL/dθ¹_r = g¹ ⊙ S¹ + Σ_n g²_n S²¹_r[n]     dL/dθ¹_o = Σ_n g²_n S²¹_o[n]
    dL/dθ²_r = g² ⊙ S²².

Cost per example and step: S²¹ holds N₂·(|θ¹_r| + |θ¹_o|) numbers; for two
eLSTM layers of width N on inputs of size D that is N·(3ND + N² + 5N)
(|θ¹_r| = 2ND + 4N, |θ¹_o| = ND + N² + N) = O(N²·D + N³) space, against
O(N·D) for one layer. Time per step is the same
order: the S²¹ update is element-wise over S²¹, and A(t), ∂h²/∂θ¹_o come from
one reverse-mode Jacobian (N₂ vector-Jacobian products, each O(N·D + N²)).
Usable at small N only.

`stacked_rtrl` is the practical approximation for any depth: each layer runs
its own `rtrl`, the next layer takes the previous one's outputs, and errors
flow between layers only within the segment (autodiff through the stacked
segment); the cross-layer past carried by S²¹ is dropped. The top layer's
parameters still get their exact gradient. Memory stays O(Σ_l |θ^l_r|) per
example. `LayerStack` wraps both `stacked_rtrl` and `stacked_bptt` as a runner
for `rtrl_jax.oracle` and `rtrl_jax.diagnostics`.
"""

import dataclasses
from typing import Any, Tuple

import jax
import jax.numpy as jnp

from rtrl_jax.cells.base import Cell
from rtrl_jax.core import bptt, rtrl
from rtrl_jax.cells.elstm import ELSTM
from rtrl_jax.cells.indrnn import IndRNN

# Cells whose hidden is one vector [N], whose ∂h(t)/∂h(t-1) is diagonal and
# whose sensitivities are shaped like θ_r: what `ExactTwoLayer` relies on.
DIAGONAL_CELLS = (ELSTM, IndRNN)


def _output_size(cell, params):
  """Size of cell.readout's output for one example."""
  d = cell.input_size(params)
  shape = jax.eval_shape(
      lambda p: cell.readout(p["readout"], cell.initial_hidden(p),
                             jnp.zeros((d,), jax.tree.leaves(p)[0].dtype)),
      params).shape
  return shape[0]


def _per_unit(column, leaf):
  """column[..., i] broadcast against a sensitivity leaf [..., N, ...]."""
  extra = leaf.ndim - column.ndim
  return column.reshape(column.shape + (1,) * extra)


@dataclasses.dataclass(frozen=True)
class ExactTwoLayer(Cell):
  """Exact RTRL through two stacked element-wise layers (see module docstring).

  Params: {"recurrent": {"lower": lower's full params {"recurrent",
  "readout"}, "upper": upper's θ_r}, "readout": upper's θ_o}. The output is
  the upper cell's read-out. hidden = {"h1": h¹, "h2": h², "y1": y¹(t)}; y¹
  is kept only so that the read-out can see it (the transition never reads
  the old y¹, so it needs no sensitivity).

  Attributes:
    lower, upper: cells from DIAGONAL_CELLS (eLSTM, IndRNN).
    hidden_size: set from `upper` (not a constructor argument).
  """

  lower: Any = None
  upper: Any = None
  hidden_size: int = dataclasses.field(init=False, default=None)

  def __post_init__(self):
    for name in ("lower", "upper"):
      layer = getattr(self, name)
      if not isinstance(layer, DIAGONAL_CELLS):
        raise ValueError(
            f"ExactTwoLayer: {name} must be one of "
            f"{[c.__name__ for c in DIAGONAL_CELLS]} (vector state with a "
            f"diagonal recurrence), got {layer!r}")
    object.__setattr__(self, "hidden_size", self.upper.hidden_size)
    super().__post_init__()

  def init(self, key, input_size, dtype=jnp.float32):
    """Both layers' parameters for inputs of size D = `input_size`."""
    key_lower, key_upper = jax.random.split(key)
    lower = self.lower.init(key_lower, input_size, dtype)
    upper = self.upper.init(key_upper, _output_size(self.lower, lower), dtype)
    return {"recurrent": {"lower": lower, "upper": upper["recurrent"]},
            "readout": upper["readout"]}

  def _upper_params(self, params):
    return {"recurrent": params["recurrent"]["upper"],
            "readout": params["readout"]}

  def input_size(self, params):
    return self.lower.input_size(params["recurrent"]["lower"])

  def initial_hidden(self, params):
    lower = params["recurrent"]["lower"]
    h1 = self.lower.initial_hidden(lower)
    return {"h1": h1,
            "h2": self.upper.initial_hidden(self._upper_params(params)),
            "y1": jnp.zeros((_output_size(self.lower, lower),), h1.dtype)}

  def zero_sensitivities(self, params):
    lower = params["recurrent"]["lower"]
    n2 = self.upper.hidden_size
    cross = lambda leaf: jnp.zeros((n2,) + leaf.shape, leaf.dtype)
    return {
        "h1": self.lower.zero_sensitivities(lower),
        "h2": {"lower": jax.tree.map(cross, lower),
               "upper": self.upper.zero_sensitivities(
                   self._upper_params(params))},
    }

  def _lower_step(self, lower, h1_prev, x):
    h1 = self.lower.transition(lower["recurrent"], h1_prev, x)
    return h1, self.lower.readout(lower["readout"], h1, x)

  def transition(self, recurrent_params, hidden, inputs):
    h1, y1 = self._lower_step(recurrent_params["lower"], hidden["h1"], inputs)
    h2 = self.upper.transition(recurrent_params["upper"], hidden["h2"], y1)
    return {"h1": h1, "h2": h2, "y1": y1}

  def update_sensitivities(self, recurrent_params, hidden, inputs,
                           sensitivities):
    lower, upper = recurrent_params["lower"], recurrent_params["upper"]
    s, x, h2_prev = sensitivities, inputs, hidden["h2"]
    h1, y1 = self._lower_step(lower, hidden["h1"], x)
    s1 = self.lower.update_sensitivities(lower["recurrent"], hidden["h1"], x,
                                         s["h1"])
    s22 = self.upper.update_sensitivities(upper, h2_prev, y1, s["h2"]["upper"])
    # d(t): a diagonal Jacobian times the ones vector is its diagonal.
    _, decay = jax.jvp(lambda h: self.upper.transition(upper, h, y1),
                       (h2_prev,), (jnp.ones_like(h2_prev),))

    def upper_of_lower(h1, lower_readout):
      y1 = self.lower.readout(lower_readout, h1, x)
      return self.upper.transition(upper, h2_prev, y1)

    dh2_dh1, dh2_dreadout = jax.jacrev(upper_of_lower, argnums=(0, 1))(
        h1, lower["readout"])
    cross = s["h2"]["lower"]
    cross_recurrent = jax.tree.map(
        lambda c, s1_leaf: (_per_unit(decay, c) * c
                            + _per_unit(dh2_dh1, s1_leaf[None]) * s1_leaf[None]),
        cross["recurrent"], s1)
    cross_readout = jax.tree.map(
        lambda c, direct: _per_unit(decay, c) * c + direct,
        cross["readout"], dh2_dreadout)
    return {"h1": s1,
            "h2": {"lower": {"recurrent": cross_recurrent,
                             "readout": cross_readout},
                   "upper": s22}}

  def contract_sensitivities(self, hidden_cotangent, sensitivities):
    return self._contract(hidden_cotangent, sensitivities, batched=False)

  def contract_sensitivities_batch(self, hidden_cotangent, sensitivities):
    """`contract_sensitivities` summed over the batch axis, vectorised: each
    layer's own batched contraction, and Σ_b Σ_n g²_bn S²¹_b[n] as one
    contraction over (b, n) per leaf."""
    return self._contract(hidden_cotangent, sensitivities, batched=True)

  def _contract(self, hidden_cotangent, sensitivities, batched):
    """One example (batched=False) or the sum over the batch axis."""
    g1, g2, s = hidden_cotangent["h1"], hidden_cotangent["h2"], sensitivities
    if batched:
      across = lambda c: jnp.tensordot(g2, c, axes=2,
                                       precision=jax.lax.Precision.HIGHEST)
      own = self.lower.contract_sensitivities_batch(g1, s["h1"])
      upper = self.upper.contract_sensitivities_batch(g2, s["h2"]["upper"])
    else:
      across = lambda c: jnp.tensordot(g2, c, axes=1)
      own = self.lower.contract_sensitivities(g1, s["h1"])
      upper = self.upper.contract_sensitivities(g2, s["h2"]["upper"])
    cross = s["h2"]["lower"]
    return {
        "lower": {
            "recurrent": jax.tree.map(lambda o, c: o + across(c), own,
                                      cross["recurrent"]),
            "readout": jax.tree.map(across, cross["readout"]),
        },
        "upper": upper,
    }

  def readout(self, readout_params, hidden, inputs):
    del inputs  # The upper layer's input is y¹(t), kept in the state.
    return self.upper.readout(readout_params, hidden["h2"], hidden["y1"])


def stacked_rtrl(cells, params, states, inputs, resets):
  """Layer-wise RTRL through a stack: layer l+1 runs on layer l's outputs.

  Args:
    cells: sequence of cells, bottom first.
    params: sequence of their params (`LayerStack.init`).
    states: sequence of their `RecurrentState`s, with sensitivities.
    inputs, resets: [T, B, D], [T, B] for the bottom layer.

  Returns:
    (top outputs [T, B, H], tuple of new states). Gradients: each layer's θ_r
    gets its own RTRL gradient plus backprop from the layers above within the
    segment; the cross-layer past is dropped (exact for the top layer only).
  """
  return _stack(rtrl, cells, params, states, inputs, resets)


def stacked_bptt(cells, params, states, inputs, resets):
  """`bptt` through every layer of the stack (TBPTT or BPTT, as for `bptt`)."""
  return _stack(bptt, cells, params, states, inputs, resets)


def _stack(run, cells, params, states, inputs, resets):
  if not (len(cells) == len(params) == len(states)) or not cells:
    raise ValueError(
        f"stack: need as many params and states as cells (≥ 1), got "
        f"{len(cells)} cells, {len(params)} params, {len(states)} states")
  new_states = []
  for cell, layer_params, state in zip(cells, params, states):
    inputs, state = run(cell, layer_params, state, inputs, resets)
    new_states.append(state)
  return inputs, tuple(new_states)


@dataclasses.dataclass(frozen=True)
class LayerStack:
  """A stack of cells run layer-wise; a runner for the oracle and diagnostics.

  `stack(method, params, states, inputs, resets)` runs `stacked_rtrl`
  (method "rtrl") or `stacked_bptt` (method "bptt").

  Attributes:
    cells: tuple of cells, bottom first.
  """

  cells: Tuple[Any, ...]

  def __post_init__(self):
    if not isinstance(self.cells, tuple) or not self.cells:
      raise ValueError(
          f"LayerStack: cells must be a non-empty tuple of cells, got "
          f"{self.cells!r}")

  def init(self, key, input_size, dtype=jnp.float32):
    """Params of every layer, each layer sized to the one below's outputs."""
    params = []
    for cell, key in zip(self.cells, jax.random.split(key, len(self.cells))):
      params.append(cell.init(key, input_size, dtype))
      input_size = _output_size(cell, params[-1])
    return tuple(params)

  def initial_state(self, params, batch_size, sensitivities=True):
    return tuple(cell.initial_state(p, batch_size, sensitivities)
                 for cell, p in zip(self.cells, params))

  def __call__(self, method, params, states, inputs, resets):
    if method == "rtrl":
      return stacked_rtrl(self.cells, params, states, inputs, resets)
    if method == "bptt":
      return stacked_bptt(self.cells, params, states, inputs, resets)
    raise ValueError(f"LayerStack: method must be 'rtrl' or 'bptt', got "
                     f"{method!r}")
