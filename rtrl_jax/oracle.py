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
and the training-time diagnostics both use these functions.
"""

import jax
import jax.numpy as jnp

from rtrl_jax.core import bptt, rtrl


def _segments(total_length, segment_length):
  if total_length % segment_length:
    raise ValueError(
        f"sequence length {total_length} is not a multiple of segment_length "
        f"{segment_length}")
  return [slice(k, k + segment_length)
          for k in range(0, total_length, segment_length)]


def segment_gradients(method, cell, params, state, inputs, resets, targets,
                      loss_fn, segment_length):
  """Gradients of each segment's loss w.r.t. params, state carried over.

  Args:
    method: "rtrl" or "tbptt".
    cell, params, state: as for `rtrl` (state with sensitivities).
    inputs, resets, targets: [T_total, B, ...], T_total a multiple of
      `segment_length`.
    loss_fn: (outputs [T, B, H], targets [T, B, ...]) -> scalar.
    segment_length: steps per segment.

  Returns:
    (list of gradient pytrees, one per segment, final state).
  """
  if method not in ("rtrl", "tbptt"):
    raise ValueError(f"method must be 'rtrl' or 'tbptt', got {method!r}")

  def segment_loss(p, s, x, r, y):
    if method == "rtrl":
      outputs, new_state = rtrl(cell, p, s, x, r)
    else:
      outputs, new_state = bptt(cell, p, jax.lax.stop_gradient(s), x, r)
    return loss_fn(outputs, y), new_state

  grad_fn = jax.jit(jax.grad(segment_loss, has_aux=True))
  grads = []
  for seg in _segments(inputs.shape[0], segment_length):
    g, state = grad_fn(params, state, inputs[seg], resets[seg], targets[seg])
    grads.append(g)
  return grads, state


def full_bptt_segment_gradients(cell, params, state, inputs, resets, targets,
                                loss_fn, segment_length):
  """The true gradient of each segment's loss, by BPTT over the whole sequence."""

  def loss_of_segment(p, seg):
    outputs, _ = bptt(cell, p, state, inputs, resets)
    return loss_fn(outputs[seg], targets[seg])

  return [jax.grad(loss_of_segment)(params, seg)
          for seg in _segments(inputs.shape[0], segment_length)]


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
