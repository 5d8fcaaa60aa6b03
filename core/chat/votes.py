"""Win rates from blind A/B chat votes.

Each stored vote has two sides (`left` = A, `right` = B) described by `Contender.describe()` and a winner
("left", "right", "tie" or "both_bad"). A contender is the same one across votes when it has the same
adapters with the same weights, whatever its label was then; it shows under its latest label.
A tie and "both bad" prefer neither side, so each counts half a win (as in Elo-style rankings).

A vote also keeps each side's answer (and the system prompt), so the decided votes are preference pairs:
`preference_rows` turns them into (prompt, chosen, rejected) rows that DPO and ORPO train on.
"""

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Standing:
    """One contender's record over every vote it took part in."""

    label: str
    wins: int = 0
    losses: int = 0
    ties: int = 0
    both_bad: int = 0

    @property
    def votes(self) -> int:
        return self.wins + self.losses + self.ties + self.both_bad

    @property
    def win_rate(self) -> float:
        return (self.wins + 0.5 * (self.ties + self.both_bad)) / self.votes if self.votes else 0.0


def standings(votes: list[dict]) -> list[Standing]:
    """Every contender's wins, losses, ties and win rate over `votes` (oldest first), best win rate first."""
    table: dict[tuple, Standing] = {}
    for vote in votes:
        for side, other in (("left", "right"), ("right", "left")):
            key = _identity(vote[side])
            standing = table.setdefault(key, Standing(vote[side]["label"]))
            standing.label = vote[side]["label"]  # the newest label wins
            if vote["winner"] == side:
                standing.wins += 1
            elif vote["winner"] == other:
                standing.losses += 1
            elif vote["winner"] == "tie":
                standing.ties += 1
            else:
                standing.both_bad += 1
    return sorted(table.values(), key=lambda s: (-s.win_rate, -s.votes, s.label))


def _identity(side: dict) -> tuple:
    return tuple(sorted((a["id"], a["weight"]) for a in side["adapters"]))


@dataclass
class VoteExport:
    """What exporting the votes as preference pairs wrote and what it left out (each a count of votes)."""

    pairs: int = 0
    ties: int = 0
    both_bad: int = 0
    without_answers: int = 0  # votes cast before the page kept the answers, or with an empty one
    same_answers: int = 0  # both sides said the same thing: no preference to learn

    @property
    def left_out(self) -> int:
        return self.ties + self.both_bad + self.without_answers + self.same_answers


def preference_rows(votes: list[dict]) -> tuple[list[dict], VoteExport]:
    """Each decided vote as a {"prompt", "chosen", "rejected"} row (the prompt as messages, with the system prompt
    the answers were given under), and the count of what was left out: a tie or "both bad" prefers neither."""
    rows, counts = [], VoteExport()
    for vote in votes:
        if vote["winner"] == "tie":
            counts.ties += 1
            continue
        if vote["winner"] == "both_bad":
            counts.both_bad += 1
            continue
        loser = "right" if vote["winner"] == "left" else "left"
        chosen, rejected = (vote[side].get("answer") or "" for side in (vote["winner"], loser))
        if not chosen.strip() or not rejected.strip():
            counts.without_answers += 1
            continue
        if chosen.strip() == rejected.strip():
            counts.same_answers += 1
            continue
        system = vote[vote["winner"]].get("system")
        prompt = [{"role": "system", "content": system}] if system else []
        rows.append({"prompt": [*prompt, {"role": "user", "content": vote["prompt"]}], "chosen": chosen,
                     "rejected": rejected})
        counts.pairs += 1
    return rows, counts


def write_preference_dataset(votes: list[dict], path: Path) -> VoteExport:
    """Write the votes' preference pairs as JSONL (the form `train --method dpo` reads), atomically."""
    rows, counts = preference_rows(votes)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    partial.replace(path)
    return counts
