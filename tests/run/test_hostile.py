"""Hostile source trees, changes during a run, HSM, read-only proof and secrets."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from wiseverify.core import schema as S
from wiseverify.core.config import VerifyConfig
from wiseverify.core.s3 import S3Target
from wiseverify.demo.locals3 import FAKE_CREDENTIALS
from wiseverify.digest import hashing as HASHING
from wiseverify.digest import units as D
from wiseverify.inventory import partition as INV
from wiseverify.inventory import s3list as S3LIST
from wiseverify.inventory import walk as WALK
from wiseverify.reconcile import checkpoint as CHECKPOINT
from wiseverify.reconcile import finish as FINISH
from wiseverify.reconcile import plan as R
from wiseverify.run.driver import verify

from ..conftest import read_table
from ..s3proxy import S3Proxy

MiB = 1 << 20


def need_root(what: str) -> None:
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail(f"{what} needs root, and CI runs as root")
        pytest.skip(f"{what} needs root")


@pytest.fixture(scope="module")
def hostile(s3, tmp_path_factory):
    base = tmp_path_factory.mktemp("hostile")
    root = base / "src"
    root.mkdir()
    bucket = "hostile-tree"
    c = s3.client()
    c.create_bucket(Bucket=bucket)
    expect: dict[str, str] = {}

    def both(rel: str, data: bytes) -> None:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        c.put_object(Bucket=bucket, Key="p/" + rel, Body=data)
        expect[rel] = S.MATCH

    both("empty.txt", b"")
    both("ctl/tab\there.txt", b"tab")
    both("ctl/esc\x1b[31m.txt", b"escape sequence")
    both("ctl/quote\"'<&>.txt", b"xml specials")
    both("/".join(f"l{i}" for i in range(45)) + "/deep.txt", b"45 levels down")
    # a newline in a name is a valid S3 key, but this endpoint cannot store it
    nl = root / "ctl" / "new\nline.txt"
    nl.write_bytes(b"newline")
    expect["ctl/new\nline.txt"] = S.MISSING_IN_DEST
    # a key over 1024 bytes (each component under NAME_MAX)
    long_rel = "/".join(["x" * 200] * 6) + "/f.txt"
    lp = root / long_rel
    lp.parent.mkdir(parents=True)
    lp.write_bytes(b"long")
    expect[long_rel] = S.NAME_UNMAPPABLE
    # sparse file: a hole in the middle
    sp = root / "sparse.bin"
    with open(sp, "wb") as f:
        f.write(b"head")
        f.seek(8 * MiB)
        f.write(b"tail")
    c.put_object(Bucket=bucket, Key="p/sparse.bin", Body=sp.read_bytes())
    expect["sparse.bin"] = S.MATCH
    # hardlinks: two keys, one inode
    both("hard/a.dat", os.urandom(5000))
    os.link(root / "hard" / "a.dat", root / "hard" / "b.dat")
    c.put_object(Bucket=bucket, Key="p/hard/b.dat", Body=(root / "hard" / "a.dat").read_bytes())
    expect["hard/b.dat"] = S.MATCH
    # kinds never opened
    os.symlink("loop_b", root / "loop_a")
    os.symlink("loop_a", root / "loop_b")
    os.mkfifo(root / "fifo")
    import socket

    s = socket.socket(socket.AF_UNIX)
    s.bind(str(root / "sock"))
    s.close()
    expect.update({"loop_a": S.SKIPPED, "loop_b": S.SKIPPED, "fifo": S.SKIPPED,
                   "sock": S.SKIPPED})
    if os.geteuid() == 0:
        os.mknod(root / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
        os.mknod(root / "blk", stat.S_IFBLK | 0o600, os.makedev(7, 0))
        expect.update({"null": S.SKIPPED, "blk": S.SKIPPED})
    # object keys that try to leave the prefix or the source root
    (base / "outside.txt").write_bytes(b"must never be read")
    for key in ("p/../outside.txt", "p//etc/passwd", "p/./x"):
        c.put_object(Bucket=bucket, Key=key, Body=b"must never be read")
    expect.update({"../outside.txt": S.EXTRA_IN_DEST, "/etc/passwd": S.EXTRA_IN_DEST,
                   "./x": S.EXTRA_IN_DEST})
    return root, bucket, expect


def _snapshot(root: Path) -> dict:
    snap = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            st = p.lstat()
            digest = None
            if stat.S_ISREG(st.st_mode):
                digest = hashlib.sha256(p.read_bytes()).hexdigest()
            snap[str(p)] = (st.st_mtime_ns, st.st_ctime_ns, st.st_size, digest)
    return snap


def test_hostile_tree_statuses_and_read_only(hostile, s3, dask_client, tmp_path):
    root, bucket, expect = hostile
    if os.geteuid() != 0 and os.environ.get("CI"):
        pytest.fail("CI runs as root: device files must be part of this tree")
    before = _snapshot(root)
    with S3Proxy(s3.url) as proxy:
        for mode in ("stored", "readback"):
            out = tmp_path / mode
            verify(VerifyConfig(str(root), f"s3://{bucket}/p", str(out), endpoint_url=proxy.url,
                                mode=mode, metadata="all"), dask_client, log=None)
            table = read_table(out)
            assert {k: r["status"] for k, r in table.items()} == expect, mode
            for k in ("../outside.txt", "/etc/passwd", "./x"):
                assert table[k]["src_size"] is None and table[k]["bytes_read_src"] is None
            assert "1024" in table[next(k for k in expect if k.startswith("xxx"))]["detail"]
            combined = (out / "combined.txt").read_text()
            assert "+ ctl/new\\nline.txt\n" in combined
    # read-only on both sides
    methods = {m for m, _ in proxy.requests}
    print(f"read-only: {len(proxy.requests)} requests checked, methods {sorted(methods)}; "
          f"{len(expect)} hostile keys")
    assert methods <= {"GET", "HEAD"}, methods
    assert proxy.mutating() == []
    assert len(proxy.requests) > 20
    assert _snapshot(root) == before


def test_file_deleted_between_listing_and_hashing(s3, bucket, tmp_path):
    """Stage by stage: list, plan, delete the file, digest, reconcile -> SOURCE_ERROR."""
    root = tmp_path / "src"
    root.mkdir()
    c = s3.client()
    for name in ("stays.txt", "goes.txt"):
        (root / name).write_bytes(name.encode() * 100)
        c.put_object(Bucket=bucket, Key="d/" + name, Body=(root / name).read_bytes())
    run = tmp_path / "run"
    target = S3Target.parse(f"s3://{bucket}/d", endpoint_url=s3.url)
    ctx = R.Context(root=str(root), target=target, run_dir=str(run), run_id="stagewise")
    src = WALK.walk_dirs(str(root), [b""], str(run / "s.parquet"))
    dst = S3LIST.list_prefix(target, "", False, str(run / "d.parquet"))
    INV.compact([src["spool"]], ctx.src_inv, 1, "c0")
    INV.compact([dst["spool"]], ctx.dst_inv, 1, "c0")
    plan = R.plan_partition(ctx, 0)
    os.unlink(root / "goes.txt")
    results = [CHECKPOINT.run_unit(ctx, plan["units"], i) for i in range(len(plan["units"]))]
    counts = FINISH.finish_partition(ctx, plan, *results)
    table = read_table(run)
    assert table["goes.txt"]["status"] == S.SOURCE_ERROR
    assert "vanished since listing" in table["goes.txt"]["detail"]
    assert table["stays.txt"]["status"] == S.MATCH
    assert counts["counts"] == {S.MATCH: 1, S.SOURCE_ERROR: 1}


def test_file_growing_while_hashed(tmp_path, monkeypatch):
    """A write lands between the digest stage's reads: after the first buffer, always."""
    p = tmp_path / "growing.log"
    p.write_bytes(os.urandom(4 * D.BUFFER_SIZE))
    st = p.stat()
    item = D.FileItem(0, str(p), st.st_size, st.st_mtime_ns, D.Spec(whole=("md5", "sha256")))
    real, reads = os.preadv, []

    def preadv(fd, bufs, offset):
        if len(reads) == 1:
            with open(p, "ab") as f:
                f.write(b"appended while hashing")
        reads.append(offset)
        return real(fd, bufs, offset)

    monkeypatch.setattr(HASHING.os, "preadv", preadv)
    res = HASHING.hash_source_range(D.RangeTask(item, 0, st.st_size))
    assert len(reads) == 4  # the whole listed size was read, then the change was seen
    assert res["error"] and res["error"].startswith("changed while hashing"), res


