"""memd inside a Python test suite: ``memd.serve()`` and the pytest plugin."""

from __future__ import annotations

import importlib.metadata
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from pymemcache.client.base import Client

import memd
from pki import make_pki

ROOT = Path(__file__).resolve().parent.parent


def test_serve_runs_a_node_in_a_thread_for_the_block():
    with memd.serve(memory_mb=8) as node:
        client = Client(node.address)
        client.set("greeting", b"hello")
        assert client.get("greeting") == b"hello"
        assert node.node.settings.memory_limit_mb == 8
        client.close()
    with pytest.raises(OSError):
        Client(node.address, connect_timeout=1).get("greeting")


def test_two_nodes_side_by_side_have_their_own_caches():
    with memd.serve() as a, memd.serve() as b:
        assert a.port != b.port
        Client(a.address).set("k", b"a")
        assert Client(b.address).get("k") is None


def test_serve_leaves_the_host_process_signal_handlers_alone():
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    with memd.serve():
        assert {s: signal.getsignal(s) for s in before} == before
    assert {s: signal.getsignal(s) for s in before} == before


def test_serve_with_auth_and_tls(tmp_path):
    bmemcached = pytest.importorskip("bmemcached")
    with memd.serve(auth={"app": "s3cret"}) as node:
        good = bmemcached.Client([f"{node.host}:{node.port}"], "app", "s3cret")
        assert good.set("k", "v") and good.get("k") == "v"
    pki = make_pki(tmp_path)
    import ssl
    with memd.serve(tls=(pki["server.pem"], pki["server.key"], pki["ca.pem"])) as node:
        ctx = ssl.create_default_context(cafile=pki["ca.pem"])
        ctx.load_cert_chain(pki["client.pem"], pki["client.key"])
        client = Client(node.address, tls_context=ctx)
        client.set("k", b"over tls")
        assert client.get("k") == b"over tls"
        client.close()


def test_a_bad_option_raises_value_error_with_memds_message():
    with pytest.raises(ValueError, match="must be greater than 0"):
        with memd.serve(memory_mb=0):
            pass


def test_the_plugin_is_registered_for_pytest_when_memd_is_installed():
    try:
        import tomllib
    except ImportError:
        import tomli as tomllib
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["pytest11"] == {"memd": "memd.pytest_plugin"}


def test_the_pytest_plugin_gives_each_test_a_fresh_node(tmp_path):
    (tmp_path / "test_app.py").write_text(textwrap.dedent('''
        import pytest
        from pymemcache.client.base import Client

        def test_one(memd_server):
            Client(memd_server.address).set("k", b"1")

        def test_two_sees_an_empty_cache(memd_server):
            assert Client(memd_server.address).get("k") is None

        @pytest.mark.memd(memory_mb=4, flags=["-I", "2k"])
        def test_options_through_the_marker(memd_server):
            assert memd_server.node.settings.memory_limit_mb == 4
            client = Client(memd_server.address)
            with pytest.raises(Exception):
                client.set("big", b"x" * 4096, noreply=False)

        def test_session_node_and_a_fleet(memd_session_server, memd_factory):
            nodes = [memd_factory() for _ in range(3)]
            assert len({n.port for n in nodes + [memd_session_server]}) == 4
    '''))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    # installed memd registers the plugin itself (pytest11); a checkout names it
    installed = any(ep.value == "memd.pytest_plugin"
                    for ep in importlib.metadata.entry_points(group="pytest11"))
    load = [] if installed else ["-p", "memd.pytest_plugin"]
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", *load,
                           "-p", "no:cacheprovider", str(tmp_path / "test_app.py")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 passed" in done.stdout
