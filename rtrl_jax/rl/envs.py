"""JAX environments behind one small functional interface, with auto-reset.

    env = make_env("gymnax:MemoryChain-bsuite", memory_length=10)
    state, obs = env.reset(key)
    state, step = env.step(key, state, action)     # step: EnvStep

Single environment per call; batch with `jax.vmap`. `step` auto-resets: when
the episode ends, `step.obs` is the first observation of the next episode and
`step.final_obs` the last observation of the one that ended. Termination (the
MDP ended: no bootstrap) and truncation (a time limit: bootstrap from
`final_obs`) are reported separately and never confused.

Supported names:
  gymnax:<id>     any gymnax 1.0 id, e.g. MemoryChain-bsuite, CartPole-v1;
                  keyword arguments replace fields of the default EnvParams
                  (memory_length=..., max_steps_in_episode=...).
  xminigrid:<id>  xland-minigrid ids, e.g. MiniGrid-MemoryS8 ... S128;
                  keyword arguments replace EnvParams fields (max_steps=...).
"""

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp


class EnvStep(NamedTuple):
  obs: jax.Array          # next observation (first of a new episode if done)
  reward: jax.Array       # float32 scalar
  terminated: jax.Array   # bool: the episode ended; do not bootstrap
  truncated: jax.Array    # bool: cut by a time limit; bootstrap from final_obs
  final_obs: jax.Array    # observation reached by this step, before any reset


class Env(NamedTuple):
  reset: Callable[[jax.Array], Any]
  step: Callable[[jax.Array, Any, jax.Array], Any]
  num_actions: int
  obs_shape: tuple
  obs_dtype: Any
  max_episode_steps: int


def make_env(name: str, **overrides) -> Env:
  """Builds an `Env` from "<suite>:<id>" (see the module docstring)."""
  suite, sep, env_id = name.partition(":")
  if not sep or suite not in _SUITES:
    raise ValueError(
        f"env name must be '<suite>:<id>' with suite in {sorted(_SUITES)}, got "
        f"{name!r}")
  return _SUITES[suite](env_id, overrides)


def _replace_params(name, params, overrides):
  """`params` with `overrides`, each checked against the field's default:
  a bool for a bool, an int for an int (>= 1 where the default is positive:
  counts and lengths such as memory_length or max_steps_in_episode, which
  the environments take silently at 0 or below), a number for a float."""
  unknown = sorted(set(overrides) - set(params.__dataclass_fields__))
  if unknown:
    raise ValueError(
        f"{name}: unknown env parameter(s) {unknown}; known: "
        f"{sorted(params.__dataclass_fields__)} (env.kwargs may still hold "
        "another environment's parameters, e.g. the default config's "
        "MemoryChain ones: change env.kwargs with env.name, or start from a "
        "preset for this environment such as :cartpole)")
  for key, value in overrides.items():
    default = getattr(params, key)
    if default is None or getattr(default, "ndim", 0):
      continue                     # no scalar default to compare with
    default = default.item() if hasattr(default, "item") else default
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, bool):
      problem = None if isinstance(value, bool) else "must be true or false"
    elif isinstance(default, int):
      problem = (None if is_int and (value >= 1 or default <= 0) else
                 "must be an int" + (" >= 1" if default > 0 else ""))
    elif isinstance(default, float):
      problem = (None if is_int or isinstance(value, float)
                 else "must be a number")
    else:
      problem = None
    if problem:
      raise ValueError(f"env.kwargs.{key}={value!r}: {problem} ({name}'s "
                       f"default is {default!r})")
  return params.replace(**overrides) if overrides else params


def _gymnax(env_id, overrides):
  import gymnax
  try:
    env, params = gymnax.make(env_id)
  except (ValueError, KeyError) as e:
    raise ValueError(f"gymnax:{env_id}: unknown gymnax id ({e})") from None
  params = _replace_params(f"gymnax:{env_id}", params, overrides)
  space = env.observation_space(params)
  actions = env.action_space(params)
  if not hasattr(actions, "n"):
    raise ValueError(
        f"gymnax:{env_id}: its action space is {type(actions).__name__}, "
        "not discrete; the agents here need discrete actions")

  def reset(key):
    obs, state = env.reset(key, params)
    return state, obs

  def step(key, state, action):
    obs, state, reward, terminated, truncated, info = env.step(
        key, state, action, params)
    # gymnax flags a time-limit cut of a terminal step as both: terminal wins.
    return state, EnvStep(obs, jnp.asarray(reward, jnp.float32),
                          jnp.asarray(terminated, bool),
                          jnp.logical_and(truncated, jnp.logical_not(terminated)),
                          info["final_observation"])

  return Env(reset, step, env.num_actions, tuple(space.shape),
             jnp.dtype(space.dtype), int(params.max_steps_in_episode))


def _xminigrid(env_id, overrides):
  import xminigrid
  try:
    env, params = xminigrid.make(env_id)
  except Exception as e:  # xminigrid raises bare errors for unknown ids
    raise ValueError(f"xminigrid:{env_id}: unknown xminigrid id ({e})") from None
  params = _replace_params(f"xminigrid:{env_id}", params, overrides)
  first = env.reset(params, jax.random.PRNGKey(0))

  def reset(key):
    timestep = env.reset(params, key)
    return timestep, timestep.observation

  def step(key, timestep, action):
    stepped = env.step(params, timestep, action)
    done = stepped.last()
    terminated = jnp.logical_and(done, stepped.discount == 0)
    truncated = jnp.logical_and(done, jnp.logical_not(terminated))
    fresh = env.reset(params, key)
    timestep = jax.tree.map(lambda a, b: jnp.where(done, a, b), fresh, stepped)
    return timestep, EnvStep(timestep.observation,
                             jnp.asarray(stepped.reward, jnp.float32),
                             terminated, truncated, stepped.observation)

  return Env(reset, step, int(env.num_actions(params)),
             tuple(first.observation.shape), first.observation.dtype,
             int(params.max_steps))


_SUITES = {"gymnax": _gymnax, "xminigrid": _xminigrid}
