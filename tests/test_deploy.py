"""The deployment files, checked against the code without a Docker engine.

docker-compose.yml is parsed with PyYAML and the Dockerfile as text, and both are compared with
what the code provides and reads: every command is one the image installs and its arguments
parse; the ports agree; every environment variable set is read by the code (or by the named
tool) and every variable the code reads is in docs/deploy.md's configuration reference, with
its default; the GPU worker can be scaled; teachers and datasets are mounted read-only where
the settings point; the API requests shown in docs/deploy.md validate against the API schemas.
docs/deploy.md and the README name no LIFTPLACE_* variable the code does not read (anywhere in the
text); the docs' `docker compose` commands name services of their compose file, their `python -c`
snippets import what exists, and the four-host walkthrough's ports are the compose files' ports.
"""

from __future__ import annotations

import argparse
import ast
import fnmatch
import json
import re
import runpy
import shlex
import tomllib
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
WORKER_COMPOSE_FILE = ROOT / "docker-compose.worker.yml"  # a GPU host that joins the head's cluster
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
DEPLOY_DOC = ROOT / "docs" / "deploy.md"
PYPROJECT = ROOT / "pyproject.toml"
REQUIREMENTS_SCRIPT = ROOT / "deploy" / "requirements.py"
LOCK_FILE = ROOT / "deploy" / "requirements.lock"
LOCK_SCRIPT = ROOT / "deploy" / "lock.sh"

SERVICES = ("postgres", "mlflow", "ray-head", "ray-worker", "api")
LIFTPLACE_IMAGE_SERVICES = ("mlflow", "ray-head", "ray-worker", "api")  # built from ./Dockerfile
CODE_DIRS = ("liftplace", "server", "worker", "web")
# Set by the compose file for other tools than liftplace (checked below against those tools).
THIRD_PARTY_ENV = {
    "RAY_AUTH_MODE": "ray",
    "RAY_AUTH_TOKEN": "ray",
    "MLFLOW_SERVER_ALLOWED_HOSTS": "mlflow",
    "MLFLOW_AUTH_CONFIG_PATH": "mlflow",
    "MLFLOW_AUTH_ADMIN_PASSWORD": "mlflow",
    "MLFLOW_FLASK_SERVER_SECRET_KEY": "mlflow",
    "MLFLOW_TRACKING_USERNAME": "mlflow",
    "MLFLOW_TRACKING_PASSWORD": "mlflow",
    "POSTGRES_USER": "postgres",
    "POSTGRES_PASSWORD": "postgres",
    "POSTGRES_DB": "postgres",
}
# Base-system tools a command or health check may use besides the installed console scripts.
SYSTEM_TOOLS = {"sh", "grep", "python"}
PAPER_METHODS = {"outkd", "outkd+featkd", "lift+place+featkd"}


# --- parsing ---------------------------------------------------------------------------------------


@cache
def compose(file: Path = COMPOSE_FILE) -> dict[str, Any]:
    return yaml.safe_load(file.read_text())


def service(name: str, file: Path = COMPOSE_FILE) -> dict[str, Any]:
    return compose(file)["services"][name]


_INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}")


def interpolate(text: str) -> str:
    """Compose's variable interpolation with every variable unset: defaults, '<NAME>' for required ones."""

    def sub(m: re.Match[str]) -> str:
        op = m["op"] or ""
        if op.endswith("-"):
            return m["arg"]
        if op.endswith("?"):
            return f"<{m['name']}>"
        return ""

    return _INTERPOLATION.sub(sub, text.replace("$$", "\0")).replace("\0", "$")


def compose_variables(file: Path | None = None) -> set[str]:
    """Names interpolated in the compose files (``${NAME...}``), read by docker compose."""
    files = (COMPOSE_FILE, WORKER_COMPOSE_FILE) if file is None else (file,)
    return {m["name"] for f in files for m in _INTERPOLATION.finditer(f.read_text().replace("$$", ""))}


def env(name: str, file: Path = COMPOSE_FILE) -> dict[str, str]:
    raw = service(name, file).get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) if "=" in item else (item, "") for item in raw)
    return {k: interpolate(str(v)) for k, v in raw.items()}


def ports(name: str) -> list[tuple[str | None, int]]:
    """(published host port or None, container port) of a service."""
    out = []
    for p in service(name).get("ports") or []:
        if isinstance(p, dict):
            out.append((str(p["published"]) if p.get("published") else None, int(p["target"])))
            continue
        parts = interpolate(str(p)).split("/")[0].rsplit(":", 2)
        host = parts[-2] if len(parts) >= 2 else None
        out.append((host, int(parts[-1])))
    return out


def volumes(name: str, file: Path = COMPOSE_FILE) -> list[tuple[str, str, bool]]:
    """(source, target, read_only) of a service's mounts."""
    out = []
    for v in service(name, file).get("volumes") or []:
        if isinstance(v, dict):
            out.append((str(v.get("source", "")), v["target"], bool(v.get("read_only", False))))
            continue
        parts = interpolate(str(v)).split(":")
        mode = parts[2] if len(parts) > 2 else "rw"
        out.append((parts[0], parts[1], "ro" in mode.split(",")))
    return out


def mount_of(name: str, target: str) -> tuple[str, str, bool]:
    matches = [v for v in volumes(name) if v[1] == target]
    assert matches, f"{name}: nothing mounted at {target}"
    return matches[0]


def _split_shell(script: str) -> list[list[str]]:
    steps = []
    for part in re.split(r"&&|\|\||;|\|", script):
        words = shlex.split(part)
        if words and words[0] == "exec":
            words = words[1:]
        if words:
            steps.append(words)
    return steps


def command_steps(cmd: Any) -> list[list[str]]:
    """A compose command (list or string; ``sh -c`` scripts split at && ; | ||) as argument lists."""
    words = shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]
    words = [interpolate(w) for w in words]
    if len(words) == 3 and words[0] in ("sh", "/bin/sh", "bash") and words[1] == "-c":
        return _split_shell(words[2])
    return [words]


def healthcheck_steps(name: str, file: Path = COMPOSE_FILE) -> list[list[str]]:
    test = service(name, file)["healthcheck"]["test"]
    if isinstance(test, str):
        return _split_shell(interpolate(test))
    kind, *rest = test
    if kind == "CMD-SHELL":
        return _split_shell(interpolate(rest[0]))
    assert kind == "CMD", f"{name}: healthcheck test {test!r}"
    return [[interpolate(str(w)) for w in rest]]


def steps_of(name: str, executable: str, file: Path = COMPOSE_FILE) -> list[list[str]]:
    return [s for s in command_steps(service(name, file).get("command") or []) if s[0] == executable]


@cache
def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    out, buf = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        if s.endswith("\\"):
            buf += s[:-1] + " "
            continue
        buf += s
        instr, _, args = buf.partition(" ")
        out.append((instr.upper(), args.strip()))
        buf = ""
    return out


def docker_instructions(kind: str) -> list[str]:
    return [args for instr, args in dockerfile() if instr == kind]


@cache
def docker_args() -> dict[str, str]:
    out = {}
    for args in docker_instructions("ARG"):
        name, _, default = args.partition("=")
        out[name.strip()] = default.strip()
    return out


def expand_args(text: str) -> str:
    return re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: docker_args().get(m[1], m[0]), text)


