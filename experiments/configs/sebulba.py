"""Configs for the R2AC Sebulba system (experiments/r2ac_sebulba.py).

  --config=experiments/configs/sebulba.py              MiniGrid-MemoryS7, RTRL eLSTM
  --config=experiments/configs/sebulba.py:tiny         seconds; tests and CI
  --config=experiments/configs/sebulba.py:atari        Pong, IMPALA encoder
  --config=experiments/configs/sebulba.py:tiny_atari   Pong, MLP encoder; CPU
  --config=experiments/configs/sebulba.py:procgen      ChaserHard, 500 levels
  --config=experiments/configs/sebulba.py:tiny_procgen ChaserHard, MLP; CPU
  --config=experiments/configs/sebulba.py:procgen_memory  MazeMemory
  --config=experiments/configs/sebulba.py:vizdoom      MyWayHome

Environment preprocessing is envpool options (rtrl_jax/rl/envpool_envs.py has
the suite defaults; `env.kwargs` overrides them, also with options this file
does not list, e.g. `--config.env.kwargs.max_episode_steps=100`). Options
the system sets itself (num_envs, seed, ...) are refused there.
The agent keys (network, gradient, loss, optimizer, unroll_length) mean what
they mean in experiments/configs/r2ac.py; sizes are scaled for a 2-core CPU.

Sebulba keys:
  num_actor_threads     actor threads per process (each its own envpool)
  num_envs_per_thread   envpool num_envs of each thread
  envpool_threads       envpool worker threads per instance (0: envpool's
                        default, min(batch size, CPU cores))
  env_groups            the thread's envs are stepped in this many groups
                        (envpool batch_size = num_envs_per_thread / env_groups):
                        envpool steps one group while the policy runs on
                        another; > 1 needs envpool_threads=1. Pays where a
                        group's envpool step outlasts a policy call: Atari
                        (measured: 2), not MiniGrid or Procgen (1); ViZDoom
                        steps are as slow as Atari's (2, not measured)
  actor_device_ids      local device indices the actor threads run on
  learner_device_ids    local device indices of the learner (empty: all)
  synchronous           True: unroll n uses parameter version n (zero lag)
  queue_size            unrolls each actor thread may have in flight

One learner update consumes one unroll from every actor thread of every
process: num_processes × num_actor_threads × num_envs_per_thread
environments × unroll_length steps.
"""

import ml_collections

from experiments.configs import parts

# Keys added after Sebulba runs were made, with the value that behaves as
# those runs did: `--resume` of such a run accepts exactly this value.
ADDED_KEYS = {"sebulba.env_groups": 1,
              "network.core_kwargs.elstm.forget_init": "constant",
              "network.core_kwargs.elstm.chrono_t_max": 100.0,
              "network.core_kwargs.lstm.forget_init": "constant",
              "network.core_kwargs.lstm.chrono_t_max": 100.0}


def default():
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.env = ml_collections.ConfigDict(dict(
      suite="minigrid",           # minigrid | atari | procgen | vizdoom
      name="MiniGrid-MemoryS7-v0",
      kwargs=ml_collections.ConfigDict(),
  ))
  config.network = parts.network(encoder_sizes=(64,), obs_scale=0.1)
  # The Anakin CPU preset's optimizer and forget gates were tuned on
  # gymnax tasks (docs/RESULTS.md); the envpool tasks keep the paper's
  # rate and a constant forget bias (r2ac.paper()'s values) until a sweep
  # of their own.
  parts.set_forget_init(config, "constant")
  config.gradient = "rtrl"      # rtrl | tbptt (M = unroll_length)
  config.unroll_length = 20     # M
  config.total_updates = 2000   # also the LR-decay horizon
  config.loss = parts.loss()
  config.optimizer = parts.optimizer(learning_rate=6e-4)
  config.sebulba = ml_collections.ConfigDict(dict(
      num_actor_threads=2,
      num_envs_per_thread=16,
      envpool_threads=1,
      env_groups=1,
      actor_device_ids=(0,),
      learner_device_ids=(),
      synchronous=False,
      queue_size=1,
  ))
  config.run = parts.run(checkpoint_every=100, log_every=10)
  return config


