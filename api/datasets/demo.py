"""A small sentiment dataset the project writes itself, so the README walk-through works offline."""

import json
import random
from pathlib import Path

POSITIVE = ["wonderful", "delightful", "brilliant", "moving", "charming", "superb", "funny", "gripping",
            "beautiful", "clever"]
NEGATIVE = ["dull", "tedious", "awful", "clumsy", "boring", "lifeless", "painful", "predictable", "messy",
            "forgettable"]
SUBJECTS = ["the film", "this movie", "the script", "the acting", "the story", "the ending", "the soundtrack",
            "the direction", "every scene", "the cast"]
TEMPLATES = ["{s} is {a}.", "{s} was {a} from start to finish.", "honestly, {s} felt {a}.",
             "i found {s} {a} and i would say so again.", "{s}? {a}, simply {a}."]


def demo_rows(n: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        positive = rng.random() < 0.5
        adjective = rng.choice(POSITIVE if positive else NEGATIVE)
        text = rng.choice(TEMPLATES).format(s=rng.choice(SUBJECTS), a=adjective)
        rows.append({"text": text, "label": "positive" if positive else "negative"})
    return rows


def demo_write(directory: Path) -> tuple[Path, Path]:
    """Write sentiment-train.jsonl (400 rows) and sentiment-dev.jsonl (100 rows) into directory."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = directory / "sentiment-train.jsonl", directory / "sentiment-dev.jsonl"
    for path, (n, seed) in zip(paths, [(400, 1), (100, 2)], strict=True):
        path.write_text("".join(json.dumps(row) + "\n" for row in demo_rows(n, seed)))
    return paths
