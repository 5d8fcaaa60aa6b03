"""LoRA Forge's one entry point: `python launch.py` opens the web app, `python launch.py <verb>` is the CLI."""

import sys


def main() -> None:
    from app.cli import main as cli_main

    sys.exit(cli_main())


if __name__ == "__main__":
    main()
