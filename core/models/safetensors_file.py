"""Writing safetensors files with the permissions any other new file gets.

safetensors 0.8 writes through a temporary file created 0600 and renames it into place, so its files ignore the
umask (safetensors issue #782). An adapter or merged model written that way cannot be read by another account,
such as the one vLLM, Ollama or a container runs as. `save_tensors` restores the mode `open()` would have given.
"""

import os
from pathlib import Path

import torch
from safetensors.torch import save_file


def save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """`safetensors.torch.save_file`, then the file's mode set to 0666 less the process's umask."""
    save_file(tensors, path, metadata=metadata)
    os.chmod(path, 0o666 & ~process_umask())


def process_umask() -> int:
    """The umask, read from /proc on Linux; elsewhere set and restored, strict in between (a file another thread
    makes in that instant comes out private rather than open)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask
