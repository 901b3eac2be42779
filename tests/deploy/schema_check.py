"""A small JSON Schema (2020-12) validator for the subset RunPod's v2 request schemas use, so the loopback fake
refuses what the real API refuses (the `jsonschema` package is not a dependency of this project).

Supported: $ref (local), allOf, anyOf, oneOf, not, if/then/else, type, enum, const, required,
dependentRequired, properties, additionalProperties, unevaluatedProperties (false or a schema), items,
minItems, maxItems, uniqueItems, minLength, maxLength, pattern, minimum, maximum. Annotations (default,
format, discriminator, descriptions) are ignored, as a validator may. An unknown keyword raises, so the
fixture cannot silently use something this file does not check.
"""

from __future__ import annotations

import re
from typing import Any

_ANNOTATIONS = {"default", "format", "discriminator", "description", "examples", "title", "$comment"}
_KNOWN = _ANNOTATIONS | {
    "$ref", "allOf", "anyOf", "oneOf", "not", "if", "then", "else", "type", "enum", "const", "required",
    "dependentRequired", "properties", "additionalProperties", "unevaluatedProperties", "items", "minItems",
    "maxItems", "uniqueItems", "minLength", "maxLength", "pattern", "minimum", "maximum",
}  # fmt: skip

_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "integer": lambda v: (
        (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer())
    ),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
}


class Validator:
    def __init__(self, root: dict[str, Any]) -> None:
        self.root = root

    def errors(self, schema: dict[str, Any], instance: Any) -> list[str]:
        """Every violation, each as 'path: what is wrong' (path '$' is the body itself)."""
        return self._check(schema, instance, "$")[0]

    def _resolve(self, ref: str) -> dict[str, Any]:
        if not ref.startswith("#/"):
            raise ValueError(f"only local $ref is supported: {ref}")
        node: Any = self.root
        for part in ref[2:].split("/"):
            node = node[part]
        return node

    def _check(self, schema: Any, inst: Any, path: str) -> tuple[list[str], set[str]]:
        """(errors, names of the properties this schema evaluated, for unevaluatedProperties)."""
        if schema is True:
            return [], set()
        if schema is False:
            return [f"{path}: not allowed"], set()
        unknown = set(schema) - _KNOWN
        if unknown:
            raise ValueError(f"schema keyword(s) {sorted(unknown)} not supported by schema_check")
        errs: list[str] = []
        seen: set[str] = set()

        def sub(s: Any) -> None:
            # The body fails anyway when a subschema does, so its properties still count as evaluated:
            # one wrong field is reported once, not again as "unknown" at every level above it.
            e, ev = self._check(s, inst, path)
            errs.extend(e)
            seen.update(ev)

        if "$ref" in schema:
            sub(self._resolve(schema["$ref"]))
        for s in schema.get("allOf", []):
            sub(s)
        if "anyOf" in schema:
            results = [self._check(s, inst, path) for s in schema["anyOf"]]
            ok = [ev for e, ev in results if not e]
            if not ok:
                errs.append(f"{path}: matches none of the allowed shapes ({'; '.join(results[0][0])})")
            for ev in ok:
                seen.update(ev)
        if "oneOf" in schema:
            results = [self._check(s, inst, path) for s in schema["oneOf"]]
            ok = [ev for e, ev in results if not e]
            if len(ok) != 1:
                detail = "; ".join(e for r in results for e in r[0]) if not ok else "more than one"
                errs.append(f"{path}: must match exactly one of the allowed shapes ({detail})")
            else:
                seen.update(ok[0])
        if "not" in schema and not self._check(schema["not"], inst, path)[0]:
            errs.append(f"{path}: matches a shape that is not allowed")
        if "if" in schema:
            cond_errs, cond_seen = self._check(schema["if"], inst, path)
            if not cond_errs:
                seen.update(cond_seen)
                if "then" in schema:
                    sub(schema["then"])
            elif "else" in schema:
                sub(schema["else"])

        if "type" in schema:
            types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
            if not any(_TYPES[t](inst) for t in types):
                errs.append(f"{path}: must be {' or '.join(types)}, not {_json_type(inst)}")
                return errs, seen
        if "enum" in schema and inst not in schema["enum"]:
            errs.append(f"{path}: must be one of {schema['enum']}, not {inst!r}")
        if "const" in schema and inst != schema["const"]:
            errs.append(f"{path}: must be {schema['const']!r}")

        if isinstance(inst, str):
            if len(inst) < schema.get("minLength", 0):
                errs.append(f"{path}: shorter than {schema['minLength']} characters")
            if "maxLength" in schema and len(inst) > schema["maxLength"]:
                errs.append(f"{path}: longer than {schema['maxLength']} characters")
            if "pattern" in schema and not re.search(schema["pattern"], inst):
                errs.append(f"{path}: {inst!r} does not match {schema['pattern']}")
        if _TYPES["number"](inst):
            if "minimum" in schema and inst < schema["minimum"]:
                errs.append(f"{path}: must be at least {schema['minimum']}")
            if "maximum" in schema and inst > schema["maximum"]:
                errs.append(f"{path}: must be at most {schema['maximum']}")
        if isinstance(inst, list):
            if len(inst) < schema.get("minItems", 0):
                errs.append(f"{path}: needs at least {schema['minItems']} item(s)")
            if "maxItems" in schema and len(inst) > schema["maxItems"]:
                errs.append(f"{path}: at most {schema['maxItems']} item(s)")
            if schema.get("uniqueItems") and len({repr(v) for v in inst}) != len(inst):
                errs.append(f"{path}: items must be unique")
            if "items" in schema:
                for i, item in enumerate(inst):
                    errs.extend(self._check(schema["items"], item, f"{path}[{i}]")[0])
        if isinstance(inst, dict):
            errs.extend(self._object(schema, inst, path, seen))
        return errs, seen

    def _object(self, schema: dict[str, Any], inst: dict[str, Any], path: str, seen: set[str]) -> list[str]:
        errs = [f"{path}.{name}: required" for name in schema.get("required", []) if name not in inst]
        for name, needs in schema.get("dependentRequired", {}).items():
            if name in inst:
                errs.extend(f"{path}.{n}: required when {name} is set" for n in needs if n not in inst)
        props = schema.get("properties", {})
        for name, sub in props.items():
            if name in inst:
                errs.extend(self._check(sub, inst[name], f"{path}.{name}")[0])
                seen.add(name)
        if "additionalProperties" in schema:
            for name in set(inst) - set(props):
                e = self._check(schema["additionalProperties"], inst[name], f"{path}.{name}")[0]
                errs.extend(
                    [f"{path}.{name}: unknown field"] if schema["additionalProperties"] is False else e
                )
                seen.add(name)
        if "unevaluatedProperties" in schema:
            for name in sorted(set(inst) - seen):
                if schema["unevaluatedProperties"] is False:
                    errs.append(f"{path}.{name}: unknown field")
                else:
                    errs.extend(self._check(schema["unevaluatedProperties"], inst[name], f"{path}.{name}")[0])
                seen.add(name)
        return errs


def _json_type(value: Any) -> str:
    for name in ("null", "boolean", "integer", "number", "string", "array", "object"):
        if _TYPES[name](value):
            return name
    return type(value).__name__
