"""Tests of `rtrl` / `bptt` with the eLSTM: the BPTT oracle and its controls."""

import dataclasses
import functools

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rtrl_jax
from rtrl_jax import oracle

SEGMENTS = 3
BATCH, INPUT_SIZE, HIDDEN = 3, 4, 5


def per_step_loss(outputs, targets):
  """Σ_t L(t): a non-linear loss at every step, weighted by step."""
  weights = 1.0 + jnp.arange(outputs.shape[0], dtype=outputs.dtype)[:, None]
  return jnp.sum(weights * jnp.sum(jnp.tanh(outputs - targets) ** 2, -1))


def make_problem(segment_length, cell=None, seed=0):
  """Float64 sequence of SEGMENTS segments with random resets.

  One reset sits exactly on the boundary into the last segment (example 0),
  one inside the middle segment (example 1); example 2 only gets random ones.
  """
  # A forget bias of 2 keeps memory over ~tens of steps, so the part of the
  # gradient that crosses segments is large enough for the test to see.
  cell = cell or rtrl_jax.ELSTM(HIDDEN, forget_bias=2.0, init_scale=0.5)
  keys = jax.random.split(jax.random.PRNGKey(seed), 4)
  total = SEGMENTS * segment_length
  params = cell.init(keys[0], INPUT_SIZE, jnp.float64)
  inputs = jax.random.normal(keys[1], (total, BATCH, INPUT_SIZE), jnp.float64)
  targets = jax.random.normal(keys[2], (total, BATCH, HIDDEN), jnp.float64)
  resets = jax.random.bernoulli(keys[3], 0.02, (total, BATCH))
  resets = resets.at[:, 2].set(False)
  resets = resets.at[(SEGMENTS - 1) * segment_length, 0].set(True)
  if segment_length > 1:
    resets = resets.at[segment_length + segment_length // 2, 1].set(True)
  return cell, params, inputs, resets, targets


@functools.lru_cache(maxsize=None)
def _true_gradients(segment_length):
  """Full-BPTT gradients of each segment's loss (cached: several tests)."""
  cell, params, inputs, resets, targets = make_problem(segment_length)
  return oracle.full_bptt_segment_gradients(
      cell, params, cell.initial_state(params, BATCH), inputs, resets, targets,
      per_step_loss, segment_length)


def oracle_errors(segment_length, cell=None, method="rtrl"):
  """Per segment, per leaf: relative error of `method` vs. full BPTT.

  `cell` replaces the eLSTM's sensitivity recursion only (same parameters,
  same forward), so the BPTT truth is the eLSTM's.
  """
  default_cell, params, inputs, resets, targets = make_problem(segment_length)
  cell = cell or default_cell
  estimates, _ = oracle.segment_gradients(
      method, cell, params, cell.initial_state(params, BATCH), inputs, resets,
      targets, per_step_loss, segment_length)
  return [jax.tree.map(float, oracle.relative_error(e, t))
          for e, t in zip(estimates, _true_gradients(segment_length))]


@pytest.mark.parametrize("segment_length", [1, 2, 3, 5, 8, 64])
def test_rtrl_gradient_equals_bptt_for_every_leaf(segment_length):
  with jax.enable_x64(True):
    errors = oracle_errors(segment_length)
  for k, per_leaf in enumerate(errors):
    for path, err in jax.tree_util.tree_leaves_with_path(per_leaf):
      assert err <= 1e-8, (
          f"segment {k}, leaf {jax.tree_util.keystr(path)}: rel. error {err}")


@pytest.mark.parametrize("chunks", [3, 1])
def test_chunked_past_gradient_equals_bptt(monkeypatch, chunks):
  """The batch cut into chunks (as on several devices) gives the same RTRL."""
  monkeypatch.setattr(rtrl_jax.core, "_batch_chunks", lambda batch: chunks)
  with jax.enable_x64(True):
    errors = oracle_errors(3)
  assert max(max(jax.tree.leaves(per_leaf)) for per_leaf in errors) <= 1e-8


SHARDED_SCRIPT = """
import jax, jax.numpy as jnp, numpy as np, rtrl_jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
assert jax.device_count() == 2
mesh = Mesh(jax.devices(), ("data",))
cell = rtrl_jax.ELSTM(16)
params = cell.init(jax.random.PRNGKey(0), 33)
state = cell.initial_state(params, 8)
state = state._replace(sensitivities=jax.tree.map(
    lambda s: jax.random.normal(jax.random.PRNGKey(1), s.shape),
    state.sensitivities))
inputs = jax.random.normal(jax.random.PRNGKey(2), (3, 8, 33))
resets = jnp.zeros((3, 8), bool)
loss = lambda p, s, x, r: jnp.sum(rtrl_jax.rtrl(cell, p, s, x, r)[0] ** 2)
grad = jax.jit(jax.grad(loss))
batch = lambda axis: NamedSharding(mesh, P(*[None] * axis, "data"))
sharded = (jax.device_put(params, NamedSharding(mesh, P())),
           jax.device_put(state, jax.tree.map(lambda _: batch(0), state)),
           jax.device_put(inputs, batch(1)), jax.device_put(resets, batch(1)))
hlo = grad.lower(*sharded).compile().as_text()
print("ALL_GATHERS", hlo.count("all-gather("), "ALL_REDUCES",
      hlo.count("all-reduce("))
expected = grad(params, state, inputs, resets)
got = grad(*sharded)
print("WORST", max(float(np.max(np.abs(a - b)) / np.max(np.abs(b)))
                   for a, b in zip(jax.tree.leaves(got),
                                   jax.tree.leaves(expected))))
"""


def test_sharded_batch_keeps_sensitivities_sharded():
  """Batch split over 2 devices: no all-gather of S in the backward pass."""
  import os, subprocess, sys
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=root,
             XLA_FLAGS=os.environ.get("XLA_FLAGS", "")
             + " --xla_force_host_platform_device_count=2")
  result = subprocess.run([sys.executable, "-c", SHARDED_SCRIPT], env=env,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  counts = result.stdout.split("ALL_GATHERS")[1].split()
  assert counts[0] == "0", result.stdout
  assert int(counts[2]) > 0, result.stdout  # The partial sums are reduced.
  worst = float(result.stdout.split("WORST")[1].split()[0])
  assert worst < 1e-5, result.stdout


@pytest.mark.parametrize("segment_length", [1, 8, 64])
def test_negative_control_tbptt_differs_from_bptt(segment_length):
  """TBPTT drops the past: its recurrent gradients must be visibly wrong."""
  with jax.enable_x64(True):
    errors = oracle_errors(segment_length, method="tbptt")
  # The first segment has no past, so TBPTT is exact there; later segments not.
  assert max(jax.tree.leaves(errors[0])) <= 1e-8
  for per_leaf in errors[1:]:
    assert per_leaf["recurrent"]["Z"] > 1e-2 and per_leaf["recurrent"]["F"] > 1e-2
    # Read-out gradients do not depend on the past's parameters.
    assert max(jax.tree.leaves(per_leaf["readout"])) <= 1e-8


@dataclasses.dataclass(frozen=True)
class PrintedEquationELSTM(rtrl_jax.ELSTM):
  """eLSTM with the paper's printed eq. 8/11 (no w_z ⊙ ẑ in the decay)."""

  def update_sensitivities(self, recurrent_params, hidden, inputs,
                           sensitivities):
    no_wz = dict(recurrent_params, w_z=jnp.zeros_like(recurrent_params["w_z"]))
    # Gates with the true w_z, decay without it: patch z through b_z.
    shift = recurrent_params["w_z"] * hidden
    no_wz["b_z"] = recurrent_params["b_z"] + shift
    return super().update_sensitivities(no_wz, hidden, inputs, sensitivities)


def test_oracle_catches_the_incomplete_recursion():
  """The oracle is not vacuous: the paper's printed recursion fails it."""
  cell = PrintedEquationELSTM(HIDDEN, forget_bias=2.0, init_scale=0.5)
  with jax.enable_x64(True):
    errors = oracle_errors(3, cell=cell)
  assert max(jax.tree.leaves(errors[-1]["recurrent"])) > 1e-3


def test_finite_differences_confirm_bptt():
  """Central differences on a tiny cell agree with jax.grad through bptt."""
  with jax.enable_x64(True):
    cell = rtrl_jax.ELSTM(2, forget_bias=1.0, init_scale=0.5)
    _, params, inputs, resets, targets = make_problem(2, cell)
    state = cell.initial_state(params, BATCH)

    def loss(p):
      return per_step_loss(rtrl_jax.bptt(cell, p, state, inputs, resets)[0],
                           targets[..., :2])

    loss = jax.jit(loss)
    grad = jax.grad(loss)(params)
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    eps = 1e-6
    numeric = np.array([
        (loss(unravel(flat.at[i].add(eps))) - loss(unravel(flat.at[i].add(-eps))))
        / (2 * eps) for i in range(flat.size)])
    analytic = np.asarray(jax.flatten_util.ravel_pytree(grad)[0])
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("segment_length", [2, 5])
def test_rtrl_and_bptt_outputs_and_states_agree(segment_length):
  with jax.enable_x64(True):
    cell, params, inputs, resets, _ = make_problem(segment_length)
    state = cell.initial_state(params, BATCH)
    outs_rtrl, s_rtrl = rtrl_jax.rtrl(cell, params, state, inputs, resets)
    outs_bptt, s_bptt = rtrl_jax.bptt(cell, params, state, inputs, resets)
  np.testing.assert_array_equal(outs_rtrl, outs_bptt)
  jax.tree.map(np.testing.assert_array_equal, s_rtrl, s_bptt)


@pytest.mark.parametrize("method", ["rtrl", "bptt"])
def test_reset_replaces_the_state_before_the_step(method):
  """resets[t, b]: h and S are reset *before* step t, which still reads x(t).

  The BPTT oracle runs the same `_unroll`, so a reset applied at the wrong
  place (to step t's result, dropping x(t); or not to S) would be shared by
  rtrl and its oracle: checked here on the forward pass directly.
  """
  t, reset_example, other = 3, 0, 1
  run = getattr(rtrl_jax, method)
  with jax.enable_x64(True):
    cell, params, inputs, _, _ = make_problem(2)
    inputs = inputs[:6]
    resets = jnp.zeros(inputs.shape[:2], bool).at[t, reset_example].set(True)
    # A carried-in state with non-zero h and S (as after an earlier segment).
    state = rtrl_jax.rtrl(cell, params, cell.initial_state(params, BATCH),
                          inputs[::-1], jnp.zeros_like(resets))[1]
    assert float(jnp.abs(state.hidden[reset_example]).min()) > 0
    assert min(float(jnp.abs(s[reset_example]).max())
               for s in jax.tree.leaves(state.sensitivities)) > 0
    outputs, final = run(cell, params, state, inputs, resets)

    def changed(**kwargs):
      return run(cell, params, kwargs.get("state", state),
                 kwargs.get("inputs", inputs), resets)

    def example(tree, b):
      return jax.tree.map(lambda leaf: np.asarray(leaf[b]), tree)

    # Step t reads x(t) although it resets: outputs[t, b] depends on it.
    bumped, _ = changed(inputs=inputs.at[t, reset_example].add(0.5))
    assert float(jnp.abs(bumped[t, reset_example]
                         - outputs[t, reset_example]).max()) > 1e-3
    # Everything before the reset (inputs before t, the carried-in h and S)
    # is forgotten by b from step t on, bit for bit.
    random_state = jax.tree.map(
        lambda leaf: leaf + jax.random.normal(jax.random.PRNGKey(7), leaf.shape,
                                              leaf.dtype), state)
    # (Changed for every example, so that the control below can see it.)
    for kwargs in ({"inputs": inputs.at[:t].add(0.5)},
                   {"state": random_state}):
      new_outputs, new_final = changed(**kwargs)
      np.testing.assert_array_equal(new_outputs[t:, reset_example],
                                    outputs[t:, reset_example])
      jax.tree.map(np.testing.assert_array_equal,
                   example(new_final, reset_example),
                   example(final, reset_example))
      # Control: the example without a reset does see the change.
      assert float(jnp.abs(new_outputs[t:, other]
                           - outputs[t:, other]).max()) > 1e-6
    # Control: without a reset at t, x(t-1) reaches outputs[t].
    bumped, _ = changed(inputs=inputs.at[t - 1, other].add(0.5))
    assert float(jnp.abs(bumped[t, other] - outputs[t, other]).max()) > 1e-3


def test_sensitivities_equal_autodiff_jacobian():
  """S(T) = dc(T)/dθ_r: compare with jax.jacrev of the final cell state."""
  with jax.enable_x64(True):
    cell, params, inputs, resets, _ = make_problem(4)
    state = cell.initial_state(params, BATCH)
    _, final = rtrl_jax.rtrl(cell, params, state, inputs, resets)
    jac = jax.jacrev(
        lambda r: rtrl_jax.bptt(cell, dict(params, recurrent=r), state, inputs,
                                resets)[1].hidden)(params["recurrent"])
    # Element-wise cell: only the diagonal dc_i/dθ[i, ...] is non-zero.
    for name, s in final.sensitivities.items():
      full = jac[name]                         # [B, N, N, ...]
      diag = jnp.einsum("bii...->bi...", full)
      np.testing.assert_allclose(s, diag, rtol=1e-10, atol=1e-12)
      off_diagonal = full - jnp.einsum(
          "ij,bi...->bij...", jnp.eye(HIDDEN), diag)
      assert float(jnp.abs(off_diagonal).max()) == 0.0


def test_sensitivity_shapes_are_parameter_shapes_plus_batch():
  cell = rtrl_jax.ELSTM(7)
  params = cell.init(jax.random.PRNGKey(0), 3)
  state = cell.initial_state(params, 4)
  shapes = jax.tree.map(lambda s: s.shape, state.sensitivities)
  expected = jax.tree.map(lambda p: (4,) + p.shape, params["recurrent"])
  assert shapes == expected
  assert state.hidden.shape == (4, 7)
  assert cell.initial_state(params, 4, sensitivities=False).sensitivities is None


def test_gradient_without_advancing_sensitivities_is_the_same():
  with jax.enable_x64(True):
    cell, params, inputs, resets, targets = make_problem(3)
    state = rtrl_jax.rtrl(cell, params, cell.initial_state(params, BATCH),
                          inputs, resets)[1]

    def grad(advance):
      def loss(p):
        outputs, new_state = rtrl_jax.rtrl(cell, p, state, inputs, resets,
                                           advance_sensitivities=advance)
        return per_step_loss(outputs, targets), new_state
      return jax.grad(loss, has_aux=True)(params)

    (with_advance, advanced), (without, not_advanced) = grad(True), grad(False)
    assert not_advanced.sensitivities is None
    assert advanced.sensitivities is not None
    jax.tree.map(np.testing.assert_array_equal, with_advance, without)
    np.testing.assert_array_equal(advanced.hidden, not_advanced.hidden)


def test_state_gets_no_gradient_in_rtrl_but_does_in_bptt():
  with jax.enable_x64(True):
    cell, params, inputs, resets, targets = make_problem(3)
    state = cell.initial_state(params, BATCH)
    state = rtrl_jax.rtrl(cell, params, state, inputs, resets)[1]
    grad_state = lambda method: jax.grad(
        lambda s: per_step_loss(method(cell, params, s, inputs, resets)[0],
                                targets))(state)
    assert float(jnp.abs(grad_state(rtrl_jax.rtrl).hidden).max()) == 0.0
    assert float(jnp.abs(grad_state(rtrl_jax.bptt).hidden).max()) > 0.0


def test_input_gradient_is_exact_within_the_segment():
  with jax.enable_x64(True):
    cell, params, inputs, resets, targets = make_problem(4)
    state = rtrl_jax.rtrl(cell, params, cell.initial_state(params, BATCH),
                          inputs, resets)[1]
    grad_inputs = lambda method: jax.grad(
        lambda x: per_step_loss(method(cell, params, state, x, resets)[0],
                                targets))(inputs)
    np.testing.assert_allclose(grad_inputs(rtrl_jax.rtrl),
                               grad_inputs(rtrl_jax.bptt), rtol=1e-10)


def test_fully_online_learning_one_step_segments():
  """k=1: an optax update after every step; with the update skipped (lr=0)
  each step's gradient equals BPTT through the whole prefix."""
  with jax.enable_x64(True):
    cell, params, inputs, resets, targets = make_problem(3)
    optimizer = optax.sgd(0.0)

    @jax.jit
    def online_step(carry, step):
      params, opt_state, state = carry
      x, r, y = step
      def loss(p):
        outputs, new_state = rtrl_jax.rtrl(cell, p, state, x[None], r[None])
        return per_step_loss(outputs, y[None]), new_state
      grads, state = jax.grad(loss, has_aux=True)(params)
      updates, opt_state = optimizer.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state, state), grads

    carry = (params, optimizer.init(params), cell.initial_state(params, BATCH))
    _, online_grads = jax.lax.scan(online_step, carry, (inputs, resets, targets))
    truths = oracle.full_bptt_segment_gradients(
        cell, params, cell.initial_state(params, BATCH), inputs, resets,
        targets, per_step_loss, 1)
    for t, truth in enumerate(truths):
      got = jax.tree.map(lambda g: g[t], online_grads)
      assert max(jax.tree.leaves(oracle.relative_error(got, truth))) <= 1e-8


