"""The cluster client's staleness policy: faults, replicas, warm-up, rolling restarts.

Local fleets on 127.0.0.x (tools/fleet.py): memcached processes where any
node will do (they start in milliseconds), memd where snapshots matter.
Every value a load reads is checked against what was acknowledged before
the read (tools/fleetload.py).
"""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from memd.cluster.client import NODE_ERRORS, ClusterClient
from tools import faults
from tools.fleet import LocalFleet, free_port, memd_available, rolling_restart
from tools.fleetload import Load

from test_cluster_client import direct, fleet, wait_for  # noqa: E402,F401  (tests/ is on sys.path)

needs_memcached = pytest.mark.skipif(
    shutil.which("memcached") is None, reason="memcached binary not installed (apt-get install memcached)")


def key_on(cc, node, prefix="k"):
    return next(f"{prefix}{i}" for i in range(10_000) if cc.node_for(f"{prefix}{i}") == node)


def mark_dead(cc, node, key):
    """Fail reads of ``key`` until the client has marked ``node`` dead."""
    assert wait_for(lambda: _try_get(cc, key) or cc.node_states()[node] == "dead", timeout=10)


def _try_get(cc, key):
    try:
        cc.get(key)
    except NODE_ERRORS:
        pass
    return False


# --------------------------------------------------------------------------- one client, faults


@needs_memcached
def test_hung_node_back_does_not_serve_values_overwritten_or_deleted_meanwhile(fleet):
    with ClusterClient(fleet.addresses, dead_timeout=0.3, timeout=0.3) as cc:
        victim = fleet.addresses[1]
        keys = [f"h{i}" for i in range(2000) if cc.node_for(f"h{i}") == victim][:3]
        for k in keys:
            assert cc.set(k, b"old")
        os.kill(fleet.nodes[1].proc.pid, signal.SIGSTOP)
        try:
            mark_dead(cc, victim, keys[0])
            assert cc.set(keys[0], b"new")       # to a stand-in
            assert cc.delete(keys[1]) is False   # nothing there to delete on the stand-in
            assert cc.get(keys[2]) is None       # a stand-in never serves what it was not given
        finally:
            os.kill(fleet.nodes[1].proc.pid, signal.SIGCONT)
        assert wait_for(lambda: cc.node_states()[victim] == "live")
        # The node still holds "old" for all three; none of it is served.
        assert cc.get(keys[0]) == b"new"
        assert cc.get(keys[1]) is None
        assert cc.get(keys[2]) == b"old"           # not written meanwhile: still good
        assert wait_for(lambda: cc.journal_sizes() == {"suspect": 0, "held": 0, "overflowed": 0})
        # Settled: the fresh value copied home, the delete applied, the stand-in cleaned.
        node = direct(victim)
        assert node.get(keys[0]) == b"new" and node.get(keys[1]) is None
        assert all(direct(a).get(keys[0]) is None for a in fleet.addresses if a != victim)


@needs_memcached
def test_stand_in_ignores_an_orphan_copy_it_was_not_given(fleet):
    with ClusterClient(fleet.addresses, dead_timeout=60, timeout=0.3, failure_limit=1) as cc:
        victim = fleet.addresses[0]
        k = key_on(cc, victim, "o")
        assert cc.set(k, b"current")
        stand_in = cc._view.ring.get_nodes(k)[1]
        direct(stand_in).set(k, b"orphan from an earlier outage")
        fleet.kill(0)
        with pytest.raises(NODE_ERRORS):
            cc.get(k)
        assert cc.node_for(k) == stand_in
        assert cc.get(k) is None
        assert cc.set(k, b"written during the outage") and cc.get(k) == b"written during the outage"


@needs_memcached
def test_miss_policy_invalidates_an_owner_it_could_not_delete_from(fleet):
    with ClusterClient(fleet.addresses, failover="miss", dead_timeout=0.3, timeout=0.3) as cc:
        victim = fleet.addresses[2]
        k = key_on(cc, victim, "m")
        assert cc.set(k, b"v")
        os.kill(fleet.nodes[2].proc.pid, signal.SIGSTOP)
        try:
            mark_dead(cc, victim, k)
            assert cc.delete(k) is False
        finally:
            os.kill(fleet.nodes[2].proc.pid, signal.SIGCONT)
        assert wait_for(lambda: cc.node_states()[victim] == "live")
        assert cc.get(k) is None


