"""notebooks/quickstart.ipynb is valid nbformat 4 JSON, is committed
executed (every code cell has run, in order, without an error) and runs top
to bottom.

`execute` runs each code cell with `exec` in one namespace (no Jupyter
needed; nbclient is not a dependency) and records what Jupyter would show:
printed text as "stream" outputs and each open matplotlib figure as a PNG
"display_data". The test executes the notebook with the cell tagged
"parameters" followed by an injected cell that switches to the tiny config
(as papermill does); `python tests/notebook_test.py` executes it with its
own parameters and writes the outputs into the committed file.
"""

import base64
import contextlib
import io
import json
import os
import sys

import matplotlib
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "notebooks", "quickstart.ipynb")
TINY_PARAMETERS = 'config_name = "tiny"\nprint_every = 1\n'
# The committed figures are drawn at this resolution (a few tens of kB).
FIGURE_DPI = 60


def load_notebook():
  with open(NOTEBOOK) as f:
    notebook = json.load(f)
  assert notebook["nbformat"] == 4
  for cell in notebook["cells"]:
    assert cell["cell_type"] in ("code", "markdown")
    assert isinstance(cell["source"], list) and "id" in cell
  return notebook


def code_cells(notebook):
  return [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]


def _figures():
  """The open matplotlib figures as display_data outputs (then closed)."""
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  outputs = []
  for number in plt.get_fignums():
    figure = plt.figure(number)
    png = io.BytesIO()
    figure.savefig(png, format="png", dpi=FIGURE_DPI, bbox_inches="tight")
    width, height = figure.get_size_inches() * figure.dpi
    outputs.append({
        "output_type": "display_data", "metadata": {},
        "data": {"image/png": base64.b64encode(png.getvalue()).decode(),
                 "text/plain": [f"<Figure size {width:g}x{height:g} with "
                                f"{len(figure.axes)} Axes>"]}})
    plt.close(figure)
  return outputs


def _lines(text):
  return text.splitlines(keepends=True)


def execute(notebook, parameters=None):
  """Runs the notebook's code cells in order; returns it with each code
  cell's outputs and execution_count set. `parameters` (code) runs after
  the cell tagged "parameters". An exception propagates (a notebook that
  does not run is an error)."""
  matplotlib.use("Agg")
  namespace = {}
  count = 0
  for cell in code_cells(notebook):
    count += 1
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
      exec(compile("".join(cell["source"]), NOTEBOOK, "exec"), namespace)  # pylint: disable=exec-used
      if (parameters is not None
          and "parameters" in cell["metadata"].get("tags", [])):
        exec(parameters, namespace)  # pylint: disable=exec-used
    outputs = []
    if stdout.getvalue():
      outputs.append({"output_type": "stream", "name": "stdout",
                      "text": _lines(stdout.getvalue())})
    cell["outputs"] = outputs + _figures()
    cell["execution_count"] = count
  notebook["namespace"] = namespace     # for the test; not written
  return notebook


def printed(cell):
  return "".join("".join(output["text"]) for output in cell["outputs"]
                 if output["output_type"] == "stream")


def test_committed_notebook_has_the_outputs_of_one_run():
  """Committed executed: every code cell ran once, in order, without an
  error; the training and evaluation cells printed, the plot cell drew one
  small figure."""
  cells = code_cells(load_notebook())
  assert [cell["execution_count"] for cell in cells] == list(
      range(1, len(cells) + 1))
  for cell in cells:
    assert all(output["output_type"] in ("stream", "display_data")
               for output in cell["outputs"]), cell["outputs"]
    assert not any(output.get("name") == "stderr"
                   for output in cell["outputs"])
  setup, train, evaluate, draw = cells[1:]
  assert " parameters, " in printed(setup)
  assert printed(train).splitlines()[-1].startswith("call ")
  assert "sampled" in printed(evaluate) and "greedy" in printed(evaluate)
  (figure,) = draw["outputs"]
  assert figure["output_type"] == "display_data"
  assert len(figure["data"]["image/png"]) < 100_000
  with open(NOTEBOOK) as f:
    assert "namespace" not in json.load(f)


def test_quickstart_notebook_runs(monkeypatch):
  monkeypatch.chdir(os.path.join(ROOT, "notebooks"))
  notebook = execute(load_notebook(), TINY_PARAMETERS)
  assert [cell["metadata"].get("tags") for cell in code_cells(notebook)
          ].count(["parameters"]) == 1
  namespace = notebook["namespace"]
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
  cells = code_cells(notebook)
  assert "call    4  update    40" in printed(cells[2])
  assert "sampled" in printed(cells[3]) and "greedy" in printed(cells[3])
  assert len(cells[4]["outputs"]) == 1


def main():
  """Executes the notebook with its own parameters and writes it back."""
  os.chdir(os.path.join(ROOT, "notebooks"))
  notebook = execute(load_notebook())
  del notebook["namespace"]
  with open(NOTEBOOK, "w") as f:
    json.dump(notebook, f, indent=1, ensure_ascii=False)
    f.write("\n")


if __name__ == "__main__":
  sys.path.insert(0, ROOT)
  main()
