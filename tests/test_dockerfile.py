"""The server binds to localhost by default; the Docker image runs README's start command on all
interfaces, as a non-root user, with a health check. No Docker engine is needed: the files are read."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def instructions(word: str) -> list[str]:
    return [rest for w, rest in dockerfile() if w == word]


def cmd() -> list[str]:
    (line,) = instructions("CMD")
    return json.loads(line)  # exec form: no shell in between


def options(args: list[str]) -> dict[str, str]:
    return {args[i]: args[i + 1] for i in range(len(args) - 1) if args[i].startswith("--")}


def start_command() -> list[str]:
    """The streamlit command of README's start command (scripts/start.sh), defaults resolved."""
    readme = (REPO / "README.md").read_text()
    assert "bash scripts/start.sh" in readme
    script = (REPO / "scripts" / "start.sh").read_text()
    line = next(l for l in script.replace("\\\n", " ").splitlines() if l.startswith("exec ") and "streamlit" in l)
    line = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", line)  # ${EXPLROBUST_PORT:-8501} → 8501
    words = [w for w in shlex.split(line)[1:] if w != "$@"]
    assert Path(words[0]).name == "streamlit"
    return ["streamlit", *words[1:]]


def test_python_311_slim_base_with_a_build_argument_for_cuda():
    args = {rest.split("=", 1)[0]: rest.split("=", 1)[1] for rest in instructions("ARG") if "=" in rest}
    assert args["BASE"].startswith("python:3.11-slim")
    assert instructions("FROM") == ["${BASE}"]
    assert "download.pytorch.org/whl/cpu" in args["TORCH_INDEX"]  # CPU wheels unless told otherwise
    assert "--build-arg BASE=" in (REPO / "Dockerfile").read_text()  # documented how to pick a CUDA base


def test_installs_the_same_pinned_requirements_as_the_start_command():
    setup = (REPO / "scripts" / "setup.sh").read_text()
    assert re.search(r"reqs=\(-r requirements\.txt\)", setup), "the start command installs requirements.txt"
    (pip,) = [r for r in instructions("RUN") if "pip install" in r]
    words = shlex.split(pip)
    assert words[words.index("-r") + 1] == "requirements.txt"
    assert "${TORCH_INDEX}" in pip
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-e"):
            assert re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[\w.]+", line), f"not pinned: {line}"


def test_runs_the_start_command_on_all_interfaces():
    docker, local = cmd(), start_command()
    assert docker[:3] == local[:3] == ["streamlit", "run", "app.py"]
    d, l = options(docker[3:]), options(local[3:])
    assert d.pop("--server.address") == "0.0.0.0"
    assert l.pop("--server.address") == "127.0.0.1"  # the start command itself stays on localhost
    assert d == l
    assert instructions("EXPOSE") == [d["--server.port"]]


def test_runs_as_a_non_root_user_that_cannot_change_the_code():
    steps = dockerfile()
    users = [rest for w, rest in steps if w == "USER"]
    assert users and users[-1] not in ("root", "0") and not users[-1].startswith("0:")
    last_user = max(i for i, (w, _) in enumerate(steps) if w == "USER")
    assert last_user < next(i for i, (w, _) in enumerate(steps) if w == "CMD")
    assert all(i < last_user for i, (w, _) in enumerate(steps) if w == "RUN")  # installs as root, runs as the user
    created = " ".join(r for r in instructions("RUN") if "useradd" in r)
    assert users[-1] in created and "--uid 0" not in created
    assert not [c for c in instructions("COPY") if "--chown" in c]  # code and shipped zoo stay root-owned
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".venv", ".git", ".streamlit/secrets.toml"} <= set(ignored)


def test_healthcheck_polls_streamlit_health_on_the_served_port():
    (check,) = instructions("HEALTHCHECK")
    port = options(cmd()[3:])["--server.port"]
    assert re.search(rf"127\.0\.0\.1:{port}/_stcore/health", check) and " CMD " in f" {check} "


def test_the_server_binds_to_localhost_and_skips_slow_post_run_work():
    config = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    server = config["server"]
    assert server["address"] == "127.0.0.1"
    # stated, not implied: a future change of streamlit's defaults must not weaken the app silently
    assert server["enableXsrfProtection"] is True and server["enableCORS"] is True
    from explrobust_core.uploads import CHECKPOINT_MAX_BYTES

    assert server["maxUploadSize"] * 2**20 <= CHECKPOINT_MAX_BYTES
    # streamlit itself, started in the repository, reads that file; with it, the two settings that keep a click
    # fast (no module-path scan by the source watcher, no full garbage collection after each run)
    code = ("import streamlit.config as c; c.get_config_options(force_reparse=True); "
            "print(c.get_option('server.address'), c.get_option('server.fileWatcherType'), "
            "c.get_option('runner.postScriptGC'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "127.0.0.1 none False", out.stderr[-2000:]
