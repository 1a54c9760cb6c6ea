r"""Benchmark: time per step and compiled memory of RTRL vs BPTT vs TBPTT.

For every hidden size N and segment length T it measures, in one process:

* `rtrl fwd`: the forward pass of `rtrl` (cell + sensitivity update);
* `rtrl fwd per-step`: the same with S advanced step by step (the update
  every step of an actor makes; `rtrl fwd` advances it once per chunk of up
  to 64 steps);
* `rtrl grad`: value and gradient through `rtrl` over the segment;
* `rtrl(M) grad`: the same in chunks of M steps with the state (and
  sensitivities) carried: exact gradients, memory independent of T;
* `bptt grad`: value and gradient through `bptt` over the whole segment
  (full BPTT; state without sensitivities);
* `tbptt grad`: gradients of the same segment cut into chunks of M steps,
  no gradient between chunks;
* `fwd, no S`: the same forward pass without sensitivities (the cell and
  read-out alone: the matrix work of `rtrl fwd`);
* `bare pass`: a scan that reads and writes every sensitivity byte once per
  step (S ← a·S + b, nothing else). Its time is the memory-bandwidth floor of
  an RTRL step that updates S step by step (as an actor does, one step per
  call), so `bare / rtrl fwd` is RTRL's fraction of that roofline. Over a
  T-step segment the eLSTM's `rtrl` advances S in one pass per segment
  (`core._advance_in_one_pass`), so there the ratio can exceed 1: the bare
  pass is then a reference, no longer a floor. The printed fractions (and
  the CSV's `*_fraction_of_roofline` columns) are medians over --rounds
  rounds that time the bare pass and the rtrl forward back to back
  (`timing.paired_seconds`); the table's ms/step are minima over --repeats.

Memory is `jit(...).lower(...).compile().memory_analysis()`: arguments +
outputs + temporaries of the compiled program, deterministic and
device-independent in meaning (peak live bytes as XLA plans them).

    python -m experiments.benchmark_cells            # full table (minutes)
    python -m experiments.benchmark_cells --quick    # seconds, for a smoke run
    python -m experiments.benchmark_cells --hidden=512 --length=100 \
        --trace_dir=/tmp/cells_trace    # + the longest XLA operations

Prints a table and writes `benchmark_cells.csv` and `benchmark_cells.png`
into --out_dir.

    python -m experiments.benchmark_cells --contraction --batch=1024 --hidden=512

times instead the past-gradient contraction Σ_b λ_bᵀ S_b of `rtrl`'s backward
pass (eLSTM, D = --input_size) on the backend JAX runs on: the branch
`core._sum_over_batch` picks there, and its branches forced (`_looped_sum`
as one fused sum of the B examples, "one sum", for B ≤ 256, and as a loop
over the batch, "looped"; `_vectorised_sum`, one fused contraction per
leaf). Each must agree with a float64 reference to 1e-5
relative, and off CPU the lowered program must hold no while loop (a loop
over B there would be B small kernels in sequence); the script exits 1
otherwise. GB/s = the sensitivity bytes (read once) over the time. Writes
`contraction.csv` into --out_dir.
"""

import dataclasses
import functools
import os
import sys

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

import rtrl_jax
from experiments import timing
from rtrl_jax import experiment

_HIDDEN = flags.DEFINE_list("hidden", ["128", "256", "512"], "Hidden sizes N.")
_LENGTH = flags.DEFINE_list("length", ["100", "1000"], "Segment lengths T.")
_BATCH = flags.DEFINE_integer("batch", 32, "Batch size B.", lower_bound=1)
_INPUT = flags.DEFINE_integer("input_size", 257, "Input size D.", lower_bound=1)
_TRUNCATION = flags.DEFINE_integer("truncation", 10, "TBPTT chunk length M.",
                                   lower_bound=1)
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed runs (the minimum is kept).",
                                lower_bound=1)
_ROUNDS = flags.DEFINE_integer(
    "rounds", 9,
    "Paired rounds for the roofline fractions: each round times the bare pass "
    "and both rtrl forwards back to back; the median ratio is reported.",
    lower_bound=1)
_OUT_DIR = flags.DEFINE_string(
    "out_dir", "docs/benchmarks",
    "Where CSV and PNG go (--quick: runs/quick_benchmarks unless given).")
_QUICK = flags.DEFINE_bool("quick", False, "Tiny sizes, for a smoke run.")
_TRACE_DIR = flags.DEFINE_string(
    "trace_dir", None,
    "If set: a jax.profiler trace of `rtrl fwd` and `bare pass` per size goes "
    "to <trace_dir>/N<N>_T<T>_<method>/, and the XLA operations that take "
    "longest are printed (ms per call).")
