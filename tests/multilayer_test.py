"""Multi-layer RTRL: the exact two-layer stack's contract and the layer-wise
approximation (`stacked_rtrl`) against the BPTT oracle, in float64.

The exact stack's own BPTT-oracle test is in cells_test.py (it is a cell)."""

import dataclasses
import functools
import subprocess
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from run_helpers import ROOT, script_environment

import rtrl_jax
from rtrl_jax import oracle
from rtrl_jax.cells.multilayer import DIAGONAL_CELLS, ExactTwoLayer, LayerStack

TOTAL, BATCH, INPUT_SIZE, HIDDEN, SEGMENT = 24, 3, 3, 3, 4


def layer():
  return rtrl_jax.ELSTM(HIDDEN, forget_bias=2.0, init_scale=0.5)


def per_step_loss(outputs, targets):
  return jnp.sum(jnp.tanh(outputs - targets) ** 2)


@pytest.mark.parametrize("name", ["qrnn", "lru", "linear_transformer"])
def test_exact_two_layer_rejects_cells_without_diagonal_recurrence(name):
  bad = rtrl_jax.CELLS[name](3)
  for kwargs in (dict(lower=bad, upper=layer()), dict(lower=layer(), upper=bad)):
    with pytest.raises(ValueError, match="diagonal recurrence") as error:
      ExactTwoLayer(**kwargs)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("cls", DIAGONAL_CELLS)
def test_supported_cells_have_diagonal_recurrence_jacobians(cls):
  """What ExactTwoLayer assumes of its layers (d(t) = J·1 needs a diagonal J)."""
  cell = cls(4)
  with jax.enable_x64(True):
    params = cell.init(jax.random.PRNGKey(0), 2, jnp.float64)
    hidden = jax.random.normal(jax.random.PRNGKey(1), (4,), jnp.float64)
    x = jax.random.normal(jax.random.PRNGKey(2), (2,), jnp.float64)
    jacobian = np.asarray(jax.jit(jax.jacfwd(
        lambda h: cell.transition(params["recurrent"], h, x)),
        compiler_options=oracle.FAST_CPU_COMPILE)(hidden))
  off_diagonal = jacobian - np.diag(np.diag(jacobian))
  assert np.abs(np.diag(jacobian)).min() > 0
  assert np.abs(off_diagonal).max() == 0


def make_problem(stack):
  keys = jax.random.split(jax.random.PRNGKey(0), 4)
  params = stack.init(keys[0], INPUT_SIZE, jnp.float64)
  inputs = jax.random.normal(keys[1], (TOTAL, BATCH, INPUT_SIZE), jnp.float64)
  # One reset on a segment boundary and two strictly inside segments.
  resets = (jnp.zeros((TOTAL, BATCH), bool).at[2 * SEGMENT, 0].set(True)
            .at[SEGMENT + 1, 1].set(True).at[3 * SEGMENT + 2, 2].set(True))
  targets = jax.random.normal(keys[3], (TOTAL, BATCH, HIDDEN), jnp.float64)
  return params, stack.initial_state(params, BATCH), inputs, resets, targets


@functools.partial(jax.jit, static_argnums=0,
                   compiler_options=oracle.FAST_CPU_COMPILE)
def _stack_gradients(stack, params, state, inputs, resets, targets):
  estimates, _ = oracle.segment_gradients(
      "rtrl", stack, params, state, inputs, resets, targets, per_step_loss,
      SEGMENT)
  truths = oracle.full_bptt_segment_gradients(
      stack, params, state, inputs, resets, targets, per_step_loss, SEGMENT)
  # The same two layers as one exact cell, and both forward passes.
  exact = ExactTwoLayer(*stack.cells)
  exact_params = {"recurrent": {"lower": params[0],
                                "upper": params[1]["recurrent"]},
                  "readout": params[1]["readout"]}
  exact_estimates, _ = oracle.segment_gradients(
      "rtrl", exact, exact_params, exact.initial_state(exact_params, BATCH),
      inputs, resets, targets, per_step_loss, SEGMENT)
  stacked_outputs, _ = stack("rtrl", params, state, inputs, resets)
  exact_outputs, _ = rtrl_jax.rtrl(exact, exact_params,
                                   exact.initial_state(exact_params, BATCH),
                                   inputs, resets)
  return (estimates, truths, exact_estimates, stacked_outputs, exact_outputs)


