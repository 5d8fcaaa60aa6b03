"""Reading the small files a person hands LoRA Forge (a run.yaml, an adapter_config.json, a settings file):
regular files only and up to a size, so `--config /dev/zero` or a FIFO is refused at once instead of filling the
memory, and text that is not UTF-8 is named as such."""

from pathlib import Path

from core.errors import LoraForgeError


class FileTooLarge(LoraForgeError):
    """A file LoRA Forge reads whole is not a regular file, or is larger than such a file ever is."""


def read_text_capped(path: Path, limit: int, what: str = "This file") -> str:
    """The UTF-8 text of `path`, refused (FileTooLarge, naming the fix) unless it is a regular file of at most
    `limit` bytes. UnicodeDecodeError is left for the caller, which knows the file's format."""
    path = Path(path)
    if path.exists() and not path.is_file():
        raise FileTooLarge(f"{path} is not a regular file (a device, a pipe or a folder). {what} must be a file.")
    with open(path, "rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise FileTooLarge(f"{path} is larger than {limit // 1024} KB, far larger than {what.lower()} ever is. "
                           "Check that this is the file you meant.")
    return data.decode("utf-8")
