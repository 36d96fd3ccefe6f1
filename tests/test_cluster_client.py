"""ClusterClient: routing, fan-out, failover, rejoin and discovery.

Data-path tests run real memcached processes on 127.0.0.x (tools/fleet.py);
discovery tests use a tiny in-process endpoint that answers `version` and
`config get cluster` from our node-side ClusterConfig.
"""

import shutil
import socket
import subprocess
import threading
import time

import pytest
from pymemcache.client.base import Client

from memd.cluster import discovery
from memd.cluster.client import ClusterClient, NoLiveNodes
from memd.cluster.config import ClusterConfig, parse_node_list
from memd.cluster.ring import KetamaRing, ketama_label
from tools import twemproxy
from tools.fleet import LocalFleet, free_port, ping

needs_memcached = pytest.mark.skipif(
    shutil.which("memcached") is None, reason="memcached binary not installed (apt-get install memcached)")


def wait_for(predicate, timeout=5.0, interval=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def direct(address):
    host, port = address.rsplit(":", 1)
    return Client((host, int(port)), connect_timeout=1, timeout=1)


class ConfigEndpoint:
    """A fake configuration endpoint: `version` and `config get cluster` only."""

    def __init__(self, nodes, host="127.0.0.9"):
        self.config = ClusterConfig(parse_node_list(",".join(nodes)))
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, free_port([host])))
        self._sock.listen()
        self.address = "%s:%d" % self._sock.getsockname()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def set_nodes(self, nodes):
        self.config.set_nodes(parse_node_list(",".join(nodes)))

    def _serve(self):
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn):
        with conn:
            buf = b""
            while True:
                try:
                    data = conn.recv(4096)
                except OSError:
                    return
                if not data:
                    return
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    words = line.strip().split()
                    if words == [b"version"]:
                        conn.sendall(b"VERSION 1.6.18\r\n")
                    elif words[:2] == [b"config", b"get"] and len(words) == 3:
                        conn.sendall(self.config.reply(words[2]))
                    elif words == [b"quit"]:
                        return
                    else:
                        conn.sendall(b"ERROR\r\n")

    def close(self):
        self._sock.close()


@pytest.fixture
def fleet():
    if shutil.which("memcached") is None:
        pytest.skip("memcached binary not installed (apt-get install memcached)")
    with LocalFleet(n=3, backend="memcached", extra_args=["-m", "16"]) as f:
        yield f


@pytest.fixture
def endpoint_factory():
    made = []

    def make(nodes):
        ep = ConfigEndpoint(nodes)
        made.append(ep)
        return ep

    yield make
    for ep in made:
        ep.close()


# --------------------------------------------------------------------------- routing


@needs_memcached
def test_each_key_is_stored_on_the_node_the_ring_names(fleet):
    with ClusterClient(fleet.addresses) as cc:
        keys = [f"route:{i}" for i in range(300)]
        for k in keys:
            assert cc.set(k, k.encode(), noreply=False)
        nodes = {a: direct(a) for a in fleet.addresses}
        for k in keys:
            owner = cc.node_for(k)
            assert nodes[owner].get(k) == k.encode()
            for other, client in nodes.items():
                if other != owner:
                    assert client.get(k) is None
        assert {cc.node_for(k) for k in keys} == set(fleet.addresses)


@needs_memcached
def test_single_key_commands_round_trip(fleet):
    with ClusterClient(fleet.addresses) as cc:
        assert cc.set("a", b"1", noreply=False)
        assert cc.add("a", b"2", noreply=False) is False
        assert cc.replace("a", b"3", noreply=False)
        assert cc.append("a", b"4", noreply=False) and cc.prepend("a", b"0", noreply=False)
        assert cc.get("a") == b"034"
        value, cas = cc.gets("a")
        assert cc.cas("a", b"x", cas) is True
        assert cc.set("n", b"10", noreply=False) and cc.incr("n", 5) == 15 and cc.decr("n", 3) == 12
        assert cc.touch("n", 100, noreply=False)
        assert cc.delete("a", noreply=False) and cc.get("a", default=b"miss") == b"miss"