def test_hsm_released_files_are_never_opened(s3, bucket, tmp_path, monkeypatch):
    """A stand-in ``lfs`` reports one file released: it is SKIPPED and in no digest unit."""
    root = tmp_path / "src"
    root.mkdir()
    c = s3.client()
    for name in ("online.bin", "released.bin"):
        p = root / name
        with open(p, "wb") as f:  # sparse, as a released file looks to stat
            f.seek(4 * MiB)
            f.write(b"end")
        c.put_object(Bucket=bucket, Key="h/" + name, Body=p.read_bytes())
    bindir = tmp_path / "bin"
    bindir.mkdir()
    calls = tmp_path / "lfs-calls"
    lfs = bindir / "lfs"
    lfs.write_text(
        "#!/bin/sh\n"
        f'echo "$@" >> {calls}\n'
        '[ "$1" = hsm_state ] || exit 2\nshift\n'
        'for f in "$@"; do case "$f" in\n'
        '  */released.bin) echo "$f: (0x0000000d) released exists archived, archive_id:1";;\n'
        '  *) echo "$f: (0x00000009) exists archived, archive_id:1";;\n'
        "esac; done\n"
    )
    lfs.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    run = tmp_path / "run"
    target = S3Target.parse(f"s3://{bucket}/h", endpoint_url=s3.url)
    ctx = R.Context(root=str(root), target=target, run_dir=str(run), run_id="hsm")
    src = WALK.walk_dirs(str(root), [b""], str(run / "s.parquet"))
    dst = S3LIST.list_prefix(target, "", False, str(run / "d.parquet"))
    INV.compact([src["spool"]], ctx.src_inv, 1, "c0")
    INV.compact([dst["spool"]], ctx.dst_inv, 1, "c0")
    plan = R.plan_partition(ctx, 0)
    opened = {r.item.path for u in plan["units"] for r in u.ranges}
    assert opened == {os.fsencode(root / "online.bin")}
    results = [CHECKPOINT.run_unit(ctx, plan["units"], i) for i in range(len(plan["units"]))]
    FINISH.finish_partition(ctx, plan, *results)
    table = read_table(run)
    assert table["released.bin"]["status"] == S.SKIPPED
    assert "HSM released" in table["released.bin"]["detail"]
    assert table["online.bin"]["status"] == S.MATCH
    assert "hsm_state" in calls.read_text()


