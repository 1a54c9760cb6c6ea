"""rtrl_jax/evaluation.py's envpool evaluation against a scripted fake envpool.

The fake has the envpool calls the evaluation uses (async_reset, send, recv,
close) with known episodes, so every counted return and length is known; a
scripted agent reveals through its greedy action what it was fed.
"""

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
import pytest

from rtrl_jax import envpool_envs
from rtrl_jax import evaluation

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
    obs = np.stack([self.elapsed, np.full(self.n, self.seed)], 1)
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
  """Greedy action 3 on a reset step, 1 when the previous reward input equals
  the clip (rewards here are >= 1), else 0; sampled action 2."""

  def initial_core_state(self, params, num_envs, sensitivities=True):
    del params, sensitivities
    return jnp.zeros((num_envs,))

  def act(self, params, core_state, obs, prev_reward, reset, key):
    del params, obs, key
    choice = jnp.where(reset, 3, jnp.where(prev_reward == CLIP, 1, 0))
    logits = 10.0 * jnp.eye(4)[choice]
    return core_state + 1, Out(jnp.full_like(choice, 2), logits)


def make_fake_suite(envs):
  def make(num_envs, seed):
    envs.append(FakeEnvpool(num_envs, seed))
    return envs[-1]
  return envpool_envs.Suite("Fake-v0", make, lambda raw: raw, (2,), 4, LIMIT)


@pytest.mark.parametrize("greedy", [True, False])
def test_returns_and_lengths_count_each_first_episode_only(greedy):
  envs = []
  summary = evaluation.evaluate_envpool_policy(
      ScriptedAgent(), make_fake_suite(envs), params=None, seeds=[3, 7],
      episodes_per_seed=4, greedy=greedy, reward_clip=CLIP)
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
      # Step 1: the reset input; then the clipped previous reward.
      np.testing.assert_array_equal(actions[0], [3, 3, 3, 3])
      for i, length in enumerate(lengths):
        np.testing.assert_array_equal(actions[1:length, i], 1)
    else:
      np.testing.assert_array_equal(actions, 2)


def test_summary_statistics():
  summary = evaluation.evaluate_envpool_policy(
      ScriptedAgent(), make_fake_suite([]), params=None, seeds=[0, 1],
      episodes_per_seed=4, greedy=True, reward_clip=CLIP)
  returns = np.array([2, 6, 12, 24], float)
  assert summary.mean == pytest.approx(returns.mean())
  assert summary.std_over_seeds == 0.0
  assert summary.std_over_episodes == pytest.approx(returns.std())
