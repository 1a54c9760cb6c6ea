"""Anakin system: learns, and 1 vs 8 devices give the same parameters."""

import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import optax
import pytest

from experiments.configs import r2ac as r2ac_configs
from rtrl_jax import anakin

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("gradient,unroll_length", [("rtrl", 4), ("bptt", 5)])
def test_short_run_learns_a_memory_task(gradient, unroll_length):
  """MemoryChain (cue at step 0, reward ±1 at step 4; random policy: 0):
  the RTRL agent with 4-step unrolls, and full-episode BPTT with 5-step
  unrolls (one episode each), get well above chance."""
  config = r2ac_configs.tiny()
  config.env.kwargs.memory_length = 4
  config.env.kwargs.max_steps_in_episode = 5
  config.gradient = gradient
  config.num_envs, config.unroll_length = 32, unroll_length
  config.network.hidden_size = 32
  config.total_updates, config.updates_per_call = 800, 100
  train = anakin.make_train(config)
  runner = train.init(jax.random.PRNGKey(0))
  returns = []
  for _ in range(config.total_updates // config.updates_per_call):
    runner, metrics = train.update(runner)
    metrics = jax.device_get(metrics)
    returns.append(metrics["episode_return_sum"] / metrics["episodes"])
  assert int(runner.update) == config.total_updates
  assert abs(returns[0]) < 0.3, returns      # starts near chance
  assert returns[-1] > 0.6, returns


def bptt_config(**changes):
  config = r2ac_configs.tiny()   # MemoryChain(3): 4-step episodes
  config.env.kwargs.max_steps_in_episode = 4
  config.gradient, config.unroll_length = "bptt", 4
  for key, value in changes.items():
    setattr(config, key, value)
  return config


def test_full_episode_bptt_unrolls_are_whole_fresh_episodes():
  config = bptt_config()
  train = anakin.make_train(config)
  runner = train.init(jax.random.PRNGKey(0))
  rollout = jax.jit(train.rollout)
  for _ in range(3):
    runner, trajectory, stats = rollout(runner)
    assert trajectory.reset[0].all() and not trajectory.reset[1:-1].any()
    assert trajectory.terminated[-1].all()
    assert not trajectory.terminated[:-1].any()
    assert int(stats["episodes"]) == config.num_envs
    fresh = train.agent.initial_core_state(runner.params, config.num_envs)
    for got, want in zip(jax.tree.leaves(trajectory.initial_state),
                         jax.tree.leaves(fresh)):
      np.testing.assert_array_equal(got, want)


def test_full_episode_bptt_gradient_equals_rtrl_over_the_episode():
  """From a fresh episode and over all of it, the RTRL learner and backprop
  give the same gradient for every parameter: with zero shipped
  sensitivities RTRL has no past gradient to inject, and inside an unroll
  both differentiate the same forward pass. So `bptt` differs from `rtrl`
  only across unroll boundaries, which this layout never crosses. (The RTRL
  past-gradient path itself is checked against BPTT in r2ac_test.py's
  test_rtrl_over_two_unrolls_equals_bptt_over_their_concatenation.)"""
  config = bptt_config()
  train = anakin.make_train(config)
  runner = train.init(jax.random.PRNGKey(1))
  runner, trajectory, _ = jax.jit(train.rollout)(runner)
  rtrl_config = bptt_config(gradient="rtrl")
  rtrl_agent = anakin.make_train(rtrl_config).agent
  rtrl_trajectory = trajectory._replace(
      initial_state=rtrl_agent.initial_core_state(runner.params,
                                                  config.num_envs))
  grad = lambda agent, traj: jax.grad(
      lambda p: agent.loss(p, traj)[0])(runner.params)
  bptt_grads = grad(train.agent, trajectory)
  rtrl_grads = grad(rtrl_agent, rtrl_trajectory)
  for b, r in zip(jax.tree.leaves(bptt_grads), jax.tree.leaves(rtrl_grads)):
    np.testing.assert_allclose(b, r, rtol=1e-4, atol=1e-6)
  # Not vacuous: the recurrent parameters do get a gradient.
  assert optax.tree.norm(bptt_grads["core"]["recurrent"]) > 1e-6


def test_full_episode_bptt_needs_whole_episodes_in_an_unroll():
  with pytest.raises(ValueError, match=r"unroll_length=3 is shorter than the "
                     r"environment's max_episode_steps=4"):
    anakin.make_train(bptt_config(unroll_length=3))


def test_more_devices_than_there_are_is_an_error():
  count = len(jax.devices())
  with pytest.raises(ValueError, match=rf"^num_devices={count + 1}, but this "
                     rf"process sees {count} device\(s\)"):
    anakin.make_mesh(count + 1)
  assert anakin.make_mesh(count).size == count


DEVICE_SCRIPT = textwrap.dedent("""
    import re
    import jax, numpy as np
    from experiments.configs import r2ac
    from rtrl_jax import anakin
    assert jax.device_count() == 8, jax.devices()
    config = r2ac.tiny()
    config.updates_per_call = 5
    # 5-step episodes across 4-step unrolls: most unrolls start mid-episode,
    # so the shipped sensitivities' gradient (summed over each device's own
    # examples) enters the update.
    config.env.kwargs.memory_length = 4
    params = {}
    for devices in (1, 8):
      train = anakin.make_train(config, mesh=anakin.make_mesh(devices))
      runner = train.init(jax.random.PRNGKey(3))
      for _ in range(2):
        runner, _ = train.update(runner)
      assert len(runner.obs.sharding.device_set) == devices
      params[devices] = jax.device_get(runner.params)
    # Data parallelism moves only the gradient sum between devices: no
    # device gathers another's observations or sensitivities.
    hlo = jax.jit(train.update).lower(runner).compile().as_text()
    print("GATHERS", len(re.findall(r" all-(?:gather|to-all)[a-z-]*\\(", hlo)),
          "REDUCES", len(re.findall(r" all-reduce[a-z-]*\\(", hlo)))
    flat = [jax.tree.leaves(params[d]) for d in (1, 8)]
    worst = max(float(np.max(np.abs(a - b)) / (np.max(np.abs(a)) + 1e-12))
                for a, b in zip(*flat))
    moved = max(float(np.max(np.abs(a - b))) for a, b in zip(
        flat[0], jax.tree.leaves(jax.device_get(train.init(
            jax.random.PRNGKey(3)).params))))
    print("WORST", worst, "MOVED", moved)
""")


def test_one_and_eight_devices_give_the_same_parameters():
  flags = (os.environ.get("XLA_FLAGS", "")
           + " --xla_force_host_platform_device_count=8")
  env = dict(os.environ, XLA_FLAGS=flags, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "-c", DEVICE_SCRIPT], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  line = [l for l in result.stdout.splitlines() if l.startswith("WORST")][-1]
  _, worst, _, moved = line.split()
  assert float(moved) > 1e-4          # training really changed the params
  assert float(worst) < 1e-4, line    # and 8 devices agree with 1
  line = [l for l in result.stdout.splitlines() if l.startswith("GATHERS")][-1]
  _, gathers, _, reduces = line.split()
  assert int(gathers) == 0 and int(reduces) > 0, line


def test_num_envs_must_divide_over_devices():
  config = r2ac_configs.tiny()
  config.num_envs = 3

  class TwoDeviceMesh:   # only its size is read before the check
    size = 2

  with pytest.raises(ValueError, match=r"num_envs=3 must be a multiple of the "
                     r"number of devices \(2\)"):
    anakin.make_train(config, mesh=TwoDeviceMesh())
