"""R2AC agent: V-trace, unroll continuity, RTRL across unrolls, boundaries."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import r2ac as r2ac_configs
import rtrl_jax
from rtrl_jax.rl import from_config
from rtrl_jax.rl import anakin
from rtrl_jax.rl.agents import r2ac


def numpy_vtrace(values, bootstrap, rewards, discounts, rhos, lambda_,
                 clip_rho, clip_pg_rho):
  """V-trace for one sequence, by the paper's definition (Espeholt et al. 2018)."""
  steps = len(rewards)
  next_values = np.append(values[1:], bootstrap)
  clipped = np.minimum(clip_rho, rhos)
  cs = lambda_ * np.minimum(1.0, rhos)
  vs = np.zeros(steps)
  for t in range(steps):
    total, trace = 0.0, 1.0
    for s in range(t, steps):
      delta = clipped[s] * (rewards[s] + discounts[s] * next_values[s] - values[s])
      total += trace * delta
      trace *= discounts[s] * cs[s]
    vs[t] = values[t] + total
  # For λ < 1 the advantage bootstraps on the λ-mixture λ v^s + (1-λ) V.
  next_target = np.append(lambda_ * vs[1:] + (1 - lambda_) * values[1:],
                          bootstrap)
  pg_advantage = np.minimum(clip_pg_rho, rhos) * (
      rewards + discounts * next_target - values)
  return vs - values, pg_advantage


@pytest.mark.parametrize("lambda_,clip_rho", [(1.0, 1.0), (0.9, 2.0)])
def test_vtrace_matches_numpy_reference(lambda_, clip_rho):
  rng = np.random.default_rng(0)
  steps, batch = 7, 3
  values = rng.normal(size=(steps + 1, batch))
  rewards = rng.normal(size=(steps, batch))
  discounts = 0.99 * (rng.random((steps, batch)) > 0.2)   # some episode ends
  rhos = np.exp(rng.normal(scale=0.5, size=(steps, batch)))
  out = r2ac.vtrace(*map(jnp.asarray, (values[:-1], values[1:], rewards,
                                       discounts, rhos)),
                    lambda_=lambda_, clip_rho=clip_rho, clip_pg_rho=1.0)
  for b in range(batch):
    errors, advantages = numpy_vtrace(values[:-1, b], values[-1, b],
                                      rewards[:, b], discounts[:, b],
                                      rhos[:, b], lambda_, clip_rho, 1.0)
    np.testing.assert_allclose(out.errors[:, b], errors, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out.pg_advantage[:, b], advantages, rtol=1e-5,
                               atol=1e-5)


