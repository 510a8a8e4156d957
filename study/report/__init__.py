"""The report stage: five figures and ``report.md`` from a run directory's results files.

The loaders (``load_results``) and the figure functions (``plot_*``) are shared by the
report and by ``notebooks/figures.ipynb``: each figure function takes a ``Results`` and,
optionally, axes to draw on, and returns the matplotlib Figure. A results file that is
missing (its stage was not run) never raises: the figure shows a "not run" note and
the report says which file is missing.

    python -m study.report --run-dir runs/mini-seed2026 [--export-figures figures]
    python -m study.report compare runs/v16-seed2026 runs/v17-seed2026 --out runs/compare
"""

from __future__ import annotations

import argparse
import functools
import io
import math
import os
import shutil
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import matplotlib

if "ipykernel" not in sys.modules and "matplotlib.pyplot" not in sys.modules:
    matplotlib.use("Agg")  # outside a notebook: no display needed, figures are only saved

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from pydantic import ValidationError

from study.config import EMBEDDED_BASE, StudyConfig, sft_model_name
from study.io import atomic_write_bytes, atomic_write_csv, atomic_write_text, read_json
from study.tasks.gsm8k import EXTRACTIONS

DPI = 150
TEST, TRAIN = "test", "train"
# how the report names the exact-match stage's verdicts (EXTRACTIONS: study.tasks.gsm8k.score_text)
EXTRACTION_TITLES = {
    "strict": "strict: '#### N', numeric",
    "flexible": "flexible: last number, numeric",
    "lm_eval_strict": "lm-eval strict-match",
    "lm_eval_flexible": "lm-eval flexible-extract",
}
MODEL_MARKERS = ("o", "s", "^", "D", "v", "P", "X")
RUN_LINESTYLES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1)), (0, (1, 3)))
STYLE = {
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 8,
    "legend.framealpha": 0.9,
    "pdf.fonttype": 42,
}

# results file -> (Results attribute, the stage that writes it, columns the report needs)
RESULT_FILES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "checks.json": ("checks", "check", ()),
    "sft_loss.csv": ("sft_loss", "sft", ("model", "step", "loss")),
    "nll_summary.csv": ("nll", "nll", ("model", "split", "inference_loops", "nll_per_token", "ci_low", "ci_high")),
    "preferred_depth.csv": (
        "preferred",
        "nll",
        ("model", "split", "inference_loops", "best_loops", "best_nll", "gap_to_best", "gap_ci_low", "gap_ci_high"),
    ),
    "exact_match.csv": (
        "exact_match",
        "exact_match",
        ("model", "inference_loops", "extraction", "correct", "n", "accuracy", "ci_low", "ci_high"),
    ),
    "latency.csv": ("latency", "latency", ("model", "inference_loops", "median_s", "p10_s", "p90_s")),
    "latency_fit.csv": ("latency_fit", "latency", ("model", "slope_s_per_loop", "intercept_s", "r_squared")),
    "schedules.csv": (
        "schedules",
        "nll",
        ("model", "split", "policy", "steps", "uniform", "nll_per_token", "ci_low", "ci_high", "rank"),
    ),
}
BOOL_COLUMNS = ("is_best", "train_test_match", "uniform")


# ---- loading ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelInfo:
    """How the report names and marks one model (a ``ModelSpec`` without its source)."""

    name: str  # the ``model`` column: "base", "train8", ...
    label: str  # "Base", "Train8", ...
    train_loops: int | None  # the depth it was (pre)trained at


@dataclass
class Results:
    """Everything the report reads from one run directory; a missing file is ``None``."""

    run_dir: Path
    manifest: dict[str, Any] | None = None
    config: StudyConfig | None = None
    models: list[ModelInfo] = field(default_factory=list)
    checks: dict[str, Any] | None = None
    sft_loss: pd.DataFrame | None = None
    nll: pd.DataFrame | None = None
    preferred: pd.DataFrame | None = None
    exact_match: pd.DataFrame | None = None
    latency: pd.DataFrame | None = None
    latency_fit: pd.DataFrame | None = None
    schedules: pd.DataFrame | None = None
    problems: list[str] = field(default_factory=list)  # files present but unreadable

    @property
    def model_label(self) -> str:
        """The base model's label (config.model.label), else its source."""
        if self.config is not None:
            return self.config.model.label or self.config.model.source
        model = (self.manifest or {}).get("model") or {}
        return str(model.get("label") or model.get("source") or "unknown model")

    @property
    def embedded(self) -> bool:
        """True when the run used the tiny embedded model rather than a released checkpoint."""
        if self.config is not None:
            return self.config.model.source == EMBEDDED_BASE
        return ((self.manifest or {}).get("model") or {}).get("source") == EMBEDDED_BASE

    @property
    def provenance(self) -> dict[str, Any] | None:
        """Where an offline base came from (file, sha256, quantization), from the manifest."""
        return ((self.manifest or {}).get("model") or {}).get("provenance")

    @property
    def backbone(self) -> str:
        """The run's ``model.backbone`` (from the config, else the manifest; LoopFormer by default)."""
        if self.config is not None:
            return self.config.model.backbone
        return ((self.manifest or {}).get("model") or {}).get("backbone") or "loopformer"

    @property
    def depth_label(self) -> str:
        """The x axis of the depth figures, as the backbone's registry entry names its depth."""
        from study.models.backbones import get_backbone  # lazy: the registry loads the models

        return get_backbone(self.backbone).depth_axis(self.config.looping if self.config is not None else None)

    @property
    def name(self) -> str:
        return self.config.name if self.config is not None else self.run_dir.name

    @property
    def colors(self) -> dict[str, tuple[float, float, float]]:
        """One colour-blind-safe colour per model, the same in every figure."""
        return model_colors([m.name for m in self.models])

    def model(self, name: str) -> ModelInfo:
        for info in self.models:
            if info.name == name:
                return info
        return ModelInfo(name, name, _loops_from_name(name))

    def marker(self, name: str) -> str:
        names = [m.name for m in self.models]
        return MODEL_MARKERS[names.index(name) % len(MODEL_MARKERS)] if name in names else "o"

    def legend_label(self, name: str) -> str:
        info = self.model(name)
        return info.label if info.train_loops is None else f"{info.label} (trained at {info.train_loops} loops)"

    def models_in(self, frame: pd.DataFrame | None) -> list[str]:
        """Model names present in ``frame``, in the run's model order."""
        if frame is None or frame.empty:
            return []
        present = set(frame["model"].astype(str))
        return [m.name for m in self.models if m.name in present]

    def missing(self, filename: str) -> str:
        """One sentence saying why ``results/<filename>`` is absent."""
        _, stage, _ = RESULT_FILES[filename]
        if any(p.startswith(f"results/{filename}") for p in self.problems):
            return f"`results/{filename}` could not be read ({self._problem(filename)})"
        return f"Not run: `results/{filename}` is missing (the `{stage}` stage has not run for this run directory)"

    def _problem(self, filename: str) -> str:
        return next(p.split(": ", 1)[-1] for p in self.problems if p.startswith(f"results/{filename}"))


def model_colors(names: Sequence[str]) -> dict[str, tuple[float, float, float]]:
    palette = sns.color_palette("colorblind", max(len(names), 3))
    return {name: tuple(palette[i % len(palette)]) for i, name in enumerate(names)}


def _loops_from_name(name: str) -> int | None:
    digits = name.removeprefix("train")
    return int(digits) if name.startswith("train") and digits.isdigit() else None


def _read_frame(path: Path, columns: Sequence[str], problems: list[str], label: str) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    try:
        frame = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as error:
        problems.append(f"{label}: {type(error).__name__}: {error}")
        return None
    absent = [c for c in columns if c not in frame.columns]
    if absent:
        problems.append(f"{label}: missing columns {', '.join(absent)}")
        return None
    if "model" in frame.columns:
        frame["model"] = frame["model"].astype(str)
    for column in BOOL_COLUMNS:
        if column in frame.columns and frame[column].dtype != bool:
            frame[column] = frame[column].astype(str).str.strip().str.lower().isin(("true", "1", "yes"))
    return frame


def load_results(
    run_dir: Path | str,
    models: Iterable[Any] | None = None,
    config: StudyConfig | None = None,
) -> Results:
    """Read a run directory's manifest and results files.

    ``models`` (e.g. ``RunContext.model_specs()``: anything with ``name``, ``label`` and
    ``train_loops``) fixes the model order and labels; without it they come from the
    config in the manifest (base first, then one SFT model per ``sft.train_loops``).
    """
    run_dir = Path(run_dir)
    results = Results(run_dir=run_dir)
    manifest_path = run_dir / "manifest.json"
    if manifest_path.is_file():
        try:
            results.manifest = read_json(manifest_path)
        except (ValueError, OSError) as error:
            results.problems.append(f"manifest.json: {error}")
    if config is None and results.manifest and "config" in results.manifest:
        try:
            config = StudyConfig.model_validate(results.manifest["config"])
        except ValidationError as error:
            results.problems.append(f"manifest.json: config does not validate ({error.errors()[0]['msg']})")
    results.config = config

    for filename, (attribute, _, columns) in RESULT_FILES.items():
        path = run_dir / "results" / filename
        label = f"results/{filename}"
        if filename.endswith(".json"):
            if path.is_file():
                try:
                    setattr(results, attribute, read_json(path))
                except (ValueError, OSError) as error:
                    results.problems.append(f"{label}: {error}")
        else:
            setattr(results, attribute, _read_frame(path, columns, results.problems, label))

    results.models = _model_infos(results, models)
    return results


