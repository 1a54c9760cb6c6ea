r"""Multi-layer RTRL report: layer-wise approximation vs. exact, and cost table.

    python -m experiments.multilayer_report            # writes docs/MULTILAYER.md

Part 1 (alignment). Stacks of 1-3 eLSTM layers on a delayed-recall task
(target y(t) = x(t - delay)). A window of `--window` steps is cut into
segments of length M; per segment, the layer-wise approximation
(`multilayer.stacked_rtrl`: each layer's own RTRL, errors between layers
within the segment only) and stacked TBPTT are compared with the true
gradient (BPTT through the window), summed over the window's segments: cosine
and relative norm per parameter leaf (`rtrl_jax.diagnostics`). The exact
two-layer RTRL (`multilayer.ExactTwoLayer`) is shown for depth 2.

Part 2 (cost). One gradient step on a segment of T steps, batch B, for
widths N and depths 1-3: exact RTRL (one layer: `rtrl`; two layers:
`ExactTwoLayer`; three: not implemented) vs. the layer-wise approximation.
Memory from XLA's `compiled.memory_analysis()` (temporaries, and the
arguments, which hold the carried state with its sensitivities); time per
step is the median wall time of the compiled step divided by T.

Every number in the report comes from one run of this script; the command,
the machine and its load are written at the top.
"""

import argparse
import datetime
import functools
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import rtrl_jax
from rtrl_jax import diagnostics, oracle
from rtrl_jax.cells.multilayer import ExactTwoLayer, LayerStack

# Fast compiling for the alignment part only (not for the timings).
FAST_COMPILE = oracle.FAST_CPU_COMPILE


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--depths", type=int, nargs="+", default=[1, 2, 3])
  parser.add_argument("--segment-lengths", type=int, nargs="+",
                      default=[2, 8, 32])
  parser.add_argument("--window", type=int, default=64)
  parser.add_argument("--hidden", type=int, default=8)
  parser.add_argument("--input-size", type=int, default=4)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--delay", type=int, default=6)
  parser.add_argument("--cost-widths", type=int, nargs="+",
                      default=[8, 16, 32])
  parser.add_argument("--cost-depths", type=int, nargs="+", default=[1, 2, 3])
  parser.add_argument("--cost-segment", type=int, default=16)
  parser.add_argument("--cost-batch", type=int, default=8)
  parser.add_argument("--repeats", type=int, default=20)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", default="docs/MULTILAYER.md")
  args = parser.parse_args()
  sizes = {name: getattr(args, name.replace("-", "_")) for name in (
      "depths", "segment-lengths", "window", "hidden", "input-size", "batch",
      "delay", "cost-widths", "cost-depths", "cost-segment", "cost-batch",
      "repeats")}
  for name, value in sizes.items():
    if min(value if isinstance(value, list) else [value]) < 1:
      parser.error(f"--{name}: must be >= 1, got {value}")
  uneven = [m for m in args.segment_lengths if args.window % m]
  if uneven:
    parser.error(f"--segment-lengths: {uneven} do not divide --window="
                 f"{args.window} (the window is cut into whole segments)")
  return args


def make_layer(hidden):
  return rtrl_jax.ELSTM(hidden, forget_bias=2.0, init_scale=0.5)


def recall_loss(outputs, targets):
  """Squared error of the first D outputs against the delayed inputs."""
  d = targets.shape[-1]
  return jnp.sum((outputs[..., :d] - targets) ** 2)


def recall_problem(args):
  keys = jax.random.split(jax.random.PRNGKey(args.seed), 2)
  total = args.window + args.delay
  inputs = jax.random.normal(keys[0], (total, args.batch, args.input_size))
  targets = inputs[:-args.delay]
  return inputs[args.delay:], targets


@functools.partial(jax.jit, static_argnums=(0, 1, 2),
                   compiler_options=FAST_COMPILE)
def _alignment(model, segment_length, methods, params, state, inputs, resets,
               targets):
  return diagnostics.gradient_alignment_report(
      model, params, state, inputs, resets, targets, recall_loss,
      segment_length, methods)


