"""The report stage on synthetic run directories (tests/fake_run.py): figures, report.md,
missing results files, the Pareto front, cross-run comparison and the command line."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure

from study import report
from study.pipeline import RunContext
from study.stages import report as report_stage

from .fake_run import make_fake_run

FIGURES = ("nll_vs_loops", "frontier", "exact_match", "sft_loss", "latency")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def section(text: str, heading: str) -> str:
    """The body of the ``## heading...`` section of a markdown text."""
    start = text.index(f"## {heading}")
    end = text.find("\n## ", start + 3)
    return text[start : end if end != -1 else None]


def table_row(text: str, label: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.startswith(f"| {label} | "))
    return [cell.strip() for cell in line.strip("|").split(" | ")]


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_fake_run(tmp_path_factory.mktemp("runs") / "fake-seed2026")


@pytest.fixture(scope="module")
def report_text(fake_run: Path) -> str:
    """report.md written by the pipeline's report stage, ``run(ctx)``."""
    results = report.load_results(fake_run)
    ctx = RunContext(config=results.config, run_dir=fake_run, device=torch.device("cpu"))
    path = report_stage.run(ctx)
    assert path == fake_run / "report.md"
    return path.read_text()


def test_report_writes_every_figure_as_png_and_pdf(fake_run: Path, report_text: str) -> None:
    for name in FIGURES:
        png, pdf = fake_run / "figures" / f"{name}.png", fake_run / "figures" / f"{name}.pdf"
        assert png.read_bytes().startswith(PNG_MAGIC), name
        assert pdf.read_bytes().startswith(b"%PDF"), name
        assert f"](figures/{name}.png)" in report_text, name


def test_table1_holds_the_fake_numbers(fake_run: Path, report_text: str) -> None:
    preferred = pd.read_csv(fake_run / "results" / "preferred_depth.csv")
    nll = pd.read_csv(fake_run / "results" / "nll_summary.csv")
    table = section(report_text, "Table 1")
    assert "results/preferred_depth.csv" in table and "results/nll_summary.csv" in table
    for model, label, train_loops in (("base", "Base", 8), ("train8", "Train8", 8), ("train4", "Train4", 4)):
        test = preferred[(preferred["model"] == model) & (preferred["split"] == "test")].iloc[0]
        train = preferred[(preferred["model"] == model) & (preferred["split"] == "train")].iloc[0]
        best = nll[(nll["model"] == model) & (nll["split"] == "test") & (nll["inference_loops"] == test["best_loops"])]
        row = table_row(table, label)
        assert row[1] == str(train_loops)
        assert row[2] == str(test["best_loops"])
        assert row[3] == f"{test['best_nll']:.3f} [{best['ci_low'].iloc[0]:.3f}, {best['ci_high'].iloc[0]:.3f}]"
        assert row[4] == str(train["best_loops"])
        assert row[5] == f"{train['best_nll']:.3f}"
        assert row[6] == ("yes" if test["train_test_match"] else "no")
        assert row[7] == f"{test['p_best_is_train_loops']:.2f}"
    # train4 is best at 6 on test but at 4 on train: a mismatch, and gaps to 4 and 8 loops
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
    assert "Passed: all 2 sanity checks passed" in report_text
    em = section(report_text, "Exact match")
    assert "| Train8 | strict |" in em and "results/exact_match.csv" in em
    latency = section(report_text, "Latency")
    assert "Slope (s/loop)" in latency and "results/latency_fit.csv" in latency
    assert "results/sft_loss.csv" in section(report_text, "SFT training")


def test_missing_results_files_are_reported_not_raised(tmp_path: Path) -> None:
    skipped = ("latency.csv", "latency_fit.csv", "exact_match.csv", "sft_loss.csv", "checks.json")
    run_dir = make_fake_run(tmp_path / "partial", skip=skipped)
    text = report.regenerate(run_dir).read_text()
    assert (run_dir / "figures" / "nll_vs_loops.png").is_file()
    for name in ("frontier", "exact_match", "sft_loss", "latency"):
        assert not (run_dir / "figures" / f"{name}.png").exists()
    for filename in ("latency.csv", "exact_match.csv", "sft_loss.csv", "checks.json"):
        assert f"Not run: `results/{filename}` is missing" in text
    assert "| Train4 | 4 | 6 |" in text  # Table 1 is still there

    # the figure functions draw a "not run" panel instead of raising (the notebook relies on it)
    results = report.load_results(run_dir)
    for plot in (report.plot_frontier, report.plot_exact_match, report.plot_sft_loss, report.plot_latency):
        assert isinstance(plot(results), Figure)


def test_a_run_with_no_results_at_all(tmp_path: Path) -> None:
    run_dir = make_fake_run(tmp_path / "empty", skip=report.RESULT_FILES)
    text = report.regenerate(run_dir).read_text()
    assert "Not run: `results/preferred_depth.csv` is missing" in text
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


