"""Feedback while a run works: the hub's download bars stay on, library chatter stays
off, and logs written to a file get bars that redraw rarely."""

from __future__ import annotations

import importlib
import os
import warnings

import huggingface_hub.utils
import pytest
import transformers

from study import run


def test_download_bars_on_model_load_bars_off(monkeypatch: pytest.MonkeyPatch) -> None:
    # conftest switches the hub's bars off for the test session (read at import): undo that here
    hub_tqdm = importlib.import_module("huggingface_hub.utils.tqdm")
    monkeypatch.setattr(hub_tqdm, "HF_HUB_DISABLE_PROGRESS_BARS", None)
    monkeypatch.delenv("TQDM_MININTERVAL", raising=False)
    try:
        run.quiet_libraries()
        assert not huggingface_hub.utils.are_progress_bars_disabled()
        bar = huggingface_hub.utils.tqdm(total=3, desc="model.safetensors")  # what a checkpoint download shows
        assert not bar.disable
        bar.close()
        assert not transformers.utils.logging.is_progress_bar_enabled()  # the per-load "Loading weights" bars
        # pytest captures stderr: not a terminal, so bars redraw at most every 30 s
        assert os.environ["TQDM_MININTERVAL"] == "30"
    finally:
        huggingface_hub.utils.disable_progress_bars()


def test_the_users_switch_keeps_download_bars_off_without_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    # HF_HUB_DISABLE_PROGRESS_BARS=1 (conftest sets it for the session): respected, and no
    # "cannot enable progress bars" warning breaks the one-line error output
    hub_tqdm = importlib.import_module("huggingface_hub.utils.tqdm")
    monkeypatch.setattr(hub_tqdm, "HF_HUB_DISABLE_PROGRESS_BARS", True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run.quiet_libraries()
    assert huggingface_hub.utils.are_progress_bars_disabled()
