"""study.report.figures and study.report.style: every figure drawn from the fake run, the
"not run" panels, the one missing-input check, and FIGURES as the report's one order."""

from __future__ import annotations

import json
import re
from itertools import pairwise
from pathlib import Path

import pandas as pd
import pytest
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure

from study import report
from study.report.style import colors, missing_inputs
from tests.support.fake_run import make_fake_run

from .helpers import PNG_MAGIC, curves, legend_texts

ALL_FIGURES = (
    "nll_vs_loops", "exact_match", "latency", "frontier", "sft_loss", "depth_shift", "schedules", "benchmarks",
    "adaptive_frontier", "adaptive_depths", "adaptive_latency",
)  # fmt: skip


def test_report_writes_every_figure_as_png_and_pdf(fake_run: Path, report_text: str) -> None:
    assert [spec.name for spec in report.FIGURES] == list(ALL_FIGURES)
    for name in ALL_FIGURES:
        png, pdf = fake_run / "figures" / f"{name}.png", fake_run / "figures" / f"{name}.pdf"
        assert png.read_bytes().startswith(PNG_MAGIC), name
        assert pdf.read_bytes().startswith(b"%PDF"), name
        assert f"](figures/{name}.png)" in report_text, name


def test_figure_numbers_in_the_report_follow_FIGURES(report_text: str) -> None:
    numbered = [(int(n), title) for n, title in re.findall(r"^\*\*Figure (\d+): (.+?)\.\*\*", report_text, re.M)]
    assert [n for n, _ in numbered] == list(range(1, len(numbered) + 1))  # shown in order, none skipped
    for number, title in numbered:
        spec = report.FIGURES[number - 1]
        assert spec.title == title and report.figure_number(spec.name) == number
    # a figure cited in the text has the number it is shown with
    assert f"ranges are in Figure {report.figure_number('latency')}." in report_text
    embeds = [f"](figures/{spec.name}.png)" for spec in report.FIGURES]
    assert all(embed in report_text for embed in embeds)
    assert sorted(embeds, key=report_text.index) == embeds  # report.md shows them in FIGURES order


def test_missing_inputs_is_the_one_check_of_every_figure(tmp_path: Path) -> None:
    """Each figure drops to a "not run" panel when any file of its ``needs`` is absent."""
    results = report.load_results(make_fake_run(tmp_path / "run"))
    figure = Figure()
    ax = figure.add_subplot()
    assert not missing_inputs(results, [ax], "nll_summary.csv", "latency.csv")
    assert not ax.texts
    for spec in report.FIGURES:
        for needed in spec.needs:
            setattr(results, report.RESULT_FILES[needed][0], None)
            drawn = spec.plot(results)
            notes = [t.get_text() for a in drawn.axes for t in a.texts]
            assert f"Not run: results/{needed} missing" in notes, (spec.name, needed)
            results = report.load_results(tmp_path / "run")
    results.latency = results.exact_match = None
    assert missing_inputs(results, [ax], "nll_summary.csv", "latency.csv", "exact_match.csv")
    assert [t.get_text() for t in ax.texts] == ["Not run: results/latency.csv, results/exact_match.csv missing"]


def test_missing_results_draw_not_run_panels_and_no_files(tmp_path: Path) -> None:
    skipped = ("latency.csv", "latency_fit.csv", "exact_match.csv", "sft_loss.csv", "adaptive.csv")
    run_dir = make_fake_run(tmp_path / "partial", skip=skipped)
    report.regenerate(run_dir)
    assert (run_dir / "figures" / "nll_vs_loops.png").is_file()
    for name in ("frontier", "exact_match", "sft_loss", "latency", "adaptive_frontier", "adaptive_depths"):
        assert not (run_dir / "figures" / f"{name}.png").exists()
    # the figure functions draw a "not run" panel instead of raising (the notebook relies on it)
    results = report.load_results(run_dir)
    for spec in report.FIGURES:
        assert isinstance(spec.plot(results), Figure)


def test_figure_that_cannot_be_drawn_loses_its_stale_files(tmp_path: Path) -> None:
    run_dir = make_fake_run(tmp_path / "run", skip=("exact_match.csv", "schedules.csv"))
    stale = run_dir / "figures" / "adaptive_depths.pdf"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    (run_dir / "results" / "adaptive_depths.csv").unlink()
    written = report.write_figures(report.load_results(run_dir), run_dir / "figures")
    assert written["adaptive_depths"] is None and written["adaptive_frontier"] is None
    assert not stale.exists()


