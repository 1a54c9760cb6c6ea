"""Recurrent cells in the protocol of `rtrl_jax.cells.base`.

* `base`: the protocol (`Cell`, `RecurrentState`) and `ElementwiseCell`,
  what the element-wise cells share.
* Element-wise cells with exact RTRL at O(parameter size) per example:
  `elstm`, `indrnn`, `qrnn`, `lru`, `linear_transformer` (all in `CELLS`).
* Cells that are not element-wise: `multilayer.ExactTwoLayer` (exact RTRL
  through two stacked layers, cross-layer sensitivities included) and
  `lstm.LSTM` (full recurrence: BPTT/TBPTT only).
* `initializers`: forget-gate initialisations shared by eLSTM and the LSTM.
"""

from rtrl_jax.cells.base import Cell, ElementwiseCell, RecurrentState
from rtrl_jax.cells.elstm import ELSTM
from rtrl_jax.cells.indrnn import IndRNN
from rtrl_jax.cells.linear_transformer import LinearTransformer
from rtrl_jax.cells.lru import DiagonalLRU
from rtrl_jax.cells.qrnn import QRNN

# Every element-wise cell with exact RTRL, by name (used by configs and
# parameterised tests).
CELLS = {
    "elstm": ELSTM,
    "indrnn": IndRNN,
    "qrnn": QRNN,
    "lru": DiagonalLRU,
    "linear_transformer": LinearTransformer,
}

__all__ = ["CELLS", "Cell", "DiagonalLRU", "ELSTM", "ElementwiseCell",
           "IndRNN", "LinearTransformer", "QRNN", "RecurrentState"]
