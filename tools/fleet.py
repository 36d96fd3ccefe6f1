"""Run the docker-compose fleet as local processes, one loopback address each.

    python -m tools.fleet up       # start every service of docker-compose.yml
    python -m tools.fleet status
    python -m tools.fleet rolling-restart   # one node at a time: snapshot, warm start
    python -m tools.fleet rolling-restart --compose docker-compose.yml --engine podman-compose
    python -m tools.fleet down     # SIGTERM, wait, SIGKILL after --timeout

Each service gets its own address (127.0.0.2, 127.0.0.3, ...) and keeps the
compose port, so the fleet looks like the containers do: same port, many
hosts. A cluster file lists them, so ``config get cluster`` names the local
addresses, and editing that file grows or shrinks the fleet live.

From tests::

    with LocalFleet(n=3) as fleet:
        fleet.addresses          # ["127.0.0.2:PORT", ...]
        fleet.kill(1); fleet.restart(1); fleet.add_node()
    with LocalFleet(n=3, snapshot=True) as fleet:   # --snapshot per node
        rolling_restart(fleet)

Only 127.0.0.x is ever used (Linux routes all of 127/8 to loopback).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

# the compose file of the current directory, else of the checkout tools/ lives in
# (an installed memd has no checkout: then --compose must name one)
DEFAULT_COMPOSE = next((p for p in (Path("docker-compose.yml"),
                                    Path(__file__).resolve().parent.parent / "docker-compose.yml")
                        if p.is_file()), Path("docker-compose.yml"))
DEFAULT_STATE = Path(".fleet") / "state.json"
# Flags the launcher owns: compose's values make sense only inside Docker.
_OWN_FLAGS = {"-l", "--listen", "-p", "--port", "--cluster-nodes", "--cluster-file", "--cluster-dns",
              "-u", "--user", "--snapshot"}


# --------------------------------------------------------------------------- backends


def memd_available() -> bool:
    """True when ``python -m memd`` can run (the node is installed)."""
    try:
        return (importlib.util.find_spec("memd.cli") is not None
                and importlib.util.find_spec("memd.__main__") is not None)
    except ImportError:
        return False


def memcached_available() -> bool:
    return shutil.which("memcached") is not None


def node_command(backend: str, host: str, port: int, cluster_file: str | None,
                 extra: list[str]) -> list[str]:
    if backend == "memd":
        cmd = [sys.executable, "-m", "memd", "-l", host, "-p", str(port)]
        if cluster_file:
            cmd += ["--cluster-file", cluster_file]
        return cmd + extra
    if backend == "memcached":
        # memcached has no config get cluster: a data-path stand-in only.
        cmd = [shutil.which("memcached") or "memcached", "-U", "0", "-l", host, "-p", str(port)]
        if os.geteuid() == 0:
            cmd += ["-u", "root"]
        return cmd + extra
    raise ValueError(f"unknown backend {backend!r}")


# --------------------------------------------------------------------------- probes


def ping(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when the node answers ``version`` with ``VERSION ...``."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"version\r\n")
            return sock.recv(64).startswith(b"VERSION")
    except OSError:
        return False


def config_get_cluster(host: str, port: int, timeout: float = 1.0) -> bytes:
    """The raw reply to ``config get cluster`` (b"" if the node is down)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"config get cluster\r\n")
            buf = b""
            while not buf.endswith((b"END\r\n", b"ERROR\r\n")):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                buf += chunk
            return buf
    except OSError:
        return b""


def free_port(hosts: list[str], low: int = 20000, high: int = 45000) -> int:
    """A port that binds on every host (same port, many addresses)."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(low, high)
        try:
            for host in hosts:
                with socket.socket() as s:
                    s.bind((host, port))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port on " + ", ".join(hosts))


def stop_pids(pids: list[int], timeout: float = 5.0) -> None:
    """SIGTERM all, wait up to ``timeout`` for all, then SIGKILL the rest."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    pending = [p for p in pids if _alive(p)]
    while pending and time.monotonic() < deadline:
        time.sleep(0.05)
        pending = [p for p in pending if _alive(p)]
    for pid in pending:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _alive(pid)


def _alive(pid: int) -> bool:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)  # reap if it is our child
        if done == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(pid, 0); it is dead for our purposes
    # (its parent, not us, must reap it).
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


# --------------------------------------------------------------------------- fleet


@dataclass
class Node:
    name: str
    host: str
    port: int
    extra: list[str] = field(default_factory=list)
    proc: subprocess.Popen | None = None
    log_path: str = ""

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


