"""The study's report, rebuilt from its cell folders alone (experiments/study.py).

Writes <report_dir>/report.md (the tables, with the command and commit),
summary.csv (one row per cell), claim.png (seeds that solve each span, one
curve per system, beside each system's cost per frame) and
curves_<task>.png (sampled training return vs frames). Cells without a
result yet show as "—", so a partial study gives a partial report.
"""

import csv
import os
import subprocess
import time

import numpy as np

from experiments.configs import study as study_configs

DASH = "—"


def _commit():
  try:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, check=True,
                          timeout=10).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return "unknown"


def cell_summary(study, result):
  """Per-cell numbers over seeds: mean/std of the per-seed sampled means,
  seeds solved (memory tasks: sampled >= solved_threshold), greedy mean,
  microseconds per frame."""
  # json_safe wrote NaN (a diverged cell) as null.
  sampled = np.asarray(result["sampled_mean"], float)
  greedy = np.asarray(result["greedy_mean"], float)
  seconds = result.get("seconds_per_frame")
  memory = (result["stage"] != "defaults"
            and study.tasks[result["task"]].kind == "memory")
  return dict(
      sampled_mean=float(np.mean(sampled)), sampled_std=float(np.std(sampled)),
      solved=(int(np.sum(sampled >= study.solved_threshold)) if memory
              else None),
      seeds=len(sampled), greedy_mean=float(np.mean(greedy)),
      us_per_frame=1e6 * float("nan" if seconds is None else seconds),
      status=result["status"])


def _fmt(summary, digits=2, solved=True):
  if summary is None:
    return DASH
  if summary["status"] != "finished":
    return summary["status"]
  text = (f"{summary['sampled_mean']:.{digits}f} ± "
          f"{summary['sampled_std']:.{digits}f}")
  if solved and summary["solved"] is not None:
    text += f" ({summary['solved']}/{summary['seeds']})"
  return text


def _digits(study, task):
  return 0 if study.tasks[task].score_range[1] > 10 else 2


def _task_label(study, task):
  kwargs = study.tasks[task].kwargs
  if "memory_length" in kwargs:
    return f"MemoryChain L={kwargs.memory_length}"
  return study.tasks[task].env.split(":")[-1]


def _system_label(study, name):
  system = study.systems[name]
  core = {"elstm": "eLSTM", "lstm": "LSTM",
          "feedforward": "feed-forward"}.get(system.core, system.core)
  if system.core == "feedforward":
    return core
  return f"{core} {system.gradient.upper()}({system.unroll_length})"


