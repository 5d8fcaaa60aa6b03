"""Shared fixtures: an isolated LORAFORGE_HOME per test and tiny random models built once per session."""

import pytest

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
    from core.models import load_base_model

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LORAFORGE_HOME", str(default_model_home))
        return load_base_model("default")
