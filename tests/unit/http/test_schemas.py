"""The OpenAPI document's bodies are the Structs the API decodes with, and the document
accepts exactly what the API accepts (the name rule and target shapes no longer drift)."""

from __future__ import annotations

from typing import Any

import jsonschema
import msgspec
import pytest
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from service.core.envelope import NAME_MAX, Target, valid_name
from service.core.errors import BadRequest
from service.http import schemas
from service.http.openapi import spec


def _validator(component: str) -> jsonschema.Draft202012Validator:
    """A validator for one component, its $refs resolved within the document."""
    registry: Registry[Any] = Registry().with_resource(
        "urn:herald", DRAFT202012.create_resource(spec()))
    schema = {"$ref": f"urn:herald#/components/schemas/{component}"}
    return jsonschema.Draft202012Validator(schema, registry=registry)


def _server_accepts(body: dict[str, Any]) -> bool:
    """What POST /api/publish does before it publishes: decode, then the one name rule."""
    try:
        req = msgspec.json.decode(msgspec.json.encode(body), type=schemas.PublishRequest)
        Target.from_json(req.target)
    except (msgspec.ValidationError, BadRequest):
        return False
    return valid_name(req.event)


BODIES = [
    {"target": {"all": True}, "event": "e"},
    {"target": {"group": "g"}, "event": "e", "data": [1, {"x": None}], "durable": False},
    {"target": {"group": "g", "scope": "s"}, "event": "e", "exclude_connection": None},
    {"target": {"user": "alice"}, "event": "done", "exclude_connection": "c1"},
    {"target": {"connection": "c" * NAME_MAX}, "event": "e"},
    {"target": {"connection": "c" * (NAME_MAX + 1)}, "event": "e"},
    {"target": {"group": "a/b"}, "event": "e"},
    {"target": {"group": "a b"}, "event": "e"},
    {"target": {"user": "bob@x"}, "event": "e"},
    {"target": {"all": True}, "event": ""},
    {"target": {"all": True}, "event": "tab\there"},
    {"target": {"all": True}, "event": "e", "extra": 1},
    {"target": {"all": True}, "event": "e", "durable": "yes"},
    {"target": {}, "event": "e"},
    {"event": "e"},
    {"target": {"group": "g"}, "event": 5},
]


@pytest.mark.parametrize("body", BODIES)
def test_the_document_and_the_server_agree_on_a_publish(body: dict[str, Any]) -> None:
    assert _validator("PublishRequest").is_valid(body) == _server_accepts(body), body


def test_every_request_struct_is_a_component() -> None:
    components = spec()["components"]["schemas"]
    for struct in (schemas.PublishRequest, schemas.PublishBatchRequest, schemas.TaskRequest):
        fields = set(struct.__struct_fields__)
        assert set(components[struct.__name__]["properties"]) == fields
        assert components[struct.__name__]["additionalProperties"] is False
    assert spec()["openapi"].startswith("3.1")
