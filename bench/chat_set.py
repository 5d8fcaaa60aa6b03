"""A variable-length chat dataset for benchmarks, generated (no hub needed), the same bytes every time.

Conversations of one to three turns about word lists (sort them, count them, reverse them, pick the
longest) with lists of 2 to 60 words, so rendered lengths spread from about 60 to 500+ tokens, like
real chat data. With padded batches that spread is what costs: each batch pads to its longest row.
"""

import json
import random
from pathlib import Path

WORDS = (
    "anchor breeze canyon dolphin ember falcon glacier harbor island jasmine kettle lantern meadow nectar orchard "
    "pebble quartz river saffron thunder umbrella velvet willow xenon yonder zephyr amber bramble cobalt dune "
    "echo fern granite hollow ivory juniper kelp lagoon marble nimbus opal prairie quill reef sierra tundra "
    "upland violet walnut yarrow zinc acorn birch cedar delta estuary fjord grove heath inlet"
).split()
SYSTEM = "You are a precise assistant. Answer with the result only."


def exchange(rng: random.Random) -> tuple[str, str]:
    """One question about a random word list and its exact answer."""
    count = round(2 * 30 ** rng.random())  # 2 to 60 words, log-uniform: many short lists, a long tail
    words = rng.sample(WORDS, min(count, len(WORDS))) if count <= len(WORDS) else rng.choices(WORDS, k=count)
    listed = ", ".join(words)
    task = rng.choice(["sort", "count", "reverse", "longest"])
    if task == "sort":
        return f"Sort these words alphabetically: {listed}", ", ".join(sorted(words))
    if task == "count":
        return f"How many words are in this list? {listed}", f"There are {len(words)} words."
    if task == "reverse":
        return f"Write this list in reverse order: {listed}", ", ".join(reversed(words))
    return f"Which word in this list is the longest? {listed}", max(words, key=len)


def conversation(rng: random.Random) -> dict:
    messages = [{"role": "system", "content": SYSTEM}] if rng.random() < 0.5 else []
    for _ in range(rng.choice([1, 1, 2, 3])):
        question, answer = exchange(rng)
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return {"messages": messages}


def write_chat_set(folder: Path, train_rows: int = 400, eval_rows: int = 60) -> tuple[Path, Path]:
    """Write chat.train.jsonl and chat.eval.jsonl into `folder`; return their paths."""
    rng = random.Random(20261123)
    paths = folder / "chat.train.jsonl", folder / "chat.eval.jsonl"
    for path, rows in zip(paths, (train_rows, eval_rows)):
        path.write_text("".join(json.dumps(conversation(rng)) + "\n" for _ in range(rows)))
    return paths
