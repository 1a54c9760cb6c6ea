"""What connects the actor threads and the learner: parameters one way
(`ParameterServer`), unrolls the other (`TrajectoryQueue`).

Neither side may block for good: every wait polls a shared stop event (set by
`System.stop` or by an actor thread that died), so a failure anywhere ends
the run within `POLL_SECONDS` instead of hanging it.
"""

import queue
import threading
from typing import Any, NamedTuple

import jax

from rtrl_jax.rl.episodes import EpisodeStats

POLL_SECONDS = 0.05


class ActorError(RuntimeError):
  """An actor thread died; the message holds its traceback."""


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


class Unroll(NamedTuple):
  """What an actor thread hands the learner for one unroll."""
  trajectory: Any          # Trajectory on this process's learner devices
  version: int             # the parameter version that acted (policy lag)
  episodes: EpisodeStats   # the episodes that ended during the unroll


class TrajectoryQueue:
  """One actor thread's bounded queue of `Unroll`s to the learner.

  Bounded (`sebulba.queue_size`) so that actors cannot run ahead of the
  learner by more than that many unrolls (the policy lag stays bounded).
  """

  def __init__(self, maxsize, stop_event, errors):
    self._queue = queue.Queue(maxsize=maxsize)
    self._stop, self._errors = stop_event, errors

  def put(self, unroll):
    """Waits for room; False (unroll dropped) if the system stops first."""
    while not self._stop.is_set():
      try:
        self._queue.put(unroll, timeout=POLL_SECONDS)
        return True
      except queue.Full:
        pass
    return False

  def get(self):
    """The next unroll. ActorError (with the thread's traceback) if an actor
    thread died, or if the system stopped while waiting."""
    while True:
      self._raise_errors()
      try:
        return self._queue.get(timeout=POLL_SECONDS)
      except queue.Empty:
        if self._stop.is_set():
          self._raise_errors()
          raise ActorError("the actors stopped") from None

  def qsize(self):
    return self._queue.qsize()

  def drain(self):
    """Drops the pending unrolls (at stop: nothing will consume them)."""
    while not self._queue.empty():
      self._queue.get_nowait()

  def _raise_errors(self):
    if self._errors:
      raise ActorError(self._errors[0])
