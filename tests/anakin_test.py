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
from rtrl_jax.rl import from_config
from rtrl_jax.rl import anakin

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
  # Short calls: at the CPU preset's rate the first 100 updates already
  # learn it, so the first call must be shorter to see chance.
  config.total_updates, config.updates_per_call = 400, 10
  train = from_config.anakin_system(config)
  runner = train.init(jax.random.PRNGKey(0))
  returns = []
  for _ in range(config.total_updates // config.updates_per_call):
    runner, metrics = train.step(runner)
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
  train = from_config.anakin_system(config)
  runner = train.init(jax.random.PRNGKey(0))
  rollout = jax.jit(train.rollout)
  for _ in range(3):
    runner, trajectory, stats = rollout(runner)
    assert trajectory.reset[0].all() and not trajectory.reset[1:-1].any()
    assert trajectory.terminated[-1].all()
    assert not trajectory.terminated[:-1].any()
    assert int(stats.episodes) == config.num_envs
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
  train = from_config.anakin_system(config)
  runner = train.init(jax.random.PRNGKey(1))
  runner, trajectory, _ = jax.jit(train.rollout)(runner)
  rtrl_config = bptt_config(gradient="rtrl")
  rtrl_agent = from_config.anakin_system(rtrl_config).agent
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
    from_config.anakin_system(bptt_config(unroll_length=3))


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
    from rtrl_jax.rl import anakin, from_config
    assert jax.device_count() == 8, jax.devices()
    config = r2ac.tiny()
    config.updates_per_call = 5
    # 5-step episodes across 4-step unrolls: most unrolls start mid-episode,
    # so the shipped sensitivities' gradient (summed over each device's own
    # examples) enters the update.
    config.env.kwargs.memory_length = 4
    params = {}
    for devices in (1, 8):
      train = from_config.anakin_system(config, mesh=anakin.make_mesh(devices))
      runner = train.init(jax.random.PRNGKey(3))
      for _ in range(2):
        runner, _ = train.step(runner)
      assert len(runner.obs.sharding.device_set) == devices
      params[devices] = jax.device_get(runner.params)
    # Data parallelism moves only the gradient sum between devices: no
    # device gathers another's observations or sensitivities.
    hlo = jax.jit(train.step).lower(runner).compile().as_text()
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
    from_config.anakin_system(config, mesh=TwoDeviceMesh())


def _cartpole_final_obs(trajectory):
  """CartPole's observation is its whole state but the clock, and a step is
  deterministic: the observation step t reached is the physics applied to
  obs[t] and action[t] (the time limit only decides whether it is final)."""
  from gymnax.environments.classic_control import cartpole
  env = cartpole.CartPole()

  def one(obs, action):
    state = cartpole.EnvState(x=obs[0], x_dot=obs[1], theta=obs[2],
                              theta_dot=obs[3], time=0)
    return env.step_env(jax.random.PRNGKey(0), state, action,
                        env.default_params)[0]

  return np.asarray(jax.vmap(jax.vmap(one))(trajectory.obs[:-1],
                                            trajectory.action))


def _bandit_final_obs(trajectory):
  """GaussianBandit's observation after a step is [that step's reward,
  one-hot action, normalized count of the episode's steps so far]."""
  from gymnax.environments.misc.gaussian_bandit import time_normalization
  reset = np.asarray(trajectory.reset)
  count, counts = np.zeros(reset.shape[1]), []
  for t in range(reset.shape[0] - 1):
    count = np.where(reset[t], 0, count) + 1
    counts.append(count)
  return np.concatenate([
      np.asarray(trajectory.reward)[..., None],
      np.eye(2)[np.asarray(trajectory.action)],
      time_normalization(np.stack(counts))[..., None]], -1).astype(np.float32)


# (env, its time limit, unroll length, final observations from a trajectory,
# whether rewards vary between consecutive steps of an episode)
REWARD_INPUT_ENVS = {
    # Reward 1 every step (clipped to 0.5); random-policy episodes end both
    # by falling (terminated) and by the 20-step limit (truncated).
    "cartpole": ("gymnax:CartPole-v1", 20, 40, _cartpole_final_obs, False),
    # Reward 0 (arm 0) or ~N(mu, 0.1), mu ~ N(-1, 1) (arm 1): zero, clipped
    # and unclipped non-zero rewards; truncated every 5 steps, never ended.
    "bandit": ("gymnax:GaussianBandit-misc", 5, 12, _bandit_final_obs, True),
}


@pytest.mark.parametrize("env_key", sorted(REWARD_INPUT_ENVS))
def test_rollout_reward_input_and_truncation_bootstrap(env_key):
  """On environments that pay every step and cut episodes by a time limit
  (MemoryChain does neither): (1) the core's next input is this step's
  clipped reward, 0 where the episode ended; (2) a truncated step ships
  V(final observation) from the core state after the step with that clipped
  reward as input, and 0 elsewhere; (3) control: V of the reset observation
  (or from the pre-step core state) differs there, so (2) tells them apart.
  The final observations are rebuilt from the trajectory, not taken from the
  environment wrapper."""
  name, limit, unroll_length, final_obs_of, varying = REWARD_INPUT_ENVS[env_key]
  clip = 0.5
  config = r2ac_configs.cartpole()
  config.env.name = name
  config.env.kwargs.max_steps_in_episode = limit
  config.network.hidden_size = 16
  config.num_envs, config.unroll_length = 8, unroll_length
  config.loss.reward_clip = clip
  config.desync_steps = 0      # every episode starts at step 0
  # Constant forget bias: with chrono's slow gates one step barely moves the
  # state, and control (3) could not tell the pre- and post-step states apart.
  config.network.core_kwargs.elstm.forget_init = "constant"
  train = from_config.anakin_system(config)
  agent = train.agent
  runner = train.init(jax.random.PRNGKey(0))
  runner, trajectory, _ = jax.jit(train.rollout)(runner)
  params = runner.params
  traj = jax.device_get(trajectory)
  reward, truncated = traj.reward, traj.truncated
  done = np.logical_or(traj.terminated, truncated)
  clipped = np.clip(reward, -clip, clip)

  # Guards: the paths under test are exercised.
  assert truncated.sum() >= 3, truncated.sum()
  assert np.any((reward != 0) & ~done), "no reward reached the core input"
  assert np.any((np.abs(reward) > clip) & ~done), "clipping never mattered"
  if env_key == "cartpole":
    assert traj.terminated.sum() >= 1           # the other way to end
  if varying:
    assert np.any((clipped[1:] != clipped[:-1]) & ~done[1:] & ~done[:-1])
    assert np.any((reward != 0) & (np.abs(reward) < clip) & ~done)

  # (1) Reward input.
  assert traj.prev_reward[0].tolist() == [0.0] * config.num_envs
  np.testing.assert_array_equal(traj.reset[1:], done)
  # (XLA may compute the reward twice, once fused into the clip: an ulp.)
  np.testing.assert_allclose(traj.prev_reward[1:],
                             np.where(done, 0.0, clipped), rtol=1e-6, atol=0)
  assert not traj.prev_reward[1:][done].any()

  # Independent final observations, checked against the rollout's own
  # next observations where no reset replaced them.
  final_obs = final_obs_of(traj)
  np.testing.assert_allclose(final_obs[~done], traj.obs[1:][~done],
                             rtol=1e-5, atol=1e-6)
  assert np.all(np.abs(final_obs[truncated] - traj.obs[1:][truncated])
                .max(-1) > 1e-3)

  # Core states after each step, stepped here from the unroll's first one.
  step = jax.jit(lambda s, o, r, z: agent.unroll(params, s, o[None], r[None],
                                                 z[None])[2])
  value_of = jax.jit(lambda s, o, r: agent.value_of(params, s, o, r))
  state, before, after = trajectory.initial_state, [], []
  for t in range(unroll_length):
    before.append(state)
    state = step(state, traj.obs[t], traj.prev_reward[t], traj.reset[t])
    after.append(state)
  for got, want in zip(jax.tree.leaves(state.hidden),
                       jax.tree.leaves(runner.core_state.hidden)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

  values = lambda states, obs: np.stack([
      value_of(states[t], obs[t], clipped[t]) for t in range(unroll_length)])
  want = values(after, final_obs)

  # (2) Truncation bootstrap.
  rtol = atol = 1e-5
  np.testing.assert_allclose(traj.truncation_value[truncated], want[truncated],
                             rtol=rtol, atol=atol)
  assert not traj.truncation_value[~truncated].any()

  # (3) Control: at every truncated step, V of the reset observation, and V
  # from the pre-step core state, miss (2)'s tolerance by 10x or more.
  tolerance = atol + rtol * np.abs(want[truncated])
  for wrong in (values(after, traj.obs[1:]), values(before, final_obs)):
    assert np.all(np.abs(wrong - want)[truncated] > 10 * tolerance)


def test_seeds_in_one_program_equal_separate_runs():
  """make_train(num_seeds=S) runs seed s exactly as a single run from
  PRNGKey(seeds[s]) (parameters after two calls, metrics); the seeds differ."""
  config = r2ac_configs.tiny()
  config.updates_per_call = 5
  seeds = [0, 3, 5]
  multi = from_config.anakin_system(config, num_seeds=len(seeds))
  runner = multi.init(anakin.seed_keys(seeds))
  for _ in range(2):
    runner, metrics = multi.step(runner)
  metrics = jax.device_get(metrics)
  assert metrics["loss/total"].shape == (len(seeds),)
  single = from_config.anakin_system(config)
  for index, seed in enumerate(seeds):
    alone = single.init(jax.random.PRNGKey(seed))
    for _ in range(2):
      alone, alone_metrics = single.step(alone)
    for got, want in zip(jax.tree.leaves(runner.params),
                         jax.tree.leaves(alone.params)):
      np.testing.assert_allclose(got[index], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(metrics["loss/total"][index],
                               alone_metrics["loss/total"], rtol=1e-4)
    assert metrics["episodes"][index] == alone_metrics["episodes"]
  first = jax.tree.leaves(runner.params)[0]
  assert not np.allclose(first[0], first[1])


def test_num_seeds_must_divide_over_devices():
  class TwoDeviceMesh:
    size = 2
  with pytest.raises(ValueError, match=r"num_seeds=3 must be a positive "
                     r"multiple of the number of devices \(2\)"):
    from_config.anakin_system(r2ac_configs.tiny(), mesh=TwoDeviceMesh(), num_seeds=3)


def _first_unroll(desync_steps):
  config = r2ac_configs.tiny()      # MemoryChain(3): 4-step episodes
  config.desync_steps = desync_steps
  config.num_envs = 16
  train = from_config.anakin_system(config)
  runner = train.init(jax.random.PRNGKey(0))
  _, trajectory, _ = jax.jit(train.rollout)(runner)
  return jax.device_get(runner), jax.device_get(trajectory)


def test_desynchronised_environments_start_at_random_phases():
  """With desync_steps > 0 (the default) no step of the first unroll starts
  an episode in every environment, and environments enter it at several
  episode steps, mid-episode core states included; desync_steps=0 (control)
  starts all of them together, and they stay in lockstep."""
  assert r2ac_configs.default().desync_steps > 0
  runner, trajectory = _first_unroll(desync_steps=16)
  assert int(runner.update) == 0
  assert len(set(runner.episode_length.tolist())) >= 3
  assert not trajectory.reset.all(axis=1).any()
  started = ~runner.reset
  assert started.any()
  assert np.abs(runner.core_state.hidden[started]).max() > 0
  # Environments that are mid-episode carry that episode's return so far
  # (MemoryChain pays only at the end, so 0) and its length.
  assert (runner.episode_length[started] > 0).all()

  runner, trajectory = _first_unroll(desync_steps=0)
  assert (runner.episode_length == 0).all() and runner.reset.all()
  assert all(row.all() or not row.any() for row in trajectory.reset)
