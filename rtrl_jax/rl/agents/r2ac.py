r"""R2AC: IMPALA / V-trace actor-critic with an RTRL-trained recurrent core.

Irie et al. (ICLR 2024), Sec. 3.2, on top of IMPALA (Espeholt et al. 2018).

Network: x(t) = [encoder(o(t)), clip(r(t-1))] → core → h(t) → (π logits, V).

Data flow (as the paper's torchbeast code):

* The actor steps the core one step at a time with its copy of the
  parameters, carrying the state *and* (for gradient="rtrl") the
  sensitivities, resetting both where an episode starts.
* Each unroll of M steps ships its initial core state (c and sensitivities)
  and M+1 observations (the last one only bootstraps).
* The learner recomputes the unroll from that state with the current
  parameters. With gradient="rtrl" the core's recurrent parameters get the
  RTRL gradient, untruncated into the past through the shipped sensitivities;
  the encoder, read-out and heads get backprop truncated to the unroll.
  With gradient="tbptt" the whole network gets backprop within the unroll
  (TBPTT with M = unroll length).
* gradient="bptt" is full-episode BPTT: the system starts every unroll with
  fresh episodes (rtrl_jax/rl/anakin.py resets all environments; the unroll must
  hold a whole episode), so backprop within the unroll reaches every step of
  each episode back to its start. Any core.

Losses (sums over time and batch, torchbeast defaults):

    L = Σ -log π(a_t|x_t) · A_t^pg  +  c_V · ½ Σ (v_t^trace - V(x_t))²  +  c_H · Σ_a π log π

with V-trace targets (rlax) for ρ̄ = c̄ = 1 (λ = 1) and
discount_t = γ · (1 - done_t).

Episode boundaries, exactly:
* done_t = terminated_t or truncated_t ends the trace at t: discount_t = 0,
  so nothing of the next episode leaks into step t's target.
* The core is reset before the first step of the next episode (reset_{t+1}),
  inside an unroll or exactly at its start alike.
* Truncated (time-limit) steps are not terminal for the MDP: the actor
  computes V(final_obs) of the cut episode and the learner uses
  r_t + γ V(final_obs) as the reward of that step (with discount 0), i.e. it
  bootstraps instead of treating the cut as a real end.
* The bootstrap step M has no loss; its value is a stop-gradient target.
* Steps whose action the environment ignored (`valid_t` = False: envpool
  resets an ended environment on the step after the end, the Sebulba
  actor's case) get ρ_t = 0 and no entropy term. Then v^s_t = V(x_t), their
  TD error, trace coefficient and advantage are 0, and the step before them
  ended an episode (discount 0): the loss and its gradient are those of the
  trajectory without the ignored steps (tests/r2ac_test.py checks this).
  This needs what the actor guarantees: valid_t = False only right after a
  done step (or at step 0, after one in the previous unroll), and reset at
  t+1.
"""

from typing import Any, Callable, NamedTuple, Optional

import chex
import jax
import jax.numpy as jnp
import optax
import rlax

import rtrl_jax
from rtrl_jax.rl.agents.networks import FeedForward, ImpalaEncoder, MLPEncoder
from rtrl_jax.cells.base import RecurrentState
from rtrl_jax.cells.lstm import LSTM

CORES = {**rtrl_jax.CELLS, "lstm": LSTM, "feedforward": FeedForward}
# rtrl: untruncated across unrolls; tbptt: cut at each unroll's start;
# bptt: whole episodes per unroll (the system must align unrolls to episodes).
GRADIENTS = ("rtrl", "tbptt", "bptt")


class ActorOutput(NamedTuple):
  action: jax.Array   # [B] int32
  logits: jax.Array   # [B, A]
  value: jax.Array    # [B]


class Trajectory(NamedTuple):
  """One unroll of M steps for B environments (what the learner consumes)."""
  initial_state: RecurrentState  # core state before step 0 (batch B)
  obs: jax.Array                 # [M+1, B, ...]; obs[M] only bootstraps
  prev_reward: jax.Array         # [M+1, B] clipped reward fed to the core
  reset: jax.Array               # [M+1, B] True: new episode starts here
  action: jax.Array              # [M, B]
  behaviour_logits: jax.Array    # [M, B, A]
  reward: jax.Array              # [M, B] raw environment reward
  terminated: jax.Array          # [M, B]
  truncated: jax.Array           # [M, B]
  # [M, B] actor's V(final_obs) where truncated. None: the step after a
  # truncated one holds the episode's final observation (envpool's ignored
  # step, valid=False), and the learner bootstraps from its own value there.
  truncation_value: Optional[jax.Array]
  # [M, B] False where the environment ignored the action (envpool's
  # next-step auto-reset: the step after an episode's end only resets).
  # None: every step is an agent step (rtrl_jax.rl.envs resets in the same step).
  valid: Optional[jax.Array] = None


