"""Anakin: R2AC acting and learning in one jitted program over JAX envs.

    train = make_train(config)
    runner = train.init(jax.random.PRNGKey(seed))
    runner, metrics = train.update(runner)    # config.updates_per_call updates

    seeds = make_train(config, num_seeds=5)   # 5 independent runs, one program
    runner = seeds.init(seed_keys([0, 1, 2, 3, 4]))   # leaves [5, ...]
    runner, metrics = seeds.update(runner)    # metrics [5]

One call runs `updates_per_call` updates under `lax.scan`; each update acts
for M = `unroll_length` steps in `num_envs` environments (`vmap`ped) and then
takes one learner step on that unroll. The outer Python loop only logs,
evaluates and checkpoints.

Full-episode BPTT (gradient="bptt"): every unroll starts by resetting all
environments and core states, so each unroll holds whole episodes from their
first step; `unroll_length` must be at least the environment's
`max_episode_steps` (a shorter unroll would cut every episode and change the
task). An episode that auto-resets inside the unroll and is still running at
its end is cut there; its last step bootstraps from V(obs[M]) as any unroll's
does, and it is not counted among the finished episodes.

Desynchronised phases (`config.desync_steps` = W > 0, the default): `init`
lets environment b first take u_b ~ U{0, ..., W-1} steps with the initial
policy (the same actor step as training: the core state follows the
episode), so that no batch holds every environment at the same episode step.
Without it every environment resets at update 0, episodes of fixed length
stay in lockstep, and every unroll starts at the same phase of every
episode. The warm-up steps are not counted as frames and train nothing.
`start` is the synchronised runner (every environment at a fresh episode),
for probes that need fresh episodes. Full-episode BPTT restarts episodes at
every unroll, so it ignores W.

Several seeds in one program (`num_seeds=S`): `init` takes S keys
(`seed_keys`) and every leaf of the runner gets a leading seed axis; `update`
is the single-seed update `vmap`ped over it, so seed s runs exactly as
`make_train(config)` from `PRNGKey(seeds[s])` does (tests/anakin_test.py),
with one compilation and one dispatch for all S. The seed axis is split over
the mesh's devices (S must be a multiple of their number).

Data parallelism: the environment axis of everything per-environment (env
states, observations, core states and sensitivities) is sharded over the
devices of a 1-D `jax.sharding.Mesh` ("data"); parameters and optimizer state
are replicated. The loss is a sum over the global batch, so XLA inserts the
cross-device reduction of the gradient and the result is the same update as
on one device (up to the order of float additions). That reduction is all
that moves between devices: each device encodes its own observations and
contracts its own sensitivities (tests/anakin_test.py checks the compiled
update has no all-gather).
"""

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from rtrl_jax.rl.agents.r2ac import (Trajectory, make_agent, make_learner_step,
                                  make_optimizer)
from rtrl_jax.rl.envs import make_env


class RunnerState(NamedTuple):
  params: Any
  opt_state: Any
  env_state: Any
  obs: jax.Array            # [B, ...] current observation
  prev_reward: jax.Array    # [B] clipped reward of the previous step
  reset: jax.Array          # [B] True: obs is the first of an episode
  core_state: Any           # RecurrentState (B) before the next step
  episode_return: jax.Array  # [B] running undiscounted return
  episode_length: jax.Array  # [B]
  key: jax.Array
  update: jax.Array         # number of learner updates done


class Train(NamedTuple):
  init: Callable[[jax.Array], RunnerState]
  update: Callable[[RunnerState], Any]
  agent: Any
  env: Any
  mesh: Any
  rollout: Callable[..., Any]
  learner_step: Callable[..., Any]
  start: Callable[[jax.Array], RunnerState]  # synchronised: fresh episodes


def seed_keys(seeds):
  """[S] PRNG keys, one per seed, for `make_train(..., num_seeds=S).init`."""
  return jnp.stack([jax.random.PRNGKey(seed) for seed in seeds])


def make_mesh(num_devices=None):
  """A 1-D "data" mesh over the first `num_devices` devices (None: all)."""
  devices = jax.devices()
  if num_devices and num_devices > len(devices):
    raise ValueError(
        f"num_devices={num_devices}, but this process sees {len(devices)} "
        f"device(s): {devices}")
  return jax.sharding.Mesh(devices[:num_devices] if num_devices else devices,
                           ("data",))


