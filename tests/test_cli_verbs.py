"""A command imports only its verb's module (app.cli.VERBS); the map must name every verb the modules register."""

import argparse
import os
import subprocess
import sys

from app.cli import VERBS, build_parser
from tests.browser import REPO


def verbs_of(parser: argparse.ArgumentParser) -> set[str]:
    return set(next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices)


def test_every_registered_verb_is_mapped_to_its_module_and_parses_alone():
    assert verbs_of(build_parser()) == set(VERBS)
    for verb in VERBS:
        assert verb in verbs_of(build_parser(verb)), verb


def test_a_terminal_verb_loads_neither_the_web_app_nor_the_api_server(tmp_path):
    probe = ("import sys; from app.cli import main; main(['runs']); "
             "print(sorted(m for m in ('gradio', 'fastapi', 'core.serve.routes') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "LORAFORGE_HOME": str(tmp_path)})
    assert result.returncode == 0 and result.stdout.strip().splitlines()[-1] == "[]", result.stderr[-2000:]
