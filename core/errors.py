"""Errors a user can cause. Each carries one message that names the problem and the fix.

Front-ends (CLI, web page) catch `LoraForgeError` and show its message without a traceback;
any other exception is a bug in LoRA Forge and keeps its traceback. Where the fix is a thing to do in LoRA
Forge (see the runs, resume one), the error names it as a `NextStep`, and each front-end words it its own
way: the CLI as the command to type, the page as the tab and button. The engine never names a command.
"""

from dataclasses import dataclass

NEXT_STEPS = ("runs", "resume", "cancel", "adapters", "train")


@dataclass(frozen=True)
class NextStep:
    """What a person can do next: see the runs or the adapters, resume or cancel a run, start a new run."""

    action: str
    run_id: str | None = None

    def __post_init__(self) -> None:
        if self.action not in NEXT_STEPS:
            raise ValueError(f"next step must be one of {NEXT_STEPS}, not {self.action!r}")


class LoraForgeError(Exception):
    """A problem the user can fix: bad path, bad file, bad setting, missing model."""

    def __init__(self, message: str, next_step: NextStep | None = None):
        super().__init__(message)
        self.next_step = next_step