class LocalFleet:
    """Start, kill, restart and grow a fleet of local nodes."""

    def __init__(
        self,
        n: int = 3,
        *,
        backend: str = "auto",
        port: int | None = None,
        extra_args: list[str] | None = None,
        workdir: str | None = None,
        first_host: int = 2,
        startup_timeout: float = 15.0,
        detach: bool = False,
        snapshot: bool = False,
    ) -> None:
        if backend == "auto":
            backend = "memd" if memd_available() else "memcached"
        self.backend = backend
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="memd-fleet-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.cluster_file = str(self.workdir / "cluster.txt")
        self.startup_timeout = startup_timeout
        self.detach = detach  # outlive this Python process (the CLI's `up`)
        self._first_host = first_host
        self._extra = list(extra_args if extra_args is not None else ["-m", "64"])
        self.snapshot = snapshot  # each memd node gets --snapshot <workdir>/<name>.snap
        hosts = [self._host(i) for i in range(n + 4)]  # room for add_node()
        self.port = port or free_port(hosts)
        self.nodes = [Node(f"memd{i + 1}", self._host(i), self.port, list(self._extra)) for i in range(n)]
        self.membership_version = 0

    def _host(self, i: int) -> str:
        octet = self._first_host + i
        if not 1 <= octet <= 254:
            raise ValueError("fleet only uses 127.0.0.1-254")
        return f"127.0.0.{octet}"

    # -- lifecycle --------------------------------------------------------
    @property
    def addresses(self) -> list[str]:
        return [n.address for n in self.nodes]

    def start(self) -> "LocalFleet":
        self._write_cluster_file(self.nodes)
        try:
            for node in self.nodes:
                self._spawn(node)
            for node in self.nodes:
                self._wait_ready(node)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 5.0) -> None:
        # Signal every node first, then wait: graceful shutdowns overlap.
        # memcached (a data-path stand-in with nothing to flush) is killed:
        # its graceful stop lingers ~0.7 s per open connection.
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None:
                if self.backend == "memcached":
                    node.proc.kill()
                else:
                    node.proc.terminate()
        for node in self.nodes:
            self._stop_node(node, timeout)
        if self._own_workdir and not self.detach:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "LocalFleet":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- chaos --------------------------------------------------------------
    def kill(self, i: int, sig: int = signal.SIGKILL) -> None:
        """Kill node ``i`` abruptly (SIGKILL by default: a crash, not a shutdown)."""
        node = self.nodes[i]
        if node.proc is not None and node.proc.poll() is None:
            node.proc.send_signal(sig)
            node.proc.wait(timeout=10)

    def restart(self, i: int) -> None:
        """Start node ``i`` again at the same address (empty cache, like a reboot)."""
        node = self.nodes[i]
        self._stop_node(node)
        self._spawn(node)
        self._wait_ready(node)

    def graceful_restart(self, i: int, timeout: float = 60.0) -> None:
        """SIGTERM node ``i`` (it writes its snapshot), start it again, wait until it answers."""
        node = self.nodes[i]
        if node.proc is not None and node.proc.poll() is None:
            node.proc.terminate()
            node.proc.wait(timeout=timeout)
        node.proc = None
        self._spawn(node)
        self._wait_ready(node)

    def add_node(self) -> int:
        """Start one more node, then list it in the cluster file; returns its index."""
        i = len(self.nodes)
        node = Node(f"memd{i + 1}", self._host(i), self.port, list(self._extra))
        self.nodes.append(node)
        self._spawn(node)
        self._wait_ready(node)
        self._write_cluster_file(self.nodes)
        return i

    def remove_node(self, i: int) -> None:
        """Unlist node ``i`` from the cluster file, then stop it."""
        node = self.nodes.pop(i)
        self._write_cluster_file(self.nodes)
        self._stop_node(node)

    def alive(self, i: int) -> bool:
        proc = self.nodes[i].proc
        return proc is not None and proc.poll() is None

    # -- internals ----------------------------------------------------------
    def _write_cluster_file(self, nodes: list[Node]) -> None:
        # Write then rename: a node re-reading mid-write must never see half
        # a file.
        # The version line rises by one per change, as ElastiCache's does:
        # some clients (elasticache-pyclient) ignore a config whose version
        # is not higher than the last one they saw.
        self.membership_version += 1
        tmp = self.cluster_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(f"# written by tools/fleet.py\nversion {self.membership_version}\n")
            f.writelines(f"{n.address}\n" for n in nodes)
        os.replace(tmp, self.cluster_file)

    def node_argv(self, node: Node) -> list[str]:
        extra = list(node.extra)
        if self.snapshot and "--snapshot" not in extra:
            extra += ["--snapshot", str(self.workdir / f"{node.name}.snap")]
        return node_command(self.backend, node.host, node.port, self.cluster_file, extra)

    def _spawn(self, node: Node) -> None:
        cmd = self.node_argv(node)
        node.log_path = str(self.workdir / f"{node.name}.log")
        with open(node.log_path, "ab") as log:
            node.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=self.detach,
            )

    def _wait_ready(self, node: Node) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if node.proc is not None and node.proc.poll() is not None:
                raise RuntimeError(f"{node.name} exited with {node.proc.returncode}: {self._log_tail(node)}")
            if ping(node.host, node.port, timeout=0.2):
                return
            time.sleep(0.05)
        raise RuntimeError(f"{node.name} not ready after {self.startup_timeout}s: {self._log_tail(node)}")

    def _stop_node(self, node: Node, timeout: float = 5.0) -> None:
        if node.proc is None:
            return
        if node.proc.poll() is None:
            node.proc.terminate()
            try:
                node.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait(timeout=5)
        node.proc = None

    @staticmethod
    def _log_tail(node: Node) -> str:
        try:
            return Path(node.log_path).read_text(errors="replace")[-800:]
        except OSError:
            return ""


