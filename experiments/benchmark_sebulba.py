r"""Sebulba throughput against envpool alone, and learner scaling over devices.

  # env-steps/s: Sebulba (acting + learning) vs envpool alone with random
  # actions, same suite, threads and envs per thread, in the same run
  python -m experiments.benchmark_sebulba --mode=throughput \
      --config=experiments/configs/sebulba.py:tiny_atari --threads=1,2 \
      --envs_per_thread=8 --seconds=20

  # learner updates/s vs number of learner devices (fake CPU devices)
  XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu \
      python -m experiments.benchmark_sebulba --mode=learner --devices=1,2,4,8

Throughput: for each thread count T, first T Python threads each step their
own envpool instance (num_envs = envs_per_thread, batch_size = num_envs /
sebulba.env_groups, as the actors) with random actions through send/recv for
`--seconds`; then the Sebulba system with the same T and envs runs for
`--seconds` after `--warmup_updates` updates (compilation excluded; one
update after later restarts). The two alternate `--rounds` times, and the
row has the means, the ratio of the means and each round's ratio's min and
max: this machine's speed drifts by tens of percent between seconds. Both
count envpool steps (envpool's reset step after an episode end included; not
frames). `cpu_ceiling_ratio` bounds what any schedule of this work could
reach on this machine's cores (`cpu_ceiling`, from envpool alone and the
policy and learner steps each run alone, in CPU seconds).
`serial_ceiling_ratio` bounds one env group per thread, where envpool and
the policy take turns on the same environments (`serial_ceiling`, from
envpool alone and the policy call's wall time alone); with more groups they
overlap and it is 1.

Learner: one jitted Sebulba learner step on a fixed global batch
(`--learner_envs` environments × unroll_length), sharded over the first D
devices; the median over `--repeats` timed steps after one warm-up step.

Prints one JSON object per measurement and a markdown table, and writes a CSV
and a plot into --out_dir: sebulba_throughput_<env>_<envs>envs_<groups>groups_<gradient>.{csv,png}
(with the per-phase timings) or sebulba_learner_<envs>envs.{csv,png}.
`--quick` is a smoke run (a few seconds per mode, runs/quick_benchmarks).
"""

import json
import os
import sys
import threading
import time

import jax
import numpy as np
from absl import app, flags

from experiments import timing
from experiments.configs import sebulba as sebulba_configs
from rtrl_jax.rl import envpool_envs
from rtrl_jax import experiment
from rtrl_jax.rl import sebulba

_CONFIG = experiment.cli.define_config_flag(
    "experiments/configs/sebulba.py:tiny", "Sebulba config.",
    accept_new_keys=True)
_MODE = flags.DEFINE_enum("mode", "throughput", ["throughput", "learner"],
                          "What to measure.")
_THREADS = flags.DEFINE_list("threads", ["1", "2"], "Actor-thread counts.")
_ENVS = flags.DEFINE_integer("envs_per_thread", 8, "envpool num_envs.",
                             lower_bound=1)
_SECONDS = flags.DEFINE_float("seconds", 20.0, "Timed seconds per setting.",
                              lower_bound=0.1)
_ROUNDS = flags.DEFINE_integer(
    "rounds", 3, "Throughput: envpool alone and Sebulba measured in turn this "
    "many times (each --seconds).", lower_bound=1)
_WARMUP = flags.DEFINE_integer("warmup_updates", 3,
                               "Sebulba updates before timing.", lower_bound=0)
_DEVICES = flags.DEFINE_list("devices", ["1", "2", "4", "8"],
                             "Learner device counts (learner mode).")
_LEARNER_ENVS = flags.DEFINE_integer("learner_envs", 64,
                                     "Global batch (learner mode).",
                                     lower_bound=1)
_REPEATS = flags.DEFINE_integer("repeats", 10, "Timed learner steps.",
                                lower_bound=1)
_OUT_DIR = flags.DEFINE_string(
    "out_dir", "docs/benchmarks",
    "Where the CSV and plot go (--quick: runs/quick_benchmarks unless given).")
_QUICK = flags.DEFINE_bool(
    "quick", False, "Smoke run: 1 thread, 4 envs, 2 rounds of 1 s "
    "(throughput); devices 1 and 2, 8 envs, 2 steps (learner).")