def test_works_under_jit_and_vmap_over_an_ensemble():
  cell = rtrl_jax.ELSTM(HIDDEN)
  keys = jax.random.split(jax.random.PRNGKey(0), 4)
  params = jax.vmap(lambda k: cell.init(k, INPUT_SIZE))(keys)
  inputs = jax.random.normal(keys[0], (4, 6, BATCH, INPUT_SIZE))
  resets = jnp.zeros((4, 6, BATCH), bool)
  states = jax.vmap(lambda p: cell.initial_state(p, BATCH))(params)

  def loss(p, s, x, r):
    return jnp.sum(rtrl_jax.rtrl(cell, p, s, x, r)[0] ** 2)

  batched = jax.jit(jax.vmap(jax.grad(loss)))(params, states, inputs, resets)
  for i in range(4):
    one = jax.tree.map(lambda a: a[i], (params, states))
    single = jax.jit(jax.grad(loss))(*one, inputs[i], resets[i])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a[i], b, rtol=2e-5,
                                                         atol=1e-7),
                 batched, single)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_dtype_is_kept(dtype):
  with jax.enable_x64(True):
    cell = rtrl_jax.ELSTM(HIDDEN)
    params = cell.init(jax.random.PRNGKey(0), INPUT_SIZE, dtype)
    state = cell.initial_state(params, BATCH)
    inputs = jnp.ones((3, BATCH, INPUT_SIZE), dtype)
    resets = jnp.zeros((3, BATCH), bool)
    outputs, new_state = jax.jit(rtrl_jax.rtrl, static_argnums=0)(
        cell, params, state, inputs, resets)
    grads = jax.grad(lambda p: jnp.sum(
        rtrl_jax.rtrl(cell, p, state, inputs, resets)[0]))(params)
  for leaf in jax.tree.leaves((outputs, new_state, grads)):
    assert leaf.dtype == dtype


