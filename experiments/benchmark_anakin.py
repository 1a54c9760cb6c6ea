r"""Benchmark: environment steps/s of the Anakin loop, RTRL vs TBPTT cores.

For every hidden size N it builds the Anakin system (rtrl_jax/rl/anakin.py) of
experiments/configs/r2ac.py (MemoryChain, eLSTM) twice, with gradient="rtrl"
and gradient="tbptt" (same network, M = unroll length), and times one jitted
call of `updates_per_call` updates (acting in `num_envs` environments for M
steps, then a learner step). Every number comes from --rounds rounds that
time the bare pass below, the RTRL call and the TBPTT call back to back
(`timing.paired_seconds`): times are medians over rounds, fractions medians
of the per-round fractions (on a shared machine the three drift apart when
timed minutes apart).

Memory-bandwidth roofline of the RTRL loop: per update the actor reads and
writes the sensitivities S of all environments once per step (M passes) and
the learner reads the unroll's initial S once to inject the past gradient,
i.e. (M + ½)·2·|S| bytes for M·B environment steps. (That is the floor of an
actor that steps S every step; `anakin.rollout` now advances S once per unroll,
whose floor is 1½ passes: the columns keep the old floor so that runs before
and after that change compare, docs/ANAKIN.md.) In the same run we time a
bare fused read+write pass over the same S (experiments/timing.py, the same
pass as benchmark_cells.py); the roofline time of a call is
updates_per_call·(M + ½) bare steps, and "roofline" is that time over the
measured time of the RTRL call.

Two more columns say where the rest of the time goes:

* "RTRL part": the roofline time over (RTRL call − TBPTT call), i.e. how
  close the work RTRL adds (the actor's sensitivity updates, the copy of the
  unroll's initial S, the learner's past-gradient contraction) runs to the
  bandwidth floor of that work.
* "ceiling": roofline / (roofline + TBPTT call), the fraction the RTRL loop
  would reach if its sensitivity work ran exactly at the bare-pass speed and
  everything else (environments, encoder, heads, the learner's forward and
  backward pass, V-trace, the optimizer) took what it takes in the TBPTT loop.

--in_loop_pass also times a third call: the TBPTT loop with one bare pass
over an S-sized buffer per update, kept in the optimizer's state (after the
gradient, as RTRL's advance is). Its excess over the TBPTT call, per update,
is what one pass over S costs inside the loop, where the rest of the update
has pushed S out of the per-core caches; the bare pass above loops over a hot
S. Columns "in_loop_pass_ms" (per update), "in_loop_over_bare_pass" and
"rtrl_part_in_loop" (the RTRL part with that pass in the roofline); NaN
without the flag.

    python -m experiments.benchmark_anakin              # N = 64, 256 (a minute)
    # docs/ANAKIN.md's table: adds the paper's DMLab core, N = 512, D = 257
    python -m experiments.benchmark_anakin --hidden=64,256,512 \
        --encoder_features=32,32,256
    python -m experiments.benchmark_anakin --quick      # seconds, a smoke run
    python -m experiments.benchmark_anakin --hidden=64 --in_loop_pass

Prints a table and writes benchmark_anakin.csv into --out_dir.
"""

import math
import os
import statistics
import sys

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import optax

from experiments import timing
from experiments.configs import r2ac as r2ac_configs
from rtrl_jax.rl import anakin
from rtrl_jax.rl import from_config
from rtrl_jax import experiment

_HIDDEN = flags.DEFINE_list("hidden", ["64", "256"], "eLSTM hidden sizes N.")
_FEATURES = flags.DEFINE_list(
    "encoder_features", ["32"],
    "MLP encoder output size per entry of --hidden (one value: for all); the "
    "core input is D = features + 1 (the previous reward).")
_NUM_ENVS = flags.DEFINE_integer("num_envs", 64, "Environments B.",
                                 lower_bound=1)
_UNROLL = flags.DEFINE_integer("unroll_length", 5, "Unroll length M.",
                               lower_bound=1)
