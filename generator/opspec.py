"""Proposed operators, defined once in Python and rendered like onnx's ``Operators.md``.

A proposal declares its op as an :class:`OpSchema`. The same object validates the
attributes of nodes that builders emit (one clear error per bad attribute) and
renders the spec page, together with the op's function body and zoo examples.
onnx's Python-registered schemas cannot carry a function body (onnx 1.23), so the
body ships as a model-local function and is printed here beside the schema.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import onnx_ir as ir
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from onnx import helper
from onnxscript import OpBuilder, TapeBuilder

from generator.errors import UsageError
from generator.registry import CaseSpec

_TEMPLATES = Path(__file__).resolve().parent / "templates"


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED = _Required()

_PY_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "float": (float, int),
    "string": (str,),
    "ints": (int,),
    "floats": (float, int),
    "strings": (str,),
}


@dataclass(frozen=True)
class Attribute:
    """An attribute: ONNX type name (``int``, ``float``, ``string``, ``ints``, ...)."""

    name: str
    type: str
    doc: str
    default: object = REQUIRED
    allowed: tuple = ()

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def check(self, op: str, value: object) -> object:
        """The value if it fits this attribute, else a UsageError saying what is valid."""
        scalar_types = _PY_TYPES[self.type]
        is_list = self.type.endswith("s") and self.type != "string"
        items = list(value) if is_list and isinstance(value, (list, tuple)) else [value]
        fits = (is_list == isinstance(value, (list, tuple))) and all(
            isinstance(v, scalar_types) and not isinstance(v, bool) for v in items
        )
        if not fits:
            raise UsageError(f"invalid attribute {self.name}={value!r} for {op}: expected {self.type}")
        if self.allowed and any(v not in self.allowed for v in items):
            valid = ", ".join(repr(a) for a in self.allowed)
            raise UsageError(f"invalid attribute {self.name}={value!r} for {op}; valid: {valid}")
        return value


@dataclass(frozen=True)
class Parameter:
    """An input or output: its type (a constraint name or a concrete type) and shape."""

    name: str
    type: str
    shape: str
    doc: str
    optional: bool = False


@dataclass(frozen=True)
class TypeConstraint:
    name: str
    types: tuple[str, ...]
    doc: str


@dataclass(frozen=True)
class OpSchema:
    """One proposed operator."""

    name: str
    domain: str
    since_version: int
    summary: str
    doc: str
    attributes: tuple[Attribute, ...] = ()
    inputs: tuple[Parameter, ...] = ()
    outputs: tuple[Parameter, ...] = ()
    type_constraints: tuple[TypeConstraint, ...] = ()
    notes: Mapping[str, str] = field(default_factory=dict)

    @property
    def qualified_name(self) -> str:
        return f"{self.domain}.{self.name}"

    def attribute(self, name: str) -> Attribute:
        for attr in self.attributes:
            if attr.name == name:
                return attr
        valid = ", ".join(a.name for a in self.attributes)
        raise UsageError(f"unknown attribute {name!r} for {self.qualified_name}; valid: {valid}")

    def resolve(self, given: Mapping[str, object]) -> dict[str, object]:
        """Every attribute's value: the given ones checked, the others at their defaults."""
        for name in given:
            self.attribute(name)
        values = {}
        for attr in self.attributes:
            if attr.name in given:
                values[attr.name] = attr.check(self.qualified_name, given[attr.name])
            elif attr.required:
                raise UsageError(f"attribute {attr.name!r} of {self.qualified_name} is required")
            else:
                values[attr.name] = attr.default
        return values

    def _check_call(self, inputs: Sequence[object], attrs: Mapping[str, object]) -> None:
        self.resolve(attrs)
        max_inputs = len(self.inputs)
        min_inputs = sum(1 for p in self.inputs if not p.optional)
        if not min_inputs <= len(inputs) <= max_inputs:
            raise UsageError(f"{self.qualified_name} takes {min_inputs} to {max_inputs} inputs, got {len(inputs)}")

    def call(
        self, op: OpBuilder | TapeBuilder, *inputs: ir.Value | None, _name: str | None = None, **attrs: object
    ) -> ir.Value | Sequence[ir.Value]:
        """This op's node added through an onnxscript builder (or recorded on a TapeBuilder),
        attributes checked; defaults are left implicit, as in ONNX. Returns its output
        value(s), one per declared output."""
        self._check_call(inputs, attrs)
        call_op = getattr(op, self.name)
        outputs = len(self.outputs)
        return call_op(
            *inputs, _domain=self.domain, _version=self.since_version, _outputs=outputs, _name=_name, **attrs
        )

    def make_node(self, inputs: Sequence[str], outputs: Sequence[str], **attrs: object) -> onnx.NodeProto:
        """One node of this op as a proto (for tests and inspection), attributes checked."""
        self._check_call(inputs, attrs)
        node = ir.node(
            self.name,
            [ir.Value(name=name) if name else None for name in inputs],
            attrs,
            domain=self.domain,
            outputs=[ir.Value(name=name) for name in outputs],
        )
        return ir.serde.serialize_node(node)


