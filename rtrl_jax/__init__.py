"""rtrl_jax: exact, untruncated Real-Time Recurrent Learning in JAX."""

from rtrl_jax.cell import ElementwiseCell, RecurrentState
from rtrl_jax.core import bptt, reset_where, rtrl
from rtrl_jax.elstm import ELSTM
from rtrl_jax.indrnn import IndRNN
from rtrl_jax.linear_transformer import LinearTransformer
from rtrl_jax.lru import DiagonalLRU
from rtrl_jax.multilayer import (ExactTwoLayer, LayerStack, stacked_bptt,
                                 stacked_rtrl)
from rtrl_jax.qrnn import QRNN

# Every cell with exact RTRL, by name (used by configs and parameterised tests).
CELLS = {
    "elstm": ELSTM,
    "indrnn": IndRNN,
    "qrnn": QRNN,
    "lru": DiagonalLRU,
    "linear_transformer": LinearTransformer,
}

__all__ = ["CELLS", "DiagonalLRU", "ELSTM", "ElementwiseCell", "ExactTwoLayer",
           "IndRNN", "LayerStack", "LinearTransformer", "QRNN",
           "RecurrentState", "bptt", "reset_where", "rtrl", "stacked_bptt",
           "stacked_rtrl"]
__version__ = "0.1.0"