def test_unreadable_results_file_is_named(tmp_path: Path) -> None:
    run_dir = make_fake_run(tmp_path / "broken")
    (run_dir / "results" / "latency.csv").write_text("model,median_s\nbase,0.1\n")  # columns missing
    results = report.load_results(run_dir)
    assert results.latency is None
    assert "could not be read (missing columns" in report.render_report(results, {})


def test_pareto_front_on_a_hand_made_case() -> None:
    points = pd.DataFrame(
        {
            "name": ["fastest", "a", "b", "same-y-slower", "between", "best", "same-x-worse"],
            "median_s": [0.5, 1.0, 2.0, 3.0, 2.5, 4.0, 1.0],
            "nll_per_token": [9.0, 5.0, 3.0, 3.0, 4.0, 1.0, 6.0],
        }
    )
    front = report.pareto_front(points)
    assert list(points.loc[front, "name"]) == ["fastest", "a", "b", "best"]
    ties = pd.DataFrame({"median_s": [1.0, 1.0], "nll_per_token": [2.0, 2.0]})
    assert report.pareto_front(ties).all()  # identical points do not dominate each other


def test_frontier_points_mark_best_and_tied_depths(fake_run: Path) -> None:
    points = report.frontier_points(report.load_results(fake_run)).set_index(["model", "inference_loops"])
    assert points.loc[("train4", 6), "best"] and points.loc[("base", 8), "best"]
    assert points.loc[("base", 6), "tied"] and not points.loc[("base", 4), "tied"]
    assert not points.loc[("train8", 16), "pareto"]  # slower and worse than 8 loops
    assert points.loc[("train8", 2), "pareto"]


def test_number_formats() -> None:
    assert report.format_nll(1.23456) == "1.235"
    assert [report.format_seconds(v) for v in (0.012345, 1.2345, 12.345, 123.4, 0.0)] == [
        "0.0123",
        "1.23",
        "12.3",
        "123",
        "0",
    ]
    assert report.format_percent(0.125) == "12.5%"


def test_compare_writes_table_and_overlay(tmp_path: Path) -> None:
    first = make_fake_run(tmp_path / "v16-seed2026", name="v16")
    second = make_fake_run(tmp_path / "v17-seed7", name="v17", seed=7, nll_shift=0.05)
    out = tmp_path / "compare"
    path = report.compare([first, second], out)
    assert path == out / "compare.md"
    table = pd.read_csv(out / "compare.csv")
    assert len(table) == 6 and set(table["run"]) == {"v16-seed2026", "v17-seed7"}
    assert {"best_test_loops", "best_test_nll", "p_best_is_train_loops", "train_test_match"} <= set(table.columns)
    for model in ("base", "train8", "train4"):
        rows = table[table["model"] == model].set_index("run")
        shift = rows.loc["v17-seed7", "best_test_nll"] - rows.loc["v16-seed2026", "best_test_nll"]
        assert shift == pytest.approx(0.05, abs=0.02)
    assert (out / "compare_nll_vs_loops.png").read_bytes().startswith(PNG_MAGIC)
    assert (out / "compare_nll_vs_loops.pdf").is_file()
    text = path.read_text()
    assert "v16-seed2026" in text and "v17-seed7" in text and "](compare_nll_vs_loops.png)" in text


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    skip = ("latency.csv", "latency_fit.csv", "exact_match.csv", "sft_loss.csv", "schedules.csv")  # one figure: fast
    run_dir = make_fake_run(tmp_path / "run", skip=skip)
    exported = tmp_path / "exported"
    assert report.main(["--run-dir", str(run_dir), "--export-figures", str(exported)]) == 0
    assert (run_dir / "report.md").is_file()
    assert sorted(p.name for p in exported.iterdir()) == ["nll_vs_loops.png"]
    assert report.main(["compare", str(run_dir), str(run_dir), "--out", str(tmp_path / "cmp")]) == 0
    assert (tmp_path / "cmp" / "compare.csv").is_file()
    assert report.main(["--run-dir", str(tmp_path / "nowhere")]) == 2
    assert "not a directory" in capsys.readouterr().err


def _curves(ax) -> list:
    """The data lines of an axes (not one-point stars, vertical markers or error-bar caps)."""
    return [
        line
        for line in ax.get_lines()
        if len(set(line.get_xdata())) > 1 and line.get_linestyle() not in ("None", "")
    ]


def _legend(container) -> list[str]:
    legend = container.get_legend() if hasattr(container, "get_legend") else container.legends[0]
    return [text.get_text() for text in legend.get_texts()]


