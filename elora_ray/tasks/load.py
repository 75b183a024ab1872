"""Turn task configs into validated :class:`TaskData` (fields, labels, ids, splits)."""

from __future__ import annotations

import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..config import GENERIC_FORMATS, RunConfig, SplitConfig, TaskConfig
from ..errors import DataError
from .builtin import (
    BUILTIN_FORMATS, builtin_default_dir, builtin_verbalizer, canonical_format, normalize_label, read_builtin,
)
from .readers import read_records
from .remote import localize
from .schema import SPLITS, Example, TaskData


def _examples_from_generic(cfg: TaskConfig, path: Path) -> list[tuple[Example, int, Path]]:
    """Map one generic file's records to examples using the task's field names."""
    pair_explicit = "text_pair" in cfg.model_fields_set and cfg.text_pair is not None
    out = []
    for line, rec in read_records(path, cfg.format, task=cfg.name):
        if cfg.text not in rec:
            raise DataError(f"missing field (record has {sorted(rec)})", path=path, line=line, field=cfg.text, task=cfg.name)
        if cfg.label not in rec:
            raise DataError(f"missing field (record has {sorted(rec)})", path=path, line=line, field=cfg.label, task=cfg.name)
        pair = None
        if cfg.text_pair is not None:
            if cfg.text_pair in rec:
                pair = rec[cfg.text_pair]
            elif pair_explicit:
                raise DataError("missing field", path=path, line=line, field=cfg.text_pair, task=cfg.name)
        row_id = _row_id(rec, line)
        out.append((_make_example(cfg.name, path, line, row_id, rec[cfg.text], pair, rec[cfg.label], cfg.text, cfg.label), line, path))
    return out


def _row_id(rec: dict, line: int) -> str:
    """The record's ``idx`` or ``id`` (integral floats as ints), else its line number."""
    for key in ("idx", "id"):
        value = rec.get(key)
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        return str(value)
    return str(line)


def source_stem(path: str | Path) -> str:
    """The file part of a sample id: the file stem, or ``{dir}-{split}`` for ``dir::split``."""
    base, _, split = str(path).partition("::")
    stem = Path(base).stem
    return f"{stem}-{split}" if split else stem


def _make_example(
    task: str,
    path: Path,
    line: int,
    row_id: object,
    text: object,
    pair: object,
    label: object,
    text_field: str = "text",
    label_field: str = "label",
) -> Example:
    """Validate one record (non-empty text, a usable label) and build its :class:`Example`."""
    if not isinstance(text, str) or not text.strip():
        raise DataError("text is empty or not a string", path=path, line=line, field=text_field, task=task)
    if pair is not None and not isinstance(pair, str):
        pair = str(pair)
    return Example(
        sample_id=f"{task}/{source_stem(path)}/{row_id}",
        text=text,
        text_pair=pair if pair else None,
        label=_label(task, label, path, line, label_field),
    )


def _label(task: str, value: object, path: Path, line: int, field: str) -> str:
    try:
        return normalize_label(value, path=path, line=line, field=field)
    except DataError as exc:
        raise DataError(exc.reason, path=path, line=line, field=field, task=task) from None


def _rng(splits: SplitConfig, name: str, purpose: str) -> np.random.Generator:
    """A generator seeded by the split seed, the task name and the purpose (crc32, not ``hash``)."""
    return np.random.default_rng([splits.seed, zlib.crc32(name.encode()), zlib.crc32(purpose.encode())])


Row = tuple[Example, int, Path]
"""An example with the line and file it came from (for error messages)."""


