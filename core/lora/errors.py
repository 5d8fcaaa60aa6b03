"""Errors a user can cause with adapters: each message names the module or file, and the fix."""

from core.errors import LoraForgeError


class AdapterConfigError(LoraForgeError):
    """An adapter setting is invalid: rank, alpha, targets that match nothing, an unknown adapter name."""


class AdapterFileError(LoraForgeError):
    """An adapter folder cannot be applied: missing or truncated files, wrong shapes, another base, NaN/Inf."""


class AdapterStateError(LoraForgeError):
    """An operation does not fit the current state, e.g. merging twice or switching adapters while merged."""


class NonFiniteMergeError(AdapterStateError):
    """Merging would put NaN or Inf into the base weights; nothing was changed."""
