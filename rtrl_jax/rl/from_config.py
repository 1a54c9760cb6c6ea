"""R2AC objects from an R2AC config: the one place the config is unpacked.

The library functions take explicit arguments (`r2ac.make_core`,
`r2ac.make_encoder`, `r2ac.make_agent`, `r2ac.make_optimizer`,
`anakin.make_system`); the scripts' configs (experiments/configs/r2ac.py
for Anakin, experiments/configs/sebulba.py for Sebulba, both built from
experiments/configs/parts.py) are read here and nowhere else.
"""

from rtrl_jax.rl import anakin
from rtrl_jax.rl.agents import r2ac
from rtrl_jax.rl.envs import make_env


def loss_params(config) -> r2ac.LossParams:
  return r2ac.LossParams(**{name: config.loss[name]
                            for name in r2ac.LossParams._fields})


def agent(config, obs_shape, num_actions) -> r2ac.Agent:
  """The agent of `config.network`, `config.gradient` and `config.loss`."""
  net, gradient = config.network, config.gradient
  r2ac.check_core(net.core, gradient)
  core = r2ac.make_core(net.core, net.hidden_size,
                        **dict(net.get("core_kwargs", {}).get(net.core, {})))
  encoder = r2ac.make_encoder(net.encoder, net.encoder_sizes, net.obs_scale,
                              net.feature_size)
  return r2ac.make_agent(core, encoder, obs_shape, num_actions, gradient,
                         loss_params(config))


def learning_rate_schedule(config):
  opt = config.optimizer
  return r2ac.learning_rate_schedule(opt.learning_rate, config.total_updates,
                                     opt.anneal_lr)


def optimizer(config):
  """RMSProp of `config.optimizer`, decaying over `config.total_updates`."""
  opt = config.optimizer
  return r2ac.make_optimizer(
      opt.learning_rate, config.total_updates, anneal_lr=opt.anneal_lr,
      decay=opt.decay, eps=opt.eps, max_grad_norm=opt.max_grad_norm,
      freeze_encoder=opt.freeze_encoder)


def env(config):
  """The JAX environment of `config.env` (Anakin)."""
  return make_env(config.env.name, **dict(config.env.get("kwargs", {})))


def anakin_system(config, mesh=None, num_seeds=None,
                  instrument_optimizer=None) -> anakin.System:
  """The Anakin system of an Anakin config (experiments/configs/r2ac.py).

  instrument_optimizer: optional, optax transformation -> transformation,
    applied to the config's optimizer (a benchmark's probe; see
    experiments/benchmark_anakin.py --in_loop_pass).
  """
  environment = env(config)
  learner_optimizer = optimizer(config)
  if instrument_optimizer is not None:
    learner_optimizer = instrument_optimizer(learner_optimizer)
  return anakin.make_system(
      environment,
      agent(config, environment.obs_shape, environment.num_actions),
      learner_optimizer, num_envs=config.num_envs,
      unroll_length=config.unroll_length,
      updates_per_call=config.updates_per_call,
      desync_steps=config.get("desync_steps", 0),
      mesh=mesh or anakin.make_mesh(config.get("num_devices", None) or None),
      num_seeds=num_seeds)
