r"""Sebulba throughput against envpool alone, and learner scaling over devices.

  # env-steps/s: Sebulba (acting + learning) vs envpool alone with random
  # actions, same suite, threads and envs per thread, in the same run
  python -m experiments.benchmark_sebulba --mode=throughput \
      --config=experiments/configs/sebulba.py:tiny_atari --threads=1,2 \
      --envs_per_thread=8 --seconds=20

  # learner updates/s vs number of learner devices (fake CPU devices)
  XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m \
      experiments.benchmark_sebulba --mode=learner --devices=1,2,4,8

Throughput: for each thread count T, first T Python threads each step their
own envpool instance (num_envs = batch_size = envs_per_thread) with random
actions through send/recv for `--seconds`; then the Sebulba system with the
same T and envs runs for `--seconds` after `--warmup_updates` updates
(compilation excluded). Both count agent steps (not frames).

Learner: one jitted Sebulba learner step on a fixed global batch
(`--learner_envs` environments × unroll_length), sharded over the first D
devices; the median over `--repeats` timed steps after one warm-up step.
Prints one JSON object per measurement and a markdown table.
"""

import json
import threading
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from rtrl_jax import envpool_envs
from rtrl_jax import sebulba

_CONFIG = config_flags.DEFINE_config_file(
    "config", "experiments/configs/sebulba.py:tiny", "Sebulba config.")
_MODE = flags.DEFINE_enum("mode", "throughput", ["throughput", "learner"],
                          "What to measure.")
_THREADS = flags.DEFINE_list("threads", ["1", "2"], "Actor-thread counts.")
_ENVS = flags.DEFINE_integer("envs_per_thread", 8, "envpool num_envs.")
_SECONDS = flags.DEFINE_float("seconds", 20.0, "Timed seconds per setting.")
_WARMUP = flags.DEFINE_integer("warmup_updates", 3,
                               "Sebulba updates before timing.")
_DEVICES = flags.DEFINE_list("devices", ["1", "2", "4", "8"],
                             "Learner device counts (learner mode).")
_LEARNER_ENVS = flags.DEFINE_integer("learner_envs", 64,
                                     "Global batch (learner mode).")
_REPEATS = flags.DEFINE_integer("repeats", 10, "Timed learner steps.")


def envpool_alone(suite, threads, envs_per_thread, seconds, seed=0):
  """Env steps/s of `threads` threads stepping their own envpool instance
  with uniformly random actions (the Sebulba actor's env calls, no policy)."""
  counts, stop = [0] * threads, threading.Event()
  start_barrier = threading.Barrier(threads + 1)

  def run(i):
    env = suite.make(envs_per_thread, seed + i)
    rng = np.random.default_rng(i)
    ids = np.arange(envs_per_thread, dtype=np.int32)
    env.async_reset()
    env.recv()
    start_barrier.wait()
    while not stop.is_set():
      env.send(rng.integers(0, suite.num_actions, envs_per_thread,
                            dtype=np.int32), ids)
      _, _, term, trunc, _ = env.recv()
      done = np.flatnonzero(term | trunc).astype(np.int32)
      if len(done):     # the same extra reset step the Sebulba actor takes
        env.send(np.zeros(len(done), np.int32), done)
        env.recv()
      counts[i] += envs_per_thread
    env.close()

  workers = [threading.Thread(target=run, args=(i,), daemon=True)
             for i in range(threads)]
  for worker in workers:
    worker.start()
  start_barrier.wait()
  begin = time.perf_counter()
  time.sleep(seconds)
  total = sum(counts)
  elapsed = time.perf_counter() - begin
  stop.set()
  for worker in workers:
    worker.join()
  return total / elapsed


def sebulba_run(config, suite, seconds, warmup):
  """(env steps/s, learner updates/s, timings) of the Sebulba system."""
  system = sebulba.make_system(config, suite=suite)
  state = system.init(jax.random.PRNGKey(0))
  system.start(state)
  try:
    for _ in range(warmup):
      state, _ = system.train_step(state)
    steps_per_update = system.info["num_envs_per_step"] * config.unroll_length
    system.info["timing_metrics"](reset=True)
    begin, updates = time.perf_counter(), 0
    while time.perf_counter() - begin < seconds:
      state, _ = system.train_step(state)
      updates += 1
    jax.block_until_ready(state.params)
    elapsed = time.perf_counter() - begin
    timings = system.info["timing_metrics"](reset=True)
  finally:
    system.stop()
  return updates * steps_per_update / elapsed, updates / elapsed, timings