def _model_infos(results: Results, models: Iterable[Any] | None) -> list[ModelInfo]:
    if models is not None:
        infos = [ModelInfo(m.name, m.label, m.train_loops) for m in models]
    else:
        base_loops = _base_train_loops(results)
        infos = [ModelInfo("base", "Base", base_loops)]
        if results.config is not None:
            infos += [ModelInfo(sft_model_name(n), f"Train{n}", n) for n in results.config.sft.train_loops]
    # models that appear in the results but not in the config (an edited config, a renamed model)
    known = {m.name for m in infos}
    for frame in (results.nll, results.preferred, results.exact_match, results.latency, results.sft_loss):
        if frame is None:
            continue
        for name in dict.fromkeys(frame["model"].astype(str)):
            if name not in known:
                known.add(name)
                infos.append(ModelInfo(name, name.capitalize(), _train_loops_in_results(results, name)))
    return infos


def _train_loops_in_results(results: Results, name: str) -> int | None:
    for frame in (results.preferred, results.sft_loss):
        if frame is not None and "train_loops" in frame.columns:
            values = frame.loc[frame["model"] == name, "train_loops"].dropna()
            if not values.empty:
                return int(values.iloc[0])
    return _loops_from_name(name)


def _base_train_loops(results: Results) -> int | None:
    from_results = _train_loops_in_results(results, "base")
    if from_results is not None:
        return from_results
    recorded = ((results.manifest or {}).get("model") or {}).get("train_loops")
    return int(recorded) if recorded is not None else 8  # the pipeline's default for a base without config


# ---- derived tables -----------------------------------------------------------------------
def pareto_front(points: pd.DataFrame, x: str = "median_s", y: str = "nll_per_token") -> pd.Series:
    """True for the points no other point beats on both ``x`` and ``y`` (lower is better on
    both): a point is dominated when another is at least as low on both and lower on one."""
    xs = points[x].to_numpy(dtype=float)
    ys = points[y].to_numpy(dtype=float)
    optimal = []
    for xi, yi in zip(xs, ys, strict=True):
        dominated = np.any((xs <= xi) & (ys <= yi) & ((xs < xi) | (ys < yi)))
        optimal.append(not dominated)
    return pd.Series(optimal, index=points.index, dtype=bool)


def frontier_points(results: Results) -> pd.DataFrame | None:
    """One row per (model, loops) with median latency and test NLL; ``pareto`` marks each
    model's own Pareto-optimal depths, ``pareto_all`` those optimal across all models,
    ``best`` each model's lowest-NLL depth and ``tied`` the depths whose gap to it has a
    CI containing 0 (from preferred_depth.csv; only the best when that file is missing)."""
    if results.latency is None or results.nll is None:
        return None
    nll = results.nll[results.nll["split"] == TEST][["model", "inference_loops", "nll_per_token", "ci_low", "ci_high"]]
    latency = results.latency[["model", "inference_loops", "median_s", "p10_s", "p90_s"]]
    points = latency.merge(nll, on=["model", "inference_loops"], how="inner")
    if points.empty:
        return points.assign(pareto=[], pareto_all=[], best=[], tied=[])
    points["pareto_all"] = pareto_front(points)
    points["pareto"] = False
    points["best"] = False
    points["tied"] = False
    for model, group in points.groupby("model", sort=False):
        points.loc[group.index, "pareto"] = pareto_front(group)
        points.loc[group["nll_per_token"].idxmin(), "best"] = True
        if results.preferred is not None:
            gaps = results.preferred[(results.preferred["model"] == model) & (results.preferred["split"] == TEST)]
            tied_loops = set(gaps.loc[gaps["gap_ci_low"] <= 0, "inference_loops"].astype(int))
            points.loc[group.index, "tied"] = group["inference_loops"].astype(int).isin(tied_loops)
    points["tied"] |= points["best"]
    return points


def _best_rows(results: Results, split: str) -> dict[str, pd.Series]:
    """Each model's lowest-NLL row on ``split`` (from preferred_depth.csv, else nll_summary.csv)."""
    best: dict[str, pd.Series] = {}
    if results.preferred is not None:
        rows = results.preferred[results.preferred["split"] == split]
        for model, group in rows.groupby("model", sort=False):
            chosen = group[group["inference_loops"] == group["best_loops"].iloc[0]]
            best[str(model)] = (chosen if not chosen.empty else group.loc[[group["nll_per_token"].idxmin()]]).iloc[0]
    elif results.nll is not None:
        rows = results.nll[results.nll["split"] == split]
        for model, group in rows.groupby("model", sort=False):
            best[str(model)] = group.loc[group["nll_per_token"].idxmin()]
    return best


def _nll_ci(results: Results, model: str, split: str, loops: int) -> tuple[float, float] | None:
    if results.nll is None:
        return None
    row = results.nll[
        (results.nll["model"] == model) & (results.nll["split"] == split) & (results.nll["inference_loops"] == loops)
    ]
    return None if row.empty else (float(row["ci_low"].iloc[0]), float(row["ci_high"].iloc[0]))


def table1(results: Results) -> pd.DataFrame:
    """Table 1, one row per model: training depth, the test and train argmin depths with
    their NLL (and bootstrap CI on test), whether they agree, P(argmin = training depth)
    on test, and the paired-bootstrap gap CIs to the loop counts either side of the test
    argmin. Empty when neither preferred_depth.csv nor nll_summary.csv exists."""
    columns = [
        "model", "label", "train_loops", "best_test_loops", "best_test_nll", "best_test_ci_low", "best_test_ci_high",
        "best_train_loops", "best_train_nll", "train_test_match", "p_best_is_train_loops", "neighbour_gaps",
    ]  # fmt: skip
    best_test, best_train = _best_rows(results, TEST), _best_rows(results, TRAIN)
    rows = []
    for name in [m.name for m in results.models if m.name in best_test or m.name in best_train]:
        info = results.model(name)
        test, train = best_test.get(name), best_train.get(name)
        test_loops = int(test["inference_loops"]) if test is not None else None
        train_best = int(train["inference_loops"]) if train is not None else None
        ci = _nll_ci(results, name, TEST, test_loops) if test_loops is not None else None
        match: bool | None = None
        p_train: float | None = None
        if test is not None and "train_test_match" in test.index:
            match = bool(test["train_test_match"])
        elif test_loops is not None and train_best is not None:
            match = test_loops == train_best
        if test is not None and "p_best_is_train_loops" in test.index and pd.notna(test["p_best_is_train_loops"]):
            p_train = float(test["p_best_is_train_loops"])
        rows.append(
            {
                "model": name,
                "label": info.label,
                "train_loops": info.train_loops,
                "best_test_loops": test_loops,
                "best_test_nll": float(test["nll_per_token"]) if test is not None else None,
                "best_test_ci_low": ci[0] if ci else None,
                "best_test_ci_high": ci[1] if ci else None,
                "best_train_loops": train_best,
                "best_train_nll": float(train["nll_per_token"]) if train is not None else None,
                "train_test_match": match,
                "p_best_is_train_loops": p_train,
                "neighbour_gaps": _neighbour_gaps(results, name, test_loops),
            }
        )
    return pd.DataFrame(rows, columns=columns)


def _neighbour_gaps(results: Results, model: str, best_loops: int | None) -> list[dict[str, float]]:
    """Gap (NLL(loops) - NLL(best)) with its CI for the loop counts just below and above the best."""
    if results.preferred is None or best_loops is None:
        return []
    rows = results.preferred[(results.preferred["model"] == model) & (results.preferred["split"] == TEST)]
    grid = sorted(int(v) for v in rows["inference_loops"].unique())
    if best_loops not in grid:
        return []
    position = grid.index(best_loops)
    neighbours = [grid[i] for i in (position - 1, position + 1) if 0 <= i < len(grid)]
    gaps = []
    for loops in neighbours:
        row = rows[rows["inference_loops"] == loops].iloc[0]
        gaps.append(
            {
                "loops": loops,
                "gap": float(row["gap_to_best"]),
                "ci_low": float(row["gap_ci_low"]),
                "ci_high": float(row["gap_ci_high"]),
            }
        )
    return gaps


