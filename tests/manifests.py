"""The Kubernetes manifests as they are applied: compose/k8s/ is two kustomizations (the
roles, and this release's migrate Job) sharing one release component that pins the image.

``render(root)`` builds what ``kubectl apply -k root`` would send: the resources of the
kustomization and of its components, with the ``images:`` overrides applied. It covers
the kustomize fields these manifests use and refuses any other, so a manifest cannot
start relying on one this renderer would silently ignore. ``kubectl kustomize`` checks it
where kubectl is installed (tests/unit/test_k8s_valid.py).
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import yaml

from tests.support import ROOT

K8S_DIR = ROOT / "compose" / "k8s"
#: The kustomizations an operator applies (README, "Running in production").
APPLIED_ROOTS = (K8S_DIR / "migrate", K8S_DIR)
#: The example Secrets: outside the applied folder, never applied.
SECRETS_EXAMPLE = ROOT / "compose" / "k8s-secrets.example.yaml"
RELEASE = K8S_DIR / "release" / "kustomization.yaml"
#: The image name the manifests use for every Herald role (the release component sets it).
HERALD_IMAGE = "herald"

_KNOWN_FIELDS = {"apiVersion", "kind", "resources", "components", "images"}
POD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"}


def kustomization(directory: Path) -> dict[str, Any]:
    doc = yaml.safe_load((directory / "kustomization.yaml").read_text())
    assert isinstance(doc, dict), directory
    unknown = set(doc) - _KNOWN_FIELDS
    assert not unknown, f"{directory}: kustomize fields tests/manifests.py does not render: " \
                        f"{sorted(unknown)}"
    return doc


def load_docs(path: Path) -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    for d in docs:
        assert isinstance(d, dict) and "kind" in d and "apiVersion" in d, f"{path}: {d!r:.80}"
    return docs


def _images(directory: Path) -> list[dict[str, str]]:
    doc = kustomization(directory)
    found = list(doc.get("images") or [])
    for comp in doc.get("components") or []:
        found += _images((directory / comp).resolve())
    return found


def _resources(directory: Path) -> list[tuple[Path, dict[str, Any]]]:
    doc = kustomization(directory)
    out = []
    for res in doc.get("resources") or []:
        path = (directory / res).resolve()
        assert path.is_file(), f"{directory}: resource {res} is not a file"
        out += [(path, d) for d in load_docs(path)]
    for comp in doc.get("components") or []:
        out += _resources((directory / comp).resolve())
    return out


def _set_image(container: dict[str, Any], images: list[dict[str, str]]) -> None:
    name, sep, tag = container["image"].partition(":")
    for image in images:
        if image["name"] == name:
            name = image.get("newName", name)
            tag = image.get("newTag", tag)
            sep = ":" if tag else ""
    container["image"] = f"{name}{sep}{tag}"


def pod_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    """The pod template's spec of a workload, the spec of a Pod, else None."""
    if doc["kind"] in POD_KINDS:
        return doc["spec"]["template"]["spec"]
    if doc["kind"] == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    if doc["kind"] == "Pod":
        return doc["spec"]
    return None


def containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*(pod.get("initContainers") or []), *(pod.get("containers") or []),
            *(pod.get("ephemeralContainers") or [])]


def render(directory: Path) -> list[tuple[Path, dict[str, Any]]]:
    """(source file, object) for every object ``kubectl apply -k directory`` applies."""
    images = _images(directory)
    out = _resources(directory)
    for _, doc in out:
        pod = pod_spec(doc)
        for c in containers(pod) if pod is not None else []:
            _set_image(c, images)
    return out


def applied() -> list[tuple[Path, dict[str, Any]]]:
    """Every object of every applied kustomization (a copy the caller may change)."""
    return copy.deepcopy(_applied())


@functools.cache
def _applied() -> list[tuple[Path, dict[str, Any]]]:
    return [item for root in APPLIED_ROOTS for item in render(root)]


def release_tag() -> str:
    images = yaml.safe_load(RELEASE.read_text())["images"]
    (herald,) = [i for i in images if i["name"] == HERALD_IMAGE]
    return str(herald["newTag"])
