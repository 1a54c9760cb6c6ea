"""Command-line parsing for absl scripts: any flag or config error is one line.

ml_collections raises a multi-line traceback for an unknown override such as
`--config.train.learning_rat=0.1`; `parse_flags` (pass it to `app.run` as
`flags_parser`) turns it into

    error: config.train.learning_rat: 'learning_rat' Did you mean ...

on stderr and exit status 1. Scripts define their config flag with
`define_config_flag`: ml_collections already applies `--config.<key>`
overrides to the flag's default file while the flag is defined (at import,
before `parse_flags` runs), and that error is one line too.
"""

import os
import re
import sys
import time

from absl import flags
from absl import logging
from ml_collections import config_flags

from rtrl_jax.experiment import preemption


def describe_flag_error(error, argv):
  """One line for `error`, led by the `--config.<key>` it concerns, if any."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  if any(line.startswith("Traceback") for line in lines):
    lines = lines[-1:]
  text = " ".join(lines).replace("\\n", " ").replace("\\'", "'").strip()
  if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
    text = text[1:-1].strip()       # the quotes str(KeyError) adds
  if re.fullmatch(r"'\w+'", text):
    text = text[1:-1]     # ConfigDict's AttributeError quotes the key twice
  parse = re.match(r"flag (--config=\S+): Error whilst parsing config file:",
                   str(error))
  if parse:
    # The config file's get_config raised, e.g. for an unknown ":preset".
    reason = re.sub(r"^\w*(Error|Exception): ", "", text)
    return f"{parse.group(1)}: {reason}"
  suggestion = re.fullmatch(
      r"'?(\w+)'? Did you mean [\"'](\w+)[\"'] instead(?: of [\"']\w+[\"'])?\??",
      text)
  for arg in argv[1:]:
    match = re.match(r"--(config\.[\w.]+)", arg)
    if not match:
      continue
    key = match.group(1)
    if suggestion and suggestion.group(1) in key.split(".")[1:]:
      return (f"{key}: unknown key {suggestion.group(1)!r} (did you mean "
              f"{suggestion.group(2)!r}?)")
    if text in key.split(".")[1:]:
      # A locked ConfigDict's KeyError says only the (first) missing key.
      return (f"{key}: unknown key {text!r} (the config file defines no such "
              f"key)")
    value = arg.split("=", 1)[1] if "=" in arg else None
    if key.rsplit(".", 1)[-1] in text or (value and f"'{value}'" in text):
      return f"{key}: {text}"
  return text or type(error).__name__


def define_config_flag(default, help_string, accept_new_keys=False):
  """The `--config` flag (a config file, default `default`).

  Locked: `--config.<key>` must name a key the file defines. With
  `accept_new_keys` it may add keys (e.g. an environment parameter under
  env.kwargs that the file does not list); the script must then check the
  config against a reference that refuses unknown keys elsewhere
  (experiments/configs/r2ac.check_against does).

  Exits with `describe_flag_error`'s one line if the command line's
  overrides do not fit the default config, which ml_collections checks here,
  at definition, when `--config=` is not given.
  """
  try:
    return config_flags.DEFINE_config_file(
        "config", default, help_string, lock_config=not accept_new_keys,
        accept_new_attributes=accept_new_keys)
  except Exception as error:  # pylint: disable=broad-except
    sys.exit(f"error: {describe_flag_error(error, sys.argv)}")


def _config_load_error(name):
  """One line for a config flag whose file did not load, else None.

  ml_collections catches an OSError loading a `--config=` file (a mistyped
  path) and only raises it, as a traceback, where the config is first used;
  this looks at it while the command line is parsed.
  """
  error_config = getattr(config_flags.config_flags, "_ErrorConfig", None)
  value = flags.FLAGS[name].value
  if error_config is None or not isinstance(value, error_config):
    return None
  path = getattr(flags.FLAGS[name], "config_filename", None) or ""
  return _load_failure(name, str(path),
                       object.__getattribute__(value, "_error"))


def _load_failure(name, path, error):
  """"--config: cannot load <file>: <the error's last line>"."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  reason = lines[-1] if lines else type(error).__name__
  return f"--{name}: cannot load {path.split(':', 1)[0]}: {reason}"


def parse_flags(argv):
  """`flags.FLAGS(argv)`, exiting with a one-line message on any error,
  including a `--config=` file that cannot be loaded."""
  try:
    remaining = flags.FLAGS(argv)
    for name in flags.FLAGS:
      message = _config_load_error(name)
      if message:
        sys.exit(f"error: {message}")
    return remaining
  except Exception as error:  # pylint: disable=broad-except
    # `--config.<key>` overrides of a file that did not load fail on the
    # _ErrorConfig: name the file, not the override.
    while error.__cause__ is not None and "earlier failure to load" in str(
        error):
      error = error.__cause__
    if "Failed loading config file" in str(error):
      path = next((arg.split("=", 1)[1] for arg in argv[1:]
                   if arg.startswith(("--config=", "-config="))), "")
      sys.exit(f"error: {_load_failure('config', path, error)}")
    sys.exit(f"error: {describe_flag_error(error, argv)}")


def start_main(argv, quiet_logging=True, preemptible=True):
  """The start of every script's `main`: no positional arguments (exit 1
  naming them); unless --verbosity is given, absl logging at WARNING (orbax
  logs every checkpoint save at INFO); and, with `preemptible`, SIGTERM and
  SIGINT handled as `preemption` describes (save, or exit as preempted)."""
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}")
  if quiet_logging and not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  if preemptible:
    preemption.install()


def run_workdir(given, name, resume, num_processes=1):
  """The run folder: --workdir, or runs/<name>_<date>_<time> for a new
  single-process run. Exits with a one-line error where no default can be
  right: --resume (the run to continue has a name) and several processes
  (each would pick its own time), and for --resume of a --workdir that does
  not exist (a mistyped path would otherwise start a new run)."""
  if given:
    if resume and not os.path.exists(given):
      sys.exit(f"error: --resume: {given} does not exist (no run to "
               "continue there); check the path, or drop --resume to start a "
               "new run in it")
    return given
  if resume:
    sys.exit("error: --resume needs --workdir: the folder of the run to "
             "continue")
  if num_processes > 1:
    sys.exit(f"error: {num_processes} processes need --workdir: one folder "
             "they all share")
  return os.path.join("runs", f"{name}_{time.strftime('%Y%m%d_%H%M%S')}")