@needs_memcached
def test_a_journal_that_overflows_flushes_the_returning_node(fleet):
    with ClusterClient(fleet.addresses, dead_timeout=0.3, timeout=0.3, journal_limit=2) as cc:
        victim = fleet.addresses[1]
        keys = [f"j{i}" for i in range(3000) if cc.node_for(f"j{i}") == victim][:4]
        untouched = keys.pop()
        for k in keys + [untouched]:
            assert cc.set(k, b"old")
        os.kill(fleet.nodes[1].proc.pid, signal.SIGSTOP)
        try:
            mark_dead(cc, victim, keys[0])
            for k in keys:
                assert cc.set(k, b"new")
            assert cc.journal_sizes()["overflowed"] == 1
        finally:
            os.kill(fleet.nodes[1].proc.pid, signal.SIGCONT)
        assert wait_for(lambda: cc.node_states()[victim] == "live")
        assert direct(victim).get(untouched) is None   # flushed before it served again
        assert all(cc.get(k) in (b"new", None) for k in keys)


@needs_memcached
def test_fault_sequence_default_client_is_never_stale_and_misses_less_than_failover_miss():
    runs = {}
    for name in ("memd (default)", "memd failover=miss"):
        runs[name] = faults.run_one(
            faults.CLIENTS[name], backend="memcached", scale=0.4, dead_timeout=0.5,
            hang=2.0, flap=3.0, flap_period=1.0, settle=1.5, keys=200, threads=3)
    default = runs["memd (default)"]
    for phase, c in default.items():
        assert c.stale == 0 and c.bad == 0, (phase, c)
        assert c.reads > 0, phase
    assert set(default) >= {"node killed", "killed node restarted", "node hung 2 s",
                            "hung node resumed", "node flapping", "all up"}
    assert all(c.stale == 0 for c in runs["memd failover=miss"].values())
    assert faults.total(default).misses < faults.total(runs["memd failover=miss"]).misses


# --------------------------------------------------------------------------- replicas


def _model_step(rng, cc, model, cas_tokens, keys):
    k = rng.choice(keys)
    op = rng.choice(["set", "add", "replace", "append", "prepend", "cas", "incr", "decr",
                     "delete", "touch", "get", "gets", "get_many"])
    if op == "set":
        v = str(rng.randrange(100)).encode()
        assert cc.set(k, v) is True
        model[k] = v
    elif op == "add":
        v = b"7"
        assert cc.add(k, v) is (k not in model)
        model.setdefault(k, v)
    elif op == "replace":
        assert cc.replace(k, b"5") is (k in model)
        if k in model:
            model[k] = b"5"
    elif op in ("append", "prepend"):
        assert getattr(cc, op)(k, b"1") is (k in model)
        if k in model:
            model[k] = model[k] + b"1" if op == "append" else b"1" + model[k]
    elif op == "cas":
        token = cas_tokens.get(k)
        if token is None:
            return
        ok = cc.cas(k, b"9", token)
        # A token from an earlier value (or none at all) never overwrites.
        if ok:
            model[k] = b"9"
        cas_tokens.pop(k)
    elif op in ("incr", "decr"):
        got = getattr(cc, op)(k, 3)
        if k not in model:
            assert got is None
        else:
            n = int(model[k])
            n = n + 3 if op == "incr" else max(0, n - 3)
            assert got == n
            # memcached rewrites a counter in place when it fits, padding
            # with spaces ("12" decr 3 is stored as "9 "); replicas copy that.
            model[k] = str(n).encode().ljust(len(model[k]))
    elif op == "delete":
        assert cc.delete(k) is (k in model)
        model.pop(k, None)
    elif op == "touch":
        assert cc.touch(k, 0) is (k in model)
    elif op == "get":
        assert cc.get(k) == model.get(k)
    elif op == "gets":
        value, token = cc.gets(k)
        assert value == model.get(k)
        if token is not None:
            cas_tokens[k] = token
    else:
        some = rng.sample(keys, 5)
        assert cc.get_many(some) == {s: model[s] for s in some if s in model}
    if op not in ("get", "gets", "get_many", "cas"):
        cas_tokens.pop(k, None)


@needs_memcached
def test_two_replicas_match_a_dict_model_and_live_on_the_next_two_ring_nodes(fleet):
    rng = random.Random(15)
    keys = [f"r{i}" for i in range(40)]
    model, tokens = {}, {}
    with ClusterClient(fleet.addresses, replicas=2) as cc:
        for _ in range(1500):
            _model_step(rng, cc, model, tokens, keys)
        nodes = {a: direct(a) for a in fleet.addresses}
        for k in keys:
            owners = cc.nodes_for(k)
            assert owners == cc._view.ring.get_nodes(k, 2) and len(set(owners)) == 2
            for a, client in nodes.items():
                assert client.get(k) == (model.get(k) if a in owners else None), (k, a)


