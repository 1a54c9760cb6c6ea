"""rtrl_jax/rl/evaluation.py against scripted fake environments and agents.

JAX environments (`make_episode_returns`): a fake `envs.Env` with known
episodes and an agent that logs every input it is fed. Envpool
(`evaluate_envpool_policy`): a fake with the envpool calls the evaluation uses
(async_reset, send, recv, close) with known episodes, so every counted return
and length is known; a scripted agent reveals through its greedy action what
it was fed.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rtrl_jax.rl import envpool_envs
from rtrl_jax.rl import from_config
from rtrl_jax.rl import envs
from rtrl_jax.rl import evaluation
from rtrl_jax.rl.agents import r2ac

LIMIT = 6          # the time limit in agent steps
CLIP = 0.5         # reward clip of the agent's previous-reward input


class FakeEnvpool:
  """Env i's episodes terminate after i + 2 steps with reward i + 1 per step;
  the last env never terminates and is cut by the time limit. recv returns
  the environments in reverse env_id order (envpool does not promise order);
  after an episode ends the env auto-resets on its next step (reward 0), as
  envpool does, and goes on paying rewards the evaluation must not count."""

  def __init__(self, num_envs, seed):
    self.n, self.seed = num_envs, seed
    self.elapsed = np.zeros(num_envs, np.int64)
    self.ended = np.zeros(num_envs, bool)
    self.actions = []       # what the agent chose, per step
    self.closed = False

  def _result(self, reward, terminated, truncated):
    order = np.arange(self.n)[::-1]
    obs = np.stack([self.elapsed, np.full(self.n, self.seed),
                    np.arange(self.n)], 1)
    info = {"env_id": order.astype(np.int32),
            "elapsed_step": self.elapsed[order]}
    return (obs[order].astype(np.uint8), reward[order], terminated[order],
            truncated[order], info)

  def async_reset(self):
    self.elapsed[:] = 0

  def recv(self):
    if not self.actions:
      zeros = np.zeros(self.n, bool)
      return self._result(np.zeros(self.n, np.float32), zeros, zeros)
    return self._last

  def send(self, action, env_id):
    np.testing.assert_array_equal(env_id, np.arange(self.n))
    self.actions.append(np.asarray(action).copy())
    reward = np.arange(1, self.n + 1, dtype=np.float32)
    reward[self.ended] = 0.0             # envpool's reset step
    self.elapsed[self.ended] = 0
    self.elapsed[~self.ended] += 1
    lengths = np.arange(2, self.n + 2)
    terminated = (self.elapsed == lengths) & (np.arange(self.n) < self.n - 1)
    truncated = (self.elapsed >= LIMIT) & ~terminated
    self.ended = terminated | truncated
    self._last = self._result(reward, terminated, truncated)

  def close(self):
    self.closed = True


class Out(NamedTuple):
  action: jnp.ndarray
  logits: jnp.ndarray


class ScriptedAgent:
  """The greedy action encodes the inputs (`decode` reads them back): a flag
  (3 on a reset step, 1 when the previous reward input equals the clip --
  rewards here are >= 1 -- else 0), the observed elapsed step and env_id, and
  the core state: a step counter that starts at 0 and counts every act call,
  so it reads t at step t only if the state is carried. Sampled action 2."""
  loss_params = r2ac.LossParams(reward_clip=CLIP)

  def initial_core_state(self, params, num_envs, sensitivities=True):
    del params, sensitivities
    return jnp.zeros((num_envs,), jnp.int32)

  def act(self, params, core_state, obs, prev_reward, reset, key):
    del params, key
    flag = jnp.where(reset, 3, jnp.where(prev_reward == CLIP, 1, 0))
    obs = obs.astype(jnp.int32)
    choice = flag + 4 * (obs[:, 0] + 8 * (core_state + 8 * obs[:, 2]))
    logits = 10.0 * jax.nn.one_hot(choice, 4 * 8 * 8 * 4)
    return core_state + 1, Out(jnp.full_like(choice, 2), logits)


def decode(actions):
  """ScriptedAgent's greedy actions -> (flag, observed elapsed step, core
  state step counter, observed env_id)."""
  return actions % 4, actions // 4 % 8, actions // 32 % 8, actions // 256


def make_fake_suite(envs):
  def make(num_envs, seed):
    envs.append(FakeEnvpool(num_envs, seed))
    return envs[-1]
  return envpool_envs.Suite("Fake-v0", make, lambda raw: raw, (3,), 4, LIMIT)


@pytest.mark.parametrize("greedy", [True, False])
def test_returns_and_lengths_count_each_first_episode_only(greedy):
  envs = []
  summary = evaluation.evaluate_envpool_policy(
      ScriptedAgent(), make_fake_suite(envs), params=None, seeds=[3, 7],
      episodes_per_seed=4, greedy=greedy)
  # Envs 0-2 terminate after 2, 3, 4 steps; env 3 is cut at the limit (6).
  lengths = np.array([2, 3, 4, LIMIT])
  np.testing.assert_array_equal(summary.lengths, [lengths, lengths])
  np.testing.assert_array_equal(summary.returns,
                                [lengths * np.arange(1, 5)] * 2)
  assert summary.greedy is greedy
  assert [env.seed for env in envs] == [3, 7]
  assert all(env.closed for env in envs)
  for env in envs:
    actions = np.stack(env.actions)       # [steps, envs]
    assert len(actions) == LIMIT          # stops when the last episode ends
    if greedy:
      flag, elapsed, counter, env_id = decode(actions)
      # Step 1: the reset input; then the clipped previous reward.
      np.testing.assert_array_equal(flag[0], [3, 3, 3, 3])
      for i, length in enumerate(lengths):
        np.testing.assert_array_equal(flag[1:length, i], 1)
        # Env i's own current observation (envpool returned them reversed).
        np.testing.assert_array_equal(env_id[:, i], i)
        np.testing.assert_array_equal(elapsed[:length, i], np.arange(length))
      # The core state is carried from step to step, in every env.
      np.testing.assert_array_equal(
          counter, np.broadcast_to(np.arange(LIMIT)[:, None], counter.shape))
    else:
      np.testing.assert_array_equal(actions, 2)


def test_summary_statistics():
  summary = evaluation.evaluate_envpool_policy(
      ScriptedAgent(), make_fake_suite([]), params=None, seeds=[0, 1],
      episodes_per_seed=4, greedy=True)
  returns = np.array([2, 6, 12, 24], float)
  assert summary.mean == pytest.approx(returns.mean())
  assert summary.std_over_seeds == 0.0
  assert summary.std_over_episodes == pytest.approx(returns.std())


# make_episode_returns: JAX environments (envs.Env).

JAX_CLIP = 2.5     # clips the previous-reward input of kinds 2 and 3 only
KINDS = 4
GREEDY, SAMPLED = 1, 2


class FakeEnvState(NamedTuple):
  kind: jax.Array
  elapsed: jax.Array
  last_action: jax.Array


def _fake_obs(state):
  return jnp.stack([state.kind, state.elapsed,
                    state.last_action]).astype(jnp.float32)


def _fake_reset(key):
  state = FakeEnvState(jax.random.randint(key, (), 0, KINDS),
                       jnp.zeros((), jnp.int32), jnp.full((), -1, jnp.int32))
  return state, _fake_obs(state)


def _fake_step(key, state, action):
  del key
  kind = state.kind
  stepped = FakeEnvState(kind, state.elapsed + 1, action.astype(jnp.int32))
  terminated = (stepped.elapsed == kind + 2) & (kind < KINDS - 1)
  truncated = (stepped.elapsed >= LIMIT) & ~terminated
  done = terminated | truncated
  fresh = FakeEnvState(kind, jnp.zeros((), jnp.int32),
                       jnp.full((), -1, jnp.int32))
  state = jax.tree.map(lambda a, b: jnp.where(done, a, b), fresh, stepped)
  return state, envs.EnvStep(_fake_obs(state),
                             (kind + 1).astype(jnp.float32), terminated,
                             truncated, _fake_obs(stepped))


# An env of kind k (drawn from its reset key) terminates after k + 2 steps
# with reward k + 1 per step; kind 3 never terminates and is cut by the time
# limit (LIMIT steps). It auto-resets (same kind) and goes on paying rewards
# the evaluation must not count. obs = [kind, elapsed step, last action (-1
# on an episode's first step)].
FAKE_ENV = envs.Env(_fake_reset, _fake_step, num_actions=4, obs_shape=(3,),
                    obs_dtype=jnp.float32, max_episode_steps=LIMIT)


class RecordingAgent:
  """Logs every input of every act call (in call order); greedy action
  GREEDY, sampled action SAMPLED; its core state counts act calls."""
  loss_params = r2ac.LossParams(reward_clip=JAX_CLIP)

  def __init__(self):
    self.inputs = []
    self.sensitivities = []

  def initial_core_state(self, params, batch_size, sensitivities=True):
    del params
    self.sensitivities.append(sensitivities)
    return jnp.zeros((batch_size,), jnp.int32)

  def _record(self, obs, prev_reward, reset, core_state):
    self.inputs.append(tuple(np.asarray(x) for x in
                             (obs, prev_reward, reset, core_state)))

  def act(self, params, core_state, obs, prev_reward, reset, key):
    del params, key
    jax.debug.callback(self._record, obs, prev_reward, reset, core_state,
                       ordered=True)
    logits = 10.0 * jax.nn.one_hot(jnp.full(reset.shape, GREEDY), 4)
    return core_state + 1, Out(jnp.full(reset.shape, SAMPLED, jnp.int32),
                               logits)


@pytest.mark.parametrize("greedy", [True, False])
def test_make_episode_returns_counts_each_first_episode_only(greedy):
  agent = RecordingAgent()
  run = evaluation.make_episode_returns(agent, FAKE_ENV, episodes=12,
                                        greedy=greedy)
  returns, lengths = jax.device_get(run(None, jax.random.PRNGKey(0)))
  jax.effects_barrier()
  assert agent.sensitivities == [False]
  obs, prev_reward, reset, core_state = (np.stack(x)
                                         for x in zip(*agent.inputs))
  # Each env's kind, as its first observation shows it.
  kind = obs[0, :, 0].astype(int)
  assert set(kind) == set(range(KINDS)), f"seed gives kinds {kind}"
  expected_lengths = np.where(kind < KINDS - 1, kind + 2, LIMIT)
  np.testing.assert_array_equal(lengths, expected_lengths)
  np.testing.assert_array_equal(returns, expected_lengths * (kind + 1))
  # The loop stops when the last episode ends.
  assert len(agent.inputs) == LIMIT
  # The core state is carried (the counter reads t at step t).
  np.testing.assert_array_equal(
      core_state, np.broadcast_to(np.arange(LIMIT)[:, None], (LIMIT, 12)))
  action = GREEDY if greedy else SAMPLED
  for i, length in enumerate(expected_lengths):
    t = np.arange(length)
    # Env i's current observation; its last action is the one asked for.
    np.testing.assert_array_equal(obs[:length, i, 0], kind[i])
    np.testing.assert_array_equal(obs[:length, i, 1], t)
    np.testing.assert_array_equal(obs[:length, i, 2],
                                  np.where(t == 0, -1, action))
    # reset only on the episode's first step.
    np.testing.assert_array_equal(reset[:length, i], t == 0)
    # The previous step's reward, clipped (0 on the first step).
    np.testing.assert_array_equal(
        prev_reward[:length, i],
        np.where(t == 0, 0.0, min(kind[i] + 1, JAX_CLIP)))


def test_evaluate_policy_stacks_seeds():
  summary = evaluation.evaluate_policy(RecordingAgent(), FAKE_ENV, None,
                                       seeds=[0, 1], episodes_per_seed=12,
                                       greedy=True)
  assert summary.greedy is True
  assert summary.returns.shape == summary.lengths.shape == (2, 12)
  kind = np.where(summary.lengths == LIMIT, KINDS - 1, summary.lengths - 2)
  np.testing.assert_array_equal(summary.returns, summary.lengths * (kind + 1))
  # Each seed its own reset keys: different kinds per episode.
  assert not np.array_equal(summary.lengths[0], summary.lengths[1])


def test_evaluate_seeds_equals_evaluate_policy_per_parameter_set():
  """evaluate_seeds (one vmapped program over S parameter sets and keys)
  gives each set what evaluate_policy gives it alone."""
  # pylint: disable=g-import-not-at-top
  from experiments.configs import r2ac as r2ac_configs
  from rtrl_jax.rl import anakin
  # pylint: enable=g-import-not-at-top
  config = r2ac_configs.tiny()
  seeds = [0, 4]
  train = from_config.anakin_system(config, num_seeds=len(seeds))
  runner = train.init(anakin.seed_keys(seeds))
  runner, _ = train.step(runner)
  for greedy in (False, True):
    summary = evaluation.evaluate_seeds(
        train.agent, train.env, runner.params, anakin.seed_keys([7, 9]), 6,
        greedy=greedy)
    assert summary.returns.shape == (2, 6)
    for index, key_seed in enumerate([7, 9]):
      params = jax.tree.map(lambda leaf, i=index: leaf[i], runner.params)
      alone = evaluation.evaluate_policy(
          train.agent, train.env, params, seeds=[key_seed],
          episodes_per_seed=6, greedy=greedy)
      np.testing.assert_allclose(summary.returns[index], alone.returns[0])
      np.testing.assert_array_equal(summary.lengths[index], alone.lengths[0])
