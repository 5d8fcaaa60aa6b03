"""What goes wrong with a base model a person asked for."""

from core.errors import LoraForgeError


class ModelSourceError(LoraForgeError):
    """The base model could not be found, read or loaded."""
