"""Config parts shared by the R2AC Anakin and Sebulba configs.

Each function returns one sub-tree (`network`, `loss`, `optimizer`, `run`)
with the values both systems start from; experiments/configs/r2ac.py and
experiments/configs/sebulba.py assemble them with their own system keys.
The value rules of the shared keys (`agent_rules`) and the check of a config
against its reference (`check_against`) live here too.

Both systems count in steps of the training loop: one Anakin step is one
jitted call of `updates_per_call` updates, one Sebulba step is one update.
`run.checkpoint_every`, `run.log_every` and `eval.every` are in those steps.
"""

import dataclasses
import math

import ml_collections


def core_kwargs():
  """{core name: its constructor's keyword arguments}, defaults included.

  Read from the cores themselves (dataclass fields) so that the command line
  can set any of them; R2AC raises the initial forget-gate bias to 1.0 where
  a core has one.
  """
  # pylint: disable=g-import-not-at-top
  from rtrl_jax.rl.agents.r2ac import CORES
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


def network(encoder_sizes=(32,), obs_scale=1.0, hidden_size=64):
  return ml_collections.ConfigDict(dict(
      encoder="mlp",            # mlp | impala (pixels)
      encoder_sizes=encoder_sizes,
      feature_size=256,         # impala only
      obs_scale=obs_scale,
      core="elstm",
      hidden_size=hidden_size,
      core_kwargs=core_kwargs(),   # per core: its constructor's arguments
  ))


def set_forget_init(config, forget_init):
  """Sets the forget-gate initialisation of the cores that have one."""
  for core in ("elstm", "lstm"):
    config.network.core_kwargs[core].forget_init = forget_init


def loss():
  return ml_collections.ConfigDict(dict(
      discount=0.99,
      baseline_cost=0.5,
      entropy_cost=0.01,
      reward_clip=1.0,
      clip_rho=1.0,
      clip_pg_rho=1.0,
      lambda_=1.0,
      bootstrap_truncated=True,
  ))


def optimizer(learning_rate):
  """RMSProp (PyTorch semantics) decayed linearly to 0 over total_updates."""
  return ml_collections.ConfigDict(dict(
      learning_rate=learning_rate,
      decay=0.99,
      eps=0.01,
      max_grad_norm=40.0,
      anneal_lr=True,
      freeze_encoder=False,
  ))


def run(checkpoint_every, log_every=1):
  """Cadence (in training-loop steps) and output of a run."""
  return ml_collections.ConfigDict(dict(
      log_every=log_every,
      checkpoint_every=checkpoint_every,
      max_checkpoints=2,
      progress=True,
      wandb=False,
  ))


def _core_fits_gradient(config):
  from rtrl_jax.rl.agents import r2ac  # pylint: disable=g-import-not-at-top
  try:
    r2ac.check_core(config.network.core, config.gradient)
  except ValueError:
    return False
  return True


def agent_rules():
  """Value rules of the keys both systems share."""
  # pylint: disable=g-import-not-at-top
  import rtrl_jax
  from rtrl_jax import experiment
  from rtrl_jax.rl.agents import r2ac
  # pylint: enable=g-import-not-at-top
  positive = experiment.config.positive
  finite_positive = experiment.config.finite_positive
  return [
      ("gradient", *experiment.config.one_of(*r2ac.GRADIENTS)),
      ("network.core", *experiment.config.one_of(*r2ac.CORES)),
      ("@network.core", _core_fits_gradient,
       f"a cell with exact RTRL {sorted(rtrl_jax.CELLS)} when gradient "
       "is 'rtrl'"),
      ("network.encoder", *experiment.config.one_of(*r2ac.ENCODERS)),
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


def estimated_bytes(config, num_envs):
  """A lower estimate of the float32 bytes training allocates with
  `num_envs` environments, before anything is built (the observation size
  is not known yet): the parameters with their gradient and RMSProp
  accumulator (the core's weights dominate: eLSTM-like cells have two
  H x I matrices, an LSTM four H x (I + H)), the RTRL sensitivities (one
  per recurrent parameter per environment, gradient 'rtrl') and the
  activations an unroll keeps for the gradient (M steps x environments x
  (I + 4H)). I is the encoder's output size."""
  net = config.network
  hidden = net.hidden_size
  inputs = (net.feature_size if net.encoder == "impala"
            else (list(net.encoder_sizes) or [1])[-1])
  core = (4 * hidden * (inputs + hidden + 1) if net.core == "lstm"
          else 2 * hidden * (inputs + 2))
  params = core + 2 * hidden             # + the policy and value heads
  sensitivities = num_envs * core if config.gradient == "rtrl" else 0
  unroll = num_envs * config.unroll_length * (inputs + 4 * hidden)
  return 4 * (3 * params + sensitivities + unroll)


def memory_rules(envs_key, num_envs, envs_sizes=None):
  """Rules that refuse, before anything is allocated, a config whose
  `estimated_bytes` exceed this machine's memory (`fits_in_memory`), each
  naming the key to blame: network.hidden_size when the network alone (one
  environment) does not fit, else `envs_key` (`num_envs(config)`: the
  environments one process steps; `envs_sizes` the keys it grows with, for
  the message, default `envs_key`)."""
  from rtrl_jax import experiment  # pylint: disable=g-import-not-at-top
  fits = experiment.config.fits_in_memory
  return [
      ("@network.hidden_size", *fits(
          lambda c: estimated_bytes(c, 1),
          "network.hidden_size and the encoder's output size, for one "
          "environment")),
      (f"@{envs_key}", *fits(
          lambda c: estimated_bytes(c, num_envs(c)),
          f"{envs_sizes or envs_key}, unroll_length and "
          "network.hidden_size")),
  ]


# Keys whose contents depend on the environment or the core: make_env and the
# core's constructor check them, the reference config does not.
FREE_KEYS = ("env.kwargs", "network.core_kwargs")


def check_against(config, reference, rules, free_keys=FREE_KEYS):
  """Raises ConfigError unless `config` fits `reference` and `rules`.

  The dotted `free_keys` are taken from `config` as they are (any contents).
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


