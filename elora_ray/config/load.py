"""Loading a config: YAML + ``--set key=value`` overrides, validated, paths resolved; and dumping it."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ..errors import ConfigError
from ..io import is_uri
from .run import RunConfig
from .sections import verbalizer_problem


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid configuration"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif "input" in e and e["type"] not in ("missing",):
            msg = f"{msg} (got {e['input']!r})"
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def _mapping_value(node: Any, key: str) -> Any:
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.value == key:
                return v
    return None


def _verbalizer_nodes(text: str) -> dict[int, list[tuple[Any, Any]]]:
    """Task index → the (label node, word node) pairs of its ``verbalizer`` as written in the YAML text
    (for what was written there and on which line); ``{}`` when the text has none or does not compose."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return {}
    tasks = _mapping_value(root, "tasks")
    out = {}
    for i, task in enumerate(tasks.value if isinstance(tasks, yaml.SequenceNode) else []):
        verbalizer = _mapping_value(task, "verbalizer")
        if isinstance(verbalizer, yaml.MappingNode):
            out[i] = [(k, v) for k, v in verbalizer.value
                      if isinstance(k, yaml.ScalarNode) and isinstance(v, yaml.ScalarNode)]
    return out


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


def _check_verbalizers(data: dict[str, Any], text: str | None, source: str) -> None:
    """A verbalizer word (or label) that YAML read as a boolean or a number is an error naming the task,
    the label and the file's line, and saying to quote it (``yes``/``no`` are YAML booleans)."""
    tasks = data.get("tasks")
    if not isinstance(tasks, list):
        return
    nodes = None
    for i, task in enumerate(tasks):
        verbalizer = task.get("verbalizer") if isinstance(task, dict) else None
        if not isinstance(verbalizer, dict):
            continue
        for label, word in verbalizer.items():
            if verbalizer_problem(label, word) is None:
                continue
            if nodes is None:
                nodes = _verbalizer_nodes(text) if text else {}
            label_text = word_text = line = None
            loader = yaml.SafeLoader("")
            for k, v in nodes.get(i, []):
                if _same(loader.construct_object(k), label):  # the file's entry (unless an override replaced it)
                    label_text, line = k.value, k.start_mark.line + 1
                    if _same(loader.construct_object(v), word):
                        word_text, line = v.value, v.start_mark.line + 1
                    break
            name = task.get("name")
            where = f"tasks[{i}]" + (f" ({name})" if isinstance(name, str) else "")
            problem = verbalizer_problem(label, word, label_text, word_text)
            at = f"{source}:{line}" if line is not None else source
            raise ConfigError(f"{at}: {where}.verbalizer{'' if problem.startswith('[') else ': '}{problem}")


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``a.b.0.c=value``; the value is read as YAML (``8`` → int, ``[q,v]`` → list)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"--set {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: value is not valid YAML: {exc}") from None
    return key.split("."), value


def apply_override(data: dict[str, Any], path: list[str], value: Any) -> None:
    node: Any = data
    for i, part in enumerate(path[:-1]):
        where = ".".join(path[: i + 1])
        if isinstance(node, list):
            idx = _list_index(node, part, where)
            node = node[idx]
        elif isinstance(node, dict):
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
        else:
            raise ConfigError(f"--set {'.'.join(path)}: '{where}' is not a section")
    last = path[-1]
    if isinstance(node, list):
        node[_list_index(node, last, ".".join(path))] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError(f"--set {'.'.join(path)}: parent is not a section")


def _list_index(node: list, part: str, where: str) -> int:
    try:
        idx = int(part)
    except ValueError:
        raise ConfigError(f"--set: '{where}' indexes a list; use a number") from None
    if not -len(node) <= idx < len(node):
        raise ConfigError(f"--set: '{where}' is out of range (list has {len(node)} items)")
    return idx


def _resolve_paths(cfg: RunConfig, base: Path) -> RunConfig:
    def fix(p: str | None) -> str | None:
        if p is None or is_uri(p):  # object storage: kept as written
            return p
        q = Path(os.path.expanduser(p))
        return os.path.normpath(q if q.is_absolute() else (base / q))

    for t in [*cfg.tasks, *cfg.federated.sources]:
        t.train, t.validation, t.test, t.path = fix(t.train), fix(t.validation), fix(t.test), fix(t.path)
    if cfg.data_root is not None:
        cfg.data_root = fix(cfg.data_root)
    cfg.federated.source = fix(cfg.federated.source)
    if cfg.model.name_or_path not in ("default", "smollm2") and not cfg.model.name_or_path.startswith("tiny-"):
        cand = base / os.path.expanduser(cfg.model.name_or_path)
        if cand.exists():
            cfg.model.name_or_path = str(cand)
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read, override and validate a configuration. ``path=None`` gives the embedded default."""
    data: dict[str, Any] = {}
    source = "<embedded default>"
    text = None
    base = Path.cwd()
    if path is not None:
        p = Path(path)
        source = str(p)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            text = p.read_text(encoding="utf-8")
            loaded = yaml.safe_load(text)
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{p}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
            raise ConfigError(f"{p}{where}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: the top level must be a mapping, got {type(loaded).__name__}")
        data = loaded
        base = p.resolve().parent
    data = copy.deepcopy(data)
    for text in overrides or []:
        keys, value = parse_override(text)
        apply_override(data, keys, value)
    _check_verbalizers(data, text, source)
    try:
        cfg = RunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source)) from None
    return _resolve_paths(cfg, base)


def dump_config(cfg: RunConfig) -> str:
    """The resolved config as YAML, every default filled in, except in task entries: those keep only what
    was given, so reading the file back means the same (a field named by the user must exist in every
    record, e.g. ``text_pair``; its default is only used when present)."""
    data = cfg.model_dump(mode="json")
    data["tasks"] = [t.model_dump(mode="json", exclude_unset=True) for t in cfg.tasks]
    return yaml.safe_dump(data, sort_keys=False)
