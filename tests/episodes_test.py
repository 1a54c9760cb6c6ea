"""rtrl_jax.rl.episodes: one actor bookkeeping for NumPy and JAX inputs."""

import jax.numpy as jnp
import numpy as np
import pytest

from rtrl_jax.rl import episodes


def _example():
  reward = np.array([3.0, -0.5, 2.0, 7.0], np.float32)
  done = np.array([True, False, False, True])
  acted = np.array([True, True, False, True])
  episode_return = np.array([1.0, 1.0, 4.0, 0.0])
  episode_length = np.array([5, 2, 9, 0], np.int64)
  return reward, done, ~acted, episode_return, episode_length, acted


@pytest.mark.parametrize("to_jax", [False, True])
def test_a_step_by_hand(to_jax):
  args = _example()
  if to_jax:
    args = [jnp.asarray(a) for a in args]
  reward, done, next_reset, ret, length, acted = args
  out = episodes.step_episodes(reward, done, next_reset, ret, length,
                               reward_clip=1.0, acted=acted)
  # env 2 ignored its action: no reward, no length, core input 0 (reset next)
  np.testing.assert_allclose(out.prev_reward, [1.0, -0.5, 0.0, 1.0])
  np.testing.assert_allclose(out.episode_return, [0.0, 0.5, 4.0, 0.0])
  np.testing.assert_array_equal(out.episode_length, [0, 3, 9, 0])
  assert float(out.stats.episodes) == 2
  assert float(out.stats.return_sum) == 4.0 + 7.0
  assert float(out.stats.length_sum) == 6 + 1
  assert isinstance(out.prev_reward, np.ndarray) != to_jax


def test_stats_add_and_means():
  stats = (episodes.EpisodeStats(2.0, 10.0, 8.0)
           + episodes.EpisodeStats(1.0, 2.0, 4.0))
  assert stats.means() == (4.0, 4.0)
  assert all(np.isnan(episodes.EpisodeStats.zero().means()))
  assert episodes.EpisodeStats.zero().metrics()["episodes"] == 0.0


def test_clip_reward():
  np.testing.assert_array_equal(
      episodes.clip_reward(np.array([-3.0, 0.25, 3.0]), 1.0), [-1.0, 0.25, 1.0])
