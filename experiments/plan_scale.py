r"""Scale planner: RTRL sensitivity memory and bandwidth roofline per device.

    python -m experiments.plan_scale --cell=elstm --hidden=512 --input=257 \
        --envs_per_device=1024 --unroll=10 --device=h100
    python -m experiments.plan_scale ... --device=all        # one row per device
    python -m experiments.plan_scale ... --check_csv=docs/benchmarks/benchmark_anakin.csv
    python -m experiments.plan_scale ... --memory=compiled   # XLA's buffers

For a cell of `rtrl_jax.CELLS` (default options) with N hidden units on
inputs of size D, B environments per device and unroll length M:

* Sensitivities per environment, |S| (floats; closed forms below, checked
  against the state `cell.initial_state` allocates by tests/plan_scale_test.py):

      elstm               2·N·D + 4·N          (Z, F; w_z, w_f, b_z, b_f)
      indrnn              N·D + 2·N            (W; u, b)
      qrnn                2·N·k·D + 2·N        (window k = 2)
      lru                 2·N·D + 4·N          (B, ν, θ as re/im pairs)
      linear_transformer  H·d_k·D·(1 + d_v)    (H = 1, d_k = d_v = N)

* Memory per device (`--memory=formula`, the default): C·B·|S|·bytes with
  C = 2. The compiled Anakin program holds S once (the runner is donated
  and the advance writes S(M) over S(0); tests/anakin_deferred_test.py);
  the second copy stands for what else grows with B: per-step activations
  and the advance's emitted factors, O(M·N) per environment for each
  sensitivity leaf, plus the environments. The largest B that fits puts
  C·B·|S| into a fraction f of the device's memory (f = 0.75: JAX's
  default GPU preallocation). C = 2 is too large where D is large and too
  small where D is small: the compiled CPU program holds about 1.2·|S|
  per environment at N = 512, D = 257, M = 5, and 2.6·|S| at N = 64,
  D = 33.
  `--memory=compiled` (eLSTM, float32) measures it instead: it compiles
  one Anakin RTRL update (`experiments.configs.r2ac`, encoder output
  D − 1) for 256 and 512 environments with the backend JAX has here and
  takes XLA's buffer sizes (`memory_analysis`: arguments + temporaries +
  outputs not aliased to the donated runner) as fixed + B·per environment.
  On a CPU this is the CPU compiler's buffer assignment: for an
  accelerator it is an estimate, not a measurement there.

* Bandwidth roofline per environment step: the learner reads the unroll's
  initial S once per M steps; the actor reads and writes S once per unroll
  (`--actor=once_per_unroll`, the default: the Anakin rollout advances S
  over the whole unroll in one pass, docs/ANAKIN.md) or once per step
  (`--actor=every_step`: an actor that steps S with the hidden state, as
  the Sebulba actor and the paper's do):

      t_actor = 2·|S|·bytes / (M·BW)  or  2·|S|·bytes / BW
      t_learner = |S|·bytes / (M·BW)

  so a device runs at most 1 / (t_actor + t_learner) environment steps/s
  of RTRL work (everything else the loop does comes on top).

Device figures are vendors' published HBM capacity and bandwidth per chip
(`DEVICES`, with the page they come from): every accelerator number this
script prints is COMPUTED, NOT MEASURED. The CPU row is measured here and
now: the bandwidth of a numpy copy (read + write) and the machine's RAM.
`--check_csv` compares the CPU model (with the Anakin actor, once per
unroll) with a measured `make bench-anakin` CSV: the sensitivity MiB must
match exactly, and the time RTRL adds per environment step (RTRL call − TBPTT call) must lie
within `CHECK_FACTOR` of the CPU roofline (above it: nothing runs faster than
its bytes; at most CHECK_FACTOR times slower).
"""

import argparse
import csv
import math
import os
import sys
import time

import numpy as np

BYTES = {"float32": 4, "bfloat16": 2, "float64": 8}
COPIES = 2
MEMORY_FRACTION = 0.75
# The measured RTRL part may be at most this many times slower than the
# CPU roofline (docs/ANAKIN.md measured it at 36-62% of the XLA bare pass).
CHECK_FACTOR = 4.0
GB, GIB = 1e9, 2 ** 30