@needs_memcached
def test_two_replicas_keep_matching_the_model_with_one_node_killed(fleet):
    rng = random.Random(16)
    keys = [f"q{i}" for i in range(40)]
    model, tokens = {}, {}
    with ClusterClient(fleet.addresses, replicas=2, dead_timeout=60, timeout=0.5) as cc:
        for _ in range(300):
            _model_step(rng, cc, model, tokens, keys)
        fleet.kill(1)
        for _ in range(800):
            _model_step(rng, cc, model, tokens, keys)
        assert cc.node_states()[fleet.addresses[1]] == "dead"


@needs_memcached
def test_two_replicas_lose_no_key_when_one_of_three_nodes_dies_under_load(fleet):
    with ClusterClient(fleet.addresses, replicas=2, timeout=0.5) as cc:
        load = Load(cc, keys=600, threads=3)
        load.populate()
        before = set(load.keys_acked_present())
        counts = load.run_phases([("steady", 0.5, None), ("killed", 2.0, lambda: fleet.kill(2))])
        for phase, c in counts.items():
            assert c.misses == 0 and c.stale == 0 and c.errors == 0, (phase, c)
        got = cc.get_many(sorted(before))
        missing = [k for k in before if k not in got and not load.acked[k][1]]
        assert missing == []


# --------------------------------------------------------------------------- warm-up


def _grow(fleet, cc):
    fleet.add_node()
    cc.set_servers(fleet.addresses)


@needs_memcached
@pytest.mark.parametrize("warmup", [60.0, 0.0])
def test_growing_three_to_four_nodes_keeps_every_key_only_with_warm_up(fleet, warmup):
    with ClusterClient(fleet.addresses, warmup=warmup) as cc:
        load = Load(cc, keys=800, threads=2, writes=False)
        load.populate()
        counts = load.run_phases([("before", 0.3, None), ("grown", 1.5, lambda: _grow(fleet, cc))])
        moved = [k for k in load.names if cc.node_for(k) == fleet.addresses[3]]
        assert 0.1 < len(moved) / len(load.names) < 0.4
        assert all(c.stale == 0 for c in counts.values())
        if warmup:
            assert counts["grown"].misses == 0
            assert counts["grown"].hits == counts["grown"].reads
            # Warm-up copied what was read; every moved key reads back.
            assert set(cc.get_many(moved)) == set(moved)
        else:
            assert counts["grown"].misses > 0
            assert cc.get_many(moved) == {}


@needs_memcached
def test_writes_and_deletes_in_the_window_reach_the_previous_owner(fleet, monkeypatch):
    from memd.cluster import client as client_module

    # Hold the sweep back: it moves keys off their previous owners, which
    # would race the direct reads of the previous owner below.
    listed, release = client_module.metadump_keys, threading.Event()

    def held(*args):
        release.wait(60)
        return listed(*args)

    monkeypatch.setattr(client_module, "metadump_keys", held)
    with ClusterClient(fleet.addresses, warmup=60) as cc:
        keys = [f"w{i}" for i in range(400)]
        assert cc.set_many({k: b"old" for k in keys}) == []
        before = {k: cc.node_for(k) for k in keys}
        _grow(fleet, cc)
        moved = [k for k in keys if cc.node_for(k) == fleet.addresses[3]]
        deleted, rewritten = moved[0], moved[1]
        assert cc.delete(deleted) is True
        assert cc.set(rewritten, b"new")
        prev = direct(before[deleted])
        assert prev.get(deleted) is None                      # warm-up cannot bring it back
        assert direct(before[rewritten]).get(rewritten) == b"new"
        assert cc.get(deleted) is None and cc.get(rewritten) == b"new"
        assert cc.get(moved[2]) == b"old"                     # copied on the miss
        assert direct(fleet.addresses[3]).get(moved[2]) == b"old"
        release.set()


@needs_memcached
def test_after_the_window_the_previous_owners_copies_of_touched_keys_are_removed(fleet):
    with ClusterClient(fleet.addresses, warmup=0.5) as cc:
        keys = [f"x{i}" for i in range(300)]
        assert cc.set_many({k: b"v" for k in keys}) == []
        before = {k: cc.node_for(k) for k in keys}
        _grow(fleet, cc)
        moved = [k for k in keys if cc.node_for(k) == fleet.addresses[3]][:20]
        assert cc.get_many(moved) == {k: b"v" for k in moved}
        assert wait_for(lambda: cc.journal_sizes()["held"] == 0, timeout=10)
        assert all(direct(before[k]).get(k) is None for k in moved)
        assert cc.get_many(moved) == {k: b"v" for k in moved}