@needs_memcached
def test_multi_key_calls_fan_out_and_merge(fleet):
    with ClusterClient(fleet.addresses) as cc:
        data = {f"many:{i}": str(i).encode() for i in range(500)}
        assert cc.set_many(data, noreply=False) == []
        got = cc.get_many(list(data) + ["absent"])
        assert got == data
        assert cc.delete_many(list(data)[:250], noreply=False)
        assert set(cc.get_many(list(data))) == set(list(data)[250:])
        stats = cc.stats()
        assert set(stats) == set(fleet.addresses)
        assert sum(s[b"curr_items"] for s in stats.values()) == 250


def test_fan_out_runs_nodes_in_parallel():
    # Each node's get_many sleeps 0.2 s; three nodes in series would be 0.6 s.
    with ClusterClient([f"127.0.0.{i}:1" for i in (2, 3, 4)], max_workers=4) as cc:
        def slow(keys, *a, **kw):
            time.sleep(0.2)
            return {k: (b"v", 0) for k in keys}

        for client in cc._clients.values():
            client.get_many = slow
        keys = [f"k{i}" for i in range(60)]
        assert {cc.node_for(k) for k in keys} == set(cc.servers)
        start = time.monotonic()
        assert len(cc.get_many(keys)) == 60
        assert time.monotonic() - start < 0.45


def test_ketama_ring_option_routes_like_ketama():
    nodes = ["127.0.0.2:11211", "127.0.0.3:11212"]
    with ClusterClient(nodes, ring="ketama") as cc:
        ring = KetamaRing(nodes)
        assert all(cc.node_for(f"k{i}") == ring.get_node(f"k{i}") for i in range(200))


def test_no_nodes_raises_unless_ignore_exc(endpoint_factory):
    ep = endpoint_factory([])
    with ClusterClient(config_endpoint=ep.address) as cc:
        with pytest.raises(NoLiveNodes):
            cc.get("k")
    with ClusterClient(config_endpoint=ep.address, ignore_exc=True) as cc:
        assert cc.get("k") is None and cc.set("k", b"v") is False and cc.get_many(["a"]) == {}


# --------------------------------------------------------------------------- failure


@needs_memcached
def test_dead_node_keys_move_to_the_next_node_and_no_read_raises(fleet):
    with ClusterClient(fleet.addresses, ignore_exc=True, failure_limit=2, dead_timeout=60) as cc:
        victim = fleet.addresses[1]
        keys = [f"fo:{i}" for i in range(300)]
        assert cc.set_many({k: b"v" for k in keys}, noreply=False) == []
        theirs = [k for k in keys if cc.node_for(k) == victim]
        fleet.kill(1)
        # Two failed calls in a row mark it dead; no exception escapes.
        assert cc.get(theirs[0]) is None and cc.get(theirs[1]) is None
        assert cc.node_states()[victim] == "dead"
        # Its keys are now owned by surviving nodes: writable and readable.
        assert all(cc.node_for(k) != victim for k in keys)
        assert cc.set(theirs[2], b"again", noreply=False)
        assert cc.get(theirs[2]) == b"again"
        # Keys of live nodes never moved.
        ours = [k for k in keys if k not in theirs]
        assert cc.get_many(ours) == {k: b"v" for k in ours}


@needs_memcached
def test_miss_policy_turns_dead_node_keys_into_misses(fleet):
    with ClusterClient(fleet.addresses, ignore_exc=True, failover="miss", failure_limit=1,
                       dead_timeout=60) as cc:
        victim = fleet.addresses[0]
        k = next(f"m{i}" for i in range(1000) if cc.node_for(f"m{i}") == victim)
        fleet.kill(0)
        assert cc.get(k) is None
        assert cc.node_states()[victim] == "dead"
        assert cc.node_for(k) == victim  # still owns it: no remap
        assert cc.set(k, b"v", noreply=False) is False
        assert cc.set_many({k: b"v"}, noreply=False) == [k]