def test_nll_figure_draws_every_curve_in_its_style_with_its_legend(fake_run: Path) -> None:
    results = report.load_results(fake_run)
    palette = colors(results)
    ax = report.plot_nll_vs_loops(results).axes[0]
    nll = pd.read_csv(fake_run / "results" / "nll_summary.csv")
    drawn = curves(ax)
    assert len(drawn) == 3 * 2  # models × (test, heldout): the seen slice (SFT data) is not drawn by default
    for model in ("base", "train8", "train4"):
        for split in ("test", "heldout"):
            rows = nll[(nll["model"] == model) & (nll["split"] == split)].sort_values("inference_loops")
            (line,) = [
                c
                for c in drawn
                if list(c.get_xdata()) == list(rows["inference_loops"])
                and list(c.get_ydata()) == pytest.approx(list(rows["nll_per_token"]))
            ]
            assert line.get_linestyle() == ("-" if split == "test" else "--")
            assert to_rgb(line.get_color()) == pytest.approx(palette[model])
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
            if v.get_linestyle() == ":" and to_rgb(v.get_color()) == pytest.approx(palette[model])
        ]
        assert len(verticals) == 1 and abs(verticals[0].get_xdata()[0] - trained) < 0.2
    assert legend_texts(ax) == [
        "Base (trained at 8 loops)",
        "Train8 (trained at 8 loops)",
        "Train4 (trained at 4 loops)",
        "test (bootstrap 95% CI band)",
        "heldout (train questions outside SFT)",
        "argmin, test",
        "argmin, heldout",
        "training loop count",
    ]


def test_the_seen_slice_is_drawn_only_on_request_and_labelled_as_sft_data(fake_run: Path) -> None:
    results = report.load_results(fake_run)
    ax = report.plot_nll_vs_loops(results, splits=(report.TEST, report.HELDOUT, report.SEEN)).axes[0]
    assert len(curves(ax)) == 3 * 3
    assert [line.get_linestyle() for line in curves(ax)][:3] == ["-", "--", "-."]
    assert "seen (SFT data)" in legend_texts(ax) and "argmin, heldout, seen" in legend_texts(ax)


def test_exact_match_figure_has_one_panel_per_extraction_with_its_accuracies(fake_run: Path) -> None:
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
        drawn = curves(ax)
        assert len(drawn) == 3
        for line, model in zip(drawn, ("base", "train8", "train4"), strict=True):
            rows = em[(em["model"] == model) & (em["extraction"] == extraction)].sort_values("inference_loops")
            assert list(line.get_ydata()) == pytest.approx(list(100 * rows["accuracy"]))
    assert legend_texts(figure)[:3] == [results.legend_label(m) for m in ("base", "train8", "train4")]


def test_sft_loss_and_latency_figures_draw_each_model(fake_run: Path) -> None:
    results = report.load_results(fake_run)
    sft = pd.read_csv(fake_run / "results" / "sft_loss.csv")
    ax = report.plot_sft_loss(results).axes[0]
    for model in ("train8", "train4"):
        raw = sft[sft["model"] == model].sort_values("step")
        drawn = [c for c in curves(ax) if list(c.get_ydata()) == pytest.approx(list(raw["loss"]))]
        assert len(drawn) == 1
    assert legend_texts(ax)[:2] == [results.legend_label(m) for m in ("train8", "train4")]
    ax = report.plot_latency(results).axes[0]
    fits = pd.read_csv(fake_run / "results" / "latency_fit.csv")
    for model in ("base", "train8", "train4"):
        fit = fits[fits["model"] == model].iloc[0]
        lines = [c for c in curves(ax) if c.get_linestyle() == "--"]
        assert any(
            c.get_ydata()[-1] == pytest.approx(fit["intercept_s"] + fit["slope_s_per_loop"] * c.get_xdata()[-1])
            for c in lines
        )
    labels = [t.split(":")[0] for t in legend_texts(ax)[:3]]
    assert labels == [results.legend_label(m) for m in ("base", "train8", "train4")]


def test_adaptive_figures_draw_one_panel_per_model(fake_run: Path) -> None:
    results = report.load_results(fake_run)
    figure = report.plot_adaptive_frontier(results)
    assert [ax.get_title() for ax in figure.axes] == ["Base (test)", "Train8 (test)", "Train4 (test)"]
    frontier = pd.read_csv(fake_run / "results" / "oracle_frontier.csv")
    for ax, model in zip(figure.axes, ("base", "train8", "train4"), strict=True):
        assert legend_texts(ax) == ["fixed depth", "oracle", "halting: kl, ladder-2-4-8 (tau sweep)"]
        fixed, oracle, halting = ax.get_lines()
        assert list(fixed.get_xdata()) == [2.0, 4.0, 8.0] and list(halting.get_xdata()) == [7.0, 12.0]
        staircase = frontier[(frontier["model"] == model) & (frontier["split"] == "test")]
        assert list(oracle.get_ydata()) == pytest.approx(list(staircase["nll_per_token"]))
    figure = report.plot_adaptive_depths(results)
    assert len(figure.axes) == 3
    assert legend_texts(figure.axes[0]) == ["oracle", "ladder-2-4-8-kl0.1"]  # the best halting policy


def test_the_notebook_numbers_figures_like_the_report() -> None:
    notebook = json.loads((Path(__file__).resolve().parents[2] / "notebooks" / "figures.ipynb").read_text())
    cells = ["".join(cell["source"]) for cell in notebook["cells"]]
    plotted = {spec.plot.__name__: spec.name for spec in report.FIGURES}
    headings = 0
    for text, following in pairwise(cells):
        heading = re.match(r"## Figure (\d+):", text)
        if heading:
            headings += 1
            (function,) = re.findall(r"report\.(plot_\w+)\(", following)
            assert report.figure_number(plotted[function]) == int(heading.group(1)), function
    assert headings == 5