def _grad_temp_bytes(segment_length, hidden=64, input_size=128, batch=8):
  cell = rtrl_jax.ELSTM(hidden)
  params = cell.init(jax.random.PRNGKey(0), input_size)
  state = cell.initial_state(params, batch)
  inputs = jnp.ones((segment_length, batch, input_size))
  resets = jnp.zeros((segment_length, batch), bool)

  def loss(p):
    outputs, new_state = rtrl_jax.rtrl(cell, p, state, inputs, resets)
    return jnp.sum(outputs ** 2), new_state

  compiled = jax.jit(jax.grad(loss, has_aux=True)).lower(params).compile()
  sensitivity_bytes = sum(s.nbytes for s in jax.tree.leaves(state.sensitivities))
  return compiled.memory_analysis().temp_size_in_bytes, sensitivity_bytes


def test_gradient_memory_does_not_store_per_step_sensitivities():
  short, sensitivity_bytes = _grad_temp_bytes(16)
  long, _ = _grad_temp_bytes(256)
  per_extra_step = (long - short) / (256 - 16)
  # Per step only O(B·N) activations may be kept: a tenth of one step's
  # sensitivities is far above that (B·N·D/10 vs. a few B·N).
  assert per_extra_step < 0.1 * sensitivity_bytes, (
      per_extra_step, sensitivity_bytes)


