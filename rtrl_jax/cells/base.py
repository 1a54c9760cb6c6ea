"""The recurrent-cell protocol shared by every cell with exact RTRL.

A cell is a small immutable (hashable) object that holds hyper-parameters only.
Its methods are pure functions on *single examples*; the drivers in
`rtrl_jax.core` batch them with `jax.vmap` and run them over time with
`jax.lax.scan`.

Parameters are a dict with two sub-trees:

  params = {"recurrent": θ_r, "readout": θ_o}

* θ_r takes part in the recurrence h(t) = transition(θ_r, h(t-1), x(t)).
  It is the part that RTRL differentiates with forward sensitivities
  S(t) = dh(t)/dθ_r, carried in the state.
* θ_o only maps the current state to the output, y(t) = readout(θ_o, h(t), x(t)),
  so it gets ordinary back-propagation.

Sensitivities mirror θ_r leaf by leaf. For the element-wise cells of this
library a leaf of shape [N, ...] (leading axis = hidden unit) has a sensitivity
of the same shape: S[i, ...] = dh_i/dθ[i, ...], because unit i depends on no
other unit's parameters. That is what keeps RTRL at O(parameter size) per
example instead of O(N x P).
"""

import dataclasses
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp

Array = jax.Array
PyTree = Any


class RecurrentState(NamedTuple):
  """What a recurrent layer carries from one segment to the next.

  Attributes:
    hidden: the recurrent state h, a pytree whose leaves are [B, ...]
      (for eLSTM the cell state c, [B, N]).
    sensitivities: dh/dθ_r as a pytree shaped like params["recurrent"] with a
      leading batch axis, or None for a state that is only used with `bptt`.
  """
  hidden: PyTree
  sensitivities: Optional[PyTree]


@dataclasses.dataclass(frozen=True)
class Cell:
  """The protocol every cell follows, whatever the shape of its sensitivities.

  Subclasses implement `init`, `initial_hidden`, `transition`,
  `update_sensitivities`, `zero_sensitivities`, `contract_sensitivities`,
  `readout` and `input_size`. Element-wise cells derive from
  `ElementwiseCell`, which implements the two sensitivity methods for
  sensitivities shaped like θ_r; `ExactTwoLayer` (cross-layer sensitivities)
  and `LSTM` (no RTRL at all) derive from `Cell` directly.
  """

  hidden_size: int

  def __post_init__(self):
    if (not isinstance(self.hidden_size, int) or isinstance(self.hidden_size, bool)
        or self.hidden_size <= 0):
      raise ValueError(
          f"{type(self).__name__}: hidden_size must be a positive int, got "
          f"{self.hidden_size!r}")

  # ---- to implement -------------------------------------------------------
  def init(self, key: Array, input_size: int, dtype=jnp.float32) -> PyTree:
    raise NotImplementedError

  def initial_hidden(self, params: PyTree) -> PyTree:
    """The reset value of h for one example (zeros)."""
    raise NotImplementedError

  def transition(self, recurrent_params: PyTree, hidden: PyTree,
                 inputs: Array) -> PyTree:
    """h(t) = transition(θ_r, h(t-1), x(t)) for one example."""
    raise NotImplementedError

  def update_sensitivities(self, recurrent_params: PyTree, hidden: PyTree,
                           inputs: Array, sensitivities: PyTree) -> PyTree:
    """S(t) = dh(t)/dh(t-1) S(t-1) + ∂h(t)/∂θ_r for one example, closed form."""
    raise NotImplementedError

  def readout(self, readout_params: PyTree, hidden: PyTree,
              inputs: Array) -> Array:
    """y(t) = readout(θ_o, h(t), x(t)) for one example."""
    raise NotImplementedError

  def input_size(self, params: PyTree) -> int:
    raise NotImplementedError

  def zero_sensitivities(self, params: PyTree) -> PyTree:
    """Sensitivities S = dh/dθ_r of one example at h = initial (zeros)."""
    raise NotImplementedError

  def contract_sensitivities(self, hidden_cotangent: PyTree,
                             sensitivities: PyTree) -> PyTree:
    """dL/dθ_r = (dL/dh)ᵀ dh/dθ_r for one example."""
    raise NotImplementedError

  # ---- shared by every cell -----------------------------------------------

  def contract_sensitivities_batch(self, hidden_cotangent: PyTree,
                                   sensitivities: PyTree) -> PyTree:
    """Σ_b dL/dθ_r of example b, vectorised: Σ_b contract(λ_b, S_b).

    Leaves carry a leading batch axis B. The default is
    `contract_sensitivities` vmapped over B and summed over it; for the
    element-wise default that is Σ_b λ_b[i] · S_b[i, ...], one multiply fused
    into one reduction over B per leaf (S read once, exact in the leaf's
    dtype: no matrix unit, so no reduced-precision passes on TPU). Cells whose
    per-example contraction is a matrix product override this with one
    batched einsum, so no B × |θ_r| product is materialised. Used by
    `rtrl_jax.core` off CPU; on CPU a loop over B is faster (see there).
    """
    per_example = jax.vmap(self.contract_sensitivities)(hidden_cotangent,
                                                        sensitivities)
    return jax.tree.map(lambda leaf: leaf.sum(0), per_example)

  def initial_state(self, params: PyTree, batch_size: int,
                    sensitivities: bool = True) -> RecurrentState:
    """Zero state for `batch_size` examples.

    Args:
      params: the cell's parameters (for shapes and dtype).
      batch_size: B.
      sensitivities: False gives a state without sensitivities, which is all
        `bptt` needs and saves the O(B x |θ_r|) memory.
    """
    if (not isinstance(batch_size, int) or isinstance(batch_size, bool)
        or batch_size <= 0):
      raise ValueError(
          f"initial_state: batch_size must be a positive int, got {batch_size!r}")
    batch = lambda leaf: jnp.broadcast_to(leaf, (batch_size,) + leaf.shape)
    hidden = jax.tree.map(batch, self.initial_hidden(params))
    sens = (jax.tree.map(batch, self.zero_sensitivities(params))
            if sensitivities else None)
    return RecurrentState(hidden=hidden, sensitivities=sens)


@dataclasses.dataclass(frozen=True)
class ElementwiseCell(Cell):
  """A cell whose unit i depends on no other unit's parameters.

  Then dh_i/dθ[j, ...] = 0 for i ≠ j, so the sensitivities are shaped like
  θ_r (S[i, ...] = dh_i/dθ[i, ...]) and contracting them is a unit-wise
  scaling.
  """

  def zero_sensitivities(self, params: PyTree) -> PyTree:
    """Sensitivities of one example at h = initial: zeros shaped like θ_r."""
    return jax.tree.map(jnp.zeros_like, params["recurrent"])

  def contract_sensitivities(self, hidden_cotangent: PyTree,
                             sensitivities: PyTree) -> PyTree:
    """dL/dθ_r = (dL/dh)ᵀ dh/dθ_r for one example: (dL/dh)[i] · S[i, ...]."""
    return jax.tree.map(
        lambda s: hidden_cotangent.reshape(
            hidden_cotangent.shape + (1,) * (s.ndim - 1)) * s,
        sensitivities)