def test_loss_from_outputs_matches_a_numpy_impala_loss():
  """Pins the loss composition (float64): every reported term and the
  gradient of the total w.r.t. logits and values equal an independent NumPy
  IMPALA loss, for hand-chosen outputs of a 3-step unroll with a terminated
  step, a truncated one, off-policy ratios on both sides of the clips and
  rewards beyond the reward clip. Non-default coefficients, so one dropped,
  applied twice or swapped with another changes the result.

  The NumPy gradient is analytic: v^s, ρ and A^pg are constants (stop-gradient)
  and the bootstrap step M gets none, so
    ∂L/∂V_t = -c_V (v^s_t - V_t),
    ∂L/∂z_t = -A^pg_t (onehot(a_t) - π_t) + c_H π_t (log π_t - Σ_a π log π).
  """
  coefficients = dict(discount=0.9, baseline_cost=0.3, entropy_cost=0.05,
                      reward_clip=1.5, clip_rho=1.4, clip_pg_rho=1.2,
                      lambda_=0.95)
  config = tiny_config()
  for key, value in coefficients.items():
    assert key in config.loss, key             # the key the agent reads
    assert config.loss[key] != value, key      # a non-default value
    config.loss[key] = value
  c = config.loss
  # logits [M+1, B, A] and values [M+1, B]; step M only bootstraps.
  logits = np.array([[[0.3, -0.4], [1.1, 0.2]],
                     [[-0.7, 0.5], [0.0, 0.9]],
                     [[0.8, 0.1], [-1.2, 0.4]],
                     [[2.0, -2.0], [0.5, -0.5]]])
  values = np.array([[0.2, 0.7], [-0.5, 0.1], [0.9, -0.3], [1.3, 0.6]])
  behaviour_logits = np.array([[[1.0, -0.2], [0.4, 0.6]],
                               [[0.2, 0.3], [0.9, -0.3]],
                               [[0.5, 0.5], [0.3, -0.6]]])
  action = np.array([[0, 1], [1, 0], [0, 1]])
  reward = np.array([[0.5, -2.7], [3.0, 0.4], [-0.2, 1.5]])
  # Example 0 terminates at t=1; example 1 is truncated at t=0 (V(final) 0.8).
  terminated = np.array([[False, False], [True, False], [False, False]])
  truncated = np.array([[False, True], [False, False], [False, False]])
  truncation_value = np.where(truncated, 0.8, 0.0)
  steps, batch = action.shape
  reset = np.zeros((steps + 1, batch), bool)
  reset[0] = True
  reset[1:] |= terminated | truncated

  # NumPy reference, from the IMPALA formulas.
  log_pi = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  log_mu = behaviour_logits - np.log(
      np.exp(behaviour_logits).sum(-1, keepdims=True))
  pi = np.exp(log_pi[:-1])
  take = lambda lp: np.take_along_axis(lp, action[..., None], -1)[..., 0]
  log_pi_a = take(log_pi[:-1])
  rho = np.exp(log_pi_a - take(log_mu))
  # The data exercise every clip: ρ < 1, clip_pg_rho < ρ < clip_rho, ρ above
  # both; rewards beyond the reward clip.
  assert (rho < 1).any() and (rho > c.clip_rho).any()
  assert ((rho > c.clip_pg_rho) & (rho < c.clip_rho)).any()
  assert (np.abs(reward) > c.reward_clip).any()
  done = terminated | truncated
  step_reward = (np.clip(reward, -c.reward_clip, c.reward_clip)
                 + c.discount * truncated * truncation_value)
  discounts = c.discount * (1.0 - done)
  errors, advantages = np.zeros((steps, batch)), np.zeros((steps, batch))
  for b in range(batch):
    errors[:, b], advantages[:, b] = numpy_vtrace(
        values[:-1, b], values[-1, b], step_reward[:, b], discounts[:, b],
        rho[:, b], c.lambda_, c.clip_rho, c.clip_pg_rho)
  neg_entropy = (pi * log_pi[:-1]).sum(-1)                  # Σ_a π log π
  expected = {"loss/policy": -np.sum(log_pi_a * advantages),
              "loss/baseline": 0.5 * np.sum(errors ** 2),
              "loss/entropy": np.sum(neg_entropy)}
  expected["loss/total"] = (expected["loss/policy"]
                            + c.baseline_cost * expected["loss/baseline"]
                            + c.entropy_cost * expected["loss/entropy"])
  grad_values = np.zeros_like(values)
  grad_values[:-1] = -c.baseline_cost * errors
  grad_logits = np.zeros_like(logits)
  onehot = np.eye(logits.shape[-1])[action]
  grad_logits[:-1] = (-advantages[..., None] * (onehot - pi)
                      + c.entropy_cost * pi * (log_pi[:-1]
                                               - neg_entropy[..., None]))

  with jax.enable_x64(True):
    agent = from_config.agent(config, (3,), 2)
    trajectory = r2ac.Trajectory(
        initial_state=None, obs=jnp.zeros((steps + 1, batch, 3)),
        prev_reward=jnp.zeros((steps + 1, batch)), reset=jnp.asarray(reset),
        action=jnp.asarray(action, jnp.int32),
        behaviour_logits=jnp.asarray(behaviour_logits),
        reward=jnp.asarray(reward), terminated=jnp.asarray(terminated),
        truncated=jnp.asarray(truncated),
        truncation_value=jnp.asarray(truncation_value),
        valid=jnp.ones(np.shape(terminated), bool))
    (total, metrics), (got_logits, got_values) = jax.value_and_grad(
        lambda z, v: agent.loss_from_outputs(z, v, trajectory), argnums=(0, 1),
        has_aux=True)(jnp.asarray(logits), jnp.asarray(values))
  assert total.dtype == jnp.float64
  assert set(metrics) == set(expected)
  np.testing.assert_allclose(total, expected["loss/total"], rtol=1e-10)
  for key, value in expected.items():
    np.testing.assert_allclose(metrics[key], value, rtol=1e-10, err_msg=key)
  np.testing.assert_allclose(got_values, grad_values, rtol=1e-10, atol=1e-14)
  np.testing.assert_allclose(got_logits, grad_logits, rtol=1e-10, atol=1e-14)


