"""flax and haiku adapters: same gradients as the core API for the same params."""

import functools

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rtrl_jax
from rtrl_jax import oracle
from rtrl_jax.adapters import flax as flax_adapter
from rtrl_jax.adapters import haiku as haiku_adapter

LENGTH, BATCH, INPUT_SIZE, HIDDEN = 5, 2, 3, 4


def problem(cell, seed=0):
  keys = jax.random.split(jax.random.PRNGKey(seed), 3)
  inputs = jax.random.normal(keys[0], (2, LENGTH, BATCH, INPUT_SIZE))
  resets = jnp.zeros((2, LENGTH, BATCH), bool).at[1, 2, 0].set(True)
  return keys[2], inputs, resets


def two_segment_loss(run, state):
  """Loss of two segments with the state passed from the first to the second."""
  def loss(params, inputs, resets):
    total = 0.0
    state_k = state
    for k in range(2):
      outputs, state_k = run(params, state_k, inputs[k], resets[k])
      total = total + jnp.sum(jnp.sin(outputs) * (k + 1))
    return total
  return loss


def core_run(cell, mode):
  def run(params, state, inputs, resets):
    if mode == "rtrl":
      return rtrl_jax.rtrl(cell, params, state, inputs, resets)
    if mode == "tbptt":
      state = jax.lax.stop_gradient(state)
    return rtrl_jax.bptt(cell, params, state, inputs, resets)
  return run


def flax_setup(cell, mode, key, inputs, resets):
  module = flax_adapter.RTRLRecurrent(cell=cell, mode=mode)
  variables = module.init(key, inputs[0], resets[0])
  run = lambda v, s, x, r: module.apply(v, x, r, s)
  return variables, variables["params"]["cell"], run, (
      lambda grads: grads["params"]["cell"])


def haiku_setup(cell, mode, key, inputs, resets):
  model = hk.without_apply_rng(hk.transform(
      lambda x, r, s: haiku_adapter.RTRLRecurrent(cell, mode=mode)(x, r, s)))
  params = model.init(key, inputs[0], resets[0], None)
  to_cell = lambda p: haiku_adapter.to_cell_params(
      p["rtrl_recurrent"], cell, INPUT_SIZE)
  run = lambda p, s, x, r: model.apply(p, x, r, s)
  return params, to_cell(params), run, to_cell


SETUPS = {"flax": flax_setup, "haiku": haiku_setup}


@pytest.mark.parametrize("mode", ["rtrl", "tbptt", "bptt"])
@pytest.mark.parametrize("framework", ["flax", "haiku"])
def test_adapter_gradients_equal_core_gradients(framework, mode):
  cell = rtrl_jax.ELSTM(HIDDEN, forget_bias=1.0)
  key, inputs, resets = problem(cell)
  module_params, cell_params, run, to_cell = SETUPS[framework](
      cell, mode, key, inputs, resets)
  state = cell.initial_state(cell_params, BATCH,
                             sensitivities=(mode == "rtrl"))

  @functools.partial(jax.jit, compiler_options=oracle.FAST_CPU_COMPILE)
  def gradients(module_params, cell_params, inputs, resets):
    by_adapter = jax.grad(two_segment_loss(run, state))(
        module_params, inputs, resets)
    by_core = jax.grad(two_segment_loss(core_run(cell, mode), state))(
        cell_params, inputs, resets)
    # TBPTT, to show that this problem tells the modes apart.
    tbptt = (jax.grad(two_segment_loss(core_run(cell, "tbptt"), state))(
        cell_params, inputs, resets) if mode == "rtrl" else by_core)
    return to_cell(by_adapter), by_core, tbptt

  by_adapter, by_core, tbptt = gradients(module_params, cell_params, inputs,
                                         resets)
  assert jax.tree.structure(by_adapter) == jax.tree.structure(by_core)
  # float32; the two paths may order the same sums differently.
  for a, b in zip(jax.tree.leaves(by_adapter), jax.tree.leaves(by_core)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  if mode == "rtrl":
    gap = max(float(jnp.abs(a - b).max()) for a, b in zip(
        jax.tree.leaves(by_core["recurrent"]),
        jax.tree.leaves(tbptt["recurrent"])))
    assert gap > 1e-4


@pytest.mark.parametrize("name", list(rtrl_jax.CELLS))
def test_adapters_wrap_every_cell(name):
  """Both adapters run every registered cell with its own parameter tree and
  give the core API's outputs and state."""
  cell = rtrl_jax.CELLS[name](HIDDEN)
  key, inputs, resets = problem(cell)
  reference = cell.init(key, INPUT_SIZE)
  state = cell.initial_state(reference, BATCH)
  setups = {framework: setup(cell, "rtrl", key, inputs, resets)
            for framework, setup in SETUPS.items()}
  for framework, (_, cell_params, _, _) in setups.items():
    assert jax.tree.structure(cell_params) == jax.tree.structure(reference)

  @functools.partial(jax.jit, compiler_options=oracle.FAST_CPU_COMPILE)
  def run_all(module_params, cell_params):
    got = {framework: setups[framework][2](module_params[framework], state,
                                           inputs[0], resets[0])
           for framework in setups}
    want = {framework: rtrl_jax.rtrl(cell, cell_params[framework], state,
                                     inputs[0], resets[0])
            for framework in setups}
    return got, want

  got, want = run_all({f: s[0] for f, s in setups.items()},
                      {f: s[1] for f, s in setups.items()})
  for framework in setups:
    for a, b in zip(jax.tree.leaves(got[framework]),
                    jax.tree.leaves(want[framework])):
      np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7,
                                 err_msg=framework)


