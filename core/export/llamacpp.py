"""llama.cpp itself, through the `llama-cpp-python` package: k-quant GGUF types and the parity check in the reader
people deploy with (llama.cpp, Ollama), not only in transformers.

    our f16 GGUF --quantize (llama_model_quantize)--> q4_0 | q4_k_m | q5_k_m | q6_k
    a GGUF file  --outputs--> llama.cpp's own tokens for the rendered prompts, its logits at every position and
                              its greedy continuation, lined up with the live adapter's (core.export.parity)

The package is optional: it builds llama.cpp from source when installed (minutes). Without it f16, bf16 and
q8_0 exports still work, and the k-quants are refused with the command that adds it.
"""

import ctypes
import importlib.util
from pathlib import Path

import numpy as np
import torch

from core.export.gguf import GgufExportError
from core.export.parity import GREEDY_TOKENS, ModelOutputs

INSTALL_HINT = ("pip install llama-cpp-python (inside LoRA Forge's .venv; it builds llama.cpp, a few minutes), "
                "or `make setup-llamacpp`")
QUANT_TYPES = {"q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0", "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
               "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M", "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K"}


def available() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def quantize(source: Path, target: Path, gguf_type: str, threads: int = 0) -> None:
    """Quantize the GGUF `source` (f16 or f32) into `target` with llama.cpp's own quantizer."""
    if not available():
        raise GgufExportError(f"GGUF type {gguf_type} is made by llama.cpp's quantizer, which is not installed. "
                               f"Add it with: {INSTALL_HINT}. Types f16, bf16 and q8_0 need nothing more.")
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANT_TYPES[gguf_type])
    params.nthread = threads
    status = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params))
    if status != 0 or not target.is_file():
        raise GgufExportError(f"llama.cpp could not quantize {source.name} to {gguf_type} (status {status}).")


def outputs(path: Path, rendered: list[str], end_tokens: set[int], new_tokens: int = GREEDY_TOKENS) -> ModelOutputs:
    """What llama.cpp does with the already rendered prompts: its tokens, logits at every position, and `new_tokens`
    greedy tokens (end-of-turn tokens skipped, as the reference's min_new_tokens does)."""
    import llama_cpp

    longest = max(len(text) for text in rendered)
    model = llama_cpp.Llama(model_path=str(path), n_ctx=max(512, longest + new_tokens + 64), logits_all=True,
                            verbose=False, n_threads=torch.get_num_threads())
    try:
        found = ModelOutputs([], [], [], [])
        for text in rendered:
            tokens = model.tokenize(text.encode(), add_bos=False, special=True)
            model.reset()
            model.eval(tokens)
            found.rendered.append(text)
            found.token_ids.append(list(tokens))
            found.logits.append(torch.from_numpy(np.array(model.scores[: len(tokens)], dtype=np.float32)))
            greedy = []
            for _ in range(new_tokens):
                scores = np.array(model.scores[model.n_tokens - 1], dtype=np.float32)
                scores[list(end_tokens)] = -np.inf
                greedy.append(int(scores.argmax()))
                model.eval([greedy[-1]])
            found.greedy.append(greedy)
        return found
    finally:
        model.close()
