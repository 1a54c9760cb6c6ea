r"""R2AC: IMPALA / V-trace actor-critic with an RTRL-trained recurrent core.

Irie et al. (ICLR 2024), Sec. 3.2, on top of IMPALA (Espeholt et al. 2018).

Network: x(t) = [encoder(o(t)), clip(r(t-1))] → core → h(t) → (π logits, V).

Data flow (as the paper's torchbeast code):

* The actor steps the core one step at a time with its copy of the
  parameters, carrying the state *and* (for gradient="rtrl") the
  sensitivities, resetting both where an episode starts. (The Anakin
  rollout steps the state only, records the core inputs x(t) and resets,
  and advances the sensitivities over the unroll afterwards in one call,
  `advance_sensitivities`: the same recursion, one pass over S per unroll
  for the eLSTM.)
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
* Truncated (time-limit) steps are not terminal for the MDP: the learner
  uses r_t + γ V(final_obs) as the reward of that step (with discount 0),
  i.e. it bootstraps instead of treating the cut as a real end. V(final_obs)
  is `Trajectory.truncation_value`, the actor's (Anakin: JAX environments
  reset within the step, so the final observation is not in the
  trajectory), or, where that is None, the learner's own value of step
  t+1, which holds the final observation (Sebulba: envpool's ignored step).
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

import functools
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
from rtrl_jax.rl.episodes import clip_reward

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
  # [M, B] V(final observation) where truncated: the bootstrap of a cut
  # episode. None: the step after a truncated one holds the final
  # observation (envpool's ignored step), and the learner's own value there
  # is the bootstrap.
  truncation_value: Optional[jax.Array]
  # [M, B] False where the environment ignored the action (envpool's
  # next-step auto-reset: the step after an episode's end only resets);
  # all True for JAX environments (they reset in the same step).
  valid: jax.Array


class LossParams(NamedTuple):
  """The loss's hyper-parameters (torchbeast defaults).

  reward_clip: rewards are clipped to [-reward_clip, reward_clip] in the
    loss and in the core's reward input (`rtrl_jax.rl.episodes.clip_reward`).
  bootstrap_truncated: a time-limit cut bootstraps from V of the final
    observation (True) or is treated as a real end (False).
  """
  discount: float = 0.99
  baseline_cost: float = 0.5
  entropy_cost: float = 0.01
  reward_clip: float = 1.0
  clip_rho: float = 1.0
  clip_pg_rho: float = 1.0
  lambda_: float = 1.0
  bootstrap_truncated: bool = True


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
  encoder: Any
  gradient: str
  loss_params: LossParams
  # act = core_inputs + act_on_inputs; an actor that records the core
  # inputs x(t) advances S over its unroll afterwards (rtrl_jax/rl/anakin.py).
  core_inputs: Callable[..., jax.Array]
  act_on_inputs: Callable[..., Any]
  advance_sensitivities: Callable[..., Any]


def check_core(core_name, gradient):
  """Raises ValueError unless `core_name` and `gradient` go together.

  The one check of these names: `make_core`/`make_agent` call it, and so do
  the config rules (experiments/configs/parts.py).
  """
  if core_name not in CORES:
    raise ValueError(
        f"network.core must be one of {sorted(CORES)}, got {core_name!r}")
  if gradient not in GRADIENTS:
    raise ValueError(
        f"gradient must be one of {GRADIENTS}, got {gradient!r}")
  if gradient == "rtrl" and core_name not in rtrl_jax.CELLS:
    raise ValueError(
        f"gradient='rtrl' needs a core with exact RTRL {sorted(rtrl_jax.CELLS)}, "
        f"got network.core={core_name!r} (use gradient='tbptt')")


def make_core(name, hidden_size, **kwargs):
  """The core `CORES[name](hidden_size, **kwargs)`, with errors naming it."""
  if name not in CORES:
    raise ValueError(f"network.core must be one of {sorted(CORES)}, got {name!r}")
  try:
    return CORES[name](hidden_size, **kwargs)
  except TypeError as error:
    raise ValueError(
        f"network.core_kwargs.{name}={kwargs} does not fit "
        f"{CORES[name].__name__}: {error}") from error


ENCODERS = ("mlp", "impala")


def make_encoder(name, encoder_sizes=(32,), obs_scale=1.0, feature_size=256):
  """"mlp" (hidden sizes, observation scale) or "impala" (pixels)."""
  if name == "mlp":
    return MLPEncoder(tuple(encoder_sizes), obs_scale)
  if name == "impala":
    return ImpalaEncoder(feature_size=feature_size)
  raise ValueError(f"network.encoder must be one of {ENCODERS}, got {name!r}")


def make_agent(core, encoder, obs_shape, num_actions, gradient="rtrl",
               loss_params=LossParams()) -> Agent:
  """The agent from its parts.

  Args:
    core: a cell (`make_core`): one of rtrl_jax.CELLS for gradient="rtrl".
    encoder: a flax module mapping [B, *obs_shape] to [B, features]
      (`make_encoder`).
    obs_shape: shape of one observation.
    num_actions: size of the discrete action space.
    gradient: "rtrl" | "tbptt" | "bptt" (see the module docstring).
    loss_params: `LossParams`.
  """
  known = {cls: name for name, cls in CORES.items()}
  if type(core) in known:
    check_core(known[type(core)], gradient)
  elif gradient not in GRADIENTS:   # a cell of the user's own
    raise ValueError(f"gradient must be one of {GRADIENTS}, got {gradient!r}")
  net = _Network(core, encoder, tuple(obs_shape), num_actions, gradient)
  partial = functools.partial
  return Agent(
      init=partial(_init, net), initial_core_state=partial(
          _initial_core_state, net),
      act=partial(_act, net), value_of=partial(_value_of, net),
      unroll=partial(_unroll, net),
      loss=partial(_loss, net, loss_params),
      loss_from_outputs=partial(loss_from_outputs, loss_params),
      core=core, encoder=encoder, gradient=gradient, loss_params=loss_params,
      core_inputs=partial(_core_inputs, net),
      act_on_inputs=partial(_act_on_inputs, net),
      advance_sensitivities=partial(_advance_sensitivities, net))


class _Network(NamedTuple):
  """The static parts the agent's functions share."""
  core: Any
  encoder: Any
  obs_shape: tuple
  num_actions: int
  gradient: str


