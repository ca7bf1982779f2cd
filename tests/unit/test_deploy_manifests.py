"""The deployment files (compose/Dockerfile, docker-compose.yml, nginx.conf, k8s/) agree with
the code: every command is a real manage.py invocation, every HERALD_* variable is one the
configuration reads, the frontend's shutdown fits in the time it is given, the image is
pinned, the clustered broker and database are what the clients are pointed at.
(tests/unit/test_k8s_valid.py checks the schemas, Pod Security and nginx -t.)"""

from __future__ import annotations

import json
import os
import re
import shlex
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import manage
from service.cluster.frontend import DRAIN_WAIT_S
from service.core.config import ENV_VARS, ConfigError, Settings, is_placeholder
from service.server import FD_HEADROOM, GRACEFUL_TIMEOUT_S, WORKER_CONNECTIONS
from tests.manifests import (
    HERALD_IMAGE,
    K8S_DIR,
    SECRETS_EXAMPLE,
    applied,
    load_docs,
    release_tag,
)
from tests.support import ROOT

COMPOSE_DIR = ROOT / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
DOCKERFILE = COMPOSE_DIR / "Dockerfile"
NGINX_CONF = COMPOSE_DIR / "nginx.conf"
HERALD_JS = ROOT / "service" / "static" / "herald.js"
HERALD_WELCOME_JS = HERALD_JS.with_name("herald-receive.js")  # where a welcome is handled

HERALD_NAME = re.compile(r"HERALD_[A-Z0-9_]+")
FRONTEND_PORT = 8000


# -- helpers -----------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(doc, dict) and isinstance(doc.get("services"), dict), COMPOSE_FILE
    return doc


def k8s_docs() -> list[tuple[Path, dict[str, Any]]]:
    """Every object ``kubectl apply -k`` applies from compose/k8s (images set)."""
    return applied()


def example_secrets() -> dict[str, dict[str, str]]:
    """The example Secrets' data under the names of the real ones they stand for."""
    out = {}
    for doc in load_docs(SECRETS_EXAMPLE):
        assert doc["kind"] == "Secret"
        name = doc["metadata"]["name"]
        assert name.endswith("-example"), f"{name}: an example must not carry a real name"
        out[name.removesuffix("-example")] = {str(k): str(v)
                                              for k, v in doc["stringData"].items()}
    return out


def is_herald(container: dict[str, Any]) -> bool:
    return str(container["image"]).rpartition(":")[0].endswith("/" + HERALD_IMAGE)


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per Dockerfile instruction, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _exec_form(args: str) -> list[str]:
    """A Dockerfile CMD/ENTRYPOINT in exec form (JSON list); shell form is split by shlex."""
    if args.startswith("["):
        value = json.loads(args)
        assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
        return value
    return shlex.split(args)


def _argv(command: Any) -> list[str]:
    """A compose/k8s command as an argv list (a string is split like compose does)."""
    if isinstance(command, str):
        return shlex.split(command)
    assert isinstance(command, list), command
    return [str(part) for part in command]


def _unwrap_shell(argv: list[str]) -> list[str]:
    if len(argv) >= 3 and Path(argv[0]).name in {"sh", "bash"} and argv[-2] == "-c":
        return shlex.split(argv[-1])
    return argv


def manage_argv(argv: list[str]) -> list[str] | None:
    """The arguments after ``python manage.py`` in ``argv``, or None when it runs no manage.py.

    A manage.py run any other way (not with python, not from the image's working dir) is an
    error, so a command cannot slip past the parser check by being written differently.
    """
    argv = _unwrap_shell(argv)
    at = [i for i, part in enumerate(argv) if part.endswith("manage.py")]
    if not at:
        return None
    assert len(at) == 1 and at[0] == 1, f"one manage.py, right after python: {argv}"
    assert argv[0] in {"python", "python3"}, f"run manage.py with the image's python: {argv}"
    assert argv[1] == "manage.py", f"manage.py from the working directory /app: {argv}"
    return argv[2:]


def assert_valid_manage(argv: list[str], where: str) -> Any:
    try:
        return manage.parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"{where}: `python manage.py {shlex.join(argv)}` is not a valid "
                    "manage.py invocation (see the argparse error above)")


