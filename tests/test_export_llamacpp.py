"""GGUF through llama.cpp itself (llama-cpp-python, a test extra): the k-quants come from llama.cpp's own
quantizer, and every GGUF export is also run in llama.cpp for its parity check; without the package the k-quants
are refused with the command that adds it, and f16/bf16/q8_0 still work."""

import json

import gguf
import pytest

from app.cli import main
from core.export import llamacpp
from core.export.exporter import ExportError, export_adapters
from core.store.database import Store
from tests.export_helpers import make_adapter, need_llama_cpp


@pytest.fixture(scope="module")
def adapter(tiny_llama_dir, tmp_path_factory):
    return make_adapter(tiny_llama_dir, tmp_path_factory.mktemp("llamacpp-adapter") / "adapter", std=0.05)


def test_f16_and_bf16_answer_in_llama_cpp_as_the_live_adapter(tiny_llama_dir, adapter, tmp_path):
    need_llama_cpp()
    for kind in ("f16", "bf16"):
        result = export_adapters([str(adapter)], "gguf", tmp_path / kind, base=str(tiny_llama_dir), gguf_type=kind)
        by_reader = {check["reader"]: check for check in result.parity["checks"]}
        assert result.status == "done" and set(by_reader) == {"transformers", "llama.cpp"}
        in_llama_cpp = by_reader["llama.cpp"]
        assert in_llama_cpp["template_same"]  # llama.cpp's tokenizer gives the same tokens for every prompt
        assert in_llama_cpp["greedy_agree"] and in_llama_cpp["top1_agreement"] >= 0.95  # flat tiny logits may tie
        file = gguf.GGUFReader(tmp_path / kind / f"{kind}.{kind}.gguf")
        kinds = {t.name: t.tensor_type.name for t in file.tensors}
        assert kinds["blk.0.attn_q.weight"] == kind.upper()


def test_q4_k_m_is_quantized_by_llama_cpp_and_checked_there(tiny_llama_dir, adapter, tmp_path, capsys):
    need_llama_cpp()
    assert main(["export", "--adapter", str(adapter), "--format", "gguf", "--gguf-type", "q4_k_m",
                 "--base", str(tiny_llama_dir), "--out", str(tmp_path / "q4")]) in (0, 4)
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["format"] == "gguf-q4_k_m"
    assert sorted(p.name for p in (tmp_path / "q4").iterdir()) == [".loraforge-export", "Modelfile", "q4.q4_k_m.gguf"]
    file = gguf.GGUFReader(tmp_path / "q4" / "q4.q4_k_m.gguf")
    assert file.fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_Q4_K_M
    readers = [check["reader"] for check in result["parity"]["checks"]]
    assert readers == ["transformers", "llama.cpp"]
    assert all(check["top1_agreement"] is not None and check["top1_minimum"] == 0.75
               for check in result["parity"]["checks"])
    assert [row["format"] for row in Store().exports()] == ["gguf-q4_k_m"]


def test_without_llama_cpp_the_k_quants_are_refused_and_f16_still_works(tiny_llama_dir, adapter, tmp_path,
                                                                        monkeypatch):
    monkeypatch.setattr(llamacpp, "available", lambda: False)
    with pytest.raises(ExportError, match="pip install llama-cpp-python"):
        export_adapters([str(adapter)], "gguf", tmp_path / "q4", base=str(tiny_llama_dir), gguf_type="q4_k_m")
    assert not (tmp_path / "q4").exists()
    result = export_adapters([str(adapter)], "gguf", tmp_path / "f16", base=str(tiny_llama_dir))
    assert result.status == "done" and [c["reader"] for c in result.parity["checks"]] == ["transformers"]


@pytest.mark.slow
def test_the_default_model_as_q4_k_m_keeps_its_likeliest_tokens_in_llama_cpp(default_model, default_model_home,
                                                                             tmp_path, monkeypatch):
    need_llama_cpp()
    monkeypatch.setenv("LORAFORGE_HOME", str(default_model_home))
    adapter = make_adapter("default", tmp_path / "adapter", targets="qv", std=0.05)
    result = export_adapters([str(adapter)], "gguf", tmp_path / "q4", gguf_type="q4_k_m")
    by_reader = {check["reader"]: check for check in result.parity["checks"]}
    assert result.status == "done", result.parity
    assert by_reader["llama.cpp"]["template_same"] and by_reader["llama.cpp"]["top1_agreement"] >= 0.75
    assert (tmp_path / "q4" / "q4.q4_k_m.gguf").stat().st_size < 120 * 2**20  # f16 is 258 MB