def _init(net, key):
  k_enc, k_core, k_pi, k_v = jax.random.split(key, 4)
  dummy = jnp.zeros((1,) + net.obs_shape, jnp.float32)
  encoder_params = net.encoder.init(k_enc, dummy)
  features = net.encoder.apply(encoder_params, dummy).shape[-1]
  hidden_size = net.core.hidden_size
  head = lambda k, out, scale: {
      "w": scale * jax.random.normal(k, (hidden_size, out)) /
           jnp.sqrt(hidden_size),
      "b": jnp.zeros((out,))}
  return {"encoder": encoder_params,
          "core": net.core.init(k_core, features + 1),
          "policy": head(k_pi, net.num_actions, 0.01),
          "value": head(k_v, 1, 1.0)}


def _initial_core_state(net, params, batch_size, sensitivities=True):
  """sensitivities=False: a state for acting only (evaluation), without
  the RTRL sensitivities that only gradients need."""
  return net.core.initial_state(
      params["core"], batch_size,
      sensitivities=net.gradient == "rtrl" and sensitivities)


def _core_inputs(net, params, obs, prev_reward):
  """[..., B, obs] → [..., B, features + 1]."""
  # The encoder sees one flat batch, flattened B-major: with B sharded over
  # devices ([T, B] in a learner) each device's examples stay contiguous,
  # so each device encodes only its own (T-major flattening makes XLA
  # gather every observation onto every device first).
  obs_rank = len(net.obs_shape)
  batch_major = jnp.moveaxis(obs, -obs_rank - 1, 0)
  lead = batch_major.shape[:-obs_rank]
  features = net.encoder.apply(params["encoder"],
                               batch_major.reshape((-1,) + net.obs_shape))
  features = features.reshape(lead + features.shape[-1:])
  features = jnp.moveaxis(features, 0, -2)
  return jnp.concatenate([features, prev_reward[..., None]], -1)