@cache
def docker_env() -> dict[str, str]:
    out = {}
    for args in docker_instructions("ENV"):
        for word in shlex.split(args):
            if "=" in word:
                k, v = word.split("=", 1)
                out[k] = v
    return out


@cache
def pyproject() -> dict[str, Any]:
    return tomllib.loads(PYPROJECT.read_text())


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@cache
def pins() -> dict[str, str]:
    """Normalised distribution name -> version pinned in pyproject (core and every extra)."""
    project = pyproject()["project"]
    reqs = list(project["dependencies"]) + [r for extra in project["optional-dependencies"].values() for r in extra]
    out = {}
    for r in reqs:
        m = re.match(r"^\s*([A-Za-z0-9._-]+)(\[[^\]]*\])?\s*==\s*([^\s;,]+)", r)
        if m:
            out[_norm(m[1])] = m[3]
    return out


@cache
def platform_pins() -> set[str]:
    return {_norm(re.split(r"[\[=<>~! ]", r, maxsplit=1)[0]) for r in pyproject()["project"]["optional-dependencies"]
            ["platform"]}


@cache
def deploy_doc() -> str:
    return DEPLOY_DOC.read_text()


@cache
def doc_tables(text: str | None = None) -> dict[str, list[list[str]]]:
    """Rows (cells) of the Markdown tables of docs/deploy.md (or `text`), by the heading above them."""
    tables: dict[str, list[list[str]]] = {}
    heading = ""
    for line in (deploy_doc() if text is None else text).splitlines():
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        elif line.startswith("|") and not re.match(r"^\|[\s|:-]+\|$", line):
            tables.setdefault(heading, []).append([c.strip() for c in line.strip().strip("|").split("|")])
    return tables


def documented_vars(heading: str | None = None) -> dict[str, list[str]]:
    """Variable name -> its table row, for rows whose first cell names `UPPER_CASE` variables."""
    out = {}
    for h, rows in doc_tables().items():
        if heading is not None and h != heading:
            continue
        for row in rows:
            for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", row[0]):
                out[name] = row
    return out


# --- what the code reads ---------------------------------------------------------------------------


@cache
def settings_env() -> dict[str, tuple[str, Any]]:
    """Environment variable -> (field name, field) of server.settings.Settings."""
    from pydantic import AliasChoices

    from server.settings import Settings

    prefix = Settings.model_config.get("env_prefix", "")
    out = {}
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        if alias is None:
            names = [f"{prefix}{name}".upper()]
        elif isinstance(alias, AliasChoices):
            names = [c.upper() for c in alias.choices if isinstance(c, str)]
        else:
            names = [str(alias).upper()]
        for n in names:
            out[n] = (name, field)
    return out


def _is_environ(node: ast.AST) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "environ" and isinstance(node.value, ast.Name)
            and node.value.id == "os") or (isinstance(node, ast.Name) and node.id == "environ")


def env_reads(path: Path) -> set[str]:
    """Variables a module reads: os.environ.get(X), os.getenv(X), os.environ[X] (X a literal or a constant)."""
    tree = ast.parse(path.read_text())
    consts: dict[str, str] = {}
    for node in ast.walk(tree):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) \
            else []
        value = getattr(node, "value", None)
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            consts.update({t.id: value.value for t in targets if isinstance(t, ast.Name)})

    def literal(node: ast.AST) -> str | None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
        return consts.get(node.id) if isinstance(node, ast.Name) else None

    found = set()
    for node in ast.walk(tree):
        key = None
        if isinstance(node, ast.Call) and node.args:
            f = node.func
            if isinstance(f, ast.Attribute) and ((f.attr == "get" and _is_environ(f.value)) or (
                    f.attr == "getenv" and isinstance(f.value, ast.Name) and f.value.id == "os")):
                key = literal(node.args[0])
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) and _is_environ(node.value):
            key = literal(node.slice)
        if key:
            found.add(key)
    return found


@cache
def library_env() -> set[str]:
    return {v for d in CODE_DIRS if (ROOT / d).is_dir() for p in sorted((ROOT / d).rglob("*.py")) for v in env_reads(p)}


@cache
def script_env() -> set[str]:
    return {m for p in sorted((ROOT / "scripts").glob("*.sh"))
            for m in re.findall(r"\$\{?(LIFTPLACE_[A-Z0-9_]+)", p.read_text())}


@cache
def code_env() -> set[str]:
    """Every environment variable liftplace reads: the server's settings, the library, the scripts."""
    return set(settings_env()) | library_env() | script_env()


def test_the_code_scan_finds_what_the_code_reads():
    # guards the scanners above against finding nothing (every check below would pass vacuously)
    assert {"DATABASE_URL", "RAY_ADDRESS", "MLFLOW_TRACKING_URI", "LIFTPLACE_DATA_DIR", "LIFTPLACE_PORT"} \
        <= set(settings_env())
    assert {"LIFTPLACE_CACHE_DIR", "LIFTPLACE_INCEPTION_WEIGHTS"} <= library_env()
    assert "LIFTPLACE_TEST_POSTGRES" in script_env()


# --- checking commands against what the image installs ----------------------------------------------


def parse_liftplace(args: list[str]) -> argparse.Namespace:
    from liftplace.cli import build_parser

    try:
        return build_parser().parse_args(args)
    except SystemExit as exc:  # argparse reports the problem on stderr
        raise AssertionError(f"`liftplace {shlex.join(args)}` does not parse (exit {exc.code})") from None


def click_params(group: Any, prog: str, args: list[str]) -> dict[str, Any]:
    import click

    assert args and args[0] in group.commands, f"`{prog} {args[0] if args else ''}`: no such command"
    try:
        return group.commands[args[0]].make_context(args[0], list(args[1:])).params
    except click.ClickException as exc:
        raise AssertionError(f"`{prog} {shlex.join(args)}`: {exc.format_message()}") from None


def parse_ray(args: list[str]) -> dict[str, Any]:
    from ray.scripts.scripts import cli

    return click_params(cli, "ray", args)


def parse_mlflow(args: list[str]) -> dict[str, Any]:
    from mlflow.cli import cli

    return click_params(cli, "mlflow", args)


def check_step(step: list[str]) -> None:
    exe, args = step[0], step[1:]
    if exe == "liftplace":
        parse_liftplace(args)
    elif exe == "ray":
        parse_ray(args)
    elif exe == "mlflow":
        parse_mlflow(args)
    elif exe == "python":
        assert args[:1] == ["-c"], f"python {args}"
        compile(args[1], "<healthcheck>", "exec")
    else:
        assert exe in SYSTEM_TOOLS, f"{exe!r} is not a command the image provides"


# --- compose: services, health, dependencies --------------------------------------------------------


def test_compose_has_the_services():
    assert set(SERVICES) <= set(compose()["services"])


@pytest.mark.parametrize("name", SERVICES)
def test_every_service_has_a_healthcheck(name):
    hc = service(name).get("healthcheck")
    assert hc and not hc.get("disable") and hc.get("test") not in (None, ["NONE"]), f"{name}: no healthcheck"


@pytest.mark.parametrize("name", SERVICES)
def test_depends_on_waits_for_healthy_services(name):
    deps = service(name).get("depends_on") or {}
    assert isinstance(deps, dict), f"{name}: depends_on without conditions"
    for dep, spec in deps.items():
        assert dep in compose()["services"], f"{name} depends on an unknown service {dep!r}"
        assert spec.get("condition") == "service_healthy", f"{name} -> {dep}: {spec}"
        assert service(dep).get("healthcheck"), f"{name} waits for {dep} to be healthy, which has no healthcheck"


