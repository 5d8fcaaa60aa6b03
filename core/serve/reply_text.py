"""A reply's text as it grows token by token, cut at the first stop string, and emitted only once it is final.

Two things may not be sent early: a trailing incomplete character (a multi-byte character split over tokens
decodes as U+FFFD until its last byte arrives) and a tail that could still become a stop string.
"""


class ReplyText:
    """Decodes a growing list of tokens and says what text is new since the last call."""

    def __init__(self, tokenizer, stops: tuple[str, ...] = ()) -> None:
        self.tokenizer, self.stops = tokenizer, tuple(stop for stop in stops if stop)
        self.sent = 0  # characters already handed out

    def update(self, tokens: list[int], final: bool = False) -> tuple[str, bool]:
        """(new text, whether a stop string ended the reply) for the reply `tokens` so far; with `final`, all
        that is left is released."""
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        cut = min((found for stop in self.stops if (found := text.find(stop)) >= 0), default=-1)
        stopped = cut >= 0
        if stopped:
            text = text[:cut]
        elif not final:
            text = text.rstrip("\ufffd")
            text = text[: len(text) - self._maybe_stop(text)]
        piece = text[self.sent :]
        self.sent = max(self.sent, len(text))
        return piece, stopped

    def _maybe_stop(self, text: str) -> int:
        """Length of the longest tail of `text` that starts some stop string."""
        return max((size for stop in self.stops for size in range(min(len(stop) - 1, len(text)), 0, -1)
                    if stop.startswith(text[-size:])), default=0)
