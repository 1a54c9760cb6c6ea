"""Sebulba: R2AC with envpool actor threads and a sharded learner.

    system = make_system(config)                      # agent, suite, meshes
    state = system.init(jax.random.PRNGKey(seed))     # LearnerState
    system.start(state)                               # actor threads run
    state, metrics = system.train_step(state)         # one learner update
    system.stop()

Data flow (Podracer's Sebulba, Hessel et al. 2021, with R2AC's recurrent
actor as in Irie et al.'s torchbeast code):

* Actor threads (`sebulba.num_actor_threads` per process), each with its own
  envpool instance of `num_envs_per_thread` environments, call a jitted
  `agent.act` on their actor device. They carry per-environment core state
  *and RTRL sensitivities* on that device; both are reset where an episode
  starts (the `reset` input of `agent.act`).
* Env groups: a thread's environments are split into `sebulba.env_groups`
  groups of consecutive env_ids, envpool's batch_size = one group. The
  thread sends group g's actions and runs the policy on group g+1 while
  envpool's worker steps group g (with one worker, envpool answers sends in
  order; `check_group` fails loudly otherwise). 1 group: synchronous.
* envpool resets an ended environment on its *next* step and ignores that
  step's action. The actor keeps that step in the trajectory with
  `valid = False`: the core reads the ended episode's final observation, and
  the step after starts the new episode (reset, zero reward input). The loss
  gives ignored steps ρ = 0 and no entropy, which makes it equal to the loss
  of the trajectory without them (r2ac.py; tests/r2ac_test.py).
* Truncation is `done and info["elapsed_step"] >= max_episode_steps`
  (envpool #239: its own flags are not trusted); terminated = done and not
  truncated. A step that ends the MDP exactly at the limit counts as
  truncated. A truncated step bootstraps from V(final observation), which
  the learner computes anyway at the ignored step after it
  (`truncation_value=None` in the Trajectory): the actor runs no extra
  value pass, and the bootstrap uses the learner's parameters like every
  other V-trace target.
* Each unroll of M steps (of every group) becomes a `Trajectory` (its
  initial core state and sensitivities, M+1 observations, envs in env_id
  order) that the actor thread moves onto the
  learner devices with `jax.device_put` onto a `NamedSharding` (environment
  axis split over the "data" axis of the learner mesh) and hands to the
  learner through a bounded queue.
* The learner takes one unroll from every actor thread (of every process),
  joins them along the environment axis without moving data between devices
  (`jax.make_array_from_single_device_arrays`) and applies
  `r2ac.make_learner_step`, the same function as the Anakin system, jitted
  with replicated parameters. The loss is a sum over environments, so the
  update equals one on the concatenated batch.
* A `ParameterServer` copies each new parameter version to every actor device
  (blocking until the copy is done, so actors never stall on it). Actors take
  the latest version at the start of each unroll; `synchronous=True` makes
  unroll n wait for version n (zero policy lag, deterministic). Policy lag =
  learner version − behaviour version, logged.

Errors: an actor thread that raises stops the system; the learner raises
`ActorError` carrying the thread's traceback (no hang). Multi-host: call
`initialize_distributed` first; the learner mesh then spans the learner
devices of every process, each process runs its own actors.
"""

import collections
import itertools
import queue
import threading
import time
import traceback
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from rtrl_jax.rl import envpool_envs
from rtrl_jax.rl import from_config
from rtrl_jax.rl.agents.r2ac import Trajectory, make_learner_step

POLL_SECONDS = 0.05


class ActorError(RuntimeError):
  """An actor thread died; the message holds its traceback."""


class LearnerState(NamedTuple):
  params: Any
  opt_state: Any
  update: jax.Array   # learner updates done (= parameter version)


class Timings:
  """Thread-safe per-phase wall-clock totals, read as means over a window."""

  def __init__(self):
    self._lock = threading.Lock()
    self._sums, self._counts = {}, {}

  def add(self, name, seconds):
    with self._lock:
      self._sums[name] = self._sums.get(name, 0.0) + seconds
      self._counts[name] = self._counts.get(name, 0) + 1

  def window(self, reset=True):
    """({name: total seconds}, {name: count}) since the last reset."""
    with self._lock:
      sums, counts = dict(self._sums), dict(self._counts)
      if reset:
        self._sums, self._counts = {}, {}
    return sums, counts


