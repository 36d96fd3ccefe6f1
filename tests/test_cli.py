"""The command line: memcached's flags and -o options (every one accepted, applied
or warned about), one-line errors with status 2 for every bad value, the
settings file, the startup line, and a graceful exit on SIGTERM/SIGINT."""

from __future__ import annotations

import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time

import pytest

import memd
from memd.cli import OPTIONS, build_parser, main, parse, parse_size, settings_from
from memd.node import Node

import servers
import wire
from pki import make_pki

READY = re.compile(r"^memd ready: version=(\S+) listen=(\S+) memory=(\d+)MB tls=(\S+) "
                   r"auth=(on|off) cluster=(on|off) metrics=(\S+) snapshot=(on|off)$")


def run_memd(*args: str, timeout: float = 10, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "memd", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def start_memd(*args: str, env=None) -> tuple[subprocess.Popen, re.Match]:
    """A memd process and its startup line, read from stderr."""
    proc = subprocess.Popen([sys.executable, "-m", "memd", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=env)
    for line in proc.stderr:
        m = READY.match(line.strip())
        if m:
            return proc, m
    proc.wait(10)
    raise AssertionError(f"no startup line; exit {proc.returncode}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- bad values: one line, exit 2, nothing listens --------------------------------------

def _bad_cases(tmp):
    missing = str(tmp / "missing" / "file")
    nodir = str(tmp / "no-such-dir" / "f")
    unreadable = tmp / "unreadable"
    unreadable.write_text("x")
    unreadable.chmod(0)
    bad_toml = tmp / "bad.toml"
    bad_toml.write_text("memory-limit = \n")
    bad_cluster = tmp / "cluster"
    bad_cluster.write_text("memd1:11211\ngarbage line here\n")
    return {
        "--config": [missing, str(bad_toml), ""],
        "-p": ["-1", "x", "", "70000"],
        "-U": ["-1", "x", ""],
        "-s": [nodir, ""],
        "-a": ["9", "x", "", "1000"],
        "-l": ["", ",", "127.0.0.1:x", "127.0.0.1:70000", "[::1", ":11211"],
        "-u": ["no-such-user-memd", ""],
        "-m": ["0", "-5", "x", ""],
        "-c": ["0", "-1", "x", ""],
        "-P": [nodir, ""],
        "-f": ["1.0", "0.5", "-2", "x", ""],
        "-n": ["0", "-1", "x", ""],
        "-D": ["", "ab"],
        "-t": ["0", "-4", "x", ""],
        "-R": ["0", "-1", "x", ""],
        "-b": ["0", "-1", "x", ""],
        "-B": ["tcp", ""],
        "-I": ["512", "1x", "2g", "", "-1"],
        "-Y": [missing, "", str(unreadable)],
        "-e": [nodir, ""],
        "-o": ["nonsense=1", "", "idle_timeout=abc", "idle_timeout=", "idle_timeout",
               "idle_timeout=-3", "hashpower=5", "slab_automove=3", "ssl_verify_mode=7",
               "ssl_min_version=tlsv1.2", "lru_crawler=1", "hash_algorithm=md5", ","],
        "-N": ["0", "x", ""],
        "--recent-replies-mb": ["-1", "x", ""],
        "--max-conn-output": ["1x", ""],
        "--idle-timeout": ["-5", "x", ""],
        "--tls-cert": [missing, ""],
        "--tls-key": [missing, ""],
        "--tls-ca": [missing, ""],
        "--tls-port": ["-1", "x", "", "65536"],
        "--cluster-nodes": ["", "memd1:notaport", "foo:bar:baz"],
        "--cluster-file": [missing, "", str(bad_cluster)],
        "--cluster-dns": [""],
        "--metrics-port": ["-1", "x", ""],
        "--snapshot": [nodir, ""],
    }


def _value_flags():
    """Every flag of the parser that takes a value (by its first spelling)."""
    out = set()
    for action in build_parser()._actions:
        if action.option_strings and action.nargs != 0 and action.dest not in ("help", "version"):
            out.add(action.option_strings[0])
    return out


def test_the_bad_value_table_covers_every_flag_that_takes_a_value(tmp_path):
    assert set(_bad_cases(tmp_path)) == _value_flags()


def test_every_bad_flag_value_prints_one_line_and_exits_2_before_listening(tmp_path, capsys,
                                                                          monkeypatch):
    def listening(*args):
        raise AssertionError("memd went on to listen")
    monkeypatch.setattr("memd.cli.run", listening)
    monkeypatch.setattr("logging.basicConfig", lambda **kw: None)   # the test process's own
    failures = []
    for flag, values in _bad_cases(tmp_path).items():
        for value in values:
            try:
                with pytest.raises(SystemExit) as exit_:
                    main([flag, value, "-p", "0"])
            except AssertionError:
                failures.append((flag, value, "accepted"))
                continue
            err = capsys.readouterr().err
            lines = err.strip().splitlines()
            if exit_.value.code != 2 or len(lines) != 1 or not lines[0].startswith("memd: error:"):
                failures.append((flag, value, exit_.value.code, err))
    assert not failures


@pytest.mark.parametrize("args", [
    ["--bogus"], ["-p"], ["-Z"], ["--tls-cert", __file__], ["-S"], ["-S", "-B", "ascii"],
    ["-I", "40m", "-m", "64"],
])
def test_a_bad_command_line_prints_one_line_and_exits_2(args):
    env = {k: v for k, v in os.environ.items() if k != "MEMCACHED_SASL_PWDB"}
    done = run_memd(*args, env=env)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("memd: error:"), done.stderr


def test_an_unwritable_snapshot_directory_is_refused_at_start(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    if os.access(locked, os.W_OK):      # root ignores the mode: make the path a file instead
        locked.chmod(0o700)
        locked.rmdir()
        locked.write_text("a file, not a directory")
    with pytest.raises(SystemExit) as exit_:
        main(["--snapshot", str(locked / "cache.snap"), "-p", "0"])
    assert exit_.value.code == 2 and "snapshot" in capsys.readouterr().err


# -- memcached's flags: every one accepted -------------------------------------------------

def _memcached_help() -> str:
    if not servers.memcached_available():
        pytest.skip(servers.MEMCACHED_MISSING)
    return subprocess.run(["memcached", "-h"], capture_output=True, text=True).stdout


def test_every_flag_of_memcached_is_a_flag_of_memd():
    help_text = _memcached_help()
    flags = set(re.findall(r"^(-[A-Za-z])[, ]", help_text, re.M))
    assert len(flags) > 30
    ours = {o for a in build_parser()._actions for o in a.option_strings}
    assert flags <= ours, flags - ours


def _accepted(argv):
    args, warnings = parse(argv)
    return args, warnings


GOOD = {
    "-p": "0", "-U": "11211", "-a": "770", "-A": None, "-l": "127.0.0.1", "-d": None,
    "-r": None, "-u": "root", "-m": "32", "-M": None, "-c": "10", "-k": None, "-v": None,
    "-f": "1.5", "-n": "64", "-L": None, "-D": "/", "-t": "4", "-R": "5", "-C": None,
    "-b": "64", "-B": "binary", "-I": "2m", "-F": None, "-X": None, "-W": None, "-N": "2",
    "-o": "idle_timeout=5",
}
# flags memd takes without acting on them: each gives one warning naming it
NO_EFFECT = {"-U", "-t", "-R", "-C", "-L", "-X", "-W", "-N"}


@pytest.mark.parametrize("flag", sorted(GOOD))
def test_each_memcached_flag_is_accepted_and_a_flag_without_effect_says_so(flag):
    argv = [flag] if GOOD[flag] is None else [flag, GOOD[flag]]
    args, warnings = _accepted(argv)
    mentions = [w for w in warnings if w.startswith(flag + " ")]
    if flag in NO_EFFECT:
        assert len(mentions) == 1 and "no effect" in mentions[0]
    else:
        assert not mentions


def test_flags_that_memd_applies_reach_the_node(tmp_path):
    args, _ = parse(["-p", "11311", "-l", "127.0.0.1,127.0.0.2", "-m", "128", "-c", "10",
                     "-I", "2m", "-f", "1.5", "-n", "64", "-M", "-vv", "-A", "-t", "4", "-F",
                     "-D", "/", "-b", "64", "-B", "ascii", "-s", str(tmp_path / "s"), "-a", "770"])
    s = settings_from(args)
    assert (s.port, s.listen, s.memory_limit_mb, s.conn_limit) == (11311, ["127.0.0.1", "127.0.0.2"], 128, 10)
    assert (s.max_item_size, s.factor, s.slab_min_size) == (2 << 20, 1.5, 64)
    assert (s.evictions, s.verbosity, s.enable_shutdown) == (False, 2, True)
    assert (s.flush_enabled, s.detail_delimiter, s.backlog, s.protocol) == (False, "/", 64, "ascii")
    assert (s.unix_socket, s.unix_mask) == (str(tmp_path / "s"), 0o770)
    assert s.threads == 1              # the truth: one event loop, whatever -t says
    assert parse_size("1k") == 1024 and parse_size("1m") == 1 << 20 and parse_size("4096") == 4096


def test_stats_settings_reports_one_thread_whatever_t_says():
    with memd.serve("-t", "4") as node:
        reply = wire.exchange(node, b"stats settings\r\n").data
    assert b"STAT num_threads 1\r\n" in reply


# -- memcached's -o options -----------------------------------------------------------------

# memcached 1.6.18 parses these -o options besides those its -h lists
SOURCE_ONLY = ["slab_reassign", "no_slab_reassign", "slab_automove", "no_slab_automove",
               "slab_automove_ratio", "slab_automove_window", "lru_crawler", "lru_maintainer",
               "inline_ascii_resp", "no_inline_ascii_resp", "no_chunked_items", "drop_privileges",
               "no_drop_privileges", "resp_obj_mem_limit", "ext_io_depth", "slab_sizes",
               "no_maxconns_fast"]
BARE = {"maxconns_fast", "no_hashexpand", "no_lru_crawler", "no_lru_maintainer", "track_sizes",
        "modern", "no_modern", "ssl_session_cache", "ssl_kernel_tls", "ext_drop_unread",
        "slab_reassign", "no_slab_reassign", "no_slab_automove", "lru_crawler", "lru_maintainer",
        "inline_ascii_resp", "no_inline_ascii_resp", "no_chunked_items", "drop_privileges",
        "no_drop_privileges", "no_maxconns_fast", "resp_obj_mem_limit"}
VALUES = {"hashpower": "16", "hash_algorithm": "xxh3", "ext_path": "/tmp/extstore:64m",
          "ext_max_frag": "0.5", "hot_max_factor": "0.2", "warm_max_factor": "2.0",
          "slab_automove_ratio": "0.8", "slab_automove_freeratio": "0.01",
          "ssl_chain_cert": __file__, "ssl_key": __file__, "ssl_ca_cert": __file__,
          "ssl_ciphers": "HIGH", "slab_automove": "2", "ssl_min_version": "3",
          "slab_automove_window": "30", "tail_repair_time": "10", "slab_sizes": "96-192"}


def _option_arg(name: str) -> str:
    return name if name in BARE else f"{name}={VALUES.get(name, '1')}"


def _memcached_options() -> list[str]:
    listed = re.findall(r"^\s+- (\w+):", _memcached_help(), re.M)
    return sorted(set(listed + SOURCE_ONLY))


def test_memd_takes_exactly_the_o_options_memcached_takes():
    names = _memcached_options()
    assert len(names) > 60
    refused = [n for n in names
               if subprocess.run(["memcached", "-o", _option_arg(n), "-V"],
                                 capture_output=True).returncode != 0]
    assert not refused, "the list above names options memcached does not take"
    assert set(OPTIONS) == set(names)


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_each_o_option_is_applied_or_warned_about_once(name):
    args, warnings = _accepted(["-Z", "--tls-cert", __file__, "--tls-key", __file__,
                                "-o", _option_arg(name)])
    mentions = [w for w in warnings if w.startswith(f"-o {name} ")]
    target = OPTIONS[name][1]
    if isinstance(target, str) and target.startswith("-"):
        assert len(mentions) == 1 and "no effect" in mentions[0]
    else:
        assert not mentions


def test_applied_o_options_change_the_node():
    args, _ = parse(["-o", "idle_timeout=7,slab_automove=0,no_lru_crawler"])
    from memd.cli import make_node
    node = make_node(args)
    assert node.settings.idle_timeout == 7
    assert node.rebalancer.automove == 0 and not node.crawler_enabled


def test_o_ssl_options_without_Z_leave_tls_off_as_in_memcached():
    args, warnings = parse(["-o", f"ssl_chain_cert={__file__},ssl_key={__file__}"])
    assert args.tls_cert is None and any("without -Z" in w for w in warnings)
    with memd.serve("-o", f"ssl_chain_cert={__file__}") as node:
        assert wire.exchange(node, b"version\r\n").data.startswith(b"VERSION ")


# -- the settings file ------------------------------------------------------------------------

def test_config_file_sets_flags_and_the_command_line_overrides_it(tmp_path):
    cfg = tmp_path / "memd.toml"
    cfg.write_text('memory-limit = 32\nconn-limit = 50\nlisten = "127.0.0.1"\n'
                   'disable-flush-all = true\nverbose = 0\n[options]\nidle_timeout = 30\n'
                   'lru_crawler = true\n')
    with memd.serve("--config", str(cfg), "-c", "60") as node:
        settings = node.node.settings
        assert (settings.memory_limit_mb, settings.conn_limit) == (32, 60)
        assert settings.idle_timeout == 30 and not settings.flush_enabled
        reply = wire.exchange(node, b"stats config\r\n").data.decode()
        settings_reply = wire.exchange(node, b"stats settings\r\n").data.decode()
    lines = dict(line.split(" ", 2)[1:] for line in reply.splitlines() if line.startswith("STAT"))
    assert lines["config-file"] == str(cfg)
    assert lines["memory-limit"] == "32 config"
    assert lines["conn-limit"] == "60 command-line"
    assert lines["max-item-size"] == "1048576 default"
    assert lines["options.idle_timeout"] == "30 config"
    assert "config-file" not in settings_reply    # stats settings keeps memcached's format


@pytest.mark.parametrize("text", ["bogus-key = 1\n", "memory-limit = -3\n", "memory-limit = true\n",
                                  "disable-flush-all = 3\n", "options = 5\n",
                                  "[options]\nidle_timeout = -1\n", "[options]\nnope = 1\n",
                                  "memory-limit = [\n"])
def test_a_bad_config_file_prints_one_line_and_exits_2(tmp_path, capsys, text):
    cfg = tmp_path / "memd.toml"
    cfg.write_text(text)
    with pytest.raises(SystemExit) as exit_:
        main(["--config", str(cfg), "-p", "0"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(lines) == 1 and lines[0].startswith("memd: error:")


# -- startup line, unix socket, daemon -------------------------------------------------------

def test_the_startup_line_names_every_bound_address_also_with_port_0(tmp_path):
    proc, m = start_memd("-p", "0", "-l", "127.0.0.1", "-m", "16", "--snapshot",
                         str(tmp_path / "snap"))
    try:
        version, listen, memory, tls, auth, cluster, metrics, snapshot = m.groups()
        assert version.startswith("1.6.18-memd-") and memory == "16"
        assert (tls, auth, cluster, metrics, snapshot) == ("off", "off", "off", "off", "on")
        host, port = listen.rsplit(":", 1)
        assert host == "127.0.0.1" and int(port) > 0
        assert wire.exchange((host, int(port)), b"version\r\n").data == b"VERSION " + version.encode() + b"\r\n"
    finally:
        stop(proc)


def test_the_startup_line_lists_tls_and_metrics_listeners(tmp_path):
    made = make_pki(tmp_path / "pki")
    cert, key = made["server.pem"], made["server.key"]
    users = tmp_path / "users"
    users.write_text("u:p\n")
    proc, m = start_memd("-p", "0", "--tls-port", "0", "--tls-cert", str(cert), "--tls-key",
                         str(key), "--metrics-port", "0", "-Y", str(users),
                         "--cluster-nodes", "127.0.0.1:1")
    try:
        _, listen, _, tls, auth, cluster, metrics, _ = m.groups()
        plain, secure = listen.split(",")
        assert tls == secure and plain != secure
        assert (auth, cluster) == ("on", "on") and re.fullmatch(r"127\.0\.0\.1:\d+", metrics)
    finally:
        stop(proc)


def test_a_unix_socket_speaks_text_meta_and_binary_with_its_mask(tmp_path):
    path = str(tmp_path / "memd.sock")
    proc, m = start_memd("-s", path, "-a", "660")
    try:
        assert m.group(2) == f"unix:{path}"
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(path)
            s.sendall(b"set k 0 0 1\r\nv\r\nmg k v\r\n")
            assert _recv_until(s, b"VA 1\r\nv\r\n") == b"STORED\r\nVA 1\r\nv\r\n"
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(path)
            # binary no-op: magic, opcode 0x0a, everything else zero
            s.sendall(bytes([0x80, 0x0a]) + bytes(22))
            reply = _recv_until(s, None, 24)
            assert reply[:2] == bytes([0x81, 0x0a]) and reply[6:8] == b"\0\0"
    finally:
        stop(proc)
    assert not os.path.exists(path)


def _recv_until(s, suffix, size=None):
    s.settimeout(5)
    data = b""
    while not (data.endswith(suffix) if suffix else len(data) >= size):
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


@pytest.mark.skipif(not hasattr(os, "fork"), reason="-d needs fork")
def test_daemon_mode_prints_the_startup_line_detaches_and_writes_its_pidfile(tmp_path):
    pidfile = tmp_path / "memd.pid"
    done = run_memd("-d", "-p", "0", "-P", str(pidfile))
    assert done.returncode == 0
    m = READY.match(done.stderr.strip().splitlines()[-1])
    assert m
    pid = int(pidfile.read_text())
    try:
        host, port = m.group(2).rsplit(":", 1)
        assert wire.exchange((host, int(port)), b"version\r\n").data.startswith(b"VERSION ")
    finally:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while pidfile.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    assert not pidfile.exists()        # removed on a graceful exit


# -- protocol and feature flags, in process ----------------------------------------------------

def test_B_fixes_the_protocol_whatever_the_first_byte():
    with memd.serve("-B", "ascii") as node:
        # a binary no-op read as text: not a command memcached's text parser knows
        reply = wire.exchange(node, bytes([0x80, 0x0a]) + bytes(22) + b"\r\n").data
        assert reply.startswith(b"ERROR")
    with memd.serve("-B", "binary") as node:
        with wire.connect(node) as c:
            c.send(b"version\r\n")
            assert not c.read_for(0.5).data.startswith(b"VERSION")


def test_F_disables_flush_all_as_memcached_does():
    with memd.serve("-F") as node:
        assert wire.exchange(node, b"flush_all\r\n").data == b"CLIENT_ERROR flush_all not allowed\r\n"


def test_S_requires_sasl_with_users_from_MEMCACHED_SASL_PWDB(tmp_path):
    bmemcached = pytest.importorskip("bmemcached")
    pwdb = tmp_path / "sasl.pw"
    pwdb.write_text("app:s3cret\n")
    env = dict(os.environ, MEMCACHED_SASL_PWDB=str(pwdb))
    proc, m = start_memd("-S", "-p", "0", env=env)
    try:
        assert m.group(5) == "on"
        good = bmemcached.Client([m.group(2)], "app", "s3cret")
        assert good.set("k", "v") and good.get("k") == "v"
        with pytest.raises(Exception):
            bad = bmemcached.Client([m.group(2)], "app", "wrong")
            bad.set("k", "v")
            assert bad.get("k") is None
            raise RuntimeError("refused")
        host, port = m.group(2).rsplit(":", 1)
        with wire.connect((host, int(port))) as c:     # -S means binary only, as memcached
            c.send(b"version\r\n")
            assert not c.read_for(0.5).data.startswith(b"VERSION")
    finally:
        stop(proc)


def test_version_help_and_license():
    done = run_memd("-V")
    assert done.returncode == 0 and "1.6.18" in done.stdout
    done = run_memd("-i")
    assert done.returncode == 0 and "license" in done.stdout.lower()
    done = run_memd("-h")
    assert done.returncode == 0
    text = " ".join(done.stdout.split())      # argparse wraps lines
    for flag in ("--port", "--listen", "--memory-limit", "--conn-limit", "--max-item-size",
                 "--factor", "--slab-min-size", "--disable-evictions", "--udp-port",
                 "--enable-shutdown", "--threads", "one node per core", "--config",
                 "(default: 11211)"):
        assert flag in text


def test_recent_replies_budget_defaults_to_a_sixteenth_of_memory_and_can_be_turned_off():
    default = Node(settings_from(parse(["-m", "128"])[0]))
    assert default.store.recent.budget == 8 << 20
    off = Node(settings_from(parse(["--recent-replies-mb", "0"])[0]))
    assert off.store.recent.budget == 0
    off.store.store(0, b"k", 0, 0, b"v")
    out = []
    off.store.fetch_text([b"k", b"k"], out)
    assert out == [b"VALUE k 0 1\r\nv\r\n"] * 2 and not off.store.recent.replies


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_shuts_down_gracefully_with_status_0(signum):
    proc, m = start_memd("-p", "0")
    try:
        host, port = m.group(2).rsplit(":", 1)
        conn = socket.create_connection((host, int(port)), timeout=5)
        conn.sendall(b"set k 0 0 1\r\nv\r\n")
        assert conn.recv(100) == b"STORED\r\n"
        proc.send_signal(signum)
        assert proc.wait(10) == 0
        assert conn.recv(100) == b""  # the open connection was closed, not reset mid-reply
        with pytest.raises(OSError):
            socket.create_connection((host, int(port)), timeout=1)
    finally:
        stop(proc)


def test_docs_list_every_flag_and_o_option_with_what_memd_does():
    from pathlib import Path
    doc = (Path(__file__).resolve().parent.parent / "docs" / "operations.md").read_text()
    rows = {line.split("|")[1].strip() for line in doc.splitlines() if line.startswith("| `")}
    for name in OPTIONS:
        assert f"`{name}`" in rows, name
    shorts = set(re.findall(r"^(-[A-Za-z])[, ]", _memcached_help(), re.M))
    for flag in shorts:
        assert any(re.search(rf"`{flag}[`, ]", row) for row in rows), flag


def test_stats_settings_tells_what_the_flags_set(tmp_path):
    sock = str(tmp_path / "m.sock")
    with memd.serve("-s", sock, "-a", "770", "-D", "/", "-b", "64", "-B", "ascii",
                    "-o", "no_lru_crawler") as node:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(node.address)
            s.sendall(b"stats settings\r\n")
            reply = _recv_until(s, b"END\r\n").decode()
    for line in (f"domain_socket {sock}", "umask 770", "stat_key_prefix /", "tcp_backlog 64",
                 "binding_protocol ascii", "lru_crawler no", "num_threads 1"):
        assert f"STAT {line}\r\n" in reply, line


def test_listen_takes_memcacheds_host_port_form():
    port = servers.free_port()
    with memd.serve("-l", f"127.0.0.1:{port},127.0.0.2") as node:
        assert node.addresses[0] == f"127.0.0.1:{port}"
        assert node.addresses[1].startswith("127.0.0.2:")
        for address in node.addresses:
            host, p = address.rsplit(":", 1)
            assert wire.exchange((host, int(p)), b"version\r\n").data.startswith(b"VERSION")


def test_stats_extstore_answers_end_like_memcached_without_extstore(memcached_server):
    expected = wire.exchange(memcached_server, b"stats extstore\r\n").data
    with memd.serve() as node:
        assert wire.exchange(node, b"stats extstore\r\n").data == expected == b"END\r\n"