def compose_commands() -> Iterator[tuple[str, list[str]]]:
    """(where, argv) for every command in the compose file that runs manage.py."""
    for name, svc in compose()["services"].items():
        candidates = []
        if "command" in svc:
            argv = _argv(svc.get("entrypoint") or []) + _argv(svc["command"])
            candidates.append(("command", argv))
        elif "entrypoint" in svc:
            candidates.append(("entrypoint", _argv(svc["entrypoint"])))
        test = (svc.get("healthcheck") or {}).get("test")
        if isinstance(test, list) and test and test[0] in {"CMD", "CMD-SHELL"}:
            test = test[1:] if test[0] == "CMD" else shlex.split(test[1])
        if test:
            candidates.append(("healthcheck", _argv(test)))
        for what, argv in candidates:
            args = manage_argv(argv)
            if args is not None:
                yield f"compose service {name} {what}", args


def pod_specs() -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(where, workload object, pod spec) for every k8s object that runs pods."""
    for path, doc in k8s_docs():
        spec = doc.get("spec") or {}
        if doc["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "Job"}:
            yield (f"{path.name} {doc['kind']}/{doc['metadata']['name']}", doc,
                   spec["template"]["spec"])
        elif doc["kind"] == "CronJob":
            yield (f"{path.name} CronJob/{doc['metadata']['name']}", doc,
                   spec["jobTemplate"]["spec"]["template"]["spec"])
        elif doc["kind"] == "Pod":
            yield f"{path.name} Pod/{doc['metadata']['name']}", doc, spec


def herald_pods() -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """The pods that run Herald's image (the others run RabbitMQ)."""
    for where, doc, pod in pod_specs():
        if any(is_herald(c) for c in containers(pod)):
            yield where, doc, pod


def containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*(pod.get("initContainers") or []), *(pod.get("containers") or [])]


def _execs(container: dict[str, Any]) -> Iterator[tuple[str, list[str]]]:
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        cmd = ((container.get(probe) or {}).get("exec") or {}).get("command")
        if cmd:
            yield probe, _argv(cmd)
    for hook in ("preStop", "postStart"):
        handler = (container.get("lifecycle") or {}).get(hook) or {}
        cmd = (handler.get("exec") or {}).get("command")
        if cmd:
            yield hook, _argv(cmd)


def k8s_commands() -> Iterator[tuple[str, list[str]]]:
    """(where, argv) for every k8s container command (command + args) that runs manage.py."""
    for where, _, pod in pod_specs():
        for c in containers(pod):
            # the image has no ENTRYPOINT: command replaces CMD; args alone would replace CMD too
            candidates = [("command", _argv(c.get("command") or []) + _argv(c.get("args") or []))]
            candidates += list(_execs(c))
            for what, argv in candidates:
                args = manage_argv(argv)
                if args is not None:
                    yield f"{where} container {c['name']} {what}", args


def dockerfile_cmd() -> list[str]:
    cmds = [args for word, args in dockerfile_instructions() if word == "CMD"]
    assert cmds, "the Dockerfile has no CMD"
    return _exec_form(cmds[-1])


def role_of(argv: list[str]) -> str:
    args = manage.parser().parse_args(argv)
    return f"{args.command} {getattr(args, 'role', None) or getattr(args, 'action', '')}".strip()


