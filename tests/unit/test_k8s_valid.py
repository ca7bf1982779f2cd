"""The deployment files are valid as a platform team applies them: every Kubernetes object
passes the real API schemas (kubernetes-validate, strict: an unknown or misspelt field
fails), every pod passes the Pod Security Standard "restricted", and nginx accepts
compose/nginx.conf (nginx -t). Each check is shown catching a broken copy."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.manifests import (
    APPLIED_ROOTS,
    K8S_DIR,
    SECRETS_EXAMPLE,
    applied,
    containers,
    kustomization,
    load_docs,
    pod_spec,
    render,
)
from tests.support import ROOT

#: The oldest Kubernetes the manifests are written for, and the newest schema bundled.
K8S_VERSIONS = ("1.30.0", "1.37.0")
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
NGINX_CONF = ROOT / "compose" / "nginx.conf"


# -- schemas ------------------------------------------------------------------------------


def schema_errors(doc: dict[str, Any]) -> list[str]:
    errors = []
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = "/".join(str(p) for p in exc.path)
            errors.append(f"{doc['kind']}/{doc['metadata']['name']} against {version}: "
                          f"{path}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            errors.append(exc.message)
    return errors


def test_every_applied_object_passes_the_kubernetes_schemas() -> None:
    objects = applied()
    kinds = {doc["kind"] for _, doc in objects}
    assert {"Deployment", "StatefulSet", "Job", "Service", "ConfigMap",
            "PodDisruptionBudget"} <= kinds, kinds
    errors = [e for _, doc in objects for e in schema_errors(doc)]
    errors += [e for doc in load_docs(SECRETS_EXAMPLE) for e in schema_errors(doc)]
    assert errors == [], "\n".join(errors)


def test_the_schema_check_catches_a_broken_manifest() -> None:
    deploy = next(doc for _, doc in applied() if doc["kind"] == "Deployment")
    typo = copy.deepcopy(deploy)
    c = typo["spec"]["template"]["spec"]["containers"][0]
    c["securityContext"]["allowPriviledgeEscalation"] = False  # sic: an unknown field
    assert schema_errors(typo)
    wrong_type = copy.deepcopy(deploy)
    wrong_type["spec"]["replicas"] = "two"
    assert schema_errors(wrong_type)


def test_every_yaml_under_k8s_is_a_kustomization_or_applied_by_one() -> None:
    listed = {path for root in APPLIED_ROOTS for path, _ in render(root)}
    for path in sorted(K8S_DIR.rglob("*.y*ml")):
        if path.name == "kustomization.yaml":
            kustomization(path.parent)  # only fields the renderer understands
        else:
            assert path in listed, f"{path.relative_to(ROOT)} is in compose/k8s but no " \
                                   "kustomization applies it"


def test_the_renderer_agrees_with_kubectl_kustomize() -> None:
    """tests/manifests.py renders what kustomize renders (checked where kubectl exists:
    the machine images here ship it with the Google Cloud CLI)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return  # the renderer's own tests still ran: test_deploy_manifests.py
    for root in APPLIED_ROOTS:
        out = subprocess.run([kubectl, "kustomize", str(root)], capture_output=True,
                             text=True, timeout=120, check=True).stdout
        theirs = sorted((d["kind"], d["metadata"]["name"], yaml.safe_dump(d, sort_keys=True))
                        for d in yaml.safe_load_all(out) if d)
        ours = sorted((d["kind"], d["metadata"]["name"], yaml.safe_dump(d, sort_keys=True))
                      for _, d in render(root))
        assert [t[:2] for t in ours] == [t[:2] for t in theirs], root
        assert ours == theirs, f"{root}: tests/manifests.py renders differently from kustomize"


# -- Pod Security Standard "restricted" ------------------------------------------------------

#: The volume types "restricted" allows.
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                      "persistentVolumeClaim", "projected", "secret"}


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """Where a pod spec breaks the Pod Security Standard "restricted" (the rules of
    kubernetes.io/docs/concepts/security/pod-security-standards, baseline's included), and
    where a container's root filesystem is writable (Herald's own rule on top)."""
    out = []
    psc = pod.get("securityContext") or {}
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field):
            out.append(f"pod {field}")
    for vol in pod.get("volumes") or []:
        kind = [k for k in vol if k != "name"]
        if kind and kind[0] not in RESTRICTED_VOLUMES:
            out.append(f"volume {vol['name']}: {kind[0]} is not allowed")
    if (psc.get("seLinuxOptions") or {}).get("type") not in (None, "", "container_t",
                                                              "container_init_t",
                                                              "container_kvm_t"):
        out.append("pod seLinuxOptions.type")
    if psc.get("sysctls"):
        out.append("pod sysctls (only the safe set is allowed; none are needed)")
    if psc.get("runAsUser") == 0:
        out.append("pod runAsUser 0")
    for c in containers(pod):
        sc = c.get("securityContext") or {}
        name = f"container {c['name']}"
        if sc.get("privileged"):
            out.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{name}: allowPrivilegeEscalation must be false")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            out.append(f"{name}: capabilities must drop ALL")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            out.append(f"{name}: capabilities may add only NET_BIND_SERVICE")
        if not (sc.get("runAsNonRoot") if "runAsNonRoot" in sc else psc.get("runAsNonRoot")):
            out.append(f"{name}: runAsNonRoot must be true (pod or container)")
        if sc.get("runAsUser") == 0:
            out.append(f"{name}: runAsUser 0")
        seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            out.append(f"{name}: seccompProfile must be RuntimeDefault or Localhost")
        if sc.get("procMount", "Default") != "Default":
            out.append(f"{name}: procMount")
        if any(p.get("hostPort") for p in c.get("ports") or []):
            out.append(f"{name}: hostPort")
        if sc.get("readOnlyRootFilesystem") is not True:
            out.append(f"{name}: readOnlyRootFilesystem must be true (emptyDirs for what "
                       "it writes)")
    return out


