"""Policy evaluation: episode returns of an agent's policy over several seeds.

    evaluate = make_episode_returns(agent, env, episodes=32, greedy=True)
    returns = evaluate(params, jax.random.PRNGKey(seed))   # [episodes]
    summary = evaluate_policy(agent, env, params, seeds=range(5),
                              episodes_per_seed=32, greedy=True)

Each seed runs `episodes` environments in parallel (`vmap`), each from its
own reset until its first episode ends (terminated or truncated), with the
agent's `act` carrying the core state step by step, as the actor does in
training (without RTRL sensitivities: only gradients need them, and they
leave the policy unchanged). Greedy takes the
argmax of the policy logits; sampled draws from them.

`evaluate_envpool_policy` does the same for envpool environments (Sebulba
runs): one envpool instance of `episodes_per_seed` environments per seed,
stepped from the host with the Sebulba actor's inputs and episode flags.

`restore_run(workdir)` loads a run of experiments/r2ac_anakin.py (its
config.json and a checkpoint of the whole RunnerState);
`restore_sebulba_run(workdir)` one of experiments/r2ac_sebulba.py (a
checkpoint of the LearnerState).
"""

import json
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from rtrl_jax.rl import from_config
from rtrl_jax.rl.episodes import clip_reward
from rtrl_jax.experiment.checkpoint import Checkpointer


class EvaluationSummary(NamedTuple):
  greedy: bool
  returns: np.ndarray        # [seeds, episodes_per_seed] undiscounted returns
  lengths: np.ndarray        # [seeds, episodes_per_seed]

  @property
  def mean(self):
    return float(self.returns.mean())

  @property
  def std_over_seeds(self):
    """Standard deviation of the per-seed mean returns."""
    return float(self.returns.mean(axis=1).std())

  @property
  def std_over_episodes(self):
    return float(self.returns.std())


def make_episode_returns(agent, env, episodes, greedy):
  """A jitted (params, key) -> (returns [episodes], lengths [episodes]).

  Args:
    agent: an `rtrl_jax.rl.agents.r2ac.Agent` (uses `initial_core_state` and
      `act`).
    env: an `rtrl_jax.rl.envs.Env`.
    episodes: episodes run in parallel, one per environment.
    greedy: argmax actions if True, else sampled from the policy.

  The previous reward fed to the core is clipped as in training
  (`episodes.clip_reward` with the agent's `loss_params.reward_clip`).
  """
  max_steps = env.max_episode_steps

  def run(params, key):
    key, reset_key = jax.random.split(key)
    env_state, obs = jax.vmap(env.reset)(jax.random.split(reset_key, episodes))
    zeros = jnp.zeros((episodes,))
    carry = dict(
        env_state=env_state, obs=obs, prev_reward=zeros,
        reset=jnp.ones((episodes,), bool),
        core_state=agent.initial_core_state(params, episodes,
                                            sensitivities=False),
        returns=zeros, lengths=jnp.zeros((episodes,), jnp.int32),
        running=jnp.ones((episodes,), bool), key=key, t=jnp.zeros((), jnp.int32))

    def not_finished(carry):
      return jnp.logical_and(carry["t"] < max_steps, jnp.any(carry["running"]))

    def step(carry):
      key, act_key, env_key = jax.random.split(carry["key"], 3)
      core_state, out = agent.act(params, carry["core_state"], carry["obs"],
                                  carry["prev_reward"], carry["reset"],
                                  act_key)
      action = (jnp.argmax(out.logits, -1).astype(jnp.int32) if greedy
                else out.action)
      env_state, stepped = jax.vmap(env.step)(
          jax.random.split(env_key, episodes), carry["env_state"], action)
      running = carry["running"]
      done = jnp.logical_or(stepped.terminated, stepped.truncated)
      return dict(
          env_state=env_state, obs=stepped.obs,
          prev_reward=clip_reward(stepped.reward,
                                  agent.loss_params.reward_clip),
          reset=jnp.zeros_like(done), core_state=core_state,
          returns=carry["returns"] + jnp.where(running, stepped.reward, 0.0),
          lengths=carry["lengths"] + running.astype(jnp.int32),
          running=jnp.logical_and(running, jnp.logical_not(done)),
          key=key, t=carry["t"] + 1)

    carry = jax.lax.while_loop(not_finished, step, carry)
    return carry["returns"], carry["lengths"]

  return jax.jit(run)


def evaluate_policy(agent, env, params, *, seeds, episodes_per_seed, greedy):
  """Runs `episodes_per_seed` episodes for each seed: an EvaluationSummary."""
  run = make_episode_returns(agent, env, episodes_per_seed, greedy)
  returns, lengths = [], []
  for seed in seeds:
    seed_returns, seed_lengths = jax.device_get(
        run(params, jax.random.PRNGKey(seed)))
    returns.append(seed_returns)
    lengths.append(seed_lengths)
  return EvaluationSummary(greedy, np.stack(returns), np.stack(lengths))


def evaluate_seeds(agent, env, params, keys, episodes, *, greedy):
  """An EvaluationSummary of S parameter sets at once (leaves [S, ...]).

  Parameter set s runs `episodes` episodes on key `keys[s]` (one jitted,
  `vmap`ped program): the evaluation of an Anakin system of S seeds.
  """
  run = make_episode_returns(agent, env, episodes, greedy)
  returns, lengths = jax.device_get(jax.vmap(run)(params, keys))
  return EvaluationSummary(greedy, np.asarray(returns), np.asarray(lengths))


