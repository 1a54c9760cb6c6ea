r"""Benchmark: environment steps/s of the Anakin loop, RTRL vs TBPTT cores.

For every hidden size N it builds the Anakin system (rtrl_jax/anakin.py) of
experiments/configs/r2ac.py (MemoryChain, eLSTM) twice, with gradient="rtrl"
and gradient="tbptt" (same network, M = unroll length), and times one jitted
call of `updates_per_call` updates (acting in `num_envs` environments for M
steps, then a learner step), minimum over repeats.

Memory-bandwidth roofline of the RTRL loop: per update the actor reads and
writes the sensitivities S of all environments once per step (M passes) and
the learner reads the unroll's initial S once to inject the past gradient,
i.e. (M + ½)·2·|S| bytes for M·B environment steps. In the same run we time a
bare fused read+write pass over the same S (experiments/timing.py, the same
pass as benchmark_cells.py); the roofline time of a call is
updates_per_call·(M + ½) bare steps, and "roofline" is that time over the
measured time of the RTRL call.

    python -m experiments.benchmark_anakin              # N = 64, 256 (minutes)
    python -m experiments.benchmark_anakin --quick      # seconds, a smoke run

Prints a table and writes benchmark_anakin.csv into --out_dir.
"""

import csv
import os
import time

from absl import app
from absl import flags
import jax

from experiments import timing
from experiments.configs import r2ac as r2ac_configs
from rtrl_jax import anakin

_HIDDEN = flags.DEFINE_list("hidden", ["64", "256"], "eLSTM hidden sizes N.")
_NUM_ENVS = flags.DEFINE_integer("num_envs", 64, "Environments B.")
_UNROLL = flags.DEFINE_integer("unroll_length", 5, "Unroll length M.")
_UPDATES = flags.DEFINE_integer("updates_per_call", 20, "Updates per call.")
_MEMORY = flags.DEFINE_integer("memory_length", 10, "MemoryChain length.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls (the minimum is kept).")
_OUT_DIR = flags.DEFINE_string("out_dir", "docs/benchmarks", "Where the CSV goes.")
_QUICK = flags.DEFINE_bool("quick", False, "Tiny sizes, for a smoke run.")


def benchmark_config(hidden, gradient, num_envs, unroll_length,
                     updates_per_call, memory_length):
  config = r2ac_configs.get_config("default")
  config.network.hidden_size = hidden
  config.gradient = gradient
  config.num_envs = num_envs
  config.unroll_length = unroll_length
  config.updates_per_call = updates_per_call
  config.total_updates = 1000 * updates_per_call
  config.env.kwargs.memory_length = memory_length
  return config


def time_calls(train, runner, repeats):
  """(seconds of one call of train.update (min over repeats), runner)."""
  runner, metrics = train.update(runner)          # compiles
  jax.block_until_ready(metrics)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    runner, metrics = train.update(runner)
    jax.block_until_ready((runner, metrics))
    times.append(time.perf_counter() - start)
  return min(times), runner


def run(hidden_sizes, num_envs, unroll_length, updates_per_call,
        memory_length, repeats):
  rows = []
  steps_per_call = updates_per_call * num_envs * unroll_length
  for hidden in hidden_sizes:
    seconds = {}
    for gradient in ("rtrl", "tbptt"):
      config = benchmark_config(hidden, gradient, num_envs, unroll_length,
                                updates_per_call, memory_length)
      train = anakin.make_train(config)
      runner = train.init(jax.random.PRNGKey(0))
      seconds[gradient], runner = time_calls(train, runner, repeats)
      if gradient == "rtrl":
        sensitivities = runner.core_state.sensitivities
    sensitivity_bytes = sum(s.nbytes for s in jax.tree.leaves(sensitivities))
    actor_steps = updates_per_call * unroll_length
    bare_seconds, _ = timing.measure(
        lambda s: timing.bare_sensitivity_pass(s, actor_steps),
        (sensitivities,), repeats)
    bare_per_step = bare_seconds / actor_steps
    roofline_seconds = updates_per_call * (unroll_length + 0.5) * bare_per_step
    fraction = roofline_seconds / seconds["rtrl"]
    for gradient in ("rtrl", "tbptt"):
      rows.append({
          "N": hidden, "B": num_envs, "M": unroll_length,
          "updates_per_call": updates_per_call, "gradient": gradient,
          "env_steps_per_s": steps_per_call / seconds[gradient],
          "ms_per_call": 1e3 * seconds[gradient],
          "sensitivity_MiB": sensitivity_bytes / 2**20,
          "bare_pass_GB_per_s": 2 * sensitivity_bytes / bare_per_step / 1e9,
          "rtrl_fraction_of_roofline": fraction})
    print(f"N={hidden}: rtrl {steps_per_call / seconds['rtrl']:,.0f} steps/s, "
          f"tbptt {steps_per_call / seconds['tbptt']:,.0f} steps/s; RTRL loop "
          f"at {fraction:.1%} of its sensitivity-bandwidth roofline", flush=True)
  return rows


def format_table(rows):
  header = (f"{'N':>4} {'B':>4} {'M':>3} {'gradient':<8} {'env steps/s':>12} "
            f"{'ms/call':>9} {'S MiB':>7} {'bare GB/s':>9} {'RTRL roofline':>13}")
  lines = [header, "-" * len(header)]
  for r in rows:
    lines.append(
        f"{r['N']:>4} {r['B']:>4} {r['M']:>3} {r['gradient']:<8} "
        f"{r['env_steps_per_s']:>12,.0f} {r['ms_per_call']:>9.1f} "
        f"{r['sensitivity_MiB']:>7.2f} {r['bare_pass_GB_per_s']:>9.1f} "
        f"{r['rtrl_fraction_of_roofline']:>13.1%}")
  return "\n".join(lines)


def main(argv):
  del argv
  if _QUICK.value:
    hidden, num_envs, updates, repeats = [16], 8, 2, 1
  else:
    hidden = [int(n) for n in _HIDDEN.value]
    num_envs, updates, repeats = _NUM_ENVS.value, _UPDATES.value, _REPEATS.value
  print(f"devices: {jax.devices()}", flush=True)
  rows = run(hidden, num_envs, _UNROLL.value, updates, _MEMORY.value, repeats)
  print(format_table(rows))
  os.makedirs(_OUT_DIR.value, exist_ok=True)
  path = os.path.join(_OUT_DIR.value, "benchmark_anakin.csv")
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  print(f"wrote {path}")


if __name__ == "__main__":
  app.run(main)