def make_train(config, mesh=None, num_seeds=None) -> Train:
  """Builds the Anakin system from `config` (see experiments/configs/r2ac.py).

  num_seeds: None for one run; S for S independent runs in one program
  (every runner leaf and metric gets a leading seed axis).
  """
  env = make_env(config.env.name, **dict(config.env.get("kwargs", {})))
  agent = make_agent(config, env.obs_shape, env.num_actions)
  total_updates = max(1, config.total_updates)
  optimizer = make_optimizer(config, total_updates)
  learner_step = make_learner_step(agent, optimizer)
  mesh = mesh or make_mesh(config.get("num_devices", None) or None)
  num_envs, unroll_length = config.num_envs, config.unroll_length
  if num_seeds is not None and (num_seeds < 1 or num_seeds % mesh.size):
    raise ValueError(
        f"num_seeds={num_seeds} must be a positive multiple of the number of "
        f"devices ({mesh.size})")
  if num_seeds is None and num_envs % mesh.size:
    raise ValueError(
        f"num_envs={num_envs} must be a multiple of the number of devices "
        f"({mesh.size})")
  clip = config.loss.reward_clip
  bootstrap_truncated = config.loss.bootstrap_truncated
  episode_aligned = config.gradient == "bptt"
  desync_steps = 0 if episode_aligned else config.get("desync_steps", 0)
  if episode_aligned and unroll_length < env.max_episode_steps:
    raise ValueError(
        f"unroll_length={unroll_length} is shorter than the environment's "
        f"max_episode_steps={env.max_episode_steps}: gradient='bptt' needs "
        "whole episodes in each unroll (raise unroll_length, or lower the "
        "env's time limit, e.g. env.kwargs.max_steps_in_episode for gymnax)")

  def start_episodes(runner, key):
    """`runner` with every environment and core state at a fresh episode."""
    env_state, obs = jax.vmap(env.reset)(jax.random.split(key, num_envs))
    zeros = jnp.zeros((num_envs,), jnp.float32)   # as the env's rewards
    return runner._replace(
        env_state=env_state, obs=obs, prev_reward=zeros,
        reset=jnp.ones((num_envs,), bool),
        core_state=agent.initial_core_state(runner.params, num_envs),
        episode_return=zeros,
        episode_length=jnp.zeros((num_envs,), jnp.int32))

  def start(key):
    k_params, k_env, key = jax.random.split(key, 3)
    params = agent.init(k_params)
    runner = RunnerState(
        params=params, opt_state=optimizer.init(params), env_state=None,
        obs=None, prev_reward=None, reset=None, core_state=None,
        episode_return=None, episode_length=None, key=key,
        update=jnp.zeros((), jnp.int32))
    return start_episodes(runner, k_env)

  def desynchronise(runner):
    """Environment b takes u_b ~ U{0, ..., W-1} actor steps first."""
    key, k_steps = jax.random.split(runner.key)
    steps = jax.random.randint(k_steps, (num_envs,), 0, desync_steps)
    shared = ("params", "opt_state", "key", "update")

    def warm_up(runner, t):
      stepped, _ = env_step(runner, None)
      active = t < steps

      def pick(new, old):
        mask = active.reshape(active.shape + (1,) * (new.ndim - 1))
        return jnp.where(mask, new, old)

      merged = {name: (getattr(stepped, name) if name in shared else
                       jax.tree.map(pick, getattr(stepped, name),
                                    getattr(runner, name)))
                for name in RunnerState._fields}
      return RunnerState(**merged), None

    runner, _ = jax.lax.scan(warm_up, runner._replace(key=key),
                             jnp.arange(desync_steps))
    return runner

  def init(key):
    runner = start(key)
    return desynchronise(runner) if desync_steps else runner

  def shardings(runner):
    """Per-environment leaves split over "data"; the rest replicated."""
    batched = P("data")
    per_env = lambda tree: jax.tree.map(lambda _: NamedSharding(mesh, batched),
                                        tree)
    replicated = lambda tree: jax.tree.map(lambda _: NamedSharding(mesh, P()),
                                           tree)
    return runner._replace(
        params=replicated(runner.params), opt_state=replicated(runner.opt_state),
        env_state=per_env(runner.env_state), obs=per_env(runner.obs),
        prev_reward=per_env(runner.prev_reward), reset=per_env(runner.reset),
        core_state=per_env(runner.core_state),
        episode_return=per_env(runner.episode_return),
        episode_length=per_env(runner.episode_length),
        key=replicated(runner.key), update=replicated(runner.update))

  def env_step(runner, _):
    """One actor step in every environment; returns the transition."""
    params = runner.params
    key, k_act, k_env = jax.random.split(runner.key, 3)
    core_state, out = agent.act(params, runner.core_state, runner.obs,
                                runner.prev_reward, runner.reset, k_act)
    env_state, step = jax.vmap(env.step)(
        jax.random.split(k_env, num_envs), runner.env_state, out.action)
    reward_in = jnp.clip(step.reward, -clip, clip)
    if bootstrap_truncated:
      truncation_value = jnp.where(
          step.truncated,
          agent.value_of(params, core_state, step.final_obs, reward_in), 0.0)
    else:
      truncation_value = jnp.zeros_like(step.reward)
    done = jnp.logical_or(step.terminated, step.truncated)
    episode_return = runner.episode_return + step.reward
    episode_length = runner.episode_length + 1
    transition = dict(
        obs=runner.obs, prev_reward=runner.prev_reward, reset=runner.reset,
        action=out.action, behaviour_logits=out.logits, reward=step.reward,
        terminated=step.terminated, truncated=step.truncated,
        truncation_value=jax.lax.stop_gradient(truncation_value),
        finished_return=jnp.where(done, episode_return, 0.0),
        finished_length=jnp.where(done, episode_length, 0), done=done)
    runner = runner._replace(
        env_state=env_state, obs=step.obs,
        prev_reward=jnp.where(done, 0.0, reward_in), reset=done,
        core_state=core_state, key=key,
        episode_return=jnp.where(done, 0.0, episode_return),
        episode_length=jnp.where(done, 0, episode_length))
    return runner, transition

  def rollout(runner):
    """M actor steps: (runner, Trajectory, episode statistics)."""
    if episode_aligned:
      key, k_env = jax.random.split(runner.key)
      runner = start_episodes(runner._replace(key=key), k_env)
    initial_state = runner.core_state
    runner, steps = jax.lax.scan(env_step, runner, None, unroll_length)
    append = lambda seq, last: jnp.concatenate([seq, last[None]])
    trajectory = Trajectory(
        initial_state=initial_state,
        obs=append(steps["obs"], runner.obs),
        prev_reward=append(steps["prev_reward"], runner.prev_reward),
        reset=append(steps["reset"], runner.reset),
        action=steps["action"], behaviour_logits=steps["behaviour_logits"],
        reward=steps["reward"], terminated=steps["terminated"],
        truncated=steps["truncated"],
        truncation_value=steps["truncation_value"])
    episodes = jnp.sum(steps["done"])
    stats = {
        "episodes": episodes,
        "episode_return_sum": jnp.sum(steps["finished_return"]),
        "episode_length_sum": jnp.sum(steps["finished_length"]),
    }
    return runner, trajectory, stats

  def one_update(runner, _):
    runner, trajectory, stats = rollout(runner)
    params, opt_state, metrics = learner_step(runner.params, runner.opt_state,
                                              trajectory)
    runner = runner._replace(params=params, opt_state=opt_state,
                             update=runner.update + 1)
    return runner, {**metrics, **stats}

  def update(runner):
    runner, metrics = jax.lax.scan(one_update, runner, None,
                                   config.updates_per_call)
    summed = ("episodes", "episode_return_sum", "episode_length_sum")
    out = {k: (v.sum() if k in summed else v.mean()) for k, v in metrics.items()}
    out["update"] = runner.update
    return runner, out

  if num_seeds is not None:
    # New names: the closures above must keep the single-seed functions.
    system = (jax.vmap(init), jax.vmap(start), jax.vmap(update))
    example = jax.eval_shape(system[0], seed_keys(range(num_seeds)))
    by_seed = NamedSharding(mesh, P("data"))
    runner_shardings = jax.tree.map(lambda _: by_seed, example)
  else:
    system = (init, start, update)
    example = jax.eval_shape(init, jax.random.PRNGKey(0))
    runner_shardings = shardings(example)
  system_init, system_start, system_update = system
  jitted_update = jax.jit(system_update, in_shardings=(runner_shardings,),
                          out_shardings=(runner_shardings, None),
                          donate_argnums=0)
  return Train(jax.jit(system_init, out_shardings=runner_shardings),
               jitted_update, agent, env, mesh, rollout, learner_step,
               jax.jit(system_start, out_shardings=runner_shardings))


def frames_per_update(config):
  return config.num_envs * config.unroll_length