def tiny():
  config = default()
  config.network.hidden_size = 16
  config.network.encoder_sizes = (16,)
  config.unroll_length = 4
  config.total_updates = 6
  config.sebulba.num_actor_threads = 1
  config.sebulba.num_envs_per_thread = 8
  config.run.log_every = 2
  config.run.checkpoint_every = 3
  config.run.progress = False
  return config


def atari():
  config = default()
  config.env.suite, config.env.name = "atari", "Pong-v5"
  config.network.encoder = "impala"
  config.network.feature_size = 256
  config.network.hidden_size = 128
  config.network.obs_scale = 1.0
  config.sebulba.num_envs_per_thread = 16
  config.sebulba.env_groups = 2     # emulators step slower than the policy
  return config


def tiny_atari():
  """Pong with a small MLP on the 84x84x4 frames: the IMPALA ResNet takes
  minutes to compile on a 2-core CPU; this tests the pipeline, not the net."""
  config = tiny()
  config.env.suite, config.env.name = "atari", "Pong-v5"
  config.network.obs_scale = 1.0 / 255.0
  config.sebulba.env_groups = 2
  return config


def procgen():
  config = default()
  config.env.suite, config.env.name = "procgen", "ChaserHard-v0"
  config.env.kwargs = ml_collections.ConfigDict(dict(num_levels=500,
                                                     start_level=0))
  config.network.encoder = "impala"
  config.network.hidden_size = 128
  config.network.obs_scale = 1.0
  return config


def tiny_procgen():
  """Procgen Chaser (hard, 500 levels) with a small MLP: the pipeline on
  Procgen frames without the IMPALA ResNet's CPU compile time."""
  config = tiny()
  config.env.suite, config.env.name = "procgen", "ChaserHard-v0"
  config.env.kwargs = ml_collections.ConfigDict(dict(num_levels=500,
                                                     start_level=0))
  config.network.obs_scale = 1.0 / 255.0
  return config


def procgen_memory():
  config = procgen()
  config.env.name = "MazeMemory-v0"
  config.env.kwargs = ml_collections.ConfigDict()
  return config


def vizdoom():
  config = default()
  config.env.suite, config.env.name = "vizdoom", "MyWayHome-v1"
  config.network.encoder = "impala"
  config.network.hidden_size = 128
  config.network.obs_scale = 1.0
  config.sebulba.env_groups = 2
  return config


def config_rules():
  """Value rules of the Sebulba config, for `experiment.check_config`."""
  # pylint: disable=g-import-not-at-top
  from rtrl_jax.rl import envpool_envs
  from rtrl_jax import experiment
  # pylint: enable=g-import-not-at-top
  positive = experiment.config.positive
  return parts.agent_rules() + [
      ("gradient", lambda v: v != "bptt",
       "'rtrl' or 'tbptt' (full-episode 'bptt' needs unrolls aligned to "
       "episodes: Anakin only)"),
      ("env.suite", *experiment.config.one_of(*envpool_envs.SUITE_DEFAULTS)),
      ("run.log_every", positive, "a positive int"),
      ("sebulba.num_actor_threads", positive, "a positive int"),
      ("sebulba.num_envs_per_thread", positive, "a positive int"),
      ("sebulba.envpool_threads", lambda v: v >= 0, "a non-negative int"),
      ("sebulba.env_groups", positive, "a positive int"),
      ("sebulba.queue_size", positive, "a positive int"),
      ("run.checkpoint_every", positive, "a positive int"),
  ] + parts.memory_rules(
      "sebulba.num_envs_per_thread",
      lambda c: c.sebulba.num_actor_threads * c.sebulba.num_envs_per_thread,
      "sebulba.num_actor_threads x sebulba.num_envs_per_thread")


def check(config):
  """Raises ConfigError for a bad config (one line naming the key)."""
  parts.check_against(config, get_config(), config_rules(), parts.FREE_KEYS + (
      "sebulba.actor_device_ids", "sebulba.learner_device_ids"))


CONFIGS = {"default": default, "tiny": tiny, "atari": atari,
           "tiny_atari": tiny_atari, "procgen": procgen,
           "tiny_procgen": tiny_procgen, "procgen_memory": procgen_memory,
           "vizdoom": vizdoom}


def get_config(name="default"):
  if name not in CONFIGS:
    raise ValueError(f"unknown config {name!r}; choose from {sorted(CONFIGS)}")
  return CONFIGS[name]()