def _heads(params, hidden):
  logits = hidden @ params["policy"]["w"] + params["policy"]["b"]
  value = (hidden @ params["value"]["w"] + params["value"]["b"])[..., 0]
  return logits, value


def _run_core(core, method, params, state, inputs, resets, keep_sensitivities):
  if method == "rtrl":
    return rtrl_jax.rtrl(core, params["core"], state, inputs, resets,
                         advance_sensitivities=keep_sensitivities)
  if method == "tbptt":
    return rtrl_jax.bptt(core, params["core"], jax.lax.stop_gradient(state),
                         inputs, resets)
  if method == "bptt":
    return rtrl_jax.bptt(core, params["core"], state, inputs, resets)
  raise ValueError(f"method must be rtrl, tbptt or bptt, got {method!r}")


def _unroll(net, params, state, obs, prev_reward, reset, method=None,
            keep_sensitivities=True):
  """Core over T steps from `state`: (logits [T,B,A], values [T,B], state).

  method: "rtrl" | "tbptt" | "bptt" (default: the agent's gradient).
  keep_sensitivities=False (the learner) skips advancing the RTRL
  sensitivities: the gradient is unchanged, the returned state has none.
  """
  inputs = _core_inputs(net, params, obs, prev_reward)
  hidden, state = _run_core(net.core, method or net.gradient, params, state,
                            inputs, reset, keep_sensitivities)
  logits, values = _heads(params, hidden)
  return logits, values, state


def _act(net, params, state, obs, prev_reward, reset, key):
  """One actor step for B environments: (new state, ActorOutput). A state
  without sensitivities steps the same forward pass without them."""
  inputs = _core_inputs(net, params, obs, prev_reward)
  return _act_on_inputs(net, params, state, inputs, reset, key)


def _act_on_inputs(net, params, state, inputs, reset, key):
  """`_act` from the core inputs x(t) [B, D] (`_core_inputs`)."""
  method = net.gradient if state.sensitivities is not None else "bptt"
  hidden, state = _run_core(net.core, method, params, state, inputs[None],
                            reset[None], keep_sensitivities=True)
  logits, values = _heads(params, hidden)
  logits, value = logits[0], values[0]
  action = jax.random.categorical(key, logits).astype(jnp.int32)
  return state, ActorOutput(action, logits, value)


def _advance_sensitivities(net, params, state, inputs, resets):
  """S after T steps: `state.sensitivities` advanced over the core inputs
  x [T, B, D] and resets [T, B] that the core saw from `state` (`rtrl`'s
  forward pass: for a cell with `sensitivity_factors` one pass over S per
  chunk of up to `core.ONE_PASS_STEPS` steps, `core.NARROW_INPUT_STEPS` for
  an x(t) of at most `core.ELEMENTWISE_WIDTH` features, else step by
  step)."""
  _, state = rtrl_jax.rtrl(net.core, params["core"], state, inputs, resets)
  return state.sensitivities


def _value_of(net, params, state, obs, prev_reward):
  """V of one more step from `state` (no reset, no sensitivities)."""
  state = state._replace(sensitivities=None)
  _, values, _ = _unroll(net, params, state, obs[None], prev_reward[None],
                         jnp.zeros(prev_reward.shape, bool)[None],
                         method="bptt")
  return values[0]


