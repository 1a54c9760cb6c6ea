"""Timing helpers shared by the benchmark scripts.

`measure` times a compiled function (minimum over repeats) and reports its
compiled memory; `paired_seconds` and `median_ratio` compare functions
round by round, which a drifting machine needs; `bare_sensitivity_pass` is
the memory-bandwidth floor of an RTRL step: one read and one write of every
sensitivity byte per step;
`top_operations` profiles calls and lists the XLA operations that take longest;
`output_dir`, `write_csv` and `positive_ints` are the scripts' shared plumbing.
"""

import collections
import csv
import glob
import gzip
import json
import os
import statistics
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


def paired_seconds(calls, rounds):
  """{name: [seconds of each round]} for `calls`, {name: call()}.

  Each round runs every call once, back to back, in order; a call must
  return when its work is done (`jax.block_until_ready`). On a shared
  machine an in-cache pass runs up to ~3x slower at some moments and in
  some processes than in others (docs/BENCHMARKS.md, "Paired rounds"), so
  two functions timed minutes apart, each by its minimum, get a ratio that
  the drift decides. Within a round they see nearly the same machine: take
  the ratio per round, then the median over rounds (`median_ratio`).
  """
  for call in calls.values():
    call()                                   # Compiled and warm.
  seconds = {name: [] for name in calls}
  for _ in range(rounds):
    for name, call in calls.items():
      start = time.perf_counter()
      call()
      seconds[name].append(time.perf_counter() - start)
  return seconds


def median_ratio(numerators, denominators):
  """Median over rounds of numerator / denominator (`paired_seconds`)."""
  return statistics.median(n / d for n, d in zip(numerators, denominators))


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


def output_dir(out_dir_flag, quick):
  """Where a benchmark writes: --out_dir, except that a --quick smoke run
  without an explicit --out_dir goes to runs/quick_benchmarks instead of over
  the committed results in docs/benchmarks."""
  if quick and not out_dir_flag.present:
    return os.path.join("runs", "quick_benchmarks")
  return out_dir_flag.value


def write_csv(rows, out_dir, name):
  """Writes the dict `rows` (one header: the first row's keys) to
  <out_dir>/<name>, creating the folder; returns the path."""
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, name)
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  return path


def positive_ints(flag, values):
  """The list flag --`flag`'s `values` as ints; ValueError naming the first
  one that is not a positive int."""
  if not values:
    raise ValueError(f"--{flag}: give at least one value")
  numbers = []
  for text in values:
    try:
      number = int(text)
    except ValueError:
      number = 0
    if number <= 0:
      raise ValueError(f"--{flag}: {text!r} is not a positive int")
    numbers.append(number)
  return numbers


def top_operations(call, trace_dir, calls=3, top=10):
  """Runs `call()` `calls` times under `jax.profiler` and ranks XLA operations.

  Writes the trace (TensorBoard/XProf files and a Perfetto JSON, open it at
  ui.perfetto.dev) under `trace_dir`, and returns up to `top` tuples
  (operation name, ms per call, executions per call), longest first. Only
  XLA's own operations (fusions, loops, copies, dots; lower-case names) are
  ranked, not the Python frames and runtime events around them; a loop's
  time includes its body's operations, which are ranked too.
  """
  os.makedirs(trace_dir, exist_ok=True)
  jax.block_until_ready(call())        # compile outside the trace
  with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
    for _ in range(calls):
      jax.block_until_ready(call())
  paths = sorted(glob.glob(os.path.join(trace_dir, "**",
                                        "*perfetto_trace.json.gz"),
                           recursive=True), key=os.path.getmtime)
  with gzip.open(paths[-1]) as f:
    trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  total, count = collections.Counter(), collections.Counter()
  for event in events:
    name = event.get("name", "")
    if (event.get("ph") != "X" or not name[:1].islower()
        or any(c in name for c in " :()")):
      continue
    total[name] += event.get("dur", 0)      # microseconds
    count[name] += 1
  return [(name, micros / calls / 1e3, count[name] / calls)
          for name, micros in total.most_common(top)]
