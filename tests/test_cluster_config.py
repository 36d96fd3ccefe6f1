"""ClusterConfig: what a node answers to `config get cluster`."""

import os

import pytest

from memd.cluster.config import (
    ClusterConfig,
    NodeEntry,
    parse_cluster_file,
    parse_node_spec,
    render_reply,
)
from memd.cluster.discovery import DiscoveryError, parse_config_reply

FAKE_DNS = {"memd1": "172.18.0.2", "memd2": "172.18.0.3", "memd3": "172.18.0.4"}


def fake_resolve(host):
    return FAKE_DNS.get(host, "")


def test_reply_matches_elasticache_format_byte_for_byte():
    cfg = ClusterConfig.from_options("memd1:11211,memd2:11211", None, resolve=fake_resolve)
    payload = b"1\nmemd1|172.18.0.2|11211 memd2|172.18.0.3|11211\n"
    assert cfg.reply(b"cluster") == b"CONFIG cluster 0 %d\r\n%s\r\nEND\r\n" % (len(payload), payload)


def test_length_field_counts_version_and_node_lines_with_their_newlines():
    reply = render_reply(12, [NodeEntry("h", "10.0.0.1", 11211)])
    head, rest = reply.split(b"\r\n", 1)
    n = int(head.split()[3])
    assert rest[:n] == b"12\nh|10.0.0.1|11211\n"
    assert rest[n:] == b"\r\nEND\r\n"


def test_unknown_config_key_gets_error():
    cfg = ClusterConfig.from_options("memd1", None, resolve=fake_resolve)
    assert cfg.reply(b"other") == b"ERROR\r\n"


def test_no_cluster_options_means_no_config():
    assert ClusterConfig.from_options(None, None) is None
    assert ClusterConfig.from_options("", None) is None


def test_both_options_are_rejected():
    with pytest.raises(ValueError):
        ClusterConfig.from_options("a:1", "/tmp/x")


@pytest.mark.parametrize(
    "spec, entry",
    [
        ("memd1:11211", NodeEntry("memd1", "172.18.0.2", 11211)),
        ("memd2", NodeEntry("memd2", "172.18.0.3", 11211)),
        ("cache.example|10.9.8.7|11300", NodeEntry("cache.example", "10.9.8.7", 11300)),
        ("memd3||11211", NodeEntry("memd3", "172.18.0.4", 11211)),
        ("127.0.0.9:2000", NodeEntry("127.0.0.9", "127.0.0.9", 2000)),
        ("nowhere:1", NodeEntry("nowhere", "nowhere", 1)),  # unresolvable: host string
    ],
)
def test_node_specs(spec, entry):
    assert parse_node_spec(spec, fake_resolve) == entry


@pytest.mark.parametrize("bad", ["host:notaport", "host:0", "host:70000", "a|b", "|1.2.3.4|1", ":11211"])
def test_bad_node_specs_are_rejected(bad):
    with pytest.raises(ValueError):
        parse_node_spec(bad, fake_resolve)


def test_real_resolution_of_ip_literals_needs_no_dns():
    assert parse_node_spec("127.0.0.3:11211").ip == "127.0.0.3"


def test_cluster_file_allows_comments_blank_lines_and_both_forms():
    text = "# the fleet\nmemd1:11211\n\n  memd2|10.0.0.2|11212  # second\n"
    assert parse_cluster_file(text, fake_resolve) == [
        NodeEntry("memd1", "172.18.0.2", 11211),
        NodeEntry("memd2", "10.0.0.2", 11212),
    ]


def test_file_errors_name_the_line():
    with pytest.raises(ValueError, match="line 2"):
        parse_cluster_file("a:1\nb:x\n", fake_resolve)


def _write(path, text):
    # Bump mtime explicitly: two writes within one timestamp tick must
    # still be seen as a change (the inode/size also differ usually).
    path.write_text(text)
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))


def test_file_membership_change_bumps_version_by_one(tmp_path):
    f = tmp_path / "cluster"
    _write(f, "memd1:11211\nmemd2:11211\n")
    cfg = ClusterConfig.from_options(None, str(f), resolve=fake_resolve)
    assert parse_config_reply(cfg.reply(b"cluster")).version == 1
    cfg.refresh()
    assert cfg.version == 1  # unchanged file
    _write(f, "memd1:11211\nmemd2:11211\nmemd3:11211\n")
    cfg.refresh()
    info = parse_config_reply(cfg.reply(b"cluster"))
    assert info.version == 2
    assert [n.host for n in info.nodes] == ["memd1", "memd2", "memd3"]
    _write(f, "memd1:11211\nmemd3:11211\n")
    cfg.refresh()
    assert cfg.version == 3


def test_comment_only_edit_does_not_bump_version(tmp_path):
    f = tmp_path / "cluster"
    _write(f, "memd1:11211\n")
    cfg = ClusterConfig.from_options(None, str(f), resolve=fake_resolve)
    _write(f, "# edited\nmemd1:11211\n")
    cfg.refresh()
    assert cfg.version == 1


def test_missing_or_broken_file_keeps_last_good_membership(tmp_path):
    f = tmp_path / "cluster"
    _write(f, "memd1:11211\n")
    cfg = ClusterConfig.from_options(None, str(f), resolve=fake_resolve)
    before = cfg.reply(b"cluster")
    _write(f, "memd1:bad\n")
    cfg.refresh()
    assert cfg.reply(b"cluster") == before
    f.unlink()
    cfg.refresh()
    assert cfg.reply(b"cluster") == before


def test_missing_file_at_start_is_an_error(tmp_path):
    with pytest.raises(OSError):
        ClusterConfig.from_options(None, str(tmp_path / "absent"))


def test_host_names_are_resolved_once(tmp_path):
    calls = []

    def counting(host):
        calls.append(host)
        return fake_resolve(host)

    f = tmp_path / "cluster"
    _write(f, "memd1\n")
    cfg = ClusterConfig.from_options(None, str(f), resolve=counting)
    _write(f, "memd1\nmemd2\n")
    cfg.refresh()
    _write(f, "memd2\nmemd1\n")
    cfg.refresh()
    assert sorted(calls) == ["memd1", "memd2"]


def test_reply_parses_back_with_our_discovery_parser():
    cfg = ClusterConfig.from_options("memd1,memd2,memd3", None, resolve=fake_resolve)
    info = parse_config_reply(cfg.reply(b"cluster"))
    assert info.addresses == ["172.18.0.2:11211", "172.18.0.3:11211", "172.18.0.4:11211"]


@pytest.mark.parametrize("bad", [
    b"ERROR\r\n",
    b"CONFIG cluster 0 99\r\n1\na|b|1\n\r\nEND\r\n",
    b"CONFIG cluster 0 8\r\nx\na|b|1\n\r\nEND\r\n",
    b"CONFIG cluster 0 7\r\n1\na|b|\n\r\nEND\r\n",
])
def test_discovery_parser_rejects_malformed_replies(bad):
    with pytest.raises(DiscoveryError):
        parse_config_reply(bad)