# ---- figures ------------------------------------------------------------------------------
def _figure(ax: Axes | None, figsize: tuple[float, float] = (7.5, 4.6)) -> tuple[Figure, Axes]:
    if ax is not None:
        return ax.get_figure(root=True), ax
    figure = Figure(figsize=figsize, layout="constrained")
    return figure, figure.add_subplot()


def _not_run(ax: Axes, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, wrap=True, color="0.35")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)


def _missing_note(results: Results, *filenames: str) -> str | None:
    absent = [f for f in filenames if getattr(results, RESULT_FILES[f][0]) is None]
    if not absent:
        return None
    return "Not run: " + ", ".join(f"results/{f}" for f in absent) + " missing"


def _mark_train_loops(ax: Axes, results: Results, models: Iterable[str]) -> None:
    """A dotted vertical line in the model's colour at its training loop count; models that
    share a count get lines side by side so every colour stays visible."""
    by_loops: dict[int, list[str]] = {}
    for name in models:
        loops = results.model(name).train_loops
        if loops is not None:
            by_loops.setdefault(int(loops), []).append(name)
    for loops, names in by_loops.items():
        for index, name in enumerate(names):
            x = loops + _dodge(index, len(names), 0.08)
            ax.axvline(x, color=results.colors[name], linestyle=":", linewidth=1.6, alpha=0.9, zorder=1)


def _loop_ticks(ax: Axes, loops: Iterable[Any]) -> None:
    ax.set_xticks(sorted({int(v) for v in loops}))


def _styled(function: Callable[..., Figure]) -> Callable[..., Figure]:
    """Draw with the report's style without touching the caller's global rcParams."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Figure:
        with matplotlib.rc_context(STYLE):
            return function(*args, **kwargs)

    return wrapper


@_styled
def plot_nll_vs_loops(results: Results, ax: Axes | None = None, splits: Sequence[str] = (TEST, TRAIN)) -> Figure:
    """Figure 1: NLL per token against inference loops, one colour per model; test solid,
    train diagnostics dashed, bootstrap CI bands, each curve's argmin starred and each
    model's training loop count as a dotted vertical line in its colour."""
    figure, ax = _figure(ax)
    note = _missing_note(results, "nll_summary.csv")
    if note:
        _not_run(ax, note)
        return figure
    nll = results.nll
    models = results.models_in(nll)
    for name in models:
        colour = results.colors[name]
        for split in splits:
            rows = nll[(nll["model"] == name) & (nll["split"] == split)].sort_values("inference_loops")
            if rows.empty:
                continue
            is_test = split == TEST
            x = rows["inference_loops"].to_numpy()
            ax.fill_between(x, rows["ci_low"], rows["ci_high"], color=colour, alpha=0.2 if is_test else 0.08, lw=0)
            ax.plot(
                x,
                rows["nll_per_token"],
                linestyle="-" if is_test else "--",
                marker=results.marker(name),
                markersize=4.5 if is_test else 3.5,
                color=colour,
                linewidth=2.0 if is_test else 1.3,
                alpha=1.0 if is_test else 0.8,
            )
            best = rows.loc[rows["nll_per_token"].idxmin()]
            ax.plot(
                best["inference_loops"],
                best["nll_per_token"],
                marker="*",
                markersize=17 if is_test else 13,
                markerfacecolor=colour if is_test else "white",
                markeredgecolor="black" if is_test else colour,
                markeredgewidth=0.9 if is_test else 1.4,
                linestyle="none",
                zorder=7 if is_test else 6,
            )
    _mark_train_loops(ax, results, models)
    _loop_ticks(ax, nll["inference_loops"])
    ax.set_xlabel(results.depth_label)
    ax.set_ylabel("NLL per token (nats/token)")
    ax.set_title("NLL vs inference loops (lower is better)")
    handles = [
        Line2D([], [], color=results.colors[n], marker=results.marker(n), lw=2, label=results.legend_label(n))
        for n in models
    ]
    handles += [
        Line2D([], [], color="0.3", lw=2, label="test (bootstrap 95% CI band)"),
        Line2D([], [], color="0.3", lw=1.3, ls="--", label="train diagnostics"),
        Line2D([], [], color="0.3", marker="*", ms=12, ls="none", mfc="0.3", mec="black", label="argmin, test"),
        Line2D([], [], color="0.3", marker="*", ms=10, ls="none", mfc="white", mec="0.3", label="argmin, train"),
        Line2D([], [], color="0.3", lw=1.6, ls=":", label="training loop count"),
    ]
    ax.legend(handles=handles, loc="upper center", ncols=2)
    return figure


@_styled
def plot_frontier(results: Results, ax: Axes | None = None) -> Figure:
    """Figure 2: median latency against test NLL per (model, loops), labelled with the loop
    count. Each model's Pareto-optimal depths are joined in its colour, dominated depths
    are faded; a black ring marks depths optimal across all models; a star marks each
    model's lowest NLL and a diamond the fastest depth statistically tied with it."""
    figure, ax = _figure(ax, (7.5, 5.0))
    note = _missing_note(results, "latency.csv", "nll_summary.csv")
    points = frontier_points(results)
    if note or points is None or points.empty:
        _not_run(ax, note or "No (model, loops) cell has both latency and test NLL")
        return figure
    models = results.models_in(points)
    for name in models:
        colour = results.colors[name]
        rows = points[points["model"] == name].sort_values("median_s")
        front = rows[rows["pareto"]]
        dominated = rows[~rows["pareto"]]
        ax.plot(front["median_s"], front["nll_per_token"], color=colour, lw=2, zorder=3)
        ax.errorbar(
            front["median_s"],
            front["nll_per_token"],
            yerr=[front["nll_per_token"] - front["ci_low"], front["ci_high"] - front["nll_per_token"]],
            fmt=results.marker(name),
            color=colour,
            ms=6,
            elinewidth=0.8,
            capsize=0,
            zorder=4,
        )
        ax.plot(
            dominated["median_s"],
            dominated["nll_per_token"],
            results.marker(name),
            color=colour,
            alpha=0.3,
            ms=5,
            linestyle="none",
            zorder=2,
        )
        for _, row in rows.iterrows():
            ax.annotate(
                f"{int(row['inference_loops'])}",
                (row["median_s"], row["nll_per_token"]),
                xytext=(8, 6) if row["best"] or row["pareto_all"] else (4, 4),
                textcoords="offset points",
                fontsize=7.5,
                color=colour,
                alpha=1.0 if row["pareto"] else 0.45,
                zorder=7,
            )
        best = rows[rows["best"]]
        ax.plot(best["median_s"], best["nll_per_token"], "*", ms=18, mfc=colour, mec="black", mew=0.9, zorder=6)
        knee = rows[rows["tied"] & ~rows["best"]]
        if not knee.empty:
            fastest = knee.loc[[knee["median_s"].idxmin()]]
            if float(fastest["median_s"].iloc[0]) < float(best["median_s"].iloc[0]):
                ax.plot(
                    fastest["median_s"], fastest["nll_per_token"], "D", ms=10, mfc="none", mec=colour, mew=2, zorder=6
                )
    overall = points[points["pareto_all"]]
    ax.plot(overall["median_s"], overall["nll_per_token"], "o", ms=13, mfc="none", mec="black", mew=1.0, zorder=5)
    new_tokens = _latency_new_tokens(results)
    ax.set_xlabel(f"median latency (s/sample{new_tokens})")
    ax.set_ylabel("test NLL per token (nats/token)")
    ax.set_title("Cost vs quality per loop count: lower-left is better")
    handles = [
        Line2D([], [], color=results.colors[n], marker=results.marker(n), lw=2, label=results.legend_label(n))
        for n in models
    ]
    handles += [
        Line2D([], [], color="0.3", marker="o", lw=2, label="Pareto-optimal for the model (joined)"),
        Line2D([], [], color="0.3", marker="o", alpha=0.3, ls="none", label="dominated (slower and worse)"),
        Line2D([], [], marker="o", ms=11, mfc="none", mec="black", ls="none", label="Pareto-optimal across models"),
        Line2D([], [], marker="*", ms=13, mfc="0.5", mec="black", ls="none", label="lowest test NLL of the model"),
        Line2D([], [], marker="D", ms=8, mfc="none", mec="0.3", mew=2, ls="none", label="fastest depth tied with it"),
    ]
    ax.legend(handles=handles, loc="upper right", title="numbers = inference loops", title_fontsize=8)
    return figure


def _latency_new_tokens(results: Results) -> str:
    if results.latency is not None and "new_tokens" in results.latency.columns:
        values = results.latency["new_tokens"].dropna().unique()
        if len(values) == 1:
            return f", {int(values[0])} new tokens"
    return ""


def _dodge(index: int, count: int, width: float = 0.22) -> float:
    return (index - (count - 1) / 2) * width