def register_onnx_schema(spec: OpSchema) -> None:
    """Register a proposed op with onnx (once per process), so onnxscript can emit it and the
    checker knows it."""
    try:
        onnx.defs.get_schema(spec.name, spec.since_version, spec.domain)
        return
    except onnx.defs.SchemaError:
        pass
    option = onnx.defs.OpSchema.FormalParameterOption
    kinds = {
        "int": onnx.defs.OpSchema.AttrType.INT,
        "float": onnx.defs.OpSchema.AttrType.FLOAT,
        "string": onnx.defs.OpSchema.AttrType.STRING,
    }
    schema = onnx.defs.OpSchema(
        spec.name,
        spec.domain,
        spec.since_version,
        doc=spec.summary,
        inputs=[
            onnx.defs.OpSchema.FormalParameter(
                p.name, p.type, param_option=option.Optional if p.optional else option.Single
            )
            for p in spec.inputs
        ],
        outputs=[onnx.defs.OpSchema.FormalParameter(p.name, p.type) for p in spec.outputs],
        type_constraints=[(tc.name, list(tc.types), tc.doc) for tc in spec.type_constraints],
        attributes=[
            onnx.defs.OpSchema.Attribute(a.name, kinds[a.type], a.doc, required=a.required) for a in spec.attributes
        ],
    )
    onnx.defs.register_schema(schema)


def _default_text(attr: Attribute) -> str:
    if attr.required:
        return "required"
    default = attr.default
    return f"default is `{default!r}`" if default is not None else "optional, no default"


_ATTR_TYPE_NAMES = {
    onnx.AttributeProto.INT: "int",
    onnx.AttributeProto.FLOAT: "float",
    onnx.AttributeProto.STRING: "string",
    onnx.AttributeProto.INTS: "ints",
    onnx.AttributeProto.FLOATS: "floats",
    onnx.AttributeProto.STRINGS: "strings",
}


def _default_literal(attr: onnx.AttributeProto) -> str:
    value = helper.get_attribute_value(attr)
    if isinstance(value, bytes):
        return f'"{value.decode()}"'
    if isinstance(value, list):
        return "[" + ", ".join(f'"{v.decode()}"' if isinstance(v, bytes) else repr(v) for v in value) + "]"
    return repr(value)


def function_text(function: onnx.FunctionProto) -> str:
    """``onnx.printer``'s text of a function, with the attributes that have defaults in
    its header (the printer drops ``attribute_proto``; ``onnx.parser`` reads them back)."""
    text = onnx.printer.to_text(function)
    names = list(function.attribute) + [
        f"{a.name}: {_ATTR_TYPE_NAMES[a.type]} = {_default_literal(a)}" for a in function.attribute_proto
    ]
    header = f"{function.name} <{', '.join(names)}>(" if names else f"{function.name} ("
    printed = f"{function.name} <{', '.join(function.attribute)}>(" if function.attribute else f"{function.name} ("
    return text.replace(printed, header, 1)


def render_spec(
    schema: OpSchema,
    function: onnx.FunctionProto | None = None,
    examples: Sequence[CaseSpec] = (),
    catalogue_link: str = "",
) -> str:
    """The op's spec section in the style of onnx ``Operators.md``.

    ``catalogue_link`` is the relative path from the page to ``catalogue.md``; when
    given, each example links to its zoo entry.
    """
    env = Environment(
        loader=FileSystemLoader(_TEMPLATES),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    body = function_text(function) if function is not None else ""
    return env.get_template("opspec.md.j2").render(
        schema=schema,
        body=body,
        function=function,
        examples=examples,
        catalogue_link=catalogue_link,
        default_text=_default_text,
        min_inputs=sum(1 for p in schema.inputs if not p.optional),
        min_outputs=sum(1 for p in schema.outputs if not p.optional),
    )
