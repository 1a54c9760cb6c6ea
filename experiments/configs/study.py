"""The reproduction study's grid (experiments/study.py, docs/RESULTS.md).

  --config=experiments/configs/study.py          the study as run on a 2-core CPU
  --config=experiments/configs/study.py:quick    a smoke run of the whole pipeline
  --config=experiments/configs/study.py:paper    the paper's scale, for GPUs (untested)
  --config=experiments/configs/study.py:batch_control
      TBPTT(50) with the M=10 systems' 80 envs per update and TBPTT(100) with
      40 (both 5x the frames) on MemoryChain(30): is their failure at equal
      frames the truncation or the smaller batch?
  --config=experiments/configs/study.py:episode_bptt_control
      full-episode BPTT (unroll = one 31-step episode, 80 envs) on
      MemoryChain(30): exact gradients for every episode, no sensitivities.

Every cell of the table is one R2AC Anakin run (experiments/configs/r2ac.py's
`default()` plus the task's and the system's overrides) per seed. All systems
of a task get the same number of updates and the same frames: each update
sees `frames_per_update` frames, so num_envs = frames_per_update / M.
"""

import ml_collections


def _systems(*specs):
  """{"<core>_<gradient>_M<M>": {core, gradient, unroll_length}}."""
  return ml_collections.ConfigDict({
      (f"{core}_M{m}" if core == "feedforward" else f"{core}_{gradient}_M{m}"):
          dict(core=core, gradient=gradient, unroll_length=m)
      for core, gradient, m in specs})


def _task(env, updates, probe_steps, kind, network=None, **kwargs):
  """One row of the study: an environment, its budget and probe window.

  probe_steps: the alignment probe's window from fresh episodes, rounded up
  to whole unrolls of each system's M (at least two).
  network: overrides of the r2ac config's `network` for this task.
  """
  return ml_collections.ConfigDict(dict(
      env=env, kwargs=kwargs, updates=updates, kind=kind,
      probe_steps=probe_steps, network=network or {}))


def default():
  """The study as run for docs/RESULTS.md (a few hours on 2 CPU cores)."""
  config = ml_collections.ConfigDict()
  config.seeds = 3
  config.frames_per_update = 800
  config.hidden_size = 64
  # Same for every system: the eLSTM's and the LSTM's initial forget-gate
  # bias. At the r2ac default (1.0) the initial memory decays as 0.73^t and
  # no system learned MemoryChain(30) in 3.2M frames; at 3.0 RTRL solves it
  # in 0.5M (docs/RESULTS.md).
  config.forget_bias = 3.0
  config.updates_per_call = 50
  config.eval_every_calls = 4      # greedy eval (64 episodes) + probe
  config.final_eval_episodes = 100
  config.tasks = ml_collections.ConfigDict(dict(
      # MemoryChain (bsuite, gymnax): cue at t=0, reward ±1 for recalling it
      # at t = L; episodes of L+1 steps.
      # probe_steps = L + 1: with M = 10 the probe's last unroll holds the
      # first episode's answer step, so the in-training probe's loss has the
      # reward in it.
      memorychain_L10=_task("gymnax:MemoryChain-bsuite", 500, 11, "memory",
                            memory_length=10),
      memorychain_L30=_task("gymnax:MemoryChain-bsuite", 1000, 31, "memory",
                            memory_length=30),
      memorychain_L100=_task("gymnax:MemoryChain-bsuite", 2500, 101,
                             "memory", memory_length=100),
      # xminigrid MiniGrid-MemoryS8: see a cue object, walk a corridor, pick
      # the matching one; up to 320 steps.
      minigrid_memory_S8=_task("xminigrid:MiniGrid-MemoryS8", 2000, 100,
                               "memory",
                               network=dict(encoder_sizes=[64], obs_scale=0.1)),
      cartpole=_task("gymnax:CartPole-v1", 500, 100, "reactive"),
  ))
  config.systems = _systems(
      ("elstm", "rtrl", 10), ("elstm", "tbptt", 10), ("elstm", "tbptt", 50),
      ("elstm", "tbptt", 100), ("lstm", "tbptt", 10),
      ("feedforward", "tbptt", 10))
  return config


