r"""R2AC with the Sebulba system: envpool actor threads, a sharded learner.

  python -m experiments.r2ac_sebulba \
      --config=experiments/configs/sebulba.py[:name] \
      --workdir=runs/sebulba_minigrid [--resume]

Multi-host (one process per host; see launch/):

  python -m experiments.r2ac_sebulba --config=... --workdir=<shared folder> \
      --coordinator_address=host0:1234 --num_processes=2 --process_id=0

(`--distributed` alone lets JAX detect SLURM / TPU-pod settings.)

One loop step is one learner update (rtrl_jax/rl/sebulba/). Every
`run.log_every` updates the run logs the learner metrics, policy lag, episode
statistics, per-phase timings (`time/actor/*`, `time/learner/*`: mean
seconds per call) and env steps/s (`sps`). Checkpoints (every
`run.checkpoint_every` updates, and on SIGTERM, which then exits 0) hold the
learner state: parameters, optimizer state and the update counter. Actors
restart their episodes (fresh core states) on resume: envpool states are not
saveable. Exit status 1: a bad config or flag (one line naming the key), a
non-finite loss, or a dead actor thread (its traceback on stderr).
"""

import json
import os
import sys
import time

from absl import app, flags

from experiments.configs import sebulba as sebulba_configs
from rtrl_jax.experiment.r2ac_training import RETURN_PLOT
from rtrl_jax.experiment.r2ac_training import plot_return_vs_frames
from rtrl_jax.experiment.r2ac_training import where_to_look
from rtrl_jax import experiment
from rtrl_jax.experiment.run_logger import write_json

_CONFIG = experiment.cli.define_config_flag(
    "experiments/configs/sebulba.py",
    "A config file, optionally with ':name' (default, tiny, atari, "
    "tiny_atari, procgen, tiny_procgen, procgen_memory, vizdoom).",
    accept_new_keys=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Run folder (default runs/sebulba_<env>_<time>).")
_RESUME = flags.DEFINE_bool(
    "resume", False, "Continue from the latest checkpoint in --workdir.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False,
    "Call jax.distributed.initialize (implied by --coordinator_address).")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0 (multi-host).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None,
                                      "Number of processes (multi-host).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None,
                                   "This process's index (multi-host).")


def check_config(config):
  """Raises ConfigError for a bad config (one line naming the key)."""
  sebulba_configs.check(config)


def describe(config):
  seb = config.sebulba
  return (f"R2AC Sebulba {config.network.core}-{config.network.hidden_size} "
          f"{config.gradient.upper()} (M={config.unroll_length}) on "
          f"{config.env.name}, {seb.num_actor_threads} actor thread"
          f"{'' if seb.num_actor_threads == 1 else 's'} x "
          f"{seb.num_envs_per_thread} envs"
          f"{', synchronous' if seb.synchronous else ''}")


class _NullLogger:
  """Processes other than 0 do not write logs."""

  def write(self, step, scalars):
    del step, scalars

  def close(self):
    pass


