"""study.report.markdown: the text of report.md, section by section, and what it says
when results files are missing."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from study import report
from tests.support.fake_run import make_fake_run

from .helpers import section, table_row


def test_table1_holds_the_fake_numbers(fake_run: Path, report_text: str) -> None:
    preferred = pd.read_csv(fake_run / "results" / "preferred_depth.csv")
    nll = pd.read_csv(fake_run / "results" / "nll_summary.csv")
    table = section(report_text, "Table 1")
    assert "results/preferred_depth.csv" in table and "results/nll_summary.csv" in table
    for model, label, train_loops in (("base", "Base", 8), ("train8", "Train8", 8), ("train4", "Train4", 4)):
        test = preferred[(preferred["model"] == model) & (preferred["split"] == "test")].iloc[0]
        heldout = preferred[(preferred["model"] == model) & (preferred["split"] == "heldout")].iloc[0]
        best = nll[(nll["model"] == model) & (nll["split"] == "test") & (nll["inference_loops"] == test["best_loops"])]
        row = table_row(table, label)
        assert row[1] == str(train_loops)
        assert row[2] == str(test["best_loops"])
        assert row[3] == f"{test['best_nll']:.3f} [{best['ci_low'].iloc[0]:.3f}, {best['ci_high'].iloc[0]:.3f}]"
        assert row[4] == str(heldout["best_loops"])
        assert row[5] == f"{heldout['best_nll']:.3f}"
        assert row[6] == ("yes" if test["train_test_match"] else "no")
        assert row[7] == f"{test['p_best_is_train_loops']:.2f}"
    # train4 is best at 6 on test but at 4 on heldout: a mismatch, and gaps to 4 and 8 loops
    train4 = table_row(table, "Train4")
    assert train4[2] == "6" and train4[6] == "no"
    assert train4[8].startswith("4 loops: +") and "8 loops: +" in train4[8]
    assert "tied" in table_row(table, "Base")[8]  # the fake base's neighbours have CIs containing 0


def test_report_header_manifest_and_other_tables(report_text: str) -> None:
    label = "tiny embedded LoopFormer (not the released model)"
    title, _, note = report_text.splitlines()[:3]
    assert title.startswith("# ") and "fake" in title and label in title
    assert label in note  # repeated in the header for the embedded model
    run = section(report_text, "What was run")
    for expected in ("seed 2026", "ab" * 32, "embedded:mini", "feedfacecafebeef", "torch 2.13.0", "| nll |"):
        assert expected in run
    slices = next(line for line in run.splitlines() if line.startswith("- **Slices:**"))
    assert "test 300 test questions; heldout 300 train questions that no SFT subset contains" in slices
    assert "seen (SFT data) 300 questions of seed 2026's SFT subset; SFT 512 train questions per replicate" in slices
    assert "Passed: all 2 sanity checks passed" in report_text
    em = section(report_text, "Exact match")
    assert "| Train8 | strict |" in em and "results/exact_match.csv" in em
    latency = section(report_text, "Latency")
    assert "Slope (s/loop)" in latency and "results/latency_fit.csv" in latency
    assert "results/sft_loss.csv" in section(report_text, "SFT training")


def test_adaptive_section_compares_halting_with_fixed_depth_and_oracle(report_text: str) -> None:
    text = section(report_text, "Fixed or per-input depth?")
    assert text.count("- **") == 3  # one bullet per model
    assert "- **train4**: best fixed depth M8 at " in text
    assert "1 of 2 halting policies beat the best fixed depth within their mean loops" in text
    assert "Best at equal compute: ladder-2-4-8-kl0.01 at 7.00 mean loops" in text and "vs M4)" in text
    sweep, _, calibrated = text.partition("### Calibrated operating points")
    assert sweep.rstrip().endswith(
        "![adaptive_frontier](figures/adaptive_frontier.png)\n\n![adaptive_depths](figures/adaptive_depths.png)"
    )
    # the calibrated table: one row per (model, family, rule, target), and the one place a claim is made
    assert calibrated.count("| ladder-2-4-8-trace | kl |") == 6
    assert "| train4 | ladder-2-4-8-trace | kl | equal_compute:M4 | yes | 0.0123 | 4.20 | 4.30 |" in calibrated
    assert "| M4 | -0.0200 [-0.0400, -0.0050] | 0.40 |" in calibrated
    assert "| within_eps | no | 0 | 1.50 | 1.60 | 2.050 [1.900, 2.100] | — | — no CI" in calibrated
    assert "3 of 6 calibrated operating points beat the fixed depth chosen on heldout" in calibrated
    assert "is for these calibrated operating points only, each with its paired CI" in calibrated


def test_missing_results_files_are_reported_not_raised(tmp_path: Path) -> None:
    skipped = ("latency.csv", "latency_fit.csv", "exact_match.csv", "sft_loss.csv", "checks.json", "adaptive.csv")
    run_dir = make_fake_run(tmp_path / "partial", skip=skipped)
    text = report.regenerate(run_dir).read_text()
    for filename in ("latency.csv", "exact_match.csv", "sft_loss.csv", "checks.json", "adaptive.csv"):
        assert f"Not run: `results/{filename}` is missing" in text
    assert "| Train4 | 4 | 6 |" in text  # Table 1 is still there
    frontier = report.figure_spec("frontier")
    number = report.figure_number("frontier")
    assert f"**Figure {number}: {frontier.title}.** Not drawn (missing `results/latency.csv`)." in text
    adaptive = section(text, "Fixed or per-input depth?")
    assert adaptive.strip().endswith("(the `adaptive` stage has not run for this run directory).")
    assert "](figures/adaptive_" not in adaptive


def test_a_run_with_no_results_at_all(tmp_path: Path) -> None:
    run_dir = make_fake_run(tmp_path / "empty", skip=report.RESULT_FILES)
    text = report.regenerate(run_dir).read_text()
    assert "Not run: `results/preferred_depth.csv` is missing" in text
    assert "Not run: `results/adaptive.csv` is missing" in text
    assert not list((run_dir / "figures").glob("*.png"))


def test_skipped_and_failed_checks_are_said_plainly(tmp_path: Path) -> None:
    skipped = report.load_results(make_fake_run(tmp_path / "skipped", checks_skipped=True))
    text = report.render_report(skipped, {})
    assert "Sanity checks were skipped with --skip-checks; these numbers were not gated" in text

    assert "The checks ran anyway and all 2 passed" in text

    failed = report.load_results(make_fake_run(tmp_path / "failed", checks_pass=False))
    text = report.render_report(failed, {})
    assert "FAILED: 1 of 2 sanity checks failed (`base_nll_below_uniform`)" in text
    assert "not gated" not in text

    both = report.load_results(make_fake_run(tmp_path / "both", checks_skipped=True, checks_pass=False))
    text = report.render_report(both, {})
    assert "these numbers were not gated" in text and "1 of 2 FAILED** (`base_nll_below_uniform`)" in text


def test_unreadable_results_file_is_named_in_the_report(tmp_path: Path) -> None:
    run_dir = make_fake_run(tmp_path / "broken")
    (run_dir / "results" / "latency.csv").write_text("model,median_s\nbase,0.1\n")  # columns missing
    text = report.render_report(report.load_results(run_dir), {})
    assert "could not be read (missing columns" in text
    assert "- results/latency.csv: missing columns" in text  # and listed in the header


def test_schedules_section_and_figure(tmp_path: Path) -> None:
    run_dir = make_fake_run(tmp_path / "schedules")
    text = report.regenerate(run_dir).read_text()
    assert "## Schedules at a fixed loop budget" in text and "| Base | 35 |" in text
    assert "(rank " in text and (run_dir / "figures" / "schedules.png").is_file()
    missing = make_fake_run(tmp_path / "no-schedules", skip=("schedules.csv",))
    assert "`results/schedules.csv` is missing" in report.regenerate(missing).read_text()


def test_latency_section_gives_the_median_only_below_ten_samples_and_prefill_apart(tmp_path: Path) -> None:
    from study.io import atomic_write_csv
    from study.report import load_results, plot_latency
    from study.report.markdown import render_report
    from study.stages.latency import LATENCY_COLUMNS

    run = make_fake_run(tmp_path / "few-samples")
    text = section(render_report(load_results(run), {}), "Latency")
    assert "p10–p90 ranges are in Figure" in text and "torch threads: 1" in text  # the fake has 10 samples
    assert "| Model | Loops | Prefill (s, median) | Decode (tokens/s) | Note |" in text
    assert "interleaved, in a seeded shuffled order" in text and "load average was 1.50-1.75" in text

    path = run / "results" / "latency.csv"
    frame = pd.read_csv(path).astype(object)
    frame["samples"], frame["p10_s"], frame["p90_s"], frame["note"] = 3, "", "", "median only (n = 3 < 10)"
    atomic_write_csv(path, frame.fillna("").to_dict("records"), LATENCY_COLUMNS)
    results = load_results(run)
    text = section(render_report(results, {}), "Latency")
    assert "median only: fewer than 10 samples per depth give no p10–p90" in text and "p10–p90 ranges" not in text
    assert "median only (n = 3 < 10)" in text
    title = plot_latency(results).axes[0].get_title()
    assert "median only: < 10 samples" in title and "1 thread" in title