class _Timer:

  def __init__(self, timings, name):
    self.timings, self.name = timings, name

  def __enter__(self):
    self.start = time.perf_counter()

  def __exit__(self, *exc):
    self.timings.add(self.name, time.perf_counter() - self.start)


class ParameterServer:
  """The latest parameters (and their version) on every actor device."""

  def __init__(self, actor_devices, stop_event):
    self._devices = list(actor_devices)
    self._stop = stop_event
    self._cond = threading.Condition()
    self._copies, self._version = None, -1

  def publish(self, params, version):
    """Copies replicated `params` to the actor devices (blocking) as `version`."""
    local = jax.tree.map(lambda x: x.addressable_data(0), params)
    copies = {d: jax.device_put(local, d) for d in self._devices}
    jax.block_until_ready(copies)
    with self._cond:
      self._copies, self._version = copies, int(version)
      self._cond.notify_all()

  def get(self, device, min_version=0):
    """(params on `device`, version) once version >= min_version.

    Returns (None, -1) if the system is stopping.
    """
    with self._cond:
      while self._version < min_version:
        if self._stop.is_set():
          return None, -1
        self._cond.wait(POLL_SECONDS)
      return self._copies[device], self._version


def initialize_distributed(coordinator_address=None, num_processes=None,
                           process_id=None, cpu_collectives="gloo"):
  """`jax.distributed.initialize` from flags (or JAX's environment detection).

  With all three arguments None, JAX detects SLURM and TPU-pod settings
  itself. For CPU devices the cross-process collectives use `cpu_collectives`.
  Must run before anything touches a JAX device.
  """
  if jax.config.jax_platforms in (None, "", "cpu") and cpu_collectives:
    jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes,
                             process_id=process_id)


def _check_device_ids(name, device_ids, count):
  """Raises a one-line ValueError unless `device_ids` are distinct indices
  of `count` local devices."""
  ok = all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < count
           for i in device_ids) and len(set(device_ids)) == len(device_ids)
  if not ok:
    raise ValueError(
        f"sebulba.{name}={tuple(device_ids)!r}: must be distinct local device "
        f"indices, and this process has {count} device(s) (0..{count - 1})")


def learner_devices(device_ids=()):
  """The learner devices of every process: local indices `device_ids` (all if
  empty) of each process's devices, process by process."""
  devices = []
  for process in range(jax.process_count()):
    local = [d for d in jax.devices() if d.process_index == process]
    _check_device_ids("learner_device_ids", device_ids, len(local))
    devices += [local[i] for i in device_ids] if device_ids else local
  return devices


def actor_devices(device_ids=(0,)):
  local = jax.local_devices()
  device_ids = device_ids or (0,)
  _check_device_ids("actor_device_ids", device_ids, len(local))
  return [local[i] for i in device_ids]


def trajectory_shardings(mesh, example):
  """NamedShardings of a Trajectory: environment axis over "data".

  Time-major leaves [T, B, ...] get P(None, "data"); the initial core state
  [B, ...] gets P("data").
  """
  time_major = NamedSharding(mesh, P(None, "data"))
  return example._replace(
      initial_state=jax.tree.map(lambda _: NamedSharding(mesh, P("data")),
                                 example.initial_state),
      **{field: jax.tree.map(lambda _: time_major, getattr(example, field))
         for field in Trajectory._fields if field != "initial_state"})


@jax.jit
def _concatenate(pieces):
  """Trajectories on one device joined along the environment axis (0 for
  the initial state, 1 for the time-major fields), in one call: op-by-op
  concatenation of each leaf cost ~0.3 ms a leaf on a 2-core CPU."""
  joined = {field: jax.tree.map(lambda *xs: jnp.concatenate(xs, 1),
                               *[getattr(p, field) for p in pieces])
            for field in Trajectory._fields if field != "initial_state"}
  initial = jax.tree.map(lambda *xs: jnp.concatenate(xs, 0),
                         *[p.initial_state for p in pieces])
  return Trajectory(initial_state=initial, **joined)


