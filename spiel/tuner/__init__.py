"""SpIEL, the method: sparse deltas, drop-and-grow, optimizers; no pipeline code here."""

from .config import SpielConfig
from .delta import SparseDelta, sparse_linear
from .layers import SpielLinear
from .model import SpielModel, get_spiel_model
from .optim import SparseAdamW, SparseSM3
from .selector import Reselector, make_optimizer

__all__ = [
    "Reselector",
    "SparseAdamW",
    "SparseDelta",
    "SparseSM3",
    "SpielConfig",
    "SpielLinear",
    "SpielModel",
    "get_spiel_model",
    "make_optimizer",
    "sparse_linear",
]