class Agent(NamedTuple):
  """The R2AC agent as pure functions (batched over environments)."""
  init: Callable[..., Any]
  initial_core_state: Callable[..., RecurrentState]
  act: Callable[..., Any]
  value_of: Callable[..., jax.Array]
  unroll: Callable[..., Any]
  loss: Callable[..., Any]
  loss_from_outputs: Callable[..., Any]
  core: Any
  gradient: str


def make_agent(config, obs_shape, num_actions) -> Agent:
  """Builds the agent from `config.network` and `config.loss`.

  Args:
    config: ConfigDict with `network` (encoder, encoder_sizes, feature_size,
      obs_scale, core, hidden_size, core_kwargs: {core name: keyword
      arguments of that core}), `gradient` ("rtrl" |
      "tbptt" | "bptt") and `loss` (discount, baseline_cost, entropy_cost,
      reward_clip, clip_rho, clip_pg_rho, lambda_).
    obs_shape: shape of one observation.
    num_actions: size of the discrete action space.
  """
  net, loss_cfg, gradient = config.network, config.loss, config.gradient
  if net.core not in CORES:
    raise ValueError(
        f"network.core must be one of {sorted(CORES)}, got {net.core!r}")
  if gradient not in GRADIENTS:
    raise ValueError(
        f"gradient must be one of {GRADIENTS}, got {gradient!r}")
  if gradient == "rtrl" and net.core not in rtrl_jax.CELLS:
    raise ValueError(
        f"gradient='rtrl' needs a core with exact RTRL {sorted(rtrl_jax.CELLS)}, "
        f"got network.core={net.core!r} (use gradient='tbptt')")
  core_kwargs = dict(net.get("core_kwargs", {}).get(net.core, {}))
  try:
    core = CORES[net.core](net.hidden_size, **core_kwargs)
  except TypeError as error:
    raise ValueError(
        f"network.core_kwargs.{net.core}={core_kwargs} does not fit "
        f"{CORES[net.core].__name__}: {error}") from error
  if net.encoder == "mlp":
    encoder = MLPEncoder(tuple(net.encoder_sizes), net.obs_scale)
  elif net.encoder == "impala":
    encoder = ImpalaEncoder(feature_size=net.feature_size)
  else:
    raise ValueError(
        f"network.encoder must be 'mlp' or 'impala', got {net.encoder!r}")
  track_sensitivities = gradient == "rtrl"
  reward_clip = loss_cfg.reward_clip

  def init(key):
    k_enc, k_core, k_pi, k_v = jax.random.split(key, 4)
    dummy = jnp.zeros((1,) + tuple(obs_shape), jnp.float32)
    encoder_params = encoder.init(k_enc, dummy)
    features = encoder.apply(encoder_params, dummy).shape[-1]
    head = lambda k, out, scale: {
        "w": scale * jax.random.normal(k, (core.hidden_size, out)) /
             jnp.sqrt(core.hidden_size),
        "b": jnp.zeros((out,))}
    return {"encoder": encoder_params,
            "core": core.init(k_core, features + 1),
            "policy": head(k_pi, num_actions, 0.01),
            "value": head(k_v, 1, 1.0)}

  def initial_core_state(params, batch_size, sensitivities=True):
    """sensitivities=False: a state for acting only (evaluation), without
    the RTRL sensitivities that only gradients need."""
    return core.initial_state(params["core"], batch_size,
                              sensitivities=track_sensitivities
                              and sensitivities)

  def core_inputs(params, obs, prev_reward):
    """[..., B, obs] → [..., B, features + 1]."""
    # The encoder sees one flat batch, flattened B-major: with B sharded over
    # devices ([T, B] in a learner) each device's examples stay contiguous,
    # so each device encodes only its own (T-major flattening makes XLA
    # gather every observation onto every device first).
    batch_major = jnp.moveaxis(obs, -len(obs_shape) - 1, 0)
    lead = batch_major.shape[:-len(obs_shape)]
    features = encoder.apply(params["encoder"],
                             batch_major.reshape((-1,) + tuple(obs_shape)))
    features = features.reshape(lead + features.shape[-1:])
    features = jnp.moveaxis(features, 0, -2)
    return jnp.concatenate([features, prev_reward[..., None]], -1)

  def heads(params, hidden):
    logits = hidden @ params["policy"]["w"] + params["policy"]["b"]
    value = (hidden @ params["value"]["w"] + params["value"]["b"])[..., 0]
    return logits, value

  def run_core(method, params, state, inputs, resets, keep_sensitivities):
    if method == "rtrl":
      return rtrl_jax.rtrl(core, params["core"], state, inputs, resets,
                           advance_sensitivities=keep_sensitivities)
    if method == "tbptt":
      return rtrl_jax.bptt(core, params["core"], jax.lax.stop_gradient(state),
                           inputs, resets)
    if method == "bptt":
      return rtrl_jax.bptt(core, params["core"], state, inputs, resets)
    raise ValueError(f"method must be rtrl, tbptt or bptt, got {method!r}")

  def unroll(params, state, obs, prev_reward, reset, method=gradient,
             keep_sensitivities=True):
    """Core over T steps from `state`: (logits [T,B,A], values [T,B], state).

    keep_sensitivities=False (the learner) skips advancing the RTRL
    sensitivities: the gradient is unchanged, the returned state has none.
    """
    inputs = core_inputs(params, obs, prev_reward)
    hidden, state = run_core(method, params, state, inputs, reset,
                             keep_sensitivities)
    logits, values = heads(params, hidden)
    return logits, values, state

  def act(params, state, obs, prev_reward, reset, key):
    """One actor step for B environments: (new state, ActorOutput). A state
    without sensitivities steps the same forward pass without them."""
    method = gradient if state.sensitivities is not None else "bptt"
    logits, values, state = unroll(params, state, obs[None], prev_reward[None],
                                   reset[None], method=method)
    logits, value = logits[0], values[0]
    action = jax.random.categorical(key, logits).astype(jnp.int32)
    return state, ActorOutput(action, logits, value)

  def value_of(params, state, obs, prev_reward):
    """V of one more step from `state` (no reset, no sensitivities)."""
    state = state._replace(sensitivities=None)
    _, values, _ = unroll(params, state, obs[None], prev_reward[None],
                          jnp.zeros(prev_reward.shape, bool)[None],
                          method="bptt")
    return values[0]

  def loss_from_outputs(logits, values, trajectory):
    """Loss of one unroll from the learner's logits [M+1,B,A], values [M+1,B]."""
    traj = trajectory
    chex.assert_rank([traj.action, traj.reward, traj.prev_reward], [2, 2, 2])
    chex.assert_equal_shape_prefix([traj.obs, traj.prev_reward, traj.reset], 2)
    logits = logits[:-1]                         # step M only bootstraps
    reward = jnp.clip(traj.reward, -reward_clip, reward_clip)
    if traj.truncation_value is None and loss_cfg.bootstrap_truncated:
      if traj.valid is None:
        raise ValueError("Trajectory.truncation_value=None needs `valid`: the "
                         "step after a truncated one must be the ignored step "
                         "that holds the episode's final observation")
      # A time limit does not end the MDP: the truncated step continues to
      # the final observation at t+1 (discount γ, V-trace's own next value,
      # computed by the learner); ρ = 0 at that ignored step stops the trace.
      done = traj.terminated
    else:
      done = jnp.logical_or(traj.terminated, traj.truncated)
      if traj.truncation_value is not None:
        reward = reward + loss_cfg.discount * jnp.where(
            traj.truncated, traj.truncation_value, 0.0)
    discount = loss_cfg.discount * (1.0 - done.astype(reward.dtype))
    log_pi = jax.nn.log_softmax(logits)
    log_mu = jax.nn.log_softmax(traj.behaviour_logits)
    take = lambda lp: jnp.take_along_axis(lp, traj.action[..., None], -1)[..., 0]
    rho = jnp.exp(take(log_pi) - take(log_mu))
    entropy_terms = jnp.sum(jnp.exp(log_pi) * log_pi, -1)
    if traj.valid is not None:
      # ρ = 0 on an ignored step: its TD error, trace coefficient and
      # policy-gradient advantage vanish, so v^s = V there and nothing flows
      # through it. The step before it ended an episode: terminated
      # (discount 0: nothing reads this step) or truncated (its target reads
      # V here, the final observation's value, and only that). Only the
      # entropy needs masking.
      rho = jnp.where(traj.valid, rho, 0.0)
      entropy_terms = jnp.where(traj.valid, entropy_terms, 0.0)
    out = vtrace(values[:-1], jax.lax.stop_gradient(values[1:]), reward,
                 discount, jax.lax.stop_gradient(rho), loss_cfg.lambda_,
                 loss_cfg.clip_rho, loss_cfg.clip_pg_rho)
    pg_loss = -jnp.sum(take(log_pi) * jax.lax.stop_gradient(out.pg_advantage))
    baseline_loss = 0.5 * jnp.sum(out.errors ** 2)
    entropy_loss = jnp.sum(entropy_terms)   # = -entropy
    total = (pg_loss + loss_cfg.baseline_cost * baseline_loss
             + loss_cfg.entropy_cost * entropy_loss)
    return total, {"loss/total": total, "loss/policy": pg_loss,
                   "loss/baseline": baseline_loss, "loss/entropy": entropy_loss}

  def loss(params, trajectory, method=gradient):
    """Total loss of one unroll and its parts (sums over T and B)."""
    # The actor already carries the next unroll's sensitivities.
    logits, values, _ = unroll(params, trajectory.initial_state,
                               trajectory.obs, trajectory.prev_reward,
                               trajectory.reset, method,
                               keep_sensitivities=False)
    return loss_from_outputs(logits, values, trajectory)

  return Agent(init, initial_core_state, act, value_of, unroll, loss,
               loss_from_outputs, core, gradient)


