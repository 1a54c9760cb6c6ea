"""The reproduction study's grid (experiments/study.py, docs/RESULTS.md).

  --config=experiments/configs/study.py          the study as run on a 2-core CPU
  --config=experiments/configs/study.py:quick    a smoke run of the whole pipeline
  --config=experiments/configs/study.py:paper    the paper's scale, for GPUs (untested)

Hypothesis (written before the runs): with the same data (environments,
updates, frames), the eLSTM trained by untruncated RTRL(M) learns
MemoryChain spans L > M that the same agent trained by TBPTT(M) does not,
and the two are equal where L < M and on the reactive CartPole.

Three stages, each a set of *cells*; a cell is one (task, system, variant,
learning rate) trained for all its seeds in one jitted program
(`anakin.make_train(num_seeds=S)`):

1. `tuning`: every system of `tuned_systems` at every rate of
   `learning_rates` on the `tuning_tasks`, with the `tuning_seeds` (not the
   main seeds). A system's rate is the one with the best mean score over the
   tuning tasks (score: sampled return mapped to [0, 1] by the task's
   `score_range`). Systems not tuned use the rate of `tuned_like`.
2. `main`: every task × system (a system may list its `tasks`), at the
   system's tuned rate, with `seeds` seeds.
3. `controls`: named variants (config overrides) of some systems on some
   tasks at their tuned rates: forget-gate initialisation, synchronised
   episode phases.
4. `defaults`: the CPU presets of experiments/configs/r2ac.py exactly as a
   user gets them (only `overrides` changed, e.g. the core), with `seeds`
   seeds: do the shipped defaults learn?

All systems of a task get the same updates and the same frames: each update
sees `frames_per_update` frames, so num_envs = frames_per_update / M.
Every run is experiments/configs/r2ac.py's `default()` (the CPU preset)
plus the task's and the system's overrides.
"""

import ml_collections


def _system(core, gradient, m, tuned_like=None, tasks=()):
  return dict(core=core, gradient=gradient, unroll_length=m,
              tuned_like=tuned_like or "", tasks=list(tasks))


def _task(env, updates, score_range, kind, **kwargs):
  """One task: environment, update budget, and the returns that score 0 and 1."""
  return ml_collections.ConfigDict(dict(
      env=env, kwargs=kwargs, updates=updates, kind=kind,
      score_range=list(score_range)))


def _memorychain(length, updates):
  # MemoryChain (bsuite, gymnax): a cue in the first observation, reward ±1
  # for naming it with the action at step L; episodes of L+1 steps.
  return _task("gymnax:MemoryChain-bsuite", updates, (-1.0, 1.0), "memory",
               memory_length=length)


def default():
  """The study as run for docs/RESULTS.md (about an hour on 2 CPU cores)."""
  config = ml_collections.ConfigDict()
  config.seeds = 5
  config.seed_offset = 0              # main and control seeds 0..seeds-1
  config.tuning_seeds = 3
  config.tuning_seed_offset = 100     # tuning seeds differ from the main ones
  config.frames_per_update = 800
  config.hidden_size = 64
  config.updates_per_call = 125
  config.eval_episodes = 1000         # sampled, per seed: the primary number
  config.greedy_eval_episodes = 100   # per seed: a secondary column
  config.solved_threshold = 0.8       # a memory task is solved at >= 0.8
  config.learning_rates = [1e-3, 3e-3, 1e-2, 3e-2]
  config.tuning_tasks = ["memorychain_L30", "cartpole"]
  config.tasks = ml_collections.ConfigDict(dict(
      memorychain_L10=_memorychain(10, 500),       # 0.4M frames
      memorychain_L30=_memorychain(30, 1250),      # 1M
      memorychain_L50=_memorychain(50, 1250),      # 1M
      memorychain_L100=_memorychain(100, 2500),    # 2M
      cartpole=_task("gymnax:CartPole-v1", 1250, (0.0, 500.0), "reactive"),
  ))
  config.systems = ml_collections.ConfigDict(dict(
      elstm_rtrl_M10=_system("elstm", "rtrl", 10),
      elstm_tbptt_M10=_system("elstm", "tbptt", 10),
      # Architecture contrasts, not gradient controls.
      lstm_tbptt_M10=_system("lstm", "tbptt", 10),
      feedforward_M10=_system("feedforward", "tbptt", 10),
      # The pair at M = 50, on the longest span only.
      elstm_rtrl_M50=_system("elstm", "rtrl", 50, "elstm_rtrl_M10",
                             ["memorychain_L100"]),
      elstm_tbptt_M50=_system("elstm", "tbptt", 50, "elstm_tbptt_M10",
                              ["memorychain_L100"]),
  ))
  config.tuned_systems = ["elstm_rtrl_M10", "elstm_tbptt_M10",
                          "lstm_tbptt_M10", "feedforward_M10"]
  pair = ["elstm_rtrl_M10", "elstm_tbptt_M10"]
  config.controls = ml_collections.ConfigDict(dict(
      # The default is chrono; constant biases: R2AC's earlier default (1.0)
      # and the earlier study's (3.0).
      forget_constant_1=dict(
          systems=pair, tasks=["memorychain_L30"],
          overrides={"forget_init": "constant", "forget_bias": 1.0}),
      forget_constant_3=dict(
          systems=pair, tasks=["memorychain_L30"],
          overrides={"forget_init": "constant", "forget_bias": 3.0}),
      synchronised=dict(systems=pair, tasks=["memorychain_L30"],
                        overrides={"desync_steps": 0}),
  ))
  # Preset name and (nested) overrides of experiments/configs/r2ac.py.
  config.defaults = ml_collections.ConfigDict(dict(
      cartpole_feedforward=dict(preset="cartpole", overrides=dict(
          network=dict(core="feedforward"), gradient="tbptt")),
      cartpole_elstm_rtrl=dict(preset="cartpole", overrides={}),
  ))
  return config