def herald_names(node: Any) -> Iterator[str]:
    """Every HERALD_* variable a YAML document sets or refers to: mapping keys (compose
    environment, ConfigMap/Secret data), scalar values naming one (k8s env[].name,
    secretKeyRef.key) and ``NAME=value`` list items (compose list-style environment)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(key, str) and key.startswith("HERALD_"):
                yield key
            yield from herald_names(value)
    elif isinstance(node, list):
        for item in node:
            yield from herald_names(item)
    elif isinstance(node, str):
        head = node.split("=", 1)[0]
        if HERALD_NAME.fullmatch(head):
            yield head


def service_env(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for word, args in dockerfile_instructions():
        if word == "ENV":
            for part in shlex.split(args):
                key, sep, value = part.partition("=")
                assert sep, f"use ENV KEY=value in the Dockerfile: {args}"
                env[key] = value
    return env


def replaced(value: str) -> str:
    """What an operator puts in place of an example secret: each EXAMPLE value (a list
    item, or the part after ``user:``) becomes a random one of 40 characters."""
    def one(v: str) -> str:
        head, sep, tail = v.rpartition(":")
        return (head + sep if sep else "") + uuid.uuid4().hex[:20] * 2 if is_placeholder(
            tail) else v
    return ",".join(one(v) for v in value.split(","))


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings.from_env() with exactly ``env`` as the HERALD_* environment, once its
    example secrets have been replaced as their comments ask (production refuses them
    as they are: tests/unit/core/test_config.py)."""
    for key in list(os.environ):
        if key.startswith("HERALD_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, replaced(value))
    try:
        return Settings.from_env()
    except ConfigError as exc:
        pytest.fail(f"the configuration would refuse to start: {exc}")


# -- commands -----------------------------------------------------------------------------


def test_every_compose_command_is_a_valid_manage_invocation() -> None:
    found = list(compose_commands())
    for where, argv in found:
        assert_valid_manage(argv, where)
    roles = sorted({role_of(argv) for _, argv in found})
    assert roles == ["db upgrade", "run beat", "run flower", "run frontend", "run worker"], roles


def test_every_k8s_command_is_a_valid_manage_invocation() -> None:
    found = list(k8s_commands())
    for where, argv in found:
        assert_valid_manage(argv, where)
    roles = {role_of(argv) for _, argv in found}
    assert {"run frontend", "run worker", "run beat"} <= roles, roles
    for where, _, pod in pod_specs():  # every Herald container runs a role (none skipped)
        for c in containers(pod):
            argv = _argv(c.get("command") or []) + _argv(c.get("args") or [])
            if is_herald(c):
                assert manage_argv(argv) is not None, f"{where}: {c['name']} runs no manage.py"
            else:  # a third-party image: RabbitMQ's, running its own entrypoint
                assert str(c["image"]).startswith("rabbitmq:"), f"{where}: {c['image']}"


def test_dockerfile_cmd_runs_a_frontend_and_nothing_wraps_it() -> None:
    argv = manage_argv(dockerfile_cmd())
    assert argv is not None, dockerfile_cmd()
    args = assert_valid_manage(argv, "Dockerfile CMD")
    assert (args.command, args.role, args.port) == ("run", "frontend", FRONTEND_PORT)
    # an ENTRYPOINT would be prepended to every compose/k8s command checked above
    assert not [a for w, a in dockerfile_instructions() if w == "ENTRYPOINT"]


def test_the_parser_check_catches_a_command_that_does_not_exist() -> None:
    with pytest.raises(pytest.fail.Exception, match=r"not a valid manage\.py invocation"):
        assert_valid_manage(["run", "scheduler"], "example")
    with pytest.raises(pytest.fail.Exception, match=r"not a valid manage\.py invocation"):
        assert_valid_manage(["migrate"], "example")
    assert manage_argv(["python", "manage.py", "db", "upgrade"]) == ["db", "upgrade"]
    assert manage_argv(["sh", "-c", "python manage.py run worker"]) == ["run", "worker"]
    assert manage_argv(["sleep", "5"]) is None
    with pytest.raises(AssertionError):
        manage_argv(["celery", "-A", "x", "manage.py"])


# -- environment ------------------------------------------------------------------------


def test_every_herald_variable_is_one_the_configuration_reads() -> None:
    sources: dict[str, list[str]] = {}
    for name in herald_names(compose()):
        sources.setdefault(name, []).append(COMPOSE_FILE.name)
    for path, doc in [*k8s_docs(), *((SECRETS_EXAMPLE, d) for d in load_docs(SECRETS_EXAMPLE))]:
        for name in herald_names(doc):
            sources.setdefault(name, []).append(f"k8s/{path.name}")
    for name in dockerfile_env():
        if name.startswith("HERALD_"):
            sources.setdefault(name, []).append(DOCKERFILE.name)
    assert {"HERALD_DATABASE_URL", "HERALD_BROKER_URL", "HERALD_SECRET_KEY"} <= set(sources)
    unknown = {name: where for name, where in sources.items() if name not in ENV_VARS}
    assert not unknown, f"HERALD_* variables service.config does not read: {unknown}"


def test_herald_name_finder() -> None:
    found = set(herald_names({"environment": ["HERALD_A=1", "OTHER=2"],
                              "env": [{"name": "HERALD_B", "value": "x"}],
                              "data": {"HERALD_C": "y"}, "ref": {"key": "HERALD_D"}}))
    assert found == {"HERALD_A", "HERALD_B", "HERALD_C", "HERALD_D"}


def test_compose_services_start_in_production_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    base = {k: v for k, v in dockerfile_env().items() if k.startswith("HERALD_")}
    services = compose()["services"]
    herald = {where.split()[2] for where, _ in compose_commands()}
    assert herald >= {"migrate", "frontend-a", "frontend-b", "worker", "beat", "flower"}
    for name in sorted(herald):
        svc = services[name]
        settings = settings_from({**base, **service_env(svc)}, monkeypatch)
        assert settings.production, name
        # the primary and its standby, whichever takes writes (a multi-host libpq URL)
        assert "@/herald?host=postgres:5432&host=postgres-standby:5432&" \
               "target_session_attrs=read-write" in settings.database_url, name
        # every RabbitMQ node, in kombu's failover list
        nodes = re.findall(r"@(rabbitmq-\d):5672//", settings.broker_url)
        assert nodes == ["rabbitmq-0", "rabbitmq-1", "rabbitmq-2"], name
        assert settings.host == "0.0.0.0", f"{name} would bind 127.0.0.1 inside its container"


def test_k8s_roles_start_in_production_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    docs = k8s_docs()
    assert not [doc for _, doc in docs if doc["kind"] == "Secret"], \
        "no Secret in compose/k8s: an apply would overwrite the real one"
    data = {(doc["kind"], doc["metadata"]["name"]): {**(doc.get("data") or {}),
                                                     **(doc.get("stringData") or {})}
            for _, doc in docs if doc["kind"] == "ConfigMap"}
    data.update({("Secret", name): values for name, values in example_secrets().items()})
    base = {k: v for k, v in dockerfile_env().items() if k.startswith("HERALD_")}
    for where, _, pod in herald_pods():
        for c in containers(pod):
            env = dict(base)
            refs = c.get("envFrom") or []
            kinds = set()
            for ref in refs:
                for kind, field in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                    if field in ref:
                        key = (kind, ref[field]["name"])
                        assert key in data, f"{where}: {kind} {key[1]} is not in compose/k8s/ " \
                                            "or, for a Secret, in k8s-secrets.example.yaml"
                        env.update({k: str(v) for k, v in data[key].items()})
                        kinds.add(kind)
            assert kinds == {"ConfigMap", "Secret"}, f"{where}: env from a ConfigMap + Secret"
            for item in c.get("env") or []:
                env[item["name"]] = str(item.get("value", "from-a-reference"))
            settings = settings_from(env, monkeypatch)
            assert settings.production and settings.host == "0.0.0.0", where


# -- compose ----------------------------------------------------------------------------


def _depends(svc: dict[str, Any]) -> dict[str, str]:
    dep = svc.get("depends_on") or {}
    if isinstance(dep, list):
        return dict.fromkeys(dep, "service_started")
    return {k: (v or {}).get("condition", "service_started") for k, v in dep.items()}


def test_compose_has_every_service_wired() -> None:
    services = compose()["services"]
    rabbits = ("rabbitmq-0", "rabbitmq-1", "rabbitmq-2")
    assert {"postgres", "postgres-standby", *rabbits, "migrate", "frontend-a", "frontend-b",
            "nginx", "worker", "beat", "flower"} <= set(services), sorted(services)
    for name in ("postgres", "postgres-standby"):
        assert str(services[name]["image"]).startswith("postgres:15"), name
        assert "pg_isready" in str(services[name]["healthcheck"]["test"]), name
    assert "pg_basebackup" in str(services["postgres-standby"]["command"])  # streams from it
    assert _depends(services["postgres-standby"]) == {"postgres": "service_healthy"}
    for name in rabbits:  # one cluster: the same cookie, each node its own name
        svc = services[name]
        assert "management" in str(svc["image"]) and svc.get("healthcheck", {}).get("test")
        assert svc["hostname"] == name
        assert service_env(svc)["RABBITMQ_ERLANG_COOKIE"] == service_env(
            services[rabbits[0]])["RABBITMQ_ERLANG_COOKIE"]
    conf = (COMPOSE_DIR / "rabbitmq" / "20-herald.conf").read_text()
    assert re.findall(r"classic_config\.nodes\.\d+ = rabbit@(\S+)", conf) == list(rabbits)

    assert _depends(services["migrate"]) == {"postgres": "service_healthy",
                                            "postgres-standby": "service_healthy",
                                            "rabbitmq-0": "service_healthy"}
    frontends = {name: svc for name, svc in services.items()
                 if any(role_of(argv) == "run frontend" for where, argv in compose_commands()
                        if where.startswith(f"compose service {name} command"))}
    assert set(frontends) == {"frontend-a", "frontend-b"}
    ids = {service_env(svc).get("HERALD_FRONTEND_ID") for svc in frontends.values()}
    assert ids == {"frontend-a", "frontend-b"}, "each frontend needs its own HERALD_FRONTEND_ID"
    for name, svc in frontends.items():
        assert "/readyz" in str(svc["healthcheck"]["test"]), name
        assert str(FRONTEND_PORT) in str(svc["healthcheck"]["test"]), name
        assert _depends(svc).get("migrate") == "service_completed_successfully", name
        grace = svc.get("stop_grace_period", "10s")
        assert _seconds(grace) > GRACEFUL_TIMEOUT_S, \
            f"{name}: stop_grace_period {grace} cuts gunicorn's {GRACEFUL_TIMEOUT_S} s drain"
        nofile = svc["ulimits"]["nofile"]
        assert min(nofile["soft"], nofile["hard"]) >= WORKER_CONNECTIONS + FD_HEADROOM, name
    for name in ("worker", "beat"):
        assert _depends(services[name]).get("migrate") == "service_completed_successfully"

    flower = services["flower"]
    api_url = service_env(flower)["HERALD_RABBITMQ_API"]
    assert re.match(r"http://[^@/]+@rabbitmq-0:15672/api/$", api_url), api_url

    nginx = services["nginx"]
    assert any(str(v).split(":")[0].endswith("nginx.conf") for v in nginx.get("volumes", []))
    assert {"frontend-a", "frontend-b"} <= set(_depends(nginx))


def _seconds(value: Any) -> float:
    if isinstance(value, (int, float)):
        return float(value)
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", str(value)):
        total += float(number) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    return total


def nginx_locations(conf: str) -> dict[str, str]:
    """Each ``location`` block's body by its match (the config nests no deeper)."""
    return {m.group(1).strip(): m.group(2)
            for m in re.finditer(r"location\s+([^{]+)\{([^}]*)\}", conf)}


def herald_js_ping_s() -> float:
    """herald.js's longest ping interval: its fallback before a welcome says ``heartbeat``
    (after it, it pings every heartbeat, 10 s by default: more often)."""
    found = re.search(r"PING_MS\s*=\s*([\d_]+)", HERALD_JS.read_text())
    assert found, "herald.js's default ping interval moved: update this test"
    assert "w.heartbeat * 1000" in HERALD_WELCOME_JS.read_text(), \
        "herald.js no longer pings at welcome.heartbeat"
    ping_s = int(found.group(1).replace("_", "")) / 1000
    from service.core.config import Settings

    assert Settings.heartbeat_s <= ping_s  # so the fallback is the longest interval
    return ping_s


FORWARDED = ("Host", "X-Real-IP", "X-Forwarded-For", "X-Forwarded-Proto")


def test_nginx_proxies_websockets_to_both_frontends() -> None:
    conf = re.sub(r"#.*", "", NGINX_CONF.read_text())
    assert re.search(r"proxy_http_version\s+1\.1\s*;", conf)
    assert re.search(r"proxy_set_header\s+Upgrade\s+\$http_upgrade\s*;", conf)
    connection = re.search(r"proxy_set_header\s+Connection\s+(\S+)\s*;", conf)
    assert connection, "no Connection header for the WebSocket upgrade"
    value = connection.group(1).strip("\"'")
    if value.startswith("$"):  # a map: it must produce "upgrade" for upgrade requests
        mapping = re.search(r"map\s+\$http_upgrade\s+\\?" + re.escape(value) + r"\s*\{([^}]*)\}",
                            conf)
        assert mapping and re.search(r"default\s+upgrade\s*;", mapping.group(1)), value
    else:
        assert value.lower() == "upgrade", value
    upstreams = dict(re.findall(r"upstream\s+(\S+)\s*\{([^}]*)\}", conf))
    assert upstreams, "no upstream block"
    for name, body in upstreams.items():
        servers = set(re.findall(r"server\s+([^\s;]+)", body))
        assert servers == {f"frontend-a:{FRONTEND_PORT}", f"frontend-b:{FRONTEND_PORT}"}, name
        assert re.search(r"\bzone\s", body), f"{name}: failures not shared by the workers"
    locations = nginx_locations(conf)
    assert "= /readyz" in locations, "readiness must pass through"
    # a location that sets any proxy_set_header inherits none from the server level
    for where, body in locations.items():
        if "proxy_pass" in body:
            for header in FORWARDED:
                assert re.search(rf"proxy_set_header\s+{header}\s", body), \
                    f"location {where} drops {header}"
    assert not re.search(r"server\s*\{[^{]*proxy_set_header", conf), \
        "set the forwarded headers in each location, not at the server level"


def test_nginx_keeps_draining_frontends_out_of_websocket_rotation() -> None:
    conf = re.sub(r"#.*", "", NGINX_CONF.read_text())
    ws = nginx_locations(conf)["/ws"]
    upstream = re.search(r"proxy_pass\s+http://(\S+);", ws)
    assert upstream
    body = dict(re.findall(r"upstream\s+(\S+)\s*\{([^}]*)\}", conf))[upstream.group(1)]
    # a draining frontend answers upgrades 503 (service/sockets/wsio.py): retried and
    # counted as a failure, so the first one takes it out of rotation
    assert re.search(r"proxy_next_upstream[^;]*\bhttp_503\b", ws)
    assert set(re.findall(r"max_fails=(\d+)", body)) == {"1"}
    # and an API 503 (Postgres away, for every frontend) must not count against sockets
    http = nginx_locations(conf)["/"]
    http_upstream = re.search(r"proxy_pass\s+http://(\S+);", http)
    assert http_upstream and http_upstream.group(1) != upstream.group(1)
    assert not re.search(r"proxy_next_upstream[^;]*\bhttp_503\b", http)


def test_nginx_read_timeout_is_a_few_client_pings() -> None:
    """Herald sends nothing on an idle socket; the client's pings (and their pongs) are the
    traffic that keeps a live socket open through the proxy, and their absence is what
    closes a half-open one. So the timeout is a few of herald.js's ping intervals: longer
    than two (one late ping closes nothing), at most four (a vanished client goes soon)."""
    ping_s = herald_js_ping_s()
    conf = re.sub(r"#.*", "", NGINX_CONF.read_text())
    for where, body in nginx_locations(conf).items():
        for directive in ("proxy_read_timeout", "proxy_send_timeout"):
            for t in re.findall(rf"{directive}\s+(\S+)\s*;", body):
                assert 2 * ping_s < _seconds(t) <= 4 * ping_s, f"{where}: {directive} {t}"
    assert re.search(r"proxy_read_timeout", nginx_locations(conf)["/ws"])


# -- k8s --------------------------------------------------------------------------------


def _workload(role: str) -> tuple[str, dict[str, Any], dict[str, Any], dict[str, Any]]:
    matches = []
    for where, doc, pod in pod_specs():
        for c in containers(pod):
            argv = manage_argv(_argv(c.get("command") or []) + _argv(c.get("args") or []))
            if argv is not None and role_of(argv) == role and doc["kind"] == "Deployment":
                matches.append((where, doc, pod, c))
    assert len(matches) == 1, f"one Deployment runs {role}: {[m[0] for m in matches]}"
    return matches[0]


def _prestop_seconds(container: dict[str, Any]) -> float:
    pre = (container.get("lifecycle") or {}).get("preStop") or {}
    if "sleep" in pre:
        return float(pre["sleep"]["seconds"])
    cmd = _unwrap_shell(_argv((pre.get("exec") or {}).get("command") or []))
    if cmd and cmd[0] == "sleep":
        return float(cmd[1])
    return 0.0


def test_k8s_frontend_probes_and_shutdown() -> None:
    where, deploy, pod, c = _workload("run frontend")
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz", where
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz", where
    ports = {p.get("name"): p["containerPort"] for p in c.get("ports") or []}
    metrics_port = int(config_map()["HERALD_METRICS_PORT"])
    assert metrics_port in ports.values(), f"{where}: the metrics port is not declared"
    for probe in ("readinessProbe", "livenessProbe"):
        port = c[probe]["httpGet"]["port"]
        # the metrics port: a probe does not queue behind a connect storm on the public one
        assert ports.get(port, port) == metrics_port, f"{where}: {probe} port {port}"
        assert c[probe]["timeoutSeconds"] >= 1
    assert (c.get("lifecycle") or {}).get("preStop"), f"{where}: no preStop hook"
    grace = pod.get("terminationGracePeriodSeconds", 30)
    assert grace > DRAIN_WAIT_S, f"{where}: grace {grace}s <= drain {DRAIN_WAIT_S}s"
    # the preStop sleep comes out of the same budget, before gunicorn's own drain allowance
    budget = _prestop_seconds(c) + GRACEFUL_TIMEOUT_S
    assert grace > budget, f"{where}: grace {grace}s <= preStop + gunicorn {budget}s"
    assert deploy["spec"].get("replicas", 1) >= 2, "one frontend cannot drain onto another"


def _selects(selector: dict[str, Any], labels: dict[str, Any]) -> bool:
    wanted = selector.get("matchLabels", selector)
    return bool(wanted) and all(labels.get(k) == v for k, v in wanted.items())


def test_k8s_frontend_service_and_disruption_budget() -> None:
    _, deploy, _pod, c = _workload("run frontend")
    labels = deploy["spec"]["template"]["metadata"]["labels"]
    assert _selects(deploy["spec"]["selector"], labels)
    docs = [doc for _, doc in k8s_docs()]
    services = [d for d in docs
                if d["kind"] == "Service" and _selects(d["spec"]["selector"], labels)]
    public = [d for d in services if d["spec"].get("clusterIP") != "None"]
    assert len(public) == 1, "one Service (not headless) selects the frontend pods"
    ports = {p.get("name"): p["containerPort"] for p in c.get("ports") or []}
    for port in public[0]["spec"]["ports"]:  # the public port only, never the metrics one
        target = port.get("targetPort", port["port"])
        assert ports.get(target, target) == FRONTEND_PORT, port
    metrics_port = int(config_map()["HERALD_METRICS_PORT"])
    scraped = [d for d in services if d["spec"].get("clusterIP") == "None"
               and [ports.get(p["targetPort"], p["targetPort"]) for p in d["spec"]["ports"]]
               == [metrics_port]]
    annotations = deploy["spec"]["template"]["metadata"].get("annotations") or {}
    assert scraped or annotations.get("prometheus.io/port") == str(metrics_port), \
        "nothing points Prometheus at the metrics port"
    assert annotations.get("prometheus.io/port") in (None, str(metrics_port))
    pdbs = [d for d in docs if d["kind"] == "PodDisruptionBudget"
            and _selects(d["spec"]["selector"], labels)]
    assert len(pdbs) == 1, "one PodDisruptionBudget covers the frontend pods"
    # minAvailable: 1 would let a drain evict all frontends but one at once
    assert pdbs[0]["spec"] == {"maxUnavailable": 1, "selector": pdbs[0]["spec"]["selector"]}


def test_k8s_worker_and_single_beat() -> None:
    _workload("run worker")
    where, beat, _, _ = _workload("run beat")
    assert beat["spec"].get("replicas", 1) == 1, f"{where}: exactly one beat"
    assert beat["spec"].get("strategy", {}).get("type") == "Recreate", \
        f"{where}: a rolling update would run two beats at once"


def config_map() -> dict[str, str]:
    (data,) = [doc["data"] for _, doc in k8s_docs()
               if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == "herald-config"]
    return {str(k): str(v) for k, v in data.items()}


def test_k8s_images_are_pinned_and_the_migrate_job_is_per_release() -> None:
    tag = release_tag()
    assert tag and tag != "latest", "release/kustomization.yaml: a fixed tag, not latest"
    herald = 0
    for where, _, pod in pod_specs():
        for c in containers(pod):
            name, _, image_tag = str(c["image"]).rpartition(":")
            assert name and image_tag and image_tag != "latest", f"{where}: {c['image']}"
            if is_herald(c):  # set by the release component, the same for every role
                herald += 1
                assert image_tag == tag, f"{where}: {c['image']} is not the release {tag}"
    assert herald >= 4, "frontend, worker, beat and migrate run the release's image"
    jobs = [doc for _, doc in k8s_docs() if doc["kind"] == "Job"]
    assert [j["metadata"]["name"] for j in jobs] == [f"herald-migrate-{tag}"], \
        "the migrate Job is named after the release (a Job's template cannot change)"
    assert jobs[0]["spec"]["ttlSecondsAfterFinished"] > 0


def test_k8s_secrets_live_outside_the_applied_folder() -> None:
    assert not SECRETS_EXAMPLE.resolve().is_relative_to(K8S_DIR.resolve())
    for path in K8S_DIR.rglob("*.y*ml"):
        kinds = [d.get("kind") for d in yaml.safe_load_all(path.read_text()) if d]
        assert "Secret" not in kinds, f"{path}: a Secret inside compose/k8s"
    secrets = example_secrets()
    assert set(secrets) == {"herald-secrets", "herald-rabbitmq"}
    referenced = {ref["secretRef"]["name"] for _, _, pod in pod_specs() for c in containers(pod)
                  for ref in c.get("envFrom") or [] if "secretRef" in ref}
    referenced |= {e["valueFrom"]["secretKeyRef"]["name"] for _, _, pod in pod_specs()
                   for c in containers(pod) for e in c.get("env") or []
                   if "secretKeyRef" in (e.get("valueFrom") or {})}
    assert referenced == set(secrets), referenced


def test_k8s_clients_list_every_broker_node_and_both_postgres_hosts() -> None:
    (sts,) = [doc for _, doc in k8s_docs() if doc["kind"] == "StatefulSet"]
    assert sts["spec"]["replicas"] == 3
    headless = sts["spec"]["serviceName"]
    env = example_secrets()["herald-secrets"]
    hosts = re.findall(r"@([^:/;]+):5672//(?:;|$)", env["HERALD_BROKER_URL"])
    assert hosts == [f"{sts['metadata']['name']}-{i}.{headless}" for i in range(3)], hosts
    db = env["HERALD_DATABASE_URL"]
    assert db.count("host=") == 2 and "target_session_attrs=read-write" in db
    secret_key = {e["valueFrom"]["secretKeyRef"]["key"]
                  for c in containers(sts["spec"]["template"]["spec"]) for e in c["env"]
                  if "secretKeyRef" in (e.get("valueFrom") or {})}
    assert secret_key <= set(example_secrets()["herald-rabbitmq"])


def test_k8s_frontends_and_workers_spread_over_zones_and_nodes() -> None:
    for role in ("run frontend", "run worker"):
        where, deploy, pod, _ = _workload(role)
        labels = deploy["spec"]["template"]["metadata"]["labels"]
        keys = {t["topologyKey"] for t in pod.get("topologySpreadConstraints") or []
                if _selects(t["labelSelector"], labels)}
        assert keys == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}, where
