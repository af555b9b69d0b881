"""Ablation tables say what the seeds support: constructed runs with known answers, no MLflow."""

from __future__ import annotations

import io

import pandas as pd
import pytest

from cmcr.results import stats as S
from cmcr.results.ablation import ablation, summary
from cmcr.results.ablation_formats import caption, to_html, to_latex, to_markdown
from cmcr.results.collect import ReportError, RunTable

MIOU = "val/miou"
# seed-to-seed swing shared by every variant (same seed: same data order and init)
SWING = {0: 0.0, 1: 0.05, 2: -0.04}


def _runs(values: dict[str, dict[int, float]]) -> RunTable:
    """A RunTable of finished runs: {variant: {seed: mIoU}}."""
    rows = [{"run_id": f"{v}-{s}", "variant": v, "seed": s, "state": "COMPLETE", MIOU: m,
             "val/fwiou": m + 0.2} for v, by_seed in values.items() for s, m in by_seed.items()]  # fmt: skip
    df = pd.DataFrame(rows)
    df["seed"] = df["seed"].astype("Int64")
    return RunTable(df, [], [MIOU, "val/fwiou"], "0", "sqlite:///unused.db")


def _shift(base: dict[int, float], by: tuple[float, ...]) -> dict[int, float]:
    """``base`` with its seeds' values moved by ``by`` (in seed order)."""
    return {s: v + d for (s, v), d in zip(base.items(), by, strict=True)}


def _components() -> RunTable:
    """CMCR 0.40; PPKT 0.05 below on every seed (±0.001); − mim: ±0.01 around CMCR; random
    init on other seeds (unpaired), far below."""
    cmcr = {s: 0.40 + w for s, w in SWING.items()}
    return _runs({
        "random": {7: 0.10, 8: 0.12, 9: 0.11},
        "ppkt": _shift(cmcr, (-0.049, -0.051, -0.05)),
        "cmcr": cmcr,
        "cmcr-mim": _shift(cmcr, (0.01, -0.012, 0.004)),
        "cmcr-orth": {0: 0.41},
    })  # fmt: skip


def test_default_reference_is_cmcr_and_marks_only_what_holds() -> None:
    """PPKT (−5 on every seed) and random init hold; − mim (noise) does not; orth has n = 1."""
    ab = ablation(_components())
    t = ab.table.set_index("variant")
    assert ab.reference == "CMCR" and ab.baseline == "random init"
    assert t.at["cmcr", "test"] == S.REFERENCE
    assert t.at["ppkt", "test"] == S.PAIRED and t.at["ppkt", "n_paired"] == 3
    assert t.at["ppkt", f"diff_{MIOU}"] == pytest.approx(-0.05)
    assert t.at["ppkt", "holds"] and t.at["random", "holds"]
    assert t.at["random", "test"] == S.WELCH  # no seed in common with CMCR
    assert not t.at["cmcr-mim", "holds"] and t.at["cmcr-mim", f"p_{MIOU}"] > 0.5
    assert t.at["cmcr-mim", "seeds_needed"] > 3  # more seeds to settle it
    assert t.at["cmcr-orth", "test"] == S.SINGLE and not t.at["cmcr-orth", "holds"]
    # Holm over the three tested rows: each adjusted p ≥ its raw p
    tested = t[t[f"p_{MIOU}"].notna()]
    assert len(tested) == 3 and (tested[f"p_holm_{MIOU}"] >= tested[f"p_{MIOU}"]).all()


def test_markdown_carries_interval_p_marker_and_caption() -> None:
    """The README-sized table: interval, Holm p, seeds needed; † on held rows only; caption."""
    md = to_markdown(summary(ablation(_components())))
    rows = [ln for ln in md.splitlines() if ln.startswith("| ")]
    assert rows[0] == ("| configuration | runs | mIoU | Δ mIoU | vs CMCR [95 % CI] | p (Holm) "
                       "| seeds needed | ≈ best | fwIoU |")  # fmt: skip
    cells = {ln.split("|")[1].strip(): [c.strip() for c in ln.split("|")[2:-1]] for ln in rows[1:]}
    assert cells["PPKT"][3].startswith("-5.00 [") and cells["PPKT"][3].endswith("]†")
    assert cells["random init"][3].endswith("† unpaired")
    assert "†" not in cells["CMCR − mim"][3] and cells["CMCR − mim"][5] == ">100"  # +0.07, sd 1.1
    assert cells["CMCR"][3] == "reference"
    assert cells["CMCR − orth"][1] == "**41.00 (n = 1)**"  # the best mean, bold
    assert cells["CMCR − orth"][3] == "+1.00 (n = 1, no interval)"
    assert "the seeds support 2 of 3 differences" in md
    assert "paired t-interval" in md and "Holm-corrected across the 3 compared rows" in md


