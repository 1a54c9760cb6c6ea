"""Command-line parsing for absl scripts: any flag or config error is one line.

ml_collections raises a multi-line traceback for an unknown override such as
`--config.train.learning_rat=0.1`; `parse_flags` (pass it to `app.run` as
`flags_parser`) turns it into

    error: config.train.learning_rat: 'learning_rat' Did you mean ...

on stderr and exit status 1.
"""

import re
import sys

from absl import flags
from absl import logging


def describe_flag_error(error, argv):
  """One line for `error`, led by the `--config.<key>` it concerns, if any."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  if any(line.startswith("Traceback") for line in lines):
    lines = lines[-1:]
  text = " ".join(lines).replace("\\n", " ").replace("\\'", "'")
  text = text.strip("'\" ")
  for arg in argv[1:]:
    match = re.match(r"--(config\.[\w.]+)", arg)
    if match and match.group(1).rsplit(".", 1)[-1] in text:
      if text == match.group(1).rsplit(".", 1)[-1]:
        # A locked ConfigDict's KeyError says only the key's name.
        return (f"{match.group(1)}: unknown key (the config file defines no "
                f"such key)")
      return f"{match.group(1)}: {text}"
  return text or type(error).__name__


def parse_flags(argv):
  """`flags.FLAGS(argv)`, exiting with a one-line message on any error."""
  try:
    return flags.FLAGS(argv)
  except Exception as error:  # pylint: disable=broad-except
    sys.exit(f"error: {describe_flag_error(error, argv)}")


def start_main(argv, quiet_logging=True):
  """The start of every script's `main`: no positional arguments (exit 1
  naming them) and, unless --verbosity is given, absl logging at WARNING
  (orbax logs every checkpoint save at INFO)."""
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}")
  if quiet_logging and not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
