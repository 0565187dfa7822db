"""docs/FLEET.md and deploy/kuberay/raycluster.yaml say only true things about the code.

The manifest is parsed and its shape checked (a KubeRay RayCluster: a head that runs the service
next to Ray with the data directory on a claim, one GPU worker group with its own cache, the
autoscaler on, a Service for the API); every ``ASSETBOX_*`` name in either file is a setting and
the manifest's values validate; the commands in FLEET.md name files and flags that exist
(``python bench/...``, ``ray start ...``, ``assetbox serve ...``, extras in ``[...]``).
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from functools import cache
from pathlib import Path

import pytest
import yaml

from assetbox.config import Settings

ROOT = Path(__file__).resolve().parents[1]
FLEET = ROOT / "docs" / "FLEET.md"
MANIFEST = ROOT / "deploy" / "kuberay" / "raycluster.yaml"
ENV_NAME = re.compile(r"\bASSETBOX_[A-Z0-9_]*[A-Z0-9]\b")
SEPARATORS = {"&&", "||", ";", "|", "&"}
# Words after which the next word is a command (besides separators and VAR=value).
LEADERS = {"until", "while", "do", "then", "else", "exec", "time"}


def _documents() -> list[dict]:
    return [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d is not None]


def _one(kind: str) -> dict:
    found = [d for d in _documents() if d.get("kind") == kind]
    assert len(found) == 1, f"one {kind} expected, found {len(found)}"
    return found[0]


def _container(group: dict) -> dict:
    return group["template"]["spec"]["containers"][0]  # KubeRay: the Ray container is first


def _env(container: dict) -> dict[str, object]:
    """Name -> value (None where the value comes from elsewhere, e.g. a Secret)."""
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def _mount_source(group: dict, path: str) -> dict:
    """The pod volume whose mount holds `path`."""
    container, spec = _container(group), group["template"]["spec"]
    mounts = [
        m for m in container.get("volumeMounts", []) if Path(path).is_relative_to(m["mountPath"])
    ]
    assert mounts, f"{path} is on no volume of {container['name']}"
    name = max(mounts, key=lambda m: len(m["mountPath"]))["name"]
    return next(v for v in spec["volumes"] if v["name"] == name)


def _split(line: str) -> list[str]:
    """Shell words, with ; & | && || as words of their own."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    return list(lexer)


def _field(env_name: str) -> str:
    return env_name.removeprefix("ASSETBOX_").lower()


# -- the manifest --------------------------------------------------------------------------------


