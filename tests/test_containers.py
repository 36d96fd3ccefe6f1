"""The image and the compose fleet, built and run by a real container engine.

Marker ``container``: not part of the default run (`pytest -m container`;
`.ci/run` runs it after `setup-podman.sh`). Skips with its reason where
podman / podman-compose are missing.

What it checks, the way a user meets the fleet:
- the image builds; every node passes its HEALTHCHECK and runs as non-root;
- every node answers `config get cluster` with the same bytes, listing all three;
- two clients inside the compose network, bootstrapped from different nodes,
  read 100% of each other's keys;
- a node's container removed and created again (new address) is announced
  the same way everywhere and reached by name, and its snapshot volume
  brings its keys back;
- everything (containers, volumes, network) is removed at the end.

Host ports are published on ports nothing else here uses (the engine
redirects them on the whole loopback range), picked below the ephemeral range.
"""

from __future__ import annotations

import json
import os
import random
import shlex
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from memd.cluster.discovery import parse_config_reply
from tools.fleet import config_get_cluster

pytestmark = pytest.mark.container

ROOT = Path(__file__).resolve().parent.parent
SETUP = [ROOT.parent / "shared" / "containers" / "setup-podman.sh",
         Path("/work/shared/containers/setup-podman.sh")]
SERVICES = ["memd1", "memd2", "memd3"]
KEYS = 2000


def build_args() -> list[str]:
    """Flags for `podman build`: $MEMD_BUILD_ARGS, else what setup-podman.sh prints."""
    if os.environ.get("MEMD_BUILD_ARGS") is not None:
        return shlex.split(os.environ["MEMD_BUILD_ARGS"])
    for script in SETUP:
        if script.exists():
            out = subprocess.run([str(script), "--build-args"], capture_output=True, text=True, timeout=30)
            if out.returncode == 0:
                return shlex.split(out.stdout)
    return ["--format", "docker"]  # keeps HEALTHCHECK, which the OCI format drops


def run(*cmd: str, timeout: float = 120, check: bool = True, **kw) -> subprocess.CompletedProcess:
    out = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, **kw)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} -> {out.returncode}\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    return out


def unused_ports(n: int) -> list[int]:
    rng = random.Random()
    found: list[int] = []
    while len(found) < n:
        port = rng.randrange(12000, 20000)
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
        if port not in found:
            found.append(port)
    return found


