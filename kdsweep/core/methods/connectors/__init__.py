"""The feature methods' connectors: the trainable ``nn.Module`` parts a method builds at run start.

One file per method that has one (``fitnet``, ``crd``, ``reviewkd``), named after it. These files
import torch at the top and subclass ``nn.Module``, so nothing imports them when the methods are
declared: each method's ``connector(shapes, params)`` builder (in ``kdsweep/core/methods/<name>.py``)
imports its connector file inside the function, once a run builds it (see ``methods/base.py``).
This package's ``__init__`` imports nothing.
"""