# Published per-chip HBM capacity (bytes) and bandwidth (bytes/s).
DEVICES = {
    "h100": dict(
        name="NVIDIA H100 SXM", memory=80 * GB, bandwidth=3.35e12,
        source="https://www.nvidia.com/en-us/data-center/h100/ "
               "(H100 SXM: 80 GB HBM3, 3.35 TB/s)"),
    "h200": dict(
        name="NVIDIA H200 SXM", memory=141 * GB, bandwidth=4.8e12,
        source="https://www.nvidia.com/en-us/data-center/h200/ "
               "(141 GB HBM3e, 4.8 TB/s)"),
    "a100": dict(
        name="NVIDIA A100 80GB SXM", memory=80 * GB, bandwidth=2.039e12,
        source="https://www.nvidia.com/en-us/data-center/a100/ "
               "(A100 80GB SXM: 80 GB HBM2e, 2,039 GB/s)"),
    "tpu_v4": dict(
        name="TPU v4 (per chip)", memory=32 * GIB, bandwidth=1200 * GB,
        source="https://cloud.google.com/tpu/docs/v4 "
               "(HBM2 32 GiB, 1200 GBps per chip)"),
    "tpu_v5e": dict(
        name="TPU v5e (per chip)", memory=16 * GB, bandwidth=819 * GB,
        source="https://cloud.google.com/tpu/docs/v5e "
               "(HBM2 16 GB, 819 GBps per chip)"),
    "tpu_v5p": dict(
        name="TPU v5p (per chip)", memory=95 * GB, bandwidth=2765 * GB,
        source="https://cloud.google.com/tpu/docs/v5p "
               "(HBM2e 95 GB, 2765 GBps per chip)"),
}
DEVICE_CHOICES = list(DEVICES) + ["cpu", "all", "detect"]
# jax.devices()[0].device_kind substrings → DEVICES key (first match wins).
DEVICE_KINDS = (("H200", "h200"), ("H100", "h100"), ("A100", "a100"),
                ("TPU v4", "tpu_v4"), ("TPU v5 lite", "tpu_v5e"),
                ("TPU v5e", "tpu_v5e"), ("TPU v5p", "tpu_v5p"),
                ("TPU v5", "tpu_v5p"))
CELL_CHOICES = ("elstm", "indrnn", "qrnn", "lru", "linear_transformer")
QRNN_WINDOW = 2          # QRNN's default window
LT_HEADS = 1             # LinearTransformer's defaults: one head, d_k = N


def sensitivity_floats(cell, hidden, input_size):
  """|S|: sensitivity numbers of one example (closed forms, see module doc)."""
  n, d = hidden, input_size
  if cell in ("elstm", "lru"):
    return 2 * n * d + 4 * n
  if cell == "indrnn":
    return n * d + 2 * n
  if cell == "qrnn":
    return 2 * n * QRNN_WINDOW * d + 2 * n
  if cell == "linear_transformer":
    return LT_HEADS * n * d * (1 + n)
  raise ValueError(f"--cell={cell!r} is not one of {list(CELL_CHOICES)}")


ACTORS = ("once_per_unroll", "every_step")


def roofline_seconds(sensitivity_bytes, unroll, bandwidth,
                     actor="once_per_unroll"):
  """(t_actor, t_learner): seconds per environment step at `bandwidth`,
  for an actor that advances S once per unroll or every step (`ACTORS`)."""
  if actor not in ACTORS:
    raise ValueError(f"actor={actor!r} is not one of {list(ACTORS)}")
  actor_passes_per_step = 1 / unroll if actor == "once_per_unroll" else 1
  return (2 * sensitivity_bytes * actor_passes_per_step / bandwidth,
          sensitivity_bytes / (unroll * bandwidth))


