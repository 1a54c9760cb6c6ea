r"""An actor's per-step bookkeeping, shared by Anakin, Sebulba and evaluation.

After each environment step an actor must (i) clip the reward it feeds back
to the core, (ii) zero that input where the next step starts an episode, and
(iii) keep each environment's running return and length, reporting those of
the episodes that just ended. `step_episodes` does all three for B
environments; it is written once for NumPy inputs (Sebulba's host-side
actor) and JAX inputs (Anakin's jitted actor, evaluation) alike.

    prev_reward(t+1) = 0                        if a new episode starts at t+1
                     = clip(r(t), −c, c)         otherwise
    R ← R + r(t),  L ← L + acted(t);  both reset to 0 where done(t)

`acted` is False on a step whose action the environment ignored (envpool's
auto-reset step after an episode's end): it adds no length and no reward.
"""

from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np

Array = Any   # np.ndarray or jax.Array


def _xp(*arrays):
  """NumPy if every input is host data, else jax.numpy."""
  return np if all(isinstance(a, (np.ndarray, np.generic, bool, int, float))
                   for a in arrays) else jnp


def clip_reward(reward: Array, reward_clip: float) -> Array:
  """clip(r, −c, c): the reward as the agent sees it (core input and loss)."""
  return reward.clip(-reward_clip, reward_clip)


class EpisodeStats(NamedTuple):
  """Episodes that ended in some window: their count and summed return and
  length. Sums (not means) so that windows, threads and devices add up."""
  episodes: Array
  return_sum: Array
  length_sum: Array

  def __add__(self, other):
    return EpisodeStats(*(a + b for a, b in zip(self, other)))

  @classmethod
  def zero(cls):
    return cls(0.0, 0.0, 0.0)

  def means(self):
    """(mean return, mean length) of the ended episodes; NaN if none ended."""
    xp = _xp(*self)
    count = xp.maximum(self.episodes, 1)
    none = self.episodes == 0
    return (xp.where(none, xp.nan, self.return_sum / count),
            xp.where(none, xp.nan, self.length_sum / count))

  def metrics(self):
    """The logged scalars: counts, sums and means."""
    return_mean, length_mean = self.means()
    return {"episodes": self.episodes,
            "episode_return_sum": self.return_sum,
            "episode_length_sum": self.length_sum,
            "episode_return_mean": return_mean,
            "episode_length_mean": length_mean}


class StepResult(NamedTuple):
  prev_reward: Array      # [B] the core's reward input at the next step
  episode_return: Array   # [B] running return, 0 where an episode ended
  episode_length: Array   # [B] running length, 0 where an episode ended
  stats: EpisodeStats     # the episodes this step ended (scalars)


def step_episodes(reward, done, next_reset, episode_return, episode_length,
                  reward_clip, acted=True) -> StepResult:
  """Bookkeeping of one environment step for B environments.

  Args:
    reward: [B] raw reward of the step.
    done: [B] the step ended an episode (terminated or truncated).
    next_reset: [B] the next step starts an episode (the core is reset
      there): `done` when the environment resets in the same step (JAX envs),
      `~acted` for envpool's ignored step after an end.
    episode_return, episode_length: [B] running values before the step.
    reward_clip: c of `clip_reward`.
    acted: [B] or True; False where the environment ignored the action.
  """
  xp = _xp(reward, done, next_reset, episode_return, episode_length)
  reward = xp.where(acted, reward, 0.0).astype(reward.dtype)
  episode_return = episode_return + reward
  episode_length = episode_length + xp.asarray(acted).astype(
      episode_length.dtype)
  stats = EpisodeStats(
      episodes=done.sum(),
      return_sum=xp.where(done, episode_return, 0.0).sum(),
      length_sum=xp.where(done, episode_length, 0).sum())
  prev_reward = xp.where(next_reset, 0.0,
                         clip_reward(reward, reward_clip)).astype(reward.dtype)
  return StepResult(
      prev_reward=prev_reward,
      episode_return=xp.where(done, 0.0, episode_return).astype(
          episode_return.dtype),
      episode_length=xp.where(done, 0, episode_length).astype(
          episode_length.dtype),
      stats=stats)
