"""The small part of kustomize that deploy/kubernetes uses, for tests without a kustomize binary:
`resources` (files and bases), `images` (newName/newTag) and JSON 6902 `patches` with a target."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml


def apply_json_patch(document: dict[str, Any], operations: list[dict[str, Any]]) -> dict[str, Any]:
    """RFC 6902 add / replace / remove, which is what the overlays use."""
    result = copy.deepcopy(document)
    for operation in operations:
        *parents, leaf = [part.replace("~1", "/").replace("~0", "~") for part in operation["path"].split("/")[1:]]
        node: Any = result
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        key: Any = int(leaf) if isinstance(node, list) else leaf
        if operation["op"] == "remove" or operation["op"] == "replace":
            node[key]  # noqa: B018 - RFC 6902: the target must exist
        if operation["op"] == "remove":
            del node[key]
        elif operation["op"] in ("add", "replace"):
            node[key] = operation["value"]
        else:
            raise ValueError(f"unsupported JSON patch op {operation['op']!r}")
    return result


def render(directory: Path) -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text(encoding="utf-8"))
    documents: list[dict[str, Any]] = []
    for resource in kustomization.get("resources", []):
        path = directory / resource
        if path.is_dir():
            documents.extend(render(path))
        else:
            documents.extend(d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d)
    for image in kustomization.get("images", []):
        for container in (c for d in documents for c in containers(d)):
            name, _, tag = container["image"].partition(":")
            if name == image["name"]:
                container["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag)}".rstrip(":")
    for patch in kustomization.get("patches", []):
        operations = yaml.safe_load((directory / patch["path"]).read_text(encoding="utf-8"))
        target = patch["target"]
        matched = [i for i, d in enumerate(documents)
                   if d["kind"] == target["kind"] and d["metadata"]["name"] == target["name"]]
        assert len(matched) == 1, f"patch {patch['path']} matches {len(matched)} resources"
        documents[matched[0]] = apply_json_patch(documents[matched[0]], operations)
    return documents


def containers(document: dict[str, Any]) -> list[dict[str, Any]]:
    if document["kind"] != "Deployment":
        return []
    return list(document["spec"]["template"]["spec"]["containers"])


def one(documents: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in documents if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]
