"""A strict check of Kubernetes manifests against the API schema of the official ``kubernetes`` client.

The client's model classes carry the schema: ``openapi_types`` (field -> type) and
``attribute_map`` (field -> JSON key). ``problems`` walks a manifest through them and reports
every key the schema does not have, every value of the wrong type, and every required field
missing (the models' constructors raise on those), as the API server's strict field validation would.
"""

from __future__ import annotations

import re

import kubernetes.client as k8s_models

KINDS = {("v1", "ConfigMap"): "V1ConfigMap", ("v1", "Secret"): "V1Secret", ("batch/v1", "Job"): "V1Job"}
PRIMITIVES = {"str": (str,), "int": (int,), "bool": (bool,), "float": (int, float), "bytes": (str,),
              "datetime": (str,), "date": (str,)}
LIST = re.compile(r"^(?:list|List)\[(.+)\]$")
DICT = re.compile(r"^(?:dict\(str, |Dict\[str, )(.+)[)\]]$")


def problems(doc: dict) -> list[str]:
    kind = KINDS.get((doc.get("apiVersion"), doc.get("kind")))
    if kind is None:
        return [f"apiVersion/kind {doc.get('apiVersion')}/{doc.get('kind')}: not a kind this check knows"]
    found: list[str] = []
    walk(doc, kind, doc["kind"], found)
    if not found:  # types right: now the required fields, through the client's own deserializer
        try:
            k8s_models.ApiClient()._ApiClient__deserialize(doc, kind)
        except (ValueError, TypeError) as exc:
            found.append(f"{doc['kind']}: {exc}")
    return found


def walk(value, type_name: str, path: str, found: list[str]) -> None:
    if type_name == "object":  # IntOrString and free-form fields
        return
    if type_name in PRIMITIVES:
        ok = isinstance(value, PRIMITIVES[type_name]) and not (type_name != "bool" and isinstance(value, bool))
        if not ok:
            found.append(f"{path}: {value!r} is not {type_name}")
        return
    if m := LIST.match(type_name):
        if not isinstance(value, list):
            found.append(f"{path}: {type(value).__name__} where a list of {m[1]} goes")
            return
        for i, item in enumerate(value):
            walk(item, m[1], f"{path}[{i}]", found)
        return
    if m := DICT.match(type_name):
        if not isinstance(value, dict):
            found.append(f"{path}: {type(value).__name__} where a map goes")
            return
        for key, item in value.items():
            walk(item, m[1], f"{path}.{key}", found)
        return
    model = getattr(k8s_models, type_name)
    if not isinstance(value, dict):
        found.append(f"{path}: {type(value).__name__} where a {type_name} goes")
        return
    fields = {json_key: attr for attr, json_key in model.attribute_map.items()}
    for key, item in value.items():
        if key not in fields:
            found.append(f"{path}.{key}: unknown field of {type_name}")
            continue
        walk(item, model.openapi_types[fields[key]], f"{path}.{key}", found)
