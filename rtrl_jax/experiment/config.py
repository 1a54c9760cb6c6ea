"""Checking a resolved ml_collections config against a reference config.

The reference (normally the script's default config) is the schema: every key
of `config` must exist in it with a value of the same type (an int is accepted
where a float is expected). Value rules are (dotted key, predicate, what the
value must be); cross-field rules name the key they constrain. The first
violation raises `ConfigError` with a one-line message naming the key, e.g.

    config.train.mode: must be one of ['bptt', 'rtrl', 'tbptt'], got 'bpt'
"""

import difflib
import importlib.util
import math
import os
from typing import Any, Callable, Iterable, Tuple

import ml_collections

Rule = Tuple[str, Callable[[Any], bool], str]


class ConfigError(ValueError):
  """A bad config: the message is one line and starts with the key."""


def flatten(config, prefix=""):
  """{"train.mode": "rtrl", ...} for a ConfigDict or nested dict."""
  items = {}
  for key, value in config.items():
    name = f"{prefix}{key}"
    if isinstance(value, (ml_collections.ConfigDict, dict)):
      items.update(flatten(value, name + "."))
    else:
      items[name] = value
  return items


def _type_ok(value, expected):
  if isinstance(expected, bool) or isinstance(value, bool):
    return isinstance(value, bool) and isinstance(expected, bool)
  if isinstance(expected, float):
    return isinstance(value, (int, float))
  if expected is None:
    return True
  return isinstance(value, type(expected))


def check_config(config, reference, rules: Iterable[Rule] = ()):
  """Raises ConfigError unless `config` fits `reference` and `rules`.

  Args:
    config: the resolved ConfigDict.
    reference: a ConfigDict with the allowed keys and their types.
    rules: (dotted key, predicate on the value, "what it must be"); a key
      starting with "@" is a cross-field rule whose predicate gets the whole
      config and is reported under the key after the "@". "what it must be"
      may be a function of the config.
  """
  values, allowed = flatten(config), flatten(reference)
  for name, value in values.items():
    if name not in allowed:
      close = difflib.get_close_matches(name, list(allowed), n=1)
      hint = f" (did you mean config.{close[0]}?)" if close else ""
      raise ConfigError(f"config.{name}: unknown key{hint}")
    if not _type_ok(value, allowed[name]):
      raise ConfigError(
          f"config.{name}: must be of type {type(allowed[name]).__name__}, "
          f"got {value!r} ({type(value).__name__})")
  for name in allowed:
    if name not in values:
      raise ConfigError(f"config.{name}: missing key")
  for name, predicate, requirement in rules:
    cross_field = name.startswith("@")
    key = name[1:] if cross_field else name
    value = config if cross_field else values[key]
    try:
      ok = predicate(value)
    except (TypeError, ValueError, ZeroDivisionError):
      ok = False
    if not ok:
      if callable(requirement):
        requirement = requirement(config)
      raise ConfigError(
          f"config.{key}: must be {requirement}, got {values[key]!r}")


def one_of(*choices):
  return lambda value: value in choices, f"one of {sorted(choices)}"


def positive(value):
  return value > 0


def finite_positive(value):
  return math.isfinite(value) and value > 0


def available_bytes():
  """Memory a run can use: the first JAX device's limit (accelerators), or
  the machine's physical memory (CPU). For rules that check a config's
  estimated size before anything is allocated."""
  import jax  # pylint: disable=g-import-not-at-top
  try:
    stats = jax.devices()[0].memory_stats() or {}
  except Exception:  # pylint: disable=broad-except
    stats = {}
  if stats.get("bytes_limit"):
    return int(stats["bytes_limit"])
  return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def fits_in_memory(estimate, sizes):
  """(predicate, requirement) of a cross-field rule: `estimate` (config ->
  bytes) at most `available_bytes()`; `sizes` names the keys it grows with,
  for the message."""
  limit = available_bytes()
  gib = lambda b: f"{b / 2**30:.3g} GiB"
  return (lambda config: estimate(config) <= limit,
          lambda config: (f"small enough for memory (with {sizes}: about "
                          f"{gib(estimate(config))}; {gib(limit)} here)"))


def wandb_rule(key="run.wandb"):
  """A rule: `key` is false, or wandb is installed (the "wandb" extra)."""
  return (key, lambda value: not value or importlib.util.find_spec("wandb")
          is not None,
          "false: wandb is not installed (pip install -e \".[wandb]\")")
