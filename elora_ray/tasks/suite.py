"""The embedded task suite: synthetic text classification with a planted group structure.

Our own generator (no downloaded data), so the demo runs offline and the engine can be
checked against a known answer. Tasks come in *rule families*; tasks of one family share
the rule that maps text to label (they help each other), differ in surface form (domain
nouns, sentence templates, label noise, size), and some families contradict each other:

- ``polarity``: label = positive iff the sentence has more positive than negative
  adjectives (lexicon L = P1 ∪ P2 ∪ N1 ∪ N2).
- ``irony``: the same sentences and lexicon, but half of the adjectives swap meaning:
  positive iff |P1| + |N2| > |N1| + |P2|. In adjective-count space its decision direction
  is orthogonal to ``polarity``'s, so pooling the two families hurts both (conflict).
- ``topic``: sports vs science by the majority of topic nouns (unrelated features).
- ``tense``: past vs present by the majority of verb forms.

``planted_groups(cfg)`` returns the ground-truth partition the clustering should recover.
"""

from __future__ import annotations

import zlib

import numpy as np

from ..config import SuiteConfig
from .schema import Example, TaskData

P1 = ["good", "great", "excellent", "wonderful"]
P2 = ["superb", "delightful", "pleasant", "brilliant"]
N1 = ["bad", "awful", "terrible", "poor"]
N2 = ["dreadful", "horrible", "boring", "disappointing"]
SPORTS = ["football", "match", "goal", "team", "coach", "tournament", "player", "stadium"]
SCIENCE = ["experiment", "molecule", "laboratory", "theory", "telescope", "physicist", "enzyme", "hypothesis"]
PAST = ["walked", "talked", "cooked", "played", "visited", "painted", "cleaned", "watched"]
PRESENT = ["walks", "talks", "cooks", "plays", "visits", "paints", "cleans", "watches"]

DOMAINS: dict[str, list[str]] = {
    "movies": ["film", "plot", "actor", "scene", "director", "soundtrack"],
    "food": ["meal", "soup", "waiter", "dessert", "menu", "kitchen"],
    "books": ["novel", "chapter", "author", "story", "ending", "character"],
    "hotels": ["room", "lobby", "bed", "staff", "view", "breakfast"],
    "phones": ["screen", "battery", "camera", "charger", "speaker", "case"],
    "games": ["level", "controller", "graphics", "quest", "boss", "map"],
}
FILLERS = ["honestly", "really", "overall", "frankly", "somehow", "quite", "truly", "mostly"]
PEOPLE = ["my sister", "the neighbour", "our teacher", "a friend", "the old man", "my cousin"]

FAMILIES: list[str] = ["polarity", "irony", "topic", "tense"]
FAMILY_TASK_NAMES: dict[str, list[str]] = {
    "polarity": [f"polarity_{d}" for d in DOMAINS],
    "irony": [f"irony_{d}" for d in reversed(list(DOMAINS))],
    "topic": ["topic_news", "topic_forum", "topic_quiz", "topic_radio", "topic_blog", "topic_wiki"],
    "tense": ["tense_diary", "tense_letters", "tense_chat", "tense_notes", "tense_story", "tense_mail"],
}
FAMILY_LABELS: dict[str, list[str]] = {
    "polarity": ["negative", "positive"],
    "irony": ["negative", "positive"],
    "topic": ["science", "sports"],
    "tense": ["past", "present"],
}
SPLIT_FRACTIONS = (0.7, 0.15, 0.15)


def task_layout(cfg: SuiteConfig) -> list[tuple[str, str]]:
    """(task name, family) for every task of the suite, in order."""
    if len(cfg.tasks_per_group) > len(FAMILIES):
        raise ValueError(f"suite.tasks_per_group: at most {len(FAMILIES)} groups are available")
    layout: list[tuple[str, str]] = []
    for family, count in zip(FAMILIES, cfg.tasks_per_group):
        names = FAMILY_TASK_NAMES[family]
        if not 1 <= count <= len(names):
            raise ValueError(f"suite.tasks_per_group: '{family}' takes 1..{len(names)} tasks, got {count}")
        layout.extend((name, family) for name in names[:count])
    return layout


def planted_groups(cfg: SuiteConfig) -> list[list[str]]:
    """The ground-truth partition of the suite's tasks (one list per rule family)."""
    groups: dict[str, list[str]] = {}
    for name, family in task_layout(cfg):
        groups.setdefault(family, []).append(name)
    return list(groups.values())


