"""Hyper-parameter checks shared by the cells: one-line ValueErrors that name the value."""

import math


def check_positive_int(owner, name, value):
  """Raises a one-line ValueError unless `value` is a positive int."""
  if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
    raise ValueError(f"{owner}: {name} must be a positive int, got {value!r}")


def check_number_in(owner, name, value, low, high, low_open=True,
                    high_open=False, why=""):
  """Raises a one-line ValueError unless `value` lies in the interval.

  The interval is (low, high] by default; `low_open` / `high_open` choose
  open or closed ends. `why` is appended to the message (e.g. the instability
  a bad value causes).
  """
  ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
        and math.isfinite(value)
        and (value > low if low_open else value >= low)
        and (value < high if high_open else value <= high))
  if not ok:
    interval = (("(" if low_open else "[") + f"{low}, {high}"
                + (")" if high_open else "]"))
    raise ValueError(
        f"{owner}: {name} must be a number in {interval}{why}, got {value!r}")


def check_choice(owner, name, value, choices):
  """Raises a one-line ValueError unless `value` is one of `choices`."""
  if value not in choices:
    raise ValueError(
        f"{owner}: {name} must be one of {tuple(choices)}, got {value!r}")
