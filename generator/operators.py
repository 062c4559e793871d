"""The Operators index page: every proposed op and helper function in the project's domain.

Found, not listed by hand: every :class:`generator.opspec.OpSchema` at module level in a
proposal module, and every onnxscript function in the proposal domain. Benchmark
modules (``bench.py``, ``bench_*.py``) are skipped: their functions are timing variants.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from generator.onnx_build import PROPOSAL_DOMAIN
from generator.opspec import OpSchema, function_text

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Helper:
    """An onnxscript function in the proposal domain that a proposed op's body calls."""

    name: str
    topic: str
    module: str
    version: int
    summary: str
    text: str  # onnx.printer text of its FunctionProto


def _modules(marker: str) -> list[tuple[str, str]]:
    """(topic, module name) of the proposal modules whose source contains ``marker``."""
    found = []
    for path in sorted((ROOT / "proposals").glob("*/*.py")):
        if path.name.startswith(("bench", "test_")) or marker not in path.read_text():
            continue
        found.append((path.parent.name, f"proposals.{path.parent.name}.{path.stem}"))
    return found


def schemas() -> list[tuple[str, str, OpSchema]]:
    """(topic, defining module, schema) of every proposed op, by name."""
    seen: dict[str, tuple[str, str, OpSchema]] = {}
    for topic, name in _modules("OpSchema("):
        for value in vars(importlib.import_module(name)).values():
            if isinstance(value, OpSchema) and value.domain == PROPOSAL_DOMAIN:
                seen.setdefault(value.name, (topic, name, value))
    return sorted(seen.values(), key=lambda item: item[2].name)


def helpers(exclude: set[str]) -> list[Helper]:
    """Every onnxscript function in the proposal domain whose name is not in ``exclude``."""
    from onnxscript.values import OnnxFunction

    seen: dict[str, Helper] = {}
    for topic, name in _modules("@script("):
        for value in vars(importlib.import_module(name)).values():
            if not isinstance(value, OnnxFunction) or value.opset.domain != PROPOSAL_DOMAIN:
                continue
            if value.name in exclude or value.name in seen:
                continue
            doc = (value.function.__doc__ or "").strip()
            summary = " ".join(doc.split("\n\n")[0].split()) if doc else ""
            proto = value.to_function_proto()
            seen[value.name] = Helper(value.name, topic, name, value.opset.version, summary, function_text(proto))
    return sorted(seen.values(), key=lambda h: h.name)


def _spec_page(topic: str, module: str) -> str:
    """The page (relative to docs/operators.md) that renders an op's spec: the topic's page
    whose generated marker names the schema's own module, else its spec.md or README.md."""
    folder = ROOT / "proposals" / topic
    for page in sorted(folder.glob("*.md")):
        if f"<!-- generated: {module}:" in page.read_text():
            return f"proposals/{topic}/{page.name}"
    return f"proposals/{topic}/{'spec.md' if (folder / 'spec.md').exists() else 'README.md'}"


def _cell(text: str) -> str:
    return text.replace("|", "/").replace("\n", " ")


def operators_markdown() -> str:
    """The index: ops, then helper functions, each with summary, version and a link."""
    ops = schemas()
    lines = [
        f"## Operators in `{PROPOSAL_DOMAIN}`",
        "",
        "| op | since version | summary | inputs → outputs | spec |",
        "|---|--:|---|---|---|",
    ]
    for topic, module, schema in ops:
        io = f"{len(schema.inputs)} → {len(schema.outputs)}"
        link = f"[{schema.qualified_name}]({_spec_page(topic, module)}#{schema.qualified_name})"
        lines.append(f"| `{schema.name}` | {schema.since_version} | {_cell(schema.summary)} | {io} | {link} |")
    pieces = helpers({schema.name for _, _, schema in ops})
    lines += [
        "",
        "## Helper functions",
        "",
        "Functions in the same domain that a proposed op's body calls. They ship as model-local",
        "functions beside the op's body; only the proposed ops above are meant for exporters.",
        "",
        "| function | version | summary | defined in |",
        "|---|--:|---|---|",
    ]
    for helper in pieces:
        anchor = f"{PROPOSAL_DOMAIN}.{helper.name}"
        source = f"`{helper.module.replace('.', '/')}.py`"
        lines.append(
            f"| [`{helper.name}`](#{anchor}) | {helper.version} | {_cell(helper.summary) or '—'} | "
            f"{source}, [{helper.topic}](proposals/{helper.topic}/README.md) |"
        )
    lines += ["", "### Helper function bodies", ""]
    for helper in pieces:
        lines += [
            f'<a id="{PROPOSAL_DOMAIN}.{helper.name}"></a>',
            "",
            f'??? abstract "`{helper.name}`: {helper.summary.replace(chr(34), chr(39))[:120]}"',
            "",
            "    ```",
            *[f"    {line}" for line in helper.text.rstrip().splitlines()],
            "    ```",
            "",
        ]
    return "\n".join(lines) + "\n"
