"""notebooks/quickstart.ipynb is valid nbformat 4 JSON and runs top to bottom.

Each code cell is `exec`uted in one namespace (no Jupyter needed), with the
cell tagged "parameters" followed by an injected cell that switches to the
tiny config (as papermill does).
"""

import json
import os

import matplotlib
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "notebooks", "quickstart.ipynb")
TINY_PARAMETERS = 'config_name = "tiny"\nprint_every = 1\n'


def load_notebook():
  with open(NOTEBOOK) as f:
    notebook = json.load(f)
  assert notebook["nbformat"] == 4
  for cell in notebook["cells"]:
    assert cell["cell_type"] in ("code", "markdown")
    assert isinstance(cell["source"], list) and "id" in cell
    if cell["cell_type"] == "code":
      assert cell["outputs"] == [] and cell["execution_count"] is None
  return notebook


def test_quickstart_notebook_runs(monkeypatch, capsys):
  matplotlib.use("Agg")
  monkeypatch.chdir(os.path.join(ROOT, "notebooks"))
  notebook = load_notebook()
  namespace = {}
  tagged = 0
  for cell in notebook["cells"]:
    if cell["cell_type"] != "code":
      continue
    exec(compile("".join(cell["source"]), NOTEBOOK, "exec"), namespace)  # pylint: disable=exec-used
    if "parameters" in cell["metadata"].get("tags", []):
      tagged += 1
      exec(TINY_PARAMETERS, namespace)  # pylint: disable=exec-used
  assert tagged == 1
  config = namespace["config"]
  assert config.num_envs == 8 and config.gradient == "rtrl"
  history = namespace["history"]
  assert len(history) == config.total_updates // config.updates_per_call
  assert np.all(np.isfinite([mean_return for _, mean_return in history]))
  assert int(namespace["runner"].update) == config.total_updates
  sampled, greedy = namespace["summaries"]
  assert (sampled.greedy, greedy.greedy) == (False, True)
  assert sampled.returns.shape == (3, 1000) and greedy.returns.shape == (3, 100)
  for summary in (sampled, greedy):
    # MemoryChain(memory_length=3): every episode is 4 steps, reward ±1 at
    # the end.
    assert np.all(summary.lengths == 4)
    assert set(np.unique(summary.returns)) <= {-1.0, 1.0}
  printed = capsys.readouterr().out
  assert "call    4  update    40" in printed
  assert "sampled" in printed and "greedy" in printed
