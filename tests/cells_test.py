"""The BPTT-oracle suite for every registered cell and the exact two-layer stack.

For each model (every entry of `rtrl_jax.CELLS`, plus `ExactTwoLayer`), in
float64: a sequence of 48 steps with per-step losses, random resets and one
reset exactly on a segment boundary for every segment length, is cut into
segments of length 1, 2, 3, 5, 8 and 16 (≥ 3 segments each, state carried;
1, 5 and 16 for the exact stack, the slowest to compile, and for `VARIANTS`,
cells with non-default options: IndRNN and LinearTransformer with ReLU, a
QRNN of window 1).
RTRL's gradient of each segment's loss must equal the true one (BPTT through
the whole sequence) for every parameter leaf to 1e-8 relative error; TBPTT
must not (negative control). All gradients of one model are one compiled
program (see `oracle_results`), to keep the suite fast.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rtrl_jax
from rtrl_jax import oracle
from rtrl_jax.cells.indrnn import IndRNN
from rtrl_jax.cells.linear_transformer import LinearTransformer
from rtrl_jax.cells.lru import DiagonalLRU
from rtrl_jax.cells.lstm import LSTM
from rtrl_jax.cells.multilayer import ExactTwoLayer
from rtrl_jax.cells.qrnn import QRNN

TOTAL, BATCH, INPUT_SIZE = 48, 3, 3
SEGMENT_LENGTHS = (1, 2, 3, 5, 8, 16)
# The exact two-layer stack is the slowest to compile; a subset of lengths.
STACK_SEGMENT_LENGTHS = (1, 5, 16)
TBPTT_SEGMENT_LENGTH = 3
# (step, example) resets that sit exactly on a segment boundary: 24 for
# lengths 1, 2, 3, 8; 40 for 5; 32 for 16 (and 1, 2, 8).
BOUNDARY_RESETS = ((24, 0), (40, 1), (32, 2))

# Hyper-parameters with long memory, so that the part of the gradient that
# crosses segments is large enough to see. Cells not listed use defaults.
CELL_KWARGS = {
    "elstm": dict(forget_bias=2.0, init_scale=0.5),
    "qrnn": dict(window=3, forget_bias=2.0),
    "lru": dict(r_min=0.8, r_max=0.95),
    "linear_transformer": dict(key_size=3, num_heads=2),
}


# Non-default cell options, through the oracle too (fewer segment lengths).
VARIANTS = {
    "indrnn_relu": ("indrnn", dict(activation="relu")),
    "qrnn_window_1": ("qrnn", dict(window=1, forget_bias=2.0)),
    "linear_transformer_relu": ("linear_transformer",
                                dict(feature_map="relu", key_size=None)),
}


def make_model(name):
  if name == "exact_two_layer":
    layer = lambda: rtrl_jax.ELSTM(3, forget_bias=2.0, init_scale=0.5)
    return ExactTwoLayer(lower=layer(), upper=layer())
  name, kwargs = VARIANTS.get(name, (name, CELL_KWARGS.get(name, {})))
  hidden = 2 if name == "linear_transformer" else 3
  return rtrl_jax.CELLS[name](hidden, **kwargs)


MODEL_NAMES = list(rtrl_jax.CELLS) + ["exact_two_layer"]
ORACLE_NAMES = MODEL_NAMES + list(VARIANTS)


def segment_lengths(name):
  if name == "exact_two_layer" or name in VARIANTS:
    return STACK_SEGMENT_LENGTHS
  return SEGMENT_LENGTHS


def per_step_loss(outputs, targets):
  """Σ_t L(t), a non-linear loss at every step (the same at every step, so a
  segment's loss is the sum of its steps' losses)."""
  return jnp.sum(jnp.tanh(outputs - targets) ** 2)


def make_problem(model, seed=0, dtype=jnp.float64):
  keys = jax.random.split(jax.random.PRNGKey(seed), 4)
  params = model.init(keys[0], INPUT_SIZE, dtype)
  inputs = jax.random.normal(keys[1], (TOTAL, BATCH, INPUT_SIZE), dtype)
  resets = jax.random.bernoulli(keys[2], 0.03, (TOTAL, BATCH))
  resets = resets.at[0].set(False)
  for step, example in BOUNDARY_RESETS:
    resets = resets.at[step, example].set(True)
  state = model.initial_state(params, BATCH)
  outputs, _ = jax.eval_shape(
      lambda p: rtrl_jax.bptt(model, p, state, inputs, resets), params)
  targets = jax.random.normal(keys[3], outputs.shape, dtype)
  return params, state, inputs, resets, targets


def prefix_length(segment_length):
  return segment_length * (TOTAL // segment_length)


# Compiling is most of this suite's time.
FAST_COMPILE = oracle.FAST_CPU_COMPILE


@functools.partial(jax.jit, static_argnums=(0, 1),
                   compiler_options=FAST_COMPILE)
def _all_gradients(model, lengths, params, state, inputs, resets, targets):
  """True per-step gradients, RTRL for every segment length, TBPTT for one.

  The true gradient of a segment's loss is the sum of its steps' gradients
  (per-step losses), and a step's gradient depends only on the steps before
  it, so one full-length BPTT Jacobian serves every segment length.
  """
  truth = oracle.full_bptt_segment_gradients(
      model, params, state, inputs, resets, targets, per_step_loss, 1)
  truth = jax.tree.map(lambda *g: jnp.stack(g), *truth)
  rtrl_grads = {}
  for length in lengths:
    t = prefix_length(length)
    rtrl_grads[length], _ = oracle.segment_gradients(
        "rtrl", model, params, state, inputs[:t], resets[:t], targets[:t],
        per_step_loss, length)
  t = prefix_length(TBPTT_SEGMENT_LENGTH)
  tbptt_grads, _ = oracle.segment_gradients(
      "tbptt", model, params, state, inputs[:t], resets[:t], targets[:t],
      per_step_loss, TBPTT_SEGMENT_LENGTH)
  return truth, rtrl_grads, tbptt_grads


def oracle_results(name):
  model = make_model(name)
  with jax.enable_x64(True):
    problem = make_problem(model)
    return problem, jax.device_get(
        _all_gradients(model, segment_lengths(name), *problem))


def segment_truths(per_step_truth, segment_length):
  """Per-segment true gradients: sums of the per-step ones."""
  count = TOTAL // segment_length
  return [jax.tree.map(
      lambda g, k=k: g[k * segment_length:(k + 1) * segment_length].sum(0),
      per_step_truth) for k in range(count)]


def leaf_errors(estimates, truths):
  """[(segment, leaf path, relative error)] for every segment and leaf."""
  errors = []
  with jax.enable_x64(True):  # Float64 arithmetic for the comparison too.
    for k, (estimate, truth) in enumerate(zip(estimates, truths)):
      for path, err in jax.tree_util.tree_flatten_with_path(
          oracle.relative_error(estimate, truth))[0]:
        errors.append((k, jax.tree_util.keystr(path), float(err)))
  return errors


@pytest.mark.parametrize("name", ORACLE_NAMES)
def test_bptt_oracle(name):
  """RTRL equals BPTT for every leaf, segment and segment length; TBPTT not.

  One test per model (not per length): all lengths share one compiled
  program, which parallel test workers would otherwise each compile.
  """
  _, (truth, rtrl_grads, tbptt_grads) = oracle_results(name)
  n_leaves = len(jax.tree.leaves(truth))
  for length in segment_lengths(name):
    estimates = rtrl_grads[length]
    assert len(estimates) >= 3
    errors = leaf_errors(estimates, segment_truths(truth, length))
    assert len(errors) == len(estimates) * n_leaves
    for k, path, err in errors:
      assert err <= 1e-8, (
          f"{name}, segment length {length}: segment {k}, leaf {path}: "
          f"rel. error {err}")
  # Negative control. The first segment has no past, so TBPTT is exact there.
  errors = leaf_errors(tbptt_grads,
                       segment_truths(truth, TBPTT_SEGMENT_LENGTH))
  assert max(err for k, _, err in errors if k == 0) <= 1e-8
  later = [err for k, path, err in errors if k > 0 and "recurrent" in path]
  assert max(later) > 1e-3, f"{name}: TBPTT matches BPTT; the test is vacuous"


@pytest.mark.parametrize("name", ORACLE_NAMES)
def test_the_oracle_problem_resets_on_and_inside_segments(name):
  """The resets `test_bptt_oracle` differentiates through (the problem's own
  array, not the constants that seed it) fall exactly on a segment boundary
  and strictly inside a segment, within the tested prefix, for every
  segment length tested on this model, and reset different examples.
  (Moving BOUNDARY_RESETS one step off the boundaries fails it.)"""
  with jax.enable_x64(True):
    _, _, _, resets, _ = make_problem(make_model(name))
  steps, examples = np.nonzero(np.asarray(resets))
  for length in segment_lengths(name):
    tested = steps < prefix_length(length)
    on_boundary = tested & (steps % length == 0) & (steps > 0)
    inside = tested & (steps % length != 0)
    assert on_boundary.any(), (name, length)
    assert length == 1 or inside.any(), (name, length)   # 1: all boundaries
    assert len(set(examples[tested])) > 1, (name, length)


@dataclasses.dataclass(frozen=True)
class QRNNWithoutDecay(QRNN):
  """A wrong QRNN: sensitivities without the decay by f (inputs-only gates)."""

  def update_sensitivities(self, recurrent_params, hidden, inputs,
                           sensitivities):
    fresh = jax.tree.map(jnp.zeros_like, sensitivities)
    return super().update_sensitivities(recurrent_params, hidden, inputs, fresh)


def test_oracle_catches_sensitivities_without_the_forget_decay():
  model = QRNNWithoutDecay(3, window=3, forget_bias=2.0)
  length = 8

  @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
  def gradients(params, state, inputs, resets, targets):
    estimates, _ = oracle.segment_gradients(
        "rtrl", model, params, state, inputs, resets, targets, per_step_loss,
        length)
    truths = oracle.full_bptt_segment_gradients(
        model, params, state, inputs, resets, targets, per_step_loss, length)
    return estimates, truths

  with jax.enable_x64(True):
    estimates, truths = gradients(*make_problem(model))
  assert max(err for _, _, err in leaf_errors(estimates, truths)) > 1e-3


@pytest.mark.parametrize("name", ORACLE_NAMES)
def test_sensitivities_contract_to_the_autodiff_vjp(name):
  """After a few steps, (dL/dh)ᵀ S equals the VJP of h(t) w.r.t. θ_r."""
  model = make_model(name)
  steps = 4

  @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
  def contracted_and_vjp(params, xs):
    def unroll(recurrent):
      hidden = model.initial_hidden(params)
      for x in xs:
        hidden = model.transition(recurrent, hidden, x)
      return hidden

    hidden, sens = model.initial_hidden(params), model.zero_sensitivities(params)
    for x in xs:
      sens = model.update_sensitivities(params["recurrent"], hidden, x, sens)
      hidden = model.transition(params["recurrent"], hidden, x)
    # A different cotangent per hidden leaf, so that a contraction that mixes
    # up leaves (LRU's re/im, the stack's h1/h2) cannot pass.
    leaves, treedef = jax.tree.flatten(hidden)
    cotangent = jax.tree.unflatten(treedef, [
        jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(3), i),
                          h.shape, h.dtype) for i, h in enumerate(leaves)])
    if name == "exact_two_layer":  # y¹ is never read by the transition.
      cotangent["y1"] = jnp.zeros_like(cotangent["y1"])
    truth = jax.vjp(unroll, params["recurrent"])[1](cotangent)[0]
    return model.contract_sensitivities(cotangent, sens), truth

  with jax.enable_x64(True):
    params = model.init(jax.random.PRNGKey(1), INPUT_SIZE, jnp.float64)
    xs = jax.random.normal(jax.random.PRNGKey(2), (steps, INPUT_SIZE),
                           jnp.float64)
    got, truth = contracted_and_vjp(params, xs)
    errors = oracle.relative_error(got, truth)
  assert jax.tree.structure(got) == jax.tree.structure(params["recurrent"])
  for path, err in jax.tree_util.tree_flatten_with_path(errors)[0]:
    assert float(err) <= 1e-12, f"{name} {jax.tree_util.keystr(path)}: {err}"


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_rtrl_and_bptt_forward_agree_under_jit_vmap_and_dtype(name):
  """Same outputs and states from `rtrl` and `bptt`, in float64 and float32,
  under jit; vmap over an ensemble of parameters matches one-by-one runs."""
  model = make_model(name)
  with jax.enable_x64(True):
    problem64 = make_problem(model)
    to_float32 = lambda tree: jax.tree.map(
        lambda a: a.astype(jnp.float32) if a.dtype == jnp.float64 else a, tree)
    problems = {"float64": problem64, "float32": to_float32(problem64)}
    params64, state64, inputs64, resets, _ = problem64
    other = model.init(jax.random.PRNGKey(7), INPUT_SIZE, jnp.float64)
    ensemble = jax.tree.map(lambda a, b: jnp.stack([a, b]), params64, other)

    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    def run(problems, ensemble):
      results = {}
      for dtype, (params, state, inputs, resets, _) in problems.items():
        results[dtype] = (
            rtrl_jax.rtrl(model, params, state, inputs, resets),
            rtrl_jax.bptt(model, params, state, inputs, resets))
      vmapped = jax.vmap(lambda p: rtrl_jax.rtrl(
          model, p, state64, inputs64, resets)[0])(ensemble)
      return results, vmapped

    results, vmapped = run(problems, ensemble)
  for dtype, (by_rtrl, by_bptt) in results.items():
    tol = 1e-5 if dtype == "float32" else 1e-12
    assert by_rtrl[0].shape[:2] == (TOTAL, BATCH)
    for a, b in zip(jax.tree.leaves(by_rtrl), jax.tree.leaves(by_bptt)):
      assert a.dtype == dtype and b.dtype == dtype
      np.testing.assert_allclose(a, b, rtol=tol, atol=tol)
  by_rtrl64 = results["float64"][0][0]
  np.testing.assert_allclose(vmapped[0], by_rtrl64, rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(  # float32 follows float64.
      results["float32"][0][0], by_rtrl64, rtol=1e-3, atol=1e-3)
  assert not np.allclose(vmapped[1], by_rtrl64)  # The members differ.


def _python_loop(model, params, state, inputs, resets):
  """y(1..T) and h(T) by h(t) = transition(h(t-1), x(t)) and y(t) =
  readout(h(t), x(t)), one example and one step at a time."""
  outputs, hidden = [], []
  for b in range(inputs.shape[1]):
    h = jax.tree.map(lambda leaf: leaf[b], state.hidden)
    ys = []
    for t in range(inputs.shape[0]):
      if resets[t, b]:
        h = model.initial_hidden(params)
      h = model.transition(params["recurrent"], h, inputs[t, b])
      ys.append(model.readout(params["readout"], h, inputs[t, b]))
    outputs.append(jnp.stack(ys))
    hidden.append(h)
  return (jnp.stack(outputs, 1),
          jax.tree.map(lambda *leaves: jnp.stack(leaves), *hidden))


@pytest.mark.parametrize("after_scan_ratio", [0, 4])
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_outputs_equal_a_python_loop_of_transition_and_readout(
    name, after_scan_ratio, monkeypatch):
  """`rtrl`'s and `bptt`'s outputs and last hidden state equal the cell's
  transition and read-out run step by step in Python (float64, with resets),
  with the read-out inside the scan (ratio 0) and where `core` puts it by
  default (after the scan for every model here: their states are small).
  The 7 steps run as a chunk of 5 and a remainder of 2 (`core._in_chunks`)."""
  monkeypatch.setattr(rtrl_jax.core, "READ_OUT_AFTER_SCAN_MAX_RATIO",
                      after_scan_ratio)
  monkeypatch.setattr(rtrl_jax.core, "ONE_PASS_STEPS", 5)
  monkeypatch.setattr(rtrl_jax.core, "NARROW_INPUT_STEPS", 5)
  model = make_model(name)
  steps = 7
  with jax.enable_x64(True):
    params, state, inputs, resets, _ = make_problem(model)
    inputs, resets = inputs[:steps], resets[:steps].at[3, 1].set(True)
    expected = _python_loop(model, params, state, inputs, resets)
    run = jax.jit(lambda method: method(model, params, state, inputs, resets),
                  static_argnums=0, compiler_options=FAST_COMPILE)
    for method in (rtrl_jax.rtrl, rtrl_jax.bptt):
      outputs, new_state = run(method)
      for got, want in zip(jax.tree.leaves((outputs, new_state.hidden)),
                           jax.tree.leaves(expected)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12,
                                   err_msg=method.__name__)


def test_the_read_out_waits_for_the_scan_unless_the_state_is_large():
  """After the scan where h(t) has at most READ_OUT_AFTER_SCAN_MAX_RATIO = 4
  times the numbers of y(t); inside it for a linear Transformer whose
  [H, d_v, d_k] state is d_k > 4 times its output."""
  cells = {rtrl_jax.ELSTM(8): True, LSTM(8): True, IndRNN(8): True,
           DiagonalLRU(8): True, QRNN(8, window=3): True,
           LinearTransformer(8, key_size=4, num_heads=2): True,
           LinearTransformer(8, key_size=5, num_heads=2): False,
           LinearTransformer(8): False}
  for cell, expected in cells.items():
    params = cell.init(jax.random.PRNGKey(0), INPUT_SIZE)
    assert rtrl_jax.core._reads_out_after_scan(
        cell, params, cell.initial_hidden(params),
        jnp.zeros(INPUT_SIZE)) == expected, cell


BAD_HYPERPARAMETERS = [
    (rtrl_jax.ELSTM, dict(hidden_size=3, init_scale=-1.0), "-1.0"),
    (rtrl_jax.ELSTM, dict(hidden_size=3, init_scale=0.0), "0.0"),
    (rtrl_jax.ELSTM, dict(hidden_size=3, forget_bias=float("nan")), "nan"),
    (rtrl_jax.ELSTM, dict(hidden_size=3, forget_bias="1"), "'1'"),
    (rtrl_jax.ELSTM, dict(hidden_size=2.5), "2.5"),
    (IndRNN, dict(hidden_size=3, activation="sigmoid"), "'sigmoid'"),
    (IndRNN, dict(hidden_size=3, u_init_max=1.5), "1.5"),
    (IndRNN, dict(hidden_size=3, u_init_max=0.0), "0.0"),
    (IndRNN, dict(hidden_size=0), "0"),
    (QRNN, dict(hidden_size=3, window=0), "0"),
    (QRNN, dict(hidden_size=3, window=2.0), "2.0"),
    (QRNN, dict(hidden_size=3, init_scale=-1.0), "-1.0"),
    (DiagonalLRU, dict(hidden_size=3, r_max=1.0), "1.0"),
    (DiagonalLRU, dict(hidden_size=3, r_min=0.9, r_max=0.5), "0.9"),
    (DiagonalLRU, dict(hidden_size=3, max_phase=float("nan")), "nan"),
    (LinearTransformer, dict(hidden_size=3, key_size=-2), "-2"),
    (LinearTransformer, dict(hidden_size=3, num_heads=True), "True"),
    (LinearTransformer, dict(hidden_size=3, feature_map="softmax"),
     "'softmax'"),
]


@pytest.mark.parametrize("cls,kwargs,value", BAD_HYPERPARAMETERS)
def test_bad_hyperparameters_get_a_one_line_error_naming_the_value(
    cls, kwargs, value):
  with pytest.raises(ValueError) as error:
    cls(**kwargs)
  message = str(error.value)
  assert "\n" not in message and value in message and cls.__name__ in message


@pytest.mark.parametrize("name", list(rtrl_jax.CELLS))
def test_init_rejects_a_bad_input_size(name):
  with pytest.raises(ValueError, match="input_size"):
    rtrl_jax.CELLS[name](3).init(jax.random.PRNGKey(0), 0)


@pytest.mark.parametrize("name", list(rtrl_jax.CELLS))
def test_every_cell_documents_equations_sensitivities_and_cost(name):
  import sys
  doc = sys.modules[rtrl_jax.CELLS[name].__module__].__doc__
  for word in ("Sensitivit", "Cost per example and step"):
    assert word in doc, f"{name}: module docstring lacks {word!r}"
