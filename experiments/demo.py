r"""Demo: an eLSTM learns online, with exact RTRL, to carry a bit across time.

Task: a stream of episodes of `episode` steps. Step 0 of an episode shows a
cue bit (input [±1, cue flag]); the middle steps show random distractor bits;
the last step asks for the cue (input [0, query flag]) and is the only step
with a loss. The model updates its parameters after every `segment` steps
(fully online for segment=1) and carries the cell state and the RTRL
sensitivities from one update to the next, resetting both at episode starts.
So the gradient of the query's loss reaches the cue even though each update
sees only `segment` steps. TBPTT with the same segment length truncates there
and, when episode > segment, cannot learn the task: the demo trains both and
prints their accuracy on the query steps (chance: 50%).

    python -m experiments.demo [--steps=3000] [--episode=8] [--segment=2]
"""

import functools
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import optax
import tqdm

import rtrl_jax
from rtrl_jax import experiment

_STEPS = flags.DEFINE_integer("steps", 3000, "Parameter updates per method.",
                              lower_bound=1)
_EPISODE = flags.DEFINE_integer("episode", 8, "Steps per episode: the cue at step 0, the query at step episode-1.",
                                lower_bound=1)
_SEGMENT = flags.DEFINE_integer("segment", 2, "Steps per update (1 = fully online).",
                                lower_bound=1)
_HIDDEN = flags.DEFINE_integer("hidden", 32, "eLSTM hidden size.", lower_bound=1)
_BATCH = flags.DEFINE_integer("batch", 32, "Parallel streams.", lower_bound=1)
_LR = flags.DEFINE_float("learning_rate", 1e-2, "Adam learning rate.")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed.")

INPUT_SIZE = 3  # [bit in ±1, cue flag, query flag]


def stream_segment(key, phase, cue, episode, segment):
  """The next `segment` steps of every stream.

  Args:
    key: PRNG key.
    phase: [B] int, position of each stream in its episode.
    cue: [B] float, the current episode's cue bit.

  Returns:
    inputs [T, B, 3], resets [T, B], targets [T, B], is_query [T, B],
    and the new (phase, cue).
  """
  def step(carry, key):
    phase, cue = carry
    k_cue, k_noise = jax.random.split(key)
    start = phase == 0
    cue = jnp.where(start, jax.random.bernoulli(k_cue, 0.5, cue.shape), cue)
    query = phase == episode - 1
    noise = jax.random.bernoulli(k_noise, 0.5, cue.shape).astype(jnp.float32)
    bit = jnp.where(start, cue, jnp.where(query, 0.5, noise)) * 2 - 1
    x = jnp.stack([bit, start, query], -1).astype(jnp.float32)
    return ((phase + 1) % episode, cue), (x, start, cue, query)

  (phase, cue), (inputs, resets, targets, is_query) = jax.lax.scan(
      step, (phase, cue), jax.random.split(key, segment))
  return inputs, resets, targets, is_query, phase, cue


def make_train(cell, optimizer, segment, episode, batch):
  """Returns init(key) and a jitted update(carry, method) -> (carry, accuracy)."""

  def head(params, hidden):
    return params["head"]["w"] @ hidden + params["head"]["b"]

  def init(key):
    k_cell, k_head, k_phase = jax.random.split(key, 3)
    params = {"cell": cell.init(k_cell, INPUT_SIZE),
              "head": {"w": 0.1 * jax.random.normal(k_head, (cell.hidden_size,)),
                       "b": jnp.zeros(())}}
    phase = jax.random.randint(k_phase, (batch,), 0, episode)  # staggered
    return (params, optimizer.init(params),
            cell.initial_state(params["cell"], batch), phase,
            jnp.zeros((batch,)), key)

  def update(carry, method):
    params, opt_state, state, phase, cue, key = carry
    key, k_data = jax.random.split(key)
    inputs, resets, targets, is_query, phase, cue = stream_segment(
        k_data, phase, cue, episode, segment)

    def loss_fn(p):
      if method == "rtrl":
        hidden, new_state = rtrl_jax.rtrl(cell, p["cell"], state, inputs, resets)
      else:  # TBPTT: no gradient into the carried state
        hidden, new_state = rtrl_jax.bptt(
            cell, p["cell"], jax.lax.stop_gradient(state), inputs, resets)
      logits = jax.vmap(jax.vmap(functools.partial(head, p)))(hidden)
      losses = optax.sigmoid_binary_cross_entropy(logits, targets)
      queries = jnp.maximum(is_query.sum(), 1)
      correct = jnp.sum(is_query * ((logits > 0) == targets))
      return jnp.sum(is_query * losses) / queries, (new_state, correct, queries)

    grads, (state, correct, queries) = jax.grad(loss_fn, has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return (params, opt_state, state, phase, cue, key), (correct, queries)

  return init, jax.jit(update, static_argnums=1)


def main(argv):
  experiment.cli.start_main(argv)    # also quiets JAX's backend INFO lines
  cell = rtrl_jax.ELSTM(_HIDDEN.value, forget_bias=1.0)
  init, update = make_train(cell, optax.adam(_LR.value), _SEGMENT.value,
                            _EPISODE.value, _BATCH.value)
  print(f"Recall a cue {_EPISODE.value - 1} steps later (episodes of "
        f"{_EPISODE.value} steps), updating every {_SEGMENT.value} step(s); "
        "chance = 50%.")
  results = {}
  for method in ("rtrl", "tbptt"):
    carry = init(jax.random.PRNGKey(_SEED.value))
    recent = []
    start = time.time()
    bar = tqdm.trange(_STEPS.value, desc=f"{method:>5}", unit="upd")
    for step in bar:
      carry, counts = update(carry, method)
      recent = (recent + [tuple(map(float, counts))])[-200:]
      accuracy = sum(c for c, _ in recent) / sum(q for _, q in recent)
      if step % 50 == 0 or step == _STEPS.value - 1:
        bar.set_postfix(accuracy=f"{accuracy:.1%}")
    results[method] = (accuracy, time.time() - start)
  print("\nmethod  accuracy (last 200 updates)  time")
  for method, (accuracy, seconds) in results.items():
    print(f"{method:>6}  {accuracy:24.1%}  {seconds:5.1f}s")


if __name__ == "__main__":
  app.run(main, flags_parser=experiment.cli.parse_flags)
