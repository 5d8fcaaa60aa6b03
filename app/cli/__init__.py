"""The command line: `python launch.py <verb> ...`; with no verb it serves the web app.

Each verb lives in its own module here, exposing `register(subparsers)` that adds its parser and sets
`handler`. A user's mistake (a `LoraForgeError`) prints one clear line and exits 2, never a traceback.
"""

import argparse
import importlib
import os
import sys

from core.errors import LoraForgeError

VERB_MODULES = ("serve", "chat", "train", "preflight", "evaluate", "adapters", "runs", "jobs", "export")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="launch.py", description="LoRA Forge: local LoRA fine-tuning. With no verb, opens the web app."
    )
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")
    for name in VERB_MODULES:
        importlib.import_module(f"app.cli.{name}").register(verbs)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verb is None:
        args = parser.parse_args(["serve"])
    quiet_libraries()
    try:
        return args.handler(args) or 0
    except LoraForgeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader went away (`launch.py runs | head`): nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush does not fail again
        return 0


def quiet_libraries() -> None:
    """Keep library progress bars and advisory warnings out of the user's terminal."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
