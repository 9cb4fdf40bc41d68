"""What the fake API server checks in a request body, as the real one would.

- The Kubernetes OpenAPI schema of the kind (the strict JSON schemas `kubernetes-validate` ships),
  every error reported, each with its field path; unknown fields are found apart (`unknown_fields`):
  the API server refuses them only under `fieldValidation=Strict`, and otherwise drops them;
- what the API server validates beyond the schema: object names (DNS-1123 subdomain; DNS-1035
  label for Services; at most 63 characters for Jobs, whose name becomes a label value) and
  label keys and values, on the object and on pod templates.

A JobSet (a CRD the schemas do not hold) gets its replicated Job templates checked against
`JobTemplateSpec`.
"""

from __future__ import annotations

import functools
import re
from typing import Any

import jsonschema
from kubernetes_validate.utils import schema_contents
from referencing import Registry, Resource

SCHEMA_VERSION = "1.35.0"
SCHEMA_DIR = f"kubernetes-json-schema/v{SCHEMA_VERSION}-local-strict"
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")

Cause = dict[str, str]
Path = tuple[str | int, ...]


@functools.cache
def _registry() -> Registry:
    definitions = Resource.from_contents(schema_contents(f"{SCHEMA_DIR}/_definitions.json", SCHEMA_VERSION))
    return definitions @ Registry()


@functools.cache
def _validator(filename: str) -> jsonschema.Draft202012Validator:
    schema = schema_contents(f"{SCHEMA_DIR}/{filename}", SCHEMA_VERSION)
    return jsonschema.Draft202012Validator(schema, registry=Resource.from_contents(schema) @ _registry())


@functools.cache
def _definition(name: str) -> jsonschema.Draft202012Validator:
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://kubernetes.io/api/fake/{name}",
        "$ref": f"/api/_definitions.json#/$defs/{name}",
    }
    return jsonschema.Draft202012Validator(schema, registry=_registry())


def _schema_causes(validator: jsonschema.Draft202012Validator, body: Any, prefix: str = "") -> list[Cause]:
    causes = []
    for err in sorted(validator.iter_errors(body), key=lambda e: list(map(str, e.absolute_path))):
        field = ".".join(str(p) for p in err.absolute_path)
        causes.append({"reason": "FieldValueInvalid", "field": prefix + field, "message": err.message})
    return causes


def _unknown(validator: jsonschema.Draft202012Validator, body: Any, prefix: Path = ()) -> list[Path]:
    found = []
    for err in validator.iter_errors(body):
        if err.validator != "additionalProperties" or not isinstance(err.instance, dict):
            continue
        known, patterns = err.schema.get("properties") or {}, err.schema.get("patternProperties") or {}
        found += [(*prefix, *err.absolute_path, key) for key in err.instance
                  if key not in known and not any(re.search(p, key) for p in patterns)]
    return sorted(found, key=lambda path: list(map(str, path)))


def unknown_fields(body: dict[str, Any]) -> list[Path]:
    """The paths of the fields in `body` its kind's schema does not have (a JobSet: in its Job templates)."""
    kind, api_version = body.get("kind", ""), body.get("apiVersion", "")
    if kind == "JobSet":
        found = []
        for i, rjob in enumerate(((body.get("spec") or {}).get("replicatedJobs")) or []):
            template = rjob.get("template") if isinstance(rjob, dict) else None
            validator = _definition("io.k8s.api.batch.v1.JobTemplateSpec")
            found += _unknown(validator, template, ("spec", "replicatedJobs", i, "template"))
        return found
    return _unknown(_kind_validator(kind, api_version), body)


def field_path(path: Path) -> str:
    """A field path as the API server writes it: `spec.template.spec.containers[0].colour`."""
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")


def drop(body: dict[str, Any], path: Path) -> None:
    """Remove the field at `path`, as the API server drops an unknown field it does not refuse."""
    node: Any = body
    for part in path[:-1]:
        node = node[part]
    node.pop(path[-1], None)


def schema_causes(body: dict[str, Any]) -> list[Cause]:
    """Where `body` breaks the OpenAPI schema of its kind (a built-in kind, or a JobSet)."""
    kind, api_version = body.get("kind", ""), body.get("apiVersion", "")
    if kind == "JobSet":
        causes = []
        for i, rjob in enumerate(((body.get("spec") or {}).get("replicatedJobs")) or []):
            template = rjob.get("template") if isinstance(rjob, dict) else None
            prefix = f"spec.replicatedJobs[{i}].template."
            causes += _schema_causes(_definition("io.k8s.api.batch.v1.JobTemplateSpec"), template, prefix)
        if not (body.get("spec") or {}).get("replicatedJobs"):
            causes.append({"reason": "FieldValueRequired", "field": "spec.replicatedJobs", "message": "Required value"})
        return causes
    return _schema_causes(_kind_validator(kind, api_version), body)


def _kind_validator(kind: str, api_version: str) -> jsonschema.Draft202012Validator:
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    return _validator(f"{kind.lower()}-{group_version}.json")


def _labels(labels: Any, where: str) -> list[Cause]:
    causes = []
    for key, value in (labels or {}).items():
        prefix, _, name = key.rpartition("/")
        if len(name) > 63 or not LABEL_NAME.match(name) or (prefix and not DNS_SUBDOMAIN.match(prefix)):
            causes.append(_invalid(f"{where}", key, "name part must consist of alphanumeric characters, '-', '_' "
                                   "or '.', and must start and end with an alphanumeric character"))
        if not isinstance(value, str) or len(value) > 63 or not LABEL_VALUE.match(value):
            causes.append(_invalid(f"{where}", value, "a valid label must be an empty string or consist of "
                                   "alphanumeric characters, '-', '_' or '.', and must start and end with an "
                                   "alphanumeric character (at most 63 characters)"))
    return causes


def _invalid(field: str, value: Any, message: str) -> Cause:
    return {"reason": "FieldValueInvalid", "field": field, "message": f"Invalid value: {value!r}: {message}"}


def api_causes(body: dict[str, Any]) -> list[Cause]:
    """The API server's own validation beyond the schema: names and labels."""
    meta = body.get("metadata") or {}
    name, kind = meta.get("name", ""), body.get("kind")
    causes = []
    if not name:
        causes.append({"reason": "FieldValueRequired", "field": "metadata.name", "message": "Required value: name"})
    elif kind == "Service" and (len(name) > 63 or not DNS_1035.match(name)):
        causes.append(_invalid("metadata.name", name, "a DNS-1035 label must consist of lower case alphanumeric "
                               "characters or '-', start with a letter, and be at most 63 characters"))
    elif len(name) > (63 if kind in ("Job", "JobSet") else 253) or not DNS_SUBDOMAIN.match(name):
        causes.append(_invalid("metadata.name", name, "a lowercase RFC 1123 subdomain (at most 63 characters for a "
                               "Job, whose name becomes a label value)"))
    causes += _labels(meta.get("labels"), "metadata.labels")
    templates = []
    if kind == "Job":
        templates.append(("spec.template", (body.get("spec") or {}).get("template")))
    for i, rjob in enumerate(((body.get("spec") or {}).get("replicatedJobs") or []) if kind == "JobSet" else []):
        templates.append((f"spec.replicatedJobs[{i}].template.spec.template",
                          ((rjob.get("template") or {}).get("spec") or {}).get("template")))
    for where, template in templates:
        causes += _labels(((template or {}).get("metadata") or {}).get("labels"), f"{where}.metadata.labels")
    return causes