_CONTRACTION = flags.DEFINE_bool(
    "contraction", False,
    "Time and check the past-gradient contraction instead (see the module "
    "docstring); uses --batch, --hidden, --input_size, --repeats.")


def _loss(outputs):
  return jnp.sum(outputs ** 2)


@dataclasses.dataclass(frozen=True)
class PerStepELSTM(rtrl_jax.ELSTM):
  """The eLSTM with its sensitivities advanced step by step, as before the
  one-pass advance: overriding `update_sensitivities` (with the same
  recursion) makes `rtrl_jax.core` use it at every step."""

  def update_sensitivities(self, recurrent_params, hidden, inputs,
                           sensitivities):
    return super().update_sensitivities(recurrent_params, hidden, inputs,
                                        sensitivities)


def programs(cell, truncation):
  """The measured functions, each (params, state, inputs, resets) -> pytree."""

  def rtrl_forward(params, state, inputs, resets):
    return rtrl_jax.rtrl(cell, params, state, inputs, resets)

  per_step_cell = PerStepELSTM(**{f.name: getattr(cell, f.name)
                                  for f in dataclasses.fields(cell)})

  def rtrl_forward_per_step(params, state, inputs, resets):
    return rtrl_jax.rtrl(per_step_cell, params, state, inputs, resets)

  def rtrl_grad(params, state, inputs, resets):
    def loss(p):
      outputs, new_state = rtrl_jax.rtrl(cell, p, state, inputs, resets)
      return _loss(outputs), new_state
    return jax.value_and_grad(loss, has_aux=True)(params)

  def bptt_grad(params, state, inputs, resets):
    state = state._replace(sensitivities=None)
    return jax.value_and_grad(
        lambda p: _loss(rtrl_jax.bptt(cell, p, state, inputs, resets)[0]))(params)

  def chunked_grad(method, params, state, inputs, resets):
    """Gradients of the sequence cut into chunks of `truncation` steps, the
    state carried between chunks: TBPTT (bptt on a stop-gradient state) or
    RTRL (exact; memory independent of T)."""
    if method == "tbptt":
      state = state._replace(sensitivities=None)
    run = rtrl_jax.rtrl if method == "rtrl" else rtrl_jax.bptt
    chunks = inputs.shape[0] // truncation
    split = lambda a: a[:chunks * truncation].reshape(
        (chunks, truncation) + a.shape[1:])

    def chunk(carry, xs):
      state, grads = carry
      x, r = xs
      def loss(p):
        outputs, new_state = run(cell, p, jax.lax.stop_gradient(state), x, r)
        return _loss(outputs), new_state
      (_, state), g = jax.value_and_grad(loss, has_aux=True)(params)
      return (state, jax.tree.map(jnp.add, grads, g)), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    return jax.lax.scan(chunk, (state, zeros), (split(inputs), split(resets)))[0]

  def forward_without_sensitivities(params, state, inputs, resets):
    return rtrl_jax.bptt(cell, params, state._replace(sensitivities=None),
                         inputs, resets)

  def bare_pass(params, state, inputs, resets):
    del params, resets
    return timing.bare_sensitivity_pass(state.sensitivities, inputs.shape[0])

  return {"rtrl fwd": rtrl_forward, "rtrl fwd per-step": rtrl_forward_per_step,
          "rtrl grad": rtrl_grad,
          f"rtrl({truncation}) grad": functools.partial(chunked_grad, "rtrl"),
          "bptt grad": bptt_grad,
          f"tbptt({truncation}) grad": functools.partial(chunked_grad, "tbptt"),
          "fwd, no S": forward_without_sensitivities,
          "bare pass": bare_pass}


def _call(fn, args):
  jax.block_until_ready(fn(*args))


def print_top_operations(fn, args, trace_dir):
  compiled = jax.jit(fn)
  ops = timing.top_operations(lambda: compiled(*args), trace_dir)
  print(f"{trace_dir}: longest XLA operations (ms per call, runs per call)")
  for name, ms, runs in ops:
    print(f"  {ms:9.2f} ms  x{runs:6.0f}  {name}")


