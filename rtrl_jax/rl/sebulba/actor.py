"""An actor thread: envpool environments stepped in env groups, the policy on
the actor device, unrolls shipped to the learner.

Per env group and step the thread runs `receive` (envpool's result of the
group's last step, recorded, and the group advanced to its next inputs), then
`act` (the policy step, recorded, and the actions sent to envpool). Every
`unroll_length` steps `ship` turns the groups' records into one `Trajectory`
on the learner devices and queues it. `run_actor` is that loop.

envpool resets an ended environment on its *next* step and ignores that
step's action: the actor keeps that step with `valid = False`, its core
reading the ended episode's final observation; the step after starts the new
episode (reset, zero reward input). See the package docstring.
"""

import dataclasses
import itertools
import threading
import traceback
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from rtrl_jax.rl import episodes as episodes_lib
from rtrl_jax.rl.agents.r2ac import Trajectory
from rtrl_jax.rl.episodes import EpisodeStats
from rtrl_jax.rl.sebulba.channels import (ParameterServer, TrajectoryQueue,
                                          Unroll)
from rtrl_jax.rl.sebulba.timing import Timings


# --- envpool's side ----------------------------------------------------------

def episode_flags(terminated, truncated, elapsed_step, max_episode_steps):
  """(done, terminated, truncated) of one envpool step, from elapsed_step.

  done = envpool's terminated | truncated; truncated = done and the time
  limit is reached; terminated = done and not truncated (envpool #239).
  """
  done = np.logical_or(terminated, truncated)
  at_limit = np.asarray(elapsed_step) >= max_episode_steps
  cut = np.logical_and(done, at_limit)
  return done, np.logical_and(done, ~cut), cut


def recv_step(env, suite):
  """envpool's results of one batch, in env_id order: (env_ids, agent
  observations, float32 rewards, done, terminated, truncated), the flags
  from `episode_flags`."""
  raw, reward, term, trunc, info = env.recv()
  obs, reward = suite.observation(raw), np.asarray(reward, np.float32)
  env_ids, elapsed = np.asarray(info["env_id"]), info["elapsed_step"]
  if np.any(np.diff(env_ids) < 0):                    # envpool's order
    order = np.argsort(env_ids)
    env_ids, obs, reward, term, trunc, elapsed = (
        env_ids[order], obs[order], reward[order], term[order], trunc[order],
        elapsed[order])
  return (env_ids, obs, reward, *episode_flags(term, trunc, elapsed,
                                               suite.max_episode_steps))


def check_group(env_ids, expected):
  """Raises unless envpool returned the env group that is due."""
  if not np.array_equal(env_ids, expected):
    raise RuntimeError(
        f"envpool returned env_ids {env_ids.tolist()} where the group "
        f"{np.asarray(expected).tolist()} was due: env groups rely on envpool "
        "answering sends in order (sebulba.envpool_threads=1)")


# --- the policy --------------------------------------------------------------

class Policy(NamedTuple):
  """The agent's functions an actor calls, compiled once per system."""
  # (params, core_state, obs, prev_reward, reset, key) -> (core_state,
  # action, logits, key); the core state is donated.
  act: Callable[..., Any]
  initial_state: Callable[[Any, int], Any]   # (params, num_envs) -> state


def make_policy(agent) -> Policy:
  """`agent.act` and `agent.initial_core_state`, jitted for the actors."""

  def act_step(params, core_state, obs, prev_reward, reset, key):
    key, k_act = jax.random.split(key)
    core_state, out = agent.act(params, core_state, obs, prev_reward, reset,
                                k_act)
    return core_state, out.action, out.logits, key

  # Donating the core state lets XLA write the new sensitivities over the
  # old ones: allocating fresh sensitivity buffers every step can cost more
  # than the step itself.
  return Policy(act=jax.jit(act_step, donate_argnums=1),
                initial_state=jax.jit(agent.initial_core_state,
                                      static_argnums=1))


# The policy step reuses a group's core state buffers: unrolls keep copies.
_copy_state = jax.jit(lambda state: jax.tree.map(jnp.copy, state))


@jax.jit
def _join_states(states):
  return jax.tree.map(lambda *xs: jnp.concatenate(xs, 0), *states)


@jax.jit
def _join_logits(per_group):
  return jnp.concatenate([jnp.stack(steps) for steps in per_group], 1)


# --- one actor thread ----------------------------------------------------------

class ActorSettings(NamedTuple):
  """The config's choices for every actor thread."""
  seed: int
  num_envs: int         # per thread
  group_size: int       # envs per env group (envpool's batch_size)
  unroll_length: int
  synchronous: bool     # unroll n waits for parameter version n
  reward_clip: float