class TestBadInput:

  def setup_method(self):
    self.cell = rtrl_jax.ELSTM(HIDDEN)
    self.params = self.cell.init(jax.random.PRNGKey(0), INPUT_SIZE)
    self.state = self.cell.initial_state(self.params, BATCH)
    self.inputs = jnp.ones((3, BATCH, INPUT_SIZE))
    self.resets = jnp.zeros((3, BATCH), bool)

  def call(self, fn=rtrl_jax.rtrl, **overrides):
    args = dict(params=self.params, state=self.state, inputs=self.inputs,
                resets=self.resets)
    args.update(overrides)
    return fn(self.cell, **args)

  @pytest.mark.parametrize("fn", [rtrl_jax.rtrl, rtrl_jax.bptt])
  def test_inputs_rank(self, fn):
    with pytest.raises(ValueError, match=r"`inputs` must have shape \[T, B, D=4\]"):
      self.call(fn, inputs=jnp.ones((BATCH, INPUT_SIZE)))

  def test_inputs_feature_size(self):
    with pytest.raises(ValueError, match=r"`inputs`.*D=6 does not match"):
      self.call(inputs=jnp.ones((3, BATCH, 6)))

  def test_inputs_dtype(self):
    with pytest.raises(ValueError, match=r"`inputs` must be floating"):
      self.call(inputs=jnp.ones((3, BATCH, INPUT_SIZE), jnp.int32))

  @pytest.mark.parametrize("fn", [rtrl_jax.rtrl, rtrl_jax.bptt])
  def test_params_dtype(self, fn):
    with jax.enable_x64(True):
      inputs = self.inputs.astype(jnp.float64)
      # float32 params, float64 inputs: the first leaf (read-out) is named.
      with pytest.raises(ValueError, match=(
          r"^[a-z]+: `params\['readout'\]\['O'\]` has dtype float32, "
          r"expected float64 \(the dtype of `inputs`\)")):
        self.call(fn, inputs=inputs)
      # A recurrent leaf alone in another dtype is caught too.
      params = jax.tree.map(lambda a: a.astype(jnp.float64), self.params)
      params["recurrent"]["Z"] = self.params["recurrent"]["Z"]
      with pytest.raises(ValueError, match=(
          r"`params\['recurrent'\]\['Z'\]` has dtype float32, expected "
          r"float64")):
        self.call(fn, params=params, inputs=inputs,
                  state=self.cell.initial_state(params, BATCH))

  @pytest.mark.parametrize("argument", ["hidden", "sensitivities"])
  def test_state_dtype(self, argument):
    with jax.enable_x64(True):
      to64 = lambda tree: jax.tree.map(lambda a: a.astype(jnp.float64), tree)
      state = self.state._replace(
          **{argument: to64(getattr(self.state, argument))})
      with pytest.raises(ValueError) as error:
        self.call(state=state)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"rtrl: `state.{argument}")
    assert "has dtype float64, expected float32" in message

  def test_params_of_another_hidden_size(self):
    cell = rtrl_jax.ELSTM(HIDDEN + 2)  # params, state: ELSTM(HIDDEN).
    for state in (self.state, cell.initial_state(self.params, BATCH)):
      with pytest.raises(ValueError) as error:
        rtrl_jax.rtrl(cell, self.params, state, self.inputs, self.resets)
      message = str(error.value)
      assert "\n" not in message
      assert "`params['readout']['O']` has shape (5, 4)" in message
      assert "ELSTM(hidden_size=7).init on inputs of size 4 makes (7, 4)" in (
          message)

  def test_params_of_another_cell(self):
    with pytest.raises(ValueError, match=(
        r"`params` do not fit IndRNN\(hidden_size=5\): its input_size\(params\) "
        r"fails \(KeyError: 'W'\)")):
      rtrl_jax.bptt(rtrl_jax.CELLS["indrnn"](HIDDEN), self.params, self.state,
                    self.inputs, self.resets)
    # Same input_size, another parameter tree.
    params = dict(self.params, recurrent=dict(self.params["recurrent"]))
    del params["recurrent"]["w_z"]
    with pytest.raises(ValueError, match=(
        r"`params` has leaves .*, but ELSTM\(hidden_size=5\).init makes")):
      self.call(rtrl_jax.bptt, params=params,
                state=self.cell.initial_state(params, BATCH))

  def test_resets_shape(self):
    with pytest.raises(ValueError, match=r"`resets` must have shape \[T, B\]=\[3, 3\]"):
      self.call(resets=jnp.zeros((3,), bool))

  def test_resets_dtype(self):
    with pytest.raises(ValueError, match=r"`resets` must be bool, got float32"):
      self.call(resets=jnp.zeros((3, BATCH)))

  def test_state_batch(self):
    with pytest.raises(ValueError, match=r"`state.hidden` must have shape"):
      self.call(state=self.cell.initial_state(self.params, BATCH + 1))

  def test_sensitivity_shapes(self):
    other = self.cell.init(jax.random.PRNGKey(0), INPUT_SIZE + 1)
    with pytest.raises(ValueError, match=r"`state.sensitivities` must have shape"):
      self.call(state=self.cell.initial_state(other, BATCH))

  def test_rtrl_needs_sensitivities(self):
    with pytest.raises(ValueError, match=r"`state.sensitivities` is None"):
      self.call(state=self.cell.initial_state(self.params, BATCH, False))

  def test_hidden_size(self):
    with pytest.raises(ValueError, match=r"hidden_size must be a positive int, got 0"):
      rtrl_jax.ELSTM(0)


