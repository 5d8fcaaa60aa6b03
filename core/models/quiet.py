"""Keep the libraries' progress bars and advisory warnings out of a terminal or a job log: each process that
loads models (the CLI, a background job) calls this once before it does."""

import os


def quiet_libraries() -> None:
    """Keep library progress bars and advisory warnings out of the user's terminal."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
