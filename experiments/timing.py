"""Timing helpers shared by the benchmark scripts.

`measure` times a compiled function (minimum over repeats) and reports its
compiled memory; `bare_sensitivity_pass` is the memory-bandwidth floor of an
RTRL step: one read and one write of every sensitivity byte per step.
"""

import time

import jax
import jax.numpy as jnp


def measure(fn, args, repeats):
  """(seconds per call (min over repeats), compiled bytes) of `jit(fn)(*args)`."""
  compiled = jax.jit(fn).lower(*args).compile()
  stats = compiled.memory_analysis()
  memory = (stats.argument_size_in_bytes + stats.output_size_in_bytes
            + stats.temp_size_in_bytes - stats.alias_size_in_bytes)
  jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - start)
  return min(times), memory


def bare_sensitivity_pass(sensitivities, num_steps):
  """`num_steps` steps of S ← a·S + b over the pytree `sensitivities`.

  One read and one write of every byte per step, nothing else; the scalars
  depend on the step so XLA cannot hoist or fold the update out of the loop.
  """
  steps = jnp.arange(num_steps, dtype=jnp.float32)

  def step(sensitivities, t):
    a, b = 1.0 - 1e-3 * jnp.cos(t), 1e-3 * jnp.sin(t)
    return jax.tree.map(lambda s: a * s + b, sensitivities), None

  return jax.lax.scan(step, sensitivities, steps)[0]
