"""Connecting to a Ray cluster, or starting and stopping the one-machine cluster of a runs directory.

The cluster is ``$RAY_ADDRESS`` when set (checked to answer first: Ray itself would retry for
minutes); otherwise a one-machine cluster bound to 127.0.0.1 (``ray start --head --block``, small:
``$EXPLROBUST_RAY_CPUS`` CPUs, a 100 MB object store, no dashboard) that outlives the process that
started it and is remembered in the job store, so later drivers use the same one. Ray reads some
settings from the environment once, at import, so they are made before Ray is imported.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from .jobs import JobStore
from .registry import ConfigError, MissingExtraError

NAMESPACE = "explrobust"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
OBJECT_STORE_BYTES = 100 * 1024 * 1024
_RECONNECT_ENV = "RAY_gcs_rpc_server_reconnect_timeout_s"


class RayUnavailable(ConfigError):
    """The cluster cannot be reached (a ValueError: the CLI prints one line, the page an error box)."""


def _import_ray():
    try:
        import ray
    except ImportError:
        raise MissingExtraError("the Ray executor is optional: pip install 'explrobust[ray]'") from None
    return ray



def _host_port(address: str) -> tuple[str, int]:
    text = address.removeprefix("ray://")
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise RayUnavailable(f"RAY_ADDRESS={address!r} is not HOST:PORT (e.g. 127.0.0.1:6379)")
    return host.strip("[]"), int(port)


def _reachable(host: str, port: int, timeout: float = 3.0) -> str | None:
    """None when something listens at host:port, else why not (Ray itself would retry for minutes)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as err:
        return err.strerror or str(err)


def _prepare_environment(host: str) -> None:
    """Settings Ray reads from the environment, made before it starts or connects."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage reports leave the machine
    # a driver whose cluster is gone would end its own process after 60 s (Ray's default): the dashboard with
    # it. The executor notices the loss itself (:meth:`RayExecutor._check_cluster`) and disconnects instead.
    os.environ.setdefault(_RECONNECT_ENV, str(365 * 24 * 3600))
    if host in LOOPBACK:
        # Ray swaps 127.0.0.1 for the machine's routable address unless told this is a one-machine cluster;
        # a loopback cluster must stay on the loopback
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        if "ray" in sys.modules:  # already imported (read once at import): tell the imported module too
            from ray._private import ray_constants

            ray_constants.ENABLE_RAY_CLUSTER = False
    _use_token_if_available()


def _token_available() -> bool:
    token = os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token"
    return bool(os.environ.get("RAY_AUTH_TOKEN")) or Path(token).is_file()


def _use_token_if_available() -> None:
    if "RAY_AUTH_MODE" not in os.environ and _token_available():
        os.environ["RAY_AUTH_MODE"] = "token"  # what `ray start` does with a token at hand: the cluster expects it
        if "ray" in sys.modules:  # Ray caches its config at import: refresh it, as Ray does when it switches
            from ray._raylet import Config

            Config.initialize("")


def _ensure_token() -> None:
    """Token authentication for the cluster started here, as ``ray.init()`` gives the local cluster it starts
    (``ray start`` does not make a token): without one, any user of the machine could run code through the
    cluster's loopback ports. If no token can be made, the cluster starts without, as ``ray start`` would."""
    if "RAY_AUTH_MODE" in os.environ or _token_available():
        return
    try:
        subprocess.run([*_ray_command(), "get-auth-token", "--generate"], stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError):
        return
    token = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    if token.is_file():
        token.chmod(0o600)  # Ray writes it readable by everyone; it is a password
    _use_token_if_available()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_command() -> list[str]:
    exe = Path(sys.executable).with_name("ray")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "ray.scripts.scripts"]