def _allocate(counts: dict[str, int], want: int, keep_in_rest: bool) -> dict[str, int]:
    """How many rows of each class to take so the total is ``want`` and classes keep their shares.

    ``keep_in_rest``: leave at least one row of every class behind (carving validation/test
    out of train); otherwise take at least one of every class when ``want`` allows (capping).
    """
    n = sum(counts.values())
    quota = {c: want * m / n for c, m in counts.items()}
    low = {c: 1 if not keep_in_rest and want >= len(counts) else 0 for c in counts}
    high = {c: m - 1 if keep_in_rest else m for c, m in counts.items()}
    k = {c: min(max(int(quota[c]), low[c]), high[c]) for c in counts}
    while sum(k.values()) < want:
        room = [c for c in sorted(counts) if k[c] < high[c]]
        if not room:
            break
        k[max(room, key=lambda c: quota[c] - k[c])] += 1
    while sum(k.values()) > want:
        k[min((c for c in sorted(counts) if k[c] > low[c]), key=lambda c: quota[c] - k[c])] -= 1
    return k


def _stratified_take(
    rows: list[Row], count: int, rng: np.random.Generator, keep_in_rest: bool = True
) -> tuple[list[Row], list[Row]]:
    """Split ``rows`` into (taken, rest) with ``len(taken) == count`` where possible.

    Stratified by label, deterministic for a given ``rng`` seed; both parts keep file order.
    Rows that came from the same line of the same file (MultiRC: every answer of one passage)
    are never separated: whole lines are taken, in seeded order, until ``count`` is reached, so
    no passage leaks between splits (not stratified in that case).
    """
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault((str(r[2]), r[1]), []).append(i)
    if len(groups) < len(rows):
        return _grouped_take(rows, list(groups.values()), count, rng)
    by_label: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_label.setdefault(r[0].label, []).append(i)
    count = max(0, min(count, len(rows)))
    if not rows:
        return [], []
    alloc = _allocate({c: len(v) for c, v in by_label.items()}, count, keep_in_rest)
    chosen: set[int] = set()
    for label in sorted(by_label):
        idx = by_label[label]
        perm = rng.permutation(len(idx))
        chosen.update(idx[j] for j in perm[: alloc[label]])
    return [rows[i] for i in sorted(chosen)], [r for i, r in enumerate(rows) if i not in chosen]


def _is_grouped(rows: list[Row]) -> bool:
    return len({(str(r[2]), r[1]) for r in rows}) < len(rows)


def _grouped_take(rows: list[Row], groups: list[list[int]], count: int, rng: np.random.Generator) -> tuple[list[Row], list[Row]]:
    count = max(0, min(count, len(rows)))
    chosen: set[int] = set()
    for g in rng.permutation(len(groups)):
        if len(chosen) >= count:
            break
        if len(chosen) + len(groups[g]) > count and chosen and len(chosen) + len(groups[g]) - count > count - len(chosen):
            continue  # this passage would overshoot more than it fills; try a smaller one
        chosen.update(groups[g])
    return [rows[i] for i in sorted(chosen)], [r for i, r in enumerate(rows) if i not in chosen]


def _carve(cfg: TaskConfig, splits_cfg: SplitConfig, data: dict[str, list], notes: list[str]) -> dict[str, list]:
    present = [s for s in SPLITS if data.get(s)]
    missing = [s for s in SPLITS if not data.get(s)]
    if not missing:
        return data
    frac = {"validation": splits_cfg.validation_fraction, "test": splits_cfg.test_fraction}
    how = "whole source lines kept together" if any(_is_grouped(data[s]) for s in present) else "stratified"
    if "train" in missing:
        # Carve validation/test out of the largest split; train is what remains of it.
        source = max(present, key=lambda s: len(data[s]))
        n_source = len(data[source])
        pool = data[source]
        for s in ("validation", "test"):
            if s in missing or s == source:
                taken, pool = _stratified_take(pool, int(round(n_source * frac[s])), _rng(splits_cfg, cfg.name, s))
                data[s] = taken
                notes.append(f"{s} carved from {source} ({frac[s]:.0%}, {how}, seed {splits_cfg.seed})")
        data["train"] = pool
        notes.append(f"train is the rest of {source}")
        return data
    n_train = len(data["train"])
    for s in missing:
        count = int(round(n_train * frac[s]))
        taken, data["train"] = _stratified_take(data["train"], count, _rng(splits_cfg, cfg.name, s))
        data[s] = taken
        notes.append(f"{s} carved from train ({frac[s]:.0%}, {how}, seed {splits_cfg.seed})")
    return data


