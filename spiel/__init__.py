"""SpIEL replication pipeline: the method (``spiel.tuner``) and the steps that reproduce the paper."""

from .tuner import *  # noqa: F403  (the method's public API, re-exported)
from .tuner import __all__ as __all__

__version__ = "0.1.0"