def test_haiku_param_conversion_round_trips():
  cell = rtrl_jax.ELSTM(HIDDEN)
  params = cell.init(jax.random.PRNGKey(0), INPUT_SIZE)
  flat = haiku_adapter.from_cell_params(params)
  assert "recurrent.Z" in flat and "readout.W_o" in flat
  back = haiku_adapter.to_cell_params(flat, cell, INPUT_SIZE)
  for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("framework", ["flax", "haiku"])
def test_adapters_reject_an_unknown_mode(framework):
  cell = rtrl_jax.ELSTM(HIDDEN)
  with pytest.raises(ValueError, match="'truncated'"):
    if framework == "flax":
      flax_adapter.RTRLRecurrent(cell=cell, mode="truncated")
    else:
      hk.transform(lambda: haiku_adapter.RTRLRecurrent(
          cell, mode="truncated")).init(jax.random.PRNGKey(0))


# Segment by segment, in float64: the way the adapters are used in training.
SEGMENTS, SEGMENT_LENGTH = 3, 4
# (step, example): a reset inside segment 1, and one exactly at the first step
# of segment 2 (a segment boundary).
SEGMENT_RESETS = ((5, 0), (2 * SEGMENT_LENGTH, 1))


def per_step_loss(outputs, targets):
  """Σ_t L(t): a non-linear loss at every step of the segment."""
  return jnp.sum(jnp.tanh(outputs - targets) ** 2)


def float64_setup(framework, cell, mode, key, inputs, resets):
  """(module params, cell params, run(p, s, x, r), to_cell) in float64;
  `inputs`, `resets`: one segment, [T, B, ...]."""
  if framework == "flax":
    module = flax_adapter.RTRLRecurrent(cell=cell, mode=mode,
                                        param_dtype=jnp.float64)
    variables = module.init(key, inputs, resets)
    return (variables, variables["params"]["cell"],
            lambda v, s, x, r: module.apply(v, x, r, s),
            lambda grads: grads["params"]["cell"])
  model = hk.without_apply_rng(hk.transform(
      lambda x, r, s: haiku_adapter.RTRLRecurrent(
          cell, mode=mode, param_dtype=jnp.float64)(x, r, s)))
  params = model.init(key, inputs, resets, None)
  to_cell = lambda p: haiku_adapter.to_cell_params(
      p["rtrl_recurrent"], cell, INPUT_SIZE, jnp.float64)
  return (params, to_cell(params), lambda p, s, x, r: model.apply(p, x, r, s),
          to_cell)


def adapter_segment_gradients(run, module_params, state, inputs, resets,
                              targets):
  """Each segment's gradient taken on its own (as training does and as
  `oracle.segment_gradients` does): d(segment k's loss)/d(params, incoming
  state), the incoming state a constant input of segment k's program, then
  carried to segment k + 1. Returns ([param grads], [state grads])."""
  param_grads, state_grads = [], []
  for k in range(SEGMENTS):
    window = slice(k * SEGMENT_LENGTH, (k + 1) * SEGMENT_LENGTH)

    def segment_loss(params, incoming, window=window):
      outputs, new_state = run(params, incoming, inputs[window],
                               resets[window])
      return per_step_loss(outputs, targets[window]), new_state

    (g_params, g_state), state = jax.grad(
        segment_loss, argnums=(0, 1), has_aux=True)(module_params, state)
    param_grads.append(g_params)
    state_grads.append(g_state)
  return param_grads, state_grads


