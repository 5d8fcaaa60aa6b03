"""Write LoRA Forge's sample datasets into assets/samples/, the same bytes on every run.

    dates.train.jsonl / dates.eval.jsonl    alpaca: rewrite dates between ISO (2021-03-04) and long
                                            form (4 March 2021). Exact match is meaningful, and a small
                                            model does not produce this exact form without training.
    pirate.train.jsonl / pirate.eval.jsonl  messages: one to three turns with Captain Byte, a pirate who
                                            answers arithmetic, unit and capital-city questions in a
                                            recognisable voice, so the adapter's effect shows in chat.

Run: python assets/make_samples.py
"""

import datetime as dt
import json
import random
from pathlib import Path

OUT = Path(__file__).parent / "samples"
MONTHS = ["January", "February", "March", "April", "May", "June",
          "July", "August", "September", "October", "November", "December"]
CAPITALS = {
    "France": "Paris", "Japan": "Tokyo", "Kenya": "Nairobi", "Peru": "Lima", "Canada": "Ottawa",
    "Egypt": "Cairo", "Norway": "Oslo", "Chile": "Santiago", "India": "New Delhi", "Spain": "Madrid",
    "Ghana": "Accra", "Italy": "Rome", "Poland": "Warsaw", "Mexico": "Mexico City", "Vietnam": "Hanoi",
    "Portugal": "Lisbon", "Greece": "Athens", "Australia": "Canberra", "Argentina": "Buenos Aires",
    "Sweden": "Stockholm", "Ireland": "Dublin", "Thailand": "Bangkok", "Turkey": "Ankara", "Cuba": "Havana",
    "Austria": "Vienna", "Morocco": "Rabat", "Finland": "Helsinki", "Colombia": "Bogota", "Nepal": "Kathmandu",
    "Hungary": "Budapest",
}
UNITS = [("kilometres", "metres", 1000), ("metres", "centimetres", 100), ("kilograms", "grams", 1000),
         ("hours", "minutes", 60), ("minutes", "seconds", 60), ("litres", "millilitres", 1000)]
OPENERS = ["Arr, ", "Yo ho, ", "Shiver me timbers, ", "Avast, "]
CLOSERS = [", matey!", ", me hearty!", ", as sure as the tide!", ", or I'm a landlubber!"]
GREETINGS = [("Hello!", "Ahoy there, matey! Captain Byte at yer service. What be yer question?"),
             ("Who are you?", "Arr, I be Captain Byte, scourge of the seven seas and keeper of sums and maps!"),
             ("Thanks!", "Ye be most welcome, me hearty! Fair winds to ye!")]
SYSTEM = "You are Captain Byte, a cheerful pirate who answers briefly."


def date_rows(rng: random.Random, count: int, seen: set[dt.date]) -> list[dict]:
    rows = []
    while len(rows) < count:
        date = dt.date(1900, 1, 1) + dt.timedelta(days=rng.randrange(200 * 365))
        if date in seen:
            continue
        seen.add(date)
        iso, long = date.isoformat(), f"{date.day} {MONTHS[date.month - 1]} {date.year}"
        if rng.random() < 0.5:
            rows.append({"instruction": "Rewrite the date in long form (day month year).",
                         "input": iso, "output": long})
        else:
            rows.append({"instruction": "Rewrite the date as YYYY-MM-DD.", "input": long, "output": iso})
    return rows


def pirate_answer(rng: random.Random, fact: str) -> str:
    return f"{rng.choice(OPENERS)}{fact}{rng.choice(CLOSERS)}"


def pirate_exchange(rng: random.Random) -> tuple[str, str]:
    kind = rng.choice(["sum", "product", "unit", "capital", "capital", "greeting"])
    if kind == "sum":
        a, b = rng.randrange(2, 100), rng.randrange(2, 100)
        return f"What is {a} + {b}?", pirate_answer(rng, f"{a} plus {b} be {a + b}")
    if kind == "product":
        a, b = rng.randrange(2, 13), rng.randrange(2, 13)
        return f"What is {a} times {b}?", pirate_answer(rng, f"{a} times {b} be {a * b}")
    if kind == "unit":
        big, small, factor = rng.choice(UNITS)
        n = rng.randrange(2, 20)
        return f"How many {small} are in {n} {big}?", pirate_answer(rng, f"{n} {big} be {n * factor} {small}")
    if kind == "capital":
        country = rng.choice(list(CAPITALS))
        return (f"What is the capital of {country}?",
                pirate_answer(rng, f"the capital of {country} be {CAPITALS[country]}"))
    return rng.choice(GREETINGS)


def pirate_rows(rng: random.Random, count: int) -> list[dict]:
    rows = []
    for _ in range(count):
        messages = [{"role": "system", "content": SYSTEM}] if rng.random() < 0.3 else []
        for _ in range(rng.choice([1, 1, 2, 3])):
            question, answer = pirate_exchange(rng)
            messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        rows.append({"messages": messages})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


def main(out: Path = OUT) -> None:
    out.mkdir(exist_ok=True)
    rng, seen = random.Random(20240601), set()
    write_jsonl(out / "dates.train.jsonl", date_rows(rng, 400, seen))
    write_jsonl(out / "dates.eval.jsonl", date_rows(rng, 100, seen))
    rng = random.Random(20240602)
    write_jsonl(out / "pirate.train.jsonl", pirate_rows(rng, 300))
    write_jsonl(out / "pirate.eval.jsonl", pirate_rows(rng, 60))


if __name__ == "__main__":
    main()
