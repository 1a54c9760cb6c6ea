r"""Copy task: an eLSTM trained by RTRL, TBPTT or BPTT (docs/COPY_TASK.md).

  python -m experiments.copy_task \
      --config=experiments/configs/copy_task.py:cpu \
      --config.train.mode=tbptt --config.train.segment_length=5 \
      --workdir=runs/copy_tbptt5 [--resume]

The run folder gets config.json, metrics.jsonl/.csv, TensorBoard events,
checkpoints/ and, at the end, results.json (test-set scalars). SIGTERM or
Ctrl-C saves a checkpoint and exits 0 printing {"status": "preempted", ...}
(see rtrl_jax.experiment.preemption; a second Ctrl-C aborts); `--resume`
continues from the latest intact checkpoint and may change the logging,
evaluation and checkpoint cadence or raise train.num_steps.
Exit status: 0 done or preempted, 1 a bad config or flag (one line naming the
key), a workdir in use, or a non-finite or diverging loss or gradient norm
(naming the step; the last checkpoint is from before it).
"""

import json
import math
import os
import sys
import time

import jax
from absl import app, flags, logging

from experiments.configs import copy_task as copy_task_configs
from rtrl_jax.tasks import copy_task
from rtrl_jax.tasks import from_config
from rtrl_jax import experiment
from rtrl_jax.experiment.run_logger import write_json

_CONFIG = experiment.cli.define_config_flag(
    "experiments/configs/copy_task.py",
    "A config file, optionally with ':preset' (cpu: the default, gpu/paper, "
    "tiny).")
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Run folder (default runs/copy_task_<mode>_<time>).")
_RESUME = flags.DEFINE_bool(
    "resume", False, "Continue from the latest checkpoint in --workdir.")


# A training loss (cross-entropy per copied bit) this far above chance's
# (log 2 = 0.69) means the parameters have blown up: the run stops there.
DIVERGED_LOSS = 100.0


def estimated_bytes(config):
  """A lower estimate of the memory one train step and one evaluation
  batch take (float32): parameters with Adam's two moments, the RTRL
  sensitivities, and the activations autodiff keeps over a segment (the
  whole sequence for bptt, and for evaluation)."""
  n, d = config.model.hidden_size, copy_task.NUM_TOKENS
  length = 2 * config.data.max_length
  params = 3 * n * d + n * n + 6 * n + 2 * n + 2
  segment = (length if config.train.mode == "bptt"
             else config.train.segment_length)
  train = (3 * params + config.train.batch_size * (2 * n * d + 5 * n)
           + 8 * segment * config.train.batch_size * n)
  evaluate = params + 4 * length * config.data.eval_batch_size * n
  return 4 * max(train, evaluate)


def config_rules():
  """Value rules of the copy-task config, for `experiment.check_config`."""
  positive = experiment.config.positive
  finite_positive = experiment.config.finite_positive
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
      ("train.learning_rate", finite_positive, "positive and finite"),
      ("train.b1", lambda v: 0 <= v < 1, "in [0, 1)"),
      ("train.b2", lambda v: 0 <= v < 1, "in [0, 1)"),
      ("train.eps", lambda v: math.isfinite(v) and v >= 0,
       "non-negative and finite"),
      ("train.clip_norm", finite_positive, "positive and finite"),
      ("model.init_scale", math.isfinite, "finite"),
      ("model.forget_bias", math.isfinite, "finite"),
      ("@model.hidden_size", *experiment.config.fits_in_memory(
          estimated_bytes, "train.batch_size, data.max_length and "
          "data.eval_batch_size")),
      ("run.log_every", positive, "a positive int"),
      ("run.eval_every", positive, "a positive int"),
      ("run.checkpoint_every", positive, "a positive int"),
      ("run.max_checkpoints", positive, "a positive int"),
      experiment.config.wandb_rule(),
  ]


def run(config, workdir, resume):
  """Trains, evaluates on the test set and returns the results dict."""
  experiment.check_config(config, copy_task_configs.get_config(),
                          config_rules())
  checkpointer, resume_step = experiment.prepare_workdir(
      workdir, config, resume, max_to_keep=config.run.max_checkpoints,
      resume_may_change=copy_task_configs.RESUME_MAY_CHANGE,
      resume_may_extend=copy_task_configs.RESUME_MAY_EXTEND)
  try:
    done = experiment.finished_results(workdir, resume_step,
                                       config.train.num_steps)
    if done is not None:
      checkpointer.close()
      print(f"{workdir}: ended before ({done['status']} at step "
            f"{done['step']}); nothing to resume", flush=True)
      return done
    state = from_config.init_train_state(config)
    if resume_step is not None:
      state, _ = checkpointer.restore(state, resume_step)
      logging.info("resumed %s from step %d", workdir, resume_step)
  except BaseException:
    checkpointer.close()
    raise
  logger = experiment.RunLogger(workdir, config, resume_step=resume_step,
                                use_wandb=config.run.wandb)
  valid_set, test_set = from_config.evaluation_sets(config)
  evaluate = jax.jit(from_config.evaluate(config))
  train_step = jax.jit(from_config.train_step(config), donate_argnums=0)

  def evaluate_valid(state):
    return {f"valid/{k}": v for k, v in evaluate(state.params,
                                                  valid_set).items()}

  started = time.time()
  try:
    state, result = experiment.train_loop(
        state, train_step,
        experiment.LoopOptions(
            num_steps=config.train.num_steps,
            log_every=config.run.log_every,
            eval_every=config.run.eval_every,
            checkpoint_every=config.run.checkpoint_every,
            progress_metric="valid/accuracy",
            progress=config.run.progress,
            divergence_limits={"loss": DIVERGED_LOSS}),
        start_step=resume_step or 0,
        logger=logger,
        checkpointer=checkpointer,
        evaluate=evaluate_valid,
        should_stop=lambda m: m["valid/accuracy"] >= config.train.stop_accuracy,
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
  experiment.cli.start_main(argv)
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
