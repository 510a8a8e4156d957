"""The tree keeps its architecture: dependencies flow one way (entry points -> stages ->
looping, backbones, tasks and the neutral modules), no import cycles, readable file and
function sizes, and one registry of stages."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from study.stages import PIPELINE_ORDER, STAGES, all_stages, stage_named

ROOT = Path(__file__).resolve().parent.parent
STUDY = ROOT / "study"
MAX_FILE_LINES = 700
MAX_FUNCTION_LINES = 120
# layers that must not reach up into the stages, the report or an entry point
LOWER = ("study.looping", "study.models", "study.backbones", "study.tasks")
UPPER = (
    "study.stages", "study.report", "study.run", "study.bench", "study.pilot", "study.sft_cost", "study.cost_estimate",
    "study.eval",
)  # fmt: skip


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def source_files() -> Iterator[Path]:
    yield from (p for p in sorted(STUDY.rglob("*.py")) if "assets" not in p.parts)


MODULES = {module_name(p): p for p in source_files()}


def imports_of(path: Path) -> set[str]:
    """The project modules ``path`` imports anywhere in it (function-local imports too)."""
    found: set[str] = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in MODULES:  # study.models.loopformer.CheckpointError -> the module
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    found.discard(module_name(path))
    return found


GRAPH = {name: imports_of(path) for name, path in MODULES.items()}


def test_no_import_cycles() -> None:
    state: dict[str, int] = {}  # 1: on the current path, 2: finished

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for child in sorted(GRAPH[name]):
            if state.get(child) == 1:
                cycle = [*path[path.index(child) :], child]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if child not in state:
                visit(child, [*path, child])
        state[name] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])


@pytest.mark.parametrize("lower", LOWER)
def test_lower_layers_never_import_stages_the_report_or_entry_points(lower: str) -> None:
    offending = {
        name: sorted(i for i in imports if i.startswith(UPPER))
        for name, imports in GRAPH.items()
        if name == lower or name.startswith(lower + ".")
    }
    assert {name: bad for name, bad in offending.items() if bad} == {}


def test_files_and_functions_stay_readable() -> None:
    too_long = [
        f"{p.relative_to(ROOT)}: {n} lines"
        for p in source_files()
        if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES
    ]
    for path in [*source_files(), ROOT / "run_study.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}(): {length} lines")
    assert too_long == []


def test_stage_registry_names_every_stage_module_in_order() -> None:
    assert [stage.name for stage in STAGES] == list(PIPELINE_ORDER)
    assert "adaptive" in PIPELINE_ORDER and PIPELINE_ORDER[0] == "check" and PIPELINE_ORDER[-1] == "report"
    # the stage framework, and nll_shift: the NLL stage's replicate and depth-shift statistics
    helpers = {"__init__", "stage", "keys", "sweep", "nll_shift"}
    modules = {p.stem for p in (STUDY / "stages").glob("*.py")} - helpers
    assert modules == set(PIPELINE_ORDER), "a stage module that is not in PIPELINE_ORDER never runs"
    assert stage_named("nll") is all_stages()[PIPELINE_ORDER.index("nll")]
    with pytest.raises(KeyError, match="the stages are check"):
        stage_named("nl")


def test_stage_declarations_are_consistent() -> None:
    for stage in STAGES:
        assert stage.outputs, f"{stage.name} declares no outputs"
        assert stage.reads in ("base", "models", "none")
        if stage.needs_sft:
            assert stage.reads == "models"
        if stage.cell_neutral is not None:  # per-model outputs are keyed by the stage's config section
            assert stage.name in stage.sections
    assert [s.name for s in STAGES if s.main_process_only] == ["check", "report"]
    assert [s.name for s in STAGES if s.uses_base] == ["sft", "nll", "adaptive", "exact_match", "latency", "benchmarks"]


def test_the_gate_is_put_in_front_of_stages_that_use_the_base() -> None:
    from study.run import stages_to_run

    wanted, added = stages_to_run(["latency", "nll"], skip_checks=False)
    assert [s.name for s in wanted] == ["check", "nll", "latency"] and added
    wanted, added = stages_to_run(["report"], skip_checks=False)
    assert [s.name for s in wanted] == ["report"] and not added
    wanted, added = stages_to_run(["nll"], skip_checks=True)
    assert [s.name for s in wanted] == ["nll"] and not added
    assert [s.name for s in stages_to_run(["all"], skip_checks=False)[0]] == list(PIPELINE_ORDER)


@pytest.mark.parametrize(
    "statement",
    ["import study", "import study.errors, study.stages", "import study.config", "import run_study"],
)
def test_light_imports_do_not_load_torch(statement: str) -> None:
    """Light commands (--help, the report CLI, the notebook's loaders) do not pay for torch."""
    code = f"import sys; {statement}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
