"""Win rates from blind A/B chat votes.

Each stored vote has two sides (`left` = A, `right` = B) described by `Contender.describe()` and a winner
("left", "right", "tie" or "both_bad"). A contender is the same one across votes when it has the same
adapters with the same weights, whatever its label was then; it shows under its latest label.
A tie and "both bad" prefer neither side, so each counts half a win (as in Elo-style rankings).
"""

from dataclasses import dataclass


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
