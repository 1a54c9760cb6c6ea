"""Per-phase wall-clock totals that actor threads and the learner add to."""

import threading
import time


class Timings:
  """Thread-safe per-phase totals (seconds and calls), read per window.

  Totals and counts, not means: they add up across threads and calls, and a
  reader can check them against the wall time around the calls.
  """

  def __init__(self):
    self._lock = threading.Lock()
    self._sums, self._counts = {}, {}

  def add(self, name, seconds):
    with self._lock:
      self._sums[name] = self._sums.get(name, 0.0) + seconds
      self._counts[name] = self._counts.get(name, 0) + 1

  def window(self, reset=True):
    """({phase: total seconds}, {phase: calls}) since the last reset."""
    with self._lock:
      sums, counts = dict(self._sums), dict(self._counts)
      if reset:
        self._sums, self._counts = {}, {}
    return sums, counts

  def timed(self, name):
    """A context manager that adds the time spent inside it to `name`."""
    return _Timer(self, name)


class _Timer:
  """A class rather than @contextmanager: an exception inside still counts
  the time, and the phases run thousands of times a second."""

  def __init__(self, timings, name):
    self.timings, self.name = timings, name

  def __enter__(self):
    self.start = time.perf_counter()

  def __exit__(self, *exc):
    self.timings.add(self.name, time.perf_counter() - self.start)