@pytest.mark.parametrize("framework", ["flax", "haiku"])
def test_adapter_rtrl_segment_gradients_are_exact(framework):
  """Per-segment gradients of the adapter in "rtrl" mode, each segment
  differentiated separately with the carried state held constant, equal the
  true ones (`oracle.full_bptt_segment_gradients`, BPTT over the whole
  sequence) to float64 rounding, with per-step losses, a reset inside a
  segment and one at a segment boundary. In "bptt" mode the same procedure is
  TBPTT and must not match (negative control). Unlike one `jax.grad` over
  chained segments (where full BPTT is also exact), this tells RTRL apart
  from BPTT."""
  cell = rtrl_jax.ELSTM(HIDDEN, forget_bias=2.0)
  total = SEGMENTS * SEGMENT_LENGTH
  with jax.enable_x64(True):
    keys = jax.random.split(jax.random.PRNGKey(1), 3)
    inputs = jax.random.normal(keys[0], (total, BATCH, INPUT_SIZE),
                               jnp.float64)
    resets = jnp.zeros((total, BATCH), bool)
    for step, example in SEGMENT_RESETS:
      resets = resets.at[step, example].set(True)
    setups = {mode: float64_setup(framework, cell, mode, keys[1],
                                  inputs[:SEGMENT_LENGTH],
                                  resets[:SEGMENT_LENGTH])
              for mode in ("rtrl", "bptt")}
    module_params, cell_params, _, to_cell = setups["rtrl"]
    assert all(leaf.dtype == jnp.float64
               for leaf in jax.tree.leaves(cell_params))
    # Both modes start from the same parameters (same init key).
    for a, b in zip(jax.tree.leaves(cell_params),
                    jax.tree.leaves(setups["bptt"][1])):
      np.testing.assert_array_equal(a, b)
    state = cell.initial_state(cell_params, BATCH)  # With sensitivities.
    outputs, _ = jax.eval_shape(
        lambda p: rtrl_jax.bptt(cell, p, state, inputs, resets), cell_params)
    targets = jax.random.normal(keys[2], outputs.shape, jnp.float64)

    @functools.partial(jax.jit, compiler_options=oracle.FAST_CPU_COMPILE)
    def gradients(module_params, cell_params, state, inputs, resets, targets):
      truth = oracle.full_bptt_segment_gradients(
          cell, cell_params, state, inputs, resets, targets, per_step_loss,
          SEGMENT_LENGTH)
      by_mode = {}
      for mode, (_, _, run, _) in setups.items():
        param_grads, state_grads = adapter_segment_gradients(
            run, module_params, state, inputs, resets, targets)
        by_mode[mode] = ([to_cell(g) for g in param_grads], state_grads)
      return truth, by_mode

    truth, by_mode = jax.device_get(gradients(
        module_params, cell_params, state, inputs, resets, targets))

    def errors(estimates):
      """[(segment, leaf path, relative error)] for every segment and leaf."""
      assert len(estimates) == len(truth) == SEGMENTS
      found = []
      for k, (estimate, true) in enumerate(zip(estimates, truth)):
        assert jax.tree.structure(estimate) == jax.tree.structure(true)
        for path, err in jax.tree_util.tree_flatten_with_path(
            oracle.relative_error(estimate, true))[0]:
          found.append((k, jax.tree_util.keystr(path), float(err)))
      return found

    rtrl_grads, rtrl_state_grads = by_mode["rtrl"]
    for k, path, err in errors(rtrl_grads):
      assert err <= 1e-8, (framework, "segment", k, path, err)
    # Every segment's true gradient is non-trivial (the comparison is real).
    for k, true in enumerate(truth):
      assert float(jnp.linalg.norm(true["recurrent"]["Z"])) > 1e-3, k
    # RTRL carries the past through the sensitivities, not through autodiff
    # into the incoming state: that gradient is exactly zero.
    for k, g_state in enumerate(rtrl_state_grads):
      for leaf in jax.tree.leaves(g_state):
        np.testing.assert_array_equal(leaf, 0, err_msg=f"segment {k}")

    # Negative control: "bptt" mode segment by segment is TBPTT. It drops the
    # past, so after the first segment it is wrong; and its incoming state
    # does get a gradient (which the procedure above discards).
    tbptt_grads, tbptt_state_grads = by_mode["bptt"]
    tbptt_errors = errors(tbptt_grads)
    assert max(err for k, _, err in tbptt_errors if k > 0) > 1e-3
    assert max(err for k, _, err in tbptt_errors if k == 0) <= 1e-8
    assert max(float(jnp.abs(leaf).max())
               for leaf in jax.tree.leaves(tbptt_state_grads[1].hidden)) > 1e-3
