"""ClusterConfig: what a node answers to `config get cluster`.

Every resolver here is a stub: the tests decide what DNS says and when.
"""

import logging
import os
import socket
import threading

import pytest

from memd.cluster.config import (
    DNS_POLL_INTERVAL,
    ClusterConfig,
    NodeEntry,
    derive_version,
    parse_cluster_file,
    parse_node_spec,
    render_reply,
)
from memd.cluster.discovery import DiscoveryError, parse_config_reply

FAKE_DNS = {"memd1": "172.18.0.2", "memd2": "172.18.0.3", "memd3": "172.18.0.4"}


def fake_resolve(host):
    return FAKE_DNS.get(host, "")


def payload_of(reply: bytes) -> bytes:
    head, rest = reply.split(b"\r\n", 1)
    return rest[: int(head.split()[3])]


# --------------------------------------------------------------------------- the reply


def test_reply_matches_elasticache_format_byte_for_byte():
    cfg = ClusterConfig.from_options("memd1:11211,memd2:11211", None, resolve=fake_resolve)
    nodes = b"memd1||11211 memd2||11211"
    payload = b"%d\n%s\n" % (derive_version(cfg.nodes), nodes)
    assert cfg.reply(b"cluster") == b"CONFIG cluster 0 %d\r\n%s\r\nEND\r\n" % (len(payload), payload)


def test_length_field_counts_version_and_node_lines_with_their_newlines():
    reply = render_reply(12, [NodeEntry("h", "10.0.0.1", 11211)])
    head, rest = reply.split(b"\r\n", 1)
    n = int(head.split()[3])
    assert rest[:n] == b"12\nh|10.0.0.1|11211\n"
    assert rest[n:] == b"\r\nEND\r\n"


def test_unknown_config_key_gets_error():
    cfg = ClusterConfig.from_options("memd1", None)
    assert cfg.reply(b"other") == b"ERROR\r\n"


def test_no_cluster_options_means_no_config():
    assert ClusterConfig.from_options(None, None) is None
    assert ClusterConfig.from_options("", None) is None


@pytest.mark.parametrize("nodes, path, dns", [("a:1", "/tmp/x", None), ("a:1", None, "memd"),
                                               (None, "/tmp/x", "memd")])
def test_more_than_one_membership_source_is_rejected(nodes, path, dns):
    with pytest.raises(ValueError):
        ClusterConfig.from_options(nodes, path, dns)


# --------------------------------------------------------------------------- convergence


def test_the_same_membership_gives_the_same_bytes_whatever_the_order_or_the_dns_view():
    # Three nodes started at different moments: one sees every name, one sees
    # none yet, one was given the list in another order. Nodes do not talk to
    # each other, so the only way to agree is to answer from the list alone.
    views = [fake_resolve, lambda host: "", lambda host: "10.99.0.1"]
    orders = ["memd1:11211,memd2:11211,memd3:11211", "memd3,memd1,memd2", "memd2 memd3 memd1:11211"]
    replies = set()
    for resolve, order in zip(views, orders):
        cfg = ClusterConfig.from_options(order, None, resolve=resolve)
        cfg.poll()
        replies.add(cfg.reply(b"cluster"))
    assert len(replies) == 1
    assert payload_of(replies.pop()).split(b"\n")[1] == b"memd1||11211 memd2||11211 memd3||11211"


def test_version_is_derived_from_the_membership_not_counted(tmp_path):
    f = tmp_path / "cluster"
    _write(f, "memd1\nmemd2\n")
    by_file = ClusterConfig.from_options(None, str(f))
    _write(f, "memd1\nmemd2\nmemd3\n")
    by_file.poll()
    _write(f, "memd2\nmemd1\n")
    by_file.poll()
    # Two changes later the file node announces what a node started with the
    # final list announces: no per-node counter remembers the history.
    fresh = ClusterConfig.from_options("memd1,memd2", None)
    assert by_file.reply(b"cluster") == fresh.reply(b"cluster")
    assert derive_version(fresh.nodes) != derive_version(ClusterConfig.from_options("memd1,memd3", None).nodes)
    assert 0 < derive_version(fresh.nodes) < 2**31


def test_a_version_line_in_the_cluster_file_is_the_announced_version(tmp_path):
    f = tmp_path / "cluster"
    _write(f, "version 41\nmemd1\n")
    cfg = ClusterConfig.from_options(None, str(f))
    assert parse_config_reply(cfg.reply(b"cluster")).version == 41
    _write(f, "version 42\nmemd1\nmemd2\n")
    cfg.poll()
    assert parse_config_reply(cfg.reply(b"cluster")).version == 42