def rolling_restart(fleet: LocalFleet, wait: float = 0.0,
                    on_restarted: Callable[[int], None] | None = None) -> list[float]:
    """Restart every node in turn through a graceful snapshot and warm start.

    Each node must answer again before the next goes down; ``wait`` more
    seconds then pass, so that clients (which probe dead nodes every
    ``dead_timeout`` seconds) have put it back before its neighbour leaves.
    Returns each node's downtime in seconds.
    """
    downtimes = []
    for i in range(len(fleet.nodes)):
        started = time.monotonic()
        fleet.graceful_restart(i)
        downtimes.append(time.monotonic() - started)
        if on_restarted is not None:
            on_restarted(i)
        time.sleep(wait)
    return downtimes


def _restart_pid(entry: dict, timeout: float, startup: float) -> dict:
    """The CLI's rolling restart step for a detached node recorded in the state file."""
    stop_pids([entry["pid"]], timeout=timeout)
    with open(entry["log"], "ab") as log:
        proc = subprocess.Popen(entry["argv"], stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + startup
    while not ping(entry["host"], entry["port"], timeout=0.2):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{entry['name']} did not come back (see {entry['log']})")
        time.sleep(0.05)
    return dict(entry, pid=proc.pid)


# --------------------------------------------------------------------------- compose


def load_compose(path: Path) -> dict[str, list[str]]:
    """Service name -> its ``command`` list, for the memd services (not the
    optional ones behind a compose profile, such as twemproxy).

    A file the service bind-mounts and names on its command line is the
    host's file here: ``--config /etc/memd/memd.toml`` becomes the compose
    directory's ``deploy/settings/memd.toml``, so local nodes share the
    containers' settings.
    """
    text = Path(path).read_text()
    try:
        import yaml
    except ImportError:
        raw = _parse_compose_minimal(text)
    else:
        raw = _services_from_yaml(yaml.safe_load(text) or {})
    base = Path(path).resolve().parent
    return {name: _host_paths(cmd, volumes, base) for name, (cmd, volumes) in raw.items()}


def _services_from_yaml(doc: dict) -> dict[str, tuple[list[str], list[str]]]:
    services = {}
    for name, svc in (doc.get("services") or {}).items():
        svc = svc or {}
        if svc.get("profiles"):
            continue
        cmd = svc.get("command") or []
        services[name] = (cmd.split() if isinstance(cmd, str) else [str(a) for a in cmd],
                          [str(v) for v in svc.get("volumes") or []])
    return services


def _host_paths(cmd: list[str], volumes: list[str], base: Path) -> list[str]:
    mounts = {}
    for volume in volumes:
        source, _, rest = volume.partition(":")
        if source.startswith((".", "/")):          # a bind mount, not a named volume
            mounts[rest.split(":")[0]] = str((base / source).resolve())
    return [mounts.get(arg, arg) for arg in cmd]


def _parse_compose_minimal(text: str) -> dict[str, tuple[list[str], list[str]]]:
    """Just enough YAML for our docker-compose.yml: ``services:`` at column 0,
    service names at indent 2, ``command:`` and ``volumes:`` as JSON-compatible
    flow lists."""
    services: dict[str, tuple[list[str], list[str]]] = {}
    in_services, current = False, None
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].rstrip()
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        indent = len(line) - len(line.lstrip())
        if indent == 0:
            in_services = line == "services:"
            current = None
        elif in_services and indent == 2 and line.endswith(":"):
            current = line.strip()[:-1]
            services[current] = ([], [])
        elif in_services and current and line.strip().startswith("profiles:"):
            del services[current]
            current = None
        elif in_services and current and line.strip().startswith(("command:", "volumes:")):
            key, value = (part.strip() for part in line.split(":", 1))
            items = json.loads(value) if value.startswith("[") else value.split()
            services[current][0 if key == "command" else 1][:] = items
    return services


