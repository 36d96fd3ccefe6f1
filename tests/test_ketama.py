"""KetamaRing maps keys exactly as libmemcached's weighted ketama does.

Two oracles not written by us: uhashring's ketama mode (PyPI) and, when the
system library is installed, libmemcached itself through ctypes.
"""

import ctypes
import ctypes.util

import pytest

from memd.cluster.ring import KetamaRing, ketama_label, ketama_points_per_server

KEYS = [f"user:{i}:profile" for i in range(1500)] + [f"k{i}" for i in range(500)]

EQUAL = [f"10.0.0.{i}:11211" for i in range(1, 6)]
MIXED_PORTS = ["10.0.0.1:11211", "10.0.0.2:11212", "cache-3.example:11213", "cache-4:11211"]
WEIGHTED = {"10.0.0.1:11211": 1, "10.0.0.2:11212": 2, "cache3:11213": 3, "cache4:11211": 5}


def test_key_point_is_first_four_md5_bytes_little_endian():
    # md5("foo") = acbd18db 4cc2f85c ...
    assert KetamaRing().key_point("foo") == 0xDB18BDAC


def test_server_label_drops_default_port_only():
    assert ketama_label("10.0.0.1:11211") == "10.0.0.1"
    assert ketama_label("10.0.0.1:11212") == "10.0.0.1:11212"
    assert ketama_label("cachehost") == "cachehost"


def test_equal_servers_get_160_points_each_for_small_fleets():
    ring = KetamaRing(EQUAL)
    assert set(ring.point_counts().values()) == {160}


def test_float32_rounding_gives_156_points_for_25_equal_servers():
    # libmemcached computes the share in C floats; 1/25*160/4*25 rounds to
    # 39.999996, floor 39, so 156 points. Doubles would say 160.
    assert ketama_points_per_server(1, 25, 25) == 156
    assert ketama_points_per_server(1, 3, 3) == 160


def test_str_and_utf8_bytes_keys_agree():
    ring = KetamaRing(EQUAL)
    for key in ["plain", "ünïcödé", "日本"]:
        assert ring.get_node(key) == ring.get_node(key.encode("utf-8"))


# -- uhashring (PyPI) --------------------------------------------------------

uhashring = pytest.importorskip("uhashring", reason="uhashring not installed (pip install uhashring)")


def _uhashring(nodes):
    # uhashring hashes the node name as given, so give it libmemcached's
    # label ("host" for port 11211, else "host:port").
    if isinstance(nodes, dict):
        conf = {ketama_label(n): {"weight": w} for n, w in nodes.items()}
    else:
        conf = [ketama_label(n) for n in nodes]
    return uhashring.HashRing(nodes=conf, hash_fn="ketama")


@pytest.mark.parametrize("nodes", [EQUAL, MIXED_PORTS, WEIGHTED], ids=["equal", "ports", "weighted"])
def test_agrees_with_uhashring_key_for_key(nodes):
    ours = KetamaRing(nodes)
    theirs = _uhashring(nodes)
    mismatched = [k for k in KEYS if ketama_label(ours.get_node(k)) != theirs.get_node(k)]
    assert mismatched == []


# -- libmemcached through ctypes --------------------------------------------

MEMCACHED_BEHAVIOR_KETAMA_WEIGHTED = 16  # libmemcached-1.0/types/behavior.h


def _libmemcached():
    name = ctypes.util.find_library("memcached")
    if not name:
        pytest.skip("libmemcached not installed (apt-get install libmemcached11)")
    lib = ctypes.CDLL(name)
    lib.memcached_create.restype = ctypes.c_void_p
    lib.memcached_create.argtypes = [ctypes.c_void_p]
    lib.memcached_free.argtypes = [ctypes.c_void_p]
    lib.memcached_behavior_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint64]
    lib.memcached_server_add_with_weight.argtypes = [
        ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint16, ctypes.c_uint32]
    lib.memcached_generate_hash.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
    lib.memcached_generate_hash.restype = ctypes.c_uint32
    lib.memcached_server_instance_by_position.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    lib.memcached_server_instance_by_position.restype = ctypes.c_void_p
    lib.memcached_server_name.argtypes = [ctypes.c_void_p]
    lib.memcached_server_name.restype = ctypes.c_char_p
    lib.memcached_server_port.argtypes = [ctypes.c_void_p]
    lib.memcached_server_port.restype = ctypes.c_uint16
    return lib


def _libmemcached_owners(lib, servers, keys):
    mc = lib.memcached_create(None)
    try:
        assert lib.memcached_behavior_set(mc, MEMCACHED_BEHAVIOR_KETAMA_WEIGHTED, 1) == 0
        for server, weight in servers.items():
            host, port = server.rsplit(":", 1)
            assert lib.memcached_server_add_with_weight(mc, host.encode(), int(port), weight) == 0
        owners = []
        for key in keys:
            raw = key.encode()
            inst = lib.memcached_server_instance_by_position(
                mc, lib.memcached_generate_hash(mc, raw, len(raw)))
            owners.append(f"{lib.memcached_server_name(inst).decode()}:{lib.memcached_server_port(inst)}")
        return owners
    finally:
        lib.memcached_free(mc)


@pytest.mark.parametrize(
    "servers",
    [
        dict.fromkeys(EQUAL, 1),
        dict.fromkeys(MIXED_PORTS, 1),
        WEIGHTED,
        # 25 equal servers: the float32 case where each gets 156 points.
        {f"10.1.0.{i}:{11211 + i % 2}": 1 for i in range(25)},
    ],
    ids=["equal", "ports", "weighted", "25-servers"],
)
def test_agrees_with_libmemcached_key_for_key(servers):
    lib = _libmemcached()
    ours = KetamaRing(servers)
    theirs = _libmemcached_owners(lib, servers, KEYS)
    assert [ours.get_node(k) for k in KEYS] == theirs
