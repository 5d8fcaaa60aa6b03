"""Memory of the LM-head loss, side by side: the chunked frozen-head cross-entropy against plain autograd.

    python bench/lm_head_memory.py [--rows 4096] [--hidden 2048] [--vocab 128256]

Each variant runs in its own process on the CPU: `rows` trained positions of random hidden states through a
frozen random LM head (a Llama 3 vocabulary by default), loss and backward. Printed per variant: the peak
resident memory above what the inputs and the head already hold, the seconds, and the loss; the gradients of
the two are compared too. On a GPU the same logits (rows x vocab x 4 bytes, kept by autograd with their
softmax and gradient) are what the chunked path saves.
"""

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--vocab", type=int, default=128256)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        return print(json.dumps(run(args.variant, args.rows, args.hidden, args.vocab)))
    results = {}
    for variant in ("plain", "chunked"):
        command = [sys.executable, __file__, "--variant", variant, "--rows", str(args.rows), "--hidden",
                   str(args.hidden), "--vocab", str(args.vocab)]
        results[variant] = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)
    plain, chunked = results["plain"], results["chunked"]
    print(f"{args.rows} trained rows, hidden {args.hidden}, vocabulary {args.vocab} (fp32 logits: "
          f"{args.rows * args.vocab * 4 / 2**30:.2f} GiB)\n")
    print("| variant | peak memory above inputs, MiB | seconds | loss |\n|---|---|---|---|")
    for name, row in results.items():
        print(f"| {name} | {row['peak_above_inputs_mb']:,.0f} | {row['seconds']:.1f} | {row['loss']:.6f} |")
    largest_difference = max(abs(a - b) for a, b in zip(plain["grad_sample"], chunked["grad_sample"]))
    print(f"\nchunked / plain peak memory: {chunked['peak_above_inputs_mb'] / plain['peak_above_inputs_mb']:.3f}x; "
          f"largest gradient difference {largest_difference:.2e}")


def run(variant: str, rows: int, hidden_size: int, vocab: int) -> dict:
    import torch
    import torch.nn.functional as F

    from core.training.loss import LOGITS_PER_CHUNK, frozen_head_cross_entropy

    torch.manual_seed(0)
    head = torch.nn.Linear(hidden_size, vocab, bias=False).requires_grad_(False)
    hidden = torch.randn(rows, hidden_size, requires_grad=True)
    targets = torch.randint(0, vocab, (rows,))
    before = _peak_rss_mb()
    started = time.perf_counter()
    if variant == "chunked":
        loss = frozen_head_cross_entropy(hidden, head, targets, None, max(1, LOGITS_PER_CHUNK // vocab))
    else:
        loss = F.cross_entropy(head(hidden).float(), targets, reduction="sum")
    loss.backward()
    seconds = time.perf_counter() - started
    return {"peak_above_inputs_mb": _peak_rss_mb() - before, "seconds": seconds, "loss": float(loss),
            "grad_sample": hidden.grad.flatten()[::997].tolist()}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


if __name__ == "__main__":
    main()