def compose_published_ports(path: Path) -> dict[str, int]:
    """Service name -> the host port published for its container port (PyYAML)."""
    import yaml

    doc = yaml.safe_load(Path(path).read_text()) or {}
    out = {}
    for name, svc in (doc.get("services") or {}).items():
        if (svc or {}).get("profiles"):
            continue  # optional services (twemproxy) are not memd nodes
        for entry in (svc or {}).get("ports") or []:
            # "HOST:CONTAINER" or "IP:HOST:CONTAINER"; the first one wins.
            parts = _expand_env(str(entry)).split("/")[0].split(":")
            if len(parts) >= 2:
                out[name] = int(parts[-2])
                break
    return out


def _expand_env(text: str) -> str:
    """Compose's ``${VAR:-default}``, ``${VAR}`` and ``$VAR`` from the environment."""
    def value(m: re.Match) -> str:
        name, default = m.group(1) or m.group(3), m.group(2)
        return os.environ.get(name) or (default or "")
    return re.sub(r"\$\{(\w+)(?::-([^}]*))?\}|\$(\w+)", value, text)


def compose_rolling_restart(path: Path, engine: list[str], host: str = "127.0.0.1",
                            wait: float = 0.0, stop_timeout: int = 60,
                            startup: float = 60.0) -> list[tuple[str, float]]:
    """Restart a compose fleet's services one at a time: ``stop -t`` (memd
    writes its snapshot on SIGTERM), ``start``, wait for the published port
    to answer, then ``wait`` more seconds.  ``engine`` is e.g.
    ``["docker", "compose"]`` or ``["podman-compose"]``."""
    done = []
    for name, port in compose_published_ports(path).items():
        started = time.monotonic()
        base = [*engine, "-f", str(path)]
        subprocess.run([*base, "stop", "-t", str(stop_timeout), name], check=True,
                       timeout=stop_timeout + 30)
        subprocess.run([*base, "start", name], check=True, timeout=120)
        deadline = time.monotonic() + startup
        while not ping(host, port, timeout=0.2):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} does not answer on {host}:{port}")
            time.sleep(0.1)
        done.append((name, time.monotonic() - started))
        print(f"{name:10} back in {done[-1][1]:.2f} s", flush=True)
        time.sleep(wait)
    return done


def strip_own_flags(args: list[str]) -> list[str]:
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
            continue
        flag = a.split("=", 1)[0]
        if flag in _OWN_FLAGS:
            skip = "=" not in a
            continue
        out.append(a)
    return out


def compose_port(args: list[str], default: int = 11211) -> int:
    for i, a in enumerate(args):
        if a in ("-p", "--port") and i + 1 < len(args):
            return int(args[i + 1])
        if a.startswith("--port="):
            return int(a.split("=", 1)[1])
    return default


# --------------------------------------------------------------------------- CLI


