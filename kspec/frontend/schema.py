"""The JSON Schema of the kspec language, applied with located errors.

jsonschema reports paths; the Document turns each path into file:line:col.
Unknown keys get a "did you mean" against the properties allowed there.
"""

from __future__ import annotations

import difflib
import json
from functools import lru_cache
from importlib import resources
from typing import Any

import jsonschema

from kspec.diagnostics import Diagnostic, error
from kspec.frontend.document import Document
from kspec.frontend.values import describe


@lru_cache(maxsize=1)
def schema() -> dict[str, Any]:
    """The kspec language schema (what ``kspec schema`` prints)."""
    text = resources.files("kspec.frontend").joinpath("schema.json").read_text(encoding="utf-8")
    return json.loads(text)


@lru_cache(maxsize=1)
def _validator() -> jsonschema.protocols.Validator:
    return jsonschema.Draft202012Validator(schema())


def _resolve(node: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        return schema()["$defs"][ref.rsplit("/", 1)[1]]
    return node


def _best(errors: list[jsonschema.ValidationError]) -> list[jsonschema.ValidationError]:
    """For anyOf/oneOf failures, keep the branch that went deepest (the user's intent)."""
    result = []
    for err in errors:
        if err.validator in ("anyOf", "oneOf") and err.context:
            deepest = max(len(e.absolute_path) for e in err.context)
            if deepest > len(err.absolute_path):
                result.extend(_best([e for e in err.context if len(e.absolute_path) == deepest]))
                continue
        result.append(err)
    return result


def _expected(err: jsonschema.ValidationError) -> str:
    node = _resolve(err.schema) if isinstance(err.schema, dict) else {}
    description = node.get("description")
    return f" ({description})" if description else ""


def validate(doc: Document) -> list[Diagnostic]:
    """All schema violations of a kspec document, located and with hints."""
    found: list[Diagnostic] = []
    for err in _best(list(_validator().iter_errors(doc.data))):
        path = tuple(err.absolute_path)
        where = ".".join(str(p) for p in path) or "the document"
        if err.validator == "additionalProperties":
            allowed = sorted(_resolve(err.schema).get("properties", {}))
            extra = [k for k in err.instance if k not in allowed] if isinstance(err.instance, dict) else []
            for key in extra:
                close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
                hint = f"did you mean {close[0]!r}?" if close else "allowed here: " + ", ".join(allowed)
                found.append(error(f"unknown field {key!r} in {where}", doc.key_span(path + (key,)), hint, "schema"))
            continue
        if err.validator == "enum":
            choices = ", ".join(str(c) for c in err.validator_value)
            close = difflib.get_close_matches(str(err.instance), [str(c) for c in err.validator_value], n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"use one of {choices}"
            found.append(error(f"{where}: {describe(err.instance)} is not one of {choices}", doc.locate(path), hint, "schema"))
            continue
        if err.validator == "type":
            wanted = err.validator_value if isinstance(err.validator_value, str) else " or ".join(err.validator_value)
            wanted = {"object": "a mapping", "array": "a list", "integer": "a whole number"}.get(wanted, f"a {wanted}")
            found.append(error(f"{where} must be {wanted}, not {describe(err.instance)}", doc.locate(path),
                               f"expected {wanted}{_expected(err)}", "schema"))
            continue
        if err.validator == "required":
            found.append(error(f"{where}: {err.message}", doc.locate(path), "add the missing field", "schema"))
            continue
        if err.validator in ("minimum", "maximum"):
            found.append(error(f"{where}: {describe(err.instance)} is out of range", doc.locate(path),
                               f"the {err.validator} is {err.validator_value}", "schema"))
            continue
        if err.validator == "pattern":
            found.append(error(f"{where}: {describe(err.instance)} is not well-formed", doc.locate(path),
                               f"expected{_expected(err) or ' a value matching ' + err.validator_value}", "schema"))
            continue
        found.append(error(f"{where}: {err.message}", doc.locate(path), f"see `kspec schema`{_expected(err)}", "schema"))
    return found