def combine(trajectories, shardings, num_processes=1):
  """One global Trajectory from per-thread ones, without cross-device copies.

  Each input is sharded over this process's learner devices; the piece on
  device d of the result is the concatenation (along the environment axis) of
  the inputs' pieces on d. The global batch is thus a permutation of the
  concatenated batches, which the summed loss does not see.
  """
  if len(trajectories) == 1 and num_processes == 1:
    return trajectories[0]
  devices = list(jax.tree.leaves(shardings)[0].addressable_devices)

  def piece(leaf, device):
    return next(s.data for s in leaf.addressable_shards if s.device == device)

  # Each device's piece of every input, joined there in one call.
  on_device = [[jax.tree.map(lambda leaf, d=device: piece(leaf, d), t)
                for t in trajectories] for device in devices]
  joined = [pieces[0] if len(pieces) == 1 else _concatenate(pieces)
            for pieces in on_device]

  def assemble(sharding, axis, *pieces):
    shape = list(pieces[0].shape)
    shape[axis] *= len(devices) * num_processes
    return jax.make_array_from_single_device_arrays(
        tuple(shape), sharding, list(pieces))

  initial = jax.tree.map(lambda s, *xs: assemble(s, 0, *xs),
                         shardings.initial_state,
                         *[j.initial_state for j in joined])
  rest = {field: jax.tree.map(lambda s, *xs: assemble(s, 1, *xs),
                              getattr(shardings, field),
                              *[getattr(j, field) for j in joined])
          for field in Trajectory._fields if field != "initial_state"}
  return Trajectory(initial_state=initial, **rest)


def episode_flags(terminated, truncated, elapsed_step, max_episode_steps):
  """(done, terminated, truncated) of one envpool step, from elapsed_step.

  done = envpool's terminated | truncated; truncated = done and the time
  limit is reached; terminated = done and not truncated (envpool #239).
  """
  done = np.logical_or(terminated, truncated)
  at_limit = np.asarray(elapsed_step) >= max_episode_steps
  cut = np.logical_and(done, at_limit)
  return done, np.logical_and(done, ~cut), cut


def make_agent_and_optimizer(config, suite):
  """The R2AC agent for `suite` and its optimizer, as `config` sets them."""
  return (from_config.agent(config, suite.obs_shape, suite.num_actions),
          from_config.optimizer(config))


def init_learner_state(agent, optimizer, key) -> LearnerState:
  """Fresh parameters (from `key`), optimizer state and update counter 0."""
  params = agent.init(key)
  return LearnerState(params, optimizer.init(params), jnp.zeros((), jnp.int32))


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


class _EnvGroup:
  """One of an actor thread's env groups: the inputs of its next step."""

  def __init__(self, env_ids, obs, size):
    self.env_ids, self.obs = env_ids, obs
    self.prev_reward = np.zeros((size,), np.float32)
    self.reset = np.ones((size,), bool)      # a new episode starts
    self.valid = np.ones((size,), bool)      # envpool will act on the action
    self.core_state = None
    self.episode_return = np.zeros((size,), np.float64)
    self.episode_length = np.zeros((size,), np.int64)


class System(NamedTuple):
  init: Callable[[jax.Array], LearnerState]
  start: Callable[[LearnerState], None]
  train_step: Callable[[LearnerState], Any]
  stop: Callable[[], None]
  agent: Any
  suite: Any
  mesh: Any
  learner_step: Callable[..., Any]
  timings: Any
  info: dict