def quick():
  """Seconds per run: the pipeline end to end (CI), not a result."""
  config = default()
  config.seeds = 2
  config.frames_per_update = 16
  config.hidden_size = 8
  config.updates_per_call = 5
  config.eval_every_calls = 2
  config.final_eval_episodes = 10
  config.tasks = ml_collections.ConfigDict(dict(
      memorychain_L4=_task("gymnax:MemoryChain-bsuite", 10, 6, "memory",
                           memory_length=4),
  ))
  config.systems = _systems(("elstm", "rtrl", 2), ("elstm", "tbptt", 2),
                            ("feedforward", "tbptt", 2))
  return config


def batch_control():
  """MemoryChain(30), TBPTT(M=50) with 80 envs and TBPTT(M=100) with 40."""
  config = default()
  config.frames_per_update = 4000       # M=50: 80 envs; M=100: 40 envs
  config.tasks = ml_collections.ConfigDict(dict(
      memorychain_L30=config.tasks.memorychain_L30))
  config.systems = _systems(("elstm", "tbptt", 50), ("elstm", "tbptt", 100))
  return config


def episode_bptt_control():
  """MemoryChain(30) with full-episode BPTT: every unroll is one episode."""
  config = default()
  episode = 31
  config.frames_per_update = 80 * episode
  task = config.tasks.memorychain_L30
  task.kwargs.max_steps_in_episode = episode   # gradient="bptt" checks it
  config.tasks = ml_collections.ConfigDict(dict(memorychain_L30=task))
  config.systems = _systems(("elstm", "bptt", episode))
  return config


def paper():
  """The paper's scale (paper-notes §4.4) on the same tasks, for GPUs.

  Untested: sized from the paper's DMLab settings (N = 512, batch 32 per M,
  100M agent steps), not run here.
  """
  config = default()
  config.hidden_size = 512
  config.frames_per_update = 3200
  config.updates_per_call = 50
  config.eval_every_calls = 10
  for name in config.tasks:
    config.tasks[name].updates = 100_000_000 // config.frames_per_update
  # gymnax's default time limit (1000 steps) would cut the 1001-step episode
  # before its answer.
  config.tasks.memorychain_L1000 = _task(
      "gymnax:MemoryChain-bsuite", 100_000_000 // config.frames_per_update,
      1001, "memory", memory_length=1000, max_steps_in_episode=1001)
  return config


CONFIGS = {"default": default, "quick": quick, "batch_control": batch_control,
           "episode_bptt_control": episode_bptt_control, "paper": paper}


def get_config(name="default"):
  if name not in CONFIGS:
    raise ValueError(f"unknown config {name!r}; choose from {sorted(CONFIGS)}")
  return CONFIGS[name]()


def ordered_tasks(study):
  """Task names, memory tasks first, then by environment and memory length."""
  return sorted(study.tasks, key=lambda name: (
      study.tasks[name].kind != "memory", study.tasks[name].env,
      study.tasks[name].kwargs.get("memory_length", 0), name))


def ordered_systems(study):
  """System names: eLSTM RTRL, eLSTM TBPTT by M, LSTM, feed-forward."""
  cores = ["elstm", "lstm", "feedforward"]
  def key(name):
    system = study.systems[name]
    core = cores.index(system.core) if system.core in cores else len(cores)
    return (core, system.gradient != "rtrl", system.unroll_length, name)
  return sorted(study.systems, key=key)


def run_config(study, task_name, system_name, seed):
  """The experiments/configs/r2ac.py config of one run of the study."""
  from experiments.configs import r2ac  # pylint: disable=g-import-not-at-top
  task, system = study.tasks[task_name], study.systems[system_name]
  core, gradient, unroll = system.core, system.gradient, system.unroll_length
  if study.frames_per_update % unroll:
    raise ValueError(f"frames_per_update={study.frames_per_update} is not a "
                     f"multiple of {system_name}'s M={unroll}")
  config = r2ac.default()
  config.seed = seed
  config.env.name = task.env
  config.env.kwargs = ml_collections.ConfigDict(task.kwargs.to_dict())
  config.network.core = core
  config.network.hidden_size = study.hidden_size
  for key, value in task.network.items():
    setattr(config.network, key, value)
  config.network.core_kwargs = ml_collections.ConfigDict(
      {} if core == "feedforward"
      else {core: dict(forget_bias=study.forget_bias)})
  config.gradient = gradient
  config.unroll_length = unroll
  config.num_envs = study.frames_per_update // unroll
  config.total_updates = task.updates
  config.updates_per_call = min(study.updates_per_call, task.updates)
  config.eval.every_calls = study.eval_every_calls
  config.run.progress = False
  config.run.checkpoint_every_calls = study.eval_every_calls
  return config
