"""In-memory form of a task: examples keyed by sample id, an ordered label set, split notes."""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

SPLITS: tuple[str, ...] = ("train", "validation", "test")

EXAMPLE_SCHEMA = pa.schema(
    [
        ("task", pa.string()),
        ("split", pa.string()),
        ("sample_id", pa.string()),
        ("text", pa.string()),
        ("text_pair", pa.string()),
        ("label", pa.string()),
        ("label_id", pa.int32()),
        ("unit", pa.string()),
    ]
)


@dataclass(frozen=True)
class Example:
    """One labelled sample. ``sample_id`` is stable across runs: ``{task}/{source}/{row}``."""

    sample_id: str
    text: str
    label: str
    text_pair: str | None = None
    unit: str | None = None
    """The independent unit the sample belongs to when one source line gives several samples (a
    MultiRC passage: ``<file>:<line>``), else None. Splits keep units whole, and bootstrap intervals
    resample units, not samples, since samples of one passage are not independent."""


@dataclass
class TaskData:
    """A task's examples per split (``train``, ``validation``, ``test``) and its label set."""

    name: str
    labels: list[str]
    splits: dict[str, list[Example]]
    notes: list[str] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)
    verbalizer: dict[str, str] | None = None
    """Decoder models: label → the word the LM scores (default: the label itself)."""

    def label_id(self, label: str) -> int:
        return self.labels.index(label)

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    def sizes(self) -> dict[str, int]:
        return {s: len(self.splits.get(s, [])) for s in SPLITS}

    def to_table(self, split: str) -> pa.Table:
        rows = self.splits.get(split, [])
        index = {lab: i for i, lab in enumerate(self.labels)}
        return pa.table(
            {
                "task": [self.name] * len(rows),
                "split": [split] * len(rows),
                "sample_id": [r.sample_id for r in rows],
                "text": [r.text for r in rows],
                "text_pair": [r.text_pair for r in rows],
                "label": [r.label for r in rows],
                "label_id": [index[r.label] for r in rows],
                "unit": [r.unit for r in rows],
            },
            schema=EXAMPLE_SCHEMA,
        )