@_styled
def plot_exact_match(results: Results, axes: Sequence[Axes] | None = None) -> Figure:
    """Figure 3: GSM8K exact-match accuracy per loop count with Wilson 95% intervals, one
    panel per extraction (``EXTRACTIONS``: the numeric strict and flexible verdicts on top,
    lm-eval's string verdicts below); stars mark each model's best depth."""
    own_figure = axes is None
    if axes is None:
        figure = Figure(figsize=(9.5, 8.4), layout="constrained")
        axes = list(figure.subplots(2, 2, sharex=True, sharey=True).ravel())
    else:
        figure = axes[0].get_figure(root=True)
    note = _missing_note(results, "exact_match.csv")
    if note:
        for ax in axes:
            _not_run(ax, note)
        return figure
    em = results.exact_match
    models = results.models_in(em)
    for ax, extraction in zip(axes, EXTRACTIONS, strict=False):
        rows_all = em[em["extraction"] == extraction]
        for index, name in enumerate(models):
            rows = rows_all[rows_all["model"] == name].sort_values("inference_loops")
            if rows.empty:
                continue
            colour = results.colors[name]
            x = rows["inference_loops"].to_numpy(dtype=float) + _dodge(index, len(models))
            accuracy = 100 * rows["accuracy"].to_numpy(dtype=float)
            error = [accuracy - 100 * rows["ci_low"].to_numpy(), 100 * rows["ci_high"].to_numpy() - accuracy]
            ax.errorbar(x, accuracy, yerr=error, fmt=f"-{results.marker(name)}", color=colour, ms=5, capsize=3, lw=1.5)
            if accuracy.max() > 0:
                top = int(np.argmax(accuracy))
                ax.plot(x[top], accuracy[top], "*", ms=16, mfc=colour, mec="black", mew=0.9, zorder=6)
        _mark_train_loops(ax, results, models)
        _loop_ticks(ax, em["inference_loops"])
        counts = rows_all["n"].dropna().unique()
        n_text = f", n = {int(counts[0])}" if len(counts) == 1 else ""
        ax.set_title(f"{EXTRACTION_TITLES.get(extraction, extraction)}{n_text}")
        if ax in axes[-2:] or len(axes) != 4:  # a 2x2 grid shares x: label the bottom row
            ax.set_xlabel(results.depth_label)
        ax.set_ylim(bottom=0)
    for ax in axes[:: 2 if len(axes) == 4 else len(axes)]:
        ax.set_ylabel("exact-match accuracy (%, Wilson 95% CI)")
    handles = [
        Line2D([], [], color=results.colors[n], marker=results.marker(n), lw=1.5, label=results.legend_label(n))
        for n in models
    ]
    handles += [
        Line2D([], [], marker="*", ms=12, mfc="0.5", mec="black", ls="none", label="best depth of the model"),
        Line2D([], [], color="0.3", lw=1.6, ls=":", label="training loop count"),
    ]
    if own_figure:
        figure.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 3))
    else:
        axes[-1].legend(handles=handles, loc="upper right")
    figure.suptitle("GSM8K test exact match vs inference loops (higher is better)")
    return figure


@_styled
def plot_sft_loss(results: Results, ax: Axes | None = None, window: int | None = None) -> Figure:
    """Figure 4: SFT training loss per optimizer step for every fine-tuned model: the raw
    logged loss (thin) and a centred rolling mean (thick, ``window`` steps, default ~1/15
    of the run)."""
    figure, ax = _figure(ax)
    note = _missing_note(results, "sft_loss.csv")
    if note:
        _not_run(ax, note)
        return figure
    loss = results.sft_loss
    models = results.models_in(loss)
    handles = []
    for name in models:
        rows = loss[loss["model"] == name].sort_values("step")
        colour = results.colors[name]
        steps = rows["step"].to_numpy()
        size = window or max(3, round(len(rows) / 15))
        smooth = rows["loss"].rolling(size, center=True, min_periods=1).mean()
        ax.plot(steps, rows["loss"], color=colour, lw=0.7, alpha=0.35)
        ax.plot(steps, smooth, color=colour, lw=2.2)
        handles.append(Line2D([], [], color=colour, lw=2.2, label=results.legend_label(name)))
    if "epoch" in loss.columns and len(models):
        rows = loss[loss["model"] == models[0]].sort_values("step")
        completed = np.floor(rows["epoch"].to_numpy(dtype=float) - 1e-9)  # epochs finished before each step
        boundaries = rows["step"].to_numpy()[1:][np.diff(completed) > 0]
        for step in boundaries:
            ax.axvline(step, color="0.5", lw=0.8, ls="--", alpha=0.6)
        if len(boundaries):
            handles.append(Line2D([], [], color="0.5", lw=0.8, ls="--", label="epoch boundary"))
    handles.append(Line2D([], [], color="0.3", lw=0.7, alpha=0.5, label="raw per-step loss"))
    handles.append(Line2D([], [], color="0.3", lw=2.2, label="rolling mean"))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (nats/token)")
    ax.set_title("SFT training loss")
    ax.legend(handles=handles, loc="upper right")
    return figure


@_styled
def plot_latency(results: Results, ax: Axes | None = None) -> Figure:
    """Figure 5: median seconds per sample against inference loops with p10-p90 bars and
    each model's least-squares line (its slope, the cost of one more loop, in the legend)."""
    figure, ax = _figure(ax)
    note = _missing_note(results, "latency.csv")
    if note:
        _not_run(ax, note)
        return figure
    latency = results.latency
    fits = results.latency_fit
    models = results.models_in(latency)
    handles = []
    grid = np.linspace(0, latency["inference_loops"].max() * 1.04, 50)
    for index, name in enumerate(models):
        rows = latency[latency["model"] == name].sort_values("inference_loops")
        colour = results.colors[name]
        x = rows["inference_loops"].to_numpy(dtype=float) + _dodge(index, len(models), 0.18)
        median = rows["median_s"].to_numpy(dtype=float)
        error = [median - rows["p10_s"].to_numpy(dtype=float), rows["p90_s"].to_numpy(dtype=float) - median]
        ax.errorbar(x, median, yerr=error, fmt=results.marker(name), color=colour, ms=5, capsize=3, lw=1.2)
        label = results.legend_label(name)
        fit = fits[fits["model"] == name] if fits is not None else pd.DataFrame()
        if not fit.empty:
            slope, intercept = float(fit["slope_s_per_loop"].iloc[0]), float(fit["intercept_s"].iloc[0])
            ax.plot(grid, intercept + slope * grid, color=colour, lw=1.3, ls="--", alpha=0.9)
            label += f": {format_seconds(slope)} s/loop, R² = {float(fit['r_squared'].iloc[0]):.3f}"
        handles.append(Line2D([], [], color=colour, marker=results.marker(name), lw=1.3, ls="--", label=label))
    _mark_train_loops(ax, results, models)
    _loop_ticks(ax, latency["inference_loops"])
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    handles.append(Line2D([], [], color="0.3", lw=1.6, ls=":", label="training loop count"))
    if fits is None:
        handles.append(Line2D([], [], ls="none", label="(latency_fit.csv missing: no fitted lines)"))
    device = ""
    if "device" in latency.columns and latency["device"].nunique() == 1:
        device = f" on {latency['device'].iloc[0]}"
    ax.set_xlabel(results.depth_label)
    ax.set_ylabel(f"median latency (s/sample{_latency_new_tokens(results)})")
    ax.set_title(f"Latency per sample vs inference loops{device} (bars: p10-p90; dashed: linear fit)")
    ax.legend(handles=handles, loc="upper left")
    return figure


@_styled
def plot_schedules(results: Results, axes: Sequence[Axes] | None = None) -> Figure:
    """Every LoopFormer schedule of M steps at a fixed budget: test NLL with its bootstrap
    CI, one panel per model, schedules sorted from best to worst; the uniform schedule is
    marked and the best and worst are labelled with their step sizes."""
    frame = results.schedules
    names = results.models_in(frame) if frame is not None else []
    if axes is None:
        panels = max(1, len(names))
        figure = Figure(figsize=(4.6 * panels, 4.6), layout="constrained")
        axes = list(figure.subplots(1, panels, sharey=True, squeeze=False)[0])
    else:
        figure = axes[0].figure
    if not names:
        _not_run(axes[0], results.missing("schedules.csv"))
        return figure
    for ax, name in zip(axes, names, strict=False):
        rows = frame[frame["model"] == name].sort_values(["rank", "policy"]).reset_index(drop=True)
        x = np.arange(len(rows))
        colour = results.colors[name]
        y = rows["nll_per_token"].to_numpy(dtype=float)
        low, high = rows["ci_low"].to_numpy(dtype=float), rows["ci_high"].to_numpy(dtype=float)
        ax.errorbar(
            x, y, yerr=[y - low, high - y], fmt="o", ms=3.5, color=colour, ecolor=colour, elinewidth=0.8, alpha=0.85
        )
        for i in rows.index[rows["uniform"].astype(bool)]:
            ax.plot(x[i], y[i], marker="D", ms=9, mfc="none", mec="black", mew=1.6, ls="none")
            ax.annotate(
                f"uniform (rank {int(rows['rank'][i])})", (x[i], y[i]), xytext=(4, -14), textcoords="offset points",
                fontsize=8,
            )  # fmt: skip
        last = len(rows) - 1
        for i, what, offset, align in ((0, "best", (6, 8), "left"), (last, "worst", (-6, 8), "right")):
            ax.annotate(
                f"{what}: {rows['steps'][i]}", (x[i], y[i]), xytext=offset, textcoords="offset points", fontsize=8,
                ha=align,
            )  # fmt: skip
        ax.set_title(results.model(name).label)
        ax.set_xlabel(f"schedule, sorted by test NLL ({len(rows)} schedules)")
        ax.set_xticks([])
    axes[0].set_ylabel("test NLL per token (nats/token)")
    return figure