def throughput(config):
  suite = envpool_envs.make_suite(config.env.suite, config.env.name,
                                  dict(config.env.kwargs),
                                  num_threads=config.sebulba.envpool_threads)
  rows = []
  for threads in [int(t) for t in _THREADS.value]:
    alone = envpool_alone(suite, threads, _ENVS.value, _SECONDS.value)
    with config.unlocked():
      config.sebulba.num_actor_threads = threads
      config.sebulba.num_envs_per_thread = _ENVS.value
    sps, ups, timings = sebulba_run(config, suite, _SECONDS.value,
                                    _WARMUP.value)
    row = {"env": config.env.name, "threads": threads,
           "envs_per_thread": _ENVS.value, "envpool_sps": round(alone, 1),
           "sebulba_sps": round(sps, 1), "ratio": round(sps / alone, 3),
           "updates_per_s": round(ups, 2),
           **{k: round(v, 5) for k, v in timings.items()}}
    print(json.dumps(row), flush=True)
    rows.append(row)
  print("\n| env | actor threads | envs/thread | envpool alone (steps/s) | "
        "Sebulba (steps/s) | ratio | learner updates/s |")
  print("|---|---:|---:|---:|---:|---:|---:|")
  for r in rows:
    print(f"| {r['env']} | {r['threads']} | {r['envs_per_thread']} | "
          f"{r['envpool_sps']:.0f} | {r['sebulba_sps']:.0f} | "
          f"{r['ratio']:.2f} | {r['updates_per_s']:.1f} |")


def learner(config):
  """Updates/s of the Sebulba learner step vs number of learner devices."""
  suite = envpool_envs.make_suite(config.env.suite, config.env.name,
                                  dict(config.env.kwargs))
  rows = []
  for count in [int(d) for d in _DEVICES.value]:
    if count > jax.device_count():
      print(f"skipping {count} devices: only {jax.device_count()}")
      continue
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:count]), ("data",))
    with config.unlocked():
      config.sebulba.num_actor_threads = 1
      config.sebulba.num_envs_per_thread = _LEARNER_ENVS.value
    system = sebulba.make_system(config, mesh=mesh, suite=suite)
    state = system.init(jax.random.PRNGKey(0))
    example = sebulba.example_trajectory(
        system.agent, jax.device_get(state.params), suite, _LEARNER_ENVS.value,
        config.unroll_length)
    batch = jax.device_put(example, system.info["global_shardings"])
    step = system.info["jitted_learner_step"]
    params, opt_state, _ = step(state.params, state.opt_state, batch)
    jax.block_until_ready(params)
    times = []
    for _ in range(_REPEATS.value):
      begin = time.perf_counter()
      params, opt_state, _ = step(params, opt_state, batch)
      jax.block_until_ready(params)
      times.append(time.perf_counter() - begin)
    row = {"devices": count, "global_envs": _LEARNER_ENVS.value,
           "unroll_length": config.unroll_length,
           "median_step_s": round(float(np.median(times)), 5),
           "updates_per_s": round(1.0 / float(np.median(times)), 2)}
    print(json.dumps(row), flush=True)
    rows.append(row)
  print("\n| learner devices | global envs x M | median step (ms) | "
        "updates/s |")
  print("|---:|---|---:|---:|")
  for r in rows:
    print(f"| {r['devices']} | {r['global_envs']} x {r['unroll_length']} | "
          f"{1000 * r['median_step_s']:.1f} | {r['updates_per_s']:.1f} |")


def main(argv):
  del argv
  config = _CONFIG.value
  print(f"jax {jax.__version__}, {jax.device_count()} {jax.default_backend()} "
        f"device(s); config {config.env.name} {config.network.core}-"
        f"{config.network.hidden_size} {config.gradient}", flush=True)
  if _MODE.value == "throughput":
    throughput(config)
  else:
    learner(config)


if __name__ == "__main__":
  app.run(main)
