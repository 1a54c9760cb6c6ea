"""The BPTT oracle: per-segment gradients by RTRL, TBPTT and full BPTT.

A sequence [T_total, B, D] is cut into segments of `segment_length` steps. The
loss of segment k is `loss_fn(outputs_k, targets_k)` (any function of that
segment's outputs, typically a sum of per-step losses). Three gradients of it:

* `rtrl`: `rtrl` on segment k from the state carried through segments < k.
* `tbptt`: `bptt` on segment k from the same state under `stop_gradient`.
* `bptt`: autodiff of the same loss through `bptt` over the whole sequence
  from the initial state: the true gradient.

RTRL is exact iff its gradient equals the `bptt` one for every segment;
TBPTT must not (it drops the past), which is the negative control. The tests
and the training-time diagnostics (`rtrl_jax.diagnostics`) both use these
functions.

The model is a cell, or more generally a *runner*: a hashable callable
`run(method, params, state, inputs, resets) -> (outputs, new_state)` with
method "rtrl" or "bptt" (a cell is wrapped in `CellRunner`; a stack of layers
is `rtrl_jax.cells.multilayer.LayerStack`). Each function is one compiled program
(segments run under `lax.scan`, the true gradients of all segments are one
reverse-mode Jacobian), cached on the runner, `loss_fn` and the shapes.
"""

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from rtrl_jax.cells.base import RecurrentState
from rtrl_jax.core import bptt, rtrl


# XLA options for the small programs of tests and reports on CPU: without
# XLA:CPU's fusion emitters and LLVM's optimisations they compile about 5x
# faster (compiling dominates their run time) and give the same numbers to
# rounding. Pass as `jax.jit(..., compiler_options=FAST_CPU_COMPILE)`.
# (jaxlib 0.11 has no fusion-emitter option and rejects it.)
FAST_CPU_COMPILE = {"xla_backend_optimization_level": 0}
if jax.__version_info__ < (0, 11):
  FAST_CPU_COMPILE["xla_cpu_use_fusion_emitters"] = False


@dataclasses.dataclass(frozen=True)
class CellRunner:
  """The runner of one cell: `rtrl` or `bptt` by name."""

  cell: Any

  def __call__(self, method, params, state, inputs, resets):
    if method == "rtrl":
      return rtrl(self.cell, params, state, inputs, resets)
    if method == "bptt":
      return bptt(self.cell, params, state, inputs, resets)
    raise ValueError(f"method must be 'rtrl' or 'bptt', got {method!r}")


def as_runner(model):
  """`model` as a runner: cells (they have `transition`) get a `CellRunner`."""
  return CellRunner(model) if hasattr(model, "transition") else model


def map_states(fn, state):
  """Applies `fn` to every `RecurrentState` in `state` (a state or a tuple of
  them, as runners use)."""
  return jax.tree.map(
      lambda leaf: fn(leaf) if isinstance(leaf, RecurrentState) else leaf,
      state, is_leaf=lambda x: isinstance(x, RecurrentState))


def _segment_count(total_length, segment_length):
  if total_length % segment_length:
    raise ValueError(
        f"sequence length {total_length} is not a multiple of segment_length "
        f"{segment_length}")
  return total_length // segment_length


def _split(segment_count, tree):
  """[T, ...] leaves to [K, T/K, ...]."""
  return jax.tree.map(
      lambda a: a.reshape((segment_count, -1) + a.shape[1:]), tree)


def _unstack(tree, count):
  """A pytree of [K, ...] leaves as a list of K pytrees."""
  return [jax.tree.map(lambda leaf, k=k: leaf[k], tree) for k in range(count)]


def segment_gradients(method, cell, params, state, inputs, resets, targets,
                      loss_fn, segment_length):
  """Gradients of each segment's loss w.r.t. params, state carried over.

  Args:
    method: "rtrl" or "tbptt".
    cell: a cell or a runner (see the module docstring).
    params, state: as for `rtrl` (state with sensitivities for "rtrl").
    inputs, resets, targets: [T_total, B, ...], T_total a multiple of
      `segment_length`.
    loss_fn: (outputs [T, B, H], targets [T, B, ...]) -> scalar.
    segment_length: steps per segment.

  Returns:
    (list of gradient pytrees, one per segment, final state).
  """
  if method not in ("rtrl", "tbptt"):
    raise ValueError(f"method must be 'rtrl' or 'tbptt', got {method!r}")
  count = _segment_count(inputs.shape[0], segment_length)
  grads, state = _scanned_segment_gradients(
      method, as_runner(cell), loss_fn, count, params, state, inputs, resets,
      targets)
  return _unstack(grads, count), state


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _scanned_segment_gradients(method, runner, loss_fn, segment_count, params,
                               state, inputs, resets, targets):
  """Per-segment gradients stacked on a leading [K] axis, and the final state."""

  def one_segment(state, segment):
    x, r, y = segment

    def segment_loss(p):
      if method == "rtrl":
        outputs, new_state = runner("rtrl", p, state, x, r)
      else:
        outputs, new_state = runner("bptt", p, jax.lax.stop_gradient(state),
                                    x, r)
      return loss_fn(outputs, y), new_state

    grads, new_state = jax.grad(segment_loss, has_aux=True)(params)
    return new_state, grads

  state, grads = jax.lax.scan(
      one_segment, state, _split(segment_count, (inputs, resets, targets)))
  return grads, state


def full_bptt_segment_gradients(cell, params, state, inputs, resets, targets,
                                loss_fn, segment_length):
  """The true gradient of each segment's loss, by BPTT over the whole sequence.

  `cell` is a cell or a runner. Returns a list with one gradient per segment.
  """
  count = _segment_count(inputs.shape[0], segment_length)
  # Sensitivities do not change BPTT's outputs or gradient; skip their cost.
  state = map_states(lambda s: s._replace(sensitivities=None), state)
  grads = _bptt_segment_gradients(as_runner(cell), loss_fn, count, params,
                                  state, inputs, resets, targets)
  return _unstack(grads, count)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _bptt_segment_gradients(runner, loss_fn, segment_count, params, state,
                            inputs, resets, targets):
  """d(segment k's loss)/d params for all k, as one Jacobian: leaves [K, ...]."""

  def segment_losses(p):
    outputs, _ = runner("bptt", p, state, inputs, resets)
    return jax.vmap(loss_fn)(*_split(segment_count, (outputs, targets)))

  return jax.jacrev(segment_losses)(params)


def relative_error(estimate, truth):
  """Per leaf ‖estimate − truth‖ / ‖truth‖ (0 where both are 0)."""
  def err(a, b):
    diff, norm = jnp.linalg.norm((a - b).ravel()), jnp.linalg.norm(b.ravel())
    return jnp.where(norm > 0, diff / jnp.where(norm > 0, norm, 1), diff)
  return jax.tree.map(err, estimate, truth)


def gradient_alignment(estimate, truth):
  """Per leaf {"cosine": cos∠(estimate, truth), "relative_norm": ‖est‖/‖truth‖}."""
  def align(a, b):
    a, b = a.ravel(), b.ravel()
    na, nb = jnp.linalg.norm(a), jnp.linalg.norm(b)
    tiny = jnp.finfo(a.dtype).tiny
    return {"cosine": jnp.dot(a, b) / jnp.maximum(na * nb, tiny),
            "relative_norm": na / jnp.maximum(nb, tiny)}
  return jax.tree.map(align, estimate, truth)