@dataclass(frozen=True)
class FigureSpec:
    name: str
    title: str
    plot: Callable[[Results], Figure]
    needs: tuple[str, ...]  # results files
    caption: str


FIGURES: tuple[FigureSpec, ...] = (
    FigureSpec(
        "nll_vs_loops",
        "NLL per token vs inference loops",
        plot_nll_vs_loops,
        ("nll_summary.csv",),
        "Test NLL (solid, bootstrap 95% CI band) and train diagnostics (dashed) per model; stars mark each "
        "curve's argmin and the dotted vertical lines each model's training loop count. "
        "Source: `results/nll_summary.csv`.",
    ),
    FigureSpec(
        "frontier",
        "Latency vs test NLL (lower-left is better)",
        plot_frontier,
        ("latency.csv", "nll_summary.csv"),
        "One point per model and loop count (numbers = loops). Each model's Pareto-optimal depths are joined; "
        "dominated ones are faded; black rings mark depths that no other model beats on both axes. The star is "
        "the model's lowest test NLL; a diamond marks the fastest depth whose gap to it has a CI containing 0. "
        "Sources: `results/latency.csv`, `results/nll_summary.csv`, `results/preferred_depth.csv`.",
    ),
    FigureSpec(
        "exact_match",
        "Exact match vs inference loops",
        plot_exact_match,
        ("exact_match.csv",),
        "GSM8K test exact match with Wilson 95% intervals under the four extractions (top: the number after "
        "'#### ' and the last number, judged numerically; bottom: lm-eval's gsm8k strict-match and "
        "flexible-extract verdicts); stars mark each model's best depth. Source: `results/exact_match.csv`.",
    ),
    FigureSpec(
        "sft_loss",
        "SFT training loss",
        plot_sft_loss,
        ("sft_loss.csv",),
        "Per-step training loss (thin) and its rolling mean (thick) for every SFT model. "
        "Source: `results/sft_loss.csv`.",
    ),
    FigureSpec(
        "latency",
        "Latency vs inference loops",
        plot_latency,
        ("latency.csv",),
        "Median seconds per sample with p10-p90 bars; dashed lines are least-squares fits (slope = cost of one "
        "more loop). Sources: `results/latency.csv`, `results/latency_fit.csv`.",
    ),
)


SCHEDULES_FIGURE = FigureSpec(
    "schedules",
    "Every schedule at a fixed loop budget",
    plot_schedules,
    ("schedules.csv",),
    "Test NLL (bootstrap 95% CI) of every LoopFormer schedule with M steps whose step sizes are multiples of "
    "1/granularity, sorted from best to worst per model; the diamond is the uniform schedule, and the best "
    "and worst are labelled with their step sizes. Source: `results/schedules.csv`.",
)
FIGURES = (*FIGURES, SCHEDULES_FIGURE)

REPORT_FIGURE_ORDER = ("nll_vs_loops", "exact_match", "latency", "frontier", "sft_loss", "schedules")


def figure_spec(name: str) -> FigureSpec:
    return next(spec for spec in FIGURES if spec.name == name)


def save_figure(figure: Figure, directory: Path, name: str) -> list[Path]:
    """Write ``name.png`` (150 dpi) and ``name.pdf`` atomically; returns both paths."""
    paths = []
    for extension, metadata in (("png", {"Software": None}), ("pdf", {"CreationDate": None, "Producer": None})):
        buffer = io.BytesIO()
        figure.savefig(buffer, format=extension, dpi=DPI, metadata=metadata)
        path = Path(directory) / f"{name}.{extension}"
        atomic_write_bytes(path, buffer.getvalue())
        paths.append(path)
    return paths


def write_figures(results: Results, figures_dir: Path) -> dict[str, Path | None]:
    """Draw every figure whose results files exist; returns name -> PNG path (None when not
    drawn). A figure that cannot be drawn loses its stale PNG/PDF from an earlier report."""
    written: dict[str, Path | None] = {}
    for spec in FIGURES:
        if any(getattr(results, RESULT_FILES[f][0]) is None for f in spec.needs):
            for extension in ("png", "pdf"):
                (Path(figures_dir) / f"{spec.name}.{extension}").unlink(missing_ok=True)
            written[spec.name] = None
            continue
        figure = spec.plot(results)
        # every figure names its base model (the offline SmolLM2 as the quantized copy it is), in a
        # strip the constrained layout keeps free below the axes
        engine = figure.get_layout_engine()
        if engine is not None and hasattr(engine, "set") and "rect" in engine.get():
            engine.set(rect=(0, 0.035, 1, 0.965))
        figure.text(0.005, 0.004, f"model: {results.model_label}", fontsize=7, color="0.35", ha="left", va="bottom")
        written[spec.name] = save_figure(figure, figures_dir, spec.name)[0]
    return written


# ---- report.md ----------------------------------------------------------------------------
def format_nll(value: float | None) -> str:
    return "—" if value is None or pd.isna(value) else f"{value:.3f}"


def format_seconds(value: float | None) -> str:
    """Three significant digits without scientific notation (0.0123, 1.23, 123)."""
    if value is None or pd.isna(value):
        return "—"
    if value == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(value)))
    if magnitude >= 2:
        return f"{value:.0f}"
    return f"{value:.{2 - magnitude}f}"


def format_percent(value: float | None) -> str:
    return "—" if value is None or pd.isna(value) else f"{100 * value:.1f}%"


def _signed(value: float) -> str:
    return f"{value:+.3f}"


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _yes_no(value: bool | None) -> str:
    return "—" if value is None else ("yes" if value else "no")


def _gaps_text(gaps: list[dict[str, float]]) -> str:
    if not gaps:
        return "—"
    parts = []
    for gap in gaps:
        verdict = "worse" if gap["ci_low"] > 0 else "tied"
        parts.append(
            f"{gap['loops']} loops: {_signed(gap['gap'])} [{_signed(gap['ci_low'])}, {_signed(gap['ci_high'])}] "
            f"({verdict})"
        )
    return "; ".join(parts)


def _header(results: Results) -> list[str]:
    label = results.model_label
    lines = [f"# loopdepth report: {results.name} — {label}", ""]
    if results.embedded:
        lines += [
            f"> **Model: {label}.** This run used the tiny LoopFormer embedded in this repository, not the released "
            "checkpoint: its numbers show that the pipeline works, not what the released model prefers.",
            "",
        ]
    provenance = results.provenance
    if provenance:
        lines += [
            f"> **Model: {label}.** Offline copy `{Path(str(provenance.get('file', '?'))).name}` "
            f"(sha256 `{provenance.get('sha256', '?')}`, {provenance.get('package', '?')}): "
            f"**{provenance.get('quantization', 'quantized')}**, so its numbers are those of the quantized weights, "
            "not of the hub model.",
            "",
        ]
    if results.config is not None and results.config.description:
        lines += [results.config.description, ""]
    if results.problems:
        lines += ["**Files that could not be read:**", ""] + [f"- {p}" for p in results.problems] + [""]
    return lines


def _stage_order(name: str) -> tuple[int, str]:
    known = ("check", "sft", "nll", "exact_match", "latency", "report")  # the pipeline's order
    return (known.index(name) if name in known else len(known), name)


def _duration(stage: dict[str, Any]) -> str:
    if "seconds" in stage:
        return f"{format_seconds(float(stage['seconds']))} s"
    try:
        seconds = (datetime.fromisoformat(stage["finished"]) - datetime.fromisoformat(stage["started"])).total_seconds()
    except (KeyError, TypeError, ValueError):
        return "—"
    return f"{format_seconds(seconds)} s"


