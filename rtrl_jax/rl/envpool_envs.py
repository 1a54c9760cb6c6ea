"""envpool environment suites with the paper's preprocessing, for Sebulba.

    suite = make_suite("atari", "Pong-v5")            # preprocessing defaults
    env = suite.make(num_envs=8, seed=0)              # an envpool instance
    obs = suite.observation(raw_obs)                  # [B, H, W, C] for the agent

Every suite is an envpool id plus envpool options (all preprocessing happens
inside envpool's C++ threads) and a NumPy function that turns envpool's
observation into the agent's ([B, ...], channels last). The Python
`send`/`recv` path is used, never `env.xla()` (environment-notes §3: it
deadlocks with more than one envpool thread).

Suites and their defaults (override any envpool option with `kwargs`):

  minigrid  MiniGrid-Memory*-v0: the 7x7x3 egocentric `image` observation.
  atari     *-v5: 84x84 grey, 4-frame stack, action repeat 4 (envpool max-pools
            the last two frames of each repeat), up to 30 no-op resets,
            episodic life (life loss terminates), reward clipping to sign(r),
            no sticky actions, 27000-step limit (108k frames).
  procgen   e.g. ChaserHard-v0 (500 levels) or *Memory-v0: 64x64 RGB. Needs
            the system Qt5 runtime (`apt-get install libqt5gui5`).
  vizdoom   e.g. MyWayHome-v1: 84x84 RGB, 4-frame stack, frame skip 4,
            discrete combined actions.

Time limits: `max_episode_steps` is the limit in agent steps; the Sebulba
actor derives truncation from `info["elapsed_step"]` against it (envpool
#239), never from envpool's own flags alone.
"""

import os
from typing import Any, Callable, NamedTuple

import numpy as np

QT_HINT = ("envpool Procgen needs the system Qt5 runtime (libQt5Gui.so.5): "
           "apt-get install -y --no-install-recommends libqt5gui5")

SUITE_DEFAULTS = {
    "minigrid": {},
    "atari": dict(img_height=84, img_width=84, gray_scale=True, stack_num=4,
                  frame_skip=4, noop_max=30, episodic_life=True,
                  reward_clip=True, repeat_action_probability=0.0,
                  max_episode_steps=27000),
    "procgen": {},
    "vizdoom": dict(img_height=84, img_width=84, stack_num=4, frame_skip=4,
                    use_combined_action=True),
}


class Suite(NamedTuple):
  """One environment id with its preprocessing.

  Attributes:
    name: the envpool id.
    make: (num_envs, seed, batch_size=None) -> envpool gymnasium env;
      batch_size defaults to num_envs (synchronous); a divisor of num_envs
      makes it asynchronous (the Sebulba actor's env groups).
    observation: envpool observation batch -> agent observation [B, *obs_shape].
    obs_shape: one agent observation's shape.
    num_actions: size of the discrete action space.
    max_episode_steps: the time limit in agent steps.
  """
  name: str
  make: Callable[..., Any]
  observation: Callable[[Any], np.ndarray]
  obs_shape: tuple
  num_actions: int
  max_episode_steps: int


def _channels_last(obs):
  """[B, C, H, W] → [B, H, W, C] (contiguous)."""
  return np.ascontiguousarray(np.moveaxis(obs, 1, -1))


def _image(obs):
  return np.array(obs["image"])   # a copy: never a view of envpool's buffer


OBSERVATIONS = {"minigrid": _image, "atari": _channels_last,
                "procgen": _channels_last, "vizdoom": _channels_last}


def procgen_available():
  """(True, "") if envpool's Procgen loads here, else (False, reason)."""
  import envpool  # pylint: disable=g-import-not-at-top
  try:
    envpool.make_spec("ChaserEasy-v0")
  except ImportError as error:
    return False, f"{QT_HINT} ({error})"
  return True, ""


# Integer envpool options and their least allowed value: envpool takes a
# negative or zero value silently and then misbehaves (e.g. Procgen with
# num_levels=-3 runs).
INTEGER_OPTION_MINIMUM = {
    "num_levels": 0, "start_level": 0, "noop_max": 0,
    "max_episode_steps": 1, "frame_skip": 1, "stack_num": 1,
    "img_height": 1, "img_width": 1,
}


# envpool options that `Suite.make` and envpool set themselves: never
# env.kwargs (the config keys that set them instead, where there are any).
SET_BY_THE_SYSTEM = {
    "num_envs": "sebulba.num_envs_per_thread",
    "batch_size": "sebulba.env_groups",
    "num_threads": "sebulba.envpool_threads",
    "seed": "seed", "env_name": "env.name", "max_num_players": None,
    "thread_affinity_offset": None, "base_path": None,
    "gym_reset_return_info": None,
}


