"""KD methods by name: importing this package registers every method in ``LOSSES``.

One file per method; each builds a ``Method`` (params with published defaults and bounds, and a
function returning the named, weighted loss terms) and registers it. Adding a method is one file
here, its import below and its test in ``tests/test_methods.py``. Importing this package imports
no torch (method files import it inside their functions, see ``base.py``), so that
``kdsweep study validate`` stays light. A feature method's connector (its trainable ``nn.Module``,
e.g. FitNet's regressor) lives in ``connectors/<method>.py``, which imports torch at the top and is
imported only inside the method's ``connector(...)`` builder, when a run builds it.
"""

from kdsweep.core.methods.base import LOSSES, Method, MethodParam
from kdsweep.core.methods import ce, dist, dkd, kd, lskd  # noqa: F401  (registers them)
from kdsweep.core.methods import at, crd, fitnet, reviewkd, rkd  # noqa: F401  (feature methods: kdsweep.core.methods.features)

__all__ = ["LOSSES", "Method", "MethodParam"]