def tiny_config(**changes):
  config = r2ac_configs.tiny()
  for key, value in changes.items():
    setattr(config, key, value)
  return config


def test_learner_recomputes_the_actors_states():
  """torchbeast's core-state test: unroll k's recomputed final state equals
  the state the actor shipped with unroll k+1 (c and sensitivities), with
  episodes starting inside the recomputed unrolls."""
  # memory_length=3: 4-step episodes. Unroll length 6 puts episode starts at
  # step 4 of the first unroll and step 2 of the second: strictly inside the
  # M steps the learner recomputes (with length 4 they would fall only on
  # step 0 and the bootstrap step M, which the recomputation never reads).
  train = from_config.anakin_system(tiny_config(unroll_length=6))
  runner = train.init(jax.random.PRNGKey(0))
  rollout = jax.jit(train.rollout)
  unrolls = []
  for _ in range(3):
    runner, unroll, _ = rollout(runner)
    unrolls.append(unroll)
  assert bool(unrolls[0].reset[0].all())        # episodes start at step 0
  recompute = jax.jit(train.agent.unroll)
  for k, (unroll, shipped) in enumerate(zip(unrolls[:-1], unrolls[1:])):
    steps = unroll.action.shape[0]
    # Every environment starts an episode at one of steps 1..M-1.
    assert bool(unroll.reset[1:steps].any(0).all()), k
    _, _, recomputed = recompute(
        runner.params, unroll.initial_state, unroll.obs[:-1],
        unroll.prev_reward[:-1], unroll.reset[:-1])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(
        a, b, rtol=1e-5, atol=1e-6, err_msg=f"unroll {k}"),
                 recomputed, shipped.initial_state)


def fabricated_unrolls(agent, params, steps, batch, key):
  """Two consecutive unrolls of random data, state shipped as an actor would.

  Example 0 starts an episode inside the first unroll (t=2); example 1 starts
  one exactly at the boundary (step 0 of the second unroll).
  """
  keys = jax.random.split(key, 6)
  total = 2 * steps + 1
  obs = jax.random.normal(keys[0], (total, batch, 3))
  prev_reward = jax.random.uniform(keys[1], (total, batch), minval=-1, maxval=1)
  reset = jnp.zeros((total, batch), bool).at[0].set(True)
  reset = reset.at[2, 0].set(True).at[steps, 1].set(True)
  terminated = reset[1:]                     # the step before a reset ends
  action = jax.random.randint(keys[2], (total - 1, batch), 0, 2)
  behaviour_logits = jax.random.normal(keys[3], (total - 1, batch, 2))
  reward = jax.random.normal(keys[4], (total - 1, batch))
  state0 = agent.initial_core_state(params, batch)
  _, _, state1 = jax.jit(agent.unroll)(params, state0, obs[:steps], prev_reward[:steps],
                              reset[:steps])

  def unroll_k(state, start):
    window = slice(start, start + steps + 1)
    step_window = slice(start, start + steps)
    return r2ac.Trajectory(
        initial_state=state, obs=obs[window], prev_reward=prev_reward[window],
        reset=reset[window], action=action[step_window],
        behaviour_logits=behaviour_logits[step_window],
        reward=reward[step_window], terminated=terminated[step_window],
        truncated=jnp.zeros_like(terminated[step_window]),
        truncation_value=jnp.zeros_like(reward[step_window]),
        valid=jnp.ones_like(terminated[step_window]))

  whole = (obs, prev_reward, reset)
  return unroll_k(state0, 0), unroll_k(state1, steps), whole


