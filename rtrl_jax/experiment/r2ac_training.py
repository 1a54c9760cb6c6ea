"""R2AC Anakin training as functions: `run(config, workdir, resume)` (one
run with logs, checkpoints and evaluations) and `train_seeds(config, seeds,
...)` (several seeds in one program, for the study and the demo).

The library half of experiments/r2ac_anakin.py (which adds the absl flags),
so that other scripts (experiments/study.py, experiments/r2ac_demo.py) can
train in-process without defining the script's flags twice. The config is
one of experiments/configs/r2ac.py, checked by the caller
(`experiments.configs.r2ac.check`) before it is passed here.
"""

import json
import os
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rtrl_jax.rl import anakin
from rtrl_jax.rl import evaluation
from rtrl_jax.rl import from_config
from rtrl_jax.rl.agents import r2ac
from rtrl_jax import experiment
from rtrl_jax.experiment.run_logger import write_json

RETURN_PLOT = "return_vs_frames.png"
# What a --resume may change: cadence and output only, not what is trained.
RESUME_MAY_CHANGE = ("run.progress", "run.checkpoint_every", "run.log_every",
                     "run.max_checkpoints", "run.wandb", "eval.every",
                     "eval.episodes", "eval.final_episodes")
# What a --resume may raise: total_updates, to train on past the planned
# end. It is also the learning-rate decay's horizon: see extension_note.
RESUME_MAY_EXTEND = ("total_updates",)
# |loss| beyond this stops a run at once (the divergence guard's relative
# test needs 5 logged calls first). The loss is summed over the unroll:
# M·B steps of value errors below ~1e2 (returns of γ = 0.99) and policy
# terms keep it below ~1e7 on the CPU presets and :paper; a diverging run
# (learning rate 10) reaches 5e9 in its first call.
LOSS_LIMIT = 1e9


def extension_note(config, saved_total, update):
  """The line a --resume that raises total_updates from `saved_total` (at
  update `update`) prints, or None if it does not raise it.

  The schedule, r2ac.learning_rate_schedule(lr, total_updates), is read at
  the update counter the optimizer state carries (restored from the
  checkpoint), so the resumed run follows the new schedule: the linear
  decay now reaches 0 at the new total, and at `update` the learning rate
  rises from the old schedule's value to the new one's. That keeps the
  schedule a function of (update, total_updates) alone, as the logged
  train/learning_rate is; decaying from the current value instead would
  make it depend on where the run was resumed, which no state records."""
  if saved_total is None or config.total_updates <= saved_total:
    return None
  new, opt = config.total_updates, config.optimizer
  if not opt.anneal_lr:
    return (f"total_updates: {saved_total} -> {new} (constant learning rate "
            f"{opt.learning_rate:g}, unchanged)")
  old_lr = float(r2ac.learning_rate_schedule(opt.learning_rate, saved_total)(
      update))
  new_lr = float(from_config.learning_rate_schedule(config)(update))
  return (f"total_updates: {saved_total} -> {new}: the learning rate's "
          f"linear decay now reaches 0 at update {new}, so at update {update} "
          f"it rises from {old_lr:.4g} to {new_lr:.4g} "
          f"({opt.learning_rate:g}·(1 - {update}/{new})) and decays from "
          "there")


