"""Errors the run store can raise. Each names the problem and the fix, like every LoraForgeError."""

from pathlib import Path

from core.errors import LoraForgeError, NextStep


class StoreError(LoraForgeError):
    """The database cannot be used as asked."""


class RunNotFound(StoreError):
    """No run has the given id."""

    def __init__(self, run_id: str):
        super().__init__(f"No run has the id {run_id!r}.", NextStep("runs"))
        self.run_id = run_id


class AdapterNotFound(StoreError):
    """No registered adapter, or more than one, answers to the given name or id."""


class InvalidTransition(StoreError):
    """A run cannot move from its current status to the asked one (e.g. a cancelled run cannot complete)."""


class DatabaseDamaged(StoreError):
    """The database file is not a readable SQLite database."""

    def __init__(self, path: Path, detail: str):
        super().__init__(
            f"The LoRA Forge database {path} is damaged ({detail}). Move it aside, together with any "
            f"{path.name}-wal and {path.name}-shm files next to it (for example `mv {path} {path}.damaged`), "
            "then start LoRA Forge again to begin a new database; run folders stay where they are. "
            "LoRA Forge never deletes or repairs the file itself."
        )
        self.path = path


class DatabaseBusy(StoreError):
    """Another process held the write lock for longer than the busy timeout."""

    def __init__(self, path: Path, timeout: float):
        super().__init__(
            f"The LoRA Forge database {path} stayed locked by another process for more than {timeout:g} s, "
            "so nothing was written. Wait for the other LoRA Forge process (a job, the web UI or a CLI command) "
            "to finish, or stop it, then try again."
        )
        self.path = path


class DatabaseTooNew(StoreError):
    """The database was written by a newer LoRA Forge with a schema this version does not know."""

    def __init__(self, path: Path, found: int, known: int):
        super().__init__(
            f"The LoRA Forge database {path} has schema version {found}, but this LoRA Forge knows only up to "
            f"{known}. Update LoRA Forge, or point LORAFORGE_HOME at another folder."
        )
        self.path = path


class RunActive(StoreError):
    """The run is queued or running, so it cannot be deleted yet."""

    def __init__(self, run_id: str, status: str):
        super().__init__(f"Run {run_id} is {status}; stop it first, then delete it.", NextStep("cancel", run_id))
        self.run_id = run_id