def _adjective_sentence(rng: np.random.Generator, nouns: list[str]) -> tuple[str, dict[str, int]]:
    counts = {"p1": 0, "p2": 0, "n1": 0, "n2": 0}
    k = int(rng.integers(2, 6))
    adjs = []
    for _ in range(k):
        key = ["p1", "p2", "n1", "n2"][int(rng.integers(4))]
        counts[key] += 1
        adjs.append(str(rng.choice({"p1": P1, "p2": P2, "n1": N1, "n2": N2}[key])))
    noun = str(rng.choice(nouns))
    filler = str(rng.choice(FILLERS))
    body = ", ".join(adjs[:-1]) + f" and {adjs[-1]}" if len(adjs) > 1 else adjs[0]
    templates = [
        f"the {noun} was {filler} {body}.",
        f"{filler}, I found the {noun} {body}.",
        f"what a {body} {noun}, {filler}.",
    ]
    return str(templates[int(rng.integers(len(templates)))]), counts


def _majority_sentence(
    rng: np.random.Generator, a: list[str], b: list[str], frame: str
) -> tuple[str, int]:
    n = int(rng.choice([3, 5]))
    picks = rng.integers(0, 2, size=n)
    words = [str(rng.choice(a if p == 0 else b)) for p in picks]
    return frame.format(", ".join(words)), int((picks == 1).sum() * 2 > n)


def _sample(family: str, rng: np.random.Generator, nouns: list[str]) -> tuple[str, int] | None:
    if family in ("polarity", "irony"):
        text, c = _adjective_sentence(rng, nouns)
        score = (c["p1"] + c["p2"] - c["n1"] - c["n2"]) if family == "polarity" else (
            c["p1"] + c["n2"] - c["n1"] - c["p2"]
        )
        if score == 0:
            return None  # ambiguous under the rule: resample
        return text, int(score > 0)
    if family == "topic":
        frame = str(rng.choice(["the report mentioned the {}.", "people kept talking about the {}.", "{} - all in one day."]))
        return _majority_sentence(rng, SCIENCE, SPORTS, frame)
    person = str(rng.choice(PEOPLE))
    return _majority_sentence(rng, PAST, PRESENT, f"{person} {{}} at home.")


def generate_task(name: str, family: str, index: int, cfg: SuiteConfig) -> TaskData:
    """Generate one task deterministically from (suite seed, task name)."""
    rng = np.random.default_rng([cfg.seed, zlib.crc32(name.encode())])
    size = int(round(cfg.samples_per_task * rng.uniform(0.75, 1.25)))
    noise = cfg.label_noise * rng.uniform(0.5, 1.5)
    suffix = name.split("_", 1)[-1]
    domains = list(DOMAINS)
    d = domains.index(suffix) if suffix in DOMAINS else index % len(domains)
    # Each domain borrows two nouns from the next one so surface forms overlap a little.
    nouns = DOMAINS[domains[d]] + DOMAINS[domains[(d + 1) % len(domains)]][:2]
    labels = FAMILY_LABELS[family]
    examples: list[Example] = []
    i = 0
    while len(examples) < size:
        drawn = _sample(family, rng, nouns)
        if drawn is None:
            continue
        text, y = drawn
        if rng.random() < noise:
            y = 1 - y
        examples.append(Example(sample_id=f"{name}/suite/{i}", text=text, label=labels[y]))
        i += 1
    n_train = int(size * SPLIT_FRACTIONS[0])
    n_val = int(size * SPLIT_FRACTIONS[1])
    return TaskData(
        name=name,
        labels=sorted(labels),
        splits={
            "train": examples[:n_train],
            "validation": examples[n_train : n_train + n_val],
            "test": examples[n_train + n_val :],
        },
        notes=[
            f"synthetic '{family}' task from the embedded suite (seed {cfg.seed}, label noise {noise:.3f}); "
            f"splits 70/15/15 by generation order"
        ],
        sources={s: f"elora_ray.tasks.suite:{name}" for s in ("train", "validation", "test")},
    )


def generate_suite(cfg: SuiteConfig) -> list[TaskData]:
    """All tasks of the embedded suite, in group order."""
    return [generate_task(name, family, i, cfg) for i, (name, family) in enumerate(task_layout(cfg))]
