"""Kaggle entry point: the v17 confirmation run on a T4 x2 machine with internet.

Before pushing (``kaggle kernels push -p kaggle``): replace USERNAME in
kernel-metadata.json, and point REPO_URL below at your copy of this repository
(or attach a Kaggle dataset holding a copy of the repository: a folder under
/kaggle/input with run_study.py and pyproject.toml is used instead of cloning).

The script prints the GPUs, installs the project with pip WITHOUT touching Kaggle's
CUDA build of torch (from the project's lock file), runs ``run_study.py`` with STUDY_ARGS and prints where the
report is. Everything the run writes stays under /kaggle/working (the notebook's
saved output).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

# Edit this (or set the LOOPDEPTH_REPO environment variable) to your repository.
REPO_URL = "https://github.com/USERNAME/loopdepth.git"
REPO_REF = os.environ.get("LOOPDEPTH_REF")  # optional branch, tag or commit to check out

WORKING = Path("/kaggle/working")
INPUT = Path("/kaggle/input")
CHECKOUT = WORKING / "loopdepth"
OUTPUT_DIR = WORKING / "runs"

# The study's command line after ``python run_study.py`` (parsed by tests with run_study.build_parser()).
STUDY_ARGS = ["--version", "v17", "--seed", "2026", "--output-dir", str(OUTPUT_DIR)]


def run(command: list[str], cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    print("$ " + " ".join(command), flush=True)
    return subprocess.run(command, cwd=cwd, check=check)


def print_gpus() -> None:
    """The GPUs as nvidia-smi and torch see them (a T4 x2 machine shows two Tesla T4)."""
    if shutil.which("nvidia-smi"):
        run(["nvidia-smi", "--query-gpu=index,name,memory.total,driver_version", "--format=csv"], check=False)
    else:
        print("nvidia-smi not found: no NVIDIA driver on this machine", flush=True)
    try:
        import torch
    except ImportError:
        print("torch is not installed", flush=True)
        return
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        print(f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees: {', '.join(names)}", flush=True)
    else:
        print(f"torch {torch.__version__} sees no CUDA device: the study will run on CPU (slow)", flush=True)


def study_command(gpus: int) -> list[str]:
    """``run_study.py`` with STUDY_ARGS; with several GPUs under ``accelerate launch``, one
    process per GPU (the SFT models and the sweep cells are split between them)."""
    if gpus < 2:
        return [sys.executable, "run_study.py", *STUDY_ARGS]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(gpus)]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    return [*launch, "run_study.py", *STUDY_ARGS]


def gpu_count() -> int:
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def find_attached_copy(input_dir: Path = INPUT, depth: int = 3) -> Path | None:
    """A copy of the repository attached as a Kaggle dataset: the first folder (at most
    ``depth`` levels under ``input_dir``) holding both run_study.py and pyproject.toml."""
    if not input_dir.is_dir():
        return None
    level = [input_dir]
    for _ in range(depth + 1):
        for folder in sorted(level):
            if (folder / "run_study.py").is_file() and (folder / "pyproject.toml").is_file():
                return folder
        level = [child for folder in level for child in sorted(folder.iterdir()) if child.is_dir()]
    return None


def fetch_project() -> Path:
    """The repository under /kaggle/working (writable, for ``pip install -e``): copied from an
    attached dataset when there is one, else cloned from LOOPDEPTH_REPO or REPO_URL."""
    if (CHECKOUT / "run_study.py").is_file():
        print(f"using the existing checkout {CHECKOUT}", flush=True)
        return CHECKOUT
    attached = find_attached_copy()
    if attached is not None:
        print(f"copying the attached repository {attached} -> {CHECKOUT}", flush=True)
        shutil.copytree(attached, CHECKOUT, ignore=shutil.ignore_patterns(".venv", "runs", "__pycache__"))
        return CHECKOUT
    url = os.environ.get("LOOPDEPTH_REPO", REPO_URL)
    if "USERNAME" in url:
        sys.exit(
            "no repository: set REPO_URL in run_kaggle.py (or LOOPDEPTH_REPO), "
            "or attach a dataset with a copy of the repository"
        )
    run(["git", "clone", *([] if REPO_REF else ["--depth", "1"]), url, str(CHECKOUT)])
    if REPO_REF:
        run(["git", "checkout", REPO_REF], cwd=CHECKOUT)
    return CHECKOUT


def lock_without_torch(lock: Path) -> Path:
    """The project's lock file, checked to hold no torch line (the lock leaves torch out so
    that Kaggle's CUDA build stays; a lock that pinned torch would replace it)."""
    pinned = [line for line in lock.read_text().splitlines() if requirement_name(line.split(" ")[0]) == "torch"]
    if pinned:
        sys.exit(f"{lock}: pins torch ({pinned[0].strip()}): regenerate it with `make lock`, which leaves torch out")
    return lock


def requirement_name(requirement: str) -> str:
    """The canonical project name of a PEP 508 requirement ("Torch[x]>=2; ..." -> "torch");
    "" for lines that are no requirement (comments, hash continuations)."""
    # packaging ships with pip's environment on Kaggle (transformers needs it too)
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    try:
        return canonicalize_name(Requirement(requirement.strip().rstrip("\\").strip()).name)
    except InvalidRequirement:
        return ""


def install(project: Path) -> None:
    """pip-install every package of the project's lock file, at its exact version and hash,
    without dependency resolution (so nothing touches Kaggle's torch), then the project
    itself (editable, --no-deps)."""
    import importlib.metadata

    print(f"keeping the installed torch {importlib.metadata.version('torch')}", flush=True)
    if sys.version_info[:2] != (3, 11):
        print(f"note: the lock was resolved for Python 3.11; this is {sys.version.split()[0]}", flush=True)
    lock = lock_without_torch(project / "requirements.lock")
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps"]
    run([*pip, "--require-hashes", "-r", str(lock)])
    run([*pip, "-e", str(project)])


def find_report(output_dir: Path = OUTPUT_DIR) -> Path | None:
    report = output_dir / "report.md"
    if report.is_file():
        return report
    found = sorted(output_dir.rglob("report.md"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def main() -> int:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    print_gpus()
    project = fetch_project()
    install(project)
    result = run(study_command(gpu_count()), cwd=project, check=False)
    report = find_report()
    if report is not None:
        print(f"report: {report}", flush=True)
        print(report.read_text()[:4000], flush=True)
    else:
        print(f"no report.md under {OUTPUT_DIR} (exit code {result.returncode})", flush=True)
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