def _what_was_run(results: Results) -> list[str]:
    lines = ["## What was run", ""]
    manifest = results.manifest
    if manifest is None:
        return [*lines, "No `manifest.json` in the run directory: what was run is unknown.", ""]
    config = manifest.get("config") or {}
    data = manifest.get("data") or {}
    model = manifest.get("model") or {}
    hardware = manifest.get("hardware") or {}
    label_note = f" — {results.model_label}" if results.embedded else ""
    lines += [
        f"- **Config:** `{config.get('name', '?')}`, seed {manifest.get('seed', config.get('seed', '?'))}",
        f"- **Data:** {data.get('source', '?')}"
        + (f" from `{data['directory']}`" if data.get("directory") else "")
        + "; sha256: "
        + (", ".join(f"{k} `{v}`" for k, v in sorted((data.get("sha256") or {}).items())) or "not recorded"),
        f"- **Model:** `{model.get('source', config.get('model', {}).get('source', '?'))}`{label_note}; "
        f"revision {model.get('revision') or '—'}; resolved commit {model.get('resolved_commit') or '—'}",
        f"- **Device:** {hardware.get('device', '?')}; GPUs: {', '.join(hardware.get('gpus') or []) or 'none'}; "
        f"CPU: {hardware.get('cpu', '?')}" + (f" ({hardware['cpu_count']} cores)" if hardware.get("cpu_count") else ""),
        "- **Versions:** "
        + (", ".join(f"{k} {v}" for k, v in sorted((manifest.get("versions") or {}).items())) or "—"),
        f"- **Code:** git commit `{manifest.get('git_commit') or 'unknown'}`",
    ]
    invocations = manifest.get("invocations") or []
    if invocations:
        lines.append(
            "- **Command lines:** " + "; ".join(f"`python {' '.join(i.get('argv', []))}`" for i in invocations)
        )
    stages = manifest.get("stages") or {}
    if stages:
        rows = []
        for name, stage in sorted(stages.items(), key=lambda item: _stage_order(item[0])):
            finished = stage.get("finished")
            if name == "report" and not finished:
                finished = "(this report)"
            rows.append([name, stage.get("started", "—"), finished or "not finished", _duration(stage)])
        lines += ["", markdown_table(["Stage", "Started (UTC)", "Finished (UTC)", "Duration"], rows)]
    return [*lines, "", "Source: `manifest.json`.", ""]


def _checks_section(results: Results) -> list[str]:
    lines = ["## Sanity checks", ""]
    checks = results.checks
    skipped = bool((results.manifest or {}).get("checks_skipped")) or bool((checks or {}).get("skipped"))
    not_gated = "Sanity checks were skipped with --skip-checks; these numbers were not gated."
    if checks is None:
        lines.append(f"**{not_gated}**" if skipped else results.missing("checks.json") + ".")
        return [*lines, ""]
    items = checks.get("checks") or []
    failed = [c for c in items if not c.get("passed")]
    names = ", ".join(f"`{c.get('name')}`" for c in failed)
    if skipped:
        lines.append(f"**{not_gated}**")
        if failed:
            lines.append(f"The checks ran anyway and **{len(failed)} of {len(items)} FAILED** ({names}).")
        elif items:
            lines.append(f"The checks ran anyway and all {len(items)} passed.")
    elif failed:
        lines.append(f"**FAILED: {len(failed)} of {len(items)} sanity checks failed ({names}).**")
    else:
        lines.append(f"Passed: all {len(items)} sanity checks passed.")
    if items:
        rows = [
            [
                c.get("name"),
                "pass" if c.get("passed") else "**FAIL**",
                c.get("value"),
                c.get("threshold"),
                c.get("message"),
            ]
            for c in items
        ]
        lines += ["", markdown_table(["Check", "Result", "Value", "Threshold", "Detail"], rows)]
    return [*lines, "", "Source: `results/checks.json`.", ""]


def figure_number(name: str) -> int:
    """Figures are numbered in the order report.md shows them."""
    return REPORT_FIGURE_ORDER.index(name) + 1


def _figure_block(results: Results, name: str, figures: dict[str, Path | None], rel: str) -> list[str]:
    spec = figure_spec(name)
    heading = f"**Figure {figure_number(name)}: {spec.title}.**"
    if figures.get(name) is None:
        missing = [f"`results/{f}`" for f in spec.needs if getattr(results, RESULT_FILES[f][0]) is None]
        reason = f"missing {', '.join(missing)}" if missing else "not written"
        return [f"{heading} Not drawn ({reason}).", ""]
    return [heading, "", f"![{spec.title}]({rel}/{name}.png)", "", spec.caption, ""]


def _table1_section(results: Results) -> list[str]:
    lines = ["## Table 1: preferred inference depth (NLL per token)", ""]
    table = table1(results)
    if table.empty:
        return [*lines, results.missing("preferred_depth.csv") + ".", ""]
    if results.preferred is None:
        lines += [results.missing("preferred_depth.csv") + "; best depths below come from nll_summary.csv.", ""]
    confidence = f"{100 * results.config.nll.confidence:g}%" if results.config else "95%"
    rows = []
    for _, row in table.iterrows():
        ci = (
            f" [{format_nll(row['best_test_ci_low'])}, {format_nll(row['best_test_ci_high'])}]"
            if pd.notna(row["best_test_ci_low"])
            else ""
        )
        p_train = row["p_best_is_train_loops"]
        rows.append(
            [
                row["label"],
                "—" if pd.isna(row["train_loops"]) else int(row["train_loops"]),
                "—" if pd.isna(row["best_test_loops"]) else int(row["best_test_loops"]),
                format_nll(row["best_test_nll"]) + ci,
                "—" if pd.isna(row["best_train_loops"]) else int(row["best_train_loops"]),
                format_nll(row["best_train_nll"]),
                _yes_no(None if pd.isna(row["train_test_match"]) else bool(row["train_test_match"])),
                "—" if p_train is None or pd.isna(p_train) else f"{p_train:.2f}",
                _gaps_text(row["neighbour_gaps"]),
            ]
        )
    headers = [
        "Model", "Train loops", "Best test loops", f"Test NLL at best [{confidence} CI]", "Best train loops",
        "Train NLL at best", "Train/test argmin match", "P(argmin = train loops), test",
        "Gap to neighbouring loop counts, test [CI]",
    ]  # fmt: skip
    lines.append(markdown_table(headers, rows))
    resamples = f", {results.config.nll.bootstrap_resamples} resamples" if results.config else ""
    lines += [
        "",
        f"NLL in nats/token. CIs are bootstrap {confidence} intervals{resamples}; gaps are NLL(loops) − NLL(best) "
        'with paired-bootstrap CIs ("tied" when the CI contains 0). P(argmin = train loops) is the bootstrap '
        "share of resamples whose argmin is the training loop count.",
        "",
        "Sources: `results/preferred_depth.csv` (best loops, match, P, gaps) and `results/nll_summary.csv` (CIs).",
        "",
    ]
    lines += _findings(table)
    return lines


def _findings(table: pd.DataFrame) -> list[str]:
    sentences = []
    for _, row in table.iterrows():
        if pd.isna(row["best_test_loops"]) or pd.isna(row["train_loops"]):
            continue
        best, trained = int(row["best_test_loops"]), int(row["train_loops"])
        where = "its training loop count" if best == trained else f"not its training loop count ({trained})"
        sentences.append(f"- {row['label']}: lowest test NLL at {best} loops, {where}.")
    return [*sentences, ""] if sentences else []


def _exact_match_section(results: Results, figures: dict[str, Path | None], rel: str) -> list[str]:
    lines = ["## Exact match (GSM8K test)", ""]
    em = results.exact_match
    if em is None:
        return [
            *lines,
            results.missing("exact_match.csv") + ".",
            "",
            *_figure_block(results, "exact_match", figures, rel),
        ]
    grid = sorted(int(v) for v in em["inference_loops"].unique())
    rows = []
    for name in results.models_in(em):
        order = {e: i for i, e in enumerate(EXTRACTIONS)}
        for extraction in sorted(em["extraction"].unique(), key=lambda e: (order.get(e, len(order)), e)):
            subset = em[(em["model"] == name) & (em["extraction"] == extraction)]
            if subset.empty:
                continue
            cells = []
            for loops in grid:
                match = subset[subset["inference_loops"] == loops]
                if match.empty:
                    cells.append("—")
                    continue
                r = match.iloc[0]
                cells.append(
                    f"{format_percent(r['accuracy'])} [{format_percent(r['ci_low'])}, {format_percent(r['ci_high'])}] "
                    f"({int(r['correct'])}/{int(r['n'])})"
                )
            rows.append([results.model(name).label, extraction, *cells])
    lines.append(markdown_table(["Model", "Extraction", *(f"{g} loops" for g in grid)], rows))
    lines += [
        "",
        "Accuracy with Wilson 95% intervals (correct/n). Source: `results/exact_match.csv`. Extractions: "
        "`strict` takes the first number after `#### ` and `flexible` the last number in the generation "
        "(lm-eval's gsm8k regexes), both compared with the gold answer as exact decimals (`18.00` counts as 18); "
        "`lm_eval_strict` and `lm_eval_flexible` are what lm-eval's `gsm8k` task reports (`strict-match`, "
        "`flexible-extract`): the same regexes but a string comparison after removing `,`, `$` and a trailing "
        "`.`, so `18.00` is wrong there. Every generation is first cut at lm-eval's stop sequences "
        "(`Question:`, `</s>`, `<|im_end|>`, the EOS string). Compare the `lm_eval_*` rows with published "
        "lm-eval numbers.",
        "",
    ]
    return lines + _figure_block(results, "exact_match", figures, rel)