def cmd_up(args: argparse.Namespace) -> int:
    state_path = Path(args.state)
    if state_path.exists():
        print(f"fleet already up ({state_path}); run `down` first", file=sys.stderr)
        return 1
    if not Path(args.compose).is_file():
        print(f"no compose file {args.compose}: run from a directory with docker-compose.yml "
              "or pass --compose FILE", file=sys.stderr)
        return 2
    services = load_compose(Path(args.compose))
    if not services:
        print(f"no services in {args.compose}", file=sys.stderr)
        return 1
    ports = {compose_port(cmd) for cmd in services.values()}
    port = args.port or (ports.pop() if len(ports) == 1 else 11211)
    fleet = LocalFleet(
        n=len(services), backend=args.backend, port=port,
        workdir=str(state_path.parent.resolve() / "run"), detach=True, first_host=args.first_host,
        snapshot=args.snapshot and args.backend != "memcached",
    )
    for node, (name, cmd) in zip(fleet.nodes, services.items()):
        node.name, node.extra = name, strip_own_flags(cmd)
    fleet.start()
    state = {
        "backend": fleet.backend,
        "cluster_file": fleet.cluster_file,
        "nodes": [{"name": n.name, "host": n.host, "port": n.port, "pid": n.proc.pid,
                   "log": n.log_path, "argv": fleet.node_argv(n)} for n in fleet.nodes],
    }
    state_path.parent.mkdir(parents=True, exist_ok=True)
    state_path.write_text(json.dumps(state, indent=2) + "\n")
    for n in fleet.nodes:
        print(f"{n.name:10} {n.address:22} pid {n.proc.pid}")
    print(f"cluster file: {fleet.cluster_file}   state: {state_path}")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    state_path = Path(args.state)
    if not state_path.exists():
        print("no fleet state; nothing to stop")
        return 0
    state = json.loads(state_path.read_text())
    stop_pids([n["pid"] for n in state["nodes"]], timeout=args.timeout)
    for n in state["nodes"]:
        print(f"stopped {n['name']} (pid {n['pid']})")
    state_path.unlink()
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    state_path = Path(args.state)
    if not state_path.exists():
        print("fleet is down")
        return 3
    state = json.loads(state_path.read_text())
    healthy = True
    for n in state["nodes"]:
        up = _alive(n["pid"]) and ping(n["host"], n["port"])
        healthy &= up
        print(f"{n['name']:10} {n['host']}:{n['port']:<6} pid {n['pid']:<8} {'up' if up else 'DOWN'}")
    reply = config_get_cluster(state["nodes"][0]["host"], state["nodes"][0]["port"])
    if reply.startswith(b"CONFIG"):
        print("config get cluster:", reply.split(b"\r\n")[1].decode().replace("\n", " | "))
    return 0 if healthy else 1


def cmd_rolling_restart(args: argparse.Namespace) -> int:
    if args.compose:
        compose_rolling_restart(Path(args.compose), args.engine.split(), host=args.host,
                                wait=args.wait, stop_timeout=int(args.timeout),
                                startup=args.startup_timeout)
        return 0
    state_path = Path(args.state)
    if not state_path.exists():
        print("fleet is down", file=sys.stderr)
        return 1
    state = json.loads(state_path.read_text())
    if not any("--snapshot" in n.get("argv", ()) for n in state["nodes"]):
        print("warning: nodes have no --snapshot; they restart empty", file=sys.stderr)
    for i, entry in enumerate(state["nodes"]):
        started = time.monotonic()
        state["nodes"][i] = _restart_pid(entry, args.timeout, args.startup_timeout)
        state_path.write_text(json.dumps(state, indent=2) + "\n")  # new pid at once
        print(f"{entry['name']:10} back in {time.monotonic() - started:.2f} s "
              f"(pid {state['nodes'][i]['pid']})", flush=True)
        if i + 1 < len(state["nodes"]):
            time.sleep(args.wait)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.fleet", description=__doc__.split("\n\n")[0])
    p.add_argument("--state", default=str(DEFAULT_STATE), help="state file (default .fleet/state.json)")
    sub = p.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start every service of the compose file locally")
    up.add_argument("--compose", default=str(DEFAULT_COMPOSE))
    up.add_argument("--backend", choices=["auto", "memd", "memcached"], default="auto")
    up.add_argument("--port", type=int, default=None, help="override the compose port")
    up.add_argument("--first-host", type=int, default=2, help="first 127.0.0.N octet (default 2)")
    up.add_argument("--no-snapshot", dest="snapshot", action="store_false",
                    help="do not give memd nodes --snapshot (rolling restarts then start empty)")
    rr = sub.add_parser("rolling-restart",
                        help="restart nodes one at a time through a snapshot and warm start")
    rr.add_argument("--wait", type=float, default=35.0,
                    help="seconds between a node answering and the next going down; above "
                         "clients' dead_timeout (30 s by default) so they have put it back")
    rr.add_argument("--timeout", type=float, default=60.0, help="graceful stop limit (snapshot write)")
    rr.add_argument("--startup-timeout", type=float, default=60.0, help="snapshot load limit")
    rr.add_argument("--compose", metavar="FILE",
                    help="restart the services of a running compose fleet instead of a local one")
    rr.add_argument("--engine", default="docker compose",
                    help="compose command (default 'docker compose'; e.g. podman-compose)")
    rr.add_argument("--host", default="127.0.0.1", help="where the published ports answer")
    down = sub.add_parser("down", help="stop the fleet (SIGTERM, then SIGKILL)")
    down.add_argument("--timeout", type=float, default=5.0)
    sub.add_parser("status", help="show which nodes answer")
    args = p.parse_args(argv)
    return {"up": cmd_up, "down": cmd_down, "status": cmd_status,
            "rolling-restart": cmd_rolling_restart}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