def run(hidden_sizes, lengths, batch, input_size, truncation, repeats,
        rounds, trace_dir=None):
  rows = []
  for hidden in hidden_sizes:
    cell = rtrl_jax.ELSTM(hidden)
    params = cell.init(jax.random.PRNGKey(0), input_size)
    state = cell.initial_state(params, batch)
    sensitivity_bytes = sum(s.nbytes for s in jax.tree.leaves(state.sensitivities))
    for length in lengths:
      inputs = jax.random.normal(jax.random.PRNGKey(1), (length, batch, input_size))
      resets = jnp.zeros((length, batch), bool)
      results, jitted = {}, {}
      args = (params, state, inputs, resets)
      for name, fn in programs(cell, truncation).items():
        seconds, memory = timing.measure(fn, args, repeats)
        results[name] = seconds
        jitted[name] = jax.jit(fn)
        rows.append({"N": hidden, "T": length, "B": batch, "D": input_size,
                     "method": name, "ms_per_step": 1e3 * seconds / length,
                     "memory_MiB": memory / 2**20,
                     "sensitivity_MiB": sensitivity_bytes / 2**20})
      if trace_dir:
        for name in ("rtrl fwd", "bare pass"):
          print_top_operations(
              programs(cell, truncation)[name], (params, state, inputs, resets),
              os.path.join(trace_dir,
                           f"N{hidden}_T{length}_{name.replace(' ', '_')}"))
      paired = timing.paired_seconds(
          {k: functools.partial(_call, jitted[k], args)
           for k in ("bare pass", "rtrl fwd", "rtrl fwd per-step")}, rounds)
      roofline, per_step = (
          timing.median_ratio(paired["bare pass"], paired[k])
          for k in ("rtrl fwd", "rtrl fwd per-step"))
      for row in rows[-len(results):]:
        row["rtrl_fwd_fraction_of_roofline"] = roofline
        row["rtrl_fwd_per_step_fraction_of_roofline"] = per_step
      print(f"N={hidden} T={length}: rtrl fwd at {roofline:.0%} of the bare "
            f"read+write pass (step by step: {per_step:.0%}; medians of "
            f"{rounds} paired rounds)", flush=True)
  return rows


# The "one sum" row (B terms traced into one expression) only up to this
# batch: it is the alternative to the loop that `core.ONE_SUM_EXAMPLES`
# was chosen against, and a sum of B = 1024 terms is slow to compile.
ONE_SUM_MOST_EXAMPLES = 256


def contraction_rows(batch, hidden, input_size, repeats):
  """The contraction check: rows for the dispatched, one-sum, looped and
  vectorised contractions, each with its time, GB/s, relative error and
  while loops."""
  from rtrl_jax import core  # pylint: disable=g-import-not-at-top
  cell = rtrl_jax.ELSTM(hidden)
  params = cell.init(jax.random.PRNGKey(0), input_size)
  keys = jax.random.split(jax.random.PRNGKey(1), 7)
  zero = jax.eval_shape(cell.zero_sensitivities, params)
  sens = {name: jax.random.normal(key, (batch,) + leaf.shape)
          for key, (name, leaf) in zip(keys, sorted(zero.items()))}
  cotangent = jax.random.normal(keys[-1], (batch, hidden))
  reference = {name: np.einsum(
      "bn,bn...->n...", np.asarray(cotangent, np.float64),
      np.asarray(leaf, np.float64)) for name, leaf in sens.items()}
  sensitivity_bytes = sum(leaf.nbytes for leaf in sens.values())
  paths = {
      "dispatched": functools.partial(core._sum_over_batch, cell),
      "one sum": functools.partial(core._looped_sum,
                                   cell.contract_sensitivities,
                                   one_sum_examples=batch),
      "looped": functools.partial(core._looped_sum,
                                  cell.contract_sensitivities,
                                  one_sum_examples=0),
      "vectorised": functools.partial(core._vectorised_sum, cell),
  }
  if batch > ONE_SUM_MOST_EXAMPLES:
    del paths["one sum"]
  rows = []
  for name, fn in paths.items():
    seconds, _ = timing.measure(fn, (cotangent, sens), repeats)
    got = jax.jit(fn)(cotangent, sens)
    error = max(float(np.max(np.abs(np.asarray(got[k]) - reference[k]))
                      / np.max(np.abs(reference[k]))) for k in reference)
    lowered = jax.jit(fn).lower(cotangent, sens).as_text()
    rows.append({"backend": jax.default_backend(), "B": batch, "N": hidden,
                 "D": input_size, "path": name, "ms": 1e3 * seconds,
                 "GB_per_s": sensitivity_bytes / seconds / 1e9,
                 "relative_error": error,
                 "while_loops": lowered.count("stablehlo.while")})
  return rows