def _loss(net, loss_params, params, trajectory, method=None):
  """Total loss of one unroll and its parts (sums over T and B)."""
  # The actor already carries the next unroll's sensitivities.
  logits, values, _ = _unroll(net, params, trajectory.initial_state,
                              trajectory.obs, trajectory.prev_reward,
                              trajectory.reset, method,
                              keep_sensitivities=False)
  return loss_from_outputs(loss_params, logits, values, trajectory)


def loss_from_outputs(loss_params, logits, values, trajectory):
  """Loss of one unroll from the learner's logits [M+1,B,A], values [M+1,B]."""
  loss_cfg, reward_clip = loss_params, loss_params.reward_clip
  traj = trajectory
  chex.assert_rank([traj.action, traj.reward, traj.prev_reward], [2, 2, 2])
  chex.assert_equal_shape_prefix([traj.obs, traj.prev_reward, traj.reset], 2)
  logits = logits[:-1]                         # step M only bootstraps
  reward = clip_reward(traj.reward, reward_clip)
  done = jnp.logical_or(traj.terminated, traj.truncated)
  if loss_cfg.bootstrap_truncated:
    # A time limit does not end the MDP: the cut step's reward gets
    # γ·V(final observation) and its trace ends there (discount 0).
    # truncation_value=None: the final observation is the ignored step
    # t+1's (envpool), whose value the learner has just computed.
    bootstrap = (jax.lax.stop_gradient(values[1:])
                 if traj.truncation_value is None else traj.truncation_value)
    reward = reward + loss_cfg.discount * jnp.where(traj.truncated,
                                                    bootstrap, 0.0)
  discount = loss_cfg.discount * (1.0 - done.astype(reward.dtype))
  log_pi = jax.nn.log_softmax(logits)
  log_mu = jax.nn.log_softmax(traj.behaviour_logits)
  take = lambda lp: jnp.take_along_axis(lp, traj.action[..., None], -1)[..., 0]
  # ρ = 0 on an ignored step (valid = False): its TD error, trace
  # coefficient and policy-gradient advantage vanish, so v^s = V there and
  # nothing flows through it; the step before it ended an episode
  # (discount 0). Only the entropy needs masking.
  rho = jnp.where(traj.valid, jnp.exp(take(log_pi) - take(log_mu)), 0.0)
  entropy_terms = jnp.where(traj.valid,
                            jnp.sum(jnp.exp(log_pi) * log_pi, -1), 0.0)
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


def learning_rate_schedule(learning_rate, total_updates, anneal_lr=True):
  """update -> learning rate: linear decay to 0 at `total_updates`, or
  constant. The optimizer and the logged `learning_rate` both use it."""
  if not anneal_lr:
    return optax.constant_schedule(learning_rate)
  return optax.linear_schedule(learning_rate, 0.0, max(1, total_updates))


def make_optimizer(learning_rate, total_updates, anneal_lr=True, decay=0.99,
                   eps=0.01, max_grad_norm=40.0, freeze_encoder=False):
  """RMSProp with PyTorch semantics, global-norm clipping, linear LR decay.

  PyTorch's RMSProp divides by (sqrt(ν) + ε) with ν initialised at 0: that is
  optax's `eps_in_sqrt=False, initial_scale=0` (optax's default puts ε inside
  the square root, which is a different optimizer at ε = 0.01).
  freeze_encoder: pretrain-then-freeze (the paper's DMLab setting): no
  update to the encoder; it keeps the weights it was initialised or loaded
  with.
  """
  lr = learning_rate_schedule(learning_rate, total_updates, anneal_lr)
  if not anneal_lr:
    lr = learning_rate    # a float: the same updates, a simpler opt_state
  transform = optax.chain(
      optax.clip_by_global_norm(max_grad_norm),
      optax.rmsprop(lr, decay=decay, eps=eps, eps_in_sqrt=False,
                    initial_scale=0.0))
  if freeze_encoder:
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
