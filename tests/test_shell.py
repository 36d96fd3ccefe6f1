"""memd-cli without a terminal: parsing and rendering as unit tests, then the
scripted modes (-c, piped stdin, --raw, --json, exit codes) and fleet mode
(where, nodes, fleet stats, split multi-gets) against real nodes.

The interactive shell and `top` in a real terminal: test_shell_terminal.py.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest
from rich.console import Console

from memd.shell import commands, render
from memd.shell.commands import Reply, read_reply, tokens_of
from memd.shell.completion import ShellCompleter
from memd.shell.recent import RecentKeys
from memd.shell.main import script_requests
from memd.shell.top import NodeView, TopModel, render_screen, sparkline
from tools.fleet import LocalFleet, memd_available

import servers
from test_tls import mtls_node, pki  # noqa: F401  (fixtures: a CA, certificates, an mTLS node)

REPO = str(servers.REPO_ROOT)


def cli(*args, stdin: bytes | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
               MEMD_CLI_HISTORY=os.devnull, COLUMNS="120")
    return subprocess.run([sys.executable, "-m", "memd.shell", *args], input=stdin or b"",
                          capture_output=True, env=env, timeout=timeout, cwd=REPO)


def text_of(renderable, width: int = 120) -> str:
    console = Console(file=io.StringIO(), width=width, color_system=None)
    console.print(renderable)
    return console.file.getvalue()


def reply_from(tokens: bytes, data: bytes, quiet: bool = False) -> Reply:
    stream = io.BytesIO(data)
    return read_reply(tokens_of(tokens), stream.readline, stream.read, quiet_closer=quiet)


# -- what a typed line means ---------------------------------------------------------------

@pytest.mark.parametrize("line, short", [
    (b"set k 0 0", True), (b"add k 1 60", True), (b"prepend k 0 0", True),
    (b"cas k 0 0 17", True), (b"ms k", True), (b"ms k T60 F5", True),
    (b"set k 0 0 5", False), (b"cas k 0 0 5 17", False), (b"ms k 5 T60", False),
    (b"set k 0", False), (b"get k", False), (b"set k zero 0", False),
])
def test_a_storage_command_one_argument_short_is_taken_as_missing_its_byte_count(line, short):
    assert commands.wants_value(tokens_of(line)) is short


@pytest.mark.parametrize("line, value, full", [
    (b"set k 0 0", b"hello", b"set k 0 0 5"),
    (b"cas k 1 2 99", "héllo".encode(), b"cas k 1 2 6 99"),
    (b"ms k T60", b"abc", b"ms k 3 T60"),
])
def test_the_value_asked_for_is_counted_in_bytes_into_the_command(line, value, full):
    assert commands.with_length(tokens_of(line), value) == full


def test_complete_storage_lines_announce_their_data_block_and_others_none():
    assert commands.data_length(tokens_of(b"set k 0 0 5")) == 5
    assert commands.data_length(tokens_of(b"cas k 0 0 7 1 noreply")) == 7
    assert commands.data_length(tokens_of(b"ms k 3 T1")) == 3
    assert commands.data_length(tokens_of(b"set k 0 0")) is None
    assert commands.data_length(tokens_of(b"get k")) is None


def test_noreply_and_the_meta_q_flag_are_quiet_commands():
    assert commands.is_quiet(tokens_of(b"set k 0 0 1 noreply"))
    assert commands.is_quiet(tokens_of(b"delete k noreply"))
    assert commands.is_quiet(tokens_of(b"mg k v q"))
    assert not commands.is_quiet(tokens_of(b"mg q v"))      # q here is the key
    assert not commands.is_quiet(tokens_of(b"get noreply"))


def test_replies_are_read_to_their_end_including_data_blocks_that_look_like_end():
    r = reply_from(b"get a b", b"VALUE a 0 3\r\nEND\r\nVALUE b 1 2\r\nhi\r\nEND\r\n")
    assert r.lines == [(b"VALUE a 0 3", b"END"), (b"VALUE b 1 2", b"hi"), (b"END", None)]
    assert not r.error
    r = reply_from(b"stats", b"STAT pid 1\r\nSTAT uptime 2\r\nEND\r\n")
    assert [ln for ln, _ in r.lines] == [b"STAT pid 1", b"STAT uptime 2", b"END"]
    r = reply_from(b"mg k v", b"VA 2 f0\r\nok\r\n")
    assert r.lines == [(b"VA 2 f0", b"ok")]
    r = reply_from(b"stats reset", b"RESET\r\n")
    assert r.lines == [(b"RESET", None)]
    r = reply_from(b"mg k v q", b"EN\r\nMN\r\n", quiet=True)
    assert r.lines[-1] == (b"MN", None)


def test_only_error_lines_make_a_reply_an_error_not_misses():
    assert reply_from(b"bogus", b"ERROR\r\n").error
    assert reply_from(b"incr k 1", b"CLIENT_ERROR cannot increment\r\n").error
    assert reply_from(b"set k 0 0 1", b"SERVER_ERROR out of memory\r\n").error
    assert not reply_from(b"delete k", b"NOT_FOUND\r\n").error
    assert not reply_from(b"get k", b"END\r\n").error
    assert not reply_from(b"get k", b"VALUE k 0 5\r\nERROR\r\nEND\r\n").error  # a value, not a reply


def test_piped_input_reads_data_blocks_by_length_and_short_commands_take_the_next_line():
    stream = io.BytesIO(b"set a 0 0 5\r\nab\r\nc\r\nset b 0 0\nvalue two\nget a b\n")
    assert list(script_requests(stream)) == [
        (b"set a 0 0 5", b"ab\r\nc"), (b"set b 0 0 9", b"value two"), (b"get a b", None)]


# -- rendering ------------------------------------------------------------------------------

def test_units_bytes_as_mib_uptimes_as_durations_ratios_as_percentages():
    assert render.fmt_bytes(64 << 20) == "64.0 MiB"
    assert render.fmt_bytes(512) == "512 B"
    assert render.fmt_duration(93784) == "1d 2h"
    assert render.fmt_duration(3725) == "1h 2m"
    assert render.fmt_duration(59) == "59s"
    assert render.fmt_duration(-1) == "never"
    assert render.fmt_ratio(9, 1) == "90.0%"
    assert render.readable("limit_maxbytes", "67108864") == "64.0 MiB"
    assert render.readable("uptime", "3725") == "1h 2m"
    assert render.readable("items:3:age", "61") == "1m 1s"
    assert render.readable("curr_items", "5") == ""


def test_stats_table_aligns_values_with_units_and_adds_hit_ratio():
    out = text_of(render.stats_table({"uptime": "90", "limit_maxbytes": "1048576",
                                      "get_hits": "3", "get_misses": "1"}))
    assert "1m 30s" in out and "1.0 MiB" in out
    assert [ln.split() for ln in out.splitlines() if "get_hit_ratio" in ln] == [
        ["get_hit_ratio", "│", "75.0%", "│"]]


def test_stats_slabs_become_one_row_per_class():
    stats = {"1:chunk_size": "96", "1:used_chunks": "10", "2:chunk_size": "120",
             "2:used_chunks": "3", "active_slabs": "2", "total_malloced": "2097152"}
    out = text_of(render.stats_view("slabs", stats))
    rows = [ln.split() for ln in out.splitlines() if ln.strip()[:1].isdigit()]
    assert rows[0][:5] == ["1", "│", "96", "B", "│"] and rows[1][:5] == ["2", "│", "120", "B", "│"]
    assert "2.0 MiB" in out


def test_fleet_stats_put_the_total_beside_each_node_and_do_not_add_up_identities():
    per_node = {"a:1": {"pid": "10", "curr_items": "5", "get_hits": "1", "get_misses": "1"},
                "b:1": {"pid": "11", "curr_items": "7", "get_hits": "3", "get_misses": "0"}}
    total = render.fleet_total(per_node)
    assert total["curr_items"] == "12" and total["pid"] == ""
    out = text_of(render.fleet_stats_table(per_node))
    header = next(ln for ln in out.splitlines() if "total" in ln)
    assert header.split()[::2] == ["stat", "total", "a:1", "b:1"]
    ratio = next(ln for ln in out.splitlines() if "get_hit_ratio" in ln)
    assert ratio.split()[::2] == ["get_hit_ratio", "80.0%", "50.0%", "100.0%"]


def test_values_show_flags_bytes_cas_and_remaining_ttl():
    reply = reply_from(b"get a", b"VALUE a 42 5\r\nhello\r\nEND\r\n")
    out = text_of(render.values_table(reply, {b"a": {"ttl": 3600, "cas": 7}}))
    row = next(ln for ln in out.splitlines() if ln.startswith(" a "))
    assert row.split() == ["a", "│", "hello", "│", "42", "│", "5", "│", "7", "│", "1h", "0m"]


def test_binary_values_are_escaped_not_written_raw_to_the_terminal():
    assert render.value_text(b"\x00\x1b[2J").plain == "\\x00\\x1b[2J"
    assert render.value_text("héllo".encode()).plain == "héllo"


def test_me_exp_is_read_as_remaining_ttl():
    assert render.parse_me(b"ME k exp=-96 la=4 cas=1 fetch=yes cls=1 size=77") == {
        "ttl": 96, "cas": 1}
    assert render.parse_me(b"ME k exp=-1 la=4 cas=2 fetch=no cls=1 size=77")["ttl"] == -1
    assert render.parse_me(b"EN") is None


def test_error_replies_get_their_own_colour():
    assert render.line_style(b"CLIENT_ERROR bad data chunk") == render.STYLE_ERROR
    assert render.line_style(b"SERVER_ERROR out of memory") == render.STYLE_ERROR
    assert render.line_style(b"NOT_FOUND") == render.STYLE_MISS
    assert render.line_style(b"STORED") == render.STYLE_OK


def test_completion_offers_commands_stats_groups_and_recent_keys():
    from prompt_toolkit.document import Document
    recent = RecentKeys(limit=3)
    for key in (b"user:1", b"user:2", b"other", b"user:3"):
        recent.add(key)
    completer = ShellCompleter(recent)

    def offered(text):
        return [c.text for c in completer.get_completions(Document(text), None)]
    assert "stats" in offered("st")
    assert offered("stats sl") == ["slabs"]
    assert offered("get user:") == ["user:3", "user:2"]          # most recent first, bounded
    assert offered("where o") == ["other"]


def test_sparkline_scales_to_the_largest_sample():
    assert sparkline([0, 5, 10]) == "▁▅█"
    assert sparkline([0, 0]) == "▁▁"
    assert len(sparkline(range(200))) == 60


def test_top_frame_fits_80x24_with_many_nodes():
    model = TopModel(target=None)
    for i in range(12):
        v = NodeView(f"127.0.0.{i + 2}:11211")
        v.update({"cmd_get": "0", "cmd_set": "0", "bytes": "1", "limit_maxbytes": "64"}, 0.0, [])
        v.update({"cmd_get": str(100 * i), "cmd_set": "5", "bytes": "2", "limit_maxbytes": "64",
                  "curr_items": "3", "curr_connections": "4"}, 1.0, [(b"hot:key", 10)])
        model.views[v.address] = v
    frame = render_screen(model, "ops", 80, 24, color=False)
    lines = frame.splitlines()
    assert len(lines) <= 24 and max(len(ln) for ln in lines) <= 80
    first = next(ln for ln in lines if ln.startswith("127."))
    assert first.startswith("127.0.0.13:11211") and "1.1k" in first    # sorted by ops/s


# -- scripted, against a real node ---------------------------------------------------------

def test_dash_c_sets_and_reads_a_key_without_a_byte_count(memd_server):
    addr = "%s:%d" % memd_server.address
    r = cli(addr, "-c", "set shell:c 7 0", "-c", "hi there", "-c", "get shell:c")
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode()
    assert "STORED" in out
    row = next(ln for ln in out.splitlines() if "shell:c" in ln)
    assert row.split()[:9] == ["shell:c", "│", "hi", "there", "│", "7", "│", "8", "│"]
    assert row.split()[-1] == "never"


def test_exit_codes_error_is_1_a_miss_is_0_no_connection_is_2(memd_server):
    addr = "%s:%d" % memd_server.address
    assert cli(addr, "-c", "get shell:nothing", "-c", "delete shell:nothing").returncode == 0
    assert cli(addr, "-c", "bogus").returncode == 1
    assert cli(addr, "-c", "incr shell:c 1").returncode in (0, 1)
    assert cli(addr, stdin=b"set shell:x 0 0 1\r\nxx\r\n").returncode == 1   # bad data chunk
    assert cli("127.0.0.1:%d" % servers.free_port(), "-c", "version").returncode == 2


def test_piped_stdin_runs_each_command_and_raw_shows_the_exact_bytes(memd_server):
    addr = "%s:%d" % memd_server.address
    r = cli(addr, "--raw", stdin=b"set shell:p 3 0 2\r\nok\r\nget shell:p\r\nmn\r\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"STORED\r\nVALUE shell:p 3 2\r\nok\r\nEND\r\nMN\r\n"


def test_noreply_commands_do_not_hang_the_script(memd_server):
    addr = "%s:%d" % memd_server.address
    r = cli(addr, "--raw", stdin=b"set shell:q 0 0 1 noreply\r\n1\r\nmg shell:q v q\r\n"
                                 b"mg shell:none v q\r\nget shell:q\r\n", timeout=20)
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"VA 1\r\n1\r\nVALUE shell:q 0 1\r\n1\r\nEND\r\n"


def test_json_stats_and_nodes(memd_server):
    addr = "%s:%d" % memd_server.address
    stats = json.loads(cli(addr, "--json", "-c", "stats").stdout)
    assert stats["pid"] > 0 and stats["version"].startswith("1.6.18")
    nodes = json.loads(cli(addr, "--json", "-c", "nodes").stdout)
    assert nodes[0]["node"] == addr and nodes[0]["state"] == "live"


def test_text_protocol_login_with_user_and_password(memd_server_factory, tmp_path):
    users = tmp_path / "users"
    users.write_text("ops:s3cret\n")
    node = memd_server_factory("--auth-file", str(users))
    addr = "%s:%d" % node.address
    ok = cli(addr, "--user", "ops", "--password", "s3cret", "-c", "set shell:a 0 0", "-c", "v")
    assert ok.returncode == 0 and b"STORED" in ok.stdout, ok.stderr
    bad = cli(addr, "--user", "ops", "--password", "wrong", "-c", "version")
    assert bad.returncode == 2 and b"refused" in bad.stderr


# -- a fleet --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fleet():
    if not memd_available():
        pytest.skip("memd not importable")
    with LocalFleet(n=3, backend="memd", first_host=100, extra_args=["-m", "16"]) as f:
        yield f


def test_where_names_the_node_the_ring_picks(fleet):
    from memd.cluster.client import ClusterClient
    with ClusterClient(fleet.addresses) as client:
        expected = {k: client.node_for(k) for k in ("a", "b", "c", "d", "e", "f")}
    r = cli("--nodes", ",".join(fleet.addresses), "--json",
            *sum((["-c", f"where {k}"] for k in expected), []))
    assert r.returncode == 0, r.stderr
    answers = [json.loads(chunk) for chunk in r.stdout.decode().replace("}\n{", "}\0{").split("\0")]
    assert {a["key"]: a["nodes"] for a in answers} == {k: [n] for k, n in expected.items()}
    assert len(set(expected.values())) > 1


def test_fleet_key_commands_go_to_the_owner_and_a_multi_get_is_merged(fleet):
    from pymemcache.client.base import Client
    nodes = ",".join(fleet.addresses)
    keys = [f"shell:f{i}" for i in range(12)]
    script = "".join(f"set {k} 0 0\n{k}-value\n" for k in keys) + "get " + " ".join(keys) + "\n"
    r = cli("--nodes", nodes, "--raw", stdin=script.encode())
    assert r.returncode == 0, r.stderr
    assert r.stdout.count(b"VALUE ") == 12 and r.stdout.endswith(b"END\r\n")
    holders = set()
    for address in fleet.addresses:
        host, port = address.split(":")
        c = Client((host, int(port)))
        held = c.get_many(keys)
        c.close()
        holders |= {(k, address) for k in held}
    assert len(holders) == 12                    # each key on exactly one node
    assert len({a for _, a in holders}) > 1      # and not all on one


def test_fleet_stats_show_a_total_column_and_nodes_lists_every_member(fleet):
    nodes = ",".join(fleet.addresses)
    r = cli("--nodes", nodes, "--json", "-c", "stats")
    stats = json.loads(r.stdout)
    assert set(stats["nodes"]) == set(fleet.addresses)
    assert stats["total"]["curr_items"] == sum(s["curr_items"] for s in stats["nodes"].values())
    table = cli("--nodes", nodes, "-c", "stats").stdout.decode()
    header = next(ln for ln in table.splitlines() if "total" in ln)
    assert header.split()[::2] == ["stat", "total", *fleet.addresses]
    listed = json.loads(cli("--nodes", nodes, "--json", "-c", "nodes").stdout)
    assert [n["node"] for n in listed] == fleet.addresses
    assert all(n["state"] == "live" and n["version"].startswith("1.6.18") for n in listed)


def test_fleet_mode_finds_members_through_a_configuration_endpoint(fleet):
    r = cli("--cluster", fleet.addresses[0], "--json", "-c", "nodes")
    assert r.returncode == 0, r.stderr
    assert sorted(n["node"] for n in json.loads(r.stdout)) == sorted(fleet.addresses)


def test_sasl_on_binary_translates_typed_commands(memd_server_factory, tmp_path):
    users = tmp_path / "users"
    users.write_text("ops:s3cret\n")
    node = memd_server_factory("--auth-file", str(users))
    addr = "%s:%d" % node.address
    r = cli(addr, "--sasl", "--user", "ops", "--password", "s3cret", "--raw",
            stdin=b"set shell:s 9 0\nbin\nget shell:s\ndelete shell:s\ndelete shell:s\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"STORED\r\nVALUE shell:s 9 3\r\nbin\r\nEND\r\nDELETED\r\nNOT_FOUND\r\n"
    assert cli(addr, "--sasl", "--user", "ops", "--password", "nope", "-c", "version"
               ).returncode == 2


def test_mutual_tls_with_a_client_certificate(pki, mtls_node):
    addr = "%s:%d" % mtls_node.address
    cert, key = pki["client"]
    r = cli(addr, "--tls-ca", pki["ca"], "--tls-cert", cert, "--tls-key", key, "-c", "version")
    assert r.returncode == 0 and r.stdout.startswith(b"VERSION 1.6.18"), r.stderr
    assert cli(addr, "--tls", "--tls-ca", pki["ca"], "-c", "version").returncode == 2
    assert cli(addr, "-c", "version").returncode == 2            # plain text to a TLS port


def test_a_fleet_with_a_node_down_still_answers_and_exits_2(fleet):
    down = "127.0.0.1:%d" % servers.free_port()
    nodes = ",".join(fleet.addresses + [down])
    listed = cli("--nodes", nodes, "--json", "-c", "nodes")
    assert listed.returncode == 2
    states = {n["node"]: n["state"] for n in json.loads(listed.stdout)}
    assert states.pop(down) == "down" and set(states.values()) == {"live"}
    version = cli("--nodes", nodes, "-c", "version")
    assert version.returncode == 2
    assert version.stdout.count(b"VERSION 1.6.18") == len(fleet.addresses)


def test_fleet_stats_hotkeys_merges_the_nodes_lists(fleet):
    from pymemcache.client.base import Client
    from memd.cluster.client import ClusterClient
    with ClusterClient(fleet.addresses) as cluster:
        cluster.set("shell:hot", b"1")
        owner = cluster.node_for("shell:hot")
    host, port = owner.split(":")
    c = Client((host, int(port)))
    for _ in range(40):
        c.get_many(["shell:hot"] * 100)    # 4,000 lookups: ~125 of them sampled
    c.close()
    r = cli("--nodes", ",".join(fleet.addresses), "--json", "-c", "stats hotkeys")
    assert r.returncode == 0, r.stderr
    hot = json.loads(r.stdout)
    assert hot[0]["key"] == "shell:hot" and hot[0]["requests"] > 1000


def test_with_replicas_where_names_every_node_that_holds_the_key(fleet):
    from memd.cluster.client import ClusterClient
    with ClusterClient(fleet.addresses, replicas=2) as client:
        expected = client.nodes_for("user:7")
    assert len(expected) == 2
    r = cli("--nodes", ",".join(fleet.addresses), "--replicas", "2", "--json", "-c", "where user:7")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["nodes"] == expected