@pytest.mark.parametrize("core", ["elstm", "indrnn"])
def test_rtrl_over_two_unrolls_equals_bptt_over_their_concatenation(core):
  """Fixed params: Σ_k ∇ loss_k by the learner (RTRL from the shipped
  sensitivities) == ∇ Σ_k loss_k by BPTT through both unrolls."""
  config = tiny_config()
  config.network.core = core
  steps, batch = 4, 2
  agent = from_config.agent(config, (3,), 2)
  params = agent.init(jax.random.PRNGKey(1))
  first, second, (obs, prev_reward, reset) = fabricated_unrolls(
      agent, params, steps, batch, jax.random.PRNGKey(2))

  unroll_grad = jax.jit(jax.grad(lambda p, traj, method: agent.loss(
      p, traj, method)[0]), static_argnums=2)
  rtrl_grad = lambda method: jax.tree.map(
      jnp.add, *[unroll_grad(params, traj, method) for traj in (first, second)])

  def concatenated_loss(p):
    logits, values, _ = agent.unroll(p, first.initial_state, obs, prev_reward,
                                     reset, method="bptt")
    window = lambda a, start: a[start:start + steps + 1]
    return sum(agent.loss_from_outputs(window(logits, s), window(values, s),
                                       traj)[0]
               for s, traj in ((0, first), (steps, second)))

  truth = jax.jit(jax.grad(concatenated_loss))(params)["core"]["recurrent"]
  got = rtrl_grad("rtrl")["core"]["recurrent"]
  truncated = rtrl_grad("tbptt")["core"]["recurrent"]
  for name in truth:
    scale = float(jnp.linalg.norm(truth[name]))
    assert scale > 0, name
    err = float(jnp.linalg.norm(got[name] - truth[name])) / scale
    assert err < 1e-4, (name, err)
  # Negative control: TBPTT drops the first unroll's influence.
  worst = max(float(jnp.linalg.norm(truncated[n] - truth[n])
                    / jnp.linalg.norm(truth[n])) for n in truth)
  assert worst > 1e-2


def test_episode_end_inside_an_unroll_cuts_the_trace():
  """A reward after an episode end must not change the values before it."""
  config = tiny_config()
  agent = from_config.agent(config, (3,), 2)
  params = agent.init(jax.random.PRNGKey(0))
  first, _, _ = fabricated_unrolls(agent, params, 4, 2, jax.random.PRNGKey(3))
  # Example 0: episode ends at t=1 (reset at t=2). Change rewards at t >= 2.
  changed = first._replace(reward=first.reward.at[2:, 0].add(10.0))
  logits, values, _ = jax.jit(agent.unroll)(
      params, first.initial_state, first.obs, first.prev_reward, first.reset)
  grad_before = jax.jit(jax.grad(
      lambda v: agent.loss_from_outputs(logits, v, first)[0]))
  grad_after = jax.jit(jax.grad(
      lambda v: agent.loss_from_outputs(logits, v, changed)[0]))
  # dLoss/dV(x_t) for t < 2 of example 0 only depends on rewards up to t=1.
  np.testing.assert_allclose(grad_before(values)[:2, 0],
                             grad_after(values)[:2, 0], rtol=1e-6)
  assert not np.allclose(grad_before(values)[2:4, 0], grad_after(values)[2:4, 0])


def test_truncation_bootstraps_from_final_observation():
  """A time-limit cut adds γ·V(final_obs) to the reward; termination does not."""
  config = tiny_config()
  agent = from_config.agent(config, (3,), 2)
  params = agent.init(jax.random.PRNGKey(0))
  first, _, _ = fabricated_unrolls(agent, params, 4, 2, jax.random.PRNGKey(3))
  logits, values, _ = agent.unroll(params, first.initial_state, first.obs,
                                   first.prev_reward, first.reset)
  # On-policy (ρ = 1), so the V-trace target moves by exactly the bootstrap.
  first = first._replace(behaviour_logits=logits[:-1])
  as_terminal = first
  as_truncated = first._replace(
      terminated=first.terminated.at[1, 0].set(False),
      truncated=first.truncated.at[1, 0].set(True),
      truncation_value=first.truncation_value.at[1, 0].set(5.0))
  value_grad = lambda traj: jax.jit(jax.grad(
      lambda v, traj: agent.loss_from_outputs(logits, v, traj)[0]))(values, traj)
  with_value = value_grad(as_truncated)
  # The same with V(final_obs) = 0 must equal the terminal case exactly.
  zero_value = as_truncated._replace(
      truncation_value=as_truncated.truncation_value.at[1, 0].set(0.0))
  np.testing.assert_allclose(value_grad(zero_value), value_grad(as_terminal),
                             rtol=1e-6)
  # dL/dV(x_1) = -c_V (v^s_1 - V_1); v^s_1 moves by γ·5 with the bootstrap.
  shift = float(with_value[1, 0] - value_grad(as_terminal)[1, 0])
  np.testing.assert_allclose(
      shift, -config.loss.baseline_cost * config.loss.discount * 5.0, rtol=1e-5)