def test_the_dependencies_form_the_start_order():
    def deps(name: str) -> set[str]:
        return set(service(name).get("depends_on") or {})

    assert "postgres" in deps("mlflow")
    assert "ray-head" in deps("ray-worker")
    # the API dispatches as soon as it runs: it waits for the database, MLflow, Ray and a GPU worker
    assert {"postgres", "mlflow", "ray-head", "ray-worker"} <= deps("api")


@pytest.mark.parametrize("name", LIFTPLACE_IMAGE_SERVICES)
def test_liftplace_services_run_the_image_of_this_dockerfile(name):
    s = service(name)
    build = s.get("build")
    assert isinstance(build, dict) and build.get("context") == "." and build.get("dockerfile", "Dockerfile") == \
        "Dockerfile", f"{name}: {build!r}"
    assert s.get("image") == service("api").get("image"), f"{name}: another image than the API's"


# --- compose: commands ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", LIFTPLACE_IMAGE_SERVICES)
def test_commands_and_healthchecks_are_provided_by_the_image(name):
    steps = command_steps(service(name).get("command") or [])
    assert steps, f"{name}: no command"
    for step in steps + healthcheck_steps(name):
        check_step(step)


def test_console_scripts_come_from_pinned_packages():
    from importlib.metadata import entry_points

    scripts = {ep.name: ep for ep in entry_points(group="console_scripts")}
    assert pyproject()["project"]["scripts"]["liftplace"] == "liftplace.cli:main"
    for exe in ("ray", "mlflow"):
        assert exe in scripts, f"no `{exe}` console script installed"
        dist = _norm(scripts[exe].dist.name)
        assert dist in platform_pins(), f"`{exe}` comes from {dist}, not pinned in the platform extra"


def test_serve_is_a_registered_liftplace_command():
    from importlib.metadata import entry_points

    assert pyproject()["project"]["entry-points"]["liftplace.commands"]["serve"] == "server.cli:register"
    assert "serve" in {ep.name for ep in entry_points(group="liftplace.commands")}
    assert parse_liftplace(["serve", "--host", "0.0.0.0"]).command == "serve"


def test_the_checks_refuse_a_wrong_command():
    with pytest.raises(AssertionError):
        parse_liftplace(["serve", "--no-such-flag"])
    with pytest.raises(AssertionError):
        parse_ray(["start", "--no-such-flag"])
    with pytest.raises(AssertionError):
        check_step(["uvicorn", "server.app:app"])


# --- compose: ports and addresses -----------------------------------------------------------------


def serve_args() -> argparse.Namespace:
    (step,) = steps_of("api", "liftplace")
    return parse_liftplace(step[1:])


def test_the_api_port_is_the_port_it_serves_on():
    from server.settings import DEFAULT_PORT

    ns = serve_args()
    assert ns.command == "serve"
    port = ns.port or int(env("api").get("LIFTPLACE_PORT", DEFAULT_PORT))
    host = ns.host or env("api").get("LIFTPLACE_HOST", "127.0.0.1")
    # on the host network: it listens on PUBLISH_ADDR itself, by default this host only
    assert service("api")["network_mode"] == "host" and not service("api").get("ports")
    assert host == "127.0.0.1", "the API has no authentication by default: this host only unless PUBLISH_ADDR says"
    assert any(f"{host}:{port}/api/ready" in " ".join(s) for s in healthcheck_steps("api"))
    assert docker_instructions("EXPOSE") == [str(port)]


NODE_IP = "<NODE_IP>"  # the required ${NODE_IP:?...}: this host's address on the cluster network