@pytest.mark.parametrize(
    "spec, entry",
    [
        ("memd1:11211", NodeEntry("memd1", "", 11211)),
        ("memd2", NodeEntry("memd2", "", 11211)),
        ("memd-0.memd.default.svc.cluster.local.", NodeEntry("memd-0.memd.default.svc.cluster.local", "", 11211)),
        ("cache.example|10.9.8.7|11300", NodeEntry("cache.example", "10.9.8.7", 11300)),
        ("memd3||11211", NodeEntry("memd3", "", 11211)),
        ("127.0.0.9:2000", NodeEntry("127.0.0.9", "127.0.0.9", 2000)),
        ("[::1]:2000", NodeEntry("::1", "::1", 2000)),
        ("nowhere:1", NodeEntry("nowhere", "", 1)),
    ],
)
def test_node_specs_announce_names_with_an_empty_ip_and_literals_as_themselves(spec, entry):
    assert parse_node_spec(spec) == entry


@pytest.mark.parametrize("bad", ["host:notaport", "host:0", "host:70000", "a|b", "|1.2.3.4|1",
                                 ":11211", "foo:bar:baz", "a|not-an-ip|1", "bad_host!", "-x:1",
                                 "[notv6]:1"])
def test_bad_node_specs_are_rejected(bad):
    with pytest.raises(ValueError):
        parse_node_spec(bad)


def test_cluster_file_allows_comments_blank_lines_and_every_form():
    text = "# the fleet\nmemd2|10.0.0.2|11212  # second\n\n  memd1:11211\n"
    assert parse_cluster_file(text) == (
        [NodeEntry("memd1", "", 11211), NodeEntry("memd2", "10.0.0.2", 11212)], None)


@pytest.mark.parametrize("text, lineno", [
    ("a:1\nb:x\n", 2),
    ("memd1\n# ok\ngarbage line here\n", 3),
    ("memd1\nfoo:bar:baz\n", 2),
    ("version 1\nversion 2\n", 2),
])
def test_file_errors_name_the_file_and_line(text, lineno):
    with pytest.raises(ValueError, match=f"^/etc/cluster line {lineno}: "):
        parse_cluster_file(text, "/etc/cluster")


def _write(path, text):
    # Bump mtime explicitly: two writes within one timestamp tick must
    # still be seen as a change (the inode/size also differ usually).
    path.write_text(text)
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))


def test_bad_lines_are_refused_with_a_log_line_keeping_the_last_good_membership(tmp_path, caplog):
    f = tmp_path / "cluster"
    _write(f, "memd1:11211\nmemd2:11211\n")
    cfg = ClusterConfig.from_options(None, str(f))
    before = cfg.reply(b"cluster")
    _write(f, "memd1:11211\nmemd2:11211\ngarbage line here\nfoo:bar:baz\n")
    with caplog.at_level(logging.ERROR, logger="memd.cluster.config"):
        cfg.poll()
        cfg.poll()  # reported once per change of the file, not every second
    assert cfg.reply(b"cluster") == before
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert f"cluster file {f} line 3" in errors[0] and "keeping the last good membership" in errors[0]
    f.unlink()
    cfg.poll()
    assert cfg.reply(b"cluster") == before
    _write(f, "memd1:11211\nmemd2:11211\nmemd3:11211\n")
    cfg.poll()
    assert [n.host for n in parse_config_reply(cfg.reply(b"cluster")).nodes] == ["memd1", "memd2", "memd3"]


def test_comment_only_edit_does_not_change_the_reply(tmp_path):
    f = tmp_path / "cluster"
    _write(f, "memd1:11211\n")
    cfg = ClusterConfig.from_options(None, str(f))
    before = cfg.reply(b"cluster")
    _write(f, "# edited\nmemd1:11211\n")
    cfg.poll()
    assert cfg.reply(b"cluster") == before


def test_missing_or_bad_file_at_start_is_an_error(tmp_path):
    with pytest.raises(OSError):
        ClusterConfig.from_options(None, str(tmp_path / "absent"))
    (tmp_path / "bad").write_text("a b c\n")
    with pytest.raises(ValueError, match="line 1"):
        ClusterConfig.from_options(None, str(tmp_path / "bad"))


# --------------------------------------------------------------------------- names that do not resolve


def test_a_name_that_does_not_resolve_stays_a_member_and_is_logged(caplog):
    dns = {"memd1": "10.0.0.1"}
    cfg = ClusterConfig.from_options("memd1,memd2", None, resolve=lambda h: dns.get(h, ""))
    before = cfg.reply(b"cluster")
    with caplog.at_level(logging.INFO, logger="memd.cluster.config"):
        cfg.check_names()
        cfg.check_names()
        assert cfg.unresolved == {"memd2"}
        dns["memd2"] = "10.0.0.2"          # the container came up
        cfg.check_names()
        dns["memd1"] = "10.0.0.9"          # memd1 restarted with a new address
        cfg.check_names()
        del dns["memd1"]                   # ... and then vanished from DNS
        cfg.check_names()
    assert cfg.reply(b"cluster") == before   # membership never changed
    messages = [r.getMessage() for r in caplog.records]
    assert sum("memd2 does not resolve" in m for m in messages) == 1
    assert any("memd2 resolves again (10.0.0.2)" in m for m in messages)
    assert any("memd1 moved: 10.0.0.1 -> 10.0.0.9" in m for m in messages)
    assert any("memd1 does not resolve" in m for m in messages)
    assert cfg.unresolved == {"memd1"}


