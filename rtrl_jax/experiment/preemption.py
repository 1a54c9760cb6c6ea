"""SIGTERM and SIGINT (Ctrl-C) for experiment scripts: save if there is
something to save, else exit at once with the status a preempted run has.

`install()` (called by `cli.start_main`, so by every script) replaces both
signals' handlers for the whole process:

  * inside `train_loop`, once this session's first step is done (with
    several processes: from the loop's start): the signal is remembered
    (`requested()`), the loop saves after the step in progress and the
    script prints {"status": "preempted", ...} and exits 0;
  * anywhere else (start-up, compilation of the first step, an evaluation
    before any step, the final evaluation, writing results): nothing new
    would be saved, so the process prints one JSON line
    {"status": "preempted", "signal": ..., "note": ...} on stdout and exits 0
    right away, even while the main thread is inside a long XLA compilation
    (a watcher thread gets the signal through `signal.set_wakeup_fd`; a Python
    handler would only run once the compilation returned). Exit 0 with
    "preempted" is what launch/slurm.sbatch requeues on, and `--resume`
    continues from the last checkpoint (redoing a lost final evaluation);
  * a second SIGINT while a save is pending aborts at once (exit 130, one
    line on stderr), as a second Ctrl-C is expected to;
  * once the script has returned and Python's exit handlers run, both are
    ignored: the run's outcome is written, and in the interpreter's
    teardown that follows (a few tenths of a second with JAX loaded) Python
    has put back the default action, so a late SIGTERM would turn a
    finished run into one killed by the signal (exit 143: a failed job for
    launch/slurm.sbatch). SIGKILL still ends a teardown that hangs.

Without `install()` (a script's `run()` called from Python or a test),
`train_loop` still turns SIGTERM and SIGINT into a checkpoint and a
"preempted" result while it runs, and nothing else changes.
"""

import atexit
import json
import os
import signal
import socket
import sys
import threading

PREEMPTED_EXIT = 0      # what launch/slurm.sbatch requeues on (with the line)
ABORT_EXIT = 130        # a second Ctrl-C

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class _State:
  def __init__(self):
    self.lock = threading.Lock()
    self.installed = False
    self.wakeup_fd = None
    self.deferring = False      # inside train_loop with something to save
    self.requested = None       # the signal's name, once one came
    self.exiting = False


_STATE = _State()


def _name(signum):
  return signal.Signals(signum).name


def _exit_now(signum):
  exit_preempted(_name(signum),
                 "outside the training loop (start-up, compilation or "
                 "evaluation) with nothing new to save; --resume continues "
                 "from the last checkpoint")


def exit_preempted(signal_name, note):
  """Prints {"status": "preempted", "signal": ..., "note": ...} on stdout and
  ends the process with PREEMPTED_EXIT (no cleanup: every file a resume
  reads is written atomically or repaired on resume)."""
  line = json.dumps({"status": "preempted", "signal": signal_name,
                     "note": note})
  try:
    sys.stdout.write("\n" + line + "\n")
    sys.stdout.flush()
  finally:
    os._exit(PREEMPTED_EXIT)   # pylint: disable=protected-access


def _abort(signum):
  try:
    sys.stderr.write(f"\n{_name(signum)} again while saving: aborted without "
                     "waiting for the checkpoint\n")
    sys.stderr.flush()
  finally:
    os._exit(ABORT_EXIT)   # pylint: disable=protected-access


def deliver(signum):
  """What a SIGTERM/SIGINT does (see the module doc); idempotent per
  delivery. Called by the watcher thread or, where the wakeup fd was taken
  over by someone else, by the Python handler."""
  with _STATE.lock:
    if _STATE.exiting:
      return
    if _STATE.requested is not None:
      if signum == signal.SIGINT:
        _STATE.exiting = True
        _abort(signum)
      return
    if _STATE.deferring:
      _STATE.requested = _name(signum)
      return
    _STATE.exiting = True
  _exit_now(signum)


def _watch(sock):
  while True:
    try:
      data = sock.recv(64)
    except InterruptedError:
      continue
    except OSError:
      return
    if not data:
      return
    for signum in data:
      if signum in [int(s) for s in _SIGNALS]:
        deliver(signum)


def _python_handler(signum, frame):
  del frame
  # The C-level handler already wrote the signal to the wakeup fd if it is
  # still ours: the watcher handles it. Else (another library set its own
  # wakeup fd) handle it here, once the main thread runs Python again.
  current = signal.set_wakeup_fd(-1)
  signal.set_wakeup_fd(current)
  if _STATE.wakeup_fd is None or current != _STATE.wakeup_fd:
    deliver(signum)


def _ignore_at_exit():
  for signum in _SIGNALS:
    signal.signal(signum, signal.SIG_IGN)


def install():
  """Takes over SIGTERM and SIGINT for this process (main thread only;
  a no-op elsewhere or when already installed)."""
  if _STATE.installed or (threading.current_thread()
                          is not threading.main_thread()):
    return
  receive, send = socket.socketpair()
  send.setblocking(False)
  signal.set_wakeup_fd(send.fileno(), warn_on_full_buffer=False)
  _STATE.wakeup_fd = send.fileno()
  _STATE.sockets = (receive, send)
  for signum in _SIGNALS:
    signal.signal(signum, _python_handler)
  threading.Thread(target=_watch, args=(receive,), daemon=True,
                   name="rtrl_jax-preemption").start()
  # Registered first, so run after every library's exit handler (while
  # those run, a signal still exits as preempted).
  atexit.register(_ignore_at_exit)
  _STATE.installed = True


def installed():
  return _STATE.installed


def reassert():
  """Installs this module's handlers again (main thread, once installed).
  Libraries may replace them at the C level: jax.distributed.initialize
  sets a SIGTERM handler of its own (a "preemption notifier" that only logs),
  so prepare_workdir and train_loop call this after it."""
  if _STATE.installed and (threading.current_thread()
                           is threading.main_thread()):
    for signum in _SIGNALS:
      signal.signal(signum, _python_handler)
    current = signal.set_wakeup_fd(_STATE.wakeup_fd,
                                   warn_on_full_buffer=False)
    del current


def set_deferring(value):
  """train_loop: True while a signal is answered by a checkpoint after the
  step in progress, False while exiting at once loses nothing."""
  _STATE.deferring = bool(value)


def requested():
  """The name of the signal received while deferring, else None."""
  return _STATE.requested


def clear():
  """Forgets an answered request (train_loop, when it starts)."""
  _STATE.requested = None
  _STATE.deferring = False
