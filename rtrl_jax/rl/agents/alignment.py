r"""How close R2AC's learner gradients are to full BPTT, and how big the sensitivities get.

A probe for logging during training (used by experiments/study.py). At the
current parameters θ it starts `num_envs` fresh episodes (zero core state and
sensitivities), acts for a window of K unrolls of M steps with θ fixed, and
computes the gradient of the same training loss Σ_k L_k (V-trace per unroll,
exactly as the learner) three ways:

    bptt   backprop through the whole window (the truth: every unroll's loss
           reaches back to the episode start inside the window)
    rtrl   the learner's gradient, unroll by unroll, with the sensitivities
           carried from the window start (eLSTM and the other `rtrl_jax.CELLS`
           cores only)
    tbptt  the learner's gradient with backprop cut at each unroll's start

and reports, for the core's recurrent parameters θ_r (where RTRL is exact)
and for all parameters,

    cosine = ⟨g, g*⟩ / (‖g‖ ‖g*‖),   relative_norm = ‖g‖ / ‖g*‖,
    relative_error = ‖g − g*‖ / ‖g*‖

(the last computed directly: from cosine and relative_norm it would cancel
down to ~sqrt(eps), 1.5e-8 in float64).

With θ fixed, RTRL's θ_r gradient equals BPTT's (cosine 1 up to rounding:
a live check of the training code path); the encoder's gradient is truncated
to the unroll under both methods, so "all" is below 1 for both.
TBPTT's θ_r alignment measures what truncation at M throws away at the policy
the run has reached.

In training the actor's state and sensitivities are also stale: unroll k's
were accumulated under θ_0 … θ_{k-1}, while the learner differentiates at
θ_k. `make_training_alignment_probe` measures that: it *trains* through the
window (the run's own rollout and learner step, K updates from fresh
episodes) and compares the gradient the learner actually took on the last
unroll with the true gradient of that unroll's loss at θ_{K-1} (BPTT from
the episodes' start, every state recomputed under θ_{K-1}).

Also reported: the norm of each environment's sensitivities dh/dθ_r at the
window's end (mean and max over environments; does it blow up or vanish?).
"""

import jax
import jax.numpy as jnp

import rtrl_jax
from rtrl_jax import oracle
from rtrl_jax.rl.agents.r2ac import make_agent


def _window_outputs(agent, params, trajectories):
  """(logits, values) [K·M + 1, B, ...] of BPTT through the whole window.

  The K stacked unrolls [K, M(+1), B, ...] are joined into one stream and
  run from the window's first state (fresh episodes), so every step's output
  depends on θ through every earlier step of its episode: the truth the
  probes compare against.
  """
  def join(stacked):
    body = stacked[:, :-1].reshape((-1,) + stacked.shape[2:])
    return jnp.concatenate([body, stacked[-1, -1:]])
  start = jax.tree.map(lambda x: x[0], trajectories.initial_state)
  logits, values, _ = agent.unroll(
      params, start._replace(sensitivities=None), join(trajectories.obs),
      join(trajectories.prev_reward), join(trajectories.reset),
      method="bptt")
  return logits, values


def _global_alignment(estimate, truth):
  flat = lambda tree: jnp.concatenate([x.ravel() for x in jax.tree.leaves(tree)])
  estimate, truth = flat(estimate), flat(truth)
  return {**oracle.gradient_alignment(estimate, truth),
          "relative_error": oracle.relative_error(estimate, truth)}


def per_env_norm(tree):
  """Global norm of each environment's slice of `tree` (leading axis B)."""
  squares = [jnp.sum(x.reshape(x.shape[0], -1) ** 2, axis=1)
             for x in jax.tree.leaves(tree)]
  return jnp.sqrt(sum(squares))


def _report(estimates, truth, params, prefix):
  """{prefix/method/{recurrent|all}/{cosine|relative_norm|relative_error}:
  scalar}."""
  parts = {"all": lambda g: g}
  if jax.tree.leaves(params["core"]["recurrent"]):
    parts["recurrent"] = lambda g: g["core"]["recurrent"]
  out = {}
  for method, estimate in estimates.items():
    for part, select in parts.items():
      alignment = _global_alignment(select(estimate), select(truth))
      for metric, value in alignment.items():
        out[f"{prefix}/{method}/{part}/{metric}"] = value
  return out


def _unroll_windows(num_unrolls, steps):
  """[K, M+1] window indices of each unroll's outputs (the last bootstraps)."""
  return (jnp.arange(num_unrolls)[:, None] * steps
          + jnp.arange(steps + 1)[None, :])


