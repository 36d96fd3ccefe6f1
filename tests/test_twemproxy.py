"""twemproxy in front of a memd fleet routes every key where memd's ketama ring does.

Real nutcracker (Debian's `nutcracker`) against three local memd nodes. The
nodes are named ``localhost:PORT`` (announced with an empty IP field), so
the test also checks that the placement follows the names while twemproxy
connects to the addresses the generator resolved.
"""

import shutil
import socket
import subprocess
import time

import pytest
from pymemcache.client.base import Client

import servers
from memd.cluster.client import ClusterClient
from memd.cluster.config import NodeEntry
from memd.cluster.ring import KetamaRing
from tools import twemproxy

KEYS = [f"tw:{i}" for i in range(10_000)]


def test_generated_config_names_each_server_by_its_memd_identity():
    nodes = [NodeEntry("memd1", "", 11211), NodeEntry("cache.example", "10.0.0.9", 11300),
             NodeEntry("127.0.0.5", "127.0.0.5", 2000)]
    text = twemproxy.render_config(nodes, "0.0.0.0:22121", resolve=lambda host: "10.89.0.7")
    servers_section = text.split("servers:\n", 1)[1].splitlines()
    assert servers_section == [
        "   - 10.89.0.7:11211:1 memd1",                     # ketama hashes "memd1-i" (port 11211)
        "   - 10.0.0.9:11300:1 cache.example:11300",        # and "host:port-i" otherwise
        "   - 127.0.0.5:2000:1 127.0.0.5:2000",
    ]
    assert "distribution: ketama" in text and "hash: md5" in text
    assert "auto_eject_hosts: false" in text


def _wait_port(host, port, proc, seconds=10):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def test_twemproxy_puts_every_key_on_the_node_the_memd_ring_names(tmp_path, capsys):
    exe = shutil.which("nutcracker")
    if exe is None:
        pytest.skip("nutcracker not installed (apt-get install nutcracker)")
    ports = [servers.free_port() for _ in range(3)]
    names = ",".join(f"localhost:{p}" for p in ports)
    nodes = []
    proxy = None
    try:
        for port in ports:
            flags = ("--cluster-nodes", names)
            nodes.append(servers.ServerProcess("memd", servers.memd_argv(port, flags), port, flags).start())
        endpoint = f"127.0.0.1:{ports[0]}"
        listen_port, stats_port = servers.free_port(), servers.free_port()
        conf = tmp_path / "nutcracker.yml"
        # The generator, as a user runs it: from one node's `config get cluster`.
        assert twemproxy.main(["config", "--config-endpoint", endpoint, "--resolve",
                               "--listen", f"127.0.0.1:{listen_port}"]) == 0
        conf.write_text(capsys.readouterr().out)
        log = open(tmp_path / "nutcracker.log", "w")
        proxy = subprocess.Popen([exe, "-c", str(conf), "-s", str(stats_port), "-a", "127.0.0.1"],
                                 stdout=log, stderr=subprocess.STDOUT)
        assert _wait_port("127.0.0.1", listen_port, proxy), (tmp_path / "nutcracker.log").read_text()

        via_proxy = Client(("127.0.0.1", listen_port), connect_timeout=2, timeout=5)
        for i in range(0, len(KEYS), 500):
            assert via_proxy.set_many({k: k.encode() for k in KEYS[i:i + 500]}, noreply=False) == []

        ring = KetamaRing([f"localhost:{p}" for p in ports])
        expected = {p: {k for k in KEYS if ring.get_node(k) == f"localhost:{p}"} for p in ports}
        for port in ports:
            direct = Client(("127.0.0.1", port), connect_timeout=2, timeout=5)
            held = set()
            for i in range(0, len(KEYS), 500):
                held |= set(direct.get_many(KEYS[i:i + 500]))
            direct.close()
            assert held == expected[port], f"node {port}: {len(held ^ expected[port])} keys misplaced"
        assert sum(map(len, expected.values())) == len(KEYS)

        # memd's own client, bootstrapped from a node with the ketama ring,
        # reads every key the proxy wrote from where it lives.
        with ClusterClient(config_endpoint=endpoint, ring="ketama") as cc:
            assert sorted(cc.servers) == sorted(f"localhost:{p}" for p in ports)
            found = {}
            for i in range(0, len(KEYS), 500):
                found.update(cc.get_many(KEYS[i:i + 500]))
            assert found == {k: k.encode() for k in KEYS}
        via_proxy.close()
    finally:
        if proxy is not None:
            proxy.terminate()
            proxy.wait(10)
        for node in nodes:
            node.cleanup()