def _errors(estimates, truths):
  with jax.enable_x64(True):
    return [jax.tree.map(float, oracle.relative_error(e, t))
            for e, t in zip(estimates, truths)]


def test_layerwise_rtrl_is_exact_on_top_and_approximate_below():
  stack = LayerStack((layer(), layer()))
  with jax.enable_x64(True):
    (estimates, truths, exact_estimates, stacked_outputs,
     exact_outputs) = _stack_gradients(stack, *make_problem(stack))
  errors = _errors(estimates, truths)
  # Top layer: its inputs do not depend on its parameters, so exact.
  for err in errors:
    assert max(jax.tree.leaves(err[1])) <= 1e-8
  # Bottom layer: the cross-layer past is dropped; first segment has no past.
  assert max(jax.tree.leaves(errors[0][0])) <= 1e-8
  assert max(max(jax.tree.leaves(err[0]["recurrent"])) for err in errors[1:]) > 1e-3
  # The exact two-layer cell runs the same network and gets every leaf right.
  np.testing.assert_allclose(stacked_outputs, exact_outputs, rtol=1e-12,
                             atol=1e-12)
  exact_as_stack = [
      ({**e["recurrent"]["lower"]},
       {"recurrent": e["recurrent"]["upper"], "readout": e["readout"]})
      for e in exact_estimates]
  for err in _errors(exact_as_stack, truths):
    assert max(jax.tree.leaves(err)) <= 1e-8


@dataclasses.dataclass(frozen=True)
class _CrossCutRunner:
  """ExactTwoLayer's RTRL with the cross-layer sensitivity S²¹ zeroed at every
  segment start (S¹ and S²² carried): by the module docstring, exactly the
  layer-wise approximation — the lower layer keeps its own carried past and
  gets the upper layer's errors only through the current segment."""

  cell: Any

  def __call__(self, method, params, state, inputs, resets):
    assert method == "rtrl"
    s = state.sensitivities
    cut = {"h1": s["h1"],
           "h2": {"lower": jax.tree.map(jnp.zeros_like, s["h2"]["lower"]),
                  "upper": s["h2"]["upper"]}}
    return rtrl_jax.rtrl(self.cell, params, state._replace(sensitivities=cut),
                         inputs, resets)


def _as_stack_gradient(exact_gradient):
  e = exact_gradient
  return ({**e["recurrent"]["lower"]},
          {"recurrent": e["recurrent"]["upper"], "readout": e["readout"]})


@functools.partial(jax.jit, static_argnums=0,
                   compiler_options=oracle.FAST_CPU_COMPILE)
def _lower_layer_reference(stack, params, inputs, resets, targets):
  exact = ExactTwoLayer(*stack.cells)
  exact_params = {"recurrent": {"lower": params[0],
                                "upper": params[1]["recurrent"]},
                  "readout": params[1]["readout"]}
  references, _ = oracle.segment_gradients(
      "rtrl", _CrossCutRunner(exact), exact_params,
      exact.initial_state(exact_params, BATCH), inputs, resets, targets,
      per_step_loss, SEGMENT)
  return references


def test_layerwise_rtrl_lower_layer_matches_cross_cut_exact_rtrl():
  """The lower layer's gradient in every segment (state, sensitivities and
  resets carried — two resets inside segments) equals exact two-layer RTRL
  with only S²¹ cut at segment starts: the lower layer keeps its own carried
  sensitivity (a TBPTT lower layer fails this)."""
  stack = LayerStack((layer(), layer()))
  with jax.enable_x64(True):
    params, state, inputs, resets, targets = make_problem(stack)
    estimates, truths, *_ = _stack_gradients(stack, params, state, inputs,
                                             resets, targets)
    references = _lower_layer_reference(stack, params, inputs, resets,
                                        targets)
  assert len(estimates) == TOTAL // SEGMENT >= 3
  for k, (estimate, reference) in enumerate(
      zip(estimates, map(_as_stack_gradient, references))):
    errors = _errors([estimate], [reference])[0]
    assert max(jax.tree.leaves(errors)) <= 1e-8, (k, errors)
  # The reference is not the truth: the cut past matters here.
  far = _errors([_as_stack_gradient(r) for r in references[1:]], truths[1:])
  assert max(max(jax.tree.leaves(err[0]["recurrent"])) for err in far) > 1e-3


