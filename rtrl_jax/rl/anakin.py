"""Anakin: R2AC acting and learning in one jitted program over JAX envs.

    system = make_system(env, agent, optimizer, num_envs=64, unroll_length=10,
                         updates_per_call=50)
    runner = system.init(jax.random.PRNGKey(seed))
    runner, metrics = system.step(runner)    # updates_per_call updates

    seeds = make_system(..., num_seeds=5)    # 5 independent runs, one program
    runner = seeds.init(seed_keys([0, 1, 2, 3, 4]))   # leaves [5, ...]
    runner, metrics = seeds.step(runner)     # metrics [5]

(`rtrl_jax.rl.from_config.anakin_system(config)` builds it from an R2AC
config.) One `step` is one step of the training loop, as in Sebulba.

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

Desynchronised phases (`desync_steps` = W > 0, the configs' default): `init`
lets environment b first take u_b ~ U{0, ..., W-1} steps with the initial
policy (the same actor step as training: the core state follows the
episode), so that no batch holds every environment at the same episode step.
Without it every environment resets at update 0, episodes of fixed length
stay in lockstep, and every unroll starts at the same phase of every
episode. The warm-up steps are not counted as frames and train nothing.
`init_synchronised` gives the synchronised runner (every environment at a fresh episode),
for probes that need fresh episodes. Full-episode BPTT restarts episodes at
every unroll, so it ignores W.

Several seeds in one program (`num_seeds=S`): `init` takes S keys
(`seed_keys`) and every leaf of the runner gets a leading seed axis; `step`
is the single-seed step `vmap`ped over it, so seed s runs exactly as
the single-seed system from `PRNGKey(seeds[s])` does (tests/anakin_test.py),
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

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from rtrl_jax.rl.agents.r2ac import Agent, Trajectory, make_learner_step
from rtrl_jax.rl.episodes import EpisodeStats, clip_reward, step_episodes


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


class System(NamedTuple):
  """The Anakin system: jitted `init` and `step`, and its parts."""
  init: Callable[[jax.Array], RunnerState]     # desynchronised start
  step: Callable[[RunnerState], Any]           # updates_per_call updates
  init_synchronised: Callable[[jax.Array], RunnerState]  # fresh episodes
  rollout: Callable[..., Any]   # runner -> (runner, Trajectory, EpisodeStats)
  learner_step: Callable[..., Any]
  agent: Agent
  env: Any
  mesh: Any
  num_envs: int
  unroll_length: int
  updates_per_call: int


class Actors(NamedTuple):
  """What the actor functions below need: static, hashable by identity."""
  env: Any
  agent: Agent
  num_envs: int
  unroll_length: int
  desync_steps: int
  episode_aligned: bool   # gradient "bptt": every unroll starts episodes


def seed_keys(seeds):
  """[S] PRNG keys, one per seed, for `make_system(..., num_seeds=S).init`."""
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


def start_episodes(actors, runner, key):
  """`runner` with every environment and core state at a fresh episode."""
  num_envs = actors.num_envs
  env_state, obs = jax.vmap(actors.env.reset)(jax.random.split(key, num_envs))
  zeros = jnp.zeros((num_envs,), jnp.float32)   # as the env's rewards
  return runner._replace(
      env_state=env_state, obs=obs, prev_reward=zeros,
      reset=jnp.ones((num_envs,), bool),
      core_state=actors.agent.initial_core_state(runner.params, num_envs),
      episode_return=zeros,
      episode_length=jnp.zeros((num_envs,), jnp.int32))


def start(actors, optimizer, key):
  """Fresh parameters, optimizer state and episodes (synchronised)."""
  k_params, k_env, key = jax.random.split(key, 3)
  params = actors.agent.init(k_params)
  runner = RunnerState(
      params=params, opt_state=optimizer.init(params), env_state=None,
      obs=None, prev_reward=None, reset=None, core_state=None,
      episode_return=None, episode_length=None, key=key,
      update=jnp.zeros((), jnp.int32))
  return start_episodes(actors, runner, k_env)


def env_step(actors, runner):
  """One actor step in every environment: (runner, transition dict)."""
  agent, params = actors.agent, runner.params
  key, k_act, k_env = jax.random.split(runner.key, 3)
  inputs = agent.core_inputs(params, runner.obs, runner.prev_reward)
  core_state, out = agent.act_on_inputs(params, runner.core_state, inputs,
                                        runner.reset, k_act)
  env_state, step = jax.vmap(actors.env.step)(
      jax.random.split(k_env, actors.num_envs), runner.env_state, out.action)
  if agent.loss_params.bootstrap_truncated:
    reward_in = clip_reward(step.reward, agent.loss_params.reward_clip)
    truncation_value = jnp.where(
        step.truncated,
        agent.value_of(params, core_state, step.final_obs, reward_in), 0.0)
  else:
    truncation_value = jnp.zeros_like(step.reward)
  done = jnp.logical_or(step.terminated, step.truncated)
  # A JAX env resets in the same step: the next step starts the episode.
  episodes = step_episodes(step.reward, done, done, runner.episode_return,
                           runner.episode_length,
                           agent.loss_params.reward_clip)
  transition = dict(
      obs=runner.obs, prev_reward=runner.prev_reward, reset=runner.reset,
      action=out.action, behaviour_logits=out.logits, reward=step.reward,
      terminated=step.terminated, truncated=step.truncated,
      truncation_value=jax.lax.stop_gradient(truncation_value),
      stats=episodes.stats, core_inputs=inputs)
  runner = runner._replace(
      env_state=env_state, obs=step.obs, prev_reward=episodes.prev_reward,
      reset=done, core_state=core_state, key=key,
      episode_return=episodes.episode_return,
      episode_length=episodes.episode_length)
  return runner, transition


def desynchronise(actors, runner):
  """Environment b takes u_b ~ U{0, ..., W-1} actor steps first."""
  key, k_steps = jax.random.split(runner.key)
  steps = jax.random.randint(k_steps, (actors.num_envs,), 0,
                             actors.desync_steps)
  shared = ("params", "opt_state", "key", "update")

  def warm_up(runner, t):
    stepped, _ = env_step(actors, runner)
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
                           jnp.arange(actors.desync_steps))
  return runner


def rollout(actors, runner):
  """M actor steps: (runner, Trajectory, EpisodeStats of the ended episodes).

  With RTRL sensitivities S in the core state, the M steps run the forward
  pass only (the hidden state is all that acting and the truncation
  bootstrap need) and record the core's inputs x(t) and resets; then
  `agent.advance_sensitivities` advances S from the unroll's initial state
  over them in one call: for the eLSTM one read and write of S per unroll
  instead of one per step (`core._advance_in_one_pass`). It is the same
  recursion on the same x(t), resets and hidden states
  (tests/anakin_deferred_test.py checks it against stepping S every step).
  The desynchronising warm-up (`desynchronise`) still steps S every step:
  it runs once, and each environment stops at its own step.
  """
  runner, trajectory, stats, core_inputs = act(actors, runner)
  return advance(actors, runner, trajectory, core_inputs), trajectory, stats


def act(actors, runner):
  """`rollout` without advancing S: (runner, Trajectory, EpisodeStats,
  core inputs), where the core inputs x(t) [M, B, D] (None without S) are,
  with the trajectory's resets, what `advance` needs; the runner's core
  state has no S yet."""
  if actors.episode_aligned:
    key, k_env = jax.random.split(runner.key)
    runner = start_episodes(actors, runner._replace(key=key), k_env)
  initial_state = runner.core_state
  # The actor steps without sensitivities (see `rollout`'s docstring).
  runner = runner._replace(core_state=initial_state._replace(
      sensitivities=None))
  runner, steps = jax.lax.scan(lambda r, _: env_step(actors, r), runner, None,
                               actors.unroll_length)
  core_inputs = (None if initial_state.sensitivities is None
                 else steps["core_inputs"])
  append = lambda seq, last: jnp.concatenate([seq, last[None]])
  trajectory = Trajectory(
      initial_state=initial_state,
      obs=append(steps["obs"], runner.obs),
      prev_reward=append(steps["prev_reward"], runner.prev_reward),
      reset=append(steps["reset"], runner.reset),
      action=steps["action"], behaviour_logits=steps["behaviour_logits"],
      reward=steps["reward"], terminated=steps["terminated"],
      truncated=steps["truncated"],
      truncation_value=steps["truncation_value"],
      valid=jnp.ones_like(steps["terminated"]))
  stats = EpisodeStats(*(jnp.sum(leaf) for leaf in steps["stats"]))
  return runner, trajectory, stats, core_inputs


def advance(actors, runner, trajectory, core_inputs, after=None):
  """The runner with S advanced over the unroll `act` recorded (its core
  inputs and the trajectory's resets), with the runner's (the actor's)
  parameters; the runner unchanged if it has no S (core_inputs None).

  after: any pytree of floats that the advance must wait for (the
    learner's new parameters). S(M) is computed from S(0) + 0·a, a the sum
    of one element of each leaf of `after`: the same S(M) (unless `after`
    is not finite, when S(M) is NaN; the run has diverged then anyway), but
    XLA must then run the learner, which reads S(0), before it writes S(M),
    and can write S(M) over S(0) in place. Without that order it copies
    S(0) every update (docs/ANAKIN.md, "The learner before the advance").
  """
  if core_inputs is None:
    return runner
  initial_state = trajectory.initial_state
  if after is not None:
    zero = zero_after(after)
    initial_state = initial_state._replace(sensitivities=jax.tree.map(
        lambda s: s + zero.astype(s.dtype), initial_state.sensitivities))
  sensitivities = actors.agent.advance_sensitivities(
      runner.params, initial_state, core_inputs, trajectory.reset[:-1])
  return runner._replace(core_state=runner.core_state._replace(
      sensitivities=sensitivities))


def zero_after(tree):
  """0.0, computed from one element of each leaf of `tree` (floats): added
  to an array, it makes XLA compute that array after `tree` (`advance`).
  NaN if `tree` is not finite."""
  return 0.0 * sum(leaf.ravel()[0] for leaf in jax.tree.leaves(tree))


def runner_shardings(mesh, runner):
  """Per-environment leaves split over "data"; the rest replicated."""
  per_env = lambda tree: jax.tree.map(
      lambda _: NamedSharding(mesh, P("data")), tree)
  replicated = lambda tree: jax.tree.map(
      lambda _: NamedSharding(mesh, P()), tree)
  replicated_fields = ("params", "opt_state", "key", "update")
  return RunnerState(**{
      name: (replicated if name in replicated_fields else per_env)(
          getattr(runner, name)) for name in RunnerState._fields})


def make_step(actors, learner_step, updates_per_call):
  """runner -> (runner, metrics): `updates_per_call` rollouts and updates.

  Metrics: the learner's, averaged over the call; the ended episodes'
  `EpisodeStats.metrics()` over the call; `update`, updates done so far.
  """

  def one_update(runner, _):
    runner, trajectory, stats, core_inputs = act(actors, runner)
    params, opt_state, metrics = learner_step(runner.params, runner.opt_state,
                                              trajectory)
    # After the learner: S(M) can then take S(0)'s place (`advance`).
    runner = advance(actors, runner, trajectory, core_inputs, after=params)
    runner = runner._replace(params=params, opt_state=opt_state,
                             update=runner.update + 1)
    return runner, (metrics, stats)

  def step(runner):
    runner, (metrics, stats) = jax.lax.scan(one_update, runner, None,
                                            updates_per_call)
    stats = EpisodeStats(*(leaf.sum() for leaf in stats))
    out = {k: v.mean() for k, v in metrics.items()}
    out.update(stats.metrics())
    out["update"] = runner.update
    return runner, out

  return step


def make_system(env, agent, optimizer, num_envs, unroll_length,
                updates_per_call=1, desync_steps=0, mesh=None,
                num_seeds=None) -> System:
  """The Anakin system: `agent` learning with `optimizer` on `env`.

  Args:
    env: a JAX environment (`rtrl_jax.rl.envs.make_env`).
    agent: `rtrl_jax.rl.agents.r2ac.make_agent(...)`; its gradient "bptt"
      makes every unroll start fresh episodes.
    optimizer: an optax transformation (`r2ac.make_optimizer`).
    num_envs, unroll_length: B environments, M steps per unroll.
    updates_per_call: updates per `step` (one jitted call, under `lax.scan`).
    desync_steps: W of the desynchronised start (0: synchronised).
    mesh: a 1-D "data" mesh (None: all local devices).
    num_seeds: None for one run; S for S independent runs in one program
      (every runner leaf and metric gets a leading seed axis).
  """
  mesh = mesh or make_mesh()
  if num_seeds is not None and (num_seeds < 1 or num_seeds % mesh.size):
    raise ValueError(
        f"num_seeds={num_seeds} must be a positive multiple of the number of "
        f"devices ({mesh.size})")
  if num_seeds is None and num_envs % mesh.size:
    raise ValueError(
        f"num_envs={num_envs} must be a multiple of the number of devices "
        f"({mesh.size})")
  episode_aligned = agent.gradient == "bptt"
  if episode_aligned and unroll_length < env.max_episode_steps:
    raise ValueError(
        f"unroll_length={unroll_length} is shorter than the environment's "
        f"max_episode_steps={env.max_episode_steps}: gradient='bptt' needs "
        "whole episodes in each unroll (raise unroll_length, or lower the "
        "env's time limit, e.g. env.kwargs.max_steps_in_episode for gymnax)")
  actors = Actors(env, agent, num_envs, unroll_length,
                  0 if episode_aligned else desync_steps, episode_aligned)
  learner_step = make_learner_step(agent, optimizer)
  synchronised = functools.partial(start, actors, optimizer)

  def init(key):
    runner = synchronised(key)
    return desynchronise(actors, runner) if actors.desync_steps else runner

  step = make_step(actors, learner_step, updates_per_call)
  # New names: `init` must keep calling the single-seed `synchronised`.
  system_init, system_synchronised, system_step = init, synchronised, step
  if num_seeds is not None:
    system_init, system_synchronised, system_step = (
        jax.vmap(init), jax.vmap(synchronised), jax.vmap(step))
    example = jax.eval_shape(system_init, seed_keys(range(num_seeds)))
    shardings = jax.tree.map(lambda _: NamedSharding(mesh, P("data")), example)
  else:
    shardings = runner_shardings(mesh, jax.eval_shape(init,
                                                      jax.random.PRNGKey(0)))
  return System(
      init=jax.jit(system_init, out_shardings=shardings),
      step=jax.jit(system_step, in_shardings=(shardings,),
                   out_shardings=(shardings, None), donate_argnums=0),
      init_synchronised=jax.jit(system_synchronised, out_shardings=shardings),
      rollout=lambda runner: rollout(actors, runner),
      learner_step=learner_step, agent=agent, env=env, mesh=mesh,
      num_envs=num_envs, unroll_length=unroll_length,
      updates_per_call=updates_per_call)
