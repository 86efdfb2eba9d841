"""SpIEL replication pipeline: the method (``spiel.tuner``) and the steps that reproduce the paper."""

from .tuner import (
    Reselector,
    SparseAdamW,
    SparseDelta,
    SparseSM3,
    SpielConfig,
    SpielModel,
    get_spiel_model,
    make_optimizer,
)

__version__ = "0.1.0"

__all__ = [
    "Reselector",
    "SparseAdamW",
    "SparseDelta",
    "SparseSM3",
    "SpielConfig",
    "SpielModel",
    "get_spiel_model",
    "make_optimizer",
]
