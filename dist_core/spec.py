"""Job files: load, apply ``--set`` overrides, validate against the kind's schema, report one line.

``load(path, overrides)`` returns a validated job or raises ``SpecError`` whose text is exactly
one line, e.g. ``jobs/x.yaml:14: bilevel.lower.lr: must be > 0, got -0.1``. The schema of each
kind lives in its capability's ``config.py`` and is found through ``kinds.py``; this module knows
no kind. Relative paths in a job file are taken from the invoking directory, and each schema's
path fields make them absolute before any Ray worker sees them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from . import kinds
from .errors import SpecError
from .spec_errors import data_path, line_of, model_at, reason
from .specbase import JobBase

Job = JobBase  # every kind's job model subclasses it


def load(path: str | Path, overrides: list[str] | None = None) -> JobBase:
    """Read, override and validate a job file; any mistake raises a one-line ``SpecError``."""
    shown = str(path)
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise SpecError(shown, 1, "file", "no such file") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as e:
        raise SpecError(shown, 1, "file", f"cannot read ({type(e).__name__})") from None
    return load_text(text, shown, overrides, job_file=Path(path))


def load_text(text: str, shown: str, overrides: list[str] | None = None, job_file: Path | None = None) -> JobBase:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise SpecError(shown, line, "yaml", f"invalid YAML: {problem}") from None
    if not isinstance(data, dict):
        raise SpecError(shown, 1, "(top)", f"a job file is a mapping of fields, got {type(data).__name__}")
    set_keys = _apply_overrides(data, overrides or [], shown)

    kind = data.get("kind")
    valid = ", ".join(kinds.names())
    if kind is None:
        raise SpecError(shown, 1, "kind", f"required field missing (valid kinds: {valid})")
    if kind not in kinds.names():
        raise SpecError(shown, line_of(root, ["kind"]), "kind", f"unknown kind {kind!r} (valid: {valid})")
    model = kinds.schema(kind)
    try:
        job = model.model_validate(data, context={"job_file": job_file})
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        path = data_path(data, err["loc"])
        if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
            path.append(err.get("ctx", {}).get("discriminator", "name").strip("'"))
        field = ".".join(str(p) for p in path) or "(top)"
        why = reason(err, model_at(model, data, path))
        if field in set_keys or any(field.startswith(k + ".") for k in set_keys):
            why += " (from --set)"
        raise SpecError(shown, line_of(root, path), field, why) from None
    job.post_validate(lambda where: line_of(root, where), shown)
    return job


def dump(job: JobBase) -> str:
    """The resolved job as YAML (every default filled in), for the run directory."""
    return yaml.safe_dump(job.model_dump(mode="json"), sort_keys=False)


def yaml_value(value: Any) -> str:
    """A value as ``--set`` text: JSON is YAML, and keeps strings, numbers and mappings exact."""
    return json.dumps(value)


def _apply_overrides(data: dict, overrides: list[str], shown: str) -> set[str]:
    """``a.b.c=value`` sets a nested field; a numeric part indexes a list (``diffusion.psi0.1=0.9``)."""
    keys = set()
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise SpecError(shown, 1, "--set", f"expected dotted.key=value, got {item!r}")
        key = key.strip()
        parts: list[Any] = key.split(".")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            raise SpecError(shown, 1, key, f"cannot parse --set value {raw!r}") from None
        node: Any = data
        for i, p in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list):
                if not (p.isdigit() and int(p) < len(node)):
                    raise SpecError(shown, 1, key, f"{p!r} is not an index of a list of {len(node)}")
                p = int(p)
            elif not last and not isinstance(node.get(p), (dict, list)):
                node[p] = {}
            if last:
                node[p] = value
            else:
                node = node[p]
        keys.add(key)
    return keys