def test_no_credential_in_any_output(s3, bucket, tmp_path):
    secret = FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"]
    root = tmp_path / "src"
    root.mkdir()
    (root / "f.txt").write_bytes(b"data")
    s3.client().put_object(Bucket=bucket, Key="s/f.txt", Body=b"data")
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "wiseverify.cli", "verify", str(root), f"s3://{bucket}/s",
         "--out", str(out), "--endpoint-url", s3.url, "--workers", "1"],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert secret not in proc.stdout + proc.stderr
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) >= 5
    for p in files:
        assert secret.encode() not in p.read_bytes(), p


def test_embedded_cluster_binds_to_loopback():
    from wiseverify.deploy.cluster import open_client

    with open_client(workers=1, threads_per_worker=1) as client:
        assert client.scheduler.address.startswith("tcp://127.0.0.1:")
        info = client.scheduler_info()
        for addr in info["workers"]:
            assert addr.startswith("tcp://127.0.0.1:")
        link = client.dashboard_link
        assert "127.0.0.1" in link


def test_max_open_files_is_honoured(s3, bucket, run_verify, tmp_path):
    """A cluster of 4 threads with --max-open-files 1 never reads two source files at once."""
    root = tmp_path / "src"
    root.mkdir()
    c = s3.client()
    for i in range(600):
        data = os.urandom(2000 + i)
        (root / f"f{i:03d}").write_bytes(data)
        c.put_object(Bucket=bucket, Key=f"m/f{i:03d}", Body=data)
    for cap in (1, 2):
        summary, table = run_verify(root, f"s3://{bucket}/m", mode="readback", full=True,
                                    max_open_files=cap)
        units = summary["digest_units"]
        assert units["units"] >= 6  # enough units that 4 threads would overlap them
        assert 1 <= units["max_concurrent"] <= cap
        assert summary["counts"][S.MATCH] == 600
