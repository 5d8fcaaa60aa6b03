"""Errors a user can cause. Each carries one message that names the problem and the fix.

Front-ends (CLI, web page) catch `LoraForgeError` and show its message without a traceback;
any other exception is a bug in LoRA Forge and keeps its traceback.
"""


class LoraForgeError(Exception):
    """A problem the user can fix: bad path, bad file, bad setting, missing model."""


class ModelSourceError(LoraForgeError):
    """The base model could not be found, read or loaded."""