def largest_batch(sensitivity_bytes, memory, copies=COPIES,
                  fraction=MEMORY_FRACTION, fixed_bytes=0):
  """Largest B with fixed + copies·B·|S| bytes ≤ fraction·memory."""
  return max(0, int((fraction * memory - fixed_bytes)
                    // (copies * sensitivity_bytes)))


# Per-environment bytes are the same from these batches on (measured at
# N = 64 and 512: 8 and 16 gave 3-5% less, 64 and 128 about 1% more).
MEMORY_BATCHES = (256, 512)


def compiled_memory(hidden, input_size, unroll, batches=MEMORY_BATCHES):
  """(fixed bytes, bytes per environment) of one compiled Anakin RTRL update
  of the eLSTM agent (see the module doc, `--memory=compiled`)."""
  import jax  # pylint: disable=g-import-not-at-top
  # pylint: disable-next=g-import-not-at-top
  from experiments.configs import r2ac as r2ac_configs
  from rtrl_jax.rl import from_config  # pylint: disable=g-import-not-at-top
  totals = []
  for envs in batches:
    config = r2ac_configs.tiny()
    config.network.hidden_size = hidden
    config.network.encoder_sizes = (input_size - 1,)
    config.num_envs, config.unroll_length = envs, unroll
    config.updates_per_call = 1
    train = from_config.anakin_system(config)
    runner = jax.eval_shape(train.init, jax.random.PRNGKey(0))
    sizes = train.step.lower(runner).compile().memory_analysis()
    totals.append(sizes.argument_size_in_bytes + sizes.temp_size_in_bytes
                  + sizes.output_size_in_bytes - sizes.alias_size_in_bytes)
  per_env = (totals[1] - totals[0]) / (batches[1] - batches[0])
  return totals[0] - batches[0] * per_env, per_env


def measure_cpu_bandwidth(megabytes=256, repeats=5):
  """Bytes/s of a numpy copy (each byte read once and written once)."""
  src = np.ones(megabytes * 2 ** 20 // 8)
  dst = np.empty_like(src)
  np.copyto(dst, src)
  best = math.inf
  for _ in range(repeats):
    start = time.perf_counter()
    np.copyto(dst, src)
    best = min(best, time.perf_counter() - start)
  return 2 * src.nbytes / best


def cpu_memory_bytes():
  """Physical RAM of this machine."""
  return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def detect_device(platform, device_kind):
  """The DEVICES key (or "cpu") for a JAX device; ValueError if unknown."""
  if platform == "cpu":
    return "cpu"
  for marker, name in DEVICE_KINDS:
    if marker.lower() in device_kind.lower():
      return name
  raise ValueError(
      f"--device=detect: no published figures for {device_kind!r} "
      f"({platform}); pass one of {list(DEVICES)} or cpu")


def plan_row(device, memory, bandwidth, per_env_bytes, envs, unroll, label,
             actor="once_per_unroll", resident=None):
  """One device's plan as a dict (bytes, seconds, counts). `resident`:
  (fixed bytes, bytes per environment) from `compiled_memory`, else the
  formula's (0, COPIES·|S|)."""
  actor_s, learner_s = roofline_seconds(per_env_bytes, unroll, bandwidth,
                                        actor)
  fixed, resident_per_env = resident or (0, COPIES * per_env_bytes)
  resident_bytes = fixed + envs * resident_per_env
  return {
      "device": device, "label": label, "memory_bytes": memory,
      "bandwidth_bytes_per_s": bandwidth,
      "sensitivity_bytes_per_device": envs * per_env_bytes,
      "resident_bytes_per_device": resident_bytes,
      "fits": resident_bytes <= MEMORY_FRACTION * memory,
      "largest_batch": largest_batch(resident_per_env, memory, copies=1,
                                     fixed_bytes=fixed),
      "actor_ns_per_env_step": 1e9 * actor_s,
      "learner_ns_per_env_step": 1e9 * learner_s,
      "env_steps_per_s": 1.0 / (actor_s + learner_s),
  }


def plan(cell, hidden, input_size, envs, unroll, devices, dtype="float32",
         cpu_bandwidth=None, actor="once_per_unroll", resident=None):
  """Rows of `plan_row` for `devices` (names of DEVICES or "cpu")."""
  per_env = sensitivity_floats(cell, hidden, input_size) * BYTES[dtype]
  rows = []
  for device in devices:
    if device == "cpu":
      bandwidth = cpu_bandwidth or measure_cpu_bandwidth()
      rows.append(plan_row("cpu", cpu_memory_bytes(), bandwidth, per_env,
                           envs, unroll, "measured here (numpy copy, RAM)",
                           actor, resident))
    else:
      spec = DEVICES[device]
      rows.append(plan_row(device, spec["memory"], spec["bandwidth"], per_env,
                           envs, unroll, "computed, not measured", actor,
                           resident))
  return rows


def format_plan(rows, cell, hidden, input_size, envs, unroll, dtype,
                actor="once_per_unroll", resident=None):
  floats = sensitivity_floats(cell, hidden, input_size)
  if resident is None:
    memory = (f"resident: {COPIES}·|S| per environment (S + an allowance for "
              "what else grows with B)")
  else:
    memory = (f"resident: {resident[1] / 2**20:.3f} MiB per environment + "
              f"{resident[0] / 2**20:.1f} MiB, from the compiled program "
              f"({jax_backend()} compiler)")
  lines = [
      f"{cell}: N={hidden}, D={input_size}, B={envs} environments per device, "
      f"M={unroll}, {dtype}; the actor advances S {actor.replace('_', ' ')}",
      f"sensitivities per environment: {floats:,} numbers = "
      f"{floats * BYTES[dtype] / 2**20:.3f} MiB; {memory}, in "
      f"{MEMORY_FRACTION:.0%} of device memory",
      "",
      f"{'device':<9} {'memory GB':>9} {'GB/s':>7} {'S GB/dev':>8} "
      f"{'fits':>4} {'max B':>9} {'actor ns':>9} {'learner ns':>10} "
      f"{'env steps/s':>12}  figures",
  ]
  lines.append("-" * len(lines[-1]))
  for r in rows:
    lines.append(
        f"{r['device']:<9} {r['memory_bytes'] / GB:>9.1f} "
        f"{r['bandwidth_bytes_per_s'] / GB:>7.1f} "
        f"{r['sensitivity_bytes_per_device'] / GB:>8.3f} "
        f"{'yes' if r['fits'] else 'NO':>4} {r['largest_batch']:>9,} "
        f"{r['actor_ns_per_env_step']:>9.1f} "
        f"{r['learner_ns_per_env_step']:>10.1f} "
        f"{r['env_steps_per_s']:>12,.0f}  {r['label']}")
  lines.append("")
  lines.append("GB = 1e9 bytes. S GB/dev: B·|S|, one copy. env steps/s: the "
               "bandwidth roofline of the RTRL work alone, per device; the "
               "rest of the loop comes on top.")
  for r in rows:
    if r["device"] in DEVICES:
      lines.append(f"  {r['device']}: {DEVICES[r['device']]['source']}")
  return "\n".join(lines)


def jax_backend():
  import jax  # pylint: disable=g-import-not-at-top
  return jax.default_backend().upper()


def check_against_csv(path, bandwidth, device="cpu"):
  """Compares the CPU model with a measured benchmark_anakin CSV (eLSTM).

  Returns (lines, ok). Per size: B·|S| (one copy, what the CSV reports as
  sensitivity_MiB, from the runner it allocated) must equal the plan's; the
  measured time RTRL adds per environment step, (t_rtrl − t_tbptt) / steps
  per call, must be ≥ 0.8× and ≤ CHECK_FACTOR× the CPU roofline at
  `bandwidth` (the CPU's measured now, or `device`'s published figure).
  """
  with open(path, newline="") as f:
    rows = [r for r in csv.DictReader(f) if r["gradient"] == "rtrl"]
  if not rows:
    raise ValueError(f"--check_csv={path}: no gradient=rtrl rows")
  by_size = {}
  with open(path, newline="") as f:
    for r in csv.DictReader(f):
      by_size.setdefault((r["N"], r["D"], r["B"], r["M"]), {})[
          r["gradient"]] = r
  source = ("numpy copy measured now" if device == "cpu"
            else "published, not measured")
  lines = [f"check against {path} ({device} roofline at {bandwidth / GB:.1f} "
           f"GB/s, {source}):",
           f"{'N':>4} {'D':>4} {'B':>4} {'M':>3} {'S MiB csv':>9} "
           f"{'S MiB plan':>10} {'bare GB/s csv':>13} {'RTRL part ns':>12} "
           f"{'roofline ns':>11} {'ratio':>6}  ok"]
  ok = True
  for (n, d, b, m), pair in by_size.items():
    rtrl, tbptt = pair.get("rtrl"), pair.get("tbptt")
    if rtrl is None or tbptt is None:
      continue
    n, d, b, m = int(n), int(d), int(b), int(m)
    per_env = sensitivity_floats("elstm", n, d) * BYTES["float32"]
    planned_mib = b * per_env / 2 ** 20
    steps = int(rtrl["updates_per_call"]) * b * m
    added = (float(rtrl["ms_per_call"]) - float(tbptt["ms_per_call"])) / 1e3
    measured_ns = 1e9 * added / steps
    # The CSV is the Anakin loop's: its actor advances S once per unroll.
    actor, learner = roofline_seconds(per_env, m, bandwidth,
                                      "once_per_unroll")
    roofline_ns = 1e9 * (actor + learner)
    ratio = measured_ns / roofline_ns
    size_ok = (math.isclose(planned_mib, float(rtrl["sensitivity_MiB"]),
                            rel_tol=1e-9)
               and 0.8 <= ratio <= CHECK_FACTOR)
    ok = ok and size_ok
    lines.append(
        f"{n:>4} {d:>4} {b:>4} {m:>3} {float(rtrl['sensitivity_MiB']):>9.3f} "
        f"{planned_mib:>10.3f} {float(rtrl['bare_pass_GB_per_s']):>13.1f} "
        f"{measured_ns:>12.1f} {roofline_ns:>11.1f} {ratio:>6.2f}  "
        f"{'yes' if size_ok else 'NO'}")
  lines.append(f"ratio = measured RTRL part / {device} roofline; must be in "
               f"[0.8, {CHECK_FACTOR:g}] and the S MiB must match.")
  return lines, ok


class _Parser(argparse.ArgumentParser):
  """argparse that exits with one line naming the bad value."""

  def error(self, message):
    sys.exit(f"error: {message}")


def positive_int(text):
  try:
    value = int(text)
  except ValueError:
    value = 0
  if value <= 0:
    raise argparse.ArgumentTypeError(f"{text!r} is not a positive int")
  return value


def parse_args(argv):
  parser = _Parser(prog="python -m experiments.plan_scale",
                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--cell", default="elstm", choices=CELL_CHOICES)
  parser.add_argument("--hidden", type=positive_int, required=True,
                      help="hidden size N")
  parser.add_argument("--input", type=positive_int, required=True,
                      help="input size D")
  parser.add_argument("--envs_per_device", type=positive_int, required=True,
                      help="environments per device B")
  parser.add_argument("--unroll", type=positive_int, required=True,
                      help="unroll length M")
  parser.add_argument("--device", default="all", choices=DEVICE_CHOICES)
  parser.add_argument("--dtype", default="float32", choices=list(BYTES))
  parser.add_argument("--actor", default="once_per_unroll", choices=ACTORS,
                      help="how often the actor reads and writes S: "
                           "once_per_unroll (Anakin) or every_step")
  parser.add_argument("--memory", default="formula",
                      choices=("formula", "compiled"),
                      help="resident memory per device: formula (2·B·|S|) "
                           "or compiled (XLA's buffer sizes of the compiled "
                           "Anakin update; eLSTM, float32; seconds to "
                           "minutes of compiling)")
  parser.add_argument("--check_csv", default=None,
                      help="a benchmark_anakin.csv to check the CPU model "
                           "against")
  return parser.parse_args(argv)


def main(argv=None):
  args = parse_args(sys.argv[1:] if argv is None else argv)
  if args.check_csv is not None and not os.path.isfile(args.check_csv):
    sys.exit(f"error: --check_csv={args.check_csv}: no such file")
  device = args.device
  if device == "detect":
    import jax  # pylint: disable=g-import-not-at-top
    here = jax.devices()[0]
    try:
      device = detect_device(here.platform, here.device_kind)
    except ValueError as error:
      sys.exit(f"error: {error}")
  resident = None
  if args.memory == "compiled":
    if args.cell != "elstm" or args.dtype != "float32" or args.input < 2:
      sys.exit(f"error: --memory=compiled compiles the eLSTM R2AC agent in "
               f"float32 with D ≥ 2, not --cell={args.cell} "
               f"--dtype={args.dtype} --input={args.input}")
    resident = compiled_memory(args.hidden, args.input, args.unroll)
  devices = list(DEVICES) + ["cpu"] if device == "all" else [device]
  cpu_bandwidth = (measure_cpu_bandwidth()
                   if "cpu" in devices or args.check_csv else None)
  rows = plan(args.cell, args.hidden, args.input, args.envs_per_device,
              args.unroll, devices, args.dtype, cpu_bandwidth, args.actor,
              resident)
  print(format_plan(rows, args.cell, args.hidden, args.input,
                    args.envs_per_device, args.unroll, args.dtype, args.actor,
                    resident))
  if args.check_csv:
    # Against the device of the run: measured here for the CPU, else the
    # published figure (one device: the CSV's machine).
    check_device = devices[0] if len(devices) == 1 else "cpu"
    bandwidth = (cpu_bandwidth if check_device == "cpu"
                 else DEVICES[check_device]["bandwidth"])
    try:
      lines, ok = check_against_csv(args.check_csv, bandwidth, check_device)
    except (KeyError, ValueError) as error:
      sys.exit(f"error: --check_csv={args.check_csv}: {error}")
    print()
    print("\n".join(lines))
    if not ok:
      sys.exit(f"error: the {check_device} model is off the measured run "
               "(see above)")


if __name__ == "__main__":
  main()