def _saved_total_updates(workdir):
  """total_updates in the config.json of the run in `workdir` (read before
  the RunLogger writes the resumed config over it), or None."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f).get("total_updates")


def make_train_step(config, system):
  """runner -> (runner, metrics): one `system.step` plus scalars.

  Adds frames (environment steps so far, all environments) and the learning
  rate of the last update.
  """
  frames_per_update = system.num_envs * system.unroll_length
  schedule = from_config.learning_rate_schedule(config)

  @jax.jit
  def summarize(metrics):
    return {**metrics,
            "frames": metrics["update"].astype(jnp.float32) * frames_per_update,
            "learning_rate": schedule(metrics["update"] - 1)}

  def train_step(runner):
    runner, metrics = system.step(runner)
    return runner, summarize(metrics)

  return train_step


def make_evaluation(config, system, episodes=None, prefix="eval"):
  """runner -> {"<prefix>/sampled_return": ..., "<prefix>/greedy_return": ...}.

  The primary number is the return with actions *sampled* from the policy
  (what the agent does; a near-uniform policy scores near chance however
  good its argmax is); greedy (argmax) is a secondary column. `episodes`
  per kind (default config.eval.episodes), on keys of their own.
  """
  episodes = episodes or config.eval.episodes
  kinds = {kind: evaluation.make_episode_returns(
      system.agent, system.env, episodes, greedy=kind == "greedy")
           for kind in ("sampled", "greedy")}
  eval_key = jax.random.PRNGKey(config.seed + 1)

  def evaluate(runner):
    key = jax.random.fold_in(eval_key, runner.update)
    out = {}
    for index, (kind, episode_returns) in enumerate(kinds.items()):
      returns, lengths = episode_returns(runner.params,
                                         jax.random.fold_in(key, index))
      out[f"{prefix}/{kind}_return"] = jnp.mean(returns)
      out[f"{prefix}/{kind}_length"] = jnp.mean(lengths)
    return out

  return evaluate


class SeedsResult(NamedTuple):
  """What `train_seeds` returns (NumPy; S seeds)."""
  frames: np.ndarray           # [calls] environment frames after each call
  train_return: np.ndarray     # [calls, S] mean return of the training
                               # episodes (sampled actions) that ended in
                               # the call; NaN where none did
  sampled: np.ndarray          # [S, eval_episodes] final sampled returns
  greedy: np.ndarray           # [S, greedy_episodes] final greedy returns
  seconds_per_frame: float     # training wall time per frame (all seeds)
                               # after the first (compiling) call


def train_seeds(config, seeds, eval_episodes, greedy_episodes,
                eval_seed_offset=10_000, on_call=None):
  """Trains `config` for every seed in one program; evaluates each seed.

  Seed s is the run `experiments.r2ac_anakin` makes with config.seed = s
  (`from_config.anakin_system(config, num_seeds=...)`). At the end each seed's parameters
  get `eval_episodes` sampled and `greedy_episodes` greedy episodes on
  evaluation keys PRNGKey(eval_seed_offset + s). on_call(call, frames,
  returns [S]) is called after every call (progress). Raises
  NonFiniteLossError on a non-finite loss.
  """
  system = from_config.anakin_system(config, num_seeds=len(seeds))
  runner = system.init(anakin.seed_keys(seeds))
  calls = config.total_updates // config.updates_per_call
  frames_per_call = (system.num_envs * system.unroll_length
                     * system.updates_per_call)
  curve, compiled = [], None
  for call in range(calls):
    runner, metrics = system.step(runner)
    metrics = jax.device_get(metrics)
    if not np.all(np.isfinite(metrics["loss/total"])):
      raise experiment.NonFiniteLossError(
          f"non-finite loss at call {call + 1} (seeds "
          f"{np.asarray(seeds)[~np.isfinite(metrics['loss/total'])].tolist()})")
    returns = metrics["episode_return_mean"]
    curve.append(returns)
    if compiled is None:
      compiled = time.time()
    if on_call is not None:
      on_call(call + 1, (call + 1) * frames_per_call, returns)
  seconds = time.time() - compiled
  keys = anakin.seed_keys([eval_seed_offset + seed for seed in seeds])
  finals = {}
  for kind, episodes in (("sampled", eval_episodes),
                         ("greedy", greedy_episodes)):
    summary = evaluation.evaluate_seeds(
        system.agent, system.env, runner.params, keys, episodes,
        greedy=kind == "greedy")
    finals[kind] = summary.returns
  timed_frames = (calls - 1) * frames_per_call * len(seeds)
  return SeedsResult(
      frames=np.arange(1, calls + 1) * float(frames_per_call),
      train_return=np.stack(curve), sampled=finals["sampled"],
      greedy=finals["greedy"],
      seconds_per_frame=seconds / timed_frames if timed_frames else np.nan)


def plot_return_vs_frames(workdir, path, title="",
                          frames_key="train/frames",
                          return_key="train/episode_return_mean",
                          frames_label="environment frames"):
  """Training returns and evaluation returns vs frames, as a PNG.

  Reads the run's metrics.jsonl: `return_key` against `frames_key` (Anakin:
  the defaults; Sebulba: train/env_steps and
  train/window/episode_return_mean), and eval/sampled_return (primary) and
  eval/greedy_return (secondary) where logged.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  rows = experiment.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  frames_at = {row["step"]: row[frames_key] for row in rows
               if frames_key in row}
  frames_at.setdefault(0, 0.0)
  train = [(frames_at[row["step"]], row[return_key])
           for row in rows if return_key in row and row["step"] in frames_at]
  evaluations = {kind: [(frames_at[row["step"]], row[f"eval/{kind}_return"])
                         for row in rows if f"eval/{kind}_return" in row
                         and row["step"] in frames_at]
                  for kind in ("sampled", "greedy")}
  sampled, greedy = evaluations["sampled"], evaluations["greedy"]
  figure, axes = plt.subplots(figsize=(7, 4.2))
  for points, label, style in (
      (train, "training episodes (sampled actions)", "-"),
      (sampled, "evaluation, sampled actions", "o-"),
      (greedy, "evaluation, greedy (argmax) actions", "x:")):
    if points:
      axes.plot(*zip(*points), style, label=label, markersize=3)
  if not train and not greedy and not sampled:
    axes.text(0.5, 0.5, "no episode has ended yet", ha="center",
              va="center", transform=axes.transAxes)
  axes.set_xlabel(frames_label)
  axes.set_ylabel("episode return")
  axes.set_title(title, fontsize=9)
  axes.grid(alpha=0.3)
  if train or greedy or sampled:
    axes.legend(fontsize=8)
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  plt.close(figure)


