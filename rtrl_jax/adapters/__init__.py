r"""Framework adapters: any cell of `rtrl_jax.CELLS` as a flax or haiku module.

`rtrl_jax.adapters.flax.RTRLRecurrent` (flax.linen) and
`rtrl_jax.adapters.haiku.RTRLRecurrent` (haiku) run a cell over a segment in
one of three modes, with the `RecurrentState` passed in and out:

* "rtrl": `rtrl_jax.rtrl`, exact untruncated RTRL through the carried state.
* "tbptt": `rtrl_jax.bptt` on a `stop_gradient`-ed state (truncated BPTT).
* "bptt": `rtrl_jax.bptt`; gradients also flow into the incoming state, so
  chaining segments (or one call on the whole sequence) is full BPTT.

This package imports neither flax nor haiku; import the submodule you need.
"""

import jax

from rtrl_jax.core import bptt, rtrl

MODES = ("rtrl", "tbptt", "bptt")


def check_mode(owner, mode):
  """Raises a one-line ValueError unless `mode` is one of MODES."""
  if mode not in MODES:
    raise ValueError(f"{owner}: mode must be one of {MODES}, got {mode!r}")


def run_in_mode(mode, cell, params, state, inputs, resets):
  """(outputs [T, B, H], new_state) of `cell` over a segment in `mode`."""
  check_mode("run_in_mode", mode)
  if mode == "rtrl":
    return rtrl(cell, params, state, inputs, resets)
  if mode == "tbptt":
    state = jax.lax.stop_gradient(state)
  return bptt(cell, params, state, inputs, resets)


def default_state(mode, cell, params, inputs):
  """The zero state for `inputs` [T, B, D]; sensitivities only for "rtrl"."""
  return cell.initial_state(params, inputs.shape[1],
                            sensitivities=(mode == "rtrl"))