def evaluate_envpool_policy(agent, suite, params, *, seeds, episodes_per_seed,
                            greedy):
  """An EvaluationSummary of envpool episodes (`suite`: envpool_envs.Suite).

  For each seed, `episodes_per_seed` environments of one envpool instance
  (seeded with the seed) run from their reset until their first episode
  ends. The agent gets what the Sebulba actor gives it: the observation, the
  previous reward clipped as in training, and reset = True on
  the first step. An episode ends when envpool flags it terminated or
  truncated (the time limit comes from `elapsed_step`,
  `sebulba.episode_flags`). Rewards after that are not counted; envpool
  auto-resets those environments while the others finish. With Atari's
  episodic life, an episode is a life, as in the training logs.
  """
  # pylint: disable=g-import-not-at-top
  from rtrl_jax.rl.sebulba import recv_step
  # pylint: enable=g-import-not-at-top
  n = episodes_per_seed

  @jax.jit
  def act(params, core_state, obs, prev_reward, reset, key):
    core_state, out = agent.act(params, core_state, obs, prev_reward, reset,
                                key)
    action = jnp.argmax(out.logits, -1).astype(jnp.int32) if greedy else (
        out.action.astype(jnp.int32))
    return core_state, action

  returns, lengths = [], []
  for seed in seeds:
    env = suite.make(n, seed)
    try:
      env_ids = np.arange(n, dtype=np.int32)
      env.async_reset()
      _, obs, *_ = recv_step(env, suite)
      prev_reward, reset = np.zeros((n,), np.float32), np.ones((n,), bool)
      core_state = agent.initial_core_state(params, n, sensitivities=False)
      key = jax.random.PRNGKey(seed)
      episode_return, length = np.zeros((n,)), np.zeros((n,), np.int64)
      running = np.ones((n,), bool)
      # Every episode ends by the time limit: at most that many steps.
      for _ in range(suite.max_episode_steps):
        key, act_key = jax.random.split(key)
        core_state, action = act(params, core_state, obs, prev_reward, reset,
                                 act_key)
        env.send(np.asarray(action), env_ids)
        _, obs, reward, done, _, _ = recv_step(env, suite)
        episode_return += np.where(running, reward, 0.0)
        length += running
        running &= ~done
        if not running.any():
          break
        prev_reward = clip_reward(reward, agent.loss_params.reward_clip)
        reset = done
    finally:
      env.close()
    if running.any():
      raise RuntimeError(
          f"{suite.name}: {int(running.sum())} episode(s) still running after "
          f"the time limit of {suite.max_episode_steps} steps")
    returns.append(episode_return)
    lengths.append(length)
  return EvaluationSummary(greedy, np.stack(returns), np.stack(lengths))


def format_table(summaries):
  """A plain-text table, one row per EvaluationSummary."""
  header = (f"{'actions':<8} {'seeds':>5} {'episodes/seed':>13} "
            f"{'return mean ± std over seeds':>29} {'std over episodes':>17} "
            f"{'mean length':>11}")
  rows = [header, "-" * len(header)]
  for summary in summaries:
    seeds, episodes = summary.returns.shape
    rows.append(
        f"{'greedy' if summary.greedy else 'sampled':<8} {seeds:>5} "
        f"{episodes:>13} "
        f"{f'{summary.mean:.3f} ± {summary.std_over_seeds:.3f}':>29} "
        f"{summary.std_over_episodes:>17.3f} {summary.lengths.mean():>11.1f}")
  return "\n".join(rows)


def load_run_config(workdir):
  """The ConfigDict in the run folder's config.json."""
  config_path = os.path.join(workdir, "config.json")
  if not os.path.exists(config_path):
    raise FileNotFoundError(f"--workdir: no config.json in {workdir}")
  with open(config_path) as f:
    return ml_collections.ConfigDict(json.load(f))


def _open_checkpoints(workdir):
  """The run's Checkpointer; FileNotFoundError (and no folder made, which
  orbax would do) if the run has none."""
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"no checkpoint in {directory}")
  return Checkpointer(directory)


def is_sebulba_run(config):
  return "sebulba" in config


def restore_run(workdir, call=None):
  """(config, anakin.System, RunnerState, metadata) of checkpoint `call`
  (latest).

  `workdir` is a run folder of experiments/r2ac_anakin.py.
  """
  config = load_run_config(workdir)
  if is_sebulba_run(config):
    raise ValueError(
        f"--workdir: {workdir} is a Sebulba run (envpool environments); "
        "restore it with restore_sebulba_run")
  system = from_config.anakin_system(config)
  checkpointer = _open_checkpoints(workdir)
  try:
    runner, metadata = checkpointer.restore(
        system.init_synchronised(jax.random.PRNGKey(config.seed)), call)
  finally:
    checkpointer.close()
  return config, system, runner, metadata


def restore_sebulba_run(workdir, update=None):
  """(config, agent, suite, LearnerState, metadata) of checkpoint `update`
  (latest) of a run folder of experiments/r2ac_sebulba.py.

  The state is restored on the default device whatever mesh trained it.
  """
  # pylint: disable=g-import-not-at-top
  from rtrl_jax.rl import envpool_envs
  from rtrl_jax.rl import sebulba
  # pylint: enable=g-import-not-at-top
  config = load_run_config(workdir)
  if not is_sebulba_run(config):
    raise ValueError(
        f"--workdir: {workdir} is an Anakin run; restore it with restore_run")
  suite = envpool_envs.make_suite(config.env.suite, config.env.name,
                                  dict(config.env.kwargs),
                                  num_threads=config.sebulba.envpool_threads)
  agent, optimizer = sebulba.make_agent_and_optimizer(config, suite)
  template = sebulba.init_learner_state(agent, optimizer,
                                        jax.random.PRNGKey(config.seed))
  checkpointer = _open_checkpoints(workdir)
  try:
    state, metadata = checkpointer.restore(template, update)
  finally:
    checkpointer.close()
  return config, agent, suite, state, metadata
