"""Win rates from blind A/B votes: counted per contender (same adapters and weights), ties and "both bad" as half
a win, best first; and votes stored in SQLite (both_bad included) read back into the same table."""

import pytest

from core.chat.contenders import BASE, Contender
from core.chat.votes import standings
from core.store.database import Store

PIRATE = Contender("pirate", ((1, 1.0),))
BLEND = Contender("pirate ×0.7 + dates ×0.5", ((1, 0.7), (2, 0.5)))


def vote(a: Contender, b: Contender, winner: str) -> dict:
    return {"prompt": "p", "left": a.describe(), "right": b.describe(), "winner": winner}


def record(standing) -> tuple:
    return standing.label, standing.votes, standing.wins, standing.losses, standing.ties, standing.both_bad


def test_wins_losses_and_ties_per_contender_best_first():
    votes = [vote(PIRATE, BASE, "left"), vote(BASE, PIRATE, "left"), vote(PIRATE, BASE, "right"),
             vote(BLEND, PIRATE, "tie"), vote(BLEND, BASE, "both_bad"), vote(BASE, BLEND, "right")]
    table = standings(votes)
    assert [record(s) for s in table] == [
        ("pirate ×0.7 + dates ×0.5", 3, 1, 0, 1, 1),
        ("base model", 5, 2, 2, 0, 1),
        ("pirate", 4, 1, 2, 1, 0),
    ]
    assert [s.win_rate for s in table] == pytest.approx([2 / 3, 2.5 / 5, 1.5 / 4])


def test_a_contender_is_its_adapters_and_weights_under_its_newest_label():
    renamed = Contender("corsair", PIRATE.weights)
    other_weight = Contender("pirate ×0.5", ((1, 0.5),))
    table = standings([vote(PIRATE, BASE, "left"), vote(renamed, other_weight, "left")])
    assert {s.label: (s.wins, s.losses) for s in table} == {"corsair": (2, 0), "base model": (0, 1),
                                                              "pirate ×0.5": (0, 1)}
    assert standings([]) == []


def test_stored_votes_give_the_same_table(tmp_path):
    with Store(tmp_path / "loraforge.db") as store:
        store.add_vote("Say hi", PIRATE.describe(), BASE.describe(), "left")
        store.add_vote("Say bye", BASE.describe(), PIRATE.describe(), "both_bad")
        with pytest.raises(ValueError, match="both_bad"):
            store.add_vote("x", PIRATE.describe(), BASE.describe(), "both")
        votes = store.votes()
    assert [v["winner"] for v in votes] == ["left", "both_bad"]
    assert votes[0]["left"] == {"label": "pirate", "adapters": [{"id": 1, "weight": 1.0}]}
    assert [(s.label, s.wins, s.losses, s.both_bad, s.win_rate) for s in standings(votes)] == [
        ("pirate", 1, 0, 1, 0.75), ("base model", 0, 1, 1, 0.25)]
