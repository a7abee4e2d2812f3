"""KD methods by name (``LOSSES``): one file per method, each returning its named loss terms."""
from kdsweep.core.methods.base import LOSSES, Method, MethodParam
from kdsweep.core.methods import ce, kd  # noqa: F401  (registers)

__all__ = ["LOSSES", "Method", "MethodParam"]
