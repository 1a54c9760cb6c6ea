r"""Gradient-alignment diagnostics: how far RTRL / TBPTT are from true BPTT.

For logging during training: take a window of recent data (inputs, resets,
targets [W, B, ...]) and the state at its start, cut it into the training
segments, and compare each method's per-segment gradients with the true one,
per parameter leaf:

    cosine        = ⟨g, g*⟩ / (‖g‖ ‖g*‖)
    relative_norm = ‖g‖ / ‖g*‖

where g* is the gradient of the same segment loss by BPTT through the whole
window. The window's start is the start of history for all methods: its
hidden state is a constant and its sensitivities are zeroed, so RTRL sees the
same past as BPTT and should give cosine = relative_norm = 1 up to rounding,
whatever the window; TBPTT falls short by what it truncates. (With the
carried sensitivities RTRL would also credit steps before the window, which
BPTT over the window cannot see.)

Everything here is `rtrl_jax.oracle` (per-segment gradients and the alignment
metric); this module only sets up the window and aggregates.
"""

import jax
import jax.numpy as jnp

from rtrl_jax import oracle

METHODS = ("rtrl", "tbptt")


def restart_sensitivities(state):
  """`state` with every `RecurrentState`'s sensitivities set to zeros."""
  def restart(layer_state):
    if layer_state.sensitivities is None:
      return layer_state
    return layer_state._replace(sensitivities=jax.tree.map(
        jnp.zeros_like, layer_state.sensitivities))
  return oracle.map_states(restart, state)


def window_gradients(model, params, state, inputs, resets, targets, loss_fn,
                     segment_length, methods=METHODS):
  """Per-segment gradients of each method and the truth over one window.

  Args:
    model: a cell or a runner (`rtrl_jax.oracle`, e.g. `multilayer.LayerStack`).
    params: the model's parameters.
    state: the state at the window's start (with sensitivities if "rtrl" is
      among `methods`); its sensitivities are restarted.
    inputs, resets, targets: [W, B, ...], W a multiple of `segment_length`.
    loss_fn: (outputs [T, B, H], targets [T, B, ...]) -> scalar, the
      training loss of one segment (must be hashable, e.g. a module-level
      function, for the compiled program to be reused across calls).
    segment_length: steps per training segment.
    methods: any of "rtrl", "tbptt".

  Returns:
    {"bptt": truth, method: estimate, ...}, each a list of per-segment
    gradient pytrees.
  """
  for method in methods:
    if method not in METHODS:
      raise ValueError(f"methods must be among {METHODS}, got {method!r}")
  state = restart_sensitivities(state)
  grads = {"bptt": oracle.full_bptt_segment_gradients(
      model, params, state, inputs, resets, targets, loss_fn, segment_length)}
  for method in methods:
    grads[method], _ = oracle.segment_gradients(
        method, model, params, state, inputs, resets, targets, loss_fn,
        segment_length)
  return grads


def _total(per_segment):
  return jax.tree.map(lambda *g: sum(g), *per_segment)


def gradient_alignment_report(model, params, state, inputs, resets, targets,
                              loss_fn, segment_length, methods=METHODS):
  """Per-parameter cosine and relative norm of each method vs. true BPTT.

  Same arguments as `window_gradients`. The compared gradients are the sums
  over the window's segments (what the segment-wise updates add up to).

  Returns:
    {method: pytree like params whose leaves are {"cosine", "relative_norm"}
    scalars}. `flatten_report` turns it into {"rtrl/recurrent/Z/cosine":
    float, ...} for a logger.
  """
  grads = window_gradients(model, params, state, inputs, resets, targets,
                           loss_fn, segment_length, methods)
  truth = _total(grads["bptt"])
  return {method: oracle.gradient_alignment(_total(grads[method]), truth)
          for method in methods}


def flatten_report(report):
  """{"method/path/to/leaf/metric": float} from `gradient_alignment_report`."""
  flat = {}
  for path, value in jax.tree_util.tree_flatten_with_path(report)[0]:
    keys = [str(getattr(k, "key", getattr(k, "idx", k))) for k in path]
    flat["/".join(keys)] = float(value)
  return flat