@pytest.mark.parametrize("core", sorted(r2ac.CORES))
def test_every_core_runs_from_the_default_config(core):
  # Only `--config.network.core=...` changes: each core gets its own
  # network.core_kwargs entry (none for most), never another core's.
  config = r2ac_configs.default()
  config.network.core = core
  config.gradient = "rtrl" if core in rtrl_jax.CELLS else "tbptt"
  r2ac_configs.check(config)
  agent = from_config.agent(config, (3,), 2)
  expected = dict(config.network.core_kwargs.get(core, {}))
  for name, value in expected.items():
    assert getattr(agent.core, name) == value
  params = agent.init(jax.random.PRNGKey(0))
  state = agent.initial_core_state(params, 2)
  _, out = agent.act(params, state, jnp.ones((2, 3)), jnp.zeros((2,)),
                     jnp.ones((2,), bool), jax.random.PRNGKey(1))
  assert out.logits.shape == (2, 2) and np.all(np.isfinite(out.logits))


def test_acting_without_sensitivities_is_the_same_policy():
  """Evaluation acts from initial_core_state(..., sensitivities=False)."""
  agent = from_config.agent(tiny_config(), (3,), 2)
  params = agent.init(jax.random.PRNGKey(0))
  with_sens = agent.initial_core_state(params, 2)
  without = agent.initial_core_state(params, 2, sensitivities=False)
  assert jax.tree.leaves(with_sens.sensitivities)
  assert without.sensitivities is None
  act = jax.jit(agent.act)
  for t, key in enumerate(jax.random.split(jax.random.PRNGKey(1), 4)):
    obs = jax.random.normal(key, (2, 3))
    reset = jnp.array([t == 0, t in (0, 2)])
    inputs = (obs, jnp.full((2,), 0.5), reset, key)
    with_sens, out = act(params, with_sens, *inputs)
    without, out_without = act(params, without, *inputs)
    np.testing.assert_array_equal(out.logits, out_without.logits)
    np.testing.assert_array_equal(with_sens.hidden, without.hidden)
  assert without.sensitivities is None


def test_core_kwargs_that_do_not_fit_the_core_are_one_line_errors():
  config = tiny_config()
  config.network.core_kwargs.elstm.window = 3      # a QRNN argument
  with pytest.raises(ValueError, match=r"network.core_kwargs.elstm=\{.*'window': 3"
                     r".*\} does not fit ELSTM: .*'window'"):
    from_config.agent(config, (3,), 2)


def test_bad_core_gradient_combination_is_rejected():
  config = tiny_config()
  config.network.core = "lstm"
  with pytest.raises(ValueError, match=r"gradient='rtrl' needs a core with exact RTRL"):
    from_config.agent(config, (3,), 2)


def test_pytorch_rmsprop_semantics():
  """One step equals PyTorch RMSProp: ν = (1-α) g², Δ = -lr g / (√ν + ε)."""
  config = tiny_config()
  config.optimizer.anneal_lr = False
  optimizer = r2ac.make_optimizer(config.optimizer.learning_rate, 10,
                                  anneal_lr=False)
  params = {"w": jnp.array([1.0, -2.0])}
  grads = {"w": jnp.array([0.3, -0.1])}
  updates, _ = optimizer.update(grads, optimizer.init(params), params)
  nu = (1 - 0.99) * grads["w"] ** 2
  expected = (-config.optimizer.learning_rate * grads["w"]
              / (jnp.sqrt(nu) + 0.01))
  np.testing.assert_allclose(updates["w"], expected, rtol=1e-6)


def test_learning_rate_decays_linearly_to_zero_over_the_run():
  """Update k of K uses lr·(1 - k/K): the last one lr/K, none after."""
  config = tiny_config()
  total = 4
  optimizer = r2ac.make_optimizer(config.optimizer.learning_rate, total)
  params = {"w": jnp.array([1.0, -2.0])}
  grads = {"w": jnp.array([0.3, -0.1])}
  state, nu = optimizer.init(params), jnp.zeros(2)
  update = jax.jit(optimizer.update)
  for k in range(total + 1):
    updates, state = update(grads, state, params)
    nu = 0.99 * nu + 0.01 * grads["w"] ** 2
    lr = config.optimizer.learning_rate * max(0.0, 1 - k / total)
    np.testing.assert_allclose(
        updates["w"], -lr * grads["w"] / (jnp.sqrt(nu) + 0.01), rtol=1e-5,
        atol=1e-12, err_msg=f"update {k}")