class Actor(NamedTuple):
  """Everything one actor thread uses, given explicitly."""
  thread_id: int
  device: Any                 # the actor device its policy runs on
  start_update: int           # the learner's update when the thread started
  settings: ActorSettings
  suite: Any                  # envpool_envs.Suite
  policy: Policy
  server: ParameterServer
  queue: TrajectoryQueue
  shardings: Trajectory       # of this process's learner devices
  timings: Timings
  stop: threading.Event
  # Called with (thread_id, numpy Trajectory) before each transfer (tests).
  trajectory_hook: Optional[Callable[[int, Trajectory], None]] = None


class EnvGroup:
  """One of an actor thread's env groups: the inputs of its next step, and
  the running return and length of each environment's episode."""

  def __init__(self, env_ids, obs, size):
    self.env_ids, self.obs = env_ids, obs
    self.prev_reward = np.zeros((size,), np.float32)
    self.reset = np.ones((size,), bool)      # a new episode starts
    self.valid = np.ones((size,), bool)      # envpool will act on the action
    self.core_state = None
    self.episode_return = np.zeros((size,), np.float64)
    self.episode_length = np.zeros((size,), np.int64)


@dataclasses.dataclass
class GroupRecord:
  """One env group's part of the current unroll, step by step."""
  initial_state: Any            # the core state before the unroll's 1st step
  obs: list = dataclasses.field(default_factory=list)
  prev_reward: list = dataclasses.field(default_factory=list)
  reset: list = dataclasses.field(default_factory=list)
  valid: list = dataclasses.field(default_factory=list)
  action: list = dataclasses.field(default_factory=list)
  logits: list = dataclasses.field(default_factory=list)
  reward: list = dataclasses.field(default_factory=list)
  terminated: list = dataclasses.field(default_factory=list)
  truncated: list = dataclasses.field(default_factory=list)


def receive(env, actor, group, record) -> EpisodeStats:
  """The result of `group`'s last step: recorded, and the group advanced to
  the inputs of its next step. Returns the episodes the step ended."""
  with actor.timings.timed("actor/env_recv"):
    env_ids, obs, reward, done, terminated, truncated = recv_step(
        env, actor.suite)
  check_group(env_ids, group.env_ids)
  acted = group.valid          # False: envpool only reset the environment
  done, terminated, truncated = (done & acted, terminated & acted,
                                 truncated & acted)
  # After an end, the next step's action is ignored (envpool resets then)
  # and the core reads the final observation: the learner's value there is a
  # truncated step's bootstrap (Trajectory.truncation_value=None). The step
  # after starts the new episode with a reset core and a zero reward input.
  step = episodes_lib.step_episodes(
      reward, done, next_reset=~acted, episode_return=group.episode_return,
      episode_length=group.episode_length,
      reward_clip=actor.settings.reward_clip, acted=acted)
  record.reward.append(np.where(acted, reward, 0.0).astype(np.float32))
  record.terminated.append(terminated)
  record.truncated.append(truncated)
  group.obs, group.prev_reward = obs, step.prev_reward
  group.episode_return = step.episode_return
  group.episode_length = step.episode_length
  group.reset, group.valid = ~acted, ~done
  return step.stats


def act(env, actor, group, record, params, key):
  """`group`'s policy step: recorded and sent to envpool. Returns the next
  key."""
  record.obs.append(group.obs)
  record.prev_reward.append(group.prev_reward)
  record.reset.append(group.reset)
  record.valid.append(group.valid)
  with actor.timings.timed("actor/inference"):
    group.core_state, action, logits, key = actor.policy.act(
        params, group.core_state, group.obs, group.prev_reward, group.reset,
        key)
    action = np.asarray(action)
  record.action.append(action)
  record.logits.append(logits)
  with actor.timings.timed("actor/env_send"):
    env.send(action, group.env_ids)
  return key


def begin_unroll(env, actor, group, params, key):
  """(A new unroll's record for `group`, from its first step; next key)."""
  record = GroupRecord(initial_state=_copy_state(group.core_state))
  return record, act(env, actor, group, record, params, key)


def record_bootstrap(group, record):
  """The inputs after the unroll's last step: the learner's bootstrap step."""
  record.obs.append(group.obs)
  record.prev_reward.append(group.prev_reward)
  record.reset.append(group.reset)


def make_trajectory(records) -> Trajectory:
  """The unroll of every env group, as one Trajectory (envs in env_id
  order: the groups hold consecutive env_ids)."""
  joined = lambda name: np.concatenate(
      [np.stack(getattr(record, name)) for record in records], 1)
  return Trajectory(
      initial_state=_join_states([r.initial_state for r in records]),
      obs=joined("obs"), prev_reward=joined("prev_reward"),
      reset=joined("reset"), action=joined("action").astype(np.int32),
      behaviour_logits=_join_logits([r.logits for r in records]),
      reward=joined("reward"), terminated=joined("terminated"),
      truncated=joined("truncated"), truncation_value=None,
      valid=joined("valid"))