def test_manifest_is_a_raycluster_with_a_head_and_one_gpu_group() -> None:
    cluster = _one("RayCluster")
    assert cluster["apiVersion"] == "ray.io/v1"
    spec = cluster["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    head = spec["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    (group,) = spec["workerGroupSpecs"]
    assert isinstance(group["rayStartParams"], dict)
    assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    resources = _container(group)["resources"]
    assert int(resources["limits"]["nvidia.com/gpu"]) >= 1
    # The head runs no units: no GPU asked for, and no CPUs offered to Ray.
    assert "nvidia.com/gpu" not in _container(head).get("resources", {}).get("limits", {})
    assert head["rayStartParams"].get("num-cpus") == "0"


def test_manifest_head_runs_ray_then_the_service_on_the_cluster() -> None:
    cluster = _one("RayCluster")
    head = cluster["spec"]["headGroupSpec"]
    container = _container(head)
    # Without the annotation KubeRay prepends our command to its own `ray start --block`,
    # and the service would never start.
    assert cluster["metadata"]["annotations"]["ray.io/overwrite-container-cmd"] == "true"
    script = " ".join(container["command"] + container["args"])
    assert script.index("$KUBERAY_GEN_RAY_START_CMD") < script.index("assetbox serve")
    env = _env(container)
    assert env["ASSETBOX_EXECUTOR"] == "ray"
    assert env["ASSETBOX_RAY_ADDRESS"] == "auto"
    assert env["ASSETBOX_RAY_AUTOSCALE"] == "true"
    # The data directory is on the claim, and only the head mounts a claim.
    claim = _one("PersistentVolumeClaim")["metadata"]["name"]
    volume = _mount_source(head, str(env["ASSETBOX_DATA_DIR"]))
    assert volume["persistentVolumeClaim"]["claimName"] == claim
    (group,) = cluster["spec"]["workerGroupSpecs"]
    assert not any("persistentVolumeClaim" in v for v in group["template"]["spec"]["volumes"])
    # The workers' own cache is on a volume of their pod.
    worker_dir = _env(_container(group))["ASSETBOX_WORKER_DIR"]
    assert "emptyDir" in _mount_source(group, str(worker_dir))


def test_manifest_service_reaches_the_port_the_service_listens_on() -> None:
    head = _one("RayCluster")["spec"]["headGroupSpec"]
    container = _container(head)
    words = _split(" ".join(container["args"]))
    serve = words.index("serve")
    listen = int(words[words.index("--port", serve) + 1])
    assert words[words.index("--host", serve) + 1] == "0.0.0.0"
    service = _one("Service")
    assert service["spec"]["selector"] == {
        "ray.io/cluster": _one("RayCluster")["metadata"]["name"],
        "ray.io/node-type": "head",
    }
    (port,) = service["spec"]["ports"]
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert named[port["targetPort"]] == listen
    # The probes ask the service, on the same port.
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/health"
        assert named[container[probe]["httpGet"]["port"]] == listen


def test_manifest_settings_are_real_and_their_values_validate() -> None:
    cluster = _one("RayCluster")
    groups = [cluster["spec"]["headGroupSpec"], *cluster["spec"]["workerGroupSpecs"]]
    for group in groups:
        env = {k: v for k, v in _env(_container(group)).items() if k.startswith("ASSETBOX_")}
        unknown = sorted(k for k in env if _field(k) not in Settings.model_fields)
        assert not unknown, f"not settings: {unknown}"
        values = {_field(k): v for k, v in env.items() if v is not None}
        Settings(**values)  # raises on a value the service would refuse at start
    # ... and those in the comments too.
    names = set(ENV_NAME.findall(MANIFEST.read_text()))
    assert not sorted(n for n in names if _field(n) not in Settings.model_fields)


# -- docs/FLEET.md -------------------------------------------------------------------------------


def _commands(text: str) -> list[list[str]]:
    """The shell commands of the page: lines of its code blocks (continuations joined) and its
    inline code spans, each split into words."""
    lines: list[str] = []
    for block in re.findall(r"```(?:bash|sh|shell)?\n(.*?)```", text, flags=re.S):
        lines += block.replace("\\\n", " ").splitlines()
    lines += re.findall(r"(?<!`)`([^`\n]+)`(?!`)", re.sub(r"```.*?```", "", text, flags=re.S))
    commands = []
    for line in lines:
        line = re.sub(r"(^|\s)#.*$", "", line).strip()
        if not line:
            continue
        try:
            commands.append(_split(line))
        except ValueError:
            commands.append(line.split())
    return commands


def _invocations(commands: list[list[str]], program: str) -> list[tuple[str, list[str]]]:
    """(subcommand or script, its --flags) for each call of `program` in `commands`."""
    calls = []
    for words in commands:
        for i, word in enumerate(words):
            if "=" in word or Path(word).name != program or i + 1 >= len(words):
                continue
            before = words[:i]
            while before and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", before[-1]):
                before.pop()
            if before and before[-1] not in SEPARATORS | LEADERS:
                continue  # an argument, e.g. `--executor ray`
            target, flags = words[i + 1], []
            for arg in words[i + 2 :]:
                if arg in SEPARATORS:
                    break
                if arg.startswith("--"):
                    flags.append(arg.split("=", 1)[0])
            calls.append((target, flags))
    return calls


def test_fleet_names_only_real_settings() -> None:
    names = set(ENV_NAME.findall(FLEET.read_text()))
    assert {"ASSETBOX_RAY_AUTOSCALE", "ASSETBOX_WORKER_DIR"} <= names
    unknown = sorted(n for n in names if _field(n) not in Settings.model_fields)
    assert not unknown, f"docs/FLEET.md names settings that do not exist: {unknown}"


def test_fleet_python_commands_name_real_files_and_flags() -> None:
    calls = _invocations(_commands(FLEET.read_text()), "python")
    assert any(script == "bench/fleet.py" for script, _ in calls)
    for script, flags in calls:
        path = ROOT / script
        assert path.is_file(), f"docs/FLEET.md runs {script}, which does not exist"
        source = path.read_text()
        for flag in flags:
            assert f'"{flag}"' in source, f"{script} has no {flag}"


def test_fleet_assetbox_serve_flags_exist() -> None:
    from typer.main import get_command

    from assetbox.cli import app

    serve = get_command(app).commands["serve"]  # type: ignore[attr-defined]
    known = {opt for param in serve.params for opt in param.opts}
    calls = [c for c in _invocations(_commands(FLEET.read_text()), "assetbox") if c[0] == "serve"]
    assert calls
    for _, flags in calls:
        assert set(flags) <= known, set(flags) - known
    assert serve.params[[p.name for p in serve.params].index("port")].default == 7000


def test_fleet_extras_exist() -> None:
    extras = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    )
    text = FLEET.read_text() + MANIFEST.read_text()
    named = set()
    for group in re.findall(r"\[([a-z,]+)\]'?\"?(?:\s|$)", text) + re.findall(
        r"EXTRAS=([a-z,]+)", text
    ):
        named |= set(group.split(","))
    assert "ray" in named
    assert named <= extras, named - extras


@cache
def _ray_help(subcommand: str) -> str:
    ray = Path(sys.executable).with_name("ray")
    if not ray.exists():
        found = shutil.which("ray")
        if found is None:
            pytest.skip("the ray CLI is not installed (the `ray` extra)")
        ray = Path(found)
    done = subprocess.run(
        [str(ray), subcommand, "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"`ray {subcommand}` does not exist: {done.stderr[-500:]}"
    return done.stdout


def test_ray_commands_use_real_flags() -> None:
    pytest.importorskip("ray")
    cluster = _one("RayCluster")
    manifest_words = []
    for group in [cluster["spec"]["headGroupSpec"], *cluster["spec"]["workerGroupSpecs"]]:
        container = _container(group)
        manifest_words += [_split(" ".join(container.get("args", [])))]
        for probe in ("readinessProbe", "livenessProbe"):
            command = container.get(probe, {}).get("exec", {}).get("command")
            if command:
                manifest_words.append(_split(command[-1]))
    calls = _invocations(_commands(FLEET.read_text()) + manifest_words, "ray")
    assert {"start", "health-check", "get-auth-token"} <= {sub for sub, _ in calls}
    for subcommand, flags in calls:
        text = _ray_help(subcommand)
        for flag in flags:
            assert re.search(rf"(^|[\s,]){re.escape(flag)}\b", text), f"ray {subcommand} {flag}"
    # The flags KubeRay turns rayStartParams into.
    start = _ray_help("start")
    for params in [cluster["spec"]["headGroupSpec"]["rayStartParams"]] + [
        g["rayStartParams"] for g in cluster["spec"]["workerGroupSpecs"]
    ]:
        for key in params:
            assert re.search(rf"\s--{re.escape(key)}\b", start), f"ray start --{key}"