def envpool_alone(suite, threads, envs_per_thread, groups, seconds, seed=0):
  """(env steps/s, CPU seconds per step) of `threads` threads stepping their
  own envpool instance with uniformly random actions, with the Sebulba
  actor's envpool calls and layout (`groups` batches in flight, envpool's
  auto-reset), no policy. CPU time is the process's, all threads."""
  counts, stop = [0] * threads, threading.Event()
  start_barrier = threading.Barrier(threads + 1)
  batch = envs_per_thread // groups
  errors = []

  def run(i):
    try:
      env = suite.make(envs_per_thread, seed + i, batch_size=batch)
      rng = np.random.default_rng(i)
      env.async_reset()
      for _ in range(groups):      # every group's reset answered and stepped
        step(env, rng)
      start_barrier.wait()
      while not stop.is_set():
        step(env, rng)
        counts[i] += batch
      env.close()
    except threading.BrokenBarrierError:
      pass                         # another thread failed first
    except BaseException as error:  # pylint: disable=broad-except
      errors.append(error)
      start_barrier.abort()        # the others, and the caller, stop waiting

  def step(env, rng):
    *_, info = env.recv()
    env.send(rng.integers(0, suite.num_actions, batch, dtype=np.int32),
             info["env_id"])

  workers = [threading.Thread(target=run, args=(i,), daemon=True)
             for i in range(threads)]
  for worker in workers:
    worker.start()
  try:
    start_barrier.wait()
    begin, begin_cpu = time.perf_counter(), time.process_time()
    time.sleep(seconds)
    total = sum(counts)
    elapsed, cpu = (time.perf_counter() - begin,
                    time.process_time() - begin_cpu)
  except threading.BrokenBarrierError:
    pass
  stop.set()
  for worker in workers:
    worker.join()
  if errors:
    raise RuntimeError("envpool alone: a stepping thread failed") from errors[0]
  return total / elapsed, cpu / total


def sebulba_run(system, state, seconds, warmup):
  """(env steps/s, learner updates/s, timings, state) of the Sebulba system
  started from `state`, over `seconds` after `warmup` updates."""
  system.start(state)
  try:
    for _ in range(warmup):
      state, _ = system.step(state)
    steps_per_update = (system.num_envs_per_step
                        * system.actor_settings.unroll_length)
    system.timing_metrics(reset=True)
    begin, updates = time.perf_counter(), 0
    while time.perf_counter() - begin < seconds:
      state, _ = system.step(state)
      updates += 1
    jax.block_until_ready(state.params)
    elapsed = time.perf_counter() - begin
    timings = system.timing_metrics(reset=True)
  finally:
    system.stop()
  return (updates * steps_per_update / elapsed, updates / elapsed, timings,
          state)


def median_seconds(call, repeats, clock=time.perf_counter):
  """Median time of `call()` on `clock` over `repeats` calls after one
  warm-up (`time.process_time`: CPU seconds of all the process's threads)."""
  call()
  times = []
  for _ in range(repeats):
    begin = clock()
    call()
    times.append(clock() - begin)
  return float(np.median(times))


def policy_seconds(agent, params, suite, group):
  """(CPU seconds per env step, wall seconds per call) of `agent.act` on
  `group` environments, run alone (back-to-back calls, core state donated as
  in the actor)."""
  act = jax.jit(agent.act, donate_argnums=1)
  policy = {"state": agent.initial_core_state(params, group)}
  obs = np.zeros((group, *suite.obs_shape), np.uint8)
  reward, reset = np.zeros((group,), np.float32), np.zeros((group,), bool)
  key = jax.random.PRNGKey(0)

  def act_once():
    policy["state"], out = act(params, policy["state"], obs, reward, reset,
                               key)
    np.asarray(out.action)

  return (median_seconds(act_once, 50, time.process_time) / group,
          median_seconds(act_once, 50))