def make_system(config, mesh=None, suite=None, trajectory_hook=None) -> System:
  """Builds the Sebulba system from `config` (experiments/configs/sebulba.py).

  Args:
    config: the Sebulba config.
    mesh: the learner mesh (default: `learner_devices(...)` on axis "data").
    suite: an `envpool_envs.Suite` (default: from config.env).
    trajectory_hook: optional callable(thread_id, numpy Trajectory) called by
      actors with each unroll before the transfer (tests inspect them).
  """
  seb = config.sebulba
  if suite is None:
    suite = envpool_envs.make_suite(config.env.suite, config.env.name,
                                    dict(config.env.kwargs),
                                    num_threads=seb.envpool_threads)
  agent, optimizer = make_agent_and_optimizer(config, suite)
  learner_step = make_learner_step(agent, optimizer)
  mesh = mesh or Mesh(learner_devices(tuple(seb.learner_device_ids)),
                      ("data",))
  local_mesh_devices = [d for d in mesh.devices.flat
                        if d.process_index == jax.process_index()]
  if not local_mesh_devices:
    raise ValueError(f"the learner mesh has no device of process "
                     f"{jax.process_index()}; every process needs one")
  local_mesh = Mesh(np.array(local_mesh_devices), ("data",))
  num_envs, unroll_length = seb.num_envs_per_thread, config.unroll_length
  num_threads = seb.num_actor_threads
  num_groups = seb.env_groups
  if num_groups < 1 or num_envs % num_groups:
    raise ValueError(
        f"sebulba.env_groups={num_groups} must be a positive divisor of "
        f"sebulba.num_envs_per_thread={num_envs}")
  if num_groups > 1 and seb.envpool_threads != 1:
    raise ValueError(
        f"sebulba.env_groups={num_groups} needs sebulba.envpool_threads=1 "
        f"(got {seb.envpool_threads}): with one envpool worker the groups come "
        "back in the order they were sent")
  group_size = num_envs // num_groups
  if num_envs % len(local_mesh_devices):
    raise ValueError(
        f"sebulba.num_envs_per_thread={num_envs} must be a multiple of the "
        f"number of local learner devices ({len(local_mesh_devices)})")
  devices = actor_devices(tuple(seb.actor_device_ids))
  clip = config.loss.reward_clip
  timings = Timings()
  replicated = NamedSharding(mesh, P())

  # Every process computes the same replicated state (multi-host safe).
  init = jax.jit(lambda key: init_learner_state(agent, optimizer, key),
                 out_shardings=replicated)

  # --- shapes and shardings ----------------------------------------------
  example_params = jax.eval_shape(agent.init, jax.random.PRNGKey(0))
  example_traj = jax.eval_shape(
      lambda p: example_trajectory(agent, p, suite, num_envs, unroll_length),
      example_params)
  local_shardings = trajectory_shardings(local_mesh, example_traj)
  global_shardings = trajectory_shardings(mesh, example_traj)
  jitted_learner_step = jax.jit(
      learner_step, in_shardings=(replicated, replicated, global_shardings),
      out_shardings=(replicated, replicated, replicated))

  # --- actor ---------------------------------------------------------------
  def act_step(params, core_state, obs, prev_reward, reset, key):
    key, k_act = jax.random.split(key)
    core_state, out = agent.act(params, core_state, obs, prev_reward, reset,
                                k_act)
    return core_state, out.action, out.logits, key

  # Donating the core state lets XLA write the new sensitivities over the
  # old ones: fresh output buffers every step cost more than the step itself
  # (0.6 vs 2.0 ms for 128 MiniGrid envs, eLSTM-64, on the 2-core CPU).
  jitted_act = jax.jit(act_step, donate_argnums=1)
  jitted_initial_state = jax.jit(agent.initial_core_state,
                                 static_argnums=1)

  # act_step reuses a group's core state buffers: unrolls keep copies.
  copy_state = jax.jit(lambda state: jax.tree.map(jnp.copy, state))

  @jax.jit
  def join_states(states):
    return jax.tree.map(lambda *xs: jnp.concatenate(xs, 0), *states)

  @jax.jit
  def join_logits(per_group):
    return jnp.concatenate([jnp.stack(steps) for steps in per_group], 1)

  runtime = {}

  def actor(thread_id, device, server, out_queue, start_update):
    # A resumed run (start_update > 0) gets new episodes, not a replay of
    # the first session's levels and noops.
    env = suite.make(num_envs, config.seed + 10007 * jax.process_index()
                     + 1009 * thread_id + 100003 * start_update,
                     batch_size=group_size)
    try:
      run_actor(thread_id, env, device, server, out_queue, start_update)
    finally:
      env.close()

  def receive(env, group, record, finished):
    """The result of `group`'s last step: recorded, and the group advanced
    to the inputs of its next step."""
    with _Timer(timings, "actor/env_recv"):
      env_ids, obs, reward, done, terminated, truncated = recv_step(env, suite)
    check_group(env_ids, group.env_ids)
    acted = group.valid          # False: envpool only reset the environment
    done, terminated, truncated = done & acted, terminated & acted, (
        truncated & acted)
    reward = np.where(acted, reward, 0.0).astype(np.float32)
    reward_in = np.clip(reward, -clip, clip)
    group.episode_return += reward
    group.episode_length += acted
    if done.any():
      finished += [float(done.sum()), group.episode_return[done].sum(),
                   group.episode_length[done].sum()]
      group.episode_return[done], group.episode_length[done] = 0.0, 0
    for name, value in (("reward", reward), ("terminated", terminated),
                        ("truncated", truncated)):
      record[name].append(value)
    # After an end, the next step's action is ignored (envpool resets then)
    # and the core reads the final observation: the learner's value there is
    # a truncated step's bootstrap (Trajectory.truncation_value=None). The
    # step after starts the new episode with a reset core and a zero reward
    # input.
    group.obs = obs
    group.prev_reward = np.where(acted, reward_in, 0.0).astype(np.float32)
    group.reset = ~acted
    group.valid = ~done

  def act(env, group, record, params, key):
    """`group`'s policy step: recorded and sent to envpool."""
    for name in ("obs", "prev_reward", "reset", "valid"):
      record[name].append(getattr(group, name))
    with _Timer(timings, "actor/inference"):
      group.core_state, action, logits, key = jitted_act(
          params, group.core_state, group.obs, group.prev_reward, group.reset,
          key)
      action = np.asarray(action)
    record["action"].append(action)
    record["logits"].append(logits)
    with _Timer(timings, "actor/env_send"):
      env.send(action, group.env_ids)
    return key

  def run_actor(thread_id, env, device, server, out_queue, start_update):
    stop = runtime["stop"]
    key = jax.device_put(jax.random.fold_in(jax.random.fold_in(
        jax.random.PRNGKey(config.seed),
        1 + 1000 * jax.process_index() + thread_id), start_update), device)
    env.async_reset()
    groups = []
    for first_env in range(0, num_envs, group_size):
      env_ids, obs, *_ = recv_step(env, suite)
      check_group(env_ids, np.arange(first_env, first_env + group_size))
      groups.append(_EnvGroup(env_ids, obs, group_size))

    def fetch(unroll):
      with _Timer(timings, "actor/params_wait"):
        min_version = start_update + unroll if seb.synchronous else 0
        return server.get(device, min_version)

    def begin(group, params, key):
      """A new unroll's record for `group`, from its first step."""
      record = collections.defaultdict(list)
      record["initial_state"] = copy_state(group.core_state)
      return record, act(env, group, record, params, key)

    def ship(records, version, finished):
      """Hands the unroll to the learner; False if the system stopped."""
      with _Timer(timings, "actor/transfer"):
        joined = lambda name: np.concatenate(
            [np.stack(record[name]) for record in records], 1)
        trajectory = Trajectory(
            initial_state=join_states([r["initial_state"] for r in records]),
            obs=joined("obs"), prev_reward=joined("prev_reward"),
            reset=joined("reset"), action=joined("action").astype(np.int32),
            behaviour_logits=join_logits([r["logits"] for r in records]),
            reward=joined("reward"), terminated=joined("terminated"),
            truncated=joined("truncated"), truncation_value=None,
            valid=joined("valid"))
        if trajectory_hook is not None:
          trajectory_hook(thread_id, jax.device_get(trajectory))
        trajectory = jax.device_put(trajectory, local_shardings)
      stats = {"episodes": float(sum(finished[0::3])),
               "episode_return_sum": float(sum(finished[1::3])),
               "episode_length_sum": float(sum(finished[2::3]))}
      with _Timer(timings, "actor/queue_put"):
        while not stop.is_set():
          try:
            out_queue.put((trajectory, version, stats), timeout=POLL_SECONDS)
            return True
          except queue.Full:
            pass
      return False

    params, version = fetch(0)
    if params is None:
      return
    for group in groups:
      # Committed to the actor device like every later core state, so
      # act_step compiles once.
      group.core_state = jax.device_put(
          jitted_initial_state(params, group_size), device)
    records = []
    for group in groups:
      record, key = begin(group, params, key)
      records.append(record)
    for unroll in itertools.count():
      finished = []
      # Group g's policy runs while envpool steps the groups sent before it.
      for _ in range(1, unroll_length):
        for group, record in zip(groups, records):
          receive(env, group, record, finished)
          key = act(env, group, record, params, key)
      # The unroll's last step. Asynchronous: each group starts the next
      # unroll as soon as it has finished this one, so envpool keeps
      # stepping while the unroll ships. Synchronous: the next parameters
      # exist only once the learner has this unroll.
      next_records = []
      for group, record in zip(groups, records):
        receive(env, group, record, finished)
        for name in ("obs", "prev_reward", "reset"):   # the bootstrap step
          record[name].append(getattr(group, name))
        if not seb.synchronous:
          if not next_records:
            next_params, next_version = fetch(unroll + 1)
            if next_params is None:
              return
          next_record, key = begin(group, next_params, key)
          next_records.append(next_record)
      if not ship(records, version, finished):
        return
      if seb.synchronous:
        next_params, next_version = fetch(unroll + 1)
        if next_params is None:
          return
        for group in groups:
          next_record, key = begin(group, next_params, key)
          next_records.append(next_record)
      records, params, version = next_records, next_params, next_version

  def thread_main(thread_id, *args):
    try:
      actor(thread_id, *args)
    except BaseException:  # pylint: disable=broad-except
      runtime["errors"].append(
          f"actor thread {thread_id} died:\n{traceback.format_exc()}")
      runtime["stop"].set()

  def start(state):
    """Starts the actor threads from learner state `state`."""
    if runtime.get("threads"):
      raise RuntimeError("the system is already running")
    stop = threading.Event()
    server = ParameterServer(devices, stop)
    server.publish(state.params, int(state.update))
    queues = [queue.Queue(maxsize=seb.queue_size) for _ in range(num_threads)]
    runtime.update(stop=stop, server=server, queues=queues, errors=[],
                   window=(time.perf_counter(), 0),
                   episode_window=dict.fromkeys(
                       ("episodes", "episode_return_sum",
                        "episode_length_sum"), 0.0),
                   start_update=int(state.update),
                   # Counted from the run's start, across resumes.
                   env_steps=int(state.update) * num_envs * num_threads
                   * unroll_length)
    threads = [threading.Thread(
        target=thread_main, name=f"sebulba-actor-{i}", daemon=True,
        args=(i, devices[i % len(devices)], server, queues[i],
              int(state.update))) for i in range(num_threads)]
    runtime["threads"] = threads
    for thread in threads:
      thread.start()

  def check_errors():
    if runtime["errors"]:
      raise ActorError(runtime["errors"][0])

  def get(q):
    while True:
      check_errors()
      try:
        return q.get(timeout=POLL_SECONDS)
      except queue.Empty:
        if runtime["stop"].is_set():
          check_errors()
          raise ActorError("the actors stopped")

  def train_step(state):
    """One learner update on one unroll of every actor thread."""
    if not runtime.get("threads"):
      raise RuntimeError("call start(state) before train_step")
    with _Timer(timings, "learner/queue_get"):
      items = [get(q) for q in runtime["queues"]]
    trajectories, versions, stats = zip(*items)
    with _Timer(timings, "learner/combine"):
      batch = combine(trajectories, global_shardings, jax.process_count())
    with _Timer(timings, "learner/step"):
      params, opt_state, metrics = jitted_learner_step(
          state.params, state.opt_state, batch)
      jax.block_until_ready(params)
    version = int(state.update)
    state = LearnerState(params, opt_state, state.update + 1)
    with _Timer(timings, "learner/publish"):
      runtime["server"].publish(params, version + 1)
    runtime["env_steps"] += num_envs * num_threads * unroll_length
    lag = [version - v for v in versions]
    episodes = sum(s["episodes"] for s in stats)
    window = runtime["episode_window"]
    for s in stats:
      for k in window:
        window[k] += s[k]
    out = {k: v.addressable_data(0) for k, v in metrics.items()}
    out.update({
        "policy_lag_mean": float(np.mean(lag)),
        "policy_lag_max": float(np.max(lag)),
        "episodes": float(episodes),
        "episode_return_mean": (sum(s["episode_return_sum"] for s in stats)
                                / episodes if episodes else float("nan")),
        "episode_length_mean": (sum(s["episode_length_sum"] for s in stats)
                                / episodes if episodes else float("nan")),
        "env_steps": float(runtime["env_steps"] * jax.process_count()),
        "queue_size": float(sum(q.qsize() for q in runtime["queues"])),
    })
    return state, out

  def timing_metrics(reset=True):
    """Over the window since the last reset (the first starts at `start`):
    {"time/<phase>": mean seconds per call, "sps": env steps/s,
    "window/episode_{return,length}_mean", "window/episodes" (if any ended)}."""
    sums, counts = timings.window(reset)
    out = {f"time/{k}": sums[k] / counts[k] for k in sums}
    now, steps = time.perf_counter(), runtime.get("env_steps", 0)
    since, since_steps = runtime.get("window", (now, steps))
    out["sps"] = (steps - since_steps) * jax.process_count() / max(
        now - since, 1e-9)
    window = runtime.get("episode_window", {})
    if window.get("episodes"):
      out["window/episodes"] = window["episodes"]
      out["window/episode_return_mean"] = (window["episode_return_sum"]
                                           / window["episodes"])
      out["window/episode_length_mean"] = (window["episode_length_sum"]
                                           / window["episodes"])
    if reset:
      runtime["window"] = (now, steps)
      runtime["episode_window"] = dict.fromkeys(window, 0.0)
    return out

  def stop():
    """Stops and joins the actor threads (idempotent)."""
    if not runtime.get("threads"):
      return
    runtime["stop"].set()
    for q in runtime["queues"]:   # unblock nothing; just drop pending data
      while not q.empty():
        q.get_nowait()
    for thread in runtime["threads"]:
      thread.join(timeout=30)
    runtime["threads"] = []

  info = {"num_envs_per_step": num_envs * num_threads * jax.process_count(),
          "unroll_length": unroll_length,
          "actor_devices": devices, "local_learner_devices":
          local_mesh_devices, "timing_metrics": timing_metrics,
          "jitted_learner_step": jitted_learner_step,
          "global_shardings": global_shardings,
          "local_shardings": local_shardings}
  return System(init, start, train_step, stop, agent, suite, mesh,
                learner_step, timings, info)


def example_trajectory(agent, params, suite, num_envs, unroll_length):
  """A zero Trajectory with the shapes and dtypes the actors produce."""
  m, b = unroll_length, num_envs
  zeros = lambda *shape, dtype=jnp.float32: jnp.zeros(shape, dtype)
  logits = jnp.zeros((m, b, suite.num_actions), jnp.float32)
  return Trajectory(
      initial_state=agent.initial_core_state(params, b),
      obs=zeros(m + 1, b, *suite.obs_shape, dtype=jnp.uint8),
      prev_reward=zeros(m + 1, b), reset=zeros(m + 1, b, dtype=bool),
      action=zeros(m, b, dtype=jnp.int32), behaviour_logits=logits,
      reward=zeros(m, b), terminated=zeros(m, b, dtype=bool),
      truncated=zeros(m, b, dtype=bool), truncation_value=None,
      valid=jnp.ones((m, b), bool))
