"""Turn task configs into validated :class:`TaskData` (fields, labels, ids, splits)."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from ..config import RunConfig, SplitConfig, TaskConfig
from ..errors import DataError
from .builtin import canonical_format, builtin_default_dir, normalize_label, read_builtin
from .readers import read_records
from .schema import SPLITS, Example, TaskData


def _examples_from_generic(cfg: TaskConfig, split: str, path: Path) -> list[tuple[Example, int, Path]]:
    pair_explicit = "text_pair" in cfg.model_fields_set and cfg.text_pair is not None
    out = []
    for line, rec in read_records(path, cfg.format):
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
        row_id = rec.get("idx", rec.get("id", line))
        out.append((_make_example(cfg.name, path, line, row_id, rec[cfg.text], pair, rec[cfg.label], cfg.text, cfg.label), line, path))
    return out


def _make_example(task, path, line, row_id, text, pair, label, text_field="text", label_field="label") -> Example:
    if not isinstance(text, str) or not text.strip():
        raise DataError("text is empty or not a string", path=path, line=line, field=text_field, task=task)
    if pair is not None and not isinstance(pair, str):
        pair = str(pair)
    return Example(
        sample_id=f"{task}/{Path(str(path).split('::')[0]).stem}/{row_id}",
        text=text,
        text_pair=pair if pair else None,
        label=normalize_label(label, path=path, line=line, field=label_field),
    )


def _rng(splits: SplitConfig, name: str, purpose: str) -> np.random.Generator:
    return np.random.default_rng([splits.seed, zlib.crc32(name.encode()), zlib.crc32(purpose.encode())])


def _stratified_take(rows: list, fraction_or_count: float | int, rng: np.random.Generator) -> tuple[list, list]:
    """Split ``rows`` (Example, …) into (taken, rest), stratified by label, deterministic."""
    by_label: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_label.setdefault(r[0].label, []).append(i)
    n_total = len(rows)
    want = fraction_or_count if isinstance(fraction_or_count, int) else int(round(n_total * fraction_or_count))
    want = max(0, min(want, n_total))
    taken: list[int] = []
    for label in sorted(by_label):
        idx = by_label[label]
        perm = rng.permutation(len(idx))
        k = int(round(want * len(idx) / n_total))
        if len(idx) > 1:
            k = min(k, len(idx) - 1)  # keep every class in the remainder when possible
        taken.extend(idx[j] for j in perm[:k])
    chosen = set(taken)
    return [rows[i] for i in sorted(chosen)], [rows[i] for i in range(n_total) if i not in chosen]


def _carve(cfg: TaskConfig, splits_cfg: SplitConfig, data: dict[str, list], notes: list[str]) -> dict[str, list]:
    present = [s for s in SPLITS if data.get(s)]
    missing = [s for s in SPLITS if not data.get(s)]
    if not missing:
        return data
    frac = {"validation": splits_cfg.validation_fraction, "test": splits_cfg.test_fraction}
    if "train" in missing:
        # Carve validation/test out of the largest split; train is what remains of it.
        source = max(present, key=lambda s: len(data[s]))
        n_source = len(data[source])
        pool = data[source]
        for s in ("validation", "test"):
            if s in missing or s == source:
                taken, pool = _stratified_take(pool, int(round(n_source * frac[s])), _rng(splits_cfg, cfg.name, s))
                data[s] = taken
                notes.append(f"{s} carved from {source} ({frac[s]:.0%}, stratified, seed {splits_cfg.seed})")
        data["train"] = pool
        notes.append(f"train is the rest of {source}")
        return data
    n_train = len(data["train"])
    for s in missing:
        count = int(round(n_train * frac[s]))
        taken, data["train"] = _stratified_take(data["train"], count, _rng(splits_cfg, cfg.name, s))
        data[s] = taken
        notes.append(f"{s} carved from train ({frac[s]:.0%}, stratified, seed {splits_cfg.seed})")
    return data


def load_task(cfg: TaskConfig, splits_cfg: SplitConfig, data_root: Path) -> TaskData:
    notes: list[str] = []
    sources: dict[str, str] = {}
    data: dict[str, list[tuple[Example, int, Path]]] = {}
    builtin = canonical_format(cfg.format)
    if builtin is not None:
        folder = Path(cfg.path) if cfg.path else builtin_default_dir(builtin, data_root)
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
            data[split] = _examples_from_generic(cfg, split, Path(f))
            sources[split] = str(f)
    if not any(data.values()):
        raise DataError("empty task: no examples in any split", task=cfg.name)

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
            data[split], _ = _stratified_take(data[split], cap, _rng(splits_cfg, cfg.name, f"cap-{split}"))
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
    if len(train_labels) < 2:
        raise DataError(f"one-class task: every training label is '{train_labels[0]}'", path=sources.get("train"), task=cfg.name)
    if cfg.verbalizer is not None:
        unknown = set(cfg.verbalizer) - set(labels)
        if unknown:
            raise DataError(f"verbalizer names labels not in the task: {sorted(unknown)} (labels: {labels})", task=cfg.name)
    return TaskData(
        name=cfg.name,
        labels=labels,
        splits={s: [ex for ex, _, _ in data[s]] for s in SPLITS},
        notes=notes,
        sources=sources,
        verbalizer=dict(cfg.verbalizer) if cfg.verbalizer else None,
    )


def load_tasks(cfg: RunConfig) -> list[TaskData]:
    """All configured tasks, or the embedded suite when none are configured."""
    if not cfg.tasks:
        from .suite import generate_suite

        return generate_suite(cfg.suite)
    names = [t.name for t in cfg.tasks]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise DataError(f"duplicate task names: {sorted(dup)}")
    return [load_task(t, cfg.splits, cfg.resolved_data_root()) for t in cfg.tasks]