def isolated_costs(system, state, config, envs_per_thread):
  """(policy, policy without RTRL sensitivities, learner) CPU seconds per env
  step and the policy's wall seconds per call, each run alone: back-to-back
  calls with nothing else running, on one actor's env group and on one
  learner update's batch. CPU seconds count every core XLA uses. The second
  is the same network with gradient="tbptt", whose actor carries no
  sensitivities."""
  agent, suite = system.agent, system.suite
  group = envs_per_thread // config.sebulba.env_groups
  params = jax.device_put(jax.device_get(state.params))
  without = config.copy_and_resolve_references()
  with without.unlocked():
    without.gradient = "tbptt"
  agent_without, _ = sebulba.make_agent_and_optimizer(without, suite)
  steps = system.num_envs_per_step
  example = sebulba.example_trajectory(agent, jax.device_get(state.params),
                                       suite, steps, config.unroll_length)
  batch = jax.device_put(example, system.learner.global_shardings)
  learner_step = system.learner.jitted_step
  learn_once = lambda: jax.block_until_ready(
      learner_step(state.params, state.opt_state, batch))
  policy_cpu, policy_call = policy_seconds(agent, params, suite, group)
  policy_without_cpu, _ = policy_seconds(agent_without, params, suite, group)
  return (policy_cpu, policy_without_cpu,
          median_seconds(learn_once, 5, time.process_time)
          / (steps * config.unroll_length), policy_call)


def cpu_ceiling(alone_sps, env_cpu, policy_cpu, learner_cpu):
  """Steps/s that no schedule of this work can beat on this machine's cores.

  Each env step costs CPU seconds of envpool (from envpool alone), of the
  policy and of the learner (each run alone). The cores give at most
  `cores` CPU seconds per second, and envpool steps no faster than alone.
  """
  cores = len(os.sched_getaffinity(0))
  return min(alone_sps,
             cores / (env_cpu + policy_cpu + learner_cpu))


def serial_ceiling(alone_sps, threads, envs_per_thread, groups,
                   policy_call_seconds):
  """Steps/s that no schedule can beat with one env group per thread.

  With one group a thread's envpool steps all its environments, then the
  policy acts on all of them: neither can start before the other ends, so a
  thread's cycle is at least envpool's cycle alone, t_env = threads ×
  envs_per_thread / alone_sps, plus one policy call alone, t_policy:
  steps/s ≤ alone_sps · t_env / (t_env + t_policy). With more groups envpool
  steps one while the policy acts on another: no such bound (alone_sps).
  """
  if groups > 1:
    return alone_sps
  env_cycle = threads * envs_per_thread / alone_sps
  return alone_sps * env_cycle / (env_cycle + policy_call_seconds)


def make_system(config, suite, threads, envs_per_thread, devices=None):
  """The Sebulba system measured (`config` is set to its sizes); `devices`:
  a learner mesh of the first that many devices. ValueError: a bad size."""
  with config.unlocked():
    config.sebulba.num_actor_threads = threads
    config.sebulba.num_envs_per_thread = envs_per_thread
  mesh = (None if devices is None else
          jax.sharding.Mesh(np.array(jax.devices()[:devices]), ("data",)))
  return sebulba.make_system(config, mesh=mesh, suite=suite)


def throughput(config, suite, thread_counts, envs_per_thread, seconds,
               warmup, rounds):
  """One row per actor-thread count: `rounds` times envpool alone then
  Sebulba, each for `seconds` (interleaved, so drift hits both alike)."""
  rows = []
  for threads in thread_counts:
    system = make_system(config, suite, threads, envs_per_thread)
    state = system.init(jax.random.PRNGKey(0))
    alone, env_cpu, seb, ups, timings = [], [], [], [], []
    for round_index in range(rounds):
      sps, cpu = envpool_alone(suite, threads, envs_per_thread,
                               config.sebulba.env_groups, seconds,
                               seed=round_index)
      alone.append(sps)
      env_cpu.append(cpu)
      sps, updates_per_s, round_timings, state = sebulba_run(
          system, state, seconds, warmup if round_index == 0 else 1)
      seb.append(sps)
      ups.append(updates_per_s)
      timings.append(round_timings)
    timings = {k: float(np.mean([t[k] for t in timings if k in t]))
               for k in timings[-1]}
    alone_sps, sebulba_sps = float(np.mean(alone)), float(np.mean(seb))
    env_seconds = float(np.mean(env_cpu))
    (policy_cpu, policy_without_cpu, learner_cpu,
     policy_call) = isolated_costs(system, state, config,
                                                  envs_per_thread)
    ceiling = cpu_ceiling(alone_sps, env_seconds, policy_cpu, learner_cpu)
    serial = serial_ceiling(alone_sps, threads, envs_per_thread,
                            config.sebulba.env_groups, policy_call)
    ratios = [s / a for s, a in zip(seb, alone)]
    row = {"env": config.env.name, "threads": threads,
           "envs_per_thread": envs_per_thread,
           "env_groups": config.sebulba.env_groups, "rounds": rounds,
           "envpool_sps": round(alone_sps, 1),
           "sebulba_sps": round(sebulba_sps, 1),
           "ratio": round(sebulba_sps / alone_sps, 3),
           "ratio_min": round(min(ratios), 3),
           "ratio_max": round(max(ratios), 3),
           "cpu_ceiling_ratio": round(ceiling / alone_sps, 3),
           "serial_ceiling_ratio": round(serial / alone_sps, 3),
           "envpool_cpu_us_per_step": round(env_seconds * 1e6, 2),
           "policy_cpu_us_per_step": round(policy_cpu * 1e6, 2),
           "policy_without_sensitivities_cpu_us_per_step": round(
               policy_without_cpu * 1e6, 2),
           "learner_cpu_us_per_step": round(learner_cpu * 1e6, 2),
           "policy_call_ms": round(policy_call * 1e3, 3),
           "updates_per_s": round(float(np.mean(ups)), 2),
           **{k: round(v, 5) for k, v in timings.items()}}
    print(json.dumps(row), flush=True)
    rows.append(row)
  return rows