def ship(actor, records, version, episodes):
  """Hands the unroll to the learner; False if the system stopped."""
  with actor.timings.timed("actor/transfer"):
    trajectory = make_trajectory(records)
    if actor.trajectory_hook is not None:
      actor.trajectory_hook(actor.thread_id, jax.device_get(trajectory))
    trajectory = jax.device_put(trajectory, actor.shardings)
  unroll = Unroll(trajectory, version, EpisodeStats(*map(float, episodes)))
  with actor.timings.timed("actor/queue_put"):
    return actor.queue.put(unroll)


def fetch_params(actor, unroll):
  """(params, version) for unroll number `unroll` of this thread: version
  start_update + unroll if synchronous, else the newest. (None, -1) if the
  system stops first."""
  with actor.timings.timed("actor/params_wait"):
    min_version = (actor.start_update + unroll
                   if actor.settings.synchronous else 0)
    return actor.server.get(actor.device, min_version)


def first_groups(env, actor):
  """The env groups after envpool's reset, in env_id order."""
  size = actor.settings.group_size
  env.async_reset()
  groups = []
  for first_env in range(0, actor.settings.num_envs, size):
    env_ids, obs, *_ = recv_step(env, actor.suite)
    check_group(env_ids, np.arange(first_env, first_env + size))
    groups.append(EnvGroup(env_ids, obs, size))
  return groups


def actor_key(actor):
  """This thread's policy key: distinct per process, thread and session."""
  thread = 1 + 1000 * jax.process_index() + actor.thread_id
  key = jax.random.fold_in(jax.random.fold_in(
      jax.random.PRNGKey(actor.settings.seed), thread), actor.start_update)
  return jax.device_put(key, actor.device)


def run_actor(env, actor):
  """Steps `env` and ships unrolls until the system stops."""
  settings = actor.settings
  key = actor_key(actor)
  groups = first_groups(env, actor)
  params, version = fetch_params(actor, 0)
  if params is None:
    return
  for group in groups:
    # Committed to the actor device like every later core state, so the
    # policy step compiles once.
    group.core_state = jax.device_put(
        actor.policy.initial_state(params, settings.group_size), actor.device)
  records = []
  for group in groups:
    record, key = begin_unroll(env, actor, group, params, key)
    records.append(record)
  for unroll in itertools.count():
    episodes = EpisodeStats.zero()
    # Group g's policy runs while envpool steps the groups sent before it.
    for _ in range(1, settings.unroll_length):
      for group, record in zip(groups, records):
        episodes += receive(env, actor, group, record)
        key = act(env, actor, group, record, params, key)
    # The unroll's last step. Asynchronous: each group starts the next
    # unroll as soon as it has finished this one, so envpool keeps stepping
    # while the unroll ships. Synchronous: the next parameters exist only
    # once the learner has this unroll.
    next_records, next_params, next_version = [], None, -1
    for group, record in zip(groups, records):
      episodes += receive(env, actor, group, record)
      record_bootstrap(group, record)
      if not settings.synchronous:
        if next_params is None:
          next_params, next_version = fetch_params(actor, unroll + 1)
          if next_params is None:
            return
        next_record, key = begin_unroll(env, actor, group, next_params, key)
        next_records.append(next_record)
    if not ship(actor, records, version, episodes):
      return
    if settings.synchronous:
      next_params, next_version = fetch_params(actor, unroll + 1)
      if next_params is None:
        return
      for group in groups:
        next_record, key = begin_unroll(env, actor, group, next_params, key)
        next_records.append(next_record)
    records, params, version = next_records, next_params, next_version


def actor_thread(actor, errors):
  """The thread's target: its own envpool instance, `run_actor` on it. An
  exception is appended (with its traceback) to `errors` and stops the
  system, so the learner raises it instead of waiting for unrolls."""
  try:
    # A resumed run (start_update > 0) gets new episodes, not a replay of
    # the first session's levels and noops.
    settings = actor.settings
    env = actor.suite.make(
        settings.num_envs, settings.seed + 10007 * jax.process_index()
        + 1009 * actor.thread_id + 100003 * actor.start_update,
        batch_size=settings.group_size)
    try:
      run_actor(env, actor)
    finally:
      env.close()
  except BaseException:  # pylint: disable=broad-except
    errors.append(
        f"actor thread {actor.thread_id} died:\n{traceback.format_exc()}")
    actor.stop.set()