def pods() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path, doc in applied():
        pod = pod_spec(doc)
        if pod is not None:
            found.append((f"{path.relative_to(ROOT)} {doc['kind']}/{doc['metadata']['name']}",
                          pod))
    return found


def test_every_pod_passes_pod_security_restricted() -> None:
    found = pods()
    names = " ".join(where for where, _ in found)
    for role in ("herald-frontend", "herald-worker", "herald-beat", "herald-migrate-",
                 "herald-rabbitmq"):
        assert role in names, f"no pod for {role}: {names}"
    problems = {where: v for where, pod in found if (v := restricted_violations(pod))}
    assert problems == {}, problems


def _break(pod: dict[str, Any], how: str) -> dict[str, Any]:
    pod = copy.deepcopy(pod)
    c = pod["containers"][0]
    if how == "escalation":
        del c["securityContext"]["allowPrivilegeEscalation"]
    elif how == "capabilities":
        c["securityContext"]["capabilities"] = {"drop": ["NET_RAW"]}
    elif how == "add-capability":
        c["securityContext"]["capabilities"]["add"] = ["SYS_ADMIN"]
    elif how == "root":
        pod["securityContext"]["runAsNonRoot"] = False
    elif how == "seccomp":
        del pod["securityContext"]["seccompProfile"]
    elif how == "unconfined":
        c["securityContext"]["seccompProfile"] = {"type": "Unconfined"}
    elif how == "hostPath":
        pod["volumes"].append({"name": "host", "hostPath": {"path": "/"}})
    elif how == "hostNetwork":
        pod["hostNetwork"] = True
    elif how == "privileged":
        c["securityContext"]["privileged"] = True
    elif how == "writable-root":
        c["securityContext"]["readOnlyRootFilesystem"] = False
    elif how == "hostPort":
        c["ports"][0]["hostPort"] = 8000
    return pod


@pytest.mark.parametrize("how", ["escalation", "capabilities", "add-capability", "root",
                                 "seccomp", "unconfined", "hostPath", "hostNetwork",
                                 "privileged", "writable-root", "hostPort"])
def test_the_restricted_check_catches_each_rule(how: str) -> None:
    frontend = next(pod for where, pod in pods() if "herald-frontend" in where)
    assert restricted_violations(frontend) == []
    assert restricted_violations(_break(frontend, how)), how


# -- nginx --------------------------------------------------------------------------------


def nginx_test(conf_text: str, directory: Path) -> subprocess.CompletedProcess[str]:
    """``nginx -t`` on a copy of the config for this machine: the upstream host names
    (compose's service names, which do not resolve here) become 127.0.0.1, and pid and
    logs go to ``directory``."""
    conf = re.sub(r"server frontend-[ab]:(\d+)", r"server 127.0.0.1:\1", conf_text)
    conf = conf.replace("access_log    /dev/stdout;", f"access_log {directory}/access.log;")
    conf = conf.replace("error_log     /dev/stderr warn;", f"error_log {directory}/error.log;")
    path = directory / "nginx.conf"
    path.write_text(f"pid {directory}/nginx.pid;\n" + conf)
    return subprocess.run([NGINX, "-t", "-p", str(directory), "-e", str(directory / "e.log"),
                           "-c", str(path)], capture_output=True, text=True, timeout=60,
                          check=False)


def test_nginx_accepts_the_example_config(tmp_path: Path) -> None:
    if not Path(NGINX).exists():
        pytest.fail("needs Debian's nginx: apt-get install -y nginx (compose/bootstrap.sh)")
    text = NGINX_CONF.read_text()
    assert len(re.findall(r"server frontend-[ab]:\d+", text)) == 4  # two upstreams
    ok = nginx_test(text, tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "test is successful" in ok.stderr
    # the check fails on a broken config: an unknown directive, and a missing semicolon
    broken = nginx_test(text.replace("least_conn;", "least_connections;", 1), tmp_path)
    assert broken.returncode != 0 and "least_connections" in broken.stderr
    broken = nginx_test(text.replace("proxy_buffering off;", "proxy_buffering off", 1),
                        tmp_path)
    assert broken.returncode != 0