@needs_memcached
def test_without_ignore_exc_a_dead_node_raises_then_is_routed_around(fleet):
    with ClusterClient(fleet.addresses, failure_limit=2, dead_timeout=60) as cc:
        victim = fleet.addresses[2]
        k = next(f"r{i}" for i in range(1000) if cc.node_for(f"r{i}") == victim)
        fleet.kill(2)
        for _ in range(2):
            with pytest.raises(OSError):
                cc.get(k)
        assert cc.get(k) is None  # remapped to a live node: a plain miss


@needs_memcached
def test_dead_node_rejoins_after_dead_timeout_when_healthy(fleet):
    with ClusterClient(fleet.addresses, ignore_exc=True, failure_limit=1, dead_timeout=0.2) as cc:
        victim = fleet.addresses[1]
        k = next(f"j{i}" for i in range(1000) if cc.node_for(f"j{i}") == victim)
        fleet.kill(1)
        cc.get(k)
        assert cc.node_states()[victim] == "dead"
        time.sleep(0.5)  # probes fail while it is down: stays dead
        assert cc.node_states()[victim] == "dead"
        fleet.restart(1)
        assert wait_for(lambda: cc.node_states()[victim] == "live", timeout=3)
        assert cc.node_for(k) == victim
        assert cc.set(k, b"back", noreply=False) and direct(victim).get(k) == b"back"


# --------------------------------------------------------------------------- discovery


@needs_memcached
def test_config_endpoint_membership_is_polled_and_applied(fleet, endpoint_factory):
    ep = endpoint_factory(fleet.addresses[:2])
    with ClusterClient(config_endpoint=ep.address, poll_interval=0.1) as cc:
        assert sorted(cc.servers) == sorted(fleet.addresses[:2])
        assert cc.config_version == ep.config.version
        ep.set_nodes(fleet.addresses)
        assert wait_for(lambda: sorted(cc.servers) == sorted(fleet.addresses), timeout=3)
        assert cc.config_version == ep.config.version
        assert cc.set("after-grow", b"1", noreply=False) and cc.get("after-grow") == b"1"


@needs_memcached
def test_polling_falls_back_to_members_when_endpoint_is_down(fleet, endpoint_factory):
    ep = endpoint_factory(fleet.addresses)
    with ClusterClient(config_endpoint=ep.address, poll_interval=0.05, ignore_exc=True) as cc:
        ep.close()
        time.sleep(0.3)  # polls fail (members are memcached: no config); keep nodes
        assert sorted(cc.servers) == sorted(fleet.addresses)
        assert cc.set("still", b"ok", noreply=False)


def test_dns_name_records_become_members(monkeypatch):
    records = [["10.0.0.1", "10.0.0.2"]]

    def fake_getaddrinfo(name, port, *a, **kw):
        assert name == "memd.fleet.local"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port)) for ip in records[0] * 2]

    monkeypatch.setattr(discovery.socket, "getaddrinfo", fake_getaddrinfo)
    assert discovery.resolve_dns("memd.fleet.local", 11211) == ["10.0.0.1:11211", "10.0.0.2:11211"]
    with ClusterClient(dns_name="memd.fleet.local", poll_interval=0.05) as cc:
        assert cc.servers == ["10.0.0.1:11211", "10.0.0.2:11211"]
        records[0] = ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
        assert wait_for(lambda: len(cc.servers) == 3, timeout=2)


def test_exactly_one_membership_source_is_required():
    with pytest.raises(ValueError):
        ClusterClient()
    with pytest.raises(ValueError):
        ClusterClient(["127.0.0.2:1"], dns_name="x")