def throughput_table(rows):
  lines = ["| env | actor threads | envs/thread | env groups | "
           "envpool alone (steps/s) | Sebulba (steps/s) | ratio "
           "(rounds: min–max) | ceiling: CPU, serial | learner updates/s |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for r in rows:
    lines.append(f"| {r['env']} | {r['threads']} | {r['envs_per_thread']} | "
                 f"{r['env_groups']} | "
                 f"{r['envpool_sps']:.0f} | {r['sebulba_sps']:.0f} | "
                 f"{r['ratio']:.2f} ({r['ratio_min']:.2f}–"
                 f"{r['ratio_max']:.2f}) | {r['cpu_ceiling_ratio']:.2f}, "
                 f"{r['serial_ceiling_ratio']:.2f} | "
                 f"{r['updates_per_s']:.1f} |")
  return "\n".join(lines)


def learner(config, suite, device_counts, global_envs, repeats):
  """Updates/s of the Sebulba learner step vs number of learner devices."""
  rows = []
  for count in device_counts:
    system = make_system(config, suite, 1, global_envs, count)
    state = system.init(jax.random.PRNGKey(0))
    example = sebulba.example_trajectory(
        system.agent, jax.device_get(state.params), suite, global_envs,
        config.unroll_length)
    batch = jax.device_put(example, system.learner.global_shardings)
    step = system.learner.jitted_step
    median = median_seconds(lambda: jax.block_until_ready(
        step(state.params, state.opt_state, batch)), repeats)
    row = {"devices": count, "global_envs": global_envs,
           "unroll_length": config.unroll_length,
           "median_step_s": round(median, 5),
           "updates_per_s": round(1.0 / median, 2)}
    print(json.dumps(row), flush=True)
    rows.append(row)
  return rows


def learner_table(rows):
  lines = ["| learner devices | global envs x M | median step (ms) | "
           "updates/s |", "|---:|---|---:|---:|"]
  for r in rows:
    lines.append(f"| {r['devices']} | {r['global_envs']} x "
                 f"{r['unroll_length']} | {1000 * r['median_step_s']:.1f} | "
                 f"{r['updates_per_s']:.1f} |")
  return "\n".join(lines)


def plot(rows, mode, title, path):
  """Throughput: envpool alone, Sebulba and the lower ceiling in steps/s per
  thread count (bars, ratio on Sebulba's); learner: updates/s vs learner
  devices."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  figure, axis = plt.subplots(figsize=(6, 4))
  if mode == "throughput":
    positions = np.arange(len(rows))
    axis.bar(positions - 0.27, [r["envpool_sps"] for r in rows], 0.27,
             label="envpool alone (random actions)")
    bars = axis.bar(positions, [r["sebulba_sps"] for r in rows], 0.27,
                    label="Sebulba (acting + learning)")
    axis.bar(positions + 0.27,
             [min(r["cpu_ceiling_ratio"], r["serial_ceiling_ratio"])
              * r["envpool_sps"] for r in rows], 0.27,
             fill=False, hatch="//", label="ceiling of that work (CPU, serial)")
    for bar, r in zip(bars, rows):
      axis.annotate(f"{r['ratio']:.2f}", (bar.get_x() + bar.get_width() / 2,
                                          bar.get_height()),
                    ha="center", va="bottom", fontsize=9)
    axis.set_xticks(positions, [str(r["threads"]) for r in rows])
    axis.set(xlabel="actor threads", ylabel="envpool steps / s")
    axis.legend(fontsize=8)
  else:
    axis.plot([r["devices"] for r in rows], [r["updates_per_s"] for r in rows],
              "o-")
    axis.set(xlabel="learner devices", ylabel="learner updates / s",
             xscale="log", ylim=(0, None))
    axis.set_xticks([r["devices"] for r in rows],
                    [str(r["devices"]) for r in rows])
  axis.set_title(title, fontsize=9)
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  plt.close(figure)


def main(argv):
  experiment.cli.start_main(argv)
  config = _CONFIG.value
  envs, seconds, warmup = _ENVS.value, _SECONDS.value, _WARMUP.value
  rounds = _ROUNDS.value
  global_envs, repeats = _LEARNER_ENVS.value, _REPEATS.value
  try:
    sebulba_configs.check(config)
    threads = timing.positive_ints("threads", _THREADS.value)
    devices = timing.positive_ints("devices", _DEVICES.value)
    if _QUICK.value:
      given = [f"--{holder.name}" for holder in (
          _THREADS, _ENVS, _SECONDS, _ROUNDS, _WARMUP, _DEVICES,
          _LEARNER_ENVS, _REPEATS) if holder.present]
      if given:
        raise ValueError(f"--quick sets {', '.join(given)} itself; give "
                         "either --quick or them")
      threads, envs, seconds, warmup, rounds = [1], 4, 1.0, 1, 2
      devices, global_envs, repeats = [1, 2][:jax.device_count()], 8, 2
    if envs % config.sebulba.env_groups:
      raise ValueError(
          f"--envs_per_thread={envs} must be a multiple of "
          f"sebulba.env_groups={config.sebulba.env_groups}")
    too_many = [count for count in devices if count > jax.device_count()]
    if _MODE.value == "learner" and too_many:
      raise ValueError(
          f"--devices: {too_many} above the {jax.device_count()} devices here "
          "(fake CPU devices: XLA_FLAGS=--xla_force_host_platform_device_count"
          "=8)")
    uneven = [count for count in devices if global_envs % count]
    if _MODE.value == "learner" and uneven:
      raise ValueError(
          f"--learner_envs={global_envs} must be a multiple of each --devices "
          f"count; not of {uneven}")
    suite = envpool_envs.make_suite(config.env.suite, config.env.name,
                                    dict(config.env.kwargs),
                                    num_threads=config.sebulba.envpool_threads)
    # Every system measured builds (the sizes fit) before any measurement.
    if _MODE.value == "throughput":
      for count in threads:
        make_system(config, suite, count, envs)
    else:
      for count in devices:
        make_system(config, suite, 1, global_envs, count)
    out_dir = timing.output_dir(_OUT_DIR, _QUICK.value)
    os.makedirs(out_dir, exist_ok=True)      # fail now, not after the run
    if not os.access(out_dir, os.W_OK):
      raise ValueError(f"--out_dir: cannot write to {out_dir!r}")
  except (ValueError, OSError) as error:
    sys.exit(f"error: {error}")
  describe = (f"{config.env.name}, {config.network.core}-"
              f"{config.network.hidden_size} {config.gradient}, "
              f"M={config.unroll_length}")
  print(f"jax {jax.__version__}, {jax.device_count()} {jax.default_backend()} "
        f"device(s); {describe}", flush=True)
  if _MODE.value == "throughput":
    rows = throughput(config, suite, threads, envs, seconds, warmup, rounds)
    table = throughput_table(rows)
    name = (f"sebulba_throughput_{config.env.name}_{envs}envs_"
            f"{config.sebulba.env_groups}groups_{config.gradient}")
  else:
    rows = learner(config, suite, devices, global_envs, repeats)
    table = learner_table(rows)
    name = f"sebulba_learner_{global_envs}envs"
  print("\n" + table)
  csv_path = timing.write_csv(rows, out_dir, name + ".csv")
  png_path = os.path.join(out_dir, name + ".png")
  plot(rows, _MODE.value, f"Sebulba {_MODE.value}: {describe} "
       f"({jax.default_backend()})", png_path)
  print(f"wrote {csv_path} and {png_path}")


if __name__ == "__main__":
  app.run(main, flags_parser=experiment.cli.parse_flags)
