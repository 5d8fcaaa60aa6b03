"""`launch.py chat`: talk to a base model from the terminal, one prompt or an interactive session."""

import argparse
import sys

from app.cli.options import add_model_options, load_model
from core.chat.generate import GenerationSettingsError, Sampling, conversation, stream_reply


def register(verbs) -> None:
    parser = verbs.add_parser("chat", help="chat with a model in the terminal")
    parser.add_argument("--prompt", help="one prompt; the answer is printed and the command exits")
    parser.add_argument("--system", help="a system prompt")
    parser.add_argument("--temperature", type=float, default=0.7, help="0 for greedy (repeatable) answers")
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--seed", type=int)
    add_model_options(parser, adapter=True)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    sampling = Sampling(args.max_new_tokens, args.temperature, args.top_p, args.seed)
    sampling.check()
    if args.prompt is not None and not args.prompt.strip():
        raise GenerationSettingsError("--prompt is empty. Give the message to answer, e.g. --prompt 'Hello', or "
                                      "leave --prompt out to chat interactively.")
    loaded, _ = load_model(args)
    if args.prompt is not None:
        _print_streamed(loaded, conversation(args.prompt, system=args.system), sampling)
        return 0
    history: list[dict[str, str]] = []
    print(f"Chatting with {loaded.facts.name} on {loaded.facts.device}. Empty line or Ctrl-D to quit.", file=sys.stderr)
    while True:
        try:
            prompt = input("> ").strip()
        except EOFError:
            return 0
        if not prompt:
            return 0
        messages = conversation(prompt, history, args.system)
        reply = _print_streamed(loaded, messages, sampling)
        history = [*messages[1 if args.system else 0 :], {"role": "assistant", "content": reply}]


def _print_streamed(loaded, messages, sampling) -> str:
    shown = ""
    for shown_next in stream_reply(loaded.model, loaded.tokenizer, messages, sampling):
        print(shown_next[len(shown) :], end="", flush=True)
        shown = shown_next
    print()
    return shown