def test_mlflow_is_published_on_the_cluster_network_only_behind_basic_auth():
    (step,) = steps_of("mlflow", "mlflow")
    params = parse_mlflow(step[1:])
    port = params["port"]
    assert params["app_name"] == "basic-auth", "MLflow is published for the workers: only with its basic-auth app"
    # the jobs of other hosts upload and download artifacts through the server, never the volume itself
    assert params["serve_artifacts"] and "--serve-artifacts" in step, "MLflow serves the artifacts (pinned)"
    assert params["host"] == "0.0.0.0"
    (published,) = [interpolate(str(p)) for p in service("mlflow")["ports"]]
    assert published == f"{NODE_IP}:{port}:{port}", "MLflow is published on NODE_IP, where the workers reach it"
    assert any(f"127.0.0.1:{port}/health" in " ".join(s) for s in healthcheck_steps("mlflow"))
    # the API hands its tracking URI to every job: an address every GPU host reaches
    assert env("api")["MLFLOW_TRACKING_URI"] == f"http://{NODE_IP}:{port}"
    ui = env("api")["MLFLOW_UI_URL"]
    assert ui.rstrip("/").endswith(f":{port}"), f"MLFLOW_UI_URL {ui} is not where MLflow is published"
    allowed = env("mlflow")["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    assert f"{NODE_IP}:{port}" in allowed, "MLflow refuses the Host header NODE_IP:PORT the API and workers send"
    assert {"localhost:*", "127.0.0.1:*"} <= set(allowed), "a browser through a tunnel sends localhost:PORT"


def test_mlflow_basic_auth_is_configured_and_the_clients_log_in():
    import configparser

    mlflow = env("mlflow")
    assert mlflow["MLFLOW_AUTH_ADMIN_PASSWORD"] == "<MLFLOW_PASSWORD>"
    assert mlflow["MLFLOW_FLASK_SERVER_SECRET_KEY"] == "<MLFLOW_SECRET_KEY>"
    source, target, read_only = mount_of("mlflow", mlflow["MLFLOW_AUTH_CONFIG_PATH"])
    assert read_only and (ROOT / source).is_file()
    ini = configparser.ConfigParser()
    ini.read(ROOT / source)
    auth = ini["mlflow"]
    assert not auth.get("admin_password"), "no password in the repository: it comes from MLFLOW_PASSWORD"
    assert auth["default_permission"] in {"READ", "NO_PERMISSIONS"}
    m = re.fullmatch(r"sqlite:///(/.+)/[^/]+\.db", auth["database_uri"])
    assert m, f"basic_auth.ini: the user store {auth['database_uri']} is not a SQLite file at an absolute path"
    store, _, store_ro = mount_of("mlflow", m[1])
    (step,) = steps_of("mlflow", "mlflow")
    artifacts = parse_mlflow(step[1:])["artifacts_destination"]
    assert store in compose()["volumes"] and not store_ro and store != mount_of("mlflow", artifacts)[0], \
        "the user store needs a volume of its own (clients can read whatever lies under the artifact store)"
    assert m[1] in re.search(r"mkdir -p ([^&]*)", " ".join(docker_instructions("RUN")))[1], \
        f"the image does not create {m[1]} for the non-root user"
    for name, file in (("api", COMPOSE_FILE), ("ray-worker", COMPOSE_FILE), ("ray-worker", WORKER_COMPOSE_FILE)):
        e = env(name, file)
        assert e.get("MLFLOW_TRACKING_USERNAME") == auth["admin_username"], f"{file.name} {name}: MLflow user"
        assert e.get("MLFLOW_TRACKING_PASSWORD") == "<MLFLOW_PASSWORD>", f"{file.name} {name}: MLflow password"


# The services of the compose files that are Ray nodes, and the file each is in.
RAY_NODES = (("ray-head", COMPOSE_FILE), ("api", COMPOSE_FILE), ("ray-worker", COMPOSE_FILE),
             ("ray-worker", WORKER_COMPOSE_FILE))
PORT_FLAGS = ("port", "node_manager_port", "object_manager_port", "runtime_env_agent_port",
              "dashboard_agent_grpc_port", "dashboard_agent_listen_port", "metrics_export_port",
              "ray_client_server_port", "dashboard_port")


def ray_start(name: str, file: Path = COMPOSE_FILE) -> dict[str, Any]:
    (start,) = steps_of(name, "ray", file)
    return parse_ray(start[1:])


def ray_ports(name: str, file: Path = COMPOSE_FILE) -> set[int]:
    """Every TCP port a Ray node of the compose files listens on (its worker port range included)."""
    p = ray_start(name, file)
    out = {int(p[f]) for f in PORT_FLAGS if p.get(f) is not None and (f not in ("port", "ray_client_server_port",
                                                                                "dashboard_port") or p["head"])}
    return out | set(range(int(p["min_worker_port"]), int(p["max_worker_port"]) + 1))


def test_ray_addresses_agree():
    params = ray_start("ray-head")
    assert params["head"] and params["block"]
    assert params["port"] != 6379, "6379 is Redis's port: on the host network a Redis there would clash"
    address = f"{NODE_IP}:{params['port']}"
    assert env("api")["RAY_ADDRESS"] == address
    for name in ("ray-worker", "api"):
        assert ray_start(name)["address"] == address, f"{name} joins another address"
    assert ray_start("ray-worker", WORKER_COMPOSE_FILE)["address"] == "<RAY_HEAD_ADDRESS>"
    for name, file in RAY_NODES:
        assert ray_start(name, file)["node_ip_address"] == NODE_IP, f"{file.name} {name}: --node-ip-address"
    assert ray_start("ray-worker")["block"] and ray_start("ray-worker", WORKER_COMPOSE_FILE)["block"], \
        "the worker's ray start must block (the container's main process)"
    assert params["dashboard_host"] == "127.0.0.1", "the dashboard listens on PUBLISH_ADDR, by default this host only"


def test_ray_nodes_are_on_the_host_network_with_fixed_ports_that_do_not_clash():
    for name, file in RAY_NODES:
        s = service(name, file)
        assert s.get("network_mode") == "host", f"{file.name} {name}: Ray needs the host network across hosts"
        assert not s.get("ports"), f"{file.name} {name}: no port mapping on the host network"
        p = ray_start(name, file)
        for flag in PORT_FLAGS[1:7] + ("min_worker_port", "max_worker_port"):
            assert p.get(flag), f"{file.name} {name}: --{flag.replace('_', '-')} not fixed (a firewall needs it)"
    head_host = [ray_ports(name) for name, file in RAY_NODES if file == COMPOSE_FILE]
    for i, a in enumerate(head_host):
        for b in head_host[i + 1:]:
            assert not a & b, f"two Ray nodes on the head host share ports {sorted(a & b)[:5]}"
    assert ray_ports("ray-worker") == ray_ports("ray-worker", WORKER_COMPOSE_FILE), \
        "a GPU worker listens on the same ports on every host (one firewall rule)"
    for name, file in RAY_NODES:
        assert not ray_ports(name, file) & {5000, 5432, 8000}, f"{name}: a Ray port clashes with MLflow/Postgres/API"


def test_the_docs_list_every_ray_port():
    ports_doc = "\n".join(" | ".join(row) for row in doc_tables().get("Ports", []))
    assert ports_doc, "docs/deploy.md has no 'Ports' table"
    for name, file in RAY_NODES:
        p = ray_start(name, file)
        for flag in PORT_FLAGS:
            if p.get(flag) is not None and (p["head"] or flag not in ("port", "ray_client_server_port",
                                                                     "dashboard_port")):
                assert str(p[flag]) in ports_doc, f"docs/deploy.md 'Ports' lacks {name}'s {flag}={p[flag]}"
        assert f"{p['min_worker_port']}-{p['max_worker_port']}" in ports_doc, f"{name}'s worker ports"


def test_the_api_container_is_a_ray_node_without_resources():
    # ray.init(address=...) needs a Ray node on the driver's machine; no job may be scheduled there
    (start,) = steps_of("api", "ray")
    params = parse_ray(start[1:])
    assert params["num_cpus"] == 0 and params["num_gpus"] == 0
    steps = command_steps(service("api")["command"])
    assert [s[0] for s in steps] == ["ray", "liftplace"], "join the cluster first, then serve"


# --- compose: environment -------------------------------------------------------------------------


@pytest.mark.parametrize("name", SERVICES)
def test_compose_env_vars_are_read_by_the_code_or_a_named_tool(name):
    for var in env(name):
        if var.startswith("LIFTPLACE_") or var not in THIRD_PARTY_ENV:
            assert var in code_env(), f"{name}: {var} is not read by liftplace (misspelt? LIFTPLACE_* are ignored " \
                                      "silently when unknown)"


def test_third_party_env_vars_are_the_tools_own():
    import mlflow.environment_variables as mlflow_env
    import ray
    from ray._private.authentication.authentication_token_setup import AUTH_MODE_ENV_VAR

    assert AUTH_MODE_ENV_VAR == "RAY_AUTH_MODE"
    # the C++ token loader reads RAY_AUTH_TOKEN; Ray's authentication error names it to the user
    assert "`RAY_AUTH_TOKEN` environment variable" in (Path(ray.__file__).parent / "exceptions.py").read_text()
    assert mlflow_env.MLFLOW_SERVER_ALLOWED_HOSTS.name == "MLFLOW_SERVER_ALLOWED_HOSTS"
    used = {var for name in SERVICES for var in env(name)}
    for var, tool in THIRD_PARTY_ENV.items():
        if tool == "mlflow" and var != "MLFLOW_SERVER_ALLOWED_HOSTS":
            assert getattr(mlflow_env, var).name == var, f"{var} is not one of MLflow's variables"
    assert {v for v, tool in THIRD_PARTY_ENV.items() if tool != "postgres"} <= used


def test_ray_token_authentication_on_every_ray_process():
    for name, file in RAY_NODES:
        e = env(name, file)
        assert e.get("RAY_AUTH_MODE") == "token", f"{name}: Ray without token authentication"
        assert e.get("RAY_AUTH_TOKEN") == "<RAY_AUTH_TOKEN>", f"{name}: the token must come from RAY_AUTH_TOKEN"


def test_the_api_environment_makes_valid_settings(monkeypatch):
    import os

    from server.settings import Settings

    for var in list(os.environ):
        if var.upper() in settings_env():
            monkeypatch.delenv(var)
    api = env("api")
    for var, value in api.items():
        monkeypatch.setenv(var, value)
    s = Settings()
    assert s.ray_address == api["RAY_ADDRESS"]
    assert s.database_url == api["DATABASE_URL"]
    assert s.mlflow_tracking_uri == api["MLFLOW_TRACKING_URI"]
    assert str(s.data_dir) == api["LIFTPLACE_DATA_DIR"]
    assert str(s.teachers_dir) == api["LIFTPLACE_TEACHERS_DIR"]
    assert str(s.datasets_dir) == api["LIFTPLACE_DATASETS_DIR"]


def test_the_image_and_compose_agree_on_shared_variables():
    for name in ("api", "ray-worker"):
        for var, value in env(name).items():
            if var in docker_env():
                assert docker_env()[var] == value, f"{var}: {value} in compose, {docker_env()[var]} in the image"
    for var in docker_env():
        if var.startswith("LIFTPLACE_"):
            assert var in code_env(), f"Dockerfile ENV {var} is not read by liftplace"


def test_the_databases_agree():
    from sqlalchemy.engine import make_url

    pg = env("postgres")
    app = make_url(env("api")["DATABASE_URL"])
    (step,) = steps_of("mlflow", "mlflow")
    tracking = make_url(parse_mlflow(step[1:])["backend_store_uri"])
    # the API is on the host network: PostgreSQL's port published on this host's loopback only
    (published,) = [interpolate(str(p)) for p in service("postgres")["ports"]]
    assert published == f"127.0.0.1:{app.port}:5432", "PostgreSQL is published for the API, on 127.0.0.1 only"
    for url, host in ((app, "127.0.0.1"), (tracking, "postgres")):
        assert url.drivername == "postgresql+psycopg" and "psycopg" in platform_pins()
        assert (url.username, url.password, url.host) == (pg["POSTGRES_USER"], pg["POSTGRES_PASSWORD"], host)
        url.get_dialect()  # the driver is installed
    assert pg["POSTGRES_PASSWORD"] == "<POSTGRES_PASSWORD>", "the database password is required, never defaulted"
    assert app.database == pg["POSTGRES_DB"]
    assert tracking.database != app.database, "MLflow's tables go into a database of their own"
    source, target, read_only = mount_of("postgres", "/docker-entrypoint-initdb.d")
    scripts = " ".join(p.read_text() for p in sorted((ROOT / source).glob("*.sql")))
    assert read_only and re.search(rf"CREATE DATABASE\s+\"?{re.escape(tracking.database)}\b", scripts, re.I), \
        f"no init script under {source} creates the database {tracking.database!r}"


# --- compose: GPUs, scaling, mounts ---------------------------------------------------------------


def test_the_ray_workers_reserve_the_hosts_nvidia_gpus():
    for file in (COMPOSE_FILE, WORKER_COMPOSE_FILE):
        w = service("ray-worker", file)
        devices = w["deploy"]["resources"]["reservations"]["devices"]
        assert any(d.get("driver") == "nvidia" and {"gpu", "compute", "utility"} <= set(d.get("capabilities", []))
                   and d.get("count") == "all" for d in devices), devices
    for name in ("api", "ray-head", "mlflow"):
        assert "deploy" not in service(name), f"{name} reserves devices: only ray-worker runs jobs"


# Variables that hold secrets; each is required (${NAME:?...}) wherever a compose file uses it.
SECRETS = {"RAY_AUTH_TOKEN", "POSTGRES_PASSWORD", "MLFLOW_PASSWORD", "MLFLOW_SECRET_KEY"}


def test_secrets_are_required_never_defaulted():
    for file in (COMPOSE_FILE, WORKER_COMPOSE_FILE):
        for m in _INTERPOLATION.finditer(file.read_text()):
            name, op = m["name"], m["op"] or ""
            if re.search(r"PASSWORD|TOKEN|SECRET", name) and name != "LIFTPLACE_API_TOKEN":
                assert name in SECRETS and op == ":?", f"{file.name}: ${{{name}{op}...}}: a secret must be required"
            if name in ("NODE_IP", "RAY_HEAD_ADDRESS"):
                assert op == ":?", f"{file.name}: {name} has no sensible default: required"
    # the one optional secret: no API token means no authentication, and the API stays on 127.0.0.1
    assert env("api")["LIFTPLACE_API_TOKEN"] == "" and serve_args().host == "127.0.0.1"
    assert SECRETS <= compose_variables()


def test_the_worker_file_starts_one_gpu_worker_like_the_heads():
    (name,) = compose(WORKER_COMPOSE_FILE)["services"]
    assert name == "ray-worker"
    head, other = service("ray-worker"), service("ray-worker", WORKER_COMPOSE_FILE)
    assert (other["image"], other["build"]) == (head["image"], head["build"]), "the same image, built alike"
    assert set(env("ray-worker", WORKER_COMPOSE_FILE)) == set(env("ray-worker"))
    assert {v: e for v, e in env("ray-worker", WORKER_COMPOSE_FILE).items() if not v.startswith("RAY_")} == \
        {v: e for v, e in env("ray-worker").items() if not v.startswith("RAY_")}
    assert [(t, ro) for _, t, ro in volumes("ray-worker", WORKER_COMPOSE_FILE)] == \
        [(t, ro) for _, t, ro in volumes("ray-worker")]
    data = env("api")["LIFTPLACE_DATA_DIR"]
    assert mount_of("ray-worker", data)[0] == "liftplace-data" and \
        volumes("ray-worker", WORKER_COMPOSE_FILE)[0][:2] == ("<HOST_DATA_DIR>", data), \
        "another host's worker mounts the shared data folder (HOST_DATA_DIR, required) where the API's is"
    assert not other.get("depends_on") and "DATABASE_URL" not in env("ray-worker", WORKER_COMPOSE_FILE), \
        "a worker never uses the database"
    assert healthcheck_steps("ray-worker", WORKER_COMPOSE_FILE)[0][:2] == ["ray", "status"]
    for step in command_steps(other["command"]) + healthcheck_steps("ray-worker", WORKER_COMPOSE_FILE):
        check_step(step)


def test_the_ray_head_runs_no_jobs():
    (head,) = steps_of("ray-head", "ray")
    params = parse_ray(head[1:])
    assert params["num_cpus"] == 0 and params["num_gpus"] == 0


def test_teachers_and_datasets_are_mounted_read_only_where_the_settings_point():
    api = env("api")
    for var in ("LIFTPLACE_TEACHERS_DIR", "LIFTPLACE_DATASETS_DIR"):
        root = api[var]
        sources = set()
        for name in ("api", "ray-worker"):
            source, _, read_only = mount_of(name, root)
            assert read_only, f"{name}: {root} ({var}) is mounted writable"
            sources.add(source)
        assert len(sources) == 1, f"{var}: the API and the workers see different folders {sources}"


def test_job_outputs_are_on_one_volume_at_the_same_path_for_the_api_and_the_workers():
    data_dir = env("api")["LIFTPLACE_DATA_DIR"]
    sources = {mount_of(name, data_dir)[0] for name in ("api", "ray-worker")}
    assert len(sources) == 1 and sources <= set(compose()["volumes"]), sources
    assert not any(mount_of(name, data_dir)[2] for name in ("api", "ray-worker"))
    cache_dir = env("ray-worker")["LIFTPLACE_CACHE_DIR"]
    assert Path(cache_dir).is_relative_to(data_dir), "the FID statistics cache belongs on the shared volume"


def test_the_inception_weights_are_mounted_read_only_on_the_workers():
    from liftplace.features import INCEPTION_WEIGHTS_ENV, INCEPTION_WEIGHTS_FILE

    path = Path(env("ray-worker")[INCEPTION_WEIGHTS_ENV])
    assert path.name == INCEPTION_WEIGHTS_FILE
    assert any(path.is_relative_to(target) and read_only for _, target, read_only in volumes("ray-worker"))


def test_mlflow_keeps_its_artifacts_on_a_volume():
    (step,) = steps_of("mlflow", "mlflow")
    destination = parse_mlflow(step[1:])["artifacts_destination"]
    source, _, read_only = mount_of("mlflow", destination)
    assert source in compose()["volumes"] and not read_only


# --- docs/deploy.md: the configuration reference --------------------------------------------------


def test_every_variable_the_code_reads_is_in_the_reference():
    documented = documented_vars("Read by liftplace")
    missing = sorted(code_env() - set(documented))
    assert not missing, f"docs/deploy.md's configuration reference lacks {missing}"


def test_the_readme_configuration_reference_lists_every_variable_with_the_same_default():
    readme = (ROOT / "README.md").read_text()
    rows = {name: row for row in doc_tables(readme).get("Configuration", [])
            for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", row[0])}
    missing = sorted(code_env() - set(rows))
    assert not missing, f"README's configuration reference lacks {missing}"
    stale = sorted(v for v in rows if v.startswith("LIFTPLACE_") and v not in code_env())
    assert not stale, f"README documents variables the code does not read: {stale}"
    deploy = documented_vars("Read by liftplace")
    for name, row in rows.items():
        if name in deploy:
            assert row[1] == deploy[name][1], \
                f"{name}: README says default {row[1]!r}, docs/deploy.md {deploy[name][1]!r}"


def test_every_documented_liftplace_variable_is_read_by_the_code():
    stale = sorted(v for v in documented_vars() if v.startswith("LIFTPLACE_") and v not in code_env())
    assert not stale, f"docs/deploy.md documents variables the code does not read: {stale}"
    assert set(documented_vars("Read by liftplace")) <= code_env()


def test_the_reference_states_the_settings_defaults():
    documented = documented_vars("Read by liftplace")
    for var, (_field_name, field) in settings_env().items():
        default = field.default
        cell = documented[var][1].replace("`", "").replace(",", "")
        if default is None:
            continue
        if isinstance(default, bool):
            assert str(default).lower() in cell.lower(), f"{var}: default {default}, documented {cell!r}"
        elif isinstance(default, int | float):
            numbers = [float(n) for n in re.findall(r"\d+(?:\.\d+)?", cell)]
            assert float(default) in numbers, f"{var}: default {default}, documented {cell!r}"
        else:
            assert str(default) in cell, f"{var}: default {default}, documented {cell!r}"


def test_every_compose_variable_and_environment_entry_is_documented():
    documented = set(documented_vars())
    missing = sorted(compose_variables() - documented)
    assert not missing, f"docker-compose.yml interpolates undocumented variables {missing}"
    for name in SERVICES:
        missing = sorted(set(env(name)) - documented)
        assert not missing, f"{name} sets undocumented variables {missing}"


def test_the_docs_explain_up_and_joining_gpu_hosts():
    text = deploy_doc()
    assert "docker compose up" in text and "docker compose -f docker-compose.worker.yml up" in text
    assert "--scale ray-worker" not in text, "on the host network two workers on one host would clash"


def test_the_storage_mode_comes_from_env_and_is_local_by_default():
    # a cluster without a shared folder sets LIFTPLACE_STORAGE=mlflow in .env; the API is the one that reads it
    assert env("api")["LIFTPLACE_STORAGE"] == "local"
    assert "LIFTPLACE_STORAGE" in compose_variables(COMPOSE_FILE)
    assert "LIFTPLACE_STORAGE" not in env("ray-worker") and "LIFTPLACE_STORAGE" not in \
        env("ray-worker", WORKER_COMPOSE_FILE), "the workers get the mode in each job's spec"


def harness_env() -> set[str]:
    """Variables the test harness reads (its conftest files), which the docs may name."""
    return {v for p in sorted((ROOT / "tests").rglob("conftest.py")) for v in env_reads(p)}


@pytest.mark.parametrize("doc", ["docs/deploy.md", "README.md"])
def test_every_liftplace_variable_the_docs_name_is_read_by_the_code(doc):
    # anywhere in the text, not only in the reference tables: a walkthrough's variable must exist too
    named = set(re.findall(r"\bLIFTPLACE_[A-Z0-9_]*[A-Z0-9]\b", (ROOT / doc).read_text()))
    assert named, f"{doc} names no LIFTPLACE_* variable (the scan is broken)"
    unknown = sorted(named - code_env() - harness_env())
    assert not unknown, f"{doc} names variables liftplace does not read: {unknown}"


_GLOBAL_COMPOSE_OPTIONS = {"-f", "--file", "-p", "--project-name", "--env-file", "--profile"}  # take a value
_COMPOSE_SERVICE_COMMANDS = {"up", "stop", "start", "restart", "build", "ps", "logs", "down", "pull", "rm"}


def doc_shell_snippets() -> list[str]:
    """The lines of docs/deploy.md's code blocks (continuation lines joined) and its inline code spans (a span
    wrapped over lines joined)."""
    text = deploy_doc()
    blocks = re.findall(r"```[a-z]*\n(.*?)```", text, re.S)
    lines = [line for b in blocks for line in re.sub(r"\\\n", " ", b).splitlines()]
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    return lines + [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", prose)]


def doc_compose_commands() -> list[tuple[Path, str, list[str]]]:
    """(compose file, subcommand, the services it names) of every `docker compose ...` in docs/deploy.md."""
    out = []
    for m in (m for line in doc_shell_snippets() for m in re.finditer(r"docker compose ([^|>&;#]*)", line)):
        words = m[1].split()
        file, i = COMPOSE_FILE, 0
        while i < len(words) and words[i].startswith("-"):
            if words[i] in ("-f", "--file"):
                file = ROOT / words[i + 1]
            i += 2 if words[i] in _GLOBAL_COMPOSE_OPTIONS else 1
        if i >= len(words):
            continue
        command, rest = words[i], words[i + 1:]
        names = [w for w in rest if not w.startswith("-")]
        if command in ("run", "exec"):
            names = names[:1]  # the service; then the command it runs there
        elif command not in _COMPOSE_SERVICE_COMMANDS:
            continue
        out.append((file, command, [n for n in names if re.fullmatch(r"[a-z][a-z0-9-]*", n)]))
    return out


def test_every_compose_command_in_the_docs_names_services_of_its_file():
    commands = doc_compose_commands()
    assert {"run", "exec", "up", "stop"} <= {c for _, c, _ in commands}, "the scan of the docs' commands is broken"
    for file, command, names in commands:
        assert file.is_file(), f"docs/deploy.md: `docker compose -f {file.name}`: no such file"
        unknown = sorted(set(names) - set(compose(file)["services"]))
        assert not unknown, f"docs/deploy.md: `docker compose {command}` names {unknown}, not services of {file.name}"


def test_the_python_snippets_in_the_docs_compile_and_import_what_exists():
    import importlib
    import importlib.util

    snippets = re.findall(r"python -c \\?\s*\"([^\"]+)\"", deploy_doc())
    assert snippets, "docs/deploy.md: no `python -c` found (the scan is broken)"
    for code in snippets:
        tree = ast.parse(code)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                module = importlib.import_module(node.module)
                for alias in node.names:  # a name of the module, or a submodule of it
                    found = hasattr(module, alias.name) or importlib.util.find_spec(f"{node.module}.{alias.name}")
                    assert found, f"docs/deploy.md: `from {node.module} import {alias.name}`: no such name"


def test_the_walkthrough_ports_are_the_compose_files_ports():
    rows = doc_tables().get("Network and ports", [])
    assert rows, "docs/deploy.md has no 'Network and ports' table"
    table = "\n".join(" | ".join(r) for r in rows)
    head = ray_start("ray-head")
    assert str(head["port"]) in table, "the GCS port"
    every = set()
    for name, file in RAY_NODES:
        p = ray_start(name, file)
        node = sorted(int(p[f]) for f in PORT_FLAGS[1:7])
        assert node == list(range(node[0], node[-1] + 1)), f"{name}: its node ports are not one range"
        assert f"{node[0]}-{node[-1]}" in table, f"{file.name} {name}: ports {node[0]}-{node[-1]} not in the table"
        assert f"{p['min_worker_port']}-{p['max_worker_port']}" in table, f"{file.name} {name}: worker ports"
        every |= ray_ports(name, file) - {int(head["dashboard_port"])}
    (published,) = [interpolate(str(p)) for p in service("mlflow")["ports"]]
    assert published.rsplit(":", 1)[1] in table, "MLflow's port"
    # the firewall example opens one range of node ports and one of worker ports, covering every Ray port
    fixed = sorted(p for p in every if p < 10000)
    workers = sorted(p for p in every if p >= 10000)
    assert f"port {fixed[0]}:{fixed[-1]}" in deploy_doc() and f"port {workers[0]}:{workers[-1]}" in deploy_doc()


# --- docs/deploy.md: the API requests -------------------------------------------------------------


@cache
def doc_requests() -> list[tuple[str, dict[str, Any]]]:
    """(API path, JSON body) of every `curl -X POST ... -d '{...}'` in docs/deploy.md."""
    out = []
    for m in re.finditer(r"curl\s[^\n]*?-X\s+POST\s+(\S+)(.*?)-d\s+'(.*?)'", deploy_doc(), re.S):
        path = re.search(r"/api/[a-z]+", m[1])
        assert path, m[1]
        out.append((path[0], json.loads(m[3])))
    return out


def test_the_documented_requests_validate_against_the_api_schemas():
    from pydantic import TypeAdapter

    from server.schemas import DatasetCreate, JobCreate, StudyCreate, TeacherCreate

    schemas = {"/api/teachers": TypeAdapter(TeacherCreate), "/api/datasets": TypeAdapter(DatasetCreate),
               "/api/studies": TypeAdapter(StudyCreate), "/api/jobs": TypeAdapter(JobCreate)}
    assert {"/api/teachers", "/api/datasets", "/api/studies"} <= {path for path, _ in doc_requests()}
    for path, body in doc_requests():
        schemas[path].validate_python(body)


def test_the_paper_study_request():
    from server.schemas import StudyCreate
    from server.settings import MAX_JOBS_PER_STUDY, Settings

    studies = [StudyCreate.model_validate(b) for p, b in doc_requests() if p == "/api/studies"]
    paper = [s for s in studies if set(s.methods) == PAPER_METHODS]
    assert paper, "docs/deploy.md shows no study with the paper's three methods"
    study = paper[0]
    assert study.seeds == [0, 1, 2, 3, 4]
    assert study.student_ratio == 0.9
    assert study.steps == 500_000
    assert study.fid_samples == 50_000 and study.sample_steps == 100
    assert study.steps <= Settings.model_fields["max_steps"].default
    assert len(study.teachers) * len(study.methods) * len(study.seeds) <= MAX_JOBS_PER_STUDY
    teachers = {b["name"] for p, b in doc_requests() if p == "/api/teachers"}
    datasets = {b["name"] for p, b in doc_requests() if p == "/api/datasets"}
    assert set(study.teachers) <= teachers, "the study names teachers the docs do not register"
    # an image-folder dataset: the dispatcher scores its jobs with Inception FID
    assert study.dataset in datasets
    assert any(b.get("source") == "local" for p, b in doc_requests() if p == "/api/teachers")


# --- the Dockerfile -----------------------------------------------------------------------------


def test_every_base_image_is_pinned():
    froms = docker_instructions("FROM")
    assert froms
    for args in froms:
        image = expand_args(args.split()[0])
        name, _, tag = image.partition("@")[0].rpartition(":")
        assert "@sha256:" in image or (name and tag and tag != "latest" and "/" not in tag), \
            f"FROM {image}: pin a tag (not latest) or a digest"


def test_the_image_asks_the_driver_for_the_cuda_of_the_locked_torch():
    # No CUDA base image: torch's nvidia-* wheels carry CUDA; the NVIDIA Container Toolkit injects the driver
    # with these capabilities and refuses a driver older than NVIDIA_REQUIRE_CUDA.
    runtime = lock()["nvidia-cuda-runtime"][0]
    cuda = ".".join(runtime.split(".")[:2])
    assert docker_env().get("NVIDIA_REQUIRE_CUDA") == f"cuda>={cuda}", \
        f"NVIDIA_REQUIRE_CUDA={docker_env().get('NVIDIA_REQUIRE_CUDA')!r}, the lock's CUDA runtime is {runtime}"
    assert {"compute", "utility"} <= set(docker_env().get("NVIDIA_DRIVER_CAPABILITIES", "").split(","))
    assert re.search(r"\+cu\d+|^\d", lock()["torch"][0])


def test_the_image_runs_as_a_non_root_user():
    users = docker_instructions("USER")
    assert users, "no USER: the image runs as root"
    user = expand_args(users[-1]).split(":")[0]
    assert user not in ("root", "0")
    runs = " ".join(expand_args(r) for r in docker_instructions("RUN"))
    m = re.search(rf"useradd\b[^&]*--uid\s+(\d+)[^&]*\b{re.escape(user)}\b", runs)
    assert m and int(m[1]) != 0, f"user {user!r} is not created with a non-zero uid"


def test_the_healthcheck_asks_the_api_readiness():
    from server.settings import DEFAULT_PORT

    (hc,) = docker_instructions("HEALTHCHECK")
    assert "/api/ready" in hc
    assert f"'{DEFAULT_PORT}'" in hc or f":{DEFAULT_PORT}/api/ready" in hc
    cmd = json.loads(hc[hc.index("CMD") + 3:].strip())
    check_step(cmd)


def test_the_default_command_serves_the_api_on_all_interfaces():
    (cmd,) = docker_instructions("CMD")
    ns = parse_liftplace(json.loads(cmd)[1:]) if json.loads(cmd)[0] == "liftplace" else None
    assert ns is not None and ns.command == "serve" and ns.host == "0.0.0.0", cmd


def test_the_package_is_installed_with_the_platform_extra():
    runs = [expand_args(r) for r in docker_instructions("RUN")]
    assert any(re.search(r"pip install\b[^&]*\[platform\]", r) for r in runs)


def _pip_install_args(run: str) -> list[list[str]]:
    out = []
    for part in re.split(r"&&|;|\|", run):
        words = shlex.split(part)
        if words[:2] == ["pip", "install"] or words[1:3] == ["-m", "pip"]:
            out.append(words[words.index("install") + 1:])
    return out


def test_every_pip_install_is_pinned_and_agrees_with_pyproject():
    value_options = {"-r", "--requirement", "-c", "--constraint"}
    for run in (expand_args(r) for r in docker_instructions("RUN")):
        for args in _pip_install_args(run):
            skip = False
            for word in args:
                if skip:
                    skip = False
                elif word in value_options:
                    skip = True
                elif word.startswith(("-", "/", ".")):
                    continue
                else:
                    assert re.fullmatch(r"[A-Za-z0-9._-]+(\[[^\]]*\])?==[^\s=]+", word), f"unpinned: pip install {word}"
    for name, version in re.findall(r"\b([A-Za-z0-9._-]+)(?:\[[^\]]*\])?==([^\s\"']+)",
                                    " ".join(expand_args(r) for r in docker_instructions("RUN"))):
        if _norm(name) in pins():
            assert version == pins()[_norm(name)], f"Dockerfile {name}=={version}, pyproject {pins()[_norm(name)]}"


def base_python() -> str:
    """The Python patch release of the base image (``FROM python:X.Y.Z-...``)."""
    (image,) = [expand_args(a.split()[0]) for a in docker_instructions("FROM")]
    m = re.fullmatch(r"python:(\d+\.\d+\.\d+)-slim-[a-z]+", image)
    assert m, f"FROM {image}: expected the official python:X.Y.Z-slim-<debian> image (Python pinned to the patch)"
    return m[1]


def test_the_python_version_is_pinned_to_the_patch_and_satisfies_requires_python():
    from packaging.specifiers import SpecifierSet

    assert base_python() in SpecifierSet(pyproject()["project"]["requires-python"])


@cache
def lock_text() -> str:
    return LOCK_FILE.read_text()


@cache
def lock() -> dict[str, tuple[str, list[str]]]:
    """Normalised name -> (version, sha256 hashes) of deploy/requirements.lock (pip's hash-checking format)."""
    out: dict[str, tuple[str, list[str]]] = {}
    entries = re.split(r"\n(?=\S)", "\n".join(line for line in lock_text().splitlines()
                                             if line.strip() and not line.lstrip().startswith("#")))
    for entry in entries:
        words = entry.replace("\\\n", " ").split()
        m = re.fullmatch(r"([A-Za-z0-9._-]+)==([^\s;]+)", words[0])
        assert m, f"deploy/requirements.lock: {words[0]!r} is not pinned with =="
        assert all(w.startswith("--hash=sha256:") for w in words[1:]), f"{words[0]}: {words[1:]}"
        hashes = [w.removeprefix("--hash=sha256:") for w in words[1:]]
        assert hashes and all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes), f"{words[0]}: no sha256 hash"
        assert _norm(m[1]) not in out, f"{m[1]} twice in the lock"
        out[_norm(m[1])] = (m[2], hashes)
    return out


def test_the_lock_has_a_hash_for_every_package_and_every_pin_of_pyproject():
    locked = lock()
    assert len(locked) > 100, "the lock holds the whole dependency tree, not only the direct pins"
    project = pyproject()["project"]
    for req in project["dependencies"] + project["optional-dependencies"]["platform"]:
        name, version = re.match(r"^\s*([A-Za-z0-9._-]+)(?:\[[^\]]*\])?\s*==\s*([^\s;,]+)", req).groups()
        assert _norm(name) in locked, f"deploy/requirements.lock lacks {name} (pyproject: {req}); run deploy/lock.sh"
        assert locked[_norm(name)][0] == version, \
            f"{name}: {locked[_norm(name)][0]} in the lock, {version} in pyproject; run deploy/lock.sh"
    for tool in re.search(r'^BUILD_TOOLS="([^"]*)"', LOCK_SCRIPT.read_text(), re.M)[1].split():
        name, version = tool.split("==")
        assert locked.get(_norm(name), ("",))[0] == version, f"the build tool {tool} is not in the lock"
    # ray[default]'s own requirements (the dashboard's HTTP server), mlflow[auth]'s (the basic-auth app)
    assert {"aiohttp", "aiohttp-cors", "prometheus-client", "flask-wtf"} <= set(locked)


def test_the_lock_was_made_by_the_script_for_the_images_python():
    script = LOCK_SCRIPT.read_text()
    uv = re.search(r"^UV_VERSION=(\S+)$", script, re.M)[1]
    header = lock_text().split("\n\n", 1)[0]
    assert "deploy/lock.sh" in header and f"uv {uv}" in header and f"Python {base_python()}," in header, \
        f"deploy/requirements.lock was not made by deploy/lock.sh for Python {base_python()}: run the script"
    assert "--generate-hashes" in script and "--python-version" in script
    # the script reads the Python from the Dockerfile itself: one place to change it
    sed = re.search(r"sed -n '(s/[^']*)'", script)[1]
    pattern = sed.split("/")[1].replace("\\(", "(").replace("\\)", ")")
    froms = [line for line in DOCKERFILE.read_text().splitlines() if re.match(pattern, line)]
    assert len(froms) == 1 and base_python() in froms[0]


def test_the_dockerfile_installs_the_lock_with_hashes_and_nothing_else():
    copies = {src: dest for args in docker_instructions("COPY") for src, dest in [args.split()[-2:]]}
    assert "deploy/requirements.lock" in copies, "the Dockerfile does not copy deploy/requirements.lock"
    installs = [args for run in (expand_args(r) for r in docker_instructions("RUN")) for args in _pip_install_args(run)]
    locked = [a for a in installs if "-r" in a and a[a.index("-r") + 1] == copies["deploy/requirements.lock"]]
    assert locked and {"--require-hashes", "--no-deps"} <= set(locked[0]), installs
    for args in installs:
        if args is not locked[0]:
            assert "--no-deps" in args, f"pip install {shlex.join(args)} may fetch packages outside the lock"


def test_the_requirements_script_lists_the_pyproject_pins():
    script = runpy.run_path(str(REQUIREMENTS_SCRIPT))
    reqs = script["pinned_requirements"](PYPROJECT, ["platform"])
    project = pyproject()["project"]
    expected = [r.replace(" ", "") for r in project["dependencies"] + project["optional-dependencies"]["platform"]]
    assert reqs[:len(expected)] == expected
    assert all("==" in r for r in reqs)
    assert f"ray[default]=={pins()['ray']}" in reqs, "the Ray dashboard needs ray[default] at the pinned version"
    assert f"mlflow[auth]=={pins()['mlflow']}" in reqs, "MLflow's basic-auth app needs mlflow[auth] (Flask-WTF)"


def test_the_dockerignore_keeps_secrets_and_host_data_out_and_the_sources_in():
    patterns = [p.strip().rstrip("/").removeprefix("./") for p in DOCKERIGNORE.read_text().splitlines()
                if p.strip() and not p.startswith("#")]

    def excluded(path: str) -> bool:
        parts = path.split("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        return any(fnmatch.fnmatch(p, pat) for p in prefixes for pat in patterns if not pat.startswith("!"))

    host_dirs = {src.removeprefix("./") for name in SERVICES for src, _, _ in volumes(name)
                 if src.startswith("./") and not src.startswith(("./deploy/postgres", "./deploy/mlflow"))}
    assert host_dirs, "no host folders mounted"
    for path in (".git", ".venv", ".env", *host_dirs):
        assert excluded(path), f".dockerignore: {path} would be sent to the build"
    copied = [w for args in docker_instructions("COPY") for w in args.split()[:-1] if not w.startswith("--")]
    for path in ("pyproject.toml", "README.md", "liftplace/cli.py", "server/cli.py", "worker/run.py",
                 *[c for c in copied if c != "."]):
        assert not excluded(path), f".dockerignore excludes {path}, which the build needs"
