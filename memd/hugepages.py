"""Transparent huge pages for the slab pages, through glibc's malloc.

A multi-get over a million items reads one chunk per key from some 160 MB
of slab pages.  The pages are 1 MiB ``bytearray`` objects, which glibc
backs with 4 KiB pages, so nearly every chunk read is a TLB miss on top of
its cache miss.  glibc 2.35 and later can back what it allocates with
transparent huge pages (the ``glibc.malloc.hugetlb=1`` tunable), but it
reads its tunables only when a process starts, and Python offers no other
way to give a ``bytearray`` huge pages.  So the ``memd`` command starts
itself over once, at its first line, with the tunable added to the
environment.  (The item records get huge pages by ``madvise``: records.py.)

Measured on this machine, alternating runs of the same checkout with and
without the tunable: mget100big 472k/478k/463k -> 493k/509k/548k keys/s;
RSS per item unchanged (205.3 bytes, compare.py's ``mem``).

``MEMD_HUGE_PAGES=0`` in the environment turns this off.  A process that
already has a ``glibc.malloc.hugetlb`` tunable (an image that sets
``GLIBC_TUNABLES`` itself) is left as it is.
"""

from __future__ import annotations

import os
import sys

# hugetlb=1: malloc madvises what it gets from the kernel for huge pages.
# That helps only memory from the heap (brk), which glibc aligns to 2 MiB; a
# 1 MiB page mmapped by itself holds no aligned 2 MiB to back.  glibc moves
# its mmap threshold above 1 MiB only once a bigger block has been freed
# (which in memd happens when the index first grows, after ~100 MB of pages
# were already placed), so the thresholds are set where that adjustment
# would put them: pages come from the heap from the first one on, and the
# heap is not trimmed and regrown under a big reply's buffer every request.
TUNABLE = ("glibc.malloc.hugetlb=1:glibc.malloc.mmap_threshold=4194304:"
           "glibc.malloc.trim_threshold=8388608")
THP_MODE = "/sys/kernel/mm/transparent_hugepage/enabled"


def _glibc_version() -> tuple[int, int] | None:
    try:
        name = os.confstr("CS_GNU_LIBC_VERSION") or ""     # "glibc 2.36"
    except (ValueError, OSError):
        return None
    lib, _, version = name.partition(" ")
    parts = version.split(".")
    if lib != "glibc" or len(parts) < 2 or not (parts[0].isdigit() and parts[1].isdigit()):
        return None
    return int(parts[0]), int(parts[1])


def wanted(environ=None) -> bool:
    """Should this process start over with the tunable set?"""
    if environ is None:
        environ = os.environ
    if environ.get("MEMD_HUGE_PAGES", "1") == "0":
        return False
    if "glibc.malloc.hugetlb" in environ.get("GLIBC_TUNABLES", ""):
        return False                    # set already (by us, or by whoever started us)
    version = _glibc_version()
    if version is None or version < (2, 35):
        return False
    try:
        with open(THP_MODE) as f:
            mode = f.read()
    except OSError:
        return False
    return "[never]" not in mode


def restart_with_huge_pages() -> None:
    """Replace this process by the same command with the tunable set, when
    ``wanted()``; return only when it is not (or the exec failed)."""
    if not wanted():
        return
    env = dict(os.environ)
    old = env.get("GLIBC_TUNABLES")
    env["GLIBC_TUNABLES"] = f"{old}:{TUNABLE}" if old else TUNABLE
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, sys.orig_argv, env)
    except OSError:
        pass                            # go on with ordinary pages