# ---- the eLSTM's sensitivities advanced in one pass per segment -----------

def _step_by_step(cell, params, state, inputs, resets):
  """S(T) by the per-step recursion, `cell.update_sensitivities` (numpy loop)."""
  recurrent = params["recurrent"]
  hidden, sens = state.hidden, state.sensitivities
  zero = cell.zero_sensitivities(params)
  step = jax.vmap(cell.update_sensitivities, in_axes=(None, 0, 0, 0))
  transition = jax.vmap(cell.transition, in_axes=(None, 0, 0))
  for t in range(inputs.shape[0]):
    hidden = rtrl_jax.reset_where(resets[t], cell.initial_hidden(params),
                                  hidden)
    sens = rtrl_jax.reset_where(resets[t], zero, sens)
    sens = step(recurrent, hidden, inputs[t], sens)
    hidden = transition(recurrent, hidden, inputs[t])
  return sens


@pytest.mark.parametrize("steps,most,width", [
    (1, 4, 64), (2, 4, 64), (7, 4, 64), (9, 4, 64), (17, 16, 64),
    (17, 16, 0), (23, None, 64)])
def test_one_pass_advance_equals_the_per_step_recursion(steps, most, width,
                                                        monkeypatch):
  """`rtrl`'s new_state.sensitivities (one pass over S, `sensitivity_factors`)
  equal the per-step recursion from a random S(0), with resets at the first
  and at a later step, in float64."""
  cell = rtrl_jax.ELSTM(HIDDEN, forget_bias=1.0, init_scale=0.5)
  # Chunks: 7 steps as 7 x 1, 9 as 3 x 3, 17 as 16 + a remainder of 1. The
  # 16-step chunk is summed elementwise (x(t) narrower than `width`) or, with
  # width 0, by the einsum. With the defaults (most None), 23 steps of a
  # narrow x(t) run as 2 x 10 + 3 (NARROW_INPUT_STEPS). Chunks of up to
  # UNROLLED_STEPS = 8 steps run unrolled, those of 10 and 16 as loops.
  if most is not None:
    monkeypatch.setattr(rtrl_jax.core, "ONE_PASS_STEPS", most)
    monkeypatch.setattr(rtrl_jax.core, "NARROW_INPUT_STEPS", most)
  monkeypatch.setattr(rtrl_jax.core, "ELEMENTWISE_WIDTH", width)
  with jax.enable_x64(True):
    keys = jax.random.split(jax.random.PRNGKey(3), 4)
    params = cell.init(keys[0], INPUT_SIZE, jnp.float64)
    state = cell.initial_state(params, BATCH)
    leaves, treedef = jax.tree.flatten(state.sensitivities)
    state = state._replace(
        hidden=jax.random.normal(keys[1], state.hidden.shape, jnp.float64),
        sensitivities=treedef.unflatten([
            jax.random.normal(k, l.shape, jnp.float64)
            for k, l in zip(jax.random.split(keys[2], len(leaves)), leaves)]))
    inputs = jax.random.normal(keys[3], (steps, BATCH, INPUT_SIZE),
                               jnp.float64)
    resets = jnp.zeros((steps, BATCH), bool).at[0, 0].set(True)
    resets = resets.at[steps - 1, 1].set(steps > 1)
    outputs, new_state = jax.jit(functools.partial(rtrl_jax.rtrl, cell))(
        params, state, inputs, resets)
    expected = _step_by_step(cell, params, state, inputs, resets)
    bptt_outputs, bptt_state = rtrl_jax.bptt(
        cell, params, state._replace(sensitivities=None), inputs, resets)
  np.testing.assert_allclose(outputs, bptt_outputs, rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(new_state.hidden, bptt_state.hidden, rtol=1e-12,
                             atol=1e-12)
  for k in expected:
    np.testing.assert_allclose(new_state.sensitivities[k], expected[k],
                               rtol=1e-12, atol=1e-12, err_msg=k)


def test_forward_loop_does_not_touch_the_sensitivities(monkeypatch):
  """The compiled `rtrl` forward of the eLSTM has no [B, N, D] operation
  inside its time loop: S is read and written once per segment. (The loop
  forced: by default a segment this short runs unrolled, `UNROLLED_STEPS`.)"""
  monkeypatch.setattr(rtrl_jax.core, "UNROLLED_STEPS", 0)
  cell = rtrl_jax.ELSTM(6)
  params = cell.init(jax.random.PRNGKey(0), 7)
  state = cell.initial_state(params, 5)
  inputs, resets = jnp.zeros((4, 5, 7)), jnp.zeros((4, 5), bool)
  hlo = jax.jit(functools.partial(rtrl_jax.rtrl, cell)).lower(
      params, state, inputs, resets).compile().as_text()
  bodies = [block for block in hlo.split("\n\n") if "while/body" in block
            and "ENTRY" not in block]
  assert bodies, "no while loop body found"
  assert not any("f32[5,6,7]" in block for block in bodies), (
      "a [B, N, D] operation inside the time loop")


def test_a_subclass_with_its_own_recursion_is_advanced_step_by_step():
  """A subclass that overrides update_sensitivities (not the factors) gets
  its own recursion, not the parent's factored one."""
  assert rtrl_jax.core._factors_of(rtrl_jax.ELSTM(3)) is not None
  assert rtrl_jax.core._factors_of(PrintedEquationELSTM(3)) is None
  assert rtrl_jax.core._factors_of(rtrl_jax.IndRNN(3)) is None


def test_rtrl_gradient_equals_bptt_with_the_advance_in_chunks(monkeypatch):
  """Segments of 8 steps advanced in chunks of 3, 3 and 2: still exact."""
  monkeypatch.setattr(rtrl_jax.core, "ONE_PASS_STEPS", 3)
  monkeypatch.setattr(rtrl_jax.core, "NARROW_INPUT_STEPS", 3)
  with jax.enable_x64(True):
    errors = oracle_errors(8)
  assert max(max(jax.tree.leaves(per_leaf)) for per_leaf in errors) <= 1e-8


def test_chunk_steps():
  core = rtrl_jax.core
  assert [core._chunk_steps(t, 64) for t in (1, 7, 64, 100, 1000, 1024, 97)
          ] == [1, 7, 64, 50, 50, 64, 64]
  assert [core._chunk_steps(t, 10) for t in (5, 64, 100, 97)] == [5, 8, 10, 10]


@pytest.mark.parametrize("method", [rtrl_jax.rtrl, rtrl_jax.bptt])
def test_batch_major_inputs_are_named_as_such(method):
  cell = rtrl_jax.ELSTM(8)
  params = cell.init(jax.random.PRNGKey(0), 3)
  state = cell.initial_state(params, 4)
  with pytest.raises(ValueError, match=r"`inputs` of shape \(4, 5, 3\) looks "
                     r"batch-major \[B=4, T=5, D\]") as error:
    method(cell, params, state, jnp.zeros((4, 5, 3)), jnp.zeros((4, 5), bool))
  assert "\n" not in str(error.value)


def test_numpy_float64_inputs_are_converted_as_jax_converts_them():
  """With x64 off, NumPy float64 inputs become float32 like everywhere in
  JAX, and give the same outputs as float32 inputs."""
  cell = rtrl_jax.ELSTM(8)
  params = cell.init(jax.random.PRNGKey(0), 3)
  state = cell.initial_state(params, 4)
  inputs = np.random.default_rng(0).normal(size=(5, 4, 3))
  resets = np.zeros((5, 4), bool)
  with jax.enable_x64(False):
    got, _ = rtrl_jax.rtrl(cell, params, state, inputs, resets)
    want, _ = rtrl_jax.rtrl(cell, params, state,
                            jnp.asarray(inputs, jnp.float32),
                            jnp.asarray(resets))
  assert got.dtype == jnp.float32
  np.testing.assert_array_equal(got, want)
