"""Gradient-alignment diagnostics: RTRL aligns with BPTT, TBPTT does not."""

import functools

import jax
import jax.numpy as jnp
import pytest

import rtrl_jax
from rtrl_jax import diagnostics, oracle

TOTAL, BATCH, INPUT_SIZE, HIDDEN, SEGMENT = 12, 2, 3, 3, 4


def per_step_loss(outputs, targets):
  return jnp.sum(jnp.tanh(outputs - targets) ** 2)


def test_rtrl_aligns_and_tbptt_does_not_from_a_warm_state():
  cell = rtrl_jax.ELSTM(HIDDEN, forget_bias=2.0, init_scale=0.5)
  keys = jax.random.split(jax.random.PRNGKey(0), 4)
  with jax.enable_x64(True):
    params = cell.init(keys[0], INPUT_SIZE, jnp.float64)
    inputs = jax.random.normal(keys[1], (TOTAL + SEGMENT, BATCH, INPUT_SIZE),
                               jnp.float64)
    targets = jax.random.normal(keys[2], (TOTAL, BATCH, HIDDEN), jnp.float64)
    resets = jnp.zeros((TOTAL + SEGMENT, BATCH), bool)
    # A warm state: non-zero hidden and sensitivities from an earlier segment.
    _, state = rtrl_jax.rtrl(cell, params, cell.initial_state(params, BATCH),
                             inputs[:SEGMENT], resets[:SEGMENT])
    assert float(jnp.abs(state.sensitivities["Z"]).max()) > 0

    @functools.partial(jax.jit, compiler_options=oracle.FAST_CPU_COMPILE)
    def report(params, state, inputs, resets, targets):
      return diagnostics.gradient_alignment_report(
          cell, params, state, inputs, resets, targets, per_step_loss,
          SEGMENT)

    flat = diagnostics.flatten_report(report(
        params, state, inputs[SEGMENT:], resets[SEGMENT:], targets))
  assert set(flat) == {f"{m}/{group}/{leaf}/{metric}"
                       for m in ("rtrl", "tbptt")
                       for group, leaves in params.items() for leaf in leaves
                       for metric in ("cosine", "relative_norm")}
  for key, value in flat.items():
    if key.startswith("rtrl/"):
      assert abs(value - 1) <= 1e-9, key
  tbptt_cosines = [v for k, v in flat.items()
                   if k.startswith("tbptt/recurrent") and k.endswith("cosine")]
  assert min(tbptt_cosines) < 1 - 1e-4


def test_restart_sensitivities_zeroes_every_layer_state():
  cell = rtrl_jax.ELSTM(HIDDEN)
  params = cell.init(jax.random.PRNGKey(0), INPUT_SIZE)
  state = cell.initial_state(params, BATCH)
  state = state._replace(
      hidden=state.hidden + 1,
      sensitivities=jax.tree.map(lambda s: s + 1, state.sensitivities))
  restarted = diagnostics.restart_sensitivities((state, state._replace(
      sensitivities=None)))
  assert all(float(jnp.abs(s).max()) == 0
             for s in jax.tree.leaves(restarted[0].sensitivities))
  assert float(restarted[0].hidden.min()) == 1  # The hidden state is kept.
  assert restarted[1].sensitivities is None


def test_unknown_method_is_rejected():
  cell = rtrl_jax.ELSTM(HIDDEN)
  with pytest.raises(ValueError, match="'bptt'"):
    diagnostics.window_gradients(cell, None, None, None, None, None,
                                 per_step_loss, 1, methods=("bptt",))