def test_figure1_draws_every_curve_in_its_style_with_its_legend(fake_run: Path) -> None:
    from matplotlib.colors import to_rgb

    results = report.load_results(fake_run)
    ax = report.plot_nll_vs_loops(results).axes[0]
    nll = pd.read_csv(fake_run / "results" / "nll_summary.csv")
    curves = _curves(ax)
    assert len(curves) == 3 * 2  # models × splits
    for model in ("base", "train8", "train4"):
        for split in ("test", "train"):
            rows = nll[(nll["model"] == model) & (nll["split"] == split)].sort_values("inference_loops")
            (line,) = [
                c
                for c in curves
                if list(c.get_xdata()) == list(rows["inference_loops"])
                and list(c.get_ydata()) == pytest.approx(list(rows["nll_per_token"]))
            ]
            assert line.get_linestyle() == ("-" if split == "test" else "--")
            assert to_rgb(line.get_color()) == pytest.approx(results.colors[model])
            # the argmin star of this curve, in its colour
            best = rows.loc[rows["nll_per_token"].idxmin()]
            stars = [
                s
                for s in ax.get_lines()
                if s.get_marker() == "*"
                and list(s.get_xdata()) == [best["inference_loops"]]
                and list(s.get_ydata()) == pytest.approx([best["nll_per_token"]])
            ]
            assert len(stars) == 1
        # the dotted training-depth line in the model's colour
        trained = results.model(model).train_loops
        verticals = [
            v
            for v in ax.get_lines()
            if v.get_linestyle() == ":" and to_rgb(v.get_color()) == pytest.approx(results.colors[model])
        ]
        assert len(verticals) == 1 and abs(verticals[0].get_xdata()[0] - trained) < 0.2
    assert _legend(ax) == [
        "Base (trained at 8 loops)",
        "Train8 (trained at 8 loops)",
        "Train4 (trained at 4 loops)",
        "test (bootstrap 95% CI band)",
        "train diagnostics",
        "argmin, test",
        "argmin, train",
        "training loop count",
    ]


def test_figure3_has_one_panel_per_extraction_with_its_accuracies(fake_run: Path) -> None:
    results = report.load_results(fake_run)
    figure = report.plot_exact_match(results)
    em = pd.read_csv(fake_run / "results" / "exact_match.csv")
    assert len(figure.axes) == len(report.EXTRACTIONS) == 4
    titles = [ax.get_title() for ax in figure.axes]
    assert [t.split(",")[0] for t in titles] == [
        "strict: '#### N'",
        "flexible: last number",
        "lm-eval strict-match",
        "lm-eval flexible-extract",
    ]
    for ax, extraction in zip(figure.axes, report.EXTRACTIONS, strict=True):
        curves = _curves(ax)
        assert len(curves) == 3
        for line, model in zip(curves, ("base", "train8", "train4"), strict=True):
            rows = em[(em["model"] == model) & (em["extraction"] == extraction)].sort_values("inference_loops")
            assert list(line.get_ydata()) == pytest.approx(list(100 * rows["accuracy"]))
    assert _legend(figure)[:3] == [results.legend_label(m) for m in ("base", "train8", "train4")]


def test_figures_4_and_5_draw_each_model(fake_run: Path) -> None:
    results = report.load_results(fake_run)
    sft = pd.read_csv(fake_run / "results" / "sft_loss.csv")
    ax = report.plot_sft_loss(results).axes[0]
    for model in ("train8", "train4"):
        raw = sft[sft["model"] == model].sort_values("step")
        drawn = [c for c in _curves(ax) if list(c.get_ydata()) == pytest.approx(list(raw["loss"]))]
        assert len(drawn) == 1
    assert _legend(ax)[:2] == [results.legend_label(m) for m in ("train8", "train4")]
    ax = report.plot_latency(results).axes[0]
    fits = pd.read_csv(fake_run / "results" / "latency_fit.csv")
    for model in ("base", "train8", "train4"):
        fit = fits[fits["model"] == model].iloc[0]
        lines = [c for c in _curves(ax) if c.get_linestyle() == "--"]
        assert any(
            c.get_ydata()[-1] == pytest.approx(fit["intercept_s"] + fit["slope_s_per_loop"] * c.get_xdata()[-1])
            for c in lines
        )
    assert [t.split(":")[0] for t in _legend(ax)[:3]] == [results.legend_label(m) for m in ("base", "train8", "train4")]


def test_schedules_section_and_figure(tmp_path: Path) -> None:
    run_dir = make_fake_run(tmp_path / "schedules")
    text = report.regenerate(run_dir).read_text()
    assert "## Schedules at a fixed loop budget" in text and "| Base | 35 |" in text
    assert "(rank " in text and (run_dir / "figures" / "schedules.png").is_file()
    missing = make_fake_run(tmp_path / "no-schedules", skip=("schedules.csv",))
    assert "`results/schedules.csv` is missing" in report.regenerate(missing).read_text()
