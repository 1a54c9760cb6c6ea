"""Tables and plots of the reproduction study, rebuilt from its run folders only.

`write_report` reads each run's final_eval.json, results.json and
metrics.jsonl (experiments/study.py writes them) and writes report.md,
summary.csv, curves_<task>.png and alignment.png. Nothing here trains.
"""

import csv
import datetime
import json
import os
import platform
import subprocess
import warnings

import numpy as np

from rtrl_jax import experiment

CURVE_BINS = 20


def _read_json(path):
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _commit():
  try:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, check=True).stdout
    dirty = subprocess.run(["git", "status", "--porcelain", "--",
                            "rtrl_jax", "experiments"],
                           capture_output=True, text=True, check=True).stdout
  except (OSError, subprocess.CalledProcessError):
    return "unknown"
  return head.strip() + (" (with uncommitted changes)" if dirty.strip() else "")


def load_run(directory):
  """A run's final evaluation, results and metric rows (None if unfinished)."""
  final = _read_json(os.path.join(directory, "final_eval.json"))
  if final is None:
    return None
  rows = experiment.read_jsonl(os.path.join(directory, "metrics.jsonl"))
  frames_at = {row["step"]: row["train/frames"] for row in rows
               if "train/frames" in row}
  frames_at.setdefault(0, 0.0)
  # Probes run at call 0 too (untrained θ, zero carried sensitivities);
  # the tables and plots start after training has begun.
  series = lambda key: [(frames_at.get(row["step"], np.nan), row[key])
                        for row in rows if key in row and row["step"] > 0]
  return {"final": final,
          "results": _read_json(os.path.join(directory, "results.json")) or {},
          "series": series}


def _mean_std(values, digits=2):
  values = [v for v in values if v is not None and np.isfinite(v)]
  if not values:
    return "—"
  return f"{np.mean(values):.{digits}f} ± {np.std(values):.{digits}f}"


def _last(series):
  return series[-1][1] if series else None


def _binned_mean(points, edges):
  """Mean of y per frames bin; NaN where a bin is empty."""
  points = [(x, y) for x, y in points if np.isfinite(y)]
  out = np.full(len(edges) - 1, np.nan)
  if not points:
    return out
  x, y = map(np.asarray, zip(*points))
  which = np.clip(np.digitize(x, edges) - 1, 0, len(edges) - 2)
  for b in range(len(edges) - 1):
    if np.any(which == b):
      out[b] = y[which == b].mean()
  return out