def quick():
  """Seconds per cell: the pipeline end to end (CI), not a result."""
  config = default()
  config.seeds = 2
  config.tuning_seeds = 2
  config.frames_per_update = 16
  config.hidden_size = 8
  config.updates_per_call = 5
  config.eval_episodes = 20
  config.greedy_eval_episodes = 5
  config.learning_rates = [3e-3, 1e-2]
  config.tuning_tasks = ["memorychain_L4"]
  config.tasks = ml_collections.ConfigDict(dict(
      memorychain_L4=_memorychain(4, 10)))
  config.systems = ml_collections.ConfigDict(dict(
      elstm_rtrl_M2=_system("elstm", "rtrl", 2),
      elstm_tbptt_M2=_system("elstm", "tbptt", 2),
      elstm_rtrl_M4=_system("elstm", "rtrl", 4, "elstm_rtrl_M2")))
  config.tuned_systems = ["elstm_rtrl_M2", "elstm_tbptt_M2"]
  config.controls = ml_collections.ConfigDict(dict(
      synchronised=dict(systems=["elstm_rtrl_M2"], tasks=["memorychain_L4"],
                        overrides={"desync_steps": 0})))
  config.defaults = ml_collections.ConfigDict(dict(
      tiny_feedforward=dict(preset="tiny", overrides=dict(
          network=dict(core="feedforward"), gradient="tbptt"))))
  return config


def paper():
  """The paper's scale (paper-notes §4.4) on the same tasks, for GPUs.

  Untested: N = 512, 3200 frames per update, 100M frames per run, the
  paper's optimizer (`r2ac.paper()`); no tuning stage (the paper's rate).
  """
  config = default()
  config.preset = "paper"
  config.hidden_size = 512
  config.frames_per_update = 3200
  config.updates_per_call = 50
  config.learning_rates = [6e-4]
  config.defaults = ml_collections.ConfigDict()
  for name in config.tasks:
    config.tasks[name].updates = 100_000_000 // config.frames_per_update
  # gymnax's default time limit (1000 steps) would cut the 1001-step episode
  # before its answer.
  config.tasks.memorychain_L1000 = _task(
      "gymnax:MemoryChain-bsuite", 100_000_000 // config.frames_per_update,
      (-1.0, 1.0), "memory", memory_length=1000, max_steps_in_episode=1001)
  return config


CONFIGS = {"default": default, "quick": quick, "paper": paper}


def get_config(name="default"):
  if name not in CONFIGS:
    raise ValueError(f"unknown config {name!r}; choose from {sorted(CONFIGS)}")
  return CONFIGS[name]()


def ordered_tasks(study):
  """Task names, memory tasks first (by span), then the others."""
  return sorted(study.tasks, key=lambda name: (
      study.tasks[name].kind != "memory", study.tasks[name].env,
      study.tasks[name].kwargs.get("memory_length", 0), name))


def ordered_systems(study):
  """System names: eLSTM RTRL and TBPTT by M, LSTM, feed-forward."""
  cores = ["elstm", "lstm", "feedforward"]
  def key(name):
    system = study.systems[name]
    core = cores.index(system.core) if system.core in cores else len(cores)
    return (core, system.unroll_length, system.gradient != "rtrl", name)
  return sorted(study.systems, key=key)


def flat_overrides(overrides, prefix=""):
  """{"a": {"b": 1}} -> {"a.b": 1}."""
  flat = {}
  for key, value in overrides.items():
    if isinstance(value, ml_collections.ConfigDict):
      flat.update(flat_overrides(value, f"{prefix}{key}."))
    else:
      flat[prefix + key] = value
  return flat


def defaults_config(study, name):
  """The r2ac preset of `study.defaults[name]` with its overrides."""
  from experiments.configs import r2ac  # pylint: disable=g-import-not-at-top
  spec = study.defaults[name]
  config = r2ac.get_config(spec.preset)
  for dotted, value in flat_overrides(spec.overrides).items():
    *path, key = dotted.split(".")
    node = config
    for part in path:
      node = node[part]
    node[key] = value
  config.run.progress = False
  r2ac.check(config)
  return config


def run_config(study, task_name, system_name, learning_rate, overrides=None):
  """The experiments/configs/r2ac.py config of one cell (seeds aside)."""
  from experiments.configs import r2ac  # pylint: disable=g-import-not-at-top
  task, system = study.tasks[task_name], study.systems[system_name]
  core, unroll = system.core, system.unroll_length
  if study.frames_per_update % unroll:
    raise ValueError(f"frames_per_update={study.frames_per_update} is not a "
                     f"multiple of {system_name}'s M={unroll}")
  config = (r2ac.paper() if study.get("preset") == "paper"
            else r2ac.default())
  config.env.name = task.env
  config.env.kwargs = ml_collections.ConfigDict(task.kwargs.to_dict())
  config.network.core = core
  config.network.hidden_size = study.hidden_size
  config.gradient = system.gradient
  config.unroll_length = unroll
  config.num_envs = study.frames_per_update // unroll
  config.total_updates = task.updates
  config.updates_per_call = min(study.updates_per_call, task.updates)
  config.optimizer.learning_rate = learning_rate
  config.run.progress = False
  for key, value in (overrides or {}).items():
    if key in ("forget_init", "forget_bias", "chrono_t_max"):
      if core in config.network.core_kwargs:
        config.network.core_kwargs[core][key] = value
    else:
      config[key] = value
  r2ac.check(config)
  return config
