"""SpIEL replication pipeline: the method (``spiel.tuner``) and the steps that reproduce the paper.

The method's public API is re-exported here, imported on first use (PEP 562)."""

from . import tuner
from .tuner import __all__ as __all__

__version__ = "0.1.0"


def __getattr__(name: str):
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(tuner, name)
