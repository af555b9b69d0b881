"""Compatibility shims, kept in one place, each with a test (tests/test_compat.py).

spconv 2.3.x on CPU-only torch: the forward pass works, but the backward of sparse
convolutions calls ``spconv.pytorch.cppcore.get_current_stream()``, which asks
``torch.cuda.current_stream()`` and raises "Torch not compiled with CUDA enabled"
(upstream: traveller59/spconv issue 366). On CPU the stream handle is unused by the
kernels, so we hand them 0 (the null stream) instead. Applied only when CUDA is absent;
with CUDA the original function stays in place.
"""

from __future__ import annotations

import torch

_PATCHED = False


def _null_stream() -> int:
    return 0


def patch_spconv_cpu() -> bool:
    """Make spconv's backward work on CPU-only torch; returns True if the shim is active."""
    global _PATCHED
    if _PATCHED:
        return True
    if torch.cuda.is_available():
        return False
    import spconv.pytorch.cppcore as cppcore
    import spconv.pytorch.hash as sphash
    import spconv.pytorch.ops as ops

    # the modules imported the function by name, so each module's binding is replaced
    for module in (cppcore, ops, sphash):
        if hasattr(module, "get_current_stream"):
            module.get_current_stream = _null_stream
    _PATCHED = True
    return True
