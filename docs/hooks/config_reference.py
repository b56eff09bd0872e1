"""MkDocs hooks: the configuration reference generated from the pydantic schema, and Sphinx roles.

``on_page_markdown`` replaces the marker ``<!-- ovstream:config-reference -->`` with one table per
config section, walked from :class:`engine.config.RunConfig` at build time: every key, its type, its
default, what it accepts (``ge``/``gt``/``le``/``lt``, lengths, ``Literal`` choices, and the messages
of the field's own validators) and what it means (the field's ``description``, else the comment
written beside the field in the schema's source). The schema stays the one place a key is defined.

``on_page_content`` tidies the reST of the docstrings that mkdocstrings renders: Sphinx roles
(``:class:`x```) become plain code spans, a lone ``::`` before a literal block goes.
"""
from __future__ import annotations

import ast
import inspect
import io
import re
import sys
import textwrap
import tokenize
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

MARKER = "<!-- ovstream:config-reference -->"


def on_config(config: Any) -> Any:
    root = str(Path(config.config_file_path).resolve().parent)
    if root not in sys.path:
        sys.path.insert(0, root)       # the checkout's `engine`, also without an installed package
    return config


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, config_reference())


_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|exc|obj|const):<code>~?([^<]+)</code>")


def on_page_content(html: str, page: Any, config: Any, files: Any) -> str:
    html = _ROLE.sub(lambda m: f"<code>{m.group(1)}</code>", html)
    html = html.replace("</code>\\ s", "</code>s")          # reST's ``Name``\\ s: a plural
    return html.replace("<p>::</p>", "")                      # reST's literal-block marker


# ---- the reference ------------------------------------------------------------------------------

def config_reference() -> str:
    from pydantic import BaseModel

    from engine.config import RunConfig

    out: list[str] = []

    def section(model: type[BaseModel], title: str) -> None:
        comments = field_comments(model)
        rules = validator_messages(model)
        doc = inspect.cleandoc(model.__doc__ or "")
        out.append(f"### `{title}`\n")
        if doc:
            out.append(doc.replace("``", "`") + "\n")
        rows = ["| key | type | default | accepts | meaning |", "| --- | --- | --- | --- | --- |"]
        nested: list[tuple[type[BaseModel], str]] = []
        for name, info in model.model_fields.items():
            kind = section_type(info.annotation)
            if kind is not None:                  # a table inside this one: its own section below
                nested.append((kind, f"[{title[1:-1]}.{name}]"))
                continue
            meaning = info.description or comments.get(name, "")
            accepts = "; ".join(filter(None, [constraints(info.annotation, info.metadata), *rules.get(name, [])]))
            rows.append(f"| `{name}` | {_cell(type_name(info.annotation))} | {_cell(default_of(info))} | "
                        f"{_cell(accepts)} | {_cell(meaning)} |")
        if len(rows) > 2:
            out.append("\n".join(rows) + "\n")
        if rules.get(""):
            out.append("Checked across keys: " + "; ".join(rules[""]) + ".\n")
        for kind, sub_title in nested:
            section(kind, sub_title)

    for name, info in RunConfig.model_fields.items():
        kind = section_type(info.annotation)
        if kind is None:
            continue
        if typing.get_origin(info.annotation) is list:
            one = name[:-1]
            out.append(f"### `[[{name}]]`\n\nSeveral streams: a list of tables (at most {max_length(info.metadata)}), "
                       f"each with the keys of `[{one}]`; an entry takes the keys it does not set from `[{one}]` "
                       f"(all but `uri`, `name` and `start`).\n")
        else:
            section(kind, f"[{name}]")
    rules = validator_messages(RunConfig).get("", [])
    if rules:
        out.append("### Across sections\n\n" + "\n".join(f"- {r}" for r in rules) + "\n")
    return "\n".join(out)


def section_type(annotation: Any) -> type | None:
    """The section model a field holds (itself, or as the items of a list), else None."""
    from pydantic import BaseModel

    if typing.get_origin(annotation) is list:
        annotation = typing.get_args(annotation)[0]
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _unwrap(annotation: Any) -> tuple[Any, list]:
    """``Annotated[inner, Field(...)]`` → inner and its constraint metadata."""
    meta: list = []
    while typing.get_origin(annotation) is Annotated:
        annotation, *extra = typing.get_args(annotation)
        for item in extra:
            meta.extend(getattr(item, "metadata", None) or [item])
    return annotation, meta


def type_name(annotation: Any) -> str:
    """A field's type in TOML's words."""
    annotation, _ = _unwrap(annotation)
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return "one of " + ", ".join(f"`{_toml(v)}`" for v in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(annotation))
    if origin is list:
        return f"array of {type_name(typing.get_args(annotation)[0])}"
    if origin is dict:
        _, value = typing.get_args(annotation)
        if value is Any:
            return "table"
        return f"table of {type_name(value)}"
    return {bool: "boolean", int: "integer", float: "float", str: "string"}.get(annotation, "any")


