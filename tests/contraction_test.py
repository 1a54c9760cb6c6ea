"""The past-gradient contraction Σ_b λ_bᵀ S_b: per example on CPU, vectorised elsewhere.

`core._sum_over_batch` picks `_looped_sum` (one fused sum, or beyond
`core.ONE_SUM_EXAMPLES` examples a `lax.scan` over the batch) when
compiling for CPU and `_vectorised_sum` (the cell's batched contraction)
for any other platform. These tests prove, on the CPU that CI has:

* both give the same sum, and the same RTRL gradient through `rtrl`, for
  every cell of `rtrl_jax.CELLS` and the exact two-layer stack (float64,
  1e-10 relative);
* the program lowered for GPU (cuda, rocm) and TPU has no while loop whose
  trip count is the batch size (its only loops are the T-step scans over
  time), while the CPU lowering has one for a batch over
  `core.ONE_SUM_EXAMPLES` (negative control), so the dispatch is real and
  the check can see a batch loop.
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from core_test import SHARDED_SCRIPT

import rtrl_jax
from rtrl_jax import core
from rtrl_jax.cells.multilayer import ExactTwoLayer

INPUT_SIZE, STEPS = 3, 3
CELL_KWARGS = {
    "elstm": dict(forget_bias=2.0, init_scale=0.5),
    "qrnn": dict(window=2, forget_bias=2.0),
    "lru": dict(r_min=0.8, r_max=0.95),
    "linear_transformer": dict(key_size=3, num_heads=2),
}
MODEL_NAMES = list(rtrl_jax.CELLS) + ["exact_two_layer"]


def make_model(name):
  if name == "exact_two_layer":
    layer = lambda: rtrl_jax.ELSTM(3, forget_bias=2.0, init_scale=0.5)
    return ExactTwoLayer(lower=layer(), upper=layer())
  return rtrl_jax.CELLS[name](3, **CELL_KWARGS.get(name, {}))


def random_like(key, tree):
  """Standard normal leaves shaped like `tree`'s (shapes or arrays)."""
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(key, len(leaves))
  return treedef.unflatten([jax.random.normal(k, l.shape, l.dtype)
                            for k, l in zip(keys, leaves)])


def batched(tree, batch):
  return jax.tree.map(lambda l: jax.ShapeDtypeStruct((batch,) + l.shape,
                                                     l.dtype), tree)


def relative_error(got, expected):
  """max over leaves of max|got - expected| / max|expected|."""
  return max(float(np.max(np.abs(g - e)) / np.max(np.abs(e)))
             for g, e in zip(jax.tree.leaves(got), jax.tree.leaves(expected)))


def contraction_operands(cell, batch, seed=0, dtype=jnp.float64):
  """Random λ [B, hidden] and S [B, sensitivities] of `dtype`."""
  params = cell.init(jax.random.PRNGKey(seed), INPUT_SIZE, dtype)
  keys = jax.random.split(jax.random.PRNGKey(seed + 1))
  cotangent = random_like(keys[0], batched(jax.eval_shape(
      cell.initial_hidden, params), batch))
  sensitivities = random_like(keys[1], batched(jax.eval_shape(
      cell.zero_sensitivities, params), batch))
  return params, cotangent, sensitivities


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("batch, one_sum_examples", [
    (5, None), (12, 4), (19, 4)])
def test_looped_and_vectorised_sums_agree(name, batch, one_sum_examples,
                                          monkeypatch):
  """Both contractions equal Σ_b of the per-example contraction (numpy).
  The CPU sum adds 5 examples as one sum (up to `core.ONE_SUM_EXAMPLES`);
  with that bound set to 4, 12 in a loop of two iterations of 6 and 19 in
  19 of 1 (`core.EXAMPLES_PER_ITERATION`)."""
  if one_sum_examples is not None:
    monkeypatch.setattr(core, "ONE_SUM_EXAMPLES", one_sum_examples)
  cell = make_model(name)
  with jax.enable_x64(True):
    _, g, s = contraction_operands(cell, batch=batch)
    looped = jax.jit(functools.partial(core._looped_sum,
                                       cell.contract_sensitivities))(g, s)
    vectorised = jax.jit(functools.partial(core._vectorised_sum, cell))(g, s)
    per_example = [cell.contract_sensitivities(*jax.tree.map(
        lambda l: l[b], (g, s))) for b in range(batch)]
    reference = jax.tree.map(lambda *xs: np.sum(np.stack(xs), 0), *per_example)
    assert jax.tree.structure(vectorised) == jax.tree.structure(reference)
    assert relative_error(looped, reference) < 1e-12
    assert relative_error(vectorised, reference) < 1e-12