_UPDATES = flags.DEFINE_integer("updates_per_call", 20, "Updates per call.",
                                lower_bound=1)
_MEMORY = flags.DEFINE_integer("memory_length", 10, "MemoryChain length.",
                               lower_bound=1)
_ROUNDS = flags.DEFINE_integer(
    "rounds", 31,
    "Paired rounds: each round times the bare pass, the RTRL call and the "
    "TBPTT call back to back; times are medians over rounds, fractions "
    "medians of the per-round fractions. At N = 64 one round's RTRL - TBPTT "
    "ranged 2-20 ms around a 10 ms median: with 9 rounds RTRL part ranged "
    "57-103% from run to run, with 31 84-107% over seven runs "
    "(docs/ANAKIN.md).",
    lower_bound=1)
_OUT_DIR = flags.DEFINE_string(
    "out_dir", "docs/benchmarks",
    "Where the CSV goes (--quick: runs/quick_benchmarks unless given).")
_QUICK = flags.DEFINE_bool("quick", False, "Tiny sizes, for a smoke run.")
_IN_LOOP_PASS = flags.DEFINE_bool(
    "in_loop_pass", False,
    "Also time the TBPTT loop with one bare pass over an S-sized buffer per "
    "update: what one pass over S costs inside the loop (module docstring).")
_TRACE_DIR = flags.DEFINE_string(
    "trace_dir", None,
    "If set: a jax.profiler trace of one RTRL and one TBPTT call per size goes "
    "to <trace_dir>/N<N>_D<D>_<gradient>/ with the compiled program's "
    "optimised HLO (optimized_hlo.txt: which operations XLA fused into each "
    "pass, docs/ANAKIN.md, \"P out of the pass\"), and the XLA operations "
    "that take longest are printed.")


def benchmark_config(hidden, gradient, num_envs, unroll_length,
                     updates_per_call, memory_length, encoder_features=32):
  config = r2ac_configs.get_config("default")
  config.network.hidden_size = hidden
  config.network.encoder_sizes = [encoder_features]
  config.gradient = gradient
  config.num_envs = num_envs
  config.unroll_length = unroll_length
  config.updates_per_call = updates_per_call
  config.total_updates = 1000 * updates_per_call
  config.env.kwargs.memory_length = memory_length
  return config


def _stepper(train, runner):
  """A call that advances `runner` by one `train.step` and waits for it."""
  state = {"runner": runner}

  def call():
    state["runner"], metrics = train.step(state["runner"])
    jax.block_until_ready((state["runner"], metrics))

  return call


def _compiled(config, **system_options):
  """(system, runner) of `config` after one call: compiled and warm."""
  train = from_config.anakin_system(config, **system_options)
  runner = train.init(jax.random.PRNGKey(0))
  runner, metrics = train.step(runner)
  jax.block_until_ready((runner, metrics))
  return train, runner


def with_bare_pass(like):
  """optimizer -> the same optimizer, plus one bare read+write pass per
  update over a buffer shaped like `like` (S) in its state.

  The pass takes the step's scalars from the update's gradient, so XLA
  runs it after the learner (as RTRL's advance) and cannot hoist it out of
  the update loop; the updates are the optimizer's, unchanged.
  """
  def instrument(optimizer):
    def init(params):
      return optimizer.init(params), jax.tree.map(jnp.zeros_like, like)

    def update(updates, state, params=None):
      inner, buffer = state
      updates, inner = optimizer.update(updates, inner, params)
      shift = 1e-3 + anakin.zero_after(updates)
      buffer = jax.tree.map(lambda s: (1.0 - 1e-3) * s + shift, buffer)
      return updates, (inner, buffer)

    return optax.GradientTransformation(init, update)
  return instrument