def alignment_rows(args):
  """{(depth, M): {method: {leaf name: (cosine, relative norm)}}}."""
  inputs, targets = recall_problem(args)
  resets = jnp.zeros(inputs.shape[:2], bool)
  results = {}
  for depth in args.depths:
    stack = LayerStack(tuple(make_layer(args.hidden) for _ in range(depth)))
    params = stack.init(jax.random.PRNGKey(args.seed + 1), args.input_size)
    state = stack.initial_state(params, args.batch)
    for length in args.segment_lengths:
      report = _alignment(stack, length, ("rtrl", "tbptt"), params, state,
                          inputs, resets, targets)
      rows = {m: _leaf_metrics(report[m]) for m in report}
      if depth == 2:
        exact = ExactTwoLayer(*stack.cells)
        exact_params = {"recurrent": {"lower": params[0],
                                      "upper": params[1]["recurrent"]},
                        "readout": params[1]["readout"]}
        report = _alignment(exact, length, ("rtrl",), exact_params,
                            exact.initial_state(exact_params, args.batch),
                            inputs, resets, targets)
        rows["exact"] = {_exact_to_stack_name(k): v for k, v in
                         _leaf_metrics(report["rtrl"]).items()}
      results[(depth, length)] = rows
      print(f"alignment depth={depth} M={length} done", flush=True)
  return results


def _leaf_metrics(report):
  flat = diagnostics.flatten_report(report)
  leaves = {}
  for key, value in flat.items():
    name, metric = key.rsplit("/", 1)
    leaves.setdefault(name, {})[metric] = value
  return {name: (m["cosine"], m["relative_norm"]) for name, m in leaves.items()}


def _exact_to_stack_name(name):
  """'recurrent/lower/recurrent/Z' -> '0/recurrent/Z' (the stack's naming)."""
  parts = name.split("/")
  if parts[:2] == ["recurrent", "lower"]:
    return "/".join(["0"] + parts[2:])
  if parts[:2] == ["recurrent", "upper"]:
    return "/".join(["1", "recurrent"] + parts[2:])
  return "/".join(["1"] + parts)


def _grad_step(run, loss_targets):
  def step(params, state, inputs, resets):
    def loss(p):
      outputs, new_state = run(p, state, inputs, resets)
      return jnp.sum(outputs ** 2) * loss_targets, new_state
    return jax.grad(loss, has_aux=True)(params)
  return jax.jit(step)


def cost_rows(args):
  """[(N, depth, method, temp MiB, argument MiB, sens/example, µs/step)]."""
  rows = []
  t, b = args.cost_segment, args.cost_batch
  for n in args.cost_widths:
    d = n  # Inputs as wide as the layers (D = N), as in the paper's O(N²).
    inputs = jax.random.normal(jax.random.PRNGKey(0), (t, b, d))
    resets = jnp.zeros((t, b), bool)
    for depth in args.cost_depths:
      cells = tuple(make_layer(n) for _ in range(depth))
      stack = LayerStack(cells)
      stack_params = stack.init(jax.random.PRNGKey(1), d)
      setups = [("approximate", stack_params,
                 stack.initial_state(stack_params, b),
                 lambda p, s, x, r: stack("rtrl", p, s, x, r))]
      if depth == 1:
        setups = [("exact = approximate", stack_params[0],
                   cells[0].initial_state(stack_params[0], b),
                   functools.partial(rtrl_jax.rtrl, cells[0]))]
      elif depth == 2:
        exact = ExactTwoLayer(*cells)
        exact_params = exact.init(jax.random.PRNGKey(1), d)
        setups.append(("exact", exact_params,
                       exact.initial_state(exact_params, b),
                       functools.partial(rtrl_jax.rtrl, exact)))
      for method, params, state, run in setups:
        step = _grad_step(run, 1.0)
        compiled = step.lower(params, state, inputs, resets).compile()
        memory = compiled.memory_analysis()
        jax.block_until_ready(compiled(params, state, inputs, resets))
        times = []
        for _ in range(args.repeats):
          start = time.perf_counter()
          jax.block_until_ready(compiled(params, state, inputs, resets))
          times.append(time.perf_counter() - start)
        sens = sum(leaf.size for s in jax.tree.leaves(
            state, is_leaf=lambda x: isinstance(x, rtrl_jax.RecurrentState))
                   for leaf in jax.tree.leaves(s.sensitivities)) // b
        rows.append((n, depth, method,
                     memory.temp_size_in_bytes / 2 ** 20,
                     memory.argument_size_in_bytes / 2 ** 20, sens,
                     1e6 * statistics.median(times) / t))
        print(f"cost N={n} depth={depth} {method} done", flush=True)
      if depth == 3:
        rows.append((n, depth, "exact", None, None, None, None))
  return rows


def _fmt(value, digits=3):
  return "n/a" if value is None else f"{value:.{digits}f}"