@functools.partial(jax.jit, static_argnums=0,
                   compiler_options=oracle.FAST_CPU_COMPILE)
def _tbptt_and_truth(stack, params, state, inputs, resets, targets):
  estimates, _ = oracle.segment_gradients(
      "tbptt", stack, params, state, inputs, resets, targets, per_step_loss,
      SEGMENT)
  truths = oracle.full_bptt_segment_gradients(
      stack, params, state, inputs, resets, targets, per_step_loss, SEGMENT)
  rtrl_estimates, _ = oracle.segment_gradients(
      "rtrl", stack, params, state, inputs, resets, targets, per_step_loss,
      SEGMENT)
  return estimates, truths, rtrl_estimates


def test_layerwise_tbptt_top_layer_is_not_exact():
  """Negative control for the top-layer exactness check: segment-by-segment
  BPTT through the stack gets the top layer wrong once there is a past."""
  stack = LayerStack((layer(), layer()))
  with jax.enable_x64(True):
    tbptt, truths, _ = _tbptt_and_truth(stack, *make_problem(stack))
  errors = _errors(tbptt, truths)
  assert max(jax.tree.leaves(errors[0])) <= 1e-8
  assert max(max(jax.tree.leaves(err[1]["recurrent"]))
             for err in errors[1:]) > 1e-3


def test_heterogeneous_three_layer_stack_top_layer_is_exact():
  stack = LayerStack((rtrl_jax.QRNN(4, window=2),
                      rtrl_jax.LinearTransformer(4),
                      rtrl_jax.DiagonalLRU(HIDDEN)))
  with jax.enable_x64(True):
    tbptt, truths, estimates = _tbptt_and_truth(stack, *make_problem(stack))
  errors = _errors(estimates, truths)
  for err in errors:
    assert max(jax.tree.leaves(err[2])) <= 1e-8, err[2]
  tbptt_errors = _errors(tbptt, truths)
  assert max(max(jax.tree.leaves(err[2]["recurrent"]))
             for err in tbptt_errors[1:]) > 1e-3


def test_one_layer_stack_is_plain_rtrl():
  cell = layer()
  stack = LayerStack((cell,))
  with jax.enable_x64(True):
    params, state, inputs, resets, targets = make_problem(stack)

    @functools.partial(jax.jit, compiler_options=oracle.FAST_CPU_COMPILE)
    def both(params, state, inputs, resets, targets):
      def loss(run, p):
        return per_step_loss(run(p)[0], targets)
      by_stack = jax.grad(functools.partial(loss, lambda p: stack(
          "rtrl", p, state, inputs, resets)))(params)
      by_cell = jax.grad(functools.partial(loss, lambda p: rtrl_jax.rtrl(
          cell, p, state[0], inputs, resets)))(params[0])
      return by_stack[0], by_cell

    by_stack, by_cell = both(params, state, inputs, resets, targets)
  for a, b in zip(jax.tree.leaves(by_stack), jax.tree.leaves(by_cell)):
    np.testing.assert_array_equal(a, b)


def test_layer_stack_rejects_bad_arguments():
  with pytest.raises(ValueError, match="non-empty tuple"):
    LayerStack([layer()])
  stack = LayerStack((layer(),))
  with pytest.raises(ValueError, match="'tbptt'"):
    stack("tbptt", None, None, None, None)


@pytest.mark.parametrize("args,message", [
    (["--window", "10", "--segment-lengths", "3"],
     "error: --segment-lengths: [3] do not divide --window=10 (the window is "
     "cut into whole segments)"),
    (["--delay", "0"], "error: --delay: must be >= 1, got 0"),
])
def test_report_script_bad_arguments_are_one_line_errors(args, message):
  result = subprocess.run(
      [sys.executable, "-m", "experiments.multilayer_report", *args],
      cwd=ROOT, env=script_environment(), capture_output=True, text=True,
      timeout=120)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1].endswith(message)
