r"""Running a cell over a segment: `rtrl` (exact, untruncated) and `bptt`.

Both take `inputs` [T, B, D], `resets` [T, B] (True at t: h and S are reset to
their initial value before step t) and a `RecurrentState`, and return
`(outputs [T, B, H], new_state)`. Their forward passes are identical; only the
gradient that `jax.grad` sees differs.

How `rtrl` gets the exact gradient. With e(t) = ∂L(t)/∂h(t) the *direct*
partial (through the read-out only) and S(t) = dh(t)/dθ_r, RTRL's gradient is

    ∇θ_r = Σ_t e(t)ᵀ S(t),   S(t) = J(t) S(t-1) + I(t),   J(t) = ∂h(t)/∂h(t-1).

Unrolling S inside the segment t = 1..T, starting from the carried S(0):

    Σ_t e(t)ᵀ S(t) = λ(0)ᵀ S(0) + Σ_{τ=1..T} λ(τ)ᵀ I(τ),
    λ(T) = e(T),   λ(τ) = e(τ) + J(τ+1)ᵀ λ(τ+1) (1 ≤ τ < T),   λ(0) = J(1)ᵀ λ(1)

(no e(0): h(0)'s own loss belonged to the previous segment). A reset before
step τ makes J(τ) = 0: h(τ-1) is replaced by its initial value and S(τ-1) by
zero, so S(τ) = I(τ), taken at the initial value. The second sum is ordinary
back-propagation within the segment; the first is the whole past, carried
forward by the sensitivities. So `rtrl` runs plain autodiff through the
segment and injects λ(0)ᵀ S(0) into θ_r's gradient at the segment's initial
state (λ(0) is the cotangent autodiff delivers there, zero past a reset).
The result equals RTRL's Σ e(t)ᵀ S(t) exactly, costs O(B·|θ_r| + T·B·N)
memory (no per-step sensitivities are stored), and the within-segment part
runs as matrix products. Meanwhile the forward pass advances S with the cell's closed-
form recursion, outside autodiff, so the next segment can carry on. Nothing
else crosses segments: the gradient with respect to `state` is zero.

`bptt` is plain autodiff through the segment, gradient to `state` included:
called segment by segment on a `stop_gradient`-ed state it is TBPTT, called on
the whole sequence it is full BPTT.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from rtrl_jax.cells.base import RecurrentState


def rtrl(cell, params, state, inputs, resets, advance_sensitivities=True):
  """Runs `cell` over a segment; `jax.grad` through it gives exact RTRL.

  Args:
    cell: a cell from `rtrl_jax.CELLS` (static, hashable).
    params: {"recurrent": ..., "readout": ...} from `cell.init`.
    state: `RecurrentState` with sensitivities (`cell.initial_state`).
    inputs: [T, B, D] floating, the dtype of every leaf of params and state.
    resets: [T, B] bool.
    advance_sensitivities: False skips the forward sensitivity recursion
      (O(T·B·|θ_r|) work) when only the gradient is wanted, e.g. a learner
      that recomputes an unroll whose next state the actor already has. The
      gradient is the same; `new_state.sensitivities` is then None.

  Returns:
    (outputs [T, B, H], new_state). Gradients: θ_r gets the RTRL gradient,
    untruncated into the past through `state.sensitivities`; θ_o and `inputs`
    get ordinary backprop within the segment; `state` gets zero.
  """
  inputs, resets = _as_arrays(inputs, resets)
  _check_arguments("rtrl", cell, params, state, inputs, resets)
  if state.sensitivities is None:
    raise ValueError(
        "rtrl: `state.sensitivities` is None; build the state with "
        "cell.initial_state(params, batch_size) (sensitivities=True)")
  hidden = _inject_past_gradient(cell, params["recurrent"], state.hidden,
                                 state.sensitivities)
  carried = state.sensitivities if advance_sensitivities else None
  return _unroll(cell, params, RecurrentState(hidden, carried), inputs, resets)


def bptt(cell, params, state, inputs, resets):
  """Runs `cell` over a segment; `jax.grad` through it is plain autodiff.

  Same signature and outputs as `rtrl`. Sensitivities in `state`, if any, are
  advanced too (outside autodiff) so the returned state stays valid for `rtrl`;
  pass a state made with `sensitivities=False` to skip that cost.
  """
  inputs, resets = _as_arrays(inputs, resets)
  _check_arguments("bptt", cell, params, state, inputs, resets)
  return _unroll(cell, params, state, inputs, resets)


def _as_arrays(inputs, resets):
  """NumPy (or list) inputs and resets as JAX arrays, converted as JAX
  converts them everywhere (float64 becomes float32 unless x64 is on)."""
  convert = lambda x: (jnp.asarray(x) if isinstance(x, (np.ndarray, list))
                       else x)
  return convert(inputs), convert(resets)


def _unroll(cell, params, state, inputs, resets):
  """The forward pass of `rtrl` and `bptt`: one scan over the T steps.

  Sensitivities, if tracked, are advanced outside autodiff: step by step
  with `cell.update_sensitivities`, or, for a cell with
  `sensitivity_factors` and T > 1, by `_unroll_factored`; the two are the
  same recursion.
  """
  factors = _factors_of(cell)
  if (state.sensitivities is not None and inputs.shape[0] > 1
      and factors is not None):
    # One step (an actor's) keeps the per-step update: already one pass.
    return _unroll_factored(cell, factors, params, state, inputs, resets)
  step_cell, outputs_of = _cell_step(cell, params, inputs)
  frozen_recurrent = jax.lax.stop_gradient(params["recurrent"])
  update_sensitivities = jax.vmap(cell.update_sensitivities,
                                  in_axes=(None, 0, 0, 0))
  zero_sensitivities = (None if state.sensitivities is None
                        else cell.zero_sensitivities(params))

  def step(carry, step_inputs):
    hidden, sensitivities = carry
    x, reset = step_inputs
    hidden, new_hidden, kept = step_cell(hidden, x, reset)
    if sensitivities is not None:
      sensitivities = reset_where(reset, zero_sensitivities, sensitivities)
      sensitivities = update_sensitivities(
          frozen_recurrent, jax.lax.stop_gradient(hidden), x, sensitivities)
    return (new_hidden, sensitivities), kept

  def chunk(carry, chunk_inputs):
    carry, kept = jax.lax.scan(step, carry, chunk_inputs)
    return carry, outputs_of(kept, chunk_inputs[0])

  sensitivities = (None if state.sensitivities is None
                   else jax.lax.stop_gradient(state.sensitivities))
  (hidden, sensitivities), outputs = _in_chunks(
      chunk, (state.hidden, sensitivities), inputs, resets)
  return outputs, RecurrentState(hidden, sensitivities)


def _cell_step(cell, params, inputs):
  """One batched step, and how the outputs come from what the scan keeps.

  Returns (step, outputs_of): step(h(t-1), x(t), reset(t)) -> (h(t-1) after
  the reset, h(t), kept(t)); outputs_of(kept [K, ...], inputs [K, B, D]) ->
  outputs [K, B, H], for the K steps of one chunk.

  The read-out is not in the recurrence, so where the scan can keep h(t)
  instead of y(t) for little memory (`_reads_out_after_scan`) it runs after
  the scan of each chunk of K steps (`_in_chunks`), over its K·B examples at
  once: K times larger matrix products, which XLA runs at a higher rate than
  K small per-step ones (docs/BENCHMARKS.md, "The read-out after the scan").
  Otherwise kept(t) is y(t), read out inside the step.
  """
  initial_hidden = cell.initial_hidden(params)
  transition = jax.vmap(cell.transition, in_axes=(None, 0, 0))
  read = jax.vmap(cell.readout, in_axes=(None, 0, 0))
  after_scan = _reads_out_after_scan(cell, params, initial_hidden, inputs[0, 0])

  def step(hidden, x, reset):
    hidden = reset_where(reset, initial_hidden, hidden)
    new_hidden = transition(params["recurrent"], hidden, x)
    kept = (new_hidden if after_scan
            else read(params["readout"], new_hidden, x))
    return hidden, new_hidden, kept

  def outputs_of(kept, inputs):
    if not after_scan:
      return kept
    return jax.vmap(read, in_axes=(None, 0, 0))(params["readout"], kept,
                                                inputs)

  return step, outputs_of


# The read-out waits for the end of a chunk's scan when one example's h(t)
# has at most this many times the numbers of its y(t): keeping h(t) for the
# chunk's steps then costs the same order of memory as their outputs. A fast-weight state
# (the linear Transformer's [H, d_v, d_k] matrices) is far larger, and is
# read out step by step.
READ_OUT_AFTER_SCAN_MAX_RATIO = 4


def _reads_out_after_scan(cell, params, hidden, x):
  """Whether `_cell_step` reads out after the scan (static: shapes only)."""
  output = jax.eval_shape(cell.readout, params["readout"], hidden, x)
  size = lambda tree: sum(math.prod(leaf.shape)
                         for leaf in jax.tree.leaves(tree))
  return size(hidden) <= READ_OUT_AFTER_SCAN_MAX_RATIO * size(output)


def _unroll_factored(cell, factors, params, state, inputs, resets):
  """`_unroll` for a cell whose recursion has `sensitivity_factors`:
  S_k(t) = d(t) ⊙ S_k(t-1) + a_k(t) ⊗ x(t), or + a_k(t) for a vector leaf.

  Vector leaves ([B, N]) are advanced in the scan, step by step (cheap).
  The outer-product leaves ([B, N, D], nearly all of S) are advanced once
  per chunk of up to ONE_PASS_STEPS steps, or NARROW_INPUT_STEPS for a
  narrow x(t) (`_advance_in_one_pass`, after the chunk's scan has collected
  d and the a_k), so S is read and written once per chunk instead of once
  per step.
  """
  step_cell, outputs_of = _cell_step(cell, params, inputs)
  frozen_recurrent = jax.lax.stop_gradient(params["recurrent"])
  outer = _outer_leaves(factors, frozen_recurrent,
                        cell.initial_hidden(params), inputs[0, 0])

  def factor_arrays(recurrent_params, hidden, x):
    decay, terms = factors(recurrent_params, hidden, x)
    return decay, {k: a for k, (a, _) in terms.items()}

  batched_factors = jax.vmap(factor_arrays, in_axes=(None, 0, 0))

  def step(carry, step_inputs):
    hidden, vectors = carry
    x, reset = step_inputs
    hidden, new_hidden, kept = step_cell(hidden, x, reset)
    decay, rows = batched_factors(frozen_recurrent,
                                  jax.lax.stop_gradient(hidden),
                                  jax.lax.stop_gradient(x))
    # A reset replaces S(t-1) by zero: the same as a zero decay.
    decay = jnp.where(reset[:, None], jnp.zeros_like(decay), decay)
    vectors = {k: decay * v + rows[k] for k, v in vectors.items()}
    matrix_rows = {k: a for k, a in rows.items() if outer[k]}
    return (new_hidden, vectors), (kept, (decay, matrix_rows))

  def chunk(carry, chunk_inputs):
    """K steps, then the outer-product leaves advanced over them."""
    hidden, vectors, matrices = carry
    (hidden, vectors), (kept, (decay, rows)) = jax.lax.scan(
        step, (hidden, vectors), chunk_inputs,
        unroll=chunk_inputs[0].shape[0] <= UNROLLED_STEPS)
    matrices = _advance_in_one_pass(
        matrices, jax.lax.stop_gradient(chunk_inputs[0]), decay, rows)
    return (hidden, vectors, matrices), outputs_of(kept, chunk_inputs[0])

  sensitivities = jax.lax.stop_gradient(state.sensitivities)
  carry = (state.hidden,
           {k: s for k, s in sensitivities.items() if not outer[k]},
           {k: s for k, s in sensitivities.items() if outer[k]})
  # A narrow x(t) is summed elementwise (`_advance_in_one_pass`), fastest
  # in short chunks; the einsum is fastest in long ones.
  most = (NARROW_INPUT_STEPS if inputs.shape[2] <= ELEMENTWISE_WIDTH
          else ONE_PASS_STEPS)
  (hidden, vectors, matrices), outputs = _in_chunks(chunk, carry, inputs,
                                                    resets, most)
  return outputs, RecurrentState(hidden, {**vectors, **matrices})


def _outer_leaves(factors, recurrent_params, hidden, x):
  """{leaf: True where its term is a_k ⊗ x(t)}, as `factors` declares it
  (static: read while tracing one step abstractly)."""
  outer = {}

  def declared(p, h, x):
    decay, terms = factors(p, h, x)
    outer.update({k: bool(is_outer) for k, (_, is_outer) in terms.items()})
    return decay

  jax.eval_shape(declared, recurrent_params, hidden, x)
  return outer


def _in_chunks(chunk, carry, inputs, resets, most=None):
  """`chunk` scanned over the T steps in chunks of K = `_chunk_steps(T, most)`
  (bounding what is kept per step, h(t) for the read-out and the factors of
  `_unroll_factored`, to [K, B, ...] arrays, not [T, B, ...]); the last
  chunk takes any remainder. Returns (carry, outputs [T, ...])."""
  steps = inputs.shape[0]
  size = _chunk_steps(steps, most or ONE_PASS_STEPS)
  full, rest = divmod(steps, size)
  if full == 1 and not rest:
    return chunk(carry, (inputs, resets))
  pieces = []
  if full:
    split = lambda a: a[:full * size].reshape((full, size) + a.shape[1:])
    carry, outputs = jax.lax.scan(chunk, carry, (split(inputs),
                                                 split(resets)))
    pieces.append(jax.tree.map(
        lambda a: a.reshape((full * size,) + a.shape[2:]), outputs))
  if rest:
    carry, outputs = chunk(carry, (inputs[full * size:],
                                   resets[full * size:]))
    pieces.append(outputs)
  outputs = (pieces[0] if len(pieces) == 1 else
             jax.tree.map(lambda *a: jnp.concatenate(a), *pieces))
  return carry, outputs


# Most steps per chunk (`_in_chunks`): per one-pass sensitivity advance
# (`_unroll_factored`: S is read and written once per chunk; the factors of
# one chunk, [K, B, N], are kept) and per read-out after the scan.
ONE_PASS_STEPS = 64
# A chunk of at most UNROLLED_STEPS steps runs its two scans (`_unroll_factored`'s
# factors, `_advance_in_one_pass`'s products R(t)) unrolled, without a loop:
# for the Anakin actor's 5-step advance the loops' overhead was a measurable
# part of what RTRL adds (docs/ANAKIN.md, "The learner before the advance").
UNROLLED_STEPS = 8
# `_advance_in_one_pass` sums the outer products elementwise (one fused pass
# over S) for chunks of up to ELEMENTWISE_STEPS steps or inputs of up to
# ELEMENTWISE_WIDTH features, and with one batched einsum otherwise: for a
# narrow x(t) the einsum's [2N, K] x [K, D] products run far below the
# CPU's matrix rate (docs/BENCHMARKS.md, "The read-out after the scan").
ELEMENTWISE_STEPS = 8
ELEMENTWISE_WIDTH = 64
# Most steps per chunk of `_unroll_factored` when x(t) has at most
# ELEMENTWISE_WIDTH features. The elementwise sum over K steps costs about
# one plain pass over S up to K ≈ 10 and runs slower per step beyond
# (docs/BENCHMARKS.md, "Short chunks for a narrow x(t)").
NARROW_INPUT_STEPS = 10


def _chunk_steps(steps, most):
  """K for `_in_chunks`: the largest divisor of T up to `most` (no remainder
  chunk: the outputs need no concatenation, the inputs no copy), unless that
  is under a quarter of `most` (T prime, say): then `most`, with a
  remainder chunk."""
  divisor = _largest_divisor(steps, most)
  return divisor if 4 * divisor >= most else min(steps, most)


def _largest_divisor(number, most):
  """The largest divisor of `number` that is at most `most`."""
  return next(k for k in range(min(number, most), 0, -1) if number % k == 0)


def _factors_of(cell):
  """`cell.sensitivity_factors` if it describes `cell.update_sensitivities`:
  None when a subclass overrides `update_sensitivities` below the class that
  defines the factors (its recursion is then another one)."""
  mro = type(cell).__mro__
  owner = lambda name: next((i for i, c in enumerate(mro) if name in vars(c)),
                            None)
  factors, update = owner("sensitivity_factors"), owner("update_sensitivities")
  if factors is None or (update is not None and factors > update):
    return None
  return cell.sensitivity_factors


def _advance_in_one_pass(sensitivities, inputs, decay, rows):
  r"""S(T) from S(0) and the T steps' factors, reading and writing S once.

  For a recursion S_k(t) = d(t) ⊙ S_k(t-1) + a_k(t) ⊗ x(t), d = 0 where a
  reset zeroes S(t-1), unrolling gives

      S_k(T) = P ⊙ S_k(0) + Σ_t R(t) ⊙ a_k(t) ⊗ x(t),
      P = Π_{t=1..T} d(t),   R(t) = Π_{j=t+1..T} d(j)   (R(T) = 1),

  exact in real arithmetic. The sum over t is one elementwise expression
  per leaf (short chunks or a narrow x(t)) or one batched matrix product
  ([K·N, T] x [T, D] per example, all leaves stacked), so S is read and
  written once per chunk instead of once per step; the products R(t)
  take one reverse scan over [B, N] vectors.

  Args:
    sensitivities: S(0), {leaf: [B, N, D]}.
    inputs: x, [T, B, D].
    decay: d, [T, B, N].
    rows: {leaf: a_k [T, B, N]}.
  """
  leaves = list(sensitivities)
  steps, _, width = inputs.shape
  elementwise = steps <= ELEMENTWISE_STEPS or width <= ELEMENTWISE_WIDTH
  unrolled = steps <= UNROLLED_STEPS
  # Unrolled, the scan's carry is not materialised, so P comes out of it
  # too: R(t)·d(t) at every step, P at step 1 (the comment below says why).
  emit_total = elementwise and unrolled

  def backwards(product, factors):    # R(t) = product, then R(t-1) = R(t)·d(t)
    if not elementwise:
      return product * factors, product
    d, a, x = factors
    return product * d, jnp.concatenate(
        [product * a[k] for k in leaves] + [x]
        + ([product * d] if emit_total else []), axis=1)

  total, emitted = jax.lax.scan(
      backwards, jnp.ones_like(decay[0]),
      (decay, rows, inputs) if elementwise else decay, reverse=True,
      unroll=unrolled)
  starts = np.cumsum([0] + [rows[k].shape[2] for k in leaves])
  if emit_total:
    total = emitted[0, :, starts[-1] + width:]
  out = {k: total[:, :, None] * s for k, s in sensitivities.items()}
  if elementwise:
    # P ⊙ S(0) + Σ_t (R(t) a_k(t)) ⊗ x(t) as one elementwise expression
    # that XLA can fuse into one pass over S; measured faster than the
    # einsum and its separate [B, N, D] sum for the Anakin actor's 5-step
    # unrolls (docs/ANAKIN.md) and for D = 33 (docs/BENCHMARKS.md). Its
    # operands, the weights R(t) a_k(t), x(t) and (unrolled) P, come out of
    # the reverse scan in one materialised [K, B, |leaves|·N + D (+ N)]
    # array: left as products and a slice of the chunk's inputs, XLA may
    # fuse them into the pass over S and recompute them for every element
    # of S (measured 3-5x slower at D = 33 for the weights; for P, in an
    # unrolled scan, the whole chain of d(t) from the gates: docs/ANAKIN.md,
    # "P out of the pass"). XLA:CPU drops `optimization_barrier`s before
    # fusing, so they cannot keep these apart.
    inputs = emitted[:, :, starts[-1]:starts[-1] + width]
    for i, k in enumerate(leaves):
      weighted = emitted[:, :, starts[i]:starts[i + 1]]
      for t in range(steps):
        out[k] = out[k] + weighted[t][:, :, None] * inputs[t][:, None, :]
    return out
  weighted = jnp.concatenate([emitted * rows[k] for k in leaves], axis=2)
  summed = jnp.einsum("tbn,tbd->bnd", weighted, inputs,
                      precision=jax.lax.Precision.HIGHEST)
  return {k: out[k] + summed[:, starts[i]:starts[i + 1]]
          for i, k in enumerate(leaves)}


def reset_where(reset, initial, batched):
  """Per example b: `initial` where reset[b], else batched[b] (any pytree)."""
  def select(init_leaf, leaf):
    mask = reset.reshape(reset.shape + (1,) * (leaf.ndim - 1))
    return jnp.where(mask, init_leaf.astype(leaf.dtype), leaf)
  return jax.tree.map(select, initial, batched)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _inject_past_gradient(cell, recurrent_params, hidden, sensitivities):
  """Identity on `hidden`; its VJP routes the cotangent λ(0) into θ_r.

  Backward: dθ_r = Σ_b λ_b(0)ᵀ S_b(0); nothing flows to `hidden` or to
  `sensitivities` (no gradient crosses segments except through S).
  """
  del cell, recurrent_params, sensitivities
  return hidden


def _inject_fwd(cell, recurrent_params, hidden, sensitivities):
  del cell, recurrent_params
  return hidden, (hidden, sensitivities)


def _inject_bwd(cell, residuals, hidden_cotangent):
  hidden, sensitivities = residuals
  recurrent_grad = _sum_over_batch(cell, hidden_cotangent, sensitivities)
  return (recurrent_grad, jax.tree.map(jnp.zeros_like, hidden),
          jax.tree.map(jnp.zeros_like, sensitivities))


_inject_past_gradient.defvjp(_inject_fwd, _inject_bwd)


def _sum_over_batch(cell, hidden_cotangent, sensitivities):
  """Σ_b λ_bᵀ S_b over the batch, by the contraction that suits the backend.

  Both branches compute the same sum (tests/contraction_test.py, float64,
  every cell); `jax.lax.platform_dependent` lowers only the branch of the
  platform compiled for:

  * CPU: `_looped_sum`, the per-example contractions added up as one
    fused sum (up to ONE_SUM_EXAMPLES examples) or in a `lax.scan` over the
    examples. XLA:CPU runs a multiply-and-reduce over the leading (batch)
    axis far slower than either, which read S once into one
    parameter-sized accumulator (docs/BENCHMARKS.md, "The past-gradient
    contraction", has the numbers and the command).
  * anything else (GPU, TPU): `_vectorised_sum`, one fused contraction per
    leaf. A loop there would launch B small kernels in sequence per update
    (B = 1024 environments per device is ordinary).
  """
  return jax.lax.platform_dependent(
      hidden_cotangent, sensitivities,
      cpu=functools.partial(_looped_sum, cell.contract_sensitivities),
      default=functools.partial(_vectorised_sum, cell))


def _vectorised_sum(cell, hidden_cotangent, sensitivities):
  """Σ_b contract(λ_b, S_b) with no loop: the cell's batched contraction
  (`contract_sensitivities_batch`; for a cell without one, the per-example
  contraction vmapped over B and summed)."""
  batched = getattr(cell, "contract_sensitivities_batch", None)
  if batched is not None:
    return batched(hidden_cotangent, sensitivities)
  per_example = jax.vmap(cell.contract_sensitivities)(hidden_cotangent,
                                                      sensitivities)
  return jax.tree.map(lambda leaf: leaf.sum(0), per_example)


def _looped_sum(contract, hidden_cotangent, sensitivities,
                one_sum_examples=None):
  """Σ_b contract(λ_b, S_b): one fused sum of the B examples' contractions
  for B ≤ `one_sum_examples` (default ONE_SUM_EXAMPLES), else a loop over
  the batch that adds up to EXAMPLES_PER_ITERATION examples per iteration.

  Either reads S once and keeps one parameter-sized accumulator; `vmap`
  followed by a sum over the batch axis materialises B x |θ_r| products
  first, far slower on XLA:CPU (docs/BENCHMARKS.md). The batch is
  cut into C = gcd(B, device count) contiguous chunks, summed within a
  chunk and vmapped across chunks: when B is sharded over (a mesh axis of)
  the devices, each device sums its own examples, and XLA adds C
  parameter-sized partial results instead of gathering S onto every device.
  On one device C = 1.
  """
  def chunk_sum(cotangent, sens):
    size = jax.tree.leaves(cotangent)[0].shape[0]
    most = ONE_SUM_EXAMPLES if one_sum_examples is None else one_sum_examples
    group = (size if size <= most
             else _largest_divisor(size, EXAMPLES_PER_ITERATION))

    def add_group(total, examples):
      # `group` examples per iteration, as one sum XLA can fuse: with one
      # small example per iteration the loop's overhead dominates
      # (docs/BENCHMARKS.md, "The past-gradient contraction").
      for j in range(group):
        example = jax.tree.map(lambda leaf: leaf[j], examples)
        total = jax.tree.map(jnp.add, total, contract(*example))
      return total, None

    first = jax.tree.map(lambda leaf: leaf[0], (cotangent, sens))
    total = jax.tree.map(lambda leaf: jnp.zeros(leaf.shape, leaf.dtype),
                         jax.eval_shape(contract, *first))
    if group == size:
      return add_group(total, (cotangent, sens))[0]
    grouped = jax.tree.map(
        lambda leaf: leaf.reshape((size // group, group) + leaf.shape[1:]),
        (cotangent, sens))
    return jax.lax.scan(add_group, total, grouped)[0]

  batch = jax.tree.leaves((hidden_cotangent, sensitivities))[0].shape[0]
  chunks = _batch_chunks(batch)
  if chunks == 1:
    return chunk_sum(hidden_cotangent, sensitivities)
  split = lambda leaf: leaf.reshape((chunks, batch // chunks) + leaf.shape[1:])
  partial = jax.vmap(chunk_sum)(*jax.tree.map(
      split, (hidden_cotangent, sensitivities)))
  return jax.tree.map(lambda leaf: leaf.sum(0), partial)


# `_looped_sum` adds the contributions of up to ONE_SUM_EXAMPLES examples
# (per device) as one fused sum, with no loop: measured faster than the
# loop at B = 64 (N = 256, D = 33 and N = 512, D = 257) and slower at
# B = 128 (N = 512, D = 257) (docs/BENCHMARKS.md, "The past-gradient
# contraction"). A larger batch is looped over,
# EXAMPLES_PER_ITERATION (at most; a divisor of the batch) examples per
# iteration.
ONE_SUM_EXAMPLES = 64
EXAMPLES_PER_ITERATION = 8


def _batch_chunks(batch_size):
  """C for `_looped_sum`. B sharded over a mesh axis whose size divides
  the device count (any axis of a mesh of all devices): C is a multiple of
  that size, so chunks never straddle devices."""
  return math.gcd(batch_size, jax.device_count())


def _check_arguments(name, cell, params, state, inputs, resets):
  """Shape and dtype contract; raises ValueError naming the bad argument."""
  if not isinstance(params, dict) or set(params) != {"recurrent", "readout"}:
    raise ValueError(
        f"{name}: `params` must be a dict with keys 'recurrent' and 'readout' "
        f"(from cell.init), got {type(params).__name__} "
        f"{sorted(params) if isinstance(params, dict) else ''}")
  if not isinstance(state, RecurrentState):
    raise ValueError(
        f"{name}: `state` must be a RecurrentState (cell.initial_state), got "
        f"{type(state).__name__}")
  try:
    input_size = cell.input_size(params)
  except (KeyError, IndexError, TypeError, AttributeError) as error:
    raise ValueError(
        f"{name}: `params` do not fit {_cell_name(cell)}: its input_size("
        f"params) fails ({type(error).__name__}: {error}); were they made by "
        f"another cell?") from error
  inputs_shape = getattr(inputs, "shape", None)
  if inputs_shape is None or len(inputs_shape) != 3:
    raise ValueError(
        f"{name}: `inputs` must have shape [T, B, D={input_size}], got shape "
        f"{inputs_shape}")
  t, b, d = inputs_shape
  if d != input_size:
    raise ValueError(
        f"{name}: `inputs` must have shape [T, B, D={input_size}], got "
        f"{tuple(inputs_shape)} (D={d} does not match the cell's input size)")
  if not jnp.issubdtype(inputs.dtype, jnp.floating):
    raise ValueError(f"{name}: `inputs` must be floating, got {inputs.dtype}")
  _check_dtype(name, "params", params, inputs.dtype)
  _check_dtype(name, "state.hidden", state.hidden, inputs.dtype)
  _check_dtype(name, "state.sensitivities", state.sensitivities, inputs.dtype)
  _check_params_fit_cell(name, cell, params, input_size, inputs.dtype)
  hidden_batch = {leaf.shape[0] for leaf in jax.tree.leaves(state.hidden)
                  if getattr(leaf, "ndim", 0)}
  if hidden_batch == {t} and t != b:
    raise ValueError(
        f"{name}: `inputs` of shape {tuple(inputs_shape)} looks batch-major "
        f"[B={t}, T={b}, D]: the state's batch is {t}; rtrl and bptt take "
        "time-major [T, B, D] inputs and [T, B] resets (jnp.swapaxes(x, 0, 1))")
  resets_shape = getattr(resets, "shape", None)
  if resets_shape is None or tuple(resets_shape) != (t, b):
    raise ValueError(
        f"{name}: `resets` must have shape [T, B]={[t, b]} like `inputs`, got "
        f"shape {resets_shape}")
  if resets.dtype != jnp.bool_:
    raise ValueError(
        f"{name}: `resets` must be bool, got {resets.dtype}")
  _check_batched(name, "state.hidden", cell.initial_hidden(params),
                 state.hidden, b)
  if state.sensitivities is not None:
    _check_batched(name, "state.sensitivities",
                   cell.zero_sensitivities(params), state.sensitivities, b)


def _check_batched(name, argument, single_example, batched, batch_size):
  """`batched` must be `single_example` with a leading batch axis."""
  expected = jax.tree.map(lambda l: (batch_size,) + l.shape, single_example)
  got = jax.tree.map(lambda l: l.shape, batched)
  if expected != got:
    raise ValueError(
        f"{name}: `{argument}` must have shape {expected}, got {got}")


def _check_dtype(name, argument, tree, dtype):
  """Every leaf of `tree` must have `dtype` (the dtype of `inputs`)."""
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    leaf_dtype = getattr(leaf, "dtype", type(leaf).__name__)
    if leaf_dtype != dtype:
      raise ValueError(
          f"{name}: `{argument}{jax.tree_util.keystr(path)}` has dtype "
          f"{leaf_dtype}, expected {dtype} (the dtype of `inputs`); cast one "
          f"of them")


def _check_params_fit_cell(name, cell, params, input_size, dtype):
  """`params` must have the leaves and shapes that `cell.init` makes."""
  try:
    expected = _init_shapes(cell, input_size, jnp.dtype(dtype))
  except TypeError:  # An unhashable cell: no cache.
    expected = _init_shapes.__wrapped__(cell, input_size, jnp.dtype(dtype))
  got = _leaf_shapes(params)
  if got == expected:
    return
  owner = _cell_name(cell)
  if list(got) != list(expected):
    raise ValueError(
        f"{name}: `params` has leaves {list(got)}, but {owner}.init makes "
        f"{list(expected)}; were they made by another cell?")
  path = next(p for p in got if got[p] != expected[p])
  raise ValueError(
      f"{name}: `params{path}` has shape {got[path]}, but {owner}.init on "
      f"inputs of size {input_size} makes {expected[path]}; were the params "
      f"made by another cell (e.g. another hidden_size)?")


def _cell_name(cell):
  return f"{type(cell).__name__}(hidden_size={getattr(cell, 'hidden_size', None)})"


def _leaf_shapes(tree):
  return {jax.tree_util.keystr(path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


@functools.lru_cache(maxsize=256)
def _init_shapes(cell, input_size, dtype):
  """{leaf path: shape} of cell.init(key, input_size, dtype), traced only."""
  key = jax.ShapeDtypeStruct((2,), jnp.uint32)
  return _leaf_shapes(jax.eval_shape(
      lambda k: cell.init(k, input_size, dtype), key))
