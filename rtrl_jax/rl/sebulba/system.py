"""The Sebulba system: actor threads and a learner, held together.

`make_system` builds the parts from the config; `System` starts the actors,
runs one learner update per `step`, reports the log counters and stops.
"""

import dataclasses
import threading
import time
from typing import Any, Callable, List, NamedTuple, Optional

import jax
from jax.sharding import Mesh

from rtrl_jax.rl import envpool_envs
from rtrl_jax.rl.episodes import EpisodeStats
from rtrl_jax.rl.sebulba import learner as learner_lib
from rtrl_jax.rl.sebulba.actor import (Actor, ActorSettings, Policy,
                                       actor_thread, make_policy)
from rtrl_jax.rl.sebulba.channels import ParameterServer, TrajectoryQueue
from rtrl_jax.rl.sebulba.devices import (actor_devices, learner_devices,
                                         local_learner_mesh)
from rtrl_jax.rl.sebulba.learner import (Learner, LearnerState,
                                         make_agent_and_optimizer)
from rtrl_jax.rl.sebulba.timing import Timings


class Actors(NamedTuple):
  """The running actor threads and what connects them to the learner."""
  threads: List[threading.Thread]
  stop: threading.Event           # set by `System.stop` or a dying thread
  server: ParameterServer
  queues: List[TrajectoryQueue]   # one per thread
  errors: List[str]               # tracebacks of the threads that died


class Progress(NamedTuple):
  """This process's log counters: env steps and the current log window."""
  env_steps: int                  # since the run's start, across resumes
  window_start: float             # time.perf_counter() at the window start
  window_env_steps: int           # env_steps at the window start
  window_episodes: EpisodeStats   # episodes that ended in the window


def _new_progress(env_steps):
  # NB: the first window counts from 0 env steps, not from `env_steps`, so
  # after a resume its sps includes the earlier sessions' steps. That is how
  # the system has always logged it; correcting it is a separate change.
  return Progress(env_steps, time.perf_counter(), 0, EpisodeStats.zero())


def advance(progress, unrolls, env_steps) -> Progress:
  """`progress` after an update of `env_steps` env steps on `unrolls`."""
  window = progress.window_episodes
  for unroll in unrolls:      # one by one: the sums' rounding as before
    window += unroll.episodes
  return progress._replace(env_steps=progress.env_steps + env_steps,
                           window_episodes=window)


def timing_metrics(timings, progress, num_processes, reset=True):
  """(metrics, progress with a new window if `reset`). Over the window since
  the last reset: {"time/<phase>": mean seconds per call, "sps": env steps/s
  of every process, "window/episode_{return,length}_mean",
  "window/episodes" (if any ended)}."""
  sums, counts = timings.window(reset)
  out = {f"time/{k}": sums[k] / counts[k] for k in sums}
  now = time.perf_counter()
  out["sps"] = ((progress.env_steps - progress.window_env_steps)
                * num_processes / max(now - progress.window_start, 1e-9))
  window = progress.window_episodes
  if window.episodes:
    return_mean, length_mean = window.means()
    out["window/episodes"] = window.episodes
    out["window/episode_return_mean"] = float(return_mean)
    out["window/episode_length_mean"] = float(length_mean)
  if reset:
    progress = progress._replace(window_start=now,
                                 window_env_steps=progress.env_steps,
                                 window_episodes=EpisodeStats.zero())
  return out, progress