def _check_label_count(cfg: TaskConfig, data: dict[str, list[Row]]) -> None:
    """Refuse label fields with more distinct values than ``max_labels`` (free text, ids, numbers)."""
    labels: dict[str, tuple[Path, int]] = {}
    for rows in data.values():
        for ex, line, path in rows:
            labels.setdefault(ex.label, (path, line))
    if len(labels) <= cfg.max_labels:
        return
    rows = sum(len(r) for r in data.values())
    path, line = list(labels.values())[cfg.max_labels]
    examples = ", ".join(repr(x[:20]) for x in list(labels)[:3])
    raise DataError(
        f"{len(labels)} distinct labels in {rows} examples (more than max_labels={cfg.max_labels}; "
        f"e.g. {examples}); the label field looks like free text, an id or a regression target, "
        f"and elora fine-tunes classifiers. Point label: at the class column, or raise "
        f"max_labels for this task if the label set really is this large",
        path=path, line=line, field=cfg.label, task=cfg.name,
    )


def load_task(
    cfg: TaskConfig, splits_cfg: SplitConfig, data_root: Path, default_verbalizer: dict[str, str] | None = None
) -> TaskData:
    """Read, validate, carve and cap one task; every problem is a :class:`DataError`.

    ``default_verbalizer``: words for the labels ``cfg.verbalizer`` does not name (a built-in reader's
    defaults when the model is a decoder, see :func:`default_verbalizers`)."""
    notes: list[str] = []
    sources: dict[str, str] = {}
    data: dict[str, list[tuple[Example, int, Path]]] = {}
    builtin = canonical_format(cfg.format)
    if builtin is None and cfg.format.lower() not in GENERIC_FORMATS:
        raise DataError(
            f"unknown format '{cfg.format}' (generic: {list(GENERIC_FORMATS)}; built-in: {sorted(BUILTIN_FORMATS)})",
            task=cfg.name,
        )
    if builtin is not None:
        given = [s for s in SPLITS if getattr(cfg, s)]
        if given:
            raise DataError(
                f"format '{cfg.format}' reads its own files; remove {given} and point path: at the folder instead",
                task=cfg.name,
            )
        folder = Path(localize(cfg.path)) if cfg.path else builtin_default_dir(builtin, data_root)
        for split, (path, records) in read_builtin(builtin, folder, cfg.name).items():
            data[split] = [
                (_make_example(cfg.name, path, line, r["row_id"], r["text"], r["text_pair"], r["label"]), line, path)
                for line, r in records
            ]
            sources[split] = str(path)
    else:
        files = {s: getattr(cfg, s) for s in SPLITS if getattr(cfg, s)}
        if not files:
            raise DataError("no data files: set at least one of train / validation / test (or a built-in format)", task=cfg.name)
        for split, f in files.items():
            data[split] = _examples_from_generic(cfg, Path(localize(f)))
            sources[split] = str(f)
    if not any(data.values()):
        raise DataError("empty task: no examples in any split", task=cfg.name)

    _check_label_count(cfg, data)
    seen: dict[str, tuple[Path, int]] = {}
    for rows in data.values():
        for ex, line, path in rows:
            if ex.sample_id in seen:
                p0, l0 = seen[ex.sample_id]
                raise DataError(f"duplicate sample id '{ex.sample_id}' (also at {p0}:{l0})", path=path, line=line, task=cfg.name)
            seen[ex.sample_id] = (path, line)

    data = _carve(cfg, splits_cfg, data, notes)
    for split, cap in (cfg.max_samples or {}).items():
        if split not in SPLITS:
            raise DataError(f"max_samples: unknown split '{split}' (use {list(SPLITS)})", task=cfg.name)
        if len(data[split]) > cap:
            n = len(data[split])
            data[split], _ = _stratified_take(
                data[split], cap, _rng(splits_cfg, cfg.name, f"cap-{split}"), keep_in_rest=False
            )
            notes.append(f"{split} capped at {len(data[split])} of {n} (seeded, stratified)")

    train_labels = sorted({ex.label for ex, _, _ in data["train"]})
    if cfg.labels is not None:
        allowed = [str(x) for x in cfg.labels]
        for rows in data.values():
            for ex, line, path in rows:
                if ex.label not in allowed:
                    raise DataError(f"unknown label '{ex.label}' (labels: {allowed})", path=path, line=line, field=cfg.label, task=cfg.name)
        labels = allowed
    else:
        labels = train_labels
        for split in ("validation", "test"):
            for ex, line, path in data[split]:
                if ex.label not in labels:
                    raise DataError(f"unknown label '{ex.label}' (train labels: {labels})", path=path, line=line, field=cfg.label, task=cfg.name)
    if not data["train"]:
        raise DataError("empty task: no training examples", task=cfg.name)
    total = sum(len(rows) for rows in data.values())
    for split in ("validation", "test"):
        if not data[split]:
            raise DataError(
                f"the {split} split is empty: the task has only {total} example(s), too few to carve a "
                f"{split} split from (give a {split}: file, or more data)",
                path=sources.get("train") or next(iter(sources.values()), None), task=cfg.name,
            )
    if len(train_labels) < 2:
        raise DataError(f"one-class task: every training label is '{train_labels[0]}'", path=sources.get("train"), task=cfg.name)
    if cfg.verbalizer is not None:
        unknown = set(cfg.verbalizer) - set(labels)
        if unknown:
            raise DataError(f"verbalizer names labels not in the task: {sorted(unknown)} (labels: {labels})", task=cfg.name)
    grouped = any(_is_grouped(data[s]) for s in SPLITS if data.get(s))
    verbalizer = {lab: w for lab, w in (default_verbalizer or {}).items() if lab in labels}
    verbalizer.update(cfg.verbalizer or {})
    return TaskData(
        name=cfg.name,
        labels=labels,
        # one source line, several samples: they share a unit (bootstrap intervals resample units)
        splits={s: [replace(ex, unit=f"{path.name}:{line}") if grouped else ex for ex, line, path in data[s]]
                for s in SPLITS},
        notes=notes,
        sources=sources,
        verbalizer=verbalizer or None,
    )