def _summary(args, alignment):
  """Per depth and M: cosine and relative norm over the layers below the top
  (the top layer is exact for stacked RTRL), min and median over leaves."""
  lines = [
      "Summary over the parameters of all layers below the top one (the top "
      "layer's gradient is exact for stacked RTRL; for depth 1 the whole "
      "layer): min and median over leaves.",
      "",
      "| depth | M | stacked RTRL cosine min / median | relative norm min / "
      "median | TBPTT cosine min / median | relative norm min / median | "
      "exact max abs(1 - cosine) |",
      "|---|---|---|---|---|---|---|",
  ]
  for depth in args.depths:
    for length in args.segment_lengths:
      rows = alignment[(depth, length)]
      below = [name for name in rows["rtrl"]
               if depth == 1 or int(name.split("/")[0]) < depth - 1]
      cells = []
      for method in ("rtrl", "tbptt"):
        for index in (0, 1):
          values = [rows[method][name][index] for name in below]
          cells.append(f"{min(values):.3f} / {np.median(values):.3f}")
      exact = ("n/a" if "exact" not in rows else
               f"{max(abs(1 - c) for c, _ in rows['exact'].values()):.1e}")
      lines.append(f"| {depth} | {length} | " + " | ".join(cells)
                   + f" | {exact} |")
  return lines + [""]


def write_report(args, alignment, costs, seconds):
  lines = [
      "# Multi-layer RTRL: layer-wise approximation vs. exact gradient",
      "",
      "Generated by `experiments/multilayer_report.py`; do not edit by hand.",
      "",
      "Command:",
      "",
      "    python -m experiments.multilayer_report " + " ".join(
          f"--{k.replace('_', '-')} "
          + (" ".join(map(str, v)) if isinstance(v, list) else str(v))
          for k, v in sorted(vars(args).items())),
      "",
      f"Run: {datetime.datetime.now().isoformat(timespec='minutes')}, "
      f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU "
      f"cores, load average {os.getloadavg()[0]:.1f} at the end (the machine "
      f"is shared: timings are noisy), jax {jax.__version__} on "
      f"{jax.devices()[0].platform}, {seconds:.0f} s in all.",
      "",
      "## 1. Alignment with the true gradient",
      "",
      f"eLSTM layers (N = {args.hidden}, forget bias 2), input D = "
      f"{args.input_size}, batch {args.batch}, window of {args.window} steps "
      f"without resets, delayed recall (target x(t - {args.delay}) on the "
      "first D outputs, squared error per step). Each cell is cosine / "
      "relative norm of the gradient summed over the window's segments of "
      "length M, against BPTT through the window, one parameter leaf per row "
      "(layer 0 is the bottom). `stacked RTRL` is the layer-wise "
      "approximation; `TBPTT` truncates every layer at segment boundaries; "
      "`exact` is `ExactTwoLayer`.",
      "",
  ]
  lines += _summary(args, alignment)
  for depth in args.depths:
    lines += [f"### Depth {depth}", ""]
    columns = [f"{m} M={length}" for length in args.segment_lengths
               for m in (["stacked RTRL", "TBPTT"]
                         + (["exact"] if depth == 2 else []))]
    lines += ["| parameter | " + " | ".join(columns) + " |",
              "|---" * (len(columns) + 1) + "|"]
    names = sorted(alignment[(depth, args.segment_lengths[0])]["rtrl"])
    for name in names:
      cells = []
      for length in args.segment_lengths:
        rows = alignment[(depth, length)]
        for method in ["rtrl", "tbptt"] + (["exact"] if depth == 2 else []):
          cosine, norm = rows[method][name]
          cells.append(f"{cosine:.3f} / {norm:.3f}")
      lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
  lines += [
      "## 2. Cost of one gradient step",
      "",
      f"Segment T = {args.cost_segment}, batch B = {args.cost_batch}, eLSTM "
      "layers of width N with inputs D = N. `temp` and `args` are XLA's "
      "temporary and argument buffers of the compiled gradient step "
      "(`.lower().compile().memory_analysis()`; the arguments include the "
      "carried state with its sensitivities); `sens/example` is the number "
      "of sensitivity values carried per example; time is the median of "
      f"{args.repeats} runs divided by T. Exact RTRL for three layers is not "
      "implemented (n/a).",
      "",
      "| N | layers | method | temp MiB | args MiB | sens/example | µs/step |",
      "|---|---|---|---|---|---|---|",
  ]
  for n, depth, method, temp, arg, sens, micros in costs:
    lines.append(f"| {n} | {depth} | {method} | {_fmt(temp)} | {_fmt(arg)} | "
                 f"{'n/a' if sens is None else sens} | {_fmt(micros, 1)} |")
  lines.append("")
  with open(args.out, "w") as f:
    f.write("\n".join(lines))


def main():
  args = parse_args()
  start = time.time()
  alignment = alignment_rows(args)
  costs = cost_rows(args)
  write_report(args, alignment, costs, time.time() - start)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
