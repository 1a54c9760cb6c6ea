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