def constraints(annotation: Any, metadata: list) -> str:
    """Bounds from the field's metadata, and those of a list's items."""
    import annotated_types as at

    parts = []
    for m in metadata:
        if isinstance(m, at.Ge):
            parts.append(f"≥ {_num(m.ge)}")
        elif isinstance(m, at.Gt):
            parts.append(f"> {_num(m.gt)}")
        elif isinstance(m, at.Le):
            parts.append(f"≤ {_num(m.le)}")
        elif isinstance(m, at.Lt):
            parts.append(f"< {_num(m.lt)}")
        elif isinstance(m, at.MinLen) and m.min_length:
            parts.append("not empty" if m.min_length == 1 else f"at least {m.min_length} items")
        elif isinstance(m, at.MaxLen):
            parts.append(f"at most {m.max_length} items")
    inner, own = _unwrap(annotation)
    if own:
        parts.append(constraints(inner, own))
    if typing.get_origin(inner) is list:
        each = constraints(typing.get_args(inner)[0], [])
        if each:
            parts.append(f"each {each}")
    return ", ".join(p for p in parts if p)


def max_length(metadata: list) -> str:
    import annotated_types as at

    return next((str(m.max_length) for m in metadata if isinstance(m, at.MaxLen)), "any number")


def default_of(info: Any) -> str:
    from pydantic_core import PydanticUndefined

    value = info.default_factory() if info.default_factory is not None else info.default
    if value is PydanticUndefined:
        return "required"
    if hasattr(value, "model_dump"):
        return "(table)"
    return f"`{_toml(value)}`"


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, float):
        return repr(value) if value != int(value) or abs(value) >= 1e16 else f"{value:.1f}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    return str(value)


def _num(value: float) -> str:
    if value == int(value) and abs(value) >= 10_000:
        return f"{int(value):,}".replace(",", " ")
    return f"{value:g}"


# ---- what the schema's source says beside each field ---------------------------------------------

def _class_source(model: type) -> tuple[ast.ClassDef, list[str]] | None:
    try:
        lines, _ = inspect.getsourcelines(model)
    except (OSError, TypeError):
        return None
    source = textwrap.dedent("".join(lines))
    node = ast.parse(source).body[0]
    return (node, source.splitlines()) if isinstance(node, ast.ClassDef) else None


def field_comments(model: type) -> dict[str, str]:
    """``{field: comment}``: the ``#`` comment on a field's line(s) and the comment-only lines
    right after it (a comment continued below the field)."""
    found = _class_source(model)
    if found is None:
        return {}
    node, lines = found
    comments: dict[int, str] = {}
    tokens = tokenize.generate_tokens(io.StringIO("\n".join(lines) + "\n").readline)
    for tok in tokens:
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    out: dict[str, str] = {}
    for stmt in node.body:
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        texts = [comments[n] for n in range(stmt.lineno, (stmt.end_lineno or stmt.lineno) + 1) if n in comments]
        after = (stmt.end_lineno or stmt.lineno) + 1
        while after in comments and lines[after - 1].lstrip().startswith("#"):
            texts.append(comments[after])
            after += 1
        if texts:
            out[stmt.target.id] = _constants(_markdown(" ".join(texts)), sys.modules[model.__module__])
    return out


def _constants(text: str, module: types.ModuleType) -> str:
    """A comment's ``NAME`` of a module-level tuple of strings, spelled out: ``one of ADAPTERS``."""
    def spell(m: re.Match) -> str:
        value = getattr(module, m.group(0), None)
        if isinstance(value, (tuple, list)) and value and all(isinstance(v, str) for v in value):
            return ", ".join(f"`{v}`" for v in value)
        return m.group(0)
    return re.sub(r"\b[A-Z][A-Z0-9_]{2,}\b", spell, text)


def validator_messages(model: type) -> dict[str, list[str]]:
    """``{field: [message]}`` from the ``raise ValueError("...")`` of the class's field validators
    (plain strings only: a formatted one reads as a riddle without its values); key ``""``: those
    of its model validators (cross-field rules, f-strings too)."""
    found = _class_source(model)
    if found is None:
        return {}
    node, _ = found
    out: dict[str, list[str]] = {}
    for stmt in node.body:
        if not isinstance(stmt, ast.FunctionDef):
            continue
        targets: list[str] | None = None
        for deco in stmt.decorator_list:
            if isinstance(deco, ast.Call) and getattr(deco.func, "id", "") == "field_validator":
                targets = [a.value for a in deco.args if isinstance(a, ast.Constant)]
            elif isinstance(deco, ast.Call) and getattr(deco.func, "id", "") == "model_validator":
                targets = [""]
        if targets is None:
            continue
        messages = []
        for sub in ast.walk(stmt):
            if isinstance(sub, ast.Raise) and isinstance(sub.exc, ast.Call) \
                    and getattr(sub.exc.func, "id", "") == "ValueError" and sub.exc.args:
                text = _message(sub.exc.args[0], formatted=targets == [""])
                if text:
                    messages.append(text)
        for target in targets:
            out.setdefault(target, []).extend(messages)
    return out


def _message(node: ast.expr, formatted: bool) -> str:
    """A message's text: a plain string as it is; an f-string (only where ``formatted``) with its
    placeholders as `<name>` or …"""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return _markdown(node.value)
    if isinstance(node, ast.JoinedStr) and formatted:
        return _markdown("".join(v.value if isinstance(v, ast.Constant) else _placeholder(v) for v in node.values))
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _message(node.left, formatted) + _message(node.right, formatted)
    return ""


def _placeholder(node: ast.expr) -> str:
    """An f-string's ``{name}`` as `<name>`; anything longer as …"""
    value = getattr(node, "value", None)
    return f"`<{value.id}>`" if isinstance(value, ast.Name) else "…"


def _markdown(text: str) -> str:
    return text.replace("``", "`")


def _cell(text: str) -> str:
    """Text for a table cell: a ``|`` would end the cell."""
    return text.replace("|", "\\|")