def test_ip_literals_and_given_ips_are_never_looked_up():
    calls = []
    cfg = ClusterConfig.from_options("127.0.0.2:1,h|10.0.0.1|2,name:3", None,
                                     resolve=lambda h: calls.append(h) or "")
    cfg.check_names()
    assert calls == ["name"]


# --------------------------------------------------------------------------- DNS membership (Kubernetes)


def stub_srv(records):
    def lookup(name):
        value = records[name]
        if isinstance(value, Exception):
            raise value
        return value
    return lookup


def test_dns_membership_announces_the_srv_targets_by_their_stable_names(caplog):
    pods = [(f"memd-{i}.memd.cache.svc.cluster.local", 11211) for i in (2, 0, 1)]
    records = {"memd": pods}
    now = [0.0]
    cfg = ClusterConfig.from_options(None, None, "memd", resolve=lambda h: "",
                                     srv_lookup=stub_srv(records), clock=lambda: now[0])
    cfg.poll()
    info = parse_config_reply(cfg.reply(b"cluster"))
    assert [n.name for n in info.nodes] == [f"memd-{i}.memd.cache.svc.cluster.local:11211" for i in range(3)]
    assert all(n.ip == "" for n in info.nodes)
    # Every other node of the StatefulSet, polling the same DNS, agrees.
    other = ClusterConfig.from_options(None, None, "memd", srv_lookup=stub_srv({"memd": pods[::-1]}))
    other.poll()
    assert other.reply(b"cluster") == cfg.reply(b"cluster")
    # DNS failing keeps the last membership; a scale-up is picked up.
    before = cfg.reply(b"cluster")
    records["memd"] = OSError("SRV lookup timed out")
    now[0] += DNS_POLL_INTERVAL
    with caplog.at_level(logging.ERROR, logger="memd.cluster.config"):
        cfg.poll()
    assert cfg.reply(b"cluster") == before
    assert "keeping the last good membership" in caplog.text
    records["memd"] = pods + [("memd-3.memd.cache.svc.cluster.local", 11211)]
    cfg.poll()
    assert len(parse_config_reply(cfg.reply(b"cluster")).nodes) == 3   # not looked up again yet
    now[0] += DNS_POLL_INTERVAL
    cfg.poll()
    assert len(parse_config_reply(cfg.reply(b"cluster")).nodes) == 4


# --------------------------------------------------------------------------- the event loop


def test_a_slow_resolver_does_not_stall_clients():
    trio = pytest.importorskip("trio")
    from memd.node import Node, NodeSettings
    from memd.server import Server

    resolving, release = threading.Event(), threading.Event()

    def stuck(host):
        resolving.set()
        release.wait(30)
        return ""

    node = Node(NodeSettings(port=0, listen=["127.0.0.1"]))
    node.cluster = ClusterConfig.from_options("memd1,memd2", None, resolve=stuck)
    server = Server(node)

    def client(host, port):
        assert resolving.wait(10)           # the poll is now blocked inside the resolver
        with socket.create_connection((host, port), timeout=5) as sock:
            sock.sendall(b"set k 0 0 1\r\nx\r\nget k\r\nconfig get cluster\r\n")
            buf = b""
            while buf.count(b"END\r\n") < 2:   # the get's END, then the config's
                chunk = sock.recv(4096)
                assert chunk, buf
                buf += chunk
        return buf

    async def main():
        # The server's signal handlers need the main thread: the client is
        # the one in a worker thread.
        async with trio.open_nursery() as nursery:
            host, port = (await nursery.start(server.serve))[0]
            try:
                return await trio.to_thread.run_sync(client, host, port)
            finally:
                release.set()
                node.shutdown_requested = True

    buf = trio.run(main)
    assert buf.startswith(b"STORED\r\nVALUE k 0 1\r\nx\r\nEND\r\nCONFIG cluster 0 ")
    assert buf.endswith(node.cluster.reply(b"cluster"))


# --------------------------------------------------------------------------- parsing back


def test_reply_parses_back_with_our_discovery_parser():
    cfg = ClusterConfig.from_options("memd1,memd2,127.0.0.4:2000", None)
    info = parse_config_reply(cfg.reply(b"cluster"))
    assert info.addresses == ["127.0.0.4:2000", "memd1:11211", "memd2:11211"]
    assert [n.name for n in info.nodes] == ["127.0.0.4:2000", "memd1:11211", "memd2:11211"]


@pytest.mark.parametrize("bad", [
    b"ERROR\r\n",
    b"CONFIG cluster 0 99\r\n1\na|b|1\n\r\nEND\r\n",
    b"CONFIG cluster 0 8\r\nx\na|b|1\n\r\nEND\r\n",
    b"CONFIG cluster 0 7\r\n1\na|b|\n\r\nEND\r\n",
])
def test_discovery_parser_rejects_malformed_replies(bad):
    with pytest.raises(DiscoveryError):
        parse_config_reply(bad)