@needs_memcached
def test_the_sweep_moves_untouched_keys_so_removing_the_new_node_later_is_never_stale(fleet):
    with ClusterClient(fleet.addresses, warmup=0.2) as cc:
        keys = [f"u{i}" for i in range(600)]
        assert cc.set_many({k: b"old" for k in keys}) == []
        before = {k: cc.node_for(k) for k in keys}
        _grow(fleet, cc)  # nothing is read during the window
        newcomer = fleet.addresses[3]
        moved = [k for k in keys if cc.node_for(k) == newcomer]
        assert wait_for(lambda: cc._view.prev is None, timeout=20)
        assert cc.sweeps[-1]["finished"] and cc.sweeps[-1]["moved"] == len(moved)
        assert direct(newcomer).get_many(moved) == {k: b"old" for k in moved}
        assert all(direct(before[k]).get(k) is None for k in moved)
        for k in moved:  # written after the window: on the new node only
            assert cc.set(k, b"new")
        cc.set_servers(fleet.addresses[:3])  # the new node leaves again
        assert cc.get_many(moved) == {k: b"new" for k in moved}
        assert wait_for(lambda: cc._view.prev is None and cc.sweeps[-1]["finished"], timeout=20)
        assert cc.get_many(moved) == {k: b"new" for k in moved}


@needs_memcached
def test_a_refused_key_listing_is_retried_so_the_sweep_still_moves_every_key(fleet, monkeypatch):
    from memd.cluster import client as client_module
    from memd.cluster.migrate import MetadumpError

    listed = client_module.metadump_keys
    refused = set()

    def busy_once(address, *args):
        # memcached's answer while its LRU crawler is running.
        if address not in refused:
            refused.add(address)
            raise MetadumpError(f"{address}: b'BUSY currently processing crawler request'")
        return listed(address, *args)

    monkeypatch.setattr(client_module, "metadump_keys", busy_once)
    with ClusterClient(fleet.addresses, warmup=0.2) as cc:
        keys = [f"b{i}" for i in range(300)]
        assert cc.set_many({k: b"v" for k in keys}) == []
        before = {k: cc.node_for(k) for k in keys}
        _grow(fleet, cc)
        moved = [k for k in keys if cc.node_for(k) == fleet.addresses[3]]
        assert wait_for(lambda: cc._view.prev is None, timeout=60)
        assert refused == set(fleet.addresses[:3])
        assert cc.sweeps[-1] == {**cc.sweeps[-1], "finished": True, "nodes": 3, "moved": len(moved)}
        assert all(direct(before[k]).get(k) is None for k in moved)


@needs_memcached
def test_warm_up_never_reads_an_old_stand_in_of_a_dead_owner(fleet):
    from memd.cluster.ring import HashRing

    newcomer = f"{fleet._host(3)}:{fleet.port}"
    old_ring, new_ring = HashRing(fleet.addresses), HashRing(fleet.addresses + [newcomer])
    dead = fleet.addresses[0]
    k = next(f"s{i}" for i in range(20_000)
             if old_ring.get_node(f"s{i}") == dead and new_ring.get_node(f"s{i}") == newcomer)
    stand_in = old_ring.get_nodes(k)[1]
    with ClusterClient(fleet.addresses, warmup=60, failure_limit=1, dead_timeout=60,
                       timeout=0.3) as cc:
        fleet.kill(0)
        with pytest.raises(NODE_ERRORS):
            cc.get(k)
        direct(stand_in).set(k, b"orphan from an earlier outage")
        _grow(fleet, cc)
        assert cc.node_for(k) == newcomer
        assert cc.get(k) is None


# --------------------------------------------------------------------------- rolling restart


@pytest.mark.parametrize("replicas", [2, 1])
def test_rolling_restart_through_snapshots_is_never_stale(replicas):
    with LocalFleet(n=3, backend="memd", snapshot=True, extra_args=["-m", "16"]) as fleet:
        with ClusterClient(fleet.addresses, replicas=replicas, dead_timeout=0.3, timeout=0.5) as cc:
            load = Load(cc, keys=300, threads=2)
            load.populate()
            rolled = []
            counts = load.run_phases([
                ("steady", 0.3, None),
                ("rolling restart", 0.5,
                 lambda: rolled.append(rolling_restart(
                     fleet, wait=0.2, on_restarted=lambda i: wait_for(
                         lambda: cc.node_states()[fleet.addresses[i]] == "live"))))])
            assert len(rolled[0]) == 3
            for phase, c in counts.items():
                assert c.stale == 0 and c.bad == 0, (phase, c)
            if replicas == 2:
                assert counts["rolling restart"].errors == 0
                assert counts["rolling restart"].misses == 0
            # Every node came back warm from its snapshot.
            stats = cc.stats()
            assert all(s[b"curr_items"] > 0 for s in stats.values())