def _plot_claim(study, main, systems, path):
  """Seeds solved vs span L per system, and microseconds per frame."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  memory = [task for task in study_configs.ordered_tasks(study)
            if study.tasks[task].kind == "memory"]
  figure, (left, right) = plt.subplots(
      1, 2, figsize=(11, 4.3), gridspec_kw=dict(width_ratios=[1.6, 1]))
  styles = ["o-", "s--", "^-.", "v:", "D-", "P--"]
  for index, system in enumerate(systems):
    points = [(study.tasks[task].kwargs.memory_length, main[task, system])
              for task in memory if (task, system) in main]
    points = [(length, s["solved"]) for length, s in points
              if s["status"] == "finished"]
    if points:
      left.plot(*zip(*points), styles[index % len(styles)],
                label=_system_label(study, system))
  left.set_xscale("log")
  lengths = [study.tasks[task].kwargs.memory_length for task in memory]
  left.set_xticks(lengths)
  left.set_xticklabels([str(length) for length in lengths])
  left.set_ylim(-0.3, study.seeds + 0.3)
  left.set_xlabel("memory span L (steps from cue to answer)")
  left.set_ylabel(f"seeds solved (sampled return ≥ {study.solved_threshold}) "
                  f"of {study.seeds}")
  left.set_title("MemoryChain: who learns span L", fontsize=10)
  left.grid(alpha=0.3)
  left.legend(fontsize=8)
  costs = []
  for system in systems:
    values = [main[task, system]["us_per_frame"]
              for task in study.tasks if (task, system) in main
              and np.isfinite(main[task, system]["us_per_frame"])]
    if values:
      costs.append((_system_label(study, system), float(np.median(values))))
  if costs:
    labels, values = zip(*costs)
    right.barh(range(len(values)), values, color="tab:gray")
    right.set_yticks(range(len(values)))
    right.set_yticklabels(labels, fontsize=8)
    right.invert_yaxis()
  right.set_xlabel("µs of wall time per frame (median over tasks)")
  right.set_title("cost on this 2-core CPU (training, all seeds)",
                  fontsize=10)
  right.grid(alpha=0.3, axis="x")
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  plt.close(figure)


def _plot_curves(study, task, systems, results, path):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  figure, axes = plt.subplots(figsize=(7.5, 4.3))
  for system in systems:
    result = results.get((task, system))
    if result is None or not result["frames"]:
      continue
    curve = np.asarray(result["train_return"], float)
    line, = axes.plot(result["frames"], np.nanmean(curve, 1),
                      label=_system_label(study, system))
    axes.fill_between(result["frames"], np.nanmin(curve, 1),
                      np.nanmax(curve, 1), color=line.get_color(), alpha=0.15)
  if study.tasks[task].kind == "memory":
    axes.axhline(0.0, color="gray", linestyle="--", linewidth=1,
                 label="chance")
  axes.set_xlabel("environment frames (per seed)")
  axes.set_ylabel("training return (sampled actions)")
  axes.set_title(f"{_task_label(study, task)}: mean, min..max over "
                 f"{study.seeds} seeds", fontsize=10)
  axes.grid(alpha=0.3)
  axes.legend(fontsize=8)
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  plt.close(figure)


def write_report(study, workdir, report_dir, tuning, later, rates,
                 load_result, command):
  """Writes report.md, summary.csv and the figures; returns report.md's path."""
  os.makedirs(report_dir, exist_ok=True)
  loaded = [(spec, load_result(workdir, spec)) for spec in tuning + later]
  rows, main, controls, tuned, results, defaults = [], {}, {}, {}, {}, {}
  for spec, result in loaded:
    if result is None:
      continue
    summary = cell_summary(study, result)
    rows.append({**spec, **summary})
    key = (spec["task"], spec["system"])
    if spec["stage"] == "main":
      main[key], results[key] = summary, result
    elif spec["stage"] == "controls":
      controls[spec["control"], *key] = summary
    elif spec["stage"] == "defaults":
      defaults[spec["system"]] = (summary, result)
    else:
      tuned[key + (spec["rate"],)] = summary
  with open(os.path.join(report_dir, "summary.csv"), "w", newline="") as file:
    fields = ["stage", "task", "system", "control", "rate", "status", "seeds",
              "sampled_mean", "sampled_std", "solved", "greedy_mean",
              "us_per_frame"]
    writer = csv.DictWriter(file, fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)

  systems = study_configs.ordered_systems(study)
  tasks = study_configs.ordered_tasks(study)
  lines = [
      "# Reproduction study: report", "",
      f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} at "
      f"commit `{_commit()}` by", "", f"    {command}", "",
      f"Cells finished: {len(rows)} of {len(tuning) + len(later)}. Seeds: "
      f"{study.seeds} per main/control cell, {study.tuning_seeds} per tuning "
      f"cell (other seeds). Returns are with **sampled** actions, "
      f"{study.eval_episodes} episodes per seed after training: mean ± std "
      "over seeds; (k/n) = seeds that solve a memory task (sampled ≥ "
      f"{study.solved_threshold}).", "",
      "## Tuning (learning rate; chosen rate in bold)", "",
      "| system | rate | " + " | ".join(
          _task_label(study, task) for task in study.tuning_tasks) + " |",
      "|---|---|" + "---|" * len(study.tuning_tasks)]
  for system in study.tuned_systems:
    for rate in study.learning_rates:
      mark = "**" if rates.get(system) == rate else ""
      cells = [_fmt(tuned.get((task, system, rate)), _digits(study, task))
               for task in study.tuning_tasks]
      lines.append(f"| {_system_label(study, system)} | {mark}{rate:g}{mark} "
                   f"| " + " | ".join(cells) + " |")
  lines += ["", "Rates used: " + ", ".join(
      f"{_system_label(study, system)} {rates[system]:g}"
      for system in systems if system in rates) + ".", "",
            "## Main grid: sampled return (seeds solved)", "",
            "| task | frames | " + " | ".join(
                _system_label(study, system) for system in systems) + " |",
            "|---|---|" + "---|" * len(systems)]
  for task in tasks:
    frames = study.tasks[task].updates * study.frames_per_update
    cells = [_fmt(main.get((task, system)), _digits(study, task))
             for system in systems]
    lines.append(f"| {_task_label(study, task)} | {frames / 1e6:g}M | "
                 + " | ".join(cells) + " |")
  lines += ["", "Greedy (argmax) return, secondary:", "",
            "| task | " + " | ".join(
                _system_label(study, system) for system in systems) + " |",
            "|---|" + "---|" * len(systems)]
  for task in tasks:
    digits = _digits(study, task)
    cells = [f"{main[task, system]['greedy_mean']:.{digits}f}"
             if (task, system) in main else DASH for system in systems]
    lines.append(f"| {_task_label(study, task)} | " + " | ".join(cells) + " |")
  lines += ["", "Cost: µs of wall time per frame (training, all seeds of a "
            "cell together; median over the system's main cells; two cells "
            "ran at once on 2 cores, so this is a ratio between systems, not "
            "a throughput):", "", "| system | µs per frame |", "|---|---|"]
  for system in systems:
    values = [main[task, system]["us_per_frame"] for task in tasks
              if (task, system) in main
              and np.isfinite(main[task, system]["us_per_frame"])]
    lines.append(f"| {_system_label(study, system)} | "
                 + (f"{np.median(values):.2f}" if values else DASH) + " |")
  lines += ["", "## Controls", "",
            "| control | task | system | sampled (solved) | main grid |",
            "|---|---|---|---|---|"]
  for name, control in study.controls.items():
    for task in control.tasks:
      for system in control.systems:
        digits = _digits(study, task)
        lines.append(
            f"| {name} ({', '.join(f'{k}={v}' for k, v in control.overrides.items())}) "
            f"| {_task_label(study, task)} | {_system_label(study, system)} | "
            f"{_fmt(controls.get((name, task, system)), digits)} | "
            f"{_fmt(main.get((task, system)), digits)} |")
  lines += ["", "## The CPU presets as shipped (experiments/configs/r2ac.py)",
            "", "| name | preset + overrides | frames | sampled | greedy |",
            "|---|---|---|---|---|"]
  for name, spec in study.get("defaults", {}).items():
    summary, result = defaults.get(name, (None, None))
    changes = "".join(f" {k}={v}" for k, v in
                      study_configs.flat_overrides(spec.overrides).items())
    frames = (f"{result['frames'][-1] / 1e6:.2f}M"
              if result and result["frames"] else DASH)
    greedy = (f"{summary['greedy_mean']:.1f}" if summary else DASH)
    lines.append(f"| {name} | `:{spec.preset}`{changes} | {frames} | "
                 f"{_fmt(summary, 1)} | {greedy} |")
  claim = os.path.join(report_dir, "claim.png")
  _plot_claim(study, main, systems, claim)
  lines += ["", "## Figures", "", "![claim](claim.png)", ""]
  for task in tasks:
    name = f"curves_{task}.png"
    _plot_curves(study, task, systems, results,
                 os.path.join(report_dir, name))
    lines.append(f"![{task}]({name})")
  path = os.path.join(report_dir, "report.md")
  with open(path, "w") as file:
    file.write("\n".join(lines) + "\n")
  return path