def where_to_look(workdir, plot):
  """The lines a finished R2AC run prints: its plot, logs and evaluation."""
  return (f"plot: {plot}\n"
          f"logs: {os.path.join(workdir, 'metrics.csv')}, "
          f"{os.path.join(workdir, 'metrics.jsonl')}, TensorBoard: "
          f"tensorboard --logdir {os.path.join(workdir, 'tensorboard')}\n"
          f"evaluate: python -m experiments.evaluate_r2ac --workdir={workdir}")


def describe(config):
  env = config.env.name + "".join(
      f" {k}={v}" for k, v in sorted(config.env.kwargs.items()))
  return (f"R2AC {config.network.core}-{config.network.hidden_size} "
          f"{config.gradient.upper()} (M={config.unroll_length}) on {env}")


def run(config, workdir, resume):
  """Trains; returns the results dict (also written to results.json).

  Every `eval.every` calls the run logs eval/sampled_return (the
  primary number) and eval/greedy_return over `eval.episodes` episodes
  each; at the end it evaluates `eval.final_episodes` episodes of each kind
  (results.json: final/sampled_return, final/greedy_return).
  """
  try:      # before prepare_workdir: a bad config leaves no run folder behind
    system = from_config.anakin_system(config)
  except (TypeError, ValueError) as error:
    raise experiment.ConfigError(str(error).splitlines()[0]) from error
  checkpointer, resume_step = experiment.prepare_workdir(
      workdir, config, resume, max_to_keep=config.run.max_checkpoints,
      resume_may_change=RESUME_MAY_CHANGE,
      resume_may_extend=RESUME_MAY_EXTEND)
  num_calls = config.total_updates // config.updates_per_call
  done = experiment.finished_results(workdir, resume_step, num_calls)
  if done is not None:
    checkpointer.close()
    print(f"{workdir}: finished before (call {resume_step} of {num_calls}); "
          "nothing to resume", flush=True)
    plot_path = os.path.join(workdir, RETURN_PLOT)
    if not os.path.exists(plot_path):     # killed before it was drawn
      plot_return_vs_frames(workdir, plot_path, describe(config))
    return {**done, "plot": plot_path}
  runner = system.init(jax.random.PRNGKey(config.seed))
  if resume_step is not None:
    runner, _ = checkpointer.restore(runner, resume_step)
    print(f"resumed {workdir} from call {resume_step} (update "
          f"{int(runner.update)})", flush=True)
    note = extension_note(config, _saved_total_updates(workdir),
                          int(runner.update))
    if note:
      print(note, flush=True)
  evaluate = make_evaluation(config, system)
  logger = experiment.RunLogger(workdir, config, resume_step=resume_step,
                                use_wandb=config.run.wandb)
  frames_per_call = (system.num_envs * system.unroll_length
                     * system.updates_per_call)
  print(f"{describe(config)}: {num_calls} calls of {config.updates_per_call} "
        f"updates, {frames_per_call} frames each; logs in {workdir}",
        flush=True)
  started = time.time()
  try:
    runner, result = experiment.train_loop(
        runner, make_train_step(config, system),
        experiment.LoopOptions(
            num_steps=num_calls, log_every=config.run.log_every,
            eval_every=config.eval.every,
            checkpoint_every=config.run.checkpoint_every,
            loss_key="loss/total",
            divergence_limits={"loss/total": LOSS_LIMIT},
            progress=config.run.progress,
            progress_metric="eval/sampled_return",
            progress_train_metrics=("episode_return_mean",),
            progress_unit="frame", progress_unit_scale=frames_per_call),
        start_step=resume_step or 0, logger=logger, checkpointer=checkpointer,
        evaluate=evaluate,
        checkpoint_metadata=lambda step, runner: {
            "call": step, "update": int(runner.update)})
  finally:
    logger.close()
    checkpointer.close()
  if result.status == "preempted":
    return {"status": "preempted", "call": result.step}
  return _finish(config, system, workdir, runner, result, started)


def _finish(config, system, workdir, runner, result, started):
  """The final evaluation, results.json and the return plot of a run whose
  training loop ended (this session began at time.time() = `started`);
  returns the results dict."""
  rows = experiment.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  last_train = [row for row in rows if "train/frames" in row][-1]
  final = jax.device_get(make_evaluation(
      config, system, episodes=config.eval.final_episodes, prefix="final")(
          runner))
  results = {"status": result.status, "call": result.step,
             "updates": int(runner.update), "frames": last_train["train/frames"],
             "train/episode_return_mean":
                 last_train["train/episode_return_mean"],
             "seconds_this_session": round(time.time() - started, 1),
             **result.eval_metrics,
             **{key: float(value) for key, value in final.items()},
             "final/episodes": config.eval.final_episodes}
  write_json(os.path.join(workdir, "results.json"),
             experiment.json_safe(results), indent=2)
  plot_path = os.path.join(workdir, RETURN_PLOT)
  plot_return_vs_frames(workdir, plot_path, describe(config))
  results["plot"] = plot_path
  return results
