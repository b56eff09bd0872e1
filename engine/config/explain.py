"""One line per validation error: which file, section and key, what is allowed and what was given.
"""
from __future__ import annotations

import difflib
import math
import types
import typing
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import annotated_types
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

# ---- one line per validation error ---------------------------------------------------------------

def explain(exc: ValidationError, root: type[BaseModel], data: Any, origin: str) -> str:
    """The first error of ``exc`` as one line: file, [section] key, what is allowed, what was given."""
    err = exc.errors()[0]
    model: Any = root
    section: list[str] = []
    key: str | None = None
    field: FieldInfo | None = None
    loc = err["loc"]
    depth = 0
    while depth < len(loc) and key is None:   # walk the sections down to the field the error is in
        part = loc[depth]
        if not isinstance(part, str) or part not in model.model_fields:
            break
        info = model.model_fields[part]
        if _is_section(info.annotation):
            model = info.annotation
            section.append(part)
        elif _is_section(_item(info.annotation)) and depth + 1 < len(loc) and isinstance(loc[depth + 1], int):
            model = _item(info.annotation)                  # one table of a [[name]] list
            section = [f"[{'.'.join([*section, part])}] #{int(loc[depth + 1]) + 1}"]   # [[tracking.lines]] #2
            depth += 1
        else:
            key, field = part, info
        depth += 1
    annotation = field.annotation if field is not None else None
    for part in err["loc"][depth:]:       # into a table of tables: [inference.properties.CPU] KEY
        if typing.get_origin(annotation) is not dict or not isinstance(part, str):
            break
        section += [key] if key is not None else []
        key, annotation, depth = part, typing.get_args(annotation)[1], depth + 1
    label = _label(section)
    given = _lookup(data, err["loc"][:depth])
    if err["type"] == "extra_forbidden" and len(err["loc"]) == depth + 1:
        unknown = str(err["loc"][-1])
        near = difflib.get_close_matches(unknown, model.model_fields, n=1)
        hint = f" (did you mean '{near[0]}'?)" if near else f" (known: {', '.join(model.model_fields)})"
        return f"{origin}: {label} unknown key '{unknown}'{hint}"
    if key is None:
        if not section and err["type"] == "value_error":      # a rule across sections
            return f"{origin}: {_reason(err)}"
        if err["type"] in ("model_type", "model_attributes_type", "dict_type"):
            return f"{origin}: {label} must be a table, not {_show(given)}"
        return f"{origin}: {label} {_reason(err)}"
    if err["type"] == "value_error":
        if isinstance(given, dict):                            # a rule about a key inside a table
            return f"{origin}: [{'.'.join([*section, key])}] {_reason(err)}"
        return f"{origin}: {label} {key} {_reason(err)}, not {_show(given)}"
    metadata = field.metadata if field is not None and annotation is field.annotation else []
    return f"{origin}: {label} {key} must be {describe(annotation, metadata)}, not {_show(given)}"


def _is_section(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _item(annotation: Any) -> Any:
    """The item type of ``list[X]``, else None."""
    return typing.get_args(annotation)[0] if typing.get_origin(annotation) is list else None


def _label(section: list[str]) -> str:
    """``[a.b]``, or ``[[sources]] #2`` inside a list of tables; ``top level`` for none."""
    if not section:
        return "top level"
    if section[0].startswith("["):
        head, *rest = section
        name, _, index = head[1:].partition("] ")
        return f"[[{name}]] {index}".strip() + "".join(f" [{part}]" for part in rest)
    return f"[{'.'.join(section)}]"


def _reason(err: Mapping[str, Any]) -> str:
    error = (err.get("ctx") or {}).get("error")
    return str(error) if error is not None else err["msg"][:1].lower() + err["msg"][1:]


def _lookup(data: Any, path: tuple) -> Any:
    for part in path:
        if isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data):
            data = data[part]
        elif isinstance(data, dict) and part in data:
            data = data[part]
        else:
            return None
    return data


def _show(value: Any) -> str:
    """A value as the user wrote it in TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "a table"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def describe(annotation: Any, metadata: list | tuple = ()) -> str:
    """What a field accepts, in words: 'an integer from 1 to 256', 'one of 'a', 'b''."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        inner, *extra = typing.get_args(annotation)
        more = [m for e in extra for m in (e.metadata if isinstance(e, FieldInfo) else [e])]
        return describe(inner, [*metadata, *more])
    if origin is Literal:
        return "one of " + ", ".join(repr(v) for v in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(a) for a in typing.get_args(annotation))
    if origin is list:
        (item,) = typing.get_args(annotation)
        each = describe(item)
        if each.startswith(("a string", "a non-empty string")):
            return f"a list{_length(metadata)} of {each[2:]}s"
        return f"a list{_length(metadata)}, each {each}"
    if origin is dict or _is_section(annotation):
        return "a table"
    if annotation is bool:
        return "true or false"
    if annotation is str:
        return "a non-empty string" if any(isinstance(m, annotated_types.MinLen) and m.min_length for m in metadata) \
            else "a string"
    if annotation in (int, float):
        kind = "an integer" if annotation is int else "a finite number"
        return kind + _range(metadata)
    return getattr(annotation, "__name__", str(annotation))


def _range(metadata: list | tuple) -> str:
    low = high = ""
    for m in metadata:
        if isinstance(m, annotated_types.Ge):
            low = f">= {_num(m.ge)}"
        elif isinstance(m, annotated_types.Gt):
            low = f"> {_num(m.gt)}"
        elif isinstance(m, annotated_types.Le):
            high = f"<= {_num(m.le)}"
        elif isinstance(m, annotated_types.Lt):
            high = f"< {_num(m.lt)}"
    if low.startswith(">=") and high.startswith("<="):
        return f" from {low[3:]} to {high[3:]}"
    return "".join(f" {part}" for part in (low, "and" if low and high else "", high) if part)


def _num(value: Any) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def _length(metadata: list | tuple) -> str:
    low = next((m.min_length for m in metadata if isinstance(m, annotated_types.MinLen)), 0)
    high = next((m.max_length for m in metadata if isinstance(m, annotated_types.MaxLen)), None)
    if low and high:
        return f" of {low} to {high} items"
    if high is not None:
        return f" of at most {high} items"
    return f" of at least {low} item{'s' * (low > 1)}" if low else ""