def test_csv_and_latex_carry_the_new_columns() -> None:
    """CSV: difference, interval, p, Holm p, holds, test, seeds needed; LaTeX: † and a footnote."""
    ab = ablation(_components())
    buf = io.StringIO()
    ab.table.to_csv(buf, index=False)
    csv = pd.read_csv(io.StringIO(buf.getvalue()))
    for col in (f"diff_{MIOU}", f"diff_lo_{MIOU}", f"diff_hi_{MIOU}", f"p_{MIOU}",
                f"p_holm_{MIOU}", "holds", "test", "n_paired", "seeds_needed", f"{MIOU}_ci95"):  # fmt: skip
        assert col in csv, col
    ppkt = csv[csv["variant"] == "ppkt"].iloc[0]
    assert ppkt[f"diff_lo_{MIOU}"] < ppkt[f"diff_{MIOU}"] < ppkt[f"diff_hi_{MIOU}"] < 0
    tex = to_latex(ab)
    assert tex.count("$^\\dagger$") == 3  # two held rows + the footnote
    assert "\\footnotesize" in tex and "Holm" in tex and "\\end{tabular}" in tex
    assert "†" not in tex and "α" not in tex  # every non-ASCII symbol is a macro
    page = to_html(ab)
    assert "<b>" in page and "†" in page
    assert "&lt;0.001" in page or "&gt;100" in page  # our own text, escaped
    assert "<0." not in page and ">100" not in page


def test_reference_option_and_bad_reference() -> None:
    """--reference names a row by label or variant; an unknown name lists the rows."""
    ab = ablation(_components(), reference="PPKT")
    assert ab.reference == "PPKT"
    t = ab.table.set_index("variant")
    assert t.at["cmcr", f"diff_{MIOU}"] == pytest.approx(0.05) and t.at["cmcr", "holds"]
    assert ablation(_components(), reference="ppkt").reference == "PPKT"
    with pytest.raises(ReportError, match="--reference 'SLidR' names no row.*'PPKT'"):
        ablation(_components(), reference="SLidR")


def test_without_variants_the_best_row_is_the_reference() -> None:
    """A swept-params table has no CMCR row: the best mean mIoU is the reference."""
    rt = _runs({"a": {0: 0.3, 1: 0.31}, "b": {0: 0.5, 1: 0.52}})
    rt.runs["loss.weights.mim"] = rt.runs["variant"].map({"a": 0.5, "b": 1.5})
    rt.runs["variant"] = "cmcr"
    rt.params = ["loss.weights.mim"]
    ab = ablation(rt)
    assert ab.group_by == ["loss.weights.mim"] and ab.reference == "loss.weights.mim=1.5"
    assert "'vs loss.weights.mim=1.5' (the best mean mIoU, picked after" in caption(ab)
    assert "picked after" not in caption(ablation(_components()))  # CMCR: chosen in advance


def test_borderline_row_loses_its_marker_under_holm() -> None:
    """Alone against the reference a row holds; with two more noisy rows Holm takes it away."""
    ref = {s: 0.40 + w for s, w in SWING.items()}
    border = _shift(ref, (0.010, 0.016, 0.022))
    alone = ablation(_runs({"cmcr": ref, "cmcr-mim": border})).table.set_index("variant")
    p = alone.at["cmcr-mim", f"p_{MIOU}"]
    assert 0.05 / 3 < p < 0.05 and alone.at["cmcr-mim", "holds"]
    noisy = _shift(ref, (0.02, -0.02, 0.01))
    crowd = ablation(_runs({"cmcr": ref, "cmcr-mim": border, "cmcr-orth": noisy,
                            "cmcr-gemim": dict(noisy)})).table.set_index("variant")  # fmt: skip
    assert crowd.at["cmcr-mim", f"p_{MIOU}"] == pytest.approx(p)  # same raw p
    assert crowd.at["cmcr-mim", f"p_holm_{MIOU}"] == pytest.approx(3 * p)
    assert not crowd.at["cmcr-mim", "holds"]
    # seeds needed at Holm's strictest level α/3: differences 0.010, 0.016, 0.022 (sd 0.006)
    want = S.seeds_needed(0.016, 0.006, alpha=0.05 / 3)
    assert crowd.at["cmcr-mim", "seeds_needed"] == want > S.seeds_needed(0.016, 0.006)


def test_single_configuration_has_nothing_to_compare() -> None:
    """One row: it is its own reference; no test, and the verdict says so."""
    ab = ablation(_runs({"cmcr": {0: 0.4, 1: 0.41}}))
    assert list(ab.table["test"]) == [S.REFERENCE]
    assert "One configuration ('all runs'): nothing to compare." in to_markdown(ab)