def _latency_section(results: Results, figures: dict[str, Path | None], rel: str) -> list[str]:
    lines = ["## Latency: what each extra loop costs", ""]
    latency = results.latency
    if latency is None:
        lines += [results.missing("latency.csv") + ".", ""]
    else:
        grid = sorted(int(v) for v in latency["inference_loops"].unique())
        fits = results.latency_fit
        rows = []
        for name in results.models_in(latency):
            subset = latency[latency["model"] == name]
            cells = []
            for loops in grid:
                match = subset[subset["inference_loops"] == loops]
                cells.append("—" if match.empty else format_seconds(float(match["median_s"].iloc[0])))
            fit = fits[fits["model"] == name] if fits is not None else pd.DataFrame()
            if fit.empty:
                fit_cells = ["—", "—", "—"]
            else:
                f = fit.iloc[0]
                fit_cells = [
                    format_seconds(f["slope_s_per_loop"]),
                    format_seconds(f["intercept_s"]),
                    f"{f['r_squared']:.3f}",
                ]
            rows.append([results.model(name).label, *cells, *fit_cells])
        headers = ["Model", *(f"{g} loops" for g in grid), "Slope (s/loop)", "Intercept (s)", "R²"]
        lines.append(markdown_table(headers, rows))
        details = []
        for column, text in (("device", "device"), ("new_tokens", "new tokens per sample"), ("samples", "samples")):
            if column in latency.columns and latency[column].nunique() == 1:
                details.append(f"{text}: {latency[column].iloc[0]}")
        lines += [
            "",
            "Median seconds per sample (3 significant digits)"
            + (f"; {'; '.join(details)}" if details else "")
            + f". p10–p90 ranges are in Figure {figure_number('latency')}. Slope, intercept and R² are a "
            "least-squares fit of median latency on loop count.",
            "",
            "Sources: `results/latency.csv` (medians), "
            + (
                "`results/latency_fit.csv` (fit)."
                if fits is not None
                else "fit not available: " + results.missing("latency_fit.csv") + "."
            ),
            "",
        ]
    return lines + _figure_block(results, "latency", figures, rel) + _figure_block(results, "frontier", figures, rel)


