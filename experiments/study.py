r"""The reproduction study: does untruncated RTRL(M) beat TBPTT(M) when memory spans exceed M?

  python -m experiments.study --workers=2 --report_dir=docs/results  # = make study
  python -m experiments.study --quick                   # the pipeline in ~2 min
  python -m experiments.study --report_only --report_dir=docs/results

Runs the cells of experiments/configs/study.py (the hypothesis and the three
stages are written there): first the learning-rate tuning stage, then, at
each system's tuned rate, the main grid and the controls. A cell trains all
its seeds in one jitted program (`r2ac_training.train_seeds`) and writes
<workdir>/cells/<stage>/<task>/<system>[__<control>]/lr<rate>/result.json:
the per-seed training curves, the final sampled returns (the primary
number, `eval_episodes` per seed) and greedy returns, and the wall time
per frame.

Resumable: a cell with a result.json is skipped, so the same command
continues a killed study (a killed cell restarts; cells take minutes).
`--workers=2` runs cells in two processes. At the end the report is
rebuilt from the cell folders alone: <report_dir>/report.md, summary.csv
and the figures (experiments/study_report.py).
"""

import concurrent.futures
import multiprocessing
import sys
import time

from absl import app, flags

from experiments import study_report
from experiments.configs import study as study_configs
from experiments.study_cells import (later_cells, load_result, run_cell,
                                     tuned_rates, tuning_cells)
from rtrl_jax import experiment

_CONFIG = experiment.cli.define_config_flag(
    "experiments/configs/study.py",
    "The study grid (experiments/configs/study.py[:quick|paper]).")
_QUICK = flags.DEFINE_bool(
    "quick", False, "Shorthand for --config=experiments/configs/study.py:quick "
    "(and the default --workdir runs/study_quick).")
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Study folder (default runs/study or runs/study_quick).")
_REPORT_DIR = flags.DEFINE_string(
    "report_dir", None, "Where report.md, summary.csv and the figures go "
    "(default: --workdir).")
_WORKERS = flags.DEFINE_integer("workers", 1, "Processes running cells.")
_REPORT_ONLY = flags.DEFINE_bool(
    "report_only", False, "Rebuild the report from the cell folders; no runs.")

def run_cells(study, workdir, cells, workers, label):
  """Runs the cells without a result, `workers` at a time, printing progress."""
  todo = [spec for spec in cells if load_result(workdir, spec) is None]
  print(f"{label}: {len(cells) - len(todo)} of {len(cells)} cells done "
        f"before; running {len(todo)}", flush=True)
  if not todo:
    return
  started = time.time()
  context = multiprocessing.get_context("spawn")
  with concurrent.futures.ProcessPoolExecutor(workers,
                                              mp_context=context) as pool:
    futures = [pool.submit(run_cell, study.to_dict(), workdir, spec)
               for spec in todo]
    for index, future in enumerate(
        concurrent.futures.as_completed(futures), 1):
      print(f"  [{index}/{len(todo)}] {future.result()} (total "
            f"{(time.time() - started) / 60:.1f} min)", flush=True)


def main(argv):
  experiment.cli.start_main(argv)
  if _QUICK.value and flags.FLAGS["config"].present:
    sys.exit("error: --quick: give either --quick or --config, not both")
  study = study_configs.quick() if _QUICK.value else _CONFIG.value
  workdir = _WORKDIR.value or ("runs/study_quick" if _QUICK.value
                               else "runs/study")
  if _WORKERS.value < 1:
    sys.exit(f"error: --workers: must be >= 1, got {_WORKERS.value}")
  try:
    if not _REPORT_ONLY.value:
      run_cells(study, workdir, tuning_cells(study), _WORKERS.value,
                "tuning")
      rates = tuned_rates(study, workdir)
      print("tuned learning rates: " + ", ".join(
          f"{system} {rate:g}" for system, rate in rates.items()), flush=True)
      run_cells(study, workdir, later_cells(study, rates), _WORKERS.value,
                "main, controls and defaults")
    rates = tuned_rates(study, workdir)
    command = " ".join(["python -m experiments.study", *sys.argv[1:]])
    report = study_report.write_report(
        study, workdir, _REPORT_DIR.value or workdir,
        tuning_cells(study), later_cells(study, rates), rates, load_result,
        command=command)
  except (experiment.ConfigError, ValueError) as error:
    sys.exit(f"error: {error}")
  print(f"report: {report}")


if __name__ == "__main__":
  app.run(main, flags_parser=experiment.cli.parse_flags)