def wait_until(predicate, timeout: float, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


# Runs inside the compose network, in the memd image: bootstrap one client
# from each of two nodes, write with one, read with the other.
CLIENT_SCRIPT = """
import json, sys
from memd.cluster import ClusterClient
a_node, b_node, n, phase = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
a = ClusterClient(config_endpoint=a_node + ":11211")
b = ClusterClient(config_endpoint=b_node + ":11211")
ka = [f"a:{i}" for i in range(n)]
kb = [f"b:{i}" for i in range(n)]
if phase == "write":
    assert a.set_many({k: k.encode() for k in ka}, noreply=False) == []
    assert b.set_many({k: k.encode() for k in kb}, noreply=False) == []
print(json.dumps({
    "servers": [sorted(a.servers), sorted(b.servers)],
    "b_reads_a": len(b.get_many(ka)), "a_reads_b": len(a.get_many(kb)),
    "items": {n: s[b"curr_items"] for n, s in a.stats().items()},
}))
"""


class ComposeFleet:
    def __init__(self, project: str, ports: list[int]):
        self.project = project
        self.ports = dict(zip(SERVICES, ports))
        self.env = {**os.environ, **{f"{s.upper()}_PORT": str(p) for s, p in self.ports.items()}}

    def compose(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        return run("podman-compose", "-p", self.project, "-f", str(ROOT / "docker-compose.yml"), *args,
                   timeout=timeout, env=self.env, cwd=ROOT)

    def container(self, service: str) -> str:
        return f"{self.project}_{service}_1"

    def ip(self, service: str) -> str:
        return run("podman", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                   self.container(service)).stdout.strip()

    def config(self, service: str) -> bytes:
        return config_get_cluster("127.0.0.1", self.ports[service], timeout=2)

    def healthy(self, service: str) -> bool:
        return run("podman", "healthcheck", "run", self.container(service), check=False).returncode == 0

    def clients(self, a: str, b: str, phase: str) -> dict:
        out = run("podman", "run", "--rm", "--network", f"{self.project}_default", "--entrypoint", "python",
                  "memd:latest", "-c", CLIENT_SCRIPT, a, b, str(KEYS), phase, timeout=120)
        return json.loads(out.stdout.strip().splitlines()[-1])

    def recreate(self, service: str) -> tuple[str, str]:
        """Remove ``service``'s container and create it again while another
        container holds its old address, so the new one gets a new address.
        Its volume (and the snapshot written at its graceful stop) stays.
        Returns (old address, new address)."""
        old_ip = self.ip(service)
        run("podman", "stop", "-t", "20", self.container(service))
        run("podman", "rm", self.container(service))
        squatter = f"{self.project}_squatter_{service}"
        run("podman", "run", "-d", "--rm", "--name", squatter, "--network", f"{self.project}_default",
            "--label", f"io.podman.compose.project={self.project}",
            "--entrypoint", "sleep", "memd:latest", "600")
        self.compose("up", "-d", service)
        assert wait_until(lambda: self.healthy(service), timeout=60), f"{service} not healthy again"
        return old_ip, self.ip(service)

    def teardown(self) -> None:
        run("podman-compose", "-p", self.project, "-f", str(ROOT / "docker-compose.yml"), "down", "-v",
            check=False, env=self.env, cwd=ROOT, timeout=180)
        ids = run("podman", "ps", "-aq", "--filter", f"label=io.podman.compose.project={self.project}",
                  check=False).stdout.split()
        if ids:
            run("podman", "rm", "-f", *ids, check=False)
        for volume in run("podman", "volume", "ls", "-q", check=False).stdout.split():
            if volume.startswith(f"{self.project}_"):
                run("podman", "volume", "rm", "-f", volume, check=False)
        run("podman", "network", "rm", "-f", f"{self.project}_default", check=False)


@pytest.fixture(scope="module")
def fleet():
    missing = [t for t in ("podman", "podman-compose") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"no container engine: {', '.join(missing)} not installed "
                    "(run ../shared/containers/setup-podman.sh, or apt-get install podman podman-compose)")
    run("podman", "build", *build_args(), "-t", "memd:latest", str(ROOT), timeout=900)
    f = ComposeFleet(f"memdtest{os.getpid()}", unused_ports(len(SERVICES)))
    try:
        f.compose("up", "-d", *SERVICES)
        yield f
    finally:
        f.teardown()


def test_every_node_is_healthy_and_runs_as_non_root(fleet):
    for service in SERVICES:
        assert wait_until(lambda: fleet.healthy(service), timeout=60), f"{service} never healthy"
        status = run("podman", "exec", fleet.container(service), "cat", "/proc/1/status").stdout
        uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
        assert "0" not in uids, f"{service} runs as {uids}"


def test_every_node_announces_the_same_complete_membership(fleet):
    replies = wait_until(lambda: {s: fleet.config(s) for s in SERVICES}
                         if all(fleet.config(s).startswith(b"CONFIG") for s in SERVICES) else None,
                         timeout=60)
    assert replies, "a node never answered config get cluster"
    assert len(set(replies.values())) == 1, replies
    info = parse_config_reply(replies["memd1"])
    assert [n.name for n in info.nodes] == ["memd1:11211", "memd2:11211", "memd3:11211"]


def test_clients_from_different_nodes_read_each_others_keys_and_a_recreated_node_comes_back(fleet):
    first = fleet.clients("memd1", "memd3", "write")
    assert first["servers"] == [["memd1:11211", "memd2:11211", "memd3:11211"]] * 2
    assert first["b_reads_a"] == KEYS and first["a_reads_b"] == KEYS
    held_by_memd2 = first["items"]["memd2:11211"]
    assert held_by_memd2 > 0
    before = fleet.config("memd1")

    old_ip, new_ip = fleet.recreate("memd2")
    assert new_ip and new_ip != old_ip

    # Announced everywhere as before: the name, which DNS now maps to the
    # new address.
    assert {fleet.config(s) for s in SERVICES} == {before}
    again = fleet.clients("memd2", "memd1", "read")
    assert again["b_reads_a"] == KEYS and again["a_reads_b"] == KEYS
    assert again["items"]["memd2:11211"] == held_by_memd2  # warm from its snapshot volume


KETAMA_SCRIPT = """
import json, sys
from memd.cluster import ClusterClient
keys = [f"tw:{i}" for i in range(int(sys.argv[1]))]
with ClusterClient(config_endpoint="memd2:11211", ring="ketama") as cc:
    found = cc.get_many(keys)
print(json.dumps({"found": sum(found.get(k) == k.encode() for k in keys)}))
"""


def test_twemproxy_profile_routes_every_key_where_the_ketama_ring_does(fleet):
    from pymemcache.client.base import Client

    run("podman", "build", *build_args(), "-t", "memd-twemproxy:latest", "-f",
        str(ROOT / "deploy" / "twemproxy" / "Dockerfile"), str(ROOT), timeout=900)
    (port,) = unused_ports(1)
    fleet.env["TWEMPROXY_PORT"] = str(port)
    fleet.compose("up", "-d", "twemproxy")

    def writes():
        try:
            proxy = Client(("127.0.0.1", port), connect_timeout=2, timeout=5)
            return proxy.set("tw:probe", b"1", noreply=False) and proxy
        except Exception:
            return None

    proxy = wait_until(writes, timeout=60)
    assert proxy, run("podman", "logs", f"{fleet.project}_twemproxy_1", check=False).stderr[-2000:]
    proxy.close()
    keys = [f"tw:{i}" for i in range(KEYS)]

    def write_all():
        # A new connection each try: the proxy restarts when an address changes.
        try:
            client = Client(("127.0.0.1", port), connect_timeout=2, timeout=5)
            failed = [k for i in range(0, KEYS, 500)
                      for k in client.set_many({k: k.encode() for k in keys[i:i + 500]}, noreply=False)]
            client.close()
            return not failed
        except Exception:
            return False

    def ketama_reads_all():
        out = run("podman", "run", "--rm", "--network", f"{fleet.project}_default", "--entrypoint", "python",
                  "memd:latest", "-c", KETAMA_SCRIPT, str(KEYS), timeout=120)
        return json.loads(out.stdout.strip().splitlines()[-1]) == {"found": KEYS}

    assert write_all()
    assert ketama_reads_all()

    # A node comes back at a new address: twemproxy resolved names once, at
    # its start; the supervisor notices and restarts it, and the keys of
    # that node are written through the proxy again.
    old_ip, new_ip = fleet.recreate("memd3")
    assert new_ip != old_ip
    assert wait_until(write_all, timeout=60, interval=2)
    assert ketama_reads_all()
