"""``kubectl kustomize`` for the subset of kustomize that ``manifests/`` uses.

Neither kubectl nor kustomize is installed on this machine (nor packaged for it), so the tests
build the overlays with this. It refuses any kustomization field or option outside the subset
instead of ignoring it, so a manifest change that needs more makes the tests fail loudly.
The rules follow kustomize v5 (kubernetes-sigs/kustomize, api/):

* transformers run in kustomize's built-in order: ``patches`` before ``namespace`` before
  ``labels`` (api/internal/target/kusttarget.go, configureBuiltinTransformers);
* ``namespace`` sets ``metadata.namespace`` of namespaced objects, and of RoleBinding subjects
  only those named ``default`` (api/filters/namespace/namespace.go, roleBindingHack);
* ``patches`` with a JSON 6902 body apply to the objects their ``target`` selects (group,
  version, kind, name);
* ``secretGenerator`` with ``envs`` (KEY=VALUE lines, ``#`` comments) and ``literals``; with
  ``disableNameSuffixHash`` only (the hash suffix is not implemented);
* ``labels`` with ``pairs`` (and ``includeSelectors: false``, the default).
"""

from __future__ import annotations

import base64
import copy
from pathlib import Path

import jsonpatch
import yaml

FIELDS = {"apiVersion", "kind", "namespace", "resources", "patches", "labels",
          "secretGenerator"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding",
                  "CustomResourceDefinition", "PersistentVolume", "StorageClass"}


def build(directory: str | Path) -> list[dict]:
    """The objects ``kubectl kustomize DIRECTORY`` would print."""
    directory = Path(directory)
    k = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(k) - FIELDS
    if unknown:
        raise NotImplementedError(f"{directory}: kustomization fields {sorted(unknown)} are "
                                  "outside the subset this builder implements")
    objects: list[dict] = []
    for ref in k.get("resources", []):
        path = directory / ref
        if path.is_dir():
            objects += build(path)
        else:
            objects += [d for d in yaml.safe_load_all(path.read_text()) if d]
    for gen in k.get("secretGenerator", []):
        objects.append(_secret(directory, gen))
    for patch in k.get("patches", []):
        body = yaml.safe_load(patch["patch"]) if "patch" in patch else \
            yaml.safe_load((directory / patch["path"]).read_text())
        if not isinstance(body, list):
            raise NotImplementedError("only JSON 6902 patches are in the subset")
        matched = [o for o in objects if _selected(o, patch.get("target", {}))]
        if not matched:
            raise ValueError(f"{directory}: patch target {patch.get('target')} matches nothing")
        for obj in matched:
            objects[objects.index(obj)] = jsonpatch.apply_patch(obj, body)
    if "namespace" in k:
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj.setdefault("metadata", {})["namespace"] = k["namespace"]
            if obj["kind"] in ("RoleBinding", "ClusterRoleBinding"):
                for subject in obj.get("subjects", []):
                    if subject.get("name") == "default":
                        subject["namespace"] = k["namespace"]
    for entry in k.get("labels", []):
        if entry.get("includeSelectors") or entry.get("includeTemplates"):
            raise NotImplementedError("labels with selectors/templates are outside the subset")
        for obj in objects:
            obj.setdefault("metadata", {}).setdefault("labels", {}).update(entry["pairs"])
    return objects


def _selected(obj: dict, target: dict) -> bool:
    group, _, version = obj["apiVersion"].rpartition("/")
    return all(want == have for want, have in (
        (target.get("group"), group), (target.get("version"), version),
        (target.get("kind"), obj["kind"]), (target.get("name"), obj["metadata"]["name"]))
        if want is not None)


def _secret(directory: Path, gen: dict) -> dict:
    options = gen.get("options", {})
    if not options.get("disableNameSuffixHash"):
        raise NotImplementedError("secretGenerator name hashes are outside the subset")
    data: dict[str, str] = {}
    for env in gen.get("envs", []):
        for line in (directory / env).read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                key, _, value = line.partition("=")
                data[key.strip()] = value
    for literal in gen.get("literals", []):
        key, _, value = literal.partition("=")
        data[key] = value
    meta = {"name": gen["name"]}
    if options.get("labels"):
        meta["labels"] = copy.deepcopy(options["labels"])
    if options.get("annotations"):
        meta["annotations"] = copy.deepcopy(options["annotations"])
    return {"apiVersion": "v1", "kind": "Secret", "metadata": meta,
            "type": gen.get("type", "Opaque"),
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}
