"""Configs for the R2AC Anakin system (experiments/r2ac_anakin.py).

Two kinds of preset, never mixed up:

* CPU presets (sized for a 2-core CPU and about 1M frames per run):
  `default`, `tiny`, `cartpole`, `minigrid`. Their optimizer settings were
  chosen by the learning-rate sweep of the study (docs/RESULTS.md,
  "Tuning"), for RTRL and TBPTT alike.
* `paper`: the paper's hyper-parameters (paper-notes §4.4: IDSIA/rtrl-elstm's
  DMLab settings), the GPU-scale setting for ~1B frames. At CPU budgets
  (1M frames, ~1500 updates) its learning rate of 6e-4 decayed to 0 leaves
  agents near their initial, near-uniform policy.

  --config=experiments/configs/r2ac.py               MemoryChain(30), RTRL(10) eLSTM, CPU
  --config=experiments/configs/r2ac.py:tiny          seconds; tests and CI
  --config=experiments/configs/r2ac.py:cartpole      reactive sanity task, CPU
  --config=experiments/configs/r2ac.py:minigrid      exploratory: xminigrid MiniGrid-MemoryS8, CPU
  --config=experiments/configs/r2ac.py:paper         the paper's setting (GPU scale)

Override on the command line, e.g. `--config.gradient=tbptt
--config.network.core=lstm --config.unroll_length=20`.
Cores: any of rtrl_jax.CELLS (gradient rtrl, tbptt or bptt), lstm or
feedforward (gradient tbptt or bptt). `network.core_kwargs.<core>` holds
every constructor argument of that core with its default (the other cores
ignore it), e.g. `--config.network.core_kwargs.elstm.forget_init=constant
--config.network.core_kwargs.elstm.forget_bias=3.0` or
`--config.network.core=lru --config.network.core_kwargs.lru.r_min=0.8`.
Full-episode BPTT, e.g. on MemoryChain(30)'s 31-step episodes:
`--config.gradient=bptt --config.unroll_length=31
--config.env.kwargs.max_steps_in_episode=31` (`env.kwargs` takes any
field of the environment's EnvParams, also ones this file does not list).
"""

import ml_collections

from experiments.configs import parts

# The CPU presets' learning rate (RMSProp, decayed linearly to 0): the
# study's tuning stage (docs/RESULTS.md) chose it.
LEARNING_RATE = 1e-2


def default():
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.env = ml_collections.ConfigDict(dict(
      name="gymnax:MemoryChain-bsuite",
      # max_steps_in_episode: gymnax's time limit (its default); full-episode
      # BPTT needs it <= unroll_length.
      kwargs=ml_collections.ConfigDict(dict(memory_length=30,
                                            max_steps_in_episode=1000)),
  ))
  config.network = parts.network()
  # Chrono forget-gate biases (rtrl_jax/cells/initializers.py): memory time scales
  # spread over [2, 100] steps (the study's forget-gate control).
  parts.set_forget_init(config, "chrono")
  # rtrl | tbptt (M = unroll_length) | bptt (whole episodes: every unroll
  # starts fresh episodes; unroll_length >= the env's max_episode_steps)
  config.gradient = "rtrl"
  config.num_envs = 64
  config.unroll_length = 10     # M
  # Before update 0, environment b takes u_b ~ U{0..W-1} steps (W =
  # desync_steps) so that episodes are at random phases; 0: all start at
  # once (synchronised). rtrl_jax/rl/anakin.py.
  config.desync_steps = 128
  config.total_updates = 1500   # ~1M frames; also the LR-decay horizon
  config.updates_per_call = 50
  config.num_devices = 0        # 0: all local devices
  config.loss = parts.loss()
  config.optimizer = parts.optimizer(LEARNING_RATE)
  config.eval = ml_collections.ConfigDict(dict(
      every=10,              # loop steps (calls)
      episodes=64,           # per kind (sampled, greedy) during training
      final_episodes=1000,   # per kind at the end: results.json "final/*"
  ))
  config.run = parts.run(checkpoint_every=10)
  return config


def paper():
  """The paper's DMLab hyper-parameters (paper-notes §4.4): GPU scale.

  N = 512, 32 segments of M = 100 steps per update, 100M frames, RMSProp
  (PyTorch semantics) 6e-4 decayed linearly to 0, clip 40, entropy 0.01,
  baseline 0.5, constant initial forget-gate bias 1.0. Untested at this
  scale here: the CPU runs take the CPU presets.
  """
  config = default()
  config.network.hidden_size = 512
  parts.set_forget_init(config, "constant")
  config.num_envs = 32
  config.unroll_length = 100
  config.total_updates = 31_250      # 100M frames
  config.optimizer.learning_rate = 6e-4
  return config


def tiny():
  config = default()
  config.env.kwargs.memory_length = 3
  config.network.hidden_size = 16
  config.eval.final_episodes = 16
  config.num_envs = 8
  config.unroll_length = 4
  # Synchronised: tests that pin where episodes start in an unroll build on
  # this config (tests/anakin_test.py tests desync_steps > 0).
  config.desync_steps = 0
  config.total_updates = 40
  config.updates_per_call = 10
  config.eval.every = 2
  config.eval.episodes = 8
  config.run.checkpoint_every = 1
  return config


def minigrid():
  """Exploratory, not tuned: no result of this preset is claimed anywhere."""
  config = default()
  config.env.name = "xminigrid:MiniGrid-MemoryS8"
  config.env.kwargs = ml_collections.ConfigDict()
  config.network.encoder_sizes = (64,)
  config.network.obs_scale = 0.1
  config.unroll_length = 20
  return config


def cartpole():
  """The default config on CartPole-v1 (only the environment changed)."""
  config = default()
  config.env.name = "gymnax:CartPole-v1"
  config.env.kwargs = ml_collections.ConfigDict()
  return config


def config_rules():
  """Value rules of the R2AC Anakin config, for `experiment.check_config`."""
  from rtrl_jax import experiment  # pylint: disable=g-import-not-at-top
  positive = experiment.config.positive
  return parts.agent_rules() + [
      ("num_envs", positive, "a positive int"),
      ("desync_steps", lambda v: v >= 0, "a non-negative int"),
      ("updates_per_call", positive, "a positive int"),
      ("@total_updates", lambda c: c.total_updates % c.updates_per_call == 0,
       "a multiple of updates_per_call"),
      ("num_devices", lambda v: v >= 0, "a non-negative int"),
      ("eval.every", positive, "a positive int"),
      ("eval.episodes", positive, "a positive int"),
      ("eval.final_episodes", positive, "a positive int"),
      ("run.checkpoint_every", positive, "a positive int"),
      ("run.log_every", positive, "a positive int"),
  ] + parts.memory_rules("num_envs", lambda c: c.num_envs)


def check(config):
  """Raises ConfigError for a bad config (one line naming the key)."""
  parts.check_against(config, get_config(), config_rules())


def get_config(name="default"):
  configs = {"default": default, "tiny": tiny, "minigrid": minigrid,
             "cartpole": cartpole, "paper": paper}
  if name not in configs:
    raise ValueError(f"unknown config {name!r}; choose from {sorted(configs)}")
  return configs[name]()