def segment_gradient(cell, params, inputs, resets, targets):
  """RTRL gradient of the second of two segments (S(0) ≠ 0 there)."""
  steps = inputs.shape[0] // 2
  state = cell.initial_state(params, inputs.shape[1])
  _, state = rtrl_jax.rtrl(cell, params, state, inputs[:steps],
                           resets[:steps])

  def loss(p):
    outputs, _ = rtrl_jax.rtrl(cell, p, state, inputs[steps:],
                               resets[steps:])
    return jnp.sum(jnp.tanh(outputs - targets) ** 2)

  return jax.jit(jax.grad(loss))(params)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_rtrl_gradient_is_the_same_on_both_paths(name, monkeypatch):
  """The whole `rtrl` gradient, with either contraction forced on CPU."""
  cell, batch = make_model(name), 4
  with jax.enable_x64(True):
    params = cell.init(jax.random.PRNGKey(0), INPUT_SIZE, jnp.float64)
    keys = jax.random.split(jax.random.PRNGKey(1), 3)
    inputs = jax.random.normal(keys[0], (2 * STEPS, batch, INPUT_SIZE),
                               jnp.float64)
    resets = jax.random.bernoulli(keys[1], 0.1, (2 * STEPS, batch))
    outputs = jax.eval_shape(lambda: rtrl_jax.rtrl(
        cell, params, cell.initial_state(params, batch), inputs[:STEPS],
        resets[:STEPS])[0])
    targets = jax.random.normal(keys[2], outputs.shape, jnp.float64)
    gradients = {}
    for path in ("looped", "vectorised"):
      looped = lambda c, g, s: core._looped_sum(c.contract_sensitivities, g, s)
      chosen = looped if path == "looped" else core._vectorised_sum
      monkeypatch.setattr(core, "_sum_over_batch", chosen)
      gradients[path] = segment_gradient(cell, params, inputs, resets,
                                         targets)
    monkeypatch.undo()
    recurrent = lambda grads: grads["recurrent"]
    past = jax.tree.map(lambda a, b: a - b, recurrent(gradients["looped"]),
                        recurrent(segment_gradient_without_past(
                            cell, params, inputs, resets, targets)))
  # The carried past is really in the gradient that is compared.
  assert max(float(np.max(np.abs(leaf))) for leaf in jax.tree.leaves(past)) > 1e-6
  assert relative_error(gradients["vectorised"], gradients["looped"]) < 1e-10


def segment_gradient_without_past(cell, params, inputs, resets, targets):
  """The same gradient with S(0) = 0 (TBPTT of the second segment)."""
  steps = inputs.shape[0] // 2
  state = cell.initial_state(params, inputs.shape[1])
  _, state = rtrl_jax.rtrl(cell, params, state, inputs[:steps],
                           resets[:steps])
  state = state._replace(sensitivities=jax.tree.map(jnp.zeros_like,
                                                    state.sensitivities))

  def loss(p):
    outputs, _ = rtrl_jax.rtrl(cell, p, state, inputs[steps:],
                               resets[steps:])
    return jnp.sum(jnp.tanh(outputs - targets) ** 2)

  return jax.jit(jax.grad(loss))(params)


_WHILE_TRIP_COUNT = re.compile(
    r"stablehlo\.while.*?cond \{\s*%\S+ = stablehlo\.constant dense<(\d+)> : "
    r"tensor<i\d+>\s*%\S+ = stablehlo\.compare\s+LT", re.DOTALL)


