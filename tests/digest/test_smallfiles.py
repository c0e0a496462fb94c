"""The small-file loop: the C reads (``_smallread``) and the Python reference agree, rule by rule."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

from awscrt import checksums

from wiseverify.digest import smallfiles as SF


def _listed(path) -> tuple[bytes, int, int]:
    st = os.lstat(path)
    return os.fsencode(path), st.st_size, st.st_mtime_ns


def _cases(tmp_path) -> tuple[list[tuple[bytes, int, int]], set[str]]:
    """Listed rows of every kind the rules tell apart; returns them and the names that read."""
    rows, good = [], set()

    def f(name: str, data: bytes) -> str:
        p = tmp_path / name
        p.write_bytes(data)
        return str(p)

    for i, size in enumerate((0, 1, 1023, 4096, 70_000)):
        p = f(f"ok{i}", os.urandom(size))
        rows.append(_listed(p))
        good.add(p)
    p = f("grew", b"abc")  # written since listing: size differs
    b, size, m = _listed(p)
    rows.append((b, size - 1, m))
    p = f("touched", b"abc")  # mtime differs
    b, size, m = _listed(p)
    rows.append((b, size, m + 1))
    p = f("whole-seconds", b"listed to the second")  # a listing of second resolution
    b, size, m = _listed(p)
    rows.append((b, size, m - m % 1_000_000_000))
    good.add(p)
    os.mkfifo(tmp_path / "fifo")  # never waited on
    rows.append((os.fsencode(tmp_path / "fifo"), 0, os.lstat(tmp_path / "fifo").st_mtime_ns))
    os.symlink(tmp_path / "ok1", tmp_path / "link")  # never followed
    rows.append((os.fsencode(tmp_path / "link"), 1, os.lstat(tmp_path / "ok1").st_mtime_ns))
    rows.append((os.fsencode(tmp_path / "gone"), 3, 0))
    (tmp_path / "dir").mkdir()
    rows.append(_listed(tmp_path / "dir"))
    return rows, good


def test_native_and_reference_loops_agree_on_every_rule(tmp_path):
    assert SF._SR is not None, "wiseverify.digest._smallread was not built: no C compiler?"
    rows, good = _cases(tmp_path)
    ref = SF.prehash_files(rows, native=False)
    nat = SF.prehash_files(rows, native=True)
    assert nat == ref
    assert {os.fsdecode(r[0]) for r in nat} == good
    for path, size, _, md5, crc in nat:
        data = Path(os.fsdecode(path)).read_bytes()
        assert len(data) == size
        assert md5 == hashlib.md5(data).digest()
        assert crc == checksums.crc64nvme(data)


def test_native_loop_batches_and_stops_like_the_reference(tmp_path):
    rows = []
    for i in range(700):  # more than one batch of SMALL_BATCH_FILES
        p = tmp_path / f"f{i:04d}"
        p.write_bytes(os.urandom(i % 300))
        rows.append(_listed(p))
    assert SF.prehash_files(rows, native=True) == SF.prehash_files(rows, native=False)

    def stop_after(k: int):
        asked = []

        def stop() -> bool:  # asked every 32 files
            asked.append(1)
            return len(asked) > k

        return stop

    assert len(SF.prehash_files(rows, stop_after(3), native=True)) == 96
    assert len(SF.prehash_files(rows, stop_after(3), native=False)) == 96


def test_native_loop_runs_in_many_threads_at_once(tmp_path):
    rows = []
    for i in range(400):
        p = tmp_path / f"g{i:04d}"
        p.write_bytes(os.urandom(100 + i))
        rows.append(_listed(p))
    want = SF.prehash_files(rows, native=False)
    got: list = [None] * 4

    def one(k: int) -> None:
        got[k] = SF.prehash_files(rows, native=True)

    threads = [threading.Thread(target=one, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(g == want for g in got)


def test_several_readers_per_batch_read_the_same(tmp_path, monkeypatch):
    """Batches judged cold are read by several threads at once: same rows, same order."""
    rows, _ = _cases(tmp_path)
    for i in range(300):
        p = tmp_path / f"h{i:04d}"
        p.write_bytes(os.urandom(i))
        rows.append(_listed(p))
    want = SF.prehash_files(rows, native=False)
    monkeypatch.setattr(SF, "COLD_SECONDS_PER_FILE", 0.0)  # every batch judged cold
    for readers in (1, 3, 8):
        monkeypatch.setattr(SF, "READ_THREADS", readers)
        assert SF.prehash_files(rows, native=True) == want