def run(config, workdir, resume):
  """Trains; returns the results dict (also written to results.json)."""
  # pylint: disable=g-import-not-at-top
  import jax
  from rtrl_jax.rl import sebulba
  # pylint: enable=g-import-not-at-top
  check_config(config)
  try:      # before prepare_workdir: a bad config leaves no run folder behind
    system = sebulba.make_system(config)
  except (TypeError, ValueError, ImportError) as error:
    raise experiment.ConfigError(str(error).splitlines()[0]) from error
  checkpointer, resume_step = experiment.prepare_workdir(
      workdir, config, resume, max_to_keep=config.run.max_checkpoints,
      added_keys=sebulba_configs.ADDED_KEYS)
  done = experiment.finished_results(workdir, resume_step,
                                     config.total_updates)
  if done is not None:
    checkpointer.close()
    print(f"{workdir}: finished before (update {resume_step} of "
          f"{config.total_updates}); nothing to resume", flush=True)
    return {**done, "plot": os.path.join(workdir, RETURN_PLOT)}
  state = system.init(jax.random.PRNGKey(config.seed))
  if resume_step is not None:
    state, _ = checkpointer.restore(state, resume_step)
    state = jax.device_put(state, jax.sharding.NamedSharding(
        system.mesh, jax.sharding.PartitionSpec()))
    print(f"resumed {workdir} from update {resume_step}", flush=True)
  main_process = jax.process_index() == 0
  logger = (experiment.RunLogger(workdir, config, resume_step=resume_step,
                                 use_wandb=config.run.wandb)
            if main_process else _NullLogger())
  print(f"{describe(config)}; {jax.process_count()} process(es), learner "
        f"devices {len(system.mesh.devices.flat)}; logs in {workdir}",
        flush=True)

  def loop_step(state):
    """One loop step: the system's step, and on log steps the metrics of
    the log window (phase timings, sps, the window's episodes)."""
    state, metrics = system.step(state)
    if int(state.update) % config.run.log_every == 0:
      metrics.update(system.timing_metrics(reset=True))
    return state, metrics

  started = time.time()
  system.start(state)
  try:
    state, result = experiment.train_loop(
        state, loop_step,
        experiment.LoopOptions(
            num_steps=config.total_updates,
            log_every=config.run.log_every,
            eval_every=config.total_updates + 1,
            checkpoint_every=config.run.checkpoint_every,
            loss_key="loss/total",
            progress=config.run.progress and main_process,
            progress_train_metrics=("episode_return_mean", "policy_lag_mean"),
            progress_unit="frame",
            progress_unit_scale=(system.num_envs_per_step
                                 * config.unroll_length)),
        start_step=resume_step or 0,
        logger=logger,
        checkpointer=checkpointer,
        checkpoint_metadata=lambda step, state: {"update": step})
  finally:
    system.stop()
    logger.close()
    checkpointer.close()
  if result.status == "preempted":
    return {"status": "preempted", "update": result.step}
  results = {"status": result.status, "update": result.step,
             "seconds_this_session": round(time.time() - started, 1)}
  if main_process:
    rows = experiment.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    last = [row for row in rows if "train/env_steps" in row][-1]
    results.update({k.split("/", 1)[1]: v for k, v in last.items()
                    if k in ("train/env_steps", "train/sps",
                             "train/episode_return_mean",
                             "train/policy_lag_mean")})
    # The last update's episodes may be none; the last log window's are the
    # run's latest return.
    windows = [row for row in rows
               if "train/window/episode_return_mean" in row]
    if windows:
      results["window/episode_return_mean"] = windows[-1][
          "train/window/episode_return_mean"]
    write_json(os.path.join(workdir, "results.json"),
               experiment.json_safe(results), indent=2)
    results["plot"] = os.path.join(workdir, RETURN_PLOT)
    plot_return_vs_frames(
        workdir, results["plot"], describe(config),
        frames_key="train/env_steps",
        return_key="train/window/episode_return_mean",
        frames_label="envpool steps (agent steps + reset steps)")
  return results


def main(argv):
  # pylint: disable=g-import-not-at-top
  from rtrl_jax.rl import sebulba
  # pylint: enable=g-import-not-at-top
  experiment.cli.start_main(argv)
  if _DISTRIBUTED.value or _COORDINATOR.value:
    try:
      sebulba.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value,
                                     _PROCESS_ID.value)
    except (ValueError, RuntimeError) as error:
      sys.exit(f"error: jax.distributed.initialize: "
               f"{str(error).strip().splitlines()[0]}")
  elif _NUM_PROCESSES.value is not None or _PROCESS_ID.value is not None:
    sys.exit("error: --num_processes and --process_id need "
             "--coordinator_address (or --distributed); without it this "
             "would run as one process")
  config = _CONFIG.value
  # pylint: disable=g-import-not-at-top
  import jax
  # pylint: enable=g-import-not-at-top
  workdir = experiment.cli.run_workdir(
      _WORKDIR.value, f"sebulba_{config.env.name}", _RESUME.value,
      jax.process_count())
  try:
    results = run(config, workdir, _RESUME.value)
  except (experiment.ConfigError, experiment.NonFiniteLossError,
          sebulba.ActorError) as error:
    sys.exit(f"error: {error}")
  print(json.dumps(experiment.json_safe(results)))
  if results["status"] == "preempted":
    print(f"{workdir}: stopped at update {results['update']}; the same "
          "command with --resume continues it", file=sys.stderr)
  if "plot" in results:
    print(where_to_look(workdir, results["plot"]))


if __name__ == "__main__":
  app.run(main, flags_parser=experiment.cli.parse_flags)
