r"""The copy task: data, model and the jitted train step for RTRL, TBPTT, BPTT.

Data (paper-notes §5.4). A pattern of L bits, L ~ U{1, ..., T_max}, bits
~ U{0, 1}; token 2 is the blank. With T = 2·T_max time steps:

    input  = b_1 … b_L  2 … 2                  (pattern, then blanks)
    target = 2 … 2  b_1 … b_L  2 … 2           (blanks ‖ pattern ‖ pad)

so the network reads the pattern, sees the first blank, and must then emit
the pattern. Inputs are one-hot over the 3 tokens (no embedding). Only the L
copy positions t ∈ [L, 2L) count: with m(t, b) = 1 there,

    loss = Σ_{t,b} m(t,b) · CE(y(t,b), target(t,b)) / Σ_{t,b} m(t,b)

and the metric is sequence accuracy, the fraction of sequences whose L copy
positions are all predicted right.

Model: one eLSTM layer (`rtrl_jax.ELSTM`, input size 3) and a linear layer
from h(t) to 2 logits (one per bit; the blank is never a target).

Training modes, all on one batch of B fresh sequences per train step. The
sequence is cut into T / k segments of k steps; segment s has the loss
ℓ_s = Σ_{t ∈ s} m·CE / Σ_{all t} m, so Σ_s ℓ_s is the sequence loss above.

* `rtrl`: `rtrl_jax.rtrl` on each segment; the state, sensitivities included,
  is carried, so ∇ℓ_s is exact and untruncated. With `update_every="segment"` the
  optimizer steps after every segment that has a copy position (fully
  online; k = 1 is one update per time step, and later segments then run with
  the updated weights while the sensitivities keep terms computed with the
  old ones, as in any online RTRL). With `update_every="sequence"` the segment
  gradients are summed and applied once: Σ_s ∇ℓ_s = ∇(sequence loss), the
  BPTT gradient, exactly.
* `tbptt`: `rtrl_jax.bptt` on each segment from the carried state under
  `stop_gradient`, truncation M = k: credit is assigned at most k - 1 steps
  back, so an output at t learns nothing about an input before the segment
  start. Updates per segment or per sequence as for `rtrl`.
* `bptt`: `rtrl_jax.bptt` over the whole sequence (one segment of T steps),
  one update per sequence.

Everything a train step needs is in `TrainState`; `make_train_step(cell,
optimizer, training)` returns a pure function `TrainState -> (TrainState,
metrics)` to `jax.jit`. The functions here take explicit arguments (a cell,
an optax optimizer, a `Training`); `rtrl_jax.tasks.from_config` builds them
from the scripts' config (experiments/configs/copy_task.py).
Batch i of the training stream is `sample_batch(fold_in(state.rng, i))` with
i = `state.data_position`, so a run restored from a checkpoint sees exactly the
batches it would have seen.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from rtrl_jax.core import bptt, rtrl

Array = jax.Array
PyTree = Any

BLANK = 2
NUM_TOKENS = 3   # 0, 1, blank
NUM_CLASSES = 2  # the bit at a copy position
MODES = ("rtrl", "tbptt", "bptt")
UPDATES = ("segment", "sequence")


class CopyBatch(NamedTuple):
  """A time-major batch of copy-task sequences, T = 2·T_max.

  Attributes:
    inputs: [T, B, 3] one-hot input tokens.
    targets: [T, B] int32 target tokens (0/1 at copy positions, 2 elsewhere).
    mask: [T, B] bool, True at the copy positions t ∈ [L_b, 2·L_b).
    lengths: [B] int32 pattern lengths L_b.
  """
  inputs: Array
  targets: Array
  mask: Array
  lengths: Array


class Training(NamedTuple):
  """How a train step computes and applies the gradient of a sequence.

  Attributes:
    mode: "rtrl", "tbptt" or "bptt" (see the module doc).
    segment_length: k (rtrl) or the truncation M (tbptt); it must divide
      2·max_length. bptt runs one segment of 2·max_length steps.
    update_every: "segment" (an optimizer step after every segment that has
      a copy position: fully online) or "sequence" (one step per batch);
      bptt always updates per sequence.
    batch_size: B, the fresh sequences of one train step.
    max_length: T_max; sequences are 2·T_max steps long.
  """
  mode: str
  segment_length: int
  update_every: str
  batch_size: int
  max_length: int


class TrainState(NamedTuple):
  """Everything a train step reads and writes (and a checkpoint holds).

  Attributes:
    step: int32 scalar, train steps done.
    data_position: int32 scalar, index of the next training batch.
    params: {"cell": eLSTM params, "head": {"w": [N, 2], "b": [2]}}.
    opt_state: the optax state.
    rng: the PRNG key of the training-data stream.
  """
  step: Array
  data_position: Array
  params: PyTree
  opt_state: PyTree
  rng: Array


def sample_batch(key, batch_size, max_length, dtype=jnp.float32):
  """B copy-task sequences of length 2·`max_length` (see the module doc)."""
  length_key, bits_key = jax.random.split(key)
  lengths = jax.random.randint(length_key, (batch_size,), 1, max_length + 1)
  bits = jax.random.randint(bits_key, (max_length, batch_size), 0, 2)
  time = jnp.arange(2 * max_length)[:, None]  # [T, 1]
  in_pattern = time < lengths[None, :]
  padded_bits = jnp.concatenate([bits, jnp.full_like(bits, BLANK)], axis=0)
  input_tokens = jnp.where(in_pattern, padded_bits, BLANK)
  mask = (time >= lengths[None, :]) & (time < 2 * lengths[None, :])
  source = jnp.clip(time - lengths[None, :], 0, max_length - 1)
  copied_bits = jnp.take_along_axis(bits, source, axis=0)
  targets = jnp.where(mask, copied_bits, BLANK).astype(jnp.int32)
  inputs = jax.nn.one_hot(input_tokens, NUM_TOKENS, dtype=dtype)
  return CopyBatch(inputs=inputs, targets=targets, mask=mask,
                   lengths=lengths.astype(jnp.int32))


def evaluation_sets(data_seed, size_valid, size_test, max_length,
                    dtype=jnp.float32):
  """The fixed validation and test sets: functions of `data_seed` only."""
  root = jax.random.PRNGKey(data_seed)
  return (sample_batch(jax.random.fold_in(root, 1), size_valid, max_length,
                       dtype),
          sample_batch(jax.random.fold_in(root, 2), size_test, max_length,
                       dtype))


def init_params(cell, key):
  """eLSTM params for 3-token inputs plus the linear head h → 2 logits.

  The head is initialised like PyTorch's nn.Linear: U(±1/√N).
  """
  cell_key, head_key = jax.random.split(key)
  bound = 1.0 / cell.hidden_size ** 0.5
  return {
      "cell": cell.init(cell_key, NUM_TOKENS),
      "head": {
          "w": jax.random.uniform(head_key, (cell.hidden_size, NUM_CLASSES),
                                  jnp.float32, -bound, bound),
          "b": jnp.zeros((NUM_CLASSES,), jnp.float32),
      },
  }


def make_optimizer(learning_rate, clip_norm=1.0, b1=0.9, b2=0.995, eps=1e-9):
  """Global-norm clipping then Adam (the paper: β=(0.9, 0.995), ε=1e-9)."""
  return optax.chain(optax.clip_by_global_norm(clip_norm),
                     optax.adam(learning_rate, b1=b1, b2=b2, eps=eps))


def init_train_state(cell, optimizer, seed):
  """The state before step 0: params from `seed`, fresh optimizer state."""
  root = jax.random.PRNGKey(seed)
  params = init_params(cell, jax.random.fold_in(root, 0))
  opt_state = optimizer.init(params)
  return TrainState(step=jnp.zeros((), jnp.int32),
                    data_position=jnp.zeros((), jnp.int32), params=params,
                    opt_state=opt_state, rng=jax.random.fold_in(root, 1))


def describe_training(mode, segment_length, update_every):
  """A label such as "rtrl k=1, online", "tbptt M=4, per sequence", "bptt"."""
  if mode == "bptt":
    return "bptt"
  letter = "k" if mode == "rtrl" else "M"
  update = "online" if update_every == "segment" else "per sequence"
  return f"{mode} {letter}={segment_length}, {update}"


def _steps_per_segment(training):
  """k for rtrl/tbptt, the whole 2·T_max for bptt."""
  if training.mode == "bptt":
    return 2 * training.max_length
  return training.segment_length


def _segment_loss(cell, method, params, state, segment, normalizer):
  """ℓ_s of one segment and what the scan carries on.

  Returns (ℓ_s, (new recurrent state, [k, B] bool "copy position right or not
  a copy position", number of correct copy positions)).
  """
  inputs, targets, mask = segment
  resets = jnp.zeros(mask.shape, jnp.bool_)
  if method == "rtrl":
    outputs, new_state = rtrl(cell, params["cell"], state, inputs, resets)
  else:
    outputs, new_state = bptt(cell, params["cell"],
                              jax.lax.stop_gradient(state), inputs, resets)
  cross_entropy, right_or_free, right = _copy_scores(params, outputs, targets,
                                                    mask)
  loss = jnp.sum(cross_entropy) / normalizer
  return loss, (new_state, right_or_free, jnp.sum(right))


def _copy_scores(params, outputs, targets, mask):
  """Per position [T, B]: the cross-entropy of the head's prediction (0 off
  the copy positions), "right or not a copy position", and "a copy position
  predicted right"."""
  logits = outputs @ params["head"]["w"] + params["head"]["b"]
  labels = jnp.where(mask, targets, 0)
  cross_entropy = optax.softmax_cross_entropy_with_integer_labels(logits,
                                                                  labels)
  right = jnp.argmax(logits, axis=-1) == labels
  return jnp.where(mask, cross_entropy, 0.0), right | ~mask, right & mask


def _forward(cell, params, inputs, mask):
  """The cell's outputs over whole sequences from a fresh state."""
  state = cell.initial_state(params["cell"], inputs.shape[1],
                             sensitivities=False)
  outputs, _ = bptt(cell, params["cell"], state, inputs,
                    jnp.zeros(mask.shape, jnp.bool_))
  return outputs


def _segments(batch, length):
  """[T, B, ...] → [T/length, length, B, ...] for inputs, targets, mask."""
  split = lambda x: x.reshape((x.shape[0] // length, length) + x.shape[1:])
  return split(batch.inputs), split(batch.targets), split(batch.mask)


def _run_sequence(cell, optimizer, training, params, opt_state, batch):
  """Runs the segments of `batch` in order, updating per segment if online
  (`optimizer` may be None when not).

  Returns (params, opt_state, summed segment gradients, online, metrics).
  """
  mode, update = training.mode, training.update_every
  method = "rtrl" if mode == "rtrl" else "bptt"
  online = mode != "bptt" and update == "segment"
  batch_size = batch.mask.shape[1]
  normalizer = jnp.maximum(jnp.sum(batch.mask), 1).astype(jnp.float32)
  loss_and_grad = jax.value_and_grad(
      lambda p, s, seg: _segment_loss(cell, method, p, s, seg, normalizer),
      has_aux=True)

  def one_segment(carry, segment):
    params, opt_state, state, grad_sum, all_right, num_updates = carry
    (loss, (state, right, num_right)), grads = loss_and_grad(params, state,
                                                             segment)
    if online:
      has_targets = jnp.any(segment[2])
      updates, new_opt_state = optimizer.update(grads, opt_state, params)
      new_params = optax.apply_updates(params, updates)
      keep = lambda new, old: jax.tree.map(
          lambda a, b: jnp.where(has_targets, a, b), new, old)
      params, opt_state = keep(new_params, params), keep(new_opt_state,
                                                         opt_state)
      num_updates = num_updates + has_targets.astype(jnp.int32)
    grad_sum = jax.tree.map(jnp.add, grad_sum, grads)
    all_right = all_right & jnp.all(right, axis=0)
    return (params, opt_state, state, grad_sum, all_right, num_updates), (
        loss, num_right)

  state = cell.initial_state(params["cell"], batch_size,
                             sensitivities=(method == "rtrl"))
  carry = (params, opt_state, state, jax.tree.map(jnp.zeros_like, params),
           jnp.ones((batch_size,), jnp.bool_), jnp.zeros((), jnp.int32))
  carry, (losses, num_right) = jax.lax.scan(
      one_segment, carry, _segments(batch, _steps_per_segment(training)))
  params, opt_state, _, grad_sum, all_right, num_updates = carry
  metrics = {
      "loss": jnp.sum(losses),
      "accuracy": jnp.mean(all_right.astype(jnp.float32)),
      "token_accuracy": jnp.sum(num_right) / normalizer,
      "grad_norm": optax.tree.norm(grad_sum),
      "updates": num_updates,
  }
  return params, opt_state, grad_sum, online, metrics


def make_sequence_gradient(cell, training):
  """(params, batch) → (Σ_s ∇ℓ_s, metrics) with the params held fixed.

  For `rtrl` this is the BPTT gradient of the sequence loss, for `tbptt` the
  truncated one; `training.update_every` is ignored (nothing is updated).
  """
  fixed = training._replace(update_every="sequence")

  def sequence_gradient(params, batch):
    _, _, grads, _, metrics = _run_sequence(cell, None, fixed, params, None,
                                            batch)
    return grads, metrics
  return sequence_gradient


def make_train_step(cell, optimizer, training):
  """A pure `TrainState -> (TrainState, metrics)` for one batch; jit it.

  Draws batch `state.data_position` of the stream keyed by `state.rng`, runs
  the mode of `training` over it (see the module doc) and returns scalar
  metrics: loss (the sequence loss), accuracy (sequence-level, online modes
  count predictions made while the weights change), token_accuracy,
  grad_norm (of Σ_s ∇ℓ_s, before clipping) and updates (optimizer steps).
  """
  def train_step(state):
    batch = sample_batch(jax.random.fold_in(state.rng, state.data_position),
                         training.batch_size, training.max_length)
    params, opt_state, grads, online, metrics = _run_sequence(
        cell, optimizer, training, state.params, state.opt_state, batch)
    if not online:
      updates, opt_state = optimizer.update(grads, opt_state, params)
      params = optax.apply_updates(params, updates)
      metrics["updates"] = jnp.ones((), jnp.int32)
    return TrainState(step=state.step + 1,
                      data_position=state.data_position + 1, params=params,
                      opt_state=opt_state, rng=state.rng), metrics
  return train_step


def make_evaluate(cell, eval_batch_size):
  """(params, batch) → {loss, accuracy, token_accuracy} over a whole set.

  Runs a forward pass over the full sequences in chunks of `eval_batch_size`
  (the set size must be a multiple of it).
  """
  chunk = eval_batch_size

  def evaluate_chunk(params, inputs, targets, mask):
    cross_entropy, right_or_free, right = _copy_scores(
        params, _forward(cell, params, inputs, mask), targets, mask)
    return (jnp.sum(cross_entropy), jnp.sum(jnp.all(right_or_free, axis=0)),
            jnp.sum(right))

  def evaluate(params, batch):
    size = batch.mask.shape[1]
    split = lambda x: jnp.moveaxis(
        x.reshape(x.shape[:1] + (size // chunk, chunk) + x.shape[2:]), 1, 0)
    sums = jax.lax.map(
        lambda xs: evaluate_chunk(params, *xs),
        (split(batch.inputs), split(batch.targets), split(batch.mask)))
    cross_entropy, sequences_right, tokens_right = (jnp.sum(s) for s in sums)
    num_tokens = jnp.maximum(jnp.sum(batch.mask), 1)
    return {"loss": cross_entropy / num_tokens,
            "accuracy": sequences_right / size,
            "token_accuracy": tokens_right / num_tokens}
  return evaluate


def make_sequences_right(cell):
  """(params, batch) → [B] bool: every copy position of the sequence is
  predicted right (what make_evaluate's accuracy averages)."""

  def sequences_right(params, batch):
    _, right_or_free, _ = _copy_scores(
        params, _forward(cell, params, batch.inputs, batch.mask),
        batch.targets, batch.mask)
    return jnp.all(right_or_free, axis=0)
  return sequences_right
