"""The spconv CPU shim: backward through sparse convolutions works without CUDA."""

from __future__ import annotations

import pytest
import torch

from cmcr.compat import patch_spconv_cpu


@pytest.mark.skipif(torch.cuda.is_available(), reason="the shim applies only without CUDA")
def test_spconv_backward_on_cpu() -> None:
    assert patch_spconv_cpu() is True
    import spconv.pytorch as spconv

    net = spconv.SparseSequential(
        spconv.SubMConv3d(1, 4, 3, indice_key="s1"), spconv.SparseConv3d(4, 4, 2, 2)
    )
    idx = torch.tensor([[0, 1, 1, 1], [0, 1, 2, 1], [0, 5, 5, 5]], dtype=torch.int32)
    feats = torch.randn(3, 1, requires_grad=True)
    out = net(spconv.SparseConvTensor(feats, idx, [8, 8, 8], 1))
    out.features.square().sum().backward()
    assert feats.grad is not None and torch.isfinite(feats.grad).all()
    assert feats.grad.abs().sum() > 0


def test_shim_is_inert_with_cuda() -> None:
    if torch.cuda.is_available():
        assert patch_spconv_cpu() is False
    else:
        import spconv.pytorch.cppcore as cppcore

        patch_spconv_cpu()
        assert cppcore.get_current_stream() == 0
