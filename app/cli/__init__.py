"""The command line: `python launch.py <verb> ...`; with no verb it serves the web app.

Each verb lives in its own module here, exposing `register(subparsers)` that adds its parser and sets
`handler`. A user's mistake (a `LoraForgeError`) prints one clear line and exits 2, never a traceback.
"""

import argparse
import importlib
import os
import sys

from core.errors import LoraForgeError
from core.models.quiet import quiet_libraries

# verb -> the module that registers it. A command imports only its own verb's module (`launch.py runs` need not
# import the web app or the API server: seconds on every call); help and unknown verbs import them all.
VERBS = {"serve": "serve", "api": "api", "chat": "chat", "train": "train", "resume": "train",
         "preflight": "preflight", "evaluate": "evaluate", "adapters": "adapters", "runs": "runs", "cancel": "runs",
         "merge": "export", "export": "export", "votes": "votes", "models": "models"}


def build_parser(verb: str | None = None) -> argparse.ArgumentParser:
    """The parser for `verb` alone when it is a known one, else for every verb."""
    parser = argparse.ArgumentParser(
        prog="launch.py", description="LoRA Forge: local LoRA fine-tuning. With no verb, opens the web app."
    )
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")
    modules = [VERBS[verb]] if verb in VERBS else list(dict.fromkeys(VERBS.values()))
    for name in modules:
        importlib.import_module(f"app.cli.{name}").register(verbs)
    return parser


# How a terminal does each next step an engine error names (core.errors.NextStep).
NEXT_STEPS = {
    "runs": "See the runs with `python launch.py runs`.",
    "resume": "Resume it with `python launch.py resume {run_id}`.",
    "cancel": "Stop it with `python launch.py cancel {run_id}`.",
    "adapters": "See the adapters with `python launch.py adapters list`.",
    "train": "Start one with `python launch.py train`.",
}


def said_in_the_terminal(error: LoraForgeError) -> str:
    """The error's message and, where it names a next step, the command that does it."""
    step = error.next_step
    return f"{error} {NEXT_STEPS[step.action].format(run_id=step.run_id)}" if step else str(error)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        argv = ["serve", *argv]  # `launch.py --port 8000` (and `make run ARGS=...`) serve with those options
    args = build_parser(argv[0]).parse_args(argv)
    quiet_libraries()
    try:
        return args.handler(args) or 0
    except LoraForgeError as error:
        print(f"error: {said_in_the_terminal(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader went away (`launch.py runs | head`): nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush does not fail again
        return 0
