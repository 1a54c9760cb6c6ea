r"""Copy task: an eLSTM trained by RTRL, TBPTT or BPTT (docs/COPY_TASK.md).

  python -m experiments.copy_task \
      --config=experiments/configs/copy_task.py:cpu \
      --config.train.mode=tbptt --config.train.segment_length=5 \
      --workdir=runs/copy_tbptt5 [--resume]

The run folder gets config.json, metrics.jsonl/.csv, TensorBoard events,
checkpoints/ and, at the end, results.json (test-set scalars). SIGTERM saves a
checkpoint and exits 0; `--resume` continues from the latest checkpoint.
Exit status: 0 done or preempted, 1 a bad config or flag (one line naming the
key) or a non-finite loss (naming the step).
"""

import json
import os
import sys
import time

import jax
from absl import app, flags, logging

from experiments.configs import copy_task as copy_task_configs
from rtrl_jax import copy_task
from rtrl_jax import experiment
from rtrl_jax.experiment.run_logger import write_json

_CONFIG = experiment.cli.define_config_flag(
    "experiments/configs/copy_task.py",
    "A config file, optionally with ':name' (paper, cpu, tiny).")
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Run folder (default runs/copy_task_<mode>_<time>).")
_RESUME = flags.DEFINE_bool(
    "resume", False, "Continue from the latest checkpoint in --workdir.")


def config_rules():
  """Value rules of the copy-task config, for `experiment.check_config`."""
  positive = experiment.config.positive
  return [
      ("model.cell", *experiment.config.one_of("elstm")),
      ("model.hidden_size", positive, "a positive int"),
      ("model.init_scale", positive, "positive"),
      ("data.max_length", positive, "a positive int"),
      ("data.valid_size", positive, "a positive int"),
      ("data.test_size", positive, "a positive int"),
      ("data.eval_batch_size", positive, "a positive int"),
      ("@data.eval_batch_size",
       lambda c: c.data.valid_size % c.data.eval_batch_size == 0
       and c.data.test_size % c.data.eval_batch_size == 0,
       "a divisor of data.valid_size and data.test_size"),
      ("train.mode", *experiment.config.one_of(*copy_task.MODES)),
      ("train.update_every", *experiment.config.one_of(*copy_task.UPDATES)),
      ("train.segment_length", positive, "a positive int"),
      ("@train.segment_length",
       lambda c: c.train.mode == "bptt"
       or (2 * c.data.max_length) % c.train.segment_length == 0,
       "a divisor of 2·data.max_length (rtrl and tbptt)"),
      ("@train.update_every",
       lambda c: c.train.mode != "bptt" or c.train.update_every == "sequence",
       "'sequence' when train.mode is 'bptt'"),
      ("train.batch_size", positive, "a positive int"),
      ("train.num_steps", lambda v: v >= 0, "a non-negative int"),
      ("train.learning_rate", positive, "positive"),
      ("train.b1", lambda v: 0 <= v < 1, "in [0, 1)"),
      ("train.b2", lambda v: 0 <= v < 1, "in [0, 1)"),
      ("train.eps", lambda v: v >= 0, "non-negative"),
      ("train.clip_norm", positive, "positive"),
      ("run.log_every", positive, "a positive int"),
      ("run.eval_every", positive, "a positive int"),
      ("run.checkpoint_every", positive, "a positive int"),
      ("run.max_checkpoints", positive, "a positive int"),
  ]


def run(config, workdir, resume):
  """Trains, evaluates on the test set and returns the results dict."""
  experiment.check_config(config, copy_task_configs.get_config(),
                          config_rules())
  checkpointer, resume_step = experiment.prepare_workdir(
      workdir, config, resume, max_to_keep=config.run.max_checkpoints)
  done = experiment.finished_results(workdir, resume_step,
                                     config.train.num_steps)
  if done is not None:
    checkpointer.close()
    print(f"{workdir}: ended before ({done['status']} at step "
          f"{done['step']}); nothing to resume", flush=True)
    return done
  state = copy_task.init_train_state(config)
  if resume_step is not None:
    state, _ = checkpointer.restore(state, resume_step)
    logging.info("resumed %s from step %d", workdir, resume_step)
  logger = experiment.RunLogger(workdir, config, resume_step=resume_step,
                                use_wandb=config.run.wandb)
  valid_set, test_set = copy_task.evaluation_sets(
      config.data.seed, config.data.valid_size, config.data.test_size,
      config.data.max_length)
  evaluate = jax.jit(copy_task.make_evaluate(config))
  train_step = jax.jit(copy_task.make_train_step(config), donate_argnums=0)

  def evaluate_valid(state):
    return {f"valid/{k}": v for k, v in evaluate(state.params,
                                                  valid_set).items()}

  started = time.time()
  try:
    state, result = experiment.train_loop(
        state, train_step, start_step=resume_step or 0,
        num_steps=config.train.num_steps, logger=logger,
        checkpointer=checkpointer, log_every=config.run.log_every,
        eval_every=config.run.eval_every,
        checkpoint_every=config.run.checkpoint_every,
        evaluate=evaluate_valid,
        should_stop=lambda m: m["valid/accuracy"] >= config.train.stop_accuracy,
        progress_metric="valid/accuracy", progress=config.run.progress,
        checkpoint_metadata=lambda step, state: {
            "step": step, "data_position": int(state.data_position)})
    if result.status == "preempted":
      return {"status": "preempted", "step": result.step}
    test = {f"test/{k}": float(v)
            for k, v in evaluate(state.params, test_set).items()}
    logger.write(result.step, test)
  finally:
    logger.close()
    checkpointer.close()
  results = {"status": result.status, "step": result.step,
             "seconds_this_session": round(time.time() - started, 1),
             **result.eval_metrics, **test}
  write_json(os.path.join(workdir, "results.json"),
             experiment.json_safe(results), indent=2)
  return results


def main(argv):
  experiment.cli.start_main(argv, quiet_logging=False)
  config = _CONFIG.value
  workdir = experiment.cli.run_workdir(
      _WORKDIR.value, f"copy_task_{config.train.mode}", _RESUME.value)
  try:
    results = run(config, workdir, _RESUME.value)
  except (experiment.ConfigError, experiment.NonFiniteLossError) as error:
    sys.exit(f"error: {error}")
  print(json.dumps(experiment.json_safe(results)))


if __name__ == "__main__":
  app.run(main, flags_parser=experiment.cli.parse_flags)
