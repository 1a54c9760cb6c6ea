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

import dataclasses
import math

import ml_collections

# The CPU presets' learning rate (RMSProp, decayed linearly to 0): the
# study's tuning stage (docs/RESULTS.md) chose it.
LEARNING_RATE = 1e-2


def core_kwargs():
  """{core name: its constructor's keyword arguments}, defaults included.

  Read from the cores themselves (dataclass fields) so that the command line
  can set any of them; R2AC raises the initial forget-gate bias to 1.0 where
  a core has one.
  """
  # pylint: disable=g-import-not-at-top
  from rtrl_jax.agents.r2ac import CORES
  # pylint: enable=g-import-not-at-top
  out = {}
  for name, core in CORES.items():
    kwargs = {}
    for field in dataclasses.fields(core):
      if field.name == "hidden_size" or field.default is dataclasses.MISSING:
        continue
      # A None default still takes a value of the annotated type.
      kwargs[field.name] = (
          ml_collections.FieldReference(None, field_type=field.type)
          if field.default is None else field.default)
    if "forget_bias" in kwargs:
      kwargs["forget_bias"] = 1.0
    out[name] = ml_collections.ConfigDict(kwargs)
  return ml_collections.ConfigDict(out)


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
  config.network = ml_collections.ConfigDict(dict(
      encoder="mlp",            # mlp | impala (pixels)
      encoder_sizes=(32,),
      feature_size=256,         # impala only
      obs_scale=1.0,
      core="elstm",
      hidden_size=64,
      core_kwargs=core_kwargs(),   # per core: its constructor's arguments
  ))
  # Chrono forget-gate biases (rtrl_jax/initializers.py): memory time scales
  # spread over [2, 100] steps (the study's forget-gate control).
  for core in ("elstm", "lstm"):
    config.network.core_kwargs[core].forget_init = "chrono"
  # rtrl | tbptt (M = unroll_length) | bptt (whole episodes: every unroll
  # starts fresh episodes; unroll_length >= the env's max_episode_steps)
  config.gradient = "rtrl"
  config.num_envs = 64
  config.unroll_length = 10     # M
  # Before update 0, environment b takes u_b ~ U{0..W-1} steps (W =
  # desync_steps) so that episodes are at random phases; 0: all start at
  # once (synchronised). rtrl_jax/anakin.py.
  config.desync_steps = 128
  config.total_updates = 1500   # ~1M frames; also the LR-decay horizon
  config.updates_per_call = 50
  config.num_devices = 0        # 0: all local devices
  config.loss = ml_collections.ConfigDict(dict(
      discount=0.99,
      baseline_cost=0.5,
      entropy_cost=0.01,
      reward_clip=1.0,
      clip_rho=1.0,
      clip_pg_rho=1.0,
      lambda_=1.0,
      bootstrap_truncated=True,
  ))
  config.optimizer = ml_collections.ConfigDict(dict(
      learning_rate=LEARNING_RATE,
      decay=0.99,
      eps=0.01,
      max_grad_norm=40.0,
      anneal_lr=True,
      freeze_encoder=False,
  ))
  config.eval = ml_collections.ConfigDict(dict(
      every_calls=10,
      episodes=64,           # per kind (sampled, greedy) during training
      final_episodes=1000,   # per kind at the end: results.json "final/*"
  ))
  config.run = ml_collections.ConfigDict(dict(
      checkpoint_every_calls=10,
      max_checkpoints=2,
      progress=True,
      wandb=False,
  ))
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
  for core in ("elstm", "lstm"):
    config.network.core_kwargs[core].forget_init = "constant"
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
  config.eval.every_calls = 2
  config.eval.episodes = 8
  config.run.checkpoint_every_calls = 1
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


def agent_rules():
  """Value rules of the agent and learner keys, shared with the Sebulba config."""
  # pylint: disable=g-import-not-at-top
  import rtrl_jax
  from rtrl_jax import experiment
  from rtrl_jax.agents import r2ac
  # pylint: enable=g-import-not-at-top
  positive = experiment.config.positive
  finite_positive = experiment.config.finite_positive
  return [
      ("gradient", *experiment.config.one_of(*r2ac.GRADIENTS)),
      ("network.core", *experiment.config.one_of(*r2ac.CORES)),
      ("@network.core",
       lambda c: c.gradient != "rtrl" or c.network.core in rtrl_jax.CELLS,
       f"a cell with exact RTRL {sorted(rtrl_jax.CELLS)} when gradient "
       "is 'rtrl'"),
      ("network.encoder", *experiment.config.one_of("mlp", "impala")),
      ("network.hidden_size", positive, "a positive int"),
      ("unroll_length", positive, "a positive int"),
      ("total_updates", positive, "a positive int"),
      ("loss.discount", lambda v: 0 <= v <= 1, "in [0, 1]"),
      ("loss.reward_clip", positive, "positive"),
      ("network.encoder_sizes",
       lambda v: isinstance(v, (tuple, list)) and all(
           isinstance(size, int) and not isinstance(size, bool) and size > 0
           for size in v), "a tuple of positive ints, e.g. (32,)"),
      ("optimizer.learning_rate", finite_positive, "a finite positive number"),
      ("optimizer.max_grad_norm", finite_positive, "a finite positive number"),
      ("optimizer.eps", lambda v: math.isfinite(v) and v >= 0,
       "a finite non-negative number"),
      ("optimizer.decay", lambda v: 0 <= v < 1, "in [0, 1)"),
      experiment.config.wandb_rule(),
      ("run.max_checkpoints", positive, "a positive int"),
  ]


def config_rules():
  """Value rules of the R2AC Anakin config, for `experiment.check_config`."""
  from rtrl_jax import experiment  # pylint: disable=g-import-not-at-top
  positive = experiment.config.positive
  return agent_rules() + [
      ("num_envs", positive, "a positive int"),
      ("desync_steps", lambda v: v >= 0, "a non-negative int"),
      ("updates_per_call", positive, "a positive int"),
      ("@total_updates", lambda c: c.total_updates % c.updates_per_call == 0,
       "a multiple of updates_per_call"),
      ("num_devices", lambda v: v >= 0, "a non-negative int"),
      ("eval.every_calls", positive, "a positive int"),
      ("eval.episodes", positive, "a positive int"),
      ("eval.final_episodes", positive, "a positive int"),
      ("run.checkpoint_every_calls", positive, "a positive int"),
  ]


# Keys whose contents depend on the environment or the core: make_env and the
# core's constructor check them, the reference config does not.
FREE_KEYS = ("env.kwargs", "network.core_kwargs")


def check_against(config, reference, rules, free_keys=FREE_KEYS):
  """Raises ConfigError unless `config` fits `reference` and `rules`.

  The dotted `free_keys` are taken from `config` as they are (any contents).
  Shared with the Sebulba config.
  """
  from rtrl_jax import experiment  # pylint: disable=g-import-not-at-top
  def node(tree, dotted):
    for part in dotted.split("."):
      tree = tree[part]
    return tree

  with reference.unlocked():
    for key in free_keys:
      parent, _, name = key.rpartition(".")
      node(reference, parent)[name] = node(config, parent)[name]
  experiment.check_config(config, reference, rules)


def check(config):
  """Raises ConfigError for a bad config (one line naming the key)."""
  check_against(config, get_config(), config_rules())


def get_config(name="default"):
  configs = {"default": default, "tiny": tiny, "minigrid": minigrid,
             "cartpole": cartpole, "paper": paper}
  if name not in configs:
    raise ValueError(f"unknown config {name!r}; choose from {sorted(configs)}")
  return configs[name]()
