"""A small JSON-schema (draft-07) validator for the keywords our schemas use.

Used to check the model catalog against its schema and, in the tests, the
extension's catalog entry against Slicer's published schema, without a
dependency. Supported: ``type`` (also a list), ``enum``, ``const``,
``required``, ``properties``, ``additionalProperties`` (bool or schema),
``patternProperties``, ``items`` (one schema), ``minItems``, ``maxItems``,
``uniqueItems``, ``minimum``, ``maximum``, ``minLength``, ``maxLength``,
``pattern``, ``anyOf``, ``oneOf``, ``allOf``, ``if/then`` and local ``$ref``
(``#/definitions/...``, ``#/$defs/...``). Other keywords (``title``,
``description``, ``default``, ``format``, ``$id``, ``$schema``, ...) are
annotations and ignored. An unsupported *assertion* keyword raises, so a
schema is never silently half-checked.
"""

from __future__ import annotations

import re
from typing import Any

_ANNOTATIONS = {"$schema", "$id", "title", "description", "default", "examples", "format", "$comment",
                "definitions", "$defs", "additionalItems", "readOnly", "writeOnly", "deprecated"}
_SUPPORTED = {"type", "enum", "const", "required", "properties", "additionalProperties", "patternProperties",
              "items", "minItems", "maxItems", "uniqueItems", "minimum", "maximum", "minLength", "maxLength",
              "pattern", "anyOf", "oneOf", "allOf", "if", "then", "else", "$ref"}

_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
}


def validate(instance: Any, schema: dict, root: dict | None = None, path: str = "$") -> list[str]:
    """Return the problems of ``instance`` (empty when it is valid)."""
    root = schema if root is None else root
    if schema is True or schema == {}:
        return []
    if schema is False:
        return [f"{path}: not allowed"]
    unknown = set(schema) - _ANNOTATIONS - _SUPPORTED
    if unknown:
        raise NotImplementedError(f"schema keywords not supported by this validator: {sorted(unknown)}")
    errors: list[str] = []
    if "$ref" in schema:
        errors += validate(instance, _resolve(schema["$ref"], root), root, path)
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_TYPES[t](instance) for t in types):
            return errors + [f"{path}: expected {' or '.join(types)}, got {type(instance).__name__}"]
    if "enum" in schema and instance not in schema["enum"]:
        errors.append(f"{path}: {instance!r} is not one of {schema['enum']}")
    if "const" in schema and instance != schema["const"]:
        errors.append(f"{path}: must be {schema['const']!r}")
    if isinstance(instance, dict):
        for key in schema.get("required", []):
            if key not in instance:
                errors.append(f"{path}: missing required property '{key}'")
        props = schema.get("properties", {})
        patterns = schema.get("patternProperties", {})
        for key, value in instance.items():
            matched = False
            if key in props:
                matched = True
                errors += validate(value, props[key], root, f"{path}.{key}")
            for pattern, sub in patterns.items():
                if re.search(pattern, key):
                    matched = True
                    errors += validate(value, sub, root, f"{path}.{key}")
            if not matched and "additionalProperties" in schema:
                extra = schema["additionalProperties"]
                if extra is False:
                    errors.append(f"{path}: unexpected property '{key}'")
                elif isinstance(extra, dict):
                    errors += validate(value, extra, root, f"{path}.{key}")
    if isinstance(instance, list):
        if isinstance(schema.get("items"), dict):
            for i, item in enumerate(instance):
                errors += validate(item, schema["items"], root, f"{path}[{i}]")
        if "minItems" in schema and len(instance) < schema["minItems"]:
            errors.append(f"{path}: needs at least {schema['minItems']} items")
        if "maxItems" in schema and len(instance) > schema["maxItems"]:
            errors.append(f"{path}: allows at most {schema['maxItems']} items")
        if schema.get("uniqueItems") and len({repr(i) for i in instance}) != len(instance):
            errors.append(f"{path}: items must be unique")
    if _TYPES["number"](instance):
        if "minimum" in schema and instance < schema["minimum"]:
            errors.append(f"{path}: {instance} is less than {schema['minimum']}")
        if "maximum" in schema and instance > schema["maximum"]:
            errors.append(f"{path}: {instance} is more than {schema['maximum']}")
    if isinstance(instance, str):
        if "minLength" in schema and len(instance) < schema["minLength"]:
            errors.append(f"{path}: shorter than {schema['minLength']} characters")
        if "maxLength" in schema and len(instance) > schema["maxLength"]:
            errors.append(f"{path}: longer than {schema['maxLength']} characters")
        if "pattern" in schema and not re.search(schema["pattern"], instance):
            errors.append(f"{path}: {instance!r} does not match {schema['pattern']!r}")
    for sub in schema.get("allOf", []):
        errors += validate(instance, sub, root, path)
    if "anyOf" in schema and not any(not validate(instance, s, root, path) for s in schema["anyOf"]):
        errors.append(f"{path}: matches none of the allowed forms (anyOf)")
    if "oneOf" in schema and sum(not validate(instance, s, root, path) for s in schema["oneOf"]) != 1:
        errors.append(f"{path}: must match exactly one allowed form (oneOf)")
    if "if" in schema:
        branch = "then" if not validate(instance, schema["if"], root, path) else "else"
        if branch in schema:
            errors += validate(instance, schema[branch], root, path)
    return errors


def _resolve(ref: str, root: dict) -> dict:
    if not ref.startswith("#/"):
        raise NotImplementedError(f"only local $ref is supported, not {ref!r}")
    node: Any = root
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node
