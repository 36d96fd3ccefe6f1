"""What memd-bench sends: keys, key popularity, value sizes, request bytes.

Everything that can be decided before the clock starts is: key and request
templates are bytes formats, value bodies are built once per size, and key
indices are sampled in blocks.  Per request the hot loop does one `random()`,
one list index and one bytes `%` format.
"""

from __future__ import annotations

import random
from array import array
from bisect import bisect_right
from dataclasses import dataclass
from itertools import accumulate

MAX_KEY_SIZE = 250          # memcached's key length limit
RANGE_SIZES = 64            # distinct sizes pre-built for a "lo-hi" value range
KEY_BLOCK = 4096            # key indices sampled per refill


@dataclass(frozen=True)
class WorkloadSpec:
    keys: int = 10000
    key_size: int = 16
    get_ratio: float = 0.9
    multiget: int = 1
    value_sizes: tuple[int, ...] = (100,)
    distribution: str = "uniform"     # or "zipf"
    zipf_s: float = 0.99

    def __post_init__(self) -> None:
        if self.keys < 1:
            raise ValueError("--keys must be at least 1")
        if not 0.0 <= self.get_ratio <= 1.0:
            raise ValueError("--get-ratio must be between 0 and 1")
        if self.multiget < 1:
            raise ValueError("--multiget must be at least 1")
        if not self.value_sizes or min(self.value_sizes) < 0:
            raise ValueError("value sizes must be non-negative")
        if self.distribution not in ("uniform", "zipf"):
            raise ValueError("--distribution must be uniform or zipf")
        if self.distribution == "zipf" and self.zipf_s <= 0:
            raise ValueError("--zipf-s must be positive")
        key_format(self.keys, self.key_size)   # validates the key size


def parse_value_sizes(text: str, seed: int = 0) -> tuple[int, ...]:
    """'100' -> one size; '100,1000' -> a mix; '100-10000' -> a uniform range.

    A range is represented by RANGE_SIZES sizes drawn once (seeded), so value
    bodies can be pre-built instead of made per request.
    """
    text = text.strip()
    try:
        if "," in text:
            return tuple(int(p) for p in text.split(",") if p.strip())
        if "-" in text[1:]:
            lo, hi = (int(p) for p in text.split("-", 1))
            if lo > hi:
                raise ValueError
            rng = random.Random(seed)
            return tuple(sorted(rng.randint(lo, hi) for _ in range(RANGE_SIZES)))
        return (int(text),)
    except ValueError:
        raise ValueError(f"bad --value-size {text!r}: want N, N,M,... or LO-HI") from None


def key_format(keys: int, key_size: int) -> bytes:
    """A bytes %-format giving every key index a key exactly `key_size` long.

    Keys look like mcload's, "key:000000000123", so the two tools hit the same
    key space; the "key:" prefix shrinks when the size leaves no room for it.
    """
    digits = len(str(keys - 1))
    if key_size > MAX_KEY_SIZE:
        raise ValueError(f"--key-size {key_size} exceeds memcached's limit of {MAX_KEY_SIZE}")
    if key_size < digits:
        raise ValueError(f"--key-size {key_size} cannot hold {keys} distinct keys (need {digits})")
    prefix = b"key:"[: key_size - digits]
    return prefix + b"%0" + str(key_size - len(prefix)).encode() + b"d"


def key_bytes(spec: WorkloadSpec, index: int) -> bytes:
    return key_format(spec.keys, spec.key_size) % index


def value_body(size: int) -> bytes:
    """Value data plus the CRLF that ends it on the wire."""
    pattern = b"abcdefghijklmnopqrstuvwxyz"
    return (pattern * (size // len(pattern) + 1))[:size] + b"\r\n"


class UniformSampler:
    def __init__(self, n: int, rng: random.Random):
        self._n = n
        self._random = rng.random

    def block(self, k: int) -> list[int]:
        n, rnd = self._n, self._random
        return [int(rnd() * n) for _ in range(k)]


class ZipfSampler:
    """Key index i (0 = most popular) with probability ~ 1 / (i + 1) ** s.

    Inverse-CDF sampling over a cumulative weight table: exact for any s
    (including s <= 1, where closed forms break down) at 8 bytes per key.
    """

    def __init__(self, n: int, s: float, rng: random.Random):
        self._cum = array("d", accumulate((i + 1) ** -s for i in range(n)))
        self._total = self._cum[-1]
        self._random = rng.random

    def block(self, k: int) -> list[int]:
        cum, total, rnd = self._cum, self._total, self._random
        # random() < 1, so the point is < total and bisect stays below n.
        return [bisect_right(cum, rnd() * total) for _ in range(k)]

    def probability(self, i: int) -> float:
        lower = self._cum[i - 1] if i else 0.0
        return (self._cum[i] - lower) / self._total


def make_sampler(spec: WorkloadSpec, rng: random.Random):
    if spec.distribution == "zipf":
        return ZipfSampler(spec.keys, spec.zipf_s, rng)
    return UniformSampler(spec.keys, rng)


class RequestMaker:
    """Produces the bytes of the next n requests for one worker process."""

    def __init__(self, spec: WorkloadSpec, seed: int):
        rng = random.Random(seed)
        self._random = rng.random
        self._sampler = make_sampler(spec, rng)
        self._get_ratio = spec.get_ratio
        self._width = spec.multiget
        kf = key_format(spec.keys, spec.key_size)
        # One format for all `width` keys of a get: a single % call per request.
        self._get_fmt = b"get " + b" ".join([kf] * spec.multiget) + b"\r\n"
        self._set_fmts = [b"set " + kf + b" 0 0 %d\r\n" % size for size in spec.value_sizes]
        self._bodies = [value_body(size) for size in spec.value_sizes]
        self._tape: list[int] = []
        self._pos = 0
        self._block = max(KEY_BLOCK, 4 * spec.multiget)

    def requests(self, n: int) -> bytes:
        parts: list[bytes] = []
        append = parts.append
        rnd = self._random
        get_ratio, width = self._get_ratio, self._width
        get_fmt, set_fmts, bodies = self._get_fmt, self._set_fmts, self._bodies
        nsizes = len(bodies)
        tape, pos = self._tape, self._pos
        for _ in range(n):
            if pos + width > len(tape):
                tape = self._tape = self._sampler.block(self._block)
                pos = 0
            if rnd() < get_ratio:
                if width == 1:
                    append(get_fmt % tape[pos])
                else:
                    append(get_fmt % tuple(tape[pos:pos + width]))
                pos += width
            else:
                j = int(rnd() * nsizes) if nsizes > 1 else 0
                append(set_fmts[j] % tape[pos])
                append(bodies[j])
                pos += 1
        self._pos = pos
        return b"".join(parts)


def preload_requests(spec: WorkloadSpec, start: int, stop: int) -> bytes:
    """Set requests storing keys [start, stop); sizes cycle through the mix."""
    kf = key_format(spec.keys, spec.key_size)
    sizes = spec.value_sizes
    bodies = {size: value_body(size) for size in set(sizes)}
    parts = []
    for i in range(start, stop):
        size = sizes[i % len(sizes)]
        parts.append(b"set " + kf % i + b" 0 0 %d\r\n" % size)
        parts.append(bodies[size])
    return b"".join(parts)