def _sft_section(results: Results, figures: dict[str, Path | None], rel: str) -> list[str]:
    lines = ["## SFT training", ""]
    loss = results.sft_loss
    if loss is None:
        return [*lines, results.missing("sft_loss.csv") + ".", "", *_figure_block(results, "sft_loss", figures, rel)]
    rows = []
    for name in results.models_in(loss):
        subset = loss[loss["model"] == name].sort_values("step")
        tail = subset["loss"].iloc[-max(1, len(subset) // 10) :]
        rows.append(
            [
                results.model(name).label,
                results.model(name).train_loops if results.model(name).train_loops is not None else "—",
                int(subset["step"].max()),
                format_nll(float(subset["loss"].iloc[0])),
                format_nll(float(tail.mean())),
            ]
        )
    headers = ["Model", "Train loops", "Optimizer steps", "First logged loss", "Mean loss, last 10% of steps"]
    lines += [markdown_table(headers, rows), "", "Loss in nats/token. Source: `results/sft_loss.csv`.", ""]
    return lines + _figure_block(results, "sft_loss", figures, rel)


def _schedules_section(results: Results, figures: dict[str, Path | None], rel: str) -> list[str]:
    """Only for runs that swept schedules (LoopFormer configs with a ``schedules`` section)."""
    frame = results.schedules
    if frame is None:
        swept = results.config is not None and results.config.schedules is not None
        return ["## Schedules at a fixed loop budget", "", results.missing("schedules.csv") + ".", ""] if swept else []
    lines = ["## Schedules at a fixed loop budget", ""]
    rows = []
    for name in results.models_in(frame):
        subset = frame[frame["model"] == name].sort_values(["rank", "policy"])
        best, worst = subset.iloc[0], subset.iloc[-1]
        uniform = subset[subset["uniform"].astype(bool)]
        uniform_text = (
            f"{format_nll(uniform['nll_per_token'].iloc[0])} (rank {int(uniform['rank'].iloc[0])})"
            if not uniform.empty
            else "—"
        )
        rows.append(
            [
                results.model(name).label,
                len(subset),
                f"{best['steps']}: {format_nll(best['nll_per_token'])} "
                f"[{format_nll(best['ci_low'])}, {format_nll(best['ci_high'])}]",
                uniform_text,
                f"{worst['steps']}: {format_nll(worst['nll_per_token'])} "
                f"[{format_nll(worst['ci_low'])}, {format_nll(worst['ci_high'])}]",
                format_nll(float(worst["nll_per_token"] - best["nll_per_token"])),
            ]
        )
    headers = ["Model", "Schedules", "Best [95% CI]", "Uniform (rank)", "Worst [95% CI]", "Spread (worst − best)"]
    lines += [
        markdown_table(headers, rows),
        "",
        "Test NLL per token of every schedule with the same number of steps (step sizes in the order they run). "
        "Source: `results/schedules.csv`.",
        "",
    ]
    return lines + _figure_block(results, "schedules", figures, rel)


def render_report(results: Results, figures: dict[str, Path | None], figures_rel: str = "figures") -> str:
    """The text of report.md; ``figures`` maps figure name -> written PNG (None: not drawn)."""
    lines = _header(results)
    lines += _what_was_run(results)
    lines += _checks_section(results)
    lines += _table1_section(results)
    lines += _figure_block(results, "nll_vs_loops", figures, figures_rel)
    lines += _exact_match_section(results, figures, figures_rel)
    lines += _latency_section(results, figures, figures_rel)
    lines += _sft_section(results, figures, figures_rel)
    lines += _schedules_section(results, figures, figures_rel)
    from study.report.adaptive import adaptive_section  # the adaptive stage's section

    lines += adaptive_section(results.run_dir, figures_rel)
    return "\n".join(lines).rstrip() + "\n"


def write_report(results: Results, figures_dir: Path | None = None) -> Path:
    """Write every drawable figure (PNG + PDF) and ``report.md`` into the run directory."""
    figures_dir = Path(figures_dir) if figures_dir is not None else results.run_dir / "figures"
    figures = write_figures(results, figures_dir)
    from study.report.adaptive import write_adaptive_figures

    write_adaptive_figures(results.run_dir, figures_dir)
    relative = Path(os.path.relpath(figures_dir, results.run_dir)).as_posix()
    path = results.run_dir / "report.md"
    atomic_write_text(path, render_report(results, figures, relative))
    return path


def regenerate(run_dir: Path, export_figures: Path | None = None) -> Path:
    """Redraw the figures and report.md of an existing run directory; with ``export_figures``
    also copy the PNGs there (used to refresh the repository's top-level figures/)."""
    results = load_results(run_dir)
    path = write_report(results, run_dir / "figures")
    if export_figures is not None:
        export_figures.mkdir(parents=True, exist_ok=True)
        for spec in FIGURES:
            png = run_dir / "figures" / f"{spec.name}.png"
            if png.is_file():
                shutil.copyfile(png, export_figures / png.name)
    return path


# ---- comparing runs -----------------------------------------------------------------------
def _run_names(run_dirs: Sequence[Path]) -> list[str]:
    names = [Path(d).resolve().name for d in run_dirs]
    if len(set(names)) == len(names):
        return names
    return [f"{Path(d).resolve().parent.name}/{Path(d).resolve().name}" for d in run_dirs]


@_styled
def plot_compare(runs: Sequence[Results], names: Sequence[str] | None = None, ax: Axes | None = None) -> Figure:
    """Overlay of Figure 1 across runs: test NLL vs loops, one colour per model and one line
    style per run, test argmins starred."""
    figure, ax = _figure(ax, (8.0, 5.0))
    names = list(names) if names is not None else _run_names([r.run_dir for r in runs])
    all_models = list(dict.fromkeys(m.name for r in runs for m in r.models if m.name in r.models_in(r.nll)))
    colours = model_colors(all_models)
    loops_seen: set[int] = set()
    for index, results in enumerate(runs):
        if results.nll is None:
            continue
        style = RUN_LINESTYLES[index % len(RUN_LINESTYLES)]
        test = results.nll[results.nll["split"] == TEST]
        for model in results.models_in(test):
            rows = test[test["model"] == model].sort_values("inference_loops")
            loops_seen.update(int(v) for v in rows["inference_loops"])
            marker = MODEL_MARKERS[all_models.index(model) % len(MODEL_MARKERS)]
            ax.plot(rows["inference_loops"], rows["nll_per_token"], ls=style, marker=marker, ms=4, color=colours[model])
            best = rows.loc[rows["nll_per_token"].idxmin()]
            ax.plot(
                best["inference_loops"], best["nll_per_token"], "*", ms=14, mfc=colours[model], mec="black", zorder=5
            )
    if not loops_seen:
        _not_run(ax, "No run has results/nll_summary.csv")
        return figure
    ax.set_xticks(sorted(loops_seen))
    labels = {m.name: m for r in runs for m in r.models}
    handles = [
        Line2D(
            [], [], color=colours[m], marker=MODEL_MARKERS[i % len(MODEL_MARKERS)], lw=2,
            label=labels[m].label + (f" (trained at {labels[m].train_loops})" if labels[m].train_loops else ""),
        )
        for i, m in enumerate(all_models)
    ]  # fmt: skip
    handles += [
        Line2D([], [], color="0.3", ls=RUN_LINESTYLES[i % len(RUN_LINESTYLES)], lw=1.6, label=f"run {n}")
        for i, n in enumerate(names)
    ]
    handles.append(Line2D([], [], marker="*", ms=12, mfc="0.5", mec="black", ls="none", label="argmin"))
    ax.legend(handles=handles, loc="upper center", ncols=2)
    ax.set_xlabel("inference loops (test-time depth)")
    ax.set_ylabel("test NLL per token (nats/token)")
    ax.set_title("Test NLL vs inference loops across runs (lower is better)")
    return figure


COMPARE_COLUMNS = [
    "run", "run_dir", "config", "seed", "base_model", "model", "label", "train_loops", "best_test_loops",
    "best_test_nll", "best_test_ci_low", "best_test_ci_high", "best_train_loops", "best_train_nll",
    "train_test_match", "p_best_is_train_loops", "test_gap_to_neighbours",
]  # fmt: skip


def compare(run_dirs: Sequence[Path], out_dir: Path) -> Path:
    """Cross-run Table 1 (``compare.csv`` and ``compare.md``) and an overlay of Figure 1
    (``compare_nll_vs_loops.png``/``.pdf``) in ``out_dir``; returns the path of compare.md."""
    run_dirs = [Path(d) for d in run_dirs]
    out_dir = Path(out_dir)
    runs = [load_results(d) for d in run_dirs]
    names = _run_names(run_dirs)
    records = []
    for results, name in zip(runs, names, strict=True):
        table = table1(results)
        for _, row in table.iterrows():
            records.append(
                {
                    "run": name,
                    "run_dir": str(results.run_dir),
                    "config": results.name,
                    "seed": results.config.seed if results.config else (results.manifest or {}).get("seed"),
                    "base_model": results.model_label,
                    **{k: _plain(row[k]) for k in ("model", "label", "train_test_match")},
                    **{k: _int(row[k]) for k in ("train_loops", "best_test_loops", "best_train_loops")},
                    **{k: _float(row[k]) for k in FLOAT_COLUMNS},
                    "test_gap_to_neighbours": _gaps_text(row["neighbour_gaps"]),
                }
            )
    atomic_write_csv(out_dir / "compare.csv", records, COMPARE_COLUMNS)
    save_figure(plot_compare(runs, names), out_dir, "compare_nll_vs_loops")

    lines = ["# loopdepth: comparison of runs", ""]
    embedded = [n for r, n in zip(runs, names, strict=True) if r.embedded]
    if embedded:
        lines += [
            f"> Runs on the tiny embedded model (not the released model): {', '.join(embedded)}. Their numbers "
            "show that the pipeline works, not what the released model prefers.",
            "",
        ]
    lines += ["## Runs", ""]
    run_rows = []
    for results, name in zip(runs, names, strict=True):
        manifest = results.manifest or {}
        model = manifest.get("model") or {}
        skipped = bool(manifest.get("checks_skipped")) or bool((results.checks or {}).get("skipped"))
        checks = "not run" if results.checks is None else ("passed" if results.checks.get("passed") else "FAILED")
        run_rows.append(
            [
                name,
                results.name,
                manifest.get("seed", "—"),
                results.model_label,
                model.get("resolved_commit") or model.get("revision") or "—",
                checks + (" (--skip-checks: not gated)" if skipped else ""),
                f"`{results.run_dir}`",
            ]
        )
    lines += [
        markdown_table(["Run", "Config", "Seed", "Model", "Model commit", "Sanity checks", "Directory"], run_rows),
        "",
        "## Table 1 across runs",
        "",
    ]
    rows = [
        [
            r["run"],
            r["label"],
            "—" if r["train_loops"] is None else r["train_loops"],
            "—" if r["best_test_loops"] is None else r["best_test_loops"],
            format_nll(r["best_test_nll"])
            + (
                f" [{format_nll(r['best_test_ci_low'])}, {format_nll(r['best_test_ci_high'])}]"
                if r["best_test_ci_low"] is not None
                else ""
            ),
            "—" if r["best_train_loops"] is None else r["best_train_loops"],
            format_nll(r["best_train_nll"]),
            _yes_no(r["train_test_match"]),
            "—" if r["p_best_is_train_loops"] is None else f"{r['p_best_is_train_loops']:.2f}",
            r["test_gap_to_neighbours"],
        ]
        for r in records
    ]
    headers = [
        "Run", "Model", "Train loops", "Best test loops", "Test NLL at best [CI]", "Best train loops",
        "Train NLL at best", "Train/test match", "P(argmin = train loops), test", "Gap to neighbours, test [CI]",
    ]  # fmt: skip
    lines.append(markdown_table(headers, rows) if rows else "No run has NLL results.")
    missing = [n for r, n in zip(runs, names, strict=True) if r.nll is None and r.preferred is None]
    if missing:
        lines += ["", f"Not run (no NLL results): {', '.join(missing)}."]
    lines += [
        "",
        "NLL in nats/token. Sources: each run's `results/preferred_depth.csv` and `results/nll_summary.csv`; "
        "the same numbers are in `compare.csv`.",
        "",
        "![Test NLL vs inference loops across runs](compare_nll_vs_loops.png)",
        "",
        "Test NLL per model (colour) and run (line style); stars mark each curve's argmin.",
        "",
    ]
    path = out_dir / "compare.md"
    atomic_write_text(path, "\n".join(lines))
    return path


FLOAT_COLUMNS = (
    "best_test_nll", "best_test_ci_low", "best_test_ci_high", "best_train_nll", "p_best_is_train_loops",
)  # fmt: skip


def _float(value: Any) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


def _int(value: Any) -> int | None:
    return None if value is None or pd.isna(value) else int(value)


def _plain(value: Any) -> Any:
    """numpy/pandas scalars as plain Python values (None for missing) for CSV and formatting."""
    if value is None or (isinstance(value, float | np.floating) and math.isnan(value)):
        return None
    return value.item() if isinstance(value, np.generic) else value


# ---- command line -------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m study.report",
        description="Redraw the figures and report.md of an existing run directory "
        "(`python -m study.report compare RUN_DIR ... --out DIR` compares runs).",
    )
    parser.add_argument("--run-dir", type=Path, required=True, help="run directory (with manifest.json and results/)")
    parser.add_argument("--export-figures", type=Path, default=None, metavar="OUTDIR", help="also copy the PNGs here")
    return parser


def build_compare_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m study.report compare", description="Cross-run Table 1 and NLL overlay."
    )
    parser.add_argument("run_dirs", nargs="+", type=Path, help="run directories to compare")
    parser.add_argument("--out", type=Path, default=Path("runs/compare"), help="output folder (default: runs/compare)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["compare"]:
        args = build_compare_parser().parse_args(argv[1:])
        for run_dir in args.run_dirs:
            if not (run_dir / "manifest.json").is_file():
                print(f"error: {run_dir}: not a run directory (no manifest.json)", file=sys.stderr)
                return 2
        print(f"comparison: {compare(args.run_dirs, args.out)}")
        return 0
    args = build_parser().parse_args(argv)
    if not args.run_dir.is_dir():
        print(f"error: --run-dir: {args.run_dir} is not a directory", file=sys.stderr)
        return 2
    if not (args.run_dir / "manifest.json").is_file() and not (args.run_dir / "results").is_dir():
        print(f"error: --run-dir: {args.run_dir} has neither manifest.json nor results/", file=sys.stderr)
        return 2
    path = regenerate(args.run_dir, args.export_figures)
    print(f"report: {path}")
    if args.export_figures is not None:
        print(f"figures copied to {args.export_figures}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
