"""SpIEL, the method: sparse deltas, drop-and-grow, optimizers; no pipeline code here.

Names are imported on first use (PEP 562), so that reading the configuration (``spiel.tuner.config``) does not
load torch — the workflow parses its Snakefile once per job."""

from importlib import import_module

_WHERE = {
    "Reselector": "selector",
    "SparseAdamW": "optim",
    "SparseDelta": "delta",
    "SparseSM3": "optim",
    "SpielConfig": "config",
    "SpielLinear": "layers",
    "SpielModel": "model",
    "get_spiel_model": "model",
    "make_optimizer": "selector",
    "sparse_linear": "delta",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{_WHERE[name]}", __name__), name)