def start_local_cluster(store: JobStore, timeout: float | None = None) -> str:
    """Start a one-machine cluster on 127.0.0.1 that outlives this process; returns its address.

    ``ray start --block`` stays in the foreground of its own session, so the cluster is one process to
    stop (:func:`stop_local_cluster`) and no other Ray on the machine is touched.
    """
    _prepare_environment("127.0.0.1")  # before Ray is imported: it reads these once
    _ensure_token()
    _import_ray()
    timeout = timeout if timeout is not None else float(os.environ.get("EXPLROBUST_RAY_START_TIMEOUT_S", "90"))
    port = _free_port()
    cpus = int(os.environ.get("EXPLROBUST_RAY_CPUS") or min(4, os.cpu_count() or 1))
    log = store.root / "ray" / "head.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [*_ray_command(), "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(port),
           "--num-cpus", str(cpus), "--object-store-memory", str(OBJECT_STORE_BYTES), "--include-dashboard", "false",
           "--dashboard-host", "127.0.0.1", "--disable-usage-stats"]
    env = {**os.environ, "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "2"}  # a one-machine cluster: nothing to drain to
    env.pop(_RECONNECT_ENV, None)  # the driver's setting, not the cluster's
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True, close_fds=True)
    deadline = time.time() + timeout
    while _reachable("127.0.0.1", port, 1.0) is not None:
        if proc.poll() is not None:
            raise RayUnavailable(f"could not start a local Ray cluster: `ray start` ended with code {proc.returncode} "
                                 f"(see {log})")
        if time.time() > deadline:
            os.killpg(proc.pid, signal.SIGTERM)
            raise RayUnavailable(f"could not start a local Ray cluster within {timeout:.0f} s (see {log})")
        time.sleep(0.3)
    address = f"127.0.0.1:{port}"
    store.set_setting("ray_local_address", address)
    store.set_setting("ray_local_pid", str(proc.pid))
    return address


def stop_local_cluster(store: JobStore, timeout: float = 10) -> bool:
    """Stop the cluster :func:`start_local_cluster` started for this runs directory (only that one).

    Its jobs end with it (resume continues them later). ``ray start --block`` stops the processes it
    started on SIGTERM; whatever of its process group is left after ``timeout`` seconds is killed.
    """
    pid = int(store.setting("ray_local_pid") or 0)
    address = store.setting("ray_local_address") or ""
    if not pid or not _is_our_head(pid, address):
        return False
    os.kill(pid, signal.SIGTERM)  # to `ray start` alone: it stops the others in order (the GCS last)
    deadline = time.time() + timeout
    while time.time() < deadline and _is_our_head(pid, address):
        time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)  # whatever of the group is left (workers, agents)
    except ProcessLookupError:
        pass
    store.set_setting("ray_local_pid", "0")
    return True


def local_cluster_status(store: JobStore) -> tuple[str, int] | None:
    """``(address, pid)`` of the cluster :func:`start_local_cluster` started for this runs directory when it is
    running and answers, else None."""
    address = store.setting("ray_local_address") or ""
    pid = int(store.setting("ray_local_pid") or 0)
    if address and _is_our_head(pid, address) and _reachable(*_host_port(address), 1.0) is None:
        return address, pid
    return None


def _is_our_head(pid: int, address: str) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X") and b"--block" in cmdline and address.rpartition(":")[2].encode() in cmdline


def connect(store: JobStore) -> str:
    """Connect this process to the cluster (once); returns its address or raises :class:`RayUnavailable`."""
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        return sys.modules["ray"].get_runtime_context().gcs_address
    address = os.environ.get("RAY_ADDRESS", "").strip()
    if address and address != "auto":
        host, port = _host_port(address)
        _prepare_environment(host)  # before Ray is imported: it reads these once
        why = _reachable(host, port)
        if why is not None:
            raise RayUnavailable(f"cannot reach the Ray cluster at RAY_ADDRESS={address} ({why}); start it "
                                 "(`ray start --head …`) or unset RAY_ADDRESS to use a local one; the jobs stay queued")
    elif not address:
        _prepare_environment("127.0.0.1")
        address = store.setting("ray_local_address") or ""
        if not address or _reachable(*_host_port(address), 1.0) is not None:
            address = start_local_cluster(store)
    else:
        _prepare_environment("")
    ray = _import_ray()
    import logging

    try:
        ray.init(address=address, namespace=NAMESPACE, log_to_driver=False, logging_level=logging.ERROR)
    except (ConnectionError, RuntimeError, TimeoutError) as err:
        raise RayUnavailable(f"cannot connect to the Ray cluster at {address}: {' '.join(str(err).split())[:300]}"
                             ) from None
    return ray.get_runtime_context().gcs_address

