"""Turning a pydantic error and a YAML node tree into ``file:line: field: reason``.

``line_of`` finds the line of a dotted path in the composed YAML; ``data_path`` strips the union
tags pydantic inserts into locations; ``reason`` words each error type the way a person reads it
("must be > 0.0, got -0.1", "unknown field (valid: ...)").
"""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import BaseModel


def data_path(data: Any, loc: tuple) -> list:
    """Pydantic's location minus the union tags it inserts (``method.penalty.gamma``)."""
    out, node = [], data
    for part in loc:
        if isinstance(node, dict) and part in node:
            out.append(part)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            out.append(part)
            node = node[part]
        elif isinstance(node, dict) and part not in node and not is_tag(node, part):
            out.append(part)  # a missing field: name it
            node = None
    return out


def is_tag(node: dict, part: Any) -> bool:
    return isinstance(part, str) and node.get("name") == part


def line_of(root: yaml.Node | None, path: list) -> int:
    """1-based line of the deepest node of ``path`` present in the YAML (the key's own line)."""
    line = 1 if root is None else root.start_mark.line + 1
    node = root
    for part in path:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if k.value == str(part):
                    line, node = k.start_mark.line + 1, v
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def model_at(model: type[BaseModel], data: Any, path: list) -> type[BaseModel] | None:
    """The pydantic model class that holds the field at ``path[-1]`` (for 'valid fields' hints)."""
    cur: Any = model
    for part in path[:-1]:
        if not (isinstance(cur, type) and issubclass(cur, BaseModel)) or part not in cur.model_fields:
            return None
        data = data.get(part) if isinstance(data, dict) else None
        cur = pick_model(cur.model_fields[part].annotation, data)
    return cur if isinstance(cur, type) and issubclass(cur, BaseModel) else None


def pick_model(ann: Any, data: Any) -> Any:
    """The model inside an annotation; for a tagged union, the member whose ``name`` matches."""
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    members = [m for arg in getattr(ann, "__args__", ()) if (m := pick_model(arg, data)) is not None]
    tag = data.get("name") if isinstance(data, dict) else None
    for m in members:
        field = m.model_fields.get("name")
        if field is not None and tag in getattr(field.annotation, "__args__", ()):
            return m
    return members[0] if members else None


def reason(err: dict, holder: type[BaseModel] | None) -> str:
    t, ctx, got = err["type"], err.get("ctx", {}), err.get("input")
    bounds = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
    if t in bounds:
        bound = next(iter(ctx.values()))
        return f"must be {bounds[t]} {bound}, got {got!r}"
    if t == "extra_forbidden":
        valid = f" (valid: {', '.join(holder.model_fields)})" if holder is not None else ""
        return f"unknown field{valid}"
    if t == "missing":
        return "required field missing"
    if t == "literal_error":
        return f"must be one of {ctx.get('expected')}, got {got!r}"
    if t == "union_tag_invalid":
        expected = str(ctx.get("expected_tags", "")).replace("'", "")
        return f"unknown {ctx.get('tag')!r} (valid: {expected})"
    if t == "union_tag_not_found":
        return f"needs a {ctx.get('discriminator')!s} field"
    if t.startswith("int_"):
        return f"must be an integer, got {got!r}"
    if t.startswith("float_"):
        return f"must be a number, got {got!r}"
    if t.startswith("bool_"):
        return f"must be true or false, got {got!r}"
    if t.startswith("string_type"):
        return f"must be a string, got {got!r}"
    if t == "string_pattern_mismatch":
        return f"must match {ctx.get('pattern')}, got {got!r}"
    if t == "string_too_long":
        return f"must be at most {ctx.get('max_length')} characters"
    if t in ("dict_type", "model_type", "model_attributes_type"):
        return f"must be a mapping, got {got!r}"
    if t in ("path_not_file", "path_not_exists"):
        return f"no such file: {got}"
    msg = err["msg"].removeprefix("Value error, ")
    if t == "value_error":  # our own validators already name the offending values
        return msg
    return f"{msg[:1].lower()}{msg[1:]}, got {got!r}"
