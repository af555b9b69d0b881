"""The grouped-loss benchmark times every grouped term against its loop, and the forms agree."""

from __future__ import annotations

from cmcr.bench.losses import cmcm_vs_pair_loop, grouped_forms


def test_every_grouped_form_is_timed_against_its_loop_and_agrees() -> None:
    out = grouped_forms(n_groups=3, repeats=1, rows=32, hw=(8, 12))
    for term in ("nce", "cmcm", "orth", "occ", "mim"):
        assert out[f"{term}_forms_agree"] is True, term
        assert out[f"{term}_batched_ms"] > 0 and out[f"{term}_loop_ms"] > 0
        assert out[f"{term}_loop_over_batched"] > 0
    pair = cmcm_vs_pair_loop(16, 1)
    assert pair["cmcm_forms_agree"] is True and pair["cmcm_speedup"] > 0


def test_the_cmcm_gemm_bound_times_the_one_product_every_matrix_form_needs() -> None:
    pair = cmcm_vs_pair_loop(256, 3)
    assert pair["cmcm_gemm_ms"] > 0 and pair["cmcm_gemm_gflops"] > 0
    # the matrix form computes that product and more: the GEMM alone is not slower than it
    # (a generous factor for a shared machine's noise), so its ratio bounds the speed-up
    assert pair["cmcm_gemm_ms"] <= 1.5 * pair["cmcm_matrix_ms"]
    assert pair["cmcm_speedup_bound"] > 0


def test_the_release_form_of_cmcm_equals_ours_and_is_timed_with_its_backward() -> None:
    pair = cmcm_vs_pair_loop(24, 1)
    assert pair["cmcm_release_agrees"] is True
    assert pair["cmcm_release_fwd_bwd_ms"] >= pair["cmcm_release_fwd_ms"] > 0
    assert pair["cmcm_release_over_matrix_fwd_bwd"] > 0