def envpool_options(suite, kwargs=None):
  """The envpool keyword arguments of `suite` with `kwargs` overriding them.

  Raises:
    ValueError: an unknown suite, an option the system sets itself
      (SET_BY_THE_SYSTEM), or an integer option (INTEGER_OPTION_MINIMUM) that
      is not an int or below its minimum, named as env.kwargs.<option>.
  """
  if suite not in SUITE_DEFAULTS:
    raise ValueError(
        f"env suite must be one of {sorted(SUITE_DEFAULTS)}, got {suite!r}")
  options = {**SUITE_DEFAULTS[suite], **dict(kwargs or {})}
  clashes = sorted(set(options) & set(SET_BY_THE_SYSTEM))
  if clashes:
    instead = SET_BY_THE_SYSTEM[clashes[0]]
    raise ValueError(
        f"env.kwargs.{clashes[0]}: set by the system, not env.kwargs"
        + (f" (set config.{instead} instead)" if instead else ""))
  for name, minimum in INTEGER_OPTION_MINIMUM.items():
    value = options.get(name, minimum)
    if (isinstance(value, bool) or not isinstance(value, (int, np.integer))
        or value < minimum):
      raise ValueError(f"env.kwargs.{name}={value!r}: must be an int >= "
                       f"{minimum}")
  return options


def make_suite(suite, name, kwargs=None, num_threads=0) -> Suite:
  """A `Suite` for envpool id `name` with the suite's preprocessing.

  Args:
    suite: "minigrid" | "atari" | "procgen" | "vizdoom".
    name: the envpool id, e.g. "MiniGrid-MemoryS7-v0", "Pong-v5".
    kwargs: envpool options overriding the suite defaults.
    num_threads: envpool worker threads per instance (0: envpool's default,
      min(batch size, CPU cores)).

  Raises:
    ValueError: unknown suite or envpool id, an id of another suite, or a
      non-discrete action space.
    ImportError: Procgen without Qt5 (the message says what to install).
  """
  import envpool  # pylint: disable=g-import-not-at-top
  options = envpool_options(suite, kwargs)
  if name not in envpool.list_all_envs():
    raise ValueError(f"env.name={name!r} is not an envpool environment id "
                     "(envpool.list_all_envs() lists them)")
  try:
    known = envpool.make_spec(name).config._fields
    unknown = sorted(set(options) - set(known))
    if unknown:
      raise ValueError(
          f"env.name={name!r} does not take the option(s) {unknown} (from "
          f"env.suite={suite!r} defaults or env.kwargs); is env.suite right? "
          f"Its options: {sorted(set(known) - set(SET_BY_THE_SYSTEM))}")
    spec = envpool.make_spec(name, **options)
  except ImportError as error:
    if suite == "procgen":
      raise ImportError(f"{QT_HINT} ({error})") from error
    raise
  except TypeError as error:      # a value of the wrong type
    culprits = []
    for option, value in options.items():
      try:
        envpool.make_spec(name, **{option: value})
      except TypeError:
        culprits.append(f"env.kwargs.{option}={value!r}")
    raise ValueError(
        f"env.name={name!r}: {', '.join(culprits) or 'an option'} has a value "
        f"of the wrong type for envpool ({str(error).splitlines()[0]})"
    ) from error
  space = spec.action_space
  if not hasattr(space, "n"):
    raise ValueError(f"{name}: needs a discrete action space, got {space}")
  observation = OBSERVATIONS[suite]
  raw_space = spec.observation_space
  if (suite == "minigrid") != hasattr(raw_space, "spaces"):
    raise ValueError(
        f"env.name={name!r} does not belong to env.suite={suite!r} (its "
        f"observation space is {type(raw_space).__name__}; minigrid has a "
        "Dict space, the other suites pixel Boxes)")
  raw_shape = (raw_space["image"].shape if suite == "minigrid"
               else raw_space.shape)
  dummy = {"image": np.zeros((1,) + raw_shape, np.uint8)} if (
      suite == "minigrid") else np.zeros((1,) + raw_shape, np.uint8)
  obs_shape = tuple(observation(dummy).shape[1:])
  max_episode_steps = int(spec.config.max_episode_steps)

  def make(num_envs, seed, batch_size=None):
    if suite == "vizdoom":
      # Every ViZDoom game creates ./_vizdoom/ if it is missing; games
      # starting together race on it, and the loser crashes ("Failed to
      # create ./_vizdoom/ directory: File exists") and recv() then hangs.
      os.makedirs("_vizdoom", exist_ok=True)
    return envpool.make(name, env_type="gymnasium", num_envs=num_envs,
                        batch_size=batch_size or num_envs,
                        num_threads=num_threads,
                        seed=int(seed), **options)

  return Suite(name, make, observation, obs_shape, int(space.n),
               max_episode_steps)