def while_trip_counts(text):
  """Trip counts of the `lax.scan`/`fori_loop` while loops in StableHLO text.

  Each such loop's condition compares its counter with a constant; every
  `stablehlo.while` must be of that form, or the test cannot vouch for it.
  """
  counts = [int(c) for c in _WHILE_TRIP_COUNT.findall(text)]
  assert len(counts) == text.count("stablehlo.while("), (
      "a while loop without a constant trip count")
  return counts


def lowered_gradient(cell, batch, platform):
  """StableHLO of jit(grad(rtrl loss)) lowered for `platform` (no compile)."""
  params = cell.init(jax.random.PRNGKey(0), INPUT_SIZE)
  state = cell.initial_state(params, batch)
  inputs = jnp.zeros((STEPS, batch, INPUT_SIZE))
  resets = jnp.zeros((STEPS, batch), bool)

  def loss(p):
    outputs, _ = rtrl_jax.rtrl(cell, p, state, inputs, resets)
    return jnp.sum(outputs ** 2)

  return jax.jit(jax.grad(loss)).trace(params).lower(
      lowering_platforms=(platform,)).as_text()


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_no_batch_loop_when_lowered_for_accelerators(name):
  """GPU/TPU: the same loops for B = 4 and B = 72, all over time (T = 3;
  none for the eLSTM, whose short segment runs unrolled,
  `core.UNROLLED_STEPS`). (The CPU lowering loops over B = 72: the negative
  control below.)"""
  cell = make_model(name)
  for platform in ("cuda", "rocm", "tpu"):
    small = while_trip_counts(lowered_gradient(cell, 4, platform))
    large = while_trip_counts(lowered_gradient(cell, 72, platform))
    assert small == large, (platform, small, large)
    assert set(large) <= {STEPS}, (platform, large)


@pytest.mark.parametrize("name", ["elstm", "linear_transformer"])
def test_negative_control_cpu_lowering_loops_over_the_batch(name):
  """CPU: B = 72 (over `core.ONE_SUM_EXAMPLES` = 64) adds the examples in a
  while loop of 9 iterations of `core.EXAMPLES_PER_ITERATION` = 8, which
  B = 40 (one sum) does not have; the check above can see such a loop."""
  assert (core.ONE_SUM_EXAMPLES, core.EXAMPLES_PER_ITERATION) == (64, 8)
  cell = make_model(name)
  small = while_trip_counts(lowered_gradient(cell, 40, "cpu"))
  large = while_trip_counts(lowered_gradient(cell, 72, "cpu"))
  assert 9 in large and 9 not in small, (small, large)
  assert sorted(small) == sorted(c for c in large if c != 9), (small, large)


def test_vectorised_contraction_is_one_op_per_leaf_for_the_elstm():
  """Off CPU the eLSTM's contraction lowers to one multiply and one reduce
  per sensitivity leaf: no gather, no dot, no loop."""
  cell = make_model("elstm")
  _, g, s = contraction_operands(cell, batch=64, dtype=jnp.float32)
  text = jax.jit(functools.partial(core._sum_over_batch, cell)).trace(
      g, s).lower(lowering_platforms=("cuda",)).as_text()
  leaves = len(jax.tree.leaves(s))
  assert "stablehlo.while" not in text
  assert text.count("stablehlo.reduce(") == leaves
  assert text.count("stablehlo.multiply") == leaves


CONTRACTION_CHECK = """
from experiments import benchmark_cells
rows = benchmark_cells.contraction_rows(batch=72, hidden=3, input_size=5,
                                        repeats=1)
assert [r["path"] for r in rows] == ["dispatched", "one sum", "looped",
                                     "vectorised"]
assert benchmark_cells.check_contraction(rows) == []
# On CPU the dispatched program is the loop (72 > core.ONE_SUM_EXAMPLES).
assert [r["while_loops"] for r in rows] == [1, 0, 1, 0]
wrong = [dict(r, relative_error=1e-3) if r["path"] == "vectorised" else r
         for r in rows]
assert "vectorised" in benchmark_cells.check_contraction(wrong)[0]
looping_gpu = [dict(r, backend="gpu") for r in rows]
assert "while loop" in benchmark_cells.check_contraction(looping_gpu)[0]
print("CHECKED")
"""


