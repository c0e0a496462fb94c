"""Multi-buffer MD5 against hashlib, for every kernel this CPU runs.

hashlib is the reference path: each kernel is forced through the environment
variable, as a user would, and must give hashlib's digests bit for bit on
random stream counts and the lengths where MD5 padding changes shape.
"""

from __future__ import annotations

import hashlib
import os
import random

import pytest

from wiseverify.core import md5lanes as M

LENGTHS = [0, 1, 55, 56, 63, 64, 65, 119, 120, 127, 128, 129, 1000, (1 << 20) + 1]
CPU_FLAG = {"avx512": "avx512f", "avx2x2": "avx2", "avx2": "avx2", "scalar": None,
            "hashlib": None}


def _cpu_flags() -> set[str]:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def test_extension_built():
    assert M._MB is not None, "wiseverify.core._md5mb was not built: no C compiler?"
    assert set(M._MB.all_kernels()) == {"avx512", "avx2x2", "avx2", "scalar"}


@pytest.mark.parametrize("name", M.KERNEL_NAMES)
def test_kernel_matches_hashlib(name, monkeypatch):
    monkeypatch.setenv(M.ENV_KERNEL, name)
    flag = CPU_FLAG[name]
    if flag and flag not in _cpu_flags():
        # this CPU cannot run it: forcing it must say so, never hash wrongly
        with pytest.raises(M.KernelError, match="not available"):
            M.kernel()
        assert name not in M.available()
        return
    assert M.kernel() == name and name in M.available()
    rnd = random.Random(hash(name) & 0xFFFF)
    for _ in range(12):
        n = rnd.randint(1, 64)
        bufs = [rnd.randbytes(rnd.choice(LENGTHS)) for _ in range(n)]
        # unaligned views: every buffer starts at an odd address offset
        views = [memoryview(b"x" + b)[1:] for b in bufs]
        assert M.md5_many(views) == [hashlib.md5(b).digest() for b in bufs]


@pytest.mark.parametrize("name", ["avx2x2", "avx2", "scalar"])
def test_streams_fed_in_pieces(name, monkeypatch):
    """Unequal streams fed in several calls, cut anywhere, ended by finish()."""
    if CPU_FLAG[name] and CPU_FLAG[name] not in _cpu_flags():
        pytest.fail(f"this test machine is expected to run the {name} kernel")
    monkeypatch.setenv(M.ENV_KERNEL, name)
    rnd = random.Random(5)
    lanes = M.new_lanes()
    bufs = [rnd.randbytes(rnd.choice(LENGTHS)) for _ in range(40)]
    first = lanes.new(len(bufs))
    pieces = []
    for i, b in enumerate(bufs):
        cuts = sorted(rnd.randint(0, len(b)) for _ in range(rnd.randint(0, 4)))
        prev = 0
        for j, c in enumerate([*cuts, len(b)]):
            pieces.append((j, first + i, memoryview(b)[prev:c]))
            prev = c
    for j in range(6):
        # one call may carry several pieces of one stream: they are hashed in order
        batch = [(sid, v) for jj, sid, v in pieces if jj in (2 * j, 2 * j + 1)]
        if batch:
            lanes.update(batch)
    lanes.finish(list(range(first, first + len(bufs))))
    assert [lanes.digest(first + i) for i in range(len(bufs))] == \
        [hashlib.md5(b).digest() for b in bufs]


def test_misuse_is_refused(monkeypatch):
    monkeypatch.delenv(M.ENV_KERNEL, raising=False)
    lanes = M._MB.MD5Lanes("scalar")
    sid = lanes.new()
    with pytest.raises(ValueError, match="not finished"):
        lanes.digest(sid)
    with pytest.raises(IndexError, match="no stream 7"):
        lanes.update([(7, b"abc")])
    lanes.finish([sid])
    assert lanes.digest(sid) == hashlib.md5(b"").digest()
    with pytest.raises(ValueError, match="already finished"):
        lanes.update([(sid, b"more")])
    with pytest.raises(TypeError):
        lanes.update([(sid,)])
    with pytest.raises(ValueError, match="unknown MD5 kernel 'sse9'"):
        M._MB.MD5Lanes("sse9")
    monkeypatch.setenv(M.ENV_KERNEL, "sse9")
    with pytest.raises(M.KernelError, match="unknown MD5 kernel"):
        M.md5_many([b"a", b"b"])


def test_default_kernel_is_the_fastest_available(monkeypatch):
    monkeypatch.delenv(M.ENV_KERNEL, raising=False)
    flags = _cpu_flags()
    expected = ("avx512" if "avx512f" in flags else "avx2x2" if "avx2" in flags
                else "hashlib")
    assert M.kernel() == expected
    assert os.environ.get(M.ENV_KERNEL) is None