def run(sizes, num_envs, unroll_length, updates_per_call, memory_length,
        rounds, trace_dir=None, on_size=None, in_loop_pass=False):
  """Rows of the table for `sizes`, a list of (N, encoder features).

  Every column comes from `rounds` paired rounds (`timing.paired_seconds`):
  times are medians over rounds, fractions medians of per-round fractions.
  `on_size(rows)`, if given, gets the rows so far after each size (main
  writes the CSV then, so a run cut off part-way keeps its finished sizes).
  in_loop_pass: also time the TBPTT loop with `with_bare_pass` (module
  docstring); its columns are NaN otherwise.
  """
  rows = []
  steps_per_call = updates_per_call * num_envs * unroll_length
  actor_steps = updates_per_call * unroll_length
  for hidden, features in sizes:
    steppers = {}
    for gradient in ("rtrl", "tbptt"):
      config = benchmark_config(hidden, gradient, num_envs, unroll_length,
                                updates_per_call, memory_length, features)
      train, runner = _compiled(config)
      if trace_dir:
        print_top_operations(train, runner, os.path.join(
            trace_dir, f"N{hidden}_D{features + 1}_{gradient}"))
      if gradient == "rtrl":  # A copy: the paired rounds donate the runner.
        sensitivities = jax.tree.map(jnp.copy, runner.core_state.sensitivities)
      steppers[gradient] = _stepper(train, runner)
    if in_loop_pass:  # `config`: the TBPTT one, the loop's last.
      steppers["tbptt_with_pass"] = _stepper(*_compiled(
          config, instrument_optimizer=with_bare_pass(sensitivities)))
    sensitivity_bytes = sum(s.nbytes for s in jax.tree.leaves(sensitivities))
    bare = jax.jit(lambda s: timing.bare_sensitivity_pass(s, actor_steps))
    paired = timing.paired_seconds(
        {"bare": lambda: jax.block_until_ready(bare(sensitivities)),
         **steppers}, rounds)
    seconds = {k: statistics.median(v) for k, v in paired.items()}
    bare_per_step = seconds["bare"] / actor_steps
    roofline = [updates_per_call * (unroll_length + 0.5) * b / actor_steps
                for b in paired["bare"]]
    fraction = timing.median_ratio(roofline, paired["rtrl"])
    added = [r - t for r, t in zip(paired["rtrl"], paired["tbptt"])]
    # Noise can make the RTRL call the faster one in a round: that round
    # counts as RTRL's work costing nothing (inf), so the median is defined.
    rtrl_part = statistics.median(roof / a if a > 0 else math.inf
                                  for roof, a in zip(roofline, added))
    ceiling = timing.median_ratio(
        roofline, [r + t for r, t in zip(roofline, paired["tbptt"])])
    in_loop = dict.fromkeys(("pass", "over_bare", "rtrl_part"), math.nan)
    if in_loop_pass:
      per_update = [(p - t) / updates_per_call for p, t in
                    zip(paired["tbptt_with_pass"], paired["tbptt"])]
      in_loop["pass"] = statistics.median(per_update)
      in_loop["over_bare"] = in_loop["pass"] / bare_per_step
      in_loop["rtrl_part"] = statistics.median(
          updates_per_call * (unroll_length + 0.5) * p / a if a > 0
          else math.inf for p, a in zip(per_update, added))
    for gradient in ("rtrl", "tbptt"):
      rows.append({
          "N": hidden, "D": features + 1, "B": num_envs, "M": unroll_length,
          "updates_per_call": updates_per_call, "gradient": gradient,
          "env_steps_per_s": steps_per_call / seconds[gradient],
          "ms_per_call": 1e3 * seconds[gradient],
          "sensitivity_MiB": sensitivity_bytes / 2**20,
          "bare_pass_GB_per_s": 2 * sensitivity_bytes / bare_per_step / 1e9,
          "rtrl_fraction_of_roofline": fraction,
          "rtrl_part_fraction_of_roofline": rtrl_part,
          "ceiling_fraction_of_roofline": ceiling,
          "in_loop_pass_ms": 1e3 * in_loop["pass"],
          "in_loop_over_bare_pass": in_loop["over_bare"],
          "rtrl_part_in_loop": in_loop["rtrl_part"]})
    print(f"N={hidden}, D={features + 1}: "
          f"rtrl {steps_per_call / seconds['rtrl']:,.0f} steps/s, "
          f"tbptt {steps_per_call / seconds['tbptt']:,.0f} steps/s; RTRL loop "
          f"at {fraction:.1%} of its sensitivity-bandwidth roofline (the work RTRL "
          f"adds at {rtrl_part:.0%}; ceiling with the TBPTT loop's other work "
          f"{ceiling:.0%})", flush=True)
    if in_loop_pass:
      print(f"  one pass over S inside the TBPTT loop: "
            f"{1e3 * in_loop['pass']:.3f} ms per update, "
            f"{in_loop['over_bare']:.1f}x the bare pass; RTRL part with it "
            f"{in_loop['rtrl_part']:.0%}", flush=True)
    if on_size is not None:
      on_size(rows)
  return rows


