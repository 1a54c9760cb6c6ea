"""rtrl_jax: exact, untruncated Real-Time Recurrent Learning in JAX."""

from rtrl_jax.cells import (CELLS, DiagonalLRU, ELSTM, ElementwiseCell,
                            IndRNN, LinearTransformer, QRNN, RecurrentState)
from rtrl_jax.cells.multilayer import (ExactTwoLayer, LayerStack, stacked_bptt,
                                       stacked_rtrl)
from rtrl_jax.core import bptt, reset_where, rtrl

__all__ = ["CELLS", "DiagonalLRU", "ELSTM", "ElementwiseCell", "ExactTwoLayer",
           "IndRNN", "LayerStack", "LinearTransformer", "QRNN",
           "RecurrentState", "bptt", "reset_where", "rtrl", "stacked_bptt",
           "stacked_rtrl"]
__version__ = "0.1.0"