def make_alignment_probe(system, num_unrolls):
  """A jitted (params, key) -> {name: scalar} for an Anakin system's run.

  Args:
    system: an `rtrl_jax.rl.anakin.System`; its `rollout` acts with the
      run's own agent and `system.num_envs` environments.
    num_unrolls: K, unrolls of `system.unroll_length` steps in the window.

  Returns names "align/{method}/{recurrent|all}/{cosine|relative_norm|
  relative_error}"
  for method in bptt's comparisons (tbptt, and rtrl where the core has exact
  RTRL) and, for those cores, "sens/norm_mean", "sens/norm_max".
  """
  if num_unrolls < 1:
    raise ValueError(f"num_unrolls must be >= 1, got {num_unrolls}")
  train, agent = system, system.agent
  if agent.gradient == "bptt":
    # Its unrolls restart the environments: the window is not one stream.
    raise ValueError("the alignment probe needs a continuous stream of "
                     "unrolls; gradient='bptt' restarts episodes every unroll")
  has_rtrl = type(agent.core) in rtrl_jax.CELLS.values()
  if has_rtrl:   # the same agent with RTRL gradients
    twin = make_agent(agent.core, agent.encoder, system.env.obs_shape,
                      system.env.num_actions, "rtrl", agent.loss_params)
  steps, num_envs = system.unroll_length, system.num_envs

  def probe(params, key):
    runner = train.init_synchronised(key)._replace(params=params)
    runner = runner._replace(
        core_state=agent.initial_core_state(params, num_envs))

    def act(runner, _):
      runner, trajectory, _ = train.rollout(runner)
      return runner, trajectory

    _, trajectories = jax.lax.scan(act, runner, None, num_unrolls)
    index = _unroll_windows(num_unrolls, steps)

    def window_loss(params):
      logits, values = _window_outputs(agent, params, trajectories)
      losses = jax.vmap(lambda lg, v, traj: agent.loss_from_outputs(
          lg, v, traj)[0])(logits[index], values[index], trajectories)
      return jnp.sum(losses)

    def summed_gradients(loss, carry):
      """Σ_k ∇θ loss(θ, carry, unroll k); `loss` returns (value, carry)."""
      def one(total_and_carry, trajectory):
        total, carry = total_and_carry
        grad, carry = jax.grad(loss, has_aux=True)(params, carry, trajectory)
        return (jax.tree.map(jnp.add, total, grad), carry), None
      zeros = jax.tree.map(jnp.zeros_like, params)
      (total, carry), _ = jax.lax.scan(one, (zeros, carry), trajectories)
      return total, carry

    truth = jax.grad(window_loss)(params)
    estimates = {"tbptt": summed_gradients(
        lambda p, carry, traj: (agent.loss(p, traj, method="tbptt")[0], carry),
        ())[0]}
    out = {}
    if has_rtrl:
      def rtrl_loss(p, state, traj):
        traj = traj._replace(initial_state=state)
        # The next unroll starts from this one's state after M steps; the
        # sensitivities are the actor's (advanced outside autodiff).
        _, _, next_state = twin.unroll(
            jax.lax.stop_gradient(p), state, traj.obs[:-1],
            traj.prev_reward[:-1], traj.reset[:-1], method="rtrl")
        return twin.loss(p, traj, method="rtrl")[0], next_state
      estimates["rtrl"], state = summed_gradients(
          rtrl_loss, twin.initial_core_state(params, num_envs))
      norms = per_env_norm(state.sensitivities)
      out["sens/norm_mean"] = jnp.mean(norms)
      out["sens/norm_max"] = jnp.max(norms)
    return {**out, **_report(estimates, truth, params, "align")}

  return jax.jit(probe)


def make_training_alignment_probe(system, num_unrolls):
  """A jitted (params, opt_state, key) -> {name: scalar}; RTRL runs only.

  From fresh episodes, runs K = `num_unrolls` real training updates (the
  run's `rollout` and `learner_step`, so the actor's sensitivities go stale
  as θ moves) and compares, on the last unroll, the learner's RTRL gradient
  and the TBPTT gradient (both from the actor's shipped state) with the
  truth: BPTT of that unroll's loss at the current θ through the whole
  window. Names "align_train/{rtrl|tbptt}/{recurrent|all}/{cosine|
  relative_norm|relative_error}" and "align_train/param_change" (‖θ_{K-1} − θ_0‖ / ‖θ_0‖,
  over the K − 1 updates before the last unroll).
  """
  if num_unrolls < 2:
    raise ValueError(f"num_unrolls must be >= 2, got {num_unrolls}")
  train, agent, steps = system, system.agent, system.unroll_length
  if agent.gradient != "rtrl":
    raise ValueError(f"the training probe needs gradient='rtrl' (stale "
                     f"sensitivities), got {agent.gradient!r}")

  def probe(params, opt_state, key):
    runner = train.init_synchronised(key)._replace(params=params,
                                                   opt_state=opt_state)

    def train_one(runner, _):
      runner, trajectory, _ = train.rollout(runner)
      acting_params = runner.params
      new_params, new_opt_state, _ = train.learner_step(
          runner.params, runner.opt_state, trajectory)
      runner = runner._replace(params=new_params, opt_state=new_opt_state)
      return runner, (trajectory, acting_params)

    # The last unroll is acted and differentiated at θ_{K-1}; its update is
    # not needed.
    _, (trajectories, acting) = jax.lax.scan(train_one, runner, None,
                                             num_unrolls)
    current = jax.tree.map(lambda x: x[-1], acting)
    last = jax.tree.map(lambda x: x[-1], trajectories)
    index = _unroll_windows(num_unrolls, steps)[-1]

    def last_unroll_loss(params):
      logits, values = _window_outputs(agent, params, trajectories)
      return agent.loss_from_outputs(logits[index], values[index], last)[0]

    truth = jax.grad(last_unroll_loss)(current)
    estimates = {method: jax.grad(lambda p, m=method: agent.loss(
        p, last, method=m)[0])(current) for method in ("rtrl", "tbptt")}
    flat = lambda t: jnp.concatenate([x.ravel() for x in jax.tree.leaves(t)])
    change = (jnp.linalg.norm(flat(current) - flat(params))
              / jnp.linalg.norm(flat(params)))
    return {**_report(estimates, truth, current, "align_train"),
            "align_train/param_change": change}

  return jax.jit(probe)