@pytest.mark.parametrize("gradient", ["rtrl", "tbptt"])
@pytest.mark.parametrize("end", ["terminated", "truncated",
                                 "truncated_learner_bootstrap"])
@pytest.mark.parametrize("ignored_step", [3, 0, 5])
def test_ignored_steps_leave_the_loss_of_the_trajectory_without_them(
    gradient, end, ignored_step):
  """envpool resets an ended environment on the next step and ignores that
  step's action (the Sebulba actor ships valid = False there). The loss and
  its gradient (float64) must equal those of the same data without that
  step, where the next episode starts right after the end, as in
  rtrl_jax.rl.envs. The ignored step is inside the unroll (the episode ends at
  step 2), its first step (the episode ended in the previous unroll) or its
  last (the next episode starts at the bootstrap step). Without the mask
  they differ. truncated_learner_bootstrap: Sebulba's truncation_value=None,
  where a truncated step bootstraps from the learner's V at the ignored step
  (its final observation); the trajectory without the step gets that value
  as an explicit truncation value (Anakin's rule)."""
  steps = 6
  with jax.enable_x64(True):
    config = tiny_config(gradient=gradient)
    agent = from_config.agent(config, (3,), 2)
    params = jax.tree.map(lambda x: x.astype(jnp.float64),
                          agent.init(jax.random.PRNGKey(0)))
    keys = jax.random.split(jax.random.PRNGKey(4), 7)
    history = jax.random.normal(keys[0], (5, 1, 3), jnp.float64)
    # A mid-episode initial state: non-zero core state and sensitivities.
    _, _, initial_state = agent.unroll(
        params, agent.initial_core_state(params, 1), history,
        jnp.zeros((5, 1)), jnp.zeros((5, 1), bool).at[0].set(True))
    obs = jax.random.normal(keys[1], (steps + 1, 1, 3), jnp.float64)
    prev_reward = jax.random.uniform(keys[2], (steps + 1, 1), jnp.float64,
                                     -1, 1)
    reset = jnp.zeros((steps + 1, 1), bool).at[ignored_step + 1].set(True)
    ended = jnp.zeros((steps, 1), bool)
    if ignored_step > 0:
      ended = ended.at[ignored_step - 1].set(True)
    masked = r2ac.Trajectory(
        initial_state=initial_state, obs=obs, prev_reward=prev_reward,
        reset=reset,
        action=jax.random.randint(keys[3], (steps, 1), 0, 2),
        behaviour_logits=jax.random.normal(keys[4], (steps, 1, 2),
                                           jnp.float64),
        reward=jax.random.normal(keys[5], (steps, 1), jnp.float64),
        terminated=ended if end == "terminated" else jnp.zeros_like(ended),
        truncated=jnp.zeros_like(ended) if end == "terminated" else ended,
        truncation_value={
            "terminated": jnp.zeros((steps, 1), jnp.float64),
            "truncated": jnp.where(ended, 0.7, 0.0),
            "truncated_learner_bootstrap": None}[end],
        valid=jnp.ones((steps, 1), bool).at[ignored_step].set(False))
    reference = masked
    if masked.truncation_value is None:
      _, values, _ = agent.unroll(params, initial_state, obs, prev_reward,
                                  reset)
      reference = masked._replace(
          truncation_value=jnp.where(ended, values[1:], 0.0))
    keep = np.array([t for t in range(steps + 1) if t != ignored_step])
    compact = jax.tree.map(lambda x: x[keep[keep < steps]], reference._replace(
        initial_state=None, obs=None, prev_reward=None, reset=None,
        valid=jnp.ones((steps, 1), bool)))._replace(
            initial_state=initial_state, obs=obs[keep],
            prev_reward=prev_reward[keep], reset=reset[keep])
    assert compact.reset[ignored_step].all()     # the next episode's start

    value_and_grad = jax.jit(jax.value_and_grad(
        lambda p, traj: agent.loss(p, traj)[0]))
    loss_masked, grad_masked = value_and_grad(params, masked)
    loss_compact, grad_compact = value_and_grad(params, compact)
    np.testing.assert_allclose(loss_masked, loss_compact, rtol=1e-12)
    for a, b in zip(jax.tree.leaves(grad_masked), jax.tree.leaves(grad_compact)):
      np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14)
    unmasked, _ = value_and_grad(params, reference._replace(
        valid=jnp.ones((steps, 1), bool)))
    assert abs(float(unmasked) - float(loss_compact)) > 1e-3