def test_benchmark_contraction_check_runs_and_can_fail():
  """benchmark_cells --contraction: every path agrees with the float64
  reference; the check flags a wrong sum and a loop off CPU. (In its own
  process: the script's absl flags must not meet another script's.)"""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from run_helpers import ROOT, script_environment  # pylint: disable=g-import-not-at-top
  result = subprocess.run([sys.executable, "-c", CONTRACTION_CHECK], cwd=ROOT,
                          env=script_environment(), capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "CHECKED" in result.stdout


def lowered_anakin_update(num_envs, platform):
  """StableHLO of one Anakin call (2 updates of M = 3 steps, eLSTM-8)."""
  import sys
  from run_helpers import ROOT
  sys.path.insert(0, ROOT)
  # pylint: disable=g-import-not-at-top
  from experiments.configs import r2ac as r2ac_configs
  from rtrl_jax.rl import from_config
  from rtrl_jax.rl import anakin
  config = r2ac_configs.get_config("default")
  config.network.hidden_size = 8
  config.network.encoder_sizes = [8]
  config.gradient = "rtrl"
  config.num_envs = num_envs
  config.unroll_length = 3
  config.updates_per_call = 2
  config.total_updates = 100
  train = from_config.anakin_system(config)
  example = jax.eval_shape(train.init, jax.random.PRNGKey(0))
  return jax.jit(train.step.__wrapped__).trace(example).lower(
      lowering_platforms=(platform,)).as_text()


def test_anakin_update_has_no_batch_loop_off_cpu():
  """The whole Anakin call (acting, learner, V-trace, optimizer) lowered for
  cuda: the same loops for B = 4 and B = 72 (all over updates and time); the
  CPU lowering of the same call has a loop of trip count B / 8 (control:
  over `core.ONE_SUM_EXAMPLES` = 64 the CPU sum loops over groups of
  `core.EXAMPLES_PER_ITERATION` = 8, so B = 72 gives 9, B = 80 10)."""
  small = sorted(while_trip_counts(lowered_anakin_update(4, "cuda")))
  large = sorted(while_trip_counts(lowered_anakin_update(72, "cuda")))
  assert small == large and 9 not in large, (small, large)
  assert 9 in while_trip_counts(lowered_anakin_update(72, "cpu"))
  assert 10 in while_trip_counts(lowered_anakin_update(80, "cpu"))


# core_test's sharded-gradient script with the accelerator branch forced on
# these CPU devices.
SHARDED_VECTORISED_SCRIPT = SHARDED_SCRIPT.replace(
    "mesh = Mesh(", "from rtrl_jax import core\n"
    "core._sum_over_batch = core._vectorised_sum\nmesh = Mesh(", 1)
assert "core._vectorised_sum" in SHARDED_VECTORISED_SCRIPT


def test_vectorised_contraction_keeps_a_sharded_batch_sharded():
  """The accelerator branch with B split over 2 devices: partial sums and an
  all-reduce, no all-gather of S; the same gradient as on one device."""
  import os, subprocess, sys  # pylint: disable=g-import-not-at-top
  from run_helpers import ROOT
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT,
             XLA_FLAGS=os.environ.get("XLA_FLAGS", "")
             + " --xla_force_host_platform_device_count=2")
  result = subprocess.run([sys.executable, "-c", SHARDED_VECTORISED_SCRIPT],
                          env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  counts = result.stdout.split("ALL_GATHERS")[1].split()
  assert counts[0] == "0", result.stdout
  assert int(counts[2]) > 0, result.stdout
  assert float(result.stdout.split("WORST")[1].split()[0]) < 1e-5, result.stdout