def check_contraction(rows):
  """Problems with the contraction rows (empty: all good)."""
  problems = [f"{r['path']}: relative error {r['relative_error']:.2e} > 1e-5"
              for r in rows if not r["relative_error"] <= 1e-5]
  dispatched = next(r for r in rows if r["path"] == "dispatched")
  if dispatched["backend"] != "cpu" and dispatched["while_loops"]:
    problems.append(f"{dispatched['backend']}: the dispatched contraction has "
                    f"{dispatched['while_loops']} while loop(s)")
  return problems


def run_contraction(out_dir, batch, hidden, input_size, repeats):
  rows = contraction_rows(batch, hidden, input_size, repeats)
  print(f"past-gradient contraction, {rows[0]['backend']}: B={batch} "
        f"N={hidden} D={input_size}")
  print(f"{'path':<11} {'ms':>9} {'GB/s':>8} {'rel. error':>10} {'whiles':>6}")
  for r in rows:
    print(f"{r['path']:<11} {r['ms']:>9.3f} {r['GB_per_s']:>8.1f} "
          f"{r['relative_error']:>10.1e} {r['while_loops']:>6}")
  print(f"wrote {timing.write_csv(rows, out_dir, 'contraction.csv')}")
  problems = check_contraction(rows)
  if problems:
    sys.exit("error: " + "; ".join(problems))


def print_table(rows):
  header = f"{'N':>4} {'T':>5} {'method':<16} {'ms/step':>9} {'memory MiB':>11}"
  print(header)
  print("-" * len(header))
  for r in rows:
    print(f"{r['N']:>4} {r['T']:>5} {r['method']:<16} {r['ms_per_step']:>9.3f} "
          f"{r['memory_MiB']:>11.1f}")


def plot(rows, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  lengths = sorted({r["T"] for r in rows})
  fig, axes = plt.subplots(1, 2 * len(lengths), figsize=(5 * 2 * len(lengths), 4))
  for i, length in enumerate(lengths):
    for method in dict.fromkeys(r["method"] for r in rows):
      sel = [r for r in rows if r["T"] == length and r["method"] == method]
      ns = [r["N"] for r in sel]
      axes[2 * i].plot(ns, [r["ms_per_step"] for r in sel], "o-", label=method)
      axes[2 * i + 1].plot(ns, [r["memory_MiB"] for r in sel], "o-", label=method)
    axes[2 * i].set(title=f"time, T={length}", xlabel="N", ylabel="ms / step",
                    xscale="log", yscale="log")
    axes[2 * i + 1].set(title=f"compiled memory, T={length}", xlabel="N",
                        ylabel="MiB", xscale="log", yscale="log")
  axes[0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def main(argv):
  experiment.cli.start_main(argv, preemptible=False)
  if _CONTRACTION.value:
    try:
      hidden = timing.positive_ints("hidden", _HIDDEN.value)
    except ValueError as error:
      sys.exit(f"error: {error}")
    batch = 8 if _QUICK.value else _BATCH.value
    for n in ([16] if _QUICK.value else hidden):
      run_contraction(timing.output_dir(_OUT_DIR, _QUICK.value), batch, n,
                      _INPUT.value, 1 if _QUICK.value else _REPEATS.value)
    return
  if _QUICK.value:
    hidden, lengths, repeats, rounds = [16, 32], [20], 1, 1
  else:
    try:
      hidden = timing.positive_ints("hidden", _HIDDEN.value)
      lengths = timing.positive_ints("length", _LENGTH.value)
    except ValueError as error:
      sys.exit(f"error: {error}")
    repeats, rounds = _REPEATS.value, _ROUNDS.value
  for t in lengths:
    if t % _TRUNCATION.value:
      sys.exit(f"error: --length {t} is not a multiple of --truncation "
               f"{_TRUNCATION.value}")
  print(f"devices: {jax.devices()}  B={_BATCH.value} D={_INPUT.value}", flush=True)
  rows = run(hidden, lengths, _BATCH.value, _INPUT.value, _TRUNCATION.value,
             repeats, rounds, _TRACE_DIR.value)
  print_table(rows)
  out_dir = timing.output_dir(_OUT_DIR, _QUICK.value)
  csv_path = timing.write_csv(rows, out_dir, "benchmark_cells.csv")
  png_path = os.path.join(out_dir, "benchmark_cells.png")
  plot(rows, png_path)
  print(f"wrote {csv_path} and {png_path}")


if __name__ == "__main__":
  app.run(main, flags_parser=experiment.cli.parse_flags)
