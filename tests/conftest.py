"""Shared fixtures: an isolated LORAFORGE_HOME per test and tiny random models built once per session."""

import os
import signal

import pytest

from core.jobs.process_groups import stop_group
from core.store.database import Store
from core.store.processes import process_start_time
from tests.job_helpers import supervisor_pid
from tests.tiny_models import make_tiny_gpt2, make_tiny_llama


@pytest.fixture(autouse=True)
def loraforge_home(tmp_path, monkeypatch):
    """Every test writes into its own LORAFORGE_HOME, never the user's."""
    home = tmp_path / "home"
    monkeypatch.setenv("LORAFORGE_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    """A tiny random Llama folder (safetensors + tokenizer with a ChatML template)."""
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory):
    """A tiny random GPT-2 folder, whose projections are Conv1D layers."""
    return make_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="session")
def default_model_home(tmp_path_factory):
    """A LORAFORGE_HOME shared by the tests that use the real default model, so it is converted once."""
    return tmp_path_factory.mktemp("default-home")


@pytest.fixture(scope="session")
def default_model(default_model_home):
    """The real embedded SmolLM2-135M-Instruct, loaded once per session (the first load converts its GGUF)."""
    from core.models.loading import load_base_model

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LORAFORGE_HOME", str(default_model_home))
        return load_base_model("default")


@pytest.fixture
def stop_leftovers(loraforge_home):
    """After the test, stop whatever it left running on its LORAFORGE_HOME (on failure, say), so no
    supervisor or job outlives it. Name it as a test's argument to use it."""
    yield
    pid = supervisor_pid(loraforge_home)
    if pid and process_start_time(pid) is not None:
        os.kill(pid, signal.SIGKILL)
    with Store() as store:
        for run in store.list_runs("running"):
            stop_group(run["pid"], run["pid_start_time"], grace=1.0)
