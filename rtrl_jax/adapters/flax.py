r"""A flax.linen module that runs any `rtrl_jax` cell in RTRL, TBPTT or BPTT mode.

    layer = RTRLRecurrent(cell=rtrl_jax.ELSTM(64), mode="rtrl")
    variables = layer.init(key, inputs, resets)           # inputs [T, B, D]
    outputs, state = layer.apply(variables, inputs, resets, state)

The cell's parameters live in one flax param, variables["params"]["cell"],
with exactly the structure `cell.init` returns ({"recurrent", "readout"}), so
they can be moved between this module and the core API unchanged. `state`
(a `RecurrentState`) is passed in and returned; None means the zero state
(with sensitivities in "rtrl" mode only). Modes: see `rtrl_jax.adapters`.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from rtrl_jax.adapters import check_mode, default_state, run_in_mode


class RTRLRecurrent(nn.Module):
  """A recurrent layer of `cell` run over [T, B, D] segments.

  Attributes:
    cell: a cell instance, e.g. `rtrl_jax.CELLS["elstm"](hidden_size=64)`.
    mode: "rtrl" (default), "tbptt" or "bptt".
    param_dtype: dtype of the parameters (inputs must have the same dtype).
  """

  cell: Any
  mode: str = "rtrl"
  param_dtype: Any = jnp.float32

  def __post_init__(self):
    check_mode("RTRLRecurrent", self.mode)
    super().__post_init__()

  @nn.compact
  def __call__(self, inputs, resets, state=None):
    """Runs the segment.

    Args:
      inputs: [T, B, D].
      resets: [T, B] bool, True where the state resets before step t.
      state: `RecurrentState` from the previous segment, or None (zeros).

    Returns:
      (outputs [T, B, H], new state).
    """
    params = self.param(
        "cell", lambda key: self.cell.init(key, inputs.shape[-1],
                                           self.param_dtype))
    if state is None:
      state = default_state(self.mode, self.cell, params, inputs)
    return run_in_mode(self.mode, self.cell, params, state, inputs, resets)
