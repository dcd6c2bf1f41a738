"""Device backends: one small class per device behind one interface, found by name.

No side effects at import (DESIGN.md): this package may be imported a second time under
the top-level name `kernels`/`backends` by transformers' probe for Hugging Face's
`kernels` package, so it only hands names on.
"""

from lmm_r1_ascend.backends.base import Backend, BackendUnavailable, KernelChoice, KernelSet
from lmm_r1_ascend.backends.registry import backend_names, get_backend

__all__ = ["Backend", "BackendUnavailable", "KernelChoice", "KernelSet", "backend_names", "get_backend"]