def vtrace(v_tm1, v_t, r_t, discount_t, rho_tm1, lambda_=1.0, clip_rho=1.0,
           clip_pg_rho=1.0):
  """V-trace errors and policy-gradient advantages for [T, B] inputs.

  rlax's single-sequence `vtrace_td_error_and_advantage`, mapped over B:
  with δ_t = ρ̄_t (r_t + γ_t V(x_{t+1}) − V(x_t)) and c_t = λ min(c̄, ρ_t),
  v^s_t − V(x_t) = δ_t + γ_t c_t (v^s_{t+1} − V(x_{t+1})), errors = v^s − V,
  A^pg_t = min(ρ̄_pg, ρ_t)(r_t + γ_t v^s_{t+1} − V(x_t)). Espeholt et al. 2018.
  """
  single = lambda v_tm1, v_t, r, d, rho: rlax.vtrace_td_error_and_advantage(
      v_tm1, v_t, r, d, rho, lambda_=lambda_, clip_rho_threshold=clip_rho,
      clip_pg_rho_threshold=clip_pg_rho)
  return jax.vmap(single, in_axes=1, out_axes=1)(v_tm1, v_t, r_t, discount_t,
                                                 rho_tm1)


def make_optimizer(config, total_updates):
  """RMSProp with PyTorch semantics, global-norm clipping, linear LR decay.

  PyTorch's RMSProp divides by (sqrt(ν) + ε) with ν initialised at 0: that is
  optax's `eps_in_sqrt=False, initial_scale=0` (optax's default puts ε inside
  the square root, which is a different optimizer at ε = 0.01).
  """
  opt = config.optimizer
  lr = (optax.linear_schedule(opt.learning_rate, 0.0, total_updates)
        if opt.anneal_lr else opt.learning_rate)
  transform = optax.chain(
      optax.clip_by_global_norm(opt.max_grad_norm),
      optax.rmsprop(lr, decay=opt.decay, eps=opt.eps, eps_in_sqrt=False,
                    initial_scale=0.0))
  if opt.freeze_encoder:
    # Pretrain-then-freeze (the paper's DMLab setting): no update to the
    # encoder; it keeps the weights it was initialised or loaded with.
    labels = lambda params: {k: ("frozen" if k == "encoder" else "train")
                             for k in params}
    transform = optax.multi_transform(
        {"train": transform, "frozen": optax.set_to_zero()}, labels)
  return transform


def make_learner_step(agent, optimizer):
  """The learner update on one unroll, shared by the Anakin and Sebulba systems.

  learner_step(params, opt_state, trajectory) -> (params, opt_state, metrics)
  """

  def learner_step(params, opt_state, trajectory):
    grads, metrics = jax.grad(agent.loss, has_aux=True)(params, trajectory)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    metrics["grad_norm"] = optax.tree.norm(grads)
    return params, opt_state, metrics

  return learner_step
