"""JAX env adapters: auto-reset, termination vs truncation, final observation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rtrl_jax.rl.envs import make_env


def run_episode_steps(env, steps, action=0, seed=0):
  """Steps one environment with a fixed action; returns the EnvSteps."""
  def step(carry, key):
    state, _ = carry
    state, out = env.step(key, state, jnp.asarray(action))
    return (state, out.obs), out
  state, obs = env.reset(jax.random.PRNGKey(seed))
  _, outs = jax.lax.scan(step, (state, obs),
                         jax.random.split(jax.random.PRNGKey(seed + 1), steps))
  return obs, outs


def test_memory_chain_terminates_and_resets():
  """MemoryChain(memory_length=3): every 4th step terminates (never truncates)
  and the next observation is a fresh episode's first."""
  env = make_env("gymnax:MemoryChain-bsuite", memory_length=3)
  assert env.num_actions == 2 and env.obs_shape == (3,)
  _, outs = run_episode_steps(env, 12)
  np.testing.assert_array_equal(np.asarray(outs.terminated),
                                [False, False, False, True] * 3)
  assert not bool(outs.truncated.any())
  ends = np.flatnonzero(np.asarray(outs.terminated))
  assert set(np.asarray(outs.reward)[ends].tolist()) <= {-1.0, 1.0}


def test_time_limit_is_truncation_with_final_observation():
  """CartPole with a 5-step limit: the cut is truncated, not terminated, and
  final_obs is the observation reached, not the reset one."""
  env = make_env("gymnax:CartPole-v1", max_steps_in_episode=5)
  _, outs = run_episode_steps(env, 5, action=1)
  assert bool(outs.truncated[-1]) and not bool(outs.terminated[-1])
  assert not bool(outs.truncated[:-1].any())
  assert not np.allclose(outs.final_obs[-1], outs.obs[-1])   # obs was reset
  np.testing.assert_allclose(outs.final_obs[:-1], outs.obs[:-1])


def test_xminigrid_memory_time_limit_and_auto_reset():
  env = make_env("xminigrid:MiniGrid-MemoryS8", max_steps=4)
  assert env.num_actions == 6 and env.max_episode_steps == 4
  # Action 1 only turns (0 moves forward): the agent never reaches a goal.
  _, outs = run_episode_steps(env, 8, action=1)
  np.testing.assert_array_equal(np.asarray(outs.truncated),
                                [False, False, False, True] * 2)
  assert not bool(outs.terminated.any())
  assert float(outs.reward.sum()) == 0.0


def test_bad_names_and_parameters_are_rejected():
  with pytest.raises(ValueError, match=r"'<suite>:<id>'.*got 'CartPole-v1'"):
    make_env("CartPole-v1")
  with pytest.raises(ValueError, match=r"unknown env parameter\(s\) \['memory_lenght'\]"):
    make_env("gymnax:MemoryChain-bsuite", memory_lenght=3)


@pytest.mark.parametrize("name, overrides, message", [
    ("gymnax:MemoryChain-bsuite", {"memory_length": 0},
     "env.kwargs.memory_length=0: must be an int >= 1"),
    ("gymnax:MemoryChain-bsuite", {"max_steps_in_episode": -3},
     "env.kwargs.max_steps_in_episode=-3: must be an int >= 1"),
    ("gymnax:MemoryChain-bsuite", {"memory_length": 2.5},
     "env.kwargs.memory_length=2.5: must be an int >= 1"),
    ("gymnax:CartPole-v1", {"max_steps_in_episode": "abc"},
     "env.kwargs.max_steps_in_episode='abc': must be an int >= 1"),
    ("gymnax:CartPole-v1", {"gravity": "high"},
     "env.kwargs.gravity='high': must be a number"),
    ("xminigrid:MiniGrid-MemoryS8", {"max_steps": 0},
     "env.kwargs.max_steps=0: must be an int >= 1"),
])
def test_parameter_values_the_environment_would_take_silently(
    name, overrides, message):
  # MemoryChain trains with memory_length=-3 and ends in a NaN loss at 0.
  with pytest.raises(ValueError) as error:
    make_env(name, **overrides)
  assert str(error.value).startswith(message)


def test_good_parameter_values_are_applied():
  env = make_env("gymnax:CartPole-v1", gravity=10, max_steps_in_episode=7)
  assert env.max_episode_steps == 7
  assert make_env("xminigrid:MiniGrid-MemoryS8", max_steps=11).max_episode_steps == 11


def test_continuous_actions_are_refused_in_one_line():
  with pytest.raises(ValueError, match=r"^gymnax:Pendulum-v1: its action "
                     r"space is Box, not discrete") as error:
    make_env("gymnax:Pendulum-v1")
  assert "\n" not in str(error.value)


def test_another_envs_parameters_are_explained():
  # The default config's env.kwargs (MemoryChain's) on a new env.name.
  with pytest.raises(ValueError, match=r"may still hold another "
                     r"environment's parameters"):
    make_env("gymnax:CartPole-v1", memory_length=30)