def test_close_stops_the_background_thread():
    cc = ClusterClient(["127.0.0.2:1"])
    assert cc._thread.is_alive()
    cc.close()
    assert not cc._thread.is_alive()


# --------------------------------------------------------------------------- other clients


def test_elasticache_auto_discovery_package_reads_our_config(endpoint_factory):
    ead = pytest.importorskip("elasticache_auto_discovery",
                              reason="pip install elasticache-auto-discovery")
    ep = endpoint_factory(["127.0.0.2:11211", "cache-b|10.1.2.3|11212"])
    assert ead.discover(ep.address, time_to_timeout=2) == [
        [b"127.0.0.2", b"127.0.0.2", b"11211"], [b"cache-b", b"10.1.2.3", b"11212"]]


@needs_memcached
def test_elasticache_pyclient_discovers_and_uses_the_fleet(fleet, endpoint_factory):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # telnetlib, distutils
        ecp = pytest.importorskip("elasticache_pyclient", reason="pip install elasticache-pyclient")
    ep = endpoint_factory(fleet.addresses)
    mc = ecp.MemcacheClient(ep.address, ad_timeout=2, ad_interval=60)
    try:
        assert mc.cluster_size() == 3
        assert mc.set("from-elasticache-pyclient", "v")
        assert mc.get("from-elasticache-pyclient") == "v"
    finally:
        mc.stop_timer()


def _memcached_at(host, port):
    proc = subprocess.Popen(["memcached", "-U", "0", "-l", host, "-p", str(port), "-m", "16", "-u", "root"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert wait_for(lambda: ping(host, port) or proc.poll() is not None, timeout=20) and proc.poll() is None
    return proc


@needs_memcached
@pytest.mark.parametrize("ring", ["xxhash", "ketama"])
def test_a_node_whose_address_changes_keeps_its_keys_and_gets_the_new_address(endpoint_factory, ring):
    hosts = ["127.0.0.41", "127.0.0.42", "127.0.0.43", "127.0.0.44"]
    port = free_port(hosts)
    announced = [f"n1|{hosts[0]}|{port}", f"n2|{hosts[2]}|{port}", f"n3|{hosts[3]}|{port}"]
    procs = [_memcached_at(h, port) for h in (hosts[0], hosts[2], hosts[3])]
    ep = endpoint_factory(announced)
    try:
        with ClusterClient(config_endpoint=ep.address, ring=ring, poll_interval=0.1) as cc:
            names = [f"n{i}:{port}" for i in (1, 2, 3)]
            assert sorted(cc.servers) == names
            # twemproxy hashes the same names the client's ketama ring does.
            config = twemproxy.render_config(parse_node_list(",".join(announced)))
            assert sorted(line.split()[-1] for line in config.splitlines() if line.startswith("   - ")) \
                == sorted(ketama_label(n) for n in names)
            keys = [f"m{i}" for i in range(300)]
            before = {k: cc.node_for(k) for k in keys}
            assert set(before.values()) == set(names)
            on_n1 = [k for k in keys if before[k] == names[0]]
            assert cc.set_many({k: b"old" for k in on_n1}) == []
            assert direct(f"{hosts[0]}:{port}").get(on_n1[0]) == b"old"

            # n1 comes back at another address (a restarted container).
            procs.append(_memcached_at(hosts[1], port))
            ep.set_nodes([f"n1|{hosts[1]}|{port}", *announced[1:]])
            assert wait_for(lambda: cc._addresses[names[0]] == f"{hosts[1]}:{port}", timeout=20)
            procs[0].kill()
            assert {k: cc.node_for(k) for k in keys} == before
            assert sorted(cc.servers) == names
            assert cc.set(on_n1[0], b"new")
            assert direct(f"{hosts[1]}:{port}").get(on_n1[0]) == b"new"
            assert cc.get(on_n1[0]) == b"new"
            assert cc.node_states()[names[0]] == "live"
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(10)