def test_fleet_cli_rolling_restart_brings_every_node_back_warm(tmp_path):
    if not memd_available():
        pytest.skip("memd is not importable")
    state = tmp_path / "state.json"
    base = [sys.executable, "-m", "tools.fleet", "--state", str(state)]
    hosts = [f"127.0.0.{i}" for i in (70, 71, 72)]
    port = free_port(hosts)
    root = Path(__file__).resolve().parent.parent
    run = lambda *a: subprocess.run(base + list(a), cwd=root, capture_output=True, text=True,  # noqa: E731
                                    timeout=120)
    up = run("up", "--port", str(port), "--first-host", "70", "--backend", "memd")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        before = json.loads(state.read_text())["nodes"]
        for n in before:
            assert direct(f"{n['host']}:{port}").set("kept", n["name"].encode(), noreply=False)
        rolled = run("rolling-restart", "--wait", "0")
        assert rolled.returncode == 0, rolled.stdout + rolled.stderr
        after = json.loads(state.read_text())["nodes"]
        assert all(a["pid"] != b["pid"] for a, b in zip(after, before))
        for n in after:
            assert direct(f"{n['host']}:{port}").get("kept") == n["name"].encode()
    finally:
        run("down", "--timeout", "10")


FAKE_ENGINE = """
import os, signal, subprocess, sys, time
args = sys.argv[1:]
state = os.environ["FAKE_ENGINE_DIR"]
assert args[0] == "-f"
verb, svc = args[2], args[-1]
with open(os.path.join(state, "calls"), "a") as f:
    f.write(" ".join(args[2:]) + "\\n")
pidfile = os.path.join(state, svc + ".pid")
if verb == "stop":
    pid = int(open(pidfile).read())
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10  # like compose stop: return once it is gone
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        assert time.monotonic() < deadline
        time.sleep(0.02)
    if os.path.exists(pidfile):  # memcached removes it itself on a clean exit
        os.unlink(pidfile)
else:
    port = open(os.path.join(state, svc + ".port")).read()
    subprocess.run(["memcached", "-d", "-P", pidfile, "-U", "0", "-l", "127.0.0.1", "-p", port,
                    "-u", "root", "-m", "8"], check=True)
    deadline = time.monotonic() + 10  # the daemon writes its pid file after forking
    while not (os.path.exists(pidfile) and open(pidfile).read().strip()):
        assert time.monotonic() < deadline
        time.sleep(0.02)
"""


@needs_memcached
def test_compose_rolling_restart_stops_and_starts_each_service_in_turn(tmp_path):
    ports = {"memd1": free_port(["127.0.0.1"]), "memd2": free_port(["127.0.0.1"])}
    compose = tmp_path / "compose.yml"
    compose.write_text("services:\n" + "".join(
        f"  {svc}:\n    image: memd\n    ports: [\"{port}:11211\"]\n" for svc, port in ports.items()))
    engine = tmp_path / "engine.py"
    engine.write_text(FAKE_ENGINE)
    env = dict(os.environ, FAKE_ENGINE_DIR=str(tmp_path))
    pids = {}
    try:
        for svc, port in ports.items():
            (tmp_path / f"{svc}.port").write_text(str(port))
            subprocess.run([sys.executable, str(engine), "-f", str(compose), "start", svc],
                           env=env, check=True)
            pids[svc] = (tmp_path / f"{svc}.pid").read_text()
        (tmp_path / "calls").unlink()
        root = Path(__file__).resolve().parent.parent
        done = subprocess.run(
            [sys.executable, "-m", "tools.fleet", "rolling-restart", "--compose", str(compose),
             "--engine", f"{sys.executable} {engine}", "--wait", "0", "--timeout", "5"],
            cwd=root, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        assert (tmp_path / "calls").read_text().splitlines() == [
            "stop -t 5 memd1", "start memd1", "stop -t 5 memd2", "start memd2"]
        for svc, port in ports.items():
            assert (tmp_path / f"{svc}.pid").read_text() not in ("", pids[svc])
            assert direct(f"127.0.0.1:{port}").set("k", b"v", noreply=False)
    finally:
        for svc in ports:
            pidfile = tmp_path / f"{svc}.pid"
            if pidfile.exists():
                try:
                    os.kill(int(pidfile.read_text()), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