def _plot_curves(study, task, systems, runs_of, path):
  """Training (sampled) and greedy-evaluation returns vs frames, per system."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  frames = study.tasks[task].updates * study.frames_per_update
  calls = max(1, study.tasks[task].updates // study.updates_per_call)
  # One point per logged call at most, so that no bin is empty.
  edges = np.linspace(0, frames, min(CURVE_BINS, calls) + 1)
  centres = (edges[:-1] + edges[1:]) / 2
  figure, panels = plt.subplots(1, 2, figsize=(12, 4.2))
  for axes, key, label in (
      (panels[0], "train/episode_return_mean",
       "training episode return (sampled actions)"),
      (panels[1], "eval/greedy_return", "greedy evaluation return")):
    for system in systems:
      runs = runs_of(task, system)
      if not runs:
        continue
      if key.startswith("eval/"):
        # Evaluations happen at the same calls in every seed.
        curves = [run["series"](key) for run in runs]
        length = min(len(c) for c in curves)
        x = np.asarray([p[0] for p in curves[0][:length]])
        curves = np.asarray([[p[1] for p in c[:length]] for c in curves])
      else:
        x = centres
        curves = np.stack([_binned_mean(run["series"](key), edges)
                           for run in runs])
      with warnings.catch_warnings():   # bins without a finished episode
        warnings.simplefilter("ignore", RuntimeWarning)
        mean, low, high = (np.nanmean(curves, 0), np.nanmin(curves, 0),
                           np.nanmax(curves, 0))
      line, = axes.plot(x, mean, ".-", label=f"{system} ({len(runs)} seeds)")
      if len(runs) > 1:
        axes.fill_between(x, low, high, color=line.get_color(), alpha=0.12)
    axes.set_xlabel("environment frames")
    axes.set_ylabel(label)
    axes.grid(alpha=0.3)
  panels[0].set_title(f"{task}: mean over seeds, band = min..max", fontsize=9)
  panels[1].legend(fontsize=7)
  figure.tight_layout()
  figure.savefig(path, dpi=90)
  plt.close(figure)


def _plot_alignment(tasks, systems, runs_of, path):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  figure, axes = plt.subplots(2, len(tasks), figsize=(4 * len(tasks), 6.5),
                              squeeze=False)
  for column, task in enumerate(tasks):
    top, bottom = axes[0, column], axes[1, column]
    for system in systems:
      for run in runs_of(task, system):
        for key, style in (("align/tbptt/recurrent/cosine", "-"),):
          points = run["series"](key)
          if points:
            top.plot(*zip(*points), style, alpha=0.6, label=system)
        points = run["series"]("sens/carried_norm_max")
        if points:
          bottom.semilogy(*zip(*points), alpha=0.6, label=system)
    top.set_title(f"{task}\ncos(TBPTT θ_r grad, BPTT θ_r grad) at each run's θ",
                  fontsize=8)
    bottom.set_title("max over envs of ‖dh/dθ_r‖ the RTRL actor carries",
                     fontsize=8)
    bottom.set_xlabel("environment frames")
    for ax in (top, bottom):
      ax.grid(alpha=0.3)
      handles, labels = ax.get_legend_handles_labels()
      unique = dict(zip(labels, handles))
      if unique:
        ax.legend(unique.values(), unique.keys(), fontsize=6)
  figure.tight_layout()
  figure.savefig(path, dpi=90)
  plt.close(figure)


def write_report(study, workdir, report_dir, grid, run_dir, command):
  """Writes report.md, summary.csv and the plots; returns report.md's path."""
  os.makedirs(report_dir, exist_ok=True)
  rebuild = command if "--report_only" in command else (
      command + " --report_only")
  loaded = {(task, system, seed): load_run(run_dir(workdir, task, system, seed))
            for task, system, seed in grid}
  tasks = list(dict.fromkeys(task for task, _, _ in grid))
  systems = list(dict.fromkeys(system for _, system, _ in grid))

  def runs_of(task, system):
    return [run for (t, s, _), run in loaded.items()
            if t == task and s == system and run is not None]

  summary_rows = []
  for (task, system, seed), run in loaded.items():
    if run is None:
      continue
    series = run["series"]
    summary_rows.append({
        "task": task, "system": system, "seed": seed,
        "frames": run["results"].get("frames"),
        "updates": run["final"]["update"],
        "final_greedy_return": run["final"]["greedy_mean"],
        "final_sampled_return": run["final"].get("sampled_mean"),
        "final_eval_episodes": len(run["final"]["greedy_returns"]),
        "tbptt_recurrent_cosine_end": _last(series("align/tbptt/recurrent/cosine")),
        "rtrl_recurrent_cosine_min": min(
            (v for _, v in series("align/rtrl/recurrent/cosine")), default=None),
        "train_rtrl_recurrent_cosine_mean": (lambda v: float(np.mean(v)) if v
                                             else None)(
            [v for _, v in series("align_train/rtrl/recurrent/cosine")]),
        "carried_sens_norm_max_end": _last(series("sens/carried_norm_max")),
        "carried_sens_norm_max_peak": max(
            (v for _, v in series("sens/carried_norm_max")), default=None),
        "seconds": run["results"].get("seconds_this_session")})
  with open(os.path.join(report_dir, "summary.csv"), "w", newline="") as f:
    fields = list(summary_rows[0]) if summary_rows else ["task"]
    writer = csv.DictWriter(f, fieldnames=fields)
    writer.writeheader()
    writer.writerows(summary_rows)

  def cell(task, system, pick, digits=2):
    values = [pick(run) for run in runs_of(task, system)]
    text = _mean_std(values, digits)
    # Seeds that contributed: finished runs with a finite value.
    done = sum(1 for v in values if v is not None and np.isfinite(v))
    return text if done == study.seeds or text == "—" else f"{text} ({done}/{study.seeds})"

  header = "| task | frames | " + " | ".join(systems) + " |"
  rule = "|---|---|" + "---|" * len(systems)
  lines = [
      "# Reproduction study: report (generated)", "",
      f"Generated {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC "
      f"by `{command}` at commit {_commit()} on {platform.machine()} "
      f"({os.cpu_count()} CPUs); rebuild with `{rebuild}`.", "",
      f"Budget per run: {study.frames_per_update} frames per update "
      f"(num_envs = {study.frames_per_update}/M), hidden size "
      f"{study.hidden_size}, forget-gate bias {study.forget_bias}, "
      f"{study.seeds} seeds; final evaluation: {study.final_eval_episodes} "
      f"greedy and as many sampled episodes per seed. Frames per task below. "
      f"± is the standard deviation over seeds (numpy's, ddof 0).", "",
      "## Final greedy return (mean ± std over seeds)", "",
      header, rule]
  frames = lambda task: f"{study.tasks[task].updates * study.frames_per_update:,}"
  for task in tasks:
    lines.append(f"| {task} | {frames(task)} | " + " | ".join(
        cell(task, s, lambda run: run["final"]["greedy_mean"])
        for s in systems) + " |")
  lines += ["", "## Final sampled-action return (mean ± std over seeds)", "",
            header, rule]
  for task in tasks:
    lines.append(f"| {task} | {frames(task)} | " + " | ".join(
        cell(task, s, lambda run: run["final"].get("sampled_mean"))
        for s in systems) + " |")
  lines += ["", "## Gradient alignment with full BPTT at the end of training",
            "", "cos(g, g*) of the recurrent parameters θ_r, g* = BPTT through "
            "the probe's window, at each run's final θ (mean ± std over seeds). "
            "RTRL rows give the minimum over all probes of the run (1 = exact).",
            "", header, rule]
  for method in ("tbptt", "rtrl"):
    for task in tasks:
      key = f"align/{method}/recurrent/cosine"
      pick = (lambda run, key=key: _last(run["series"](key))) if method == "tbptt" \
          else (lambda run, key=key: min((v for _, v in run["series"](key)),
                                         default=None))
      # Full-episode BPTT restarts episodes every unroll: no probe stream.
      lines.append(f"| {task}: {method.upper()} | {frames(task)} | " + " | ".join(
          "—" if study.systems[s].gradient == "bptt" else cell(task, s, pick, 4)
          for s in systems) + " |")
  lines += ["", "## RTRL in training: the learner's gradient with stale sensitivities",
            "", "At every evaluation of an RTRL run: K real updates from fresh "
            "episodes (the run's optimizer state and learning rate), then the "
            "cosine of the last unroll's learner gradient for θ_r with the "
            "true gradient at the current θ (BPTT from the episodes' start). "
            "Mean over the run's probes, then mean ± std over seeds; the "
            "worst probe of any seed in brackets; TBPTT on the same unroll for "
            "comparison.", "",
            "| task | system | RTRL cos | TBPTT cos | ‖Δθ‖/‖θ‖ over the K − 1 updates |",
            "|---|---|---|---|---|"]
  for task in tasks:
    for system in systems:
      runs = [run for run in runs_of(task, system)
              if run["series"]("align_train/rtrl/recurrent/cosine")]
      if not runs:
        continue
      values = lambda run, key: [v for _, v in run["series"](key)]
      rtrl = [values(run, "align_train/rtrl/recurrent/cosine") for run in runs]
      tbptt = [values(run, "align_train/tbptt/recurrent/cosine") for run in runs]
      change = [values(run, "align_train/param_change") for run in runs]
      lines.append(
          f"| {task} | {system} | {_mean_std([np.mean(r) for r in rtrl], 4)} "
          f"[{min(min(r) for r in rtrl):.4f}] | "
          f"{_mean_std([np.mean(t) for t in tbptt], 3)} "
          f"[{min(min(t) for t in tbptt):.3f}] | "
          f"{_mean_std([np.mean(c) for c in change], 5)} |")
  lines += ["", "## Sensitivities the RTRL actor carries", "",
            "max over environments of ‖dh/dθ_r‖ (RTRL runs), at the first "
            "evaluation after training starts, its peak, and at the end (mean ± std over seeds).", "",
            "| task | system | first | peak | end |", "|---|---|---|---|---|"]
  for task in tasks:
    for system in systems:
      runs = runs_of(task, system)
      if not runs or not runs[0]["series"]("sens/carried_norm_max"):
        continue
      norms = [[v for _, v in run["series"]("sens/carried_norm_max")]
               for run in runs]
      lines.append(f"| {task} | {system} | "
                   f"{_mean_std([n[0] for n in norms])} | "
                   f"{_mean_std([max(n) for n in norms])} | "
                   f"{_mean_std([n[-1] for n in norms])} |")
  lines += ["", "## Wall time per run (s, this machine, includes compiling; "
            "a resumed run counts its last session only)",
            "", header, rule]
  for task in tasks:
    lines.append(f"| {task} | {frames(task)} | " + " | ".join(
        cell(task, s, lambda run: run["results"].get("seconds_this_session"), 0)
        for s in systems) + " |")
  lines += ["", "## Plots", ""]
  for task in tasks:
    name = f"curves_{task}.png"
    _plot_curves(study, task, systems, runs_of, os.path.join(report_dir, name))
    lines.append(f"![{task}]({name})")
  _plot_alignment(tasks, systems, runs_of, os.path.join(report_dir, "alignment.png"))
  lines += ["", "![alignment and sensitivity norms](alignment.png)", ""]
  path = os.path.join(report_dir, "report.md")
  with open(path, "w") as f:
    f.write("\n".join(lines))
  return path
