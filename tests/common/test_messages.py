"""The ops are defined once, by the request models; the schema and the docs list the same ones.

These tests fail when an op is added (or removed) in one place and not in the
others: the models, the committed JSON Schema, and the op table of the
protocol document.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import pytest

from common.messages import OPS, REQUEST_MODELS, Request

DOCS = Path(__file__).resolve().parents[2] / "docs"
CLIENT_MESSAGE_SCHEMA = DOCS / "schema" / "client-message.schema.json"
PROTOCOL = DOCS / "protocol.md"

REQUEST_CLASSES = get_args(Request)


def client_message_schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(CLIENT_MESSAGE_SCHEMA.read_text(encoding="utf-8"))
    return schema


def documented_ops() -> list[str]:
    """The ops in the table under "## Requests" in docs/protocol.md, in order."""
    text = PROTOCOL.read_text(encoding="utf-8")
    section = text.split("\n## Requests\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `([^`]+)`", section, flags=re.MULTILINE)


@pytest.mark.parametrize("model", REQUEST_CLASSES, ids=lambda model: model.__name__)
def test_every_request_model_has_one_literal_op(model: type[Request]) -> None:
    """Each request model's op is a Literal of exactly one string."""
    annotation = model.model_fields["op"].annotation
    assert get_origin(annotation) is Literal
    (op,) = get_args(annotation)
    assert isinstance(op, str)


def test_request_models_map_each_op_to_its_own_model() -> None:
    """REQUEST_MODELS holds every request model once, under the op its Literal names."""
    assert sorted(REQUEST_MODELS.values(), key=lambda m: m.__name__) == sorted(
        REQUEST_CLASSES, key=lambda m: m.__name__
    )
    for op, model in REQUEST_MODELS.items():
        assert get_args(model.model_fields["op"].annotation) == (op,)


def test_ops_are_the_keys_of_request_models() -> None:
    """OPS is exactly the set of ops that have a request model."""
    assert set(REQUEST_MODELS) == OPS


def test_the_schemas_discriminator_maps_exactly_the_ops() -> None:
    """client-message.schema.json dispatches on op to one definition per op, and no other."""
    discriminator = client_message_schema()["discriminator"]
    assert discriminator["propertyName"] == "op"
    assert set(discriminator["mapping"]) == OPS


def test_the_schemas_one_of_consts_are_exactly_the_ops() -> None:
    """Each oneOf branch of client-message.schema.json fixes op to a const, one per op."""
    schema = client_message_schema()
    definitions = schema["$defs"]
    consts = [
        definitions[branch["$ref"].removeprefix("#/$defs/")]["properties"]["op"]["const"]
        for branch in schema["oneOf"]
    ]
    assert sorted(consts) == sorted(OPS)


def test_the_protocol_documents_every_op_once() -> None:
    """The op table under "## Requests" in docs/protocol.md lists exactly the ops."""
    ops = documented_ops()
    assert sorted(ops) == sorted(OPS)
