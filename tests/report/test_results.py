"""study.report.results: reading a run directory, and the one missing-input check."""

from __future__ import annotations

from pathlib import Path

from study.report import RESULT_FILES, load_results
from tests.support.fake_run import make_fake_run


def test_every_results_file_loads_with_the_run_models(fake_run: Path) -> None:
    results = load_results(fake_run)
    for filename, (attribute, _, _) in RESULT_FILES.items():
        assert getattr(results, attribute) is not None, filename
    assert [(m.name, m.label, m.train_loops) for m in results.models] == [
        ("base", "Base", 8),
        ("train8", "Train8", 8),
        ("train4", "Train4", 4),
    ]
    assert results.absent(*RESULT_FILES) == []


def test_absent_names_missing_and_unreadable_files_only(tmp_path: Path) -> None:
    run_dir = make_fake_run(tmp_path / "partial", skip=("latency.csv", "adaptive_depths.csv"))
    (run_dir / "results" / "exact_match.csv").write_text("model,n\nbase,3\n")  # columns missing
    results = load_results(run_dir)
    assert results.absent("nll_summary.csv", "latency.csv", "exact_match.csv") == ["latency.csv", "exact_match.csv"]
    assert results.absent("adaptive.csv", "oracle_frontier.csv", "adaptive_depths.csv") == ["adaptive_depths.csv"]
    assert results.absent() == []
    assert results.missing("latency.csv").startswith("Not run: `results/latency.csv` is missing (the `latency` stage")
    assert "could not be read (missing columns" in results.missing("exact_match.csv")
    assert results.missing("adaptive_depths.csv").endswith("(the `adaptive` stage has not run for this run directory)")


def test_unreadable_results_file_is_named(tmp_path: Path) -> None:
    run_dir = make_fake_run(tmp_path / "broken")
    (run_dir / "results" / "latency.csv").write_text("model,median_s\nbase,0.1\n")  # columns missing
    results = load_results(run_dir)
    assert results.latency is None
    assert results.problems == ["results/latency.csv: missing columns inference_loops, p10_s, p90_s"]