def print_top_operations(train, runner, trace_dir):
  # Without donation the runner stays valid across the traced calls.
  update = jax.jit(train.step.__wrapped__).lower(runner).compile()
  ops = timing.top_operations(lambda: update(runner), trace_dir)
  with open(os.path.join(trace_dir, "optimized_hlo.txt"), "w") as file:
    file.write(update.as_text())
  print(f"{trace_dir}: longest XLA operations (ms per call, runs per call)")
  for name, ms, runs in ops:
    print(f"  {ms:9.2f} ms  x{runs:6.0f}  {name}")


def parse_sizes(hidden, features):
  """[(N, encoder features)] from the --hidden and --encoder_features lists."""
  hidden = timing.positive_ints("hidden", hidden)
  features = timing.positive_ints("encoder_features", features)
  if len(features) == 1:
    features = features * len(hidden)
  if len(features) != len(hidden):
    raise ValueError(
        f"--encoder_features has {len(features)} values for {len(hidden)} "
        "hidden sizes; give one value or one per --hidden entry")
  return list(zip(hidden, features))


def format_table(rows):
  header = (f"{'N':>4} {'D':>4} {'B':>4} {'M':>3} {'gradient':<8} "
            f"{'env steps/s':>12} {'ms/call':>9} {'S MiB':>7} {'bare GB/s':>9} "
            f"{'RTRL roofline':>13} {'RTRL part':>9} {'ceiling':>7}")
  lines = [header, "-" * len(header)]
  for r in rows:
    lines.append(
        f"{r['N']:>4} {r['D']:>4} {r['B']:>4} {r['M']:>3} {r['gradient']:<8} "
        f"{r['env_steps_per_s']:>12,.0f} {r['ms_per_call']:>9.1f} "
        f"{r['sensitivity_MiB']:>7.2f} {r['bare_pass_GB_per_s']:>9.1f} "
        f"{r['rtrl_fraction_of_roofline']:>13.1%} "
        f"{r['rtrl_part_fraction_of_roofline']:>9.0%} "
        f"{r['ceiling_fraction_of_roofline']:>7.0%}")
  return "\n".join(lines)


def main(argv):
  experiment.cli.start_main(argv, preemptible=False)
  if _QUICK.value:
    sizes, num_envs, updates, rounds = [(16, 8)], 8, 2, 1
  else:
    try:
      sizes = parse_sizes(_HIDDEN.value, _FEATURES.value)
    except ValueError as error:
      sys.exit(f"error: {error}")
    num_envs, updates, rounds = _NUM_ENVS.value, _UPDATES.value, _ROUNDS.value
  print(f"devices: {jax.devices()}", flush=True)
  out_dir = timing.output_dir(_OUT_DIR, _QUICK.value)
  write = lambda rows: timing.write_csv(rows, out_dir, "benchmark_anakin.csv")
  rows = run(sizes, num_envs, _UNROLL.value, updates, _MEMORY.value, rounds,
             _TRACE_DIR.value, on_size=write, in_loop_pass=_IN_LOOP_PASS.value)
  print(format_table(rows))
  print(f"wrote {write(rows)}")


if __name__ == "__main__":
  app.run(main, flags_parser=experiment.cli.parse_flags)