def default_verbalizers(cfg: RunConfig, model_kind: str | None) -> dict[str, dict[str, str]]:
    """Task name → the built-in reader's default words for the labels its ``verbalizer`` does not
    name, for tasks read by a built-in reader when ``model_kind`` is ``decoder``; ``{}`` otherwise.

    Encoders never score words, so their tasks (and their data fingerprints) stay as they were. The
    kind comes from the caller (``elora_ray.models.registry.check_model_name``): tasks sit below
    models in the layers, so they never look the model up themselves."""
    if model_kind != "decoder":
        return {}
    wanted = {}
    for t in cfg.tasks:
        fmt = canonical_format(t.format)
        if fmt is not None:
            rest = {lab: w for lab, w in builtin_verbalizer(fmt).items() if lab not in (t.verbalizer or {})}
            if rest:
                wanted[t.name] = rest
    return wanted


def load_tasks(cfg: RunConfig, model_kind: str | None = None) -> list[TaskData]:
    """All configured tasks, or the embedded suite when none are configured. ``model_kind``
    (``decoder``/``encoder``): a decoder's built-in-reader tasks get the readers' default words
    (:func:`default_verbalizers`); the prepare stage and ``elora validate`` pass it."""
    if not cfg.tasks:
        from .suite import generate_suite

        return generate_suite(cfg.suite)
    names = [t.name for t in cfg.tasks]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise DataError(f"duplicate task names: {sorted(dup)}")
    defaults = default_verbalizers(cfg, model_kind)
    return [load_task(t, cfg.splits, cfg.resolved_data_root(), defaults.get(t.name)) for t in cfg.tasks]
