"""rtrl_jax: exact, untruncated Real-Time Recurrent Learning in JAX."""

from rtrl_jax.cell import ElementwiseCell, RecurrentState
from rtrl_jax.core import bptt, reset_where, rtrl
from rtrl_jax.elstm import ELSTM

# Every cell with exact RTRL, by name (used by configs and parameterised tests).
CELLS = {
    "elstm": ELSTM,
}

__all__ = ["CELLS", "ELSTM", "ElementwiseCell", "RecurrentState", "bptt",
           "reset_where", "rtrl"]
__version__ = "0.1.0"