@dataclasses.dataclass(eq=False)
class System:
  """Sebulba's parts. `actors` and `progress` change as it runs; the rest is
  fixed by `make_system`."""
  agent: Any
  suite: envpool_envs.Suite
  mesh: Mesh                      # the learner mesh, axis "data"
  learner: Learner
  policy: Policy
  actor_settings: ActorSettings
  actor_devices: List[Any]        # this process's
  local_learner_devices: List[Any]
  num_actor_threads: int          # per process
  queue_size: int                 # unrolls a thread may queue
  num_envs_per_step: int          # environments in one update, all processes
  timings: Timings
  trajectory_hook: Optional[Callable[[int, Any], None]] = None
  actors: Optional[Actors] = None               # between start and stop
  progress: Progress = dataclasses.field(
      default_factory=lambda: _new_progress(0))

  def init(self, key) -> LearnerState:
    """Fresh learner state from `key`, replicated over the learner mesh."""
    return self.learner.init(key)

  def start(self, state):
    """Starts the actor threads from learner state `state`."""
    if self.actors is not None:
      raise RuntimeError("the system is already running")
    update = int(state.update)
    self.progress = _new_progress(update * self._env_steps_per_update())
    self.actors = start_actors(self, state.params, update)

  def step(self, state):
    """One training-loop step: one learner update on one unroll of every
    actor thread. Returns (new state, metrics)."""
    if self.actors is None:
      raise RuntimeError("call start(state) before step")
    version = int(state.update)
    state, metrics, unrolls = learner_lib.update(
        state, self.learner, self.actors.queues, self.actors.server,
        self.timings)
    self.progress = advance(self.progress, unrolls,
                            self._env_steps_per_update())
    out = learner_lib.update_metrics(metrics, version, unrolls)
    out["env_steps"] = float(self.progress.env_steps * jax.process_count())
    out["queue_size"] = float(sum(q.qsize() for q in self.actors.queues))
    return state, out

  def timing_metrics(self, reset=True):
    """The per-window metrics of `timing_metrics`; `reset` starts a new
    window (the first starts at `start`)."""
    out, progress = timing_metrics(self.timings, self.progress,
                                   jax.process_count(), reset)
    self.progress = progress
    return out

  def stop(self):
    """Stops and joins the actor threads (idempotent)."""
    if self.actors is None:
      return
    self.actors.stop.set()
    for q in self.actors.queues:   # nothing will consume them
      q.drain()
    for thread in self.actors.threads:
      thread.join(timeout=30)
    self.actors = None

  def _env_steps_per_update(self):
    """This process's env steps in one update."""
    settings = self.actor_settings
    return (settings.num_envs * self.num_actor_threads
            * settings.unroll_length)


def start_actors(system, params, update) -> Actors:
  """Publishes `params` as version `update` and starts the actor threads."""
  stop, errors = threading.Event(), []
  server = ParameterServer(system.actor_devices, stop)
  server.publish(params, update)
  queues = [TrajectoryQueue(system.queue_size, stop, errors)
            for _ in range(system.num_actor_threads)]
  devices = system.actor_devices
  threads = []
  for i, trajectory_queue in enumerate(queues):
    actor = Actor(
        thread_id=i, device=devices[i % len(devices)], start_update=update,
        settings=system.actor_settings, suite=system.suite,
        policy=system.policy, server=server, queue=trajectory_queue,
        shardings=system.learner.local_shardings, timings=system.timings,
        stop=stop, trajectory_hook=system.trajectory_hook)
    threads.append(threading.Thread(target=actor_thread, args=(actor, errors),
                                    name=f"sebulba-actor-{i}", daemon=True))
  for thread in threads:
    thread.start()
  return Actors(threads, stop, server, queues, errors)


def check_sizes(seb, num_local_learner_devices):
  """The env group size; ValueError for sizes the actors cannot run."""
  num_envs, num_groups = seb.num_envs_per_thread, seb.env_groups
  if num_groups < 1 or num_envs % num_groups:
    raise ValueError(
        f"sebulba.env_groups={num_groups} must be a positive divisor of "
        f"sebulba.num_envs_per_thread={num_envs}")
  if num_groups > 1 and seb.envpool_threads != 1:
    raise ValueError(
        f"sebulba.env_groups={num_groups} needs sebulba.envpool_threads=1 "
        f"(got {seb.envpool_threads}): with one envpool worker the groups come "
        "back in the order they were sent")
  if num_envs % num_local_learner_devices:
    raise ValueError(
        f"sebulba.num_envs_per_thread={num_envs} must be a multiple of the "
        f"number of local learner devices ({num_local_learner_devices})")
  return num_envs // num_groups


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
  # The one place the agent and optimizer come from the config.
  agent, optimizer = make_agent_and_optimizer(config, suite)
  mesh = mesh or Mesh(learner_devices(tuple(seb.learner_device_ids)),
                      ("data",))
  local_mesh = local_learner_mesh(mesh)
  group_size = check_sizes(seb, local_mesh.size)
  devices = actor_devices(tuple(seb.actor_device_ids))
  settings = ActorSettings(
      seed=config.seed, num_envs=seb.num_envs_per_thread,
      group_size=group_size, unroll_length=config.unroll_length,
      synchronous=seb.synchronous,
      reward_clip=agent.loss_params.reward_clip)
  learner = learner_lib.make_learner(agent, optimizer, mesh, local_mesh, suite,
                                     seb.num_envs_per_thread,
                                     config.unroll_length)
  return System(
      agent=agent, suite=suite, mesh=mesh, learner=learner,
      policy=make_policy(agent), actor_settings=settings,
      actor_devices=devices,
      local_learner_devices=list(local_mesh.devices.flat),
      num_actor_threads=seb.num_actor_threads, queue_size=seb.queue_size,
      num_envs_per_step=(seb.num_envs_per_thread * seb.num_actor_threads
                         * jax.process_count()),
      timings=Timings(), trajectory_hook=trajectory_hook)
