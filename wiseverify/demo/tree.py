"""The embedded default run: a demo tree, a local S3 endpoint and injected discrepancies.

:func:`build_fixture` is also what the end-to-end tests verify against: it
returns the status every key must get.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import socket
import unicodedata
from collections.abc import Callable
from pathlib import Path

from wiseverify.core import schema as S
from wiseverify.demo.locals3 import FAKE_CREDENTIALS, LocalS3, posix_metadata, put_multipart

MiB = 1 << 20


def _write(path: Path, data: bytes) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def build_fixture(root: Path, s3: LocalS3, bucket: str, prefix: str = "wise/",
                  seed: int = 7, create_bucket: bool = True) -> dict[str, str]:
    """Create a source tree under ``root`` and its copy in ``s3://bucket/prefix``.

    Returns ``{key: expected status}`` for every key either side holds.  ``s3`` is
    anything with ``client(checksums=)``: the local endpoint, or the team's own
    (``wiseverify qualify --against``, where the bucket must exist already).
    """
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    plain = s3.client(checksums=False)
    crc = s3.client(checksums=True)
    if create_bucket:
        with contextlib.suppress(plain.exceptions.BucketAlreadyOwnedByYou):
            plain.create_bucket(Bucket=bucket)
    # a neighbour prefix that must never be listed as part of wise/
    plain.put_object(Bucket=bucket, Key=prefix.rstrip("/") + "-old/stale.txt", Body=b"old")
    plain.put_object(Bucket=bucket, Key=prefix + "docs/", Body=b"")  # folder marker
    expect: dict[str, str] = {}

    def put(key: str, data: bytes, checksum: str | None = None, **kw) -> None:
        c = crc if checksum else plain
        extra = {"ChecksumAlgorithm": checksum} if checksum else {}
        c.put_object(Bucket=bucket, Key=prefix + key, Body=data, **extra, **kw)

    # many small files: single-part ETags, a third with a stored CRC64NVME
    for i in range(60):
        key = f"docs/section{i % 4}/note_{i:03d}.txt"
        data = _write(root / key, f"note {i}\n".encode() * rng.randint(1, 400))
        put(key, data, "CRC64NVME" if i % 3 == 0 else None)
        expect[key] = S.MATCH
    for i in range(6):
        key = f"data/run{i}/empty_{i}.csv" if i == 0 else f"data/run{i}/table.csv"
        data = _write(root / key, b"" if i == 0 else rng.randbytes(rng.randint(1, 200_000)))
        put(key, data)
        expect[key] = S.MATCH

    # large single-part object with a stored CRC64NVME: one HEAD, CRC instead of MD5
    key = "big/matrix.bin"
    put(key, _write(root / key, rng.randbytes(6 * MiB)), "CRC64NVME")
    expect[key] = S.MATCH
    # multipart, ETag only (an old Snowball-style import): layout from HEAD PartNumber=1
    key = "big/multipart_ok.bin"
    data = _write(root / key, rng.randbytes(13 * MiB + 12345))
    put_multipart(plain, bucket, prefix + key, data, 5 * MiB)
    expect[key] = S.MATCH
    # multipart with a SHA256 composite checksum
    key = "big/sha_composite.bin"
    data = _write(root / key, rng.randbytes(11 * MiB))
    put_multipart(crc, bucket, prefix + key, data, 5 * MiB, checksum="SHA256")
    expect[key] = S.MATCH
    # bit flip in the middle part of an ETag-only multipart object
    key = "big/multipart_flip.bin"
    data = _write(root / key, rng.randbytes(15 * MiB + 999))
    bad = bytearray(data)
    bad[5 * MiB + 2 * MiB] ^= 0x10
    put_multipart(plain, bucket, prefix + key, bytes(bad), 5 * MiB)
    expect[key] = S.CONTENT_MISMATCH
    # multipart, ETag only, in a legal but irregular layout (6, 5, 7 MiB and a 1 MiB tail):
    # part 1 and the size fit 6 MiB parts, so the mismatch is confirmed against every part
    key = "big/multipart_irregular.bin"
    data = _write(root / key, rng.randbytes(19 * MiB))
    put_multipart(plain, bucket, prefix + key, data, [6 * MiB, 5 * MiB, 7 * MiB, 1 * MiB])
    expect[key] = S.MATCH
    # same size, different bytes, single part
    key = "docs/edited.txt"
    data = _write(root / key, b"approved version 1\n")
    put(key, b"approved version 2\n")
    expect[key] = S.CONTENT_MISMATCH
    # truncated upload
    key = "data/truncated.csv"
    data = _write(root / key, rng.randbytes(300_000))
    put(key, data[:250_000])
    expect[key] = S.SIZE_MISMATCH
    # never uploaded
    key = "data/missing.csv"
    _write(root / key, b"a,b\n1,2\n")
    expect[key] = S.MISSING_IN_DEST
    # only in the destination
    put("data/extra.csv", b"x,y\n")
    expect["data/extra.csv"] = S.EXTRA_IN_DEST
    # NFC on the source, NFD in the destination
    key = unicodedata.normalize("NFC", "docs/caf\u00e9-r\u00e9sum\u00e9.txt")
    data = _write(root / key, b"resume\n")
    put(unicodedata.normalize("NFD", key), data)
    expect[key] = S.NAME_MISMATCH
    # stored POSIX metadata (FSx/DataSync layout): one right, one with a wrong mode
    for name, wrong in (("meta/good.bin", False), ("meta/perm.bin", True)):
        p = root / name
        data = _write(p, rng.randbytes(5 * MiB))
        os.chmod(p, 0o640)
        meta = posix_metadata(p.lstat())
        if wrong:
            meta["file-permissions"] = "0100666"
        put(name, data, "CRC64NVME", Metadata=meta)
        expect[name] = S.METADATA_MISMATCH if wrong else S.MATCH
    # a small single-part object (no HEAD wanted for its content) with a wrong file-mtime:
    # the metadata sample of meta/ finds file-* keys, so every object there is HEADed
    p = root / "meta" / "small_mtime.txt"
    data = _write(p, b"small file, stored mtime wrong\n")
    meta = posix_metadata(p.lstat())
    meta["file-mtime"] = f"{p.lstat().st_mtime_ns - 3_600_000_000_000}ns"
    put("meta/small_mtime.txt", data, Metadata=meta)
    expect["meta/small_mtime.txt"] = S.METADATA_MISMATCH
    # names and kinds that are never opened or cannot be keys
    raw = os.fsencode(root) + b"/data/caf\xe9.txt"
    with open(raw, "wb") as f:
        f.write(b"latin-1 name\n")
    expect["data/caf\\xe9.txt"] = S.NAME_UNMAPPABLE
    os.symlink("../docs/edited.txt", root / "data" / "link.txt")
    expect["data/link.txt"] = S.SKIPPED
    os.mkfifo(root / "data" / "pipe")
    expect["data/pipe"] = S.SKIPPED
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(root / "data" / "sock"))
    sock.close()
    expect["data/sock"] = S.SKIPPED
    return expect


def run_demo(out: str, cli_main: Callable[[list[str]], int], workers: int | None = None) -> int:
    """Build the demo, verify it, print the summary; exit 0 when every status is as expected.

    ``cli_main`` runs ``wiseverify verify`` as a user would (the CLI hands in its
    own entry point, so the demo does not import the command line).
    """
    import pyarrow.dataset as ds

    base = Path(out).absolute()
    if base.exists():
        shutil.rmtree(base)
    base.mkdir(parents=True)
    for k, v in FAKE_CREDENTIALS.items():
        os.environ.setdefault(k, v)
    print(f"demo: building a source tree under {base / 'source'}", flush=True)
    with LocalS3(log_path=str(base / "moto.log")) as s3:
        print(f"demo: local S3 endpoint {s3.url} (moto server)", flush=True)
        expect = build_fixture(base / "source", s3, "demo-bucket", "wise/")
        print("demo: uploaded to s3://demo-bucket/wise/ with injected discrepancies: missing, "
              "extra, truncated, a bit flip in a multipart object with no stored checksum, "
              "an NFD key, a wrong stored mode and mtime", flush=True)
        argv = ["verify", str(base / "source"), "s3://demo-bucket/wise/", "--out",
                str(base / "run"), "--endpoint-url", s3.url]
        if workers:
            argv += ["--workers", str(workers)]
        print("demo: wiseverify " + " ".join(argv), flush=True)
        code = cli_main(argv)
    if code not in (0, 1):
        return code
    got = dict(
        (r["key"], r["status"])
        for r in ds.dataset(base / "run" / "reconciliation").to_table(
            columns=["key", "status"]).to_pylist()
    )
    wrong = {k: (v, got.get(k)) for k, v in expect.items() if got.get(k) != v}
    if wrong:
        for k, (want, have) in sorted(wrong.items()):
            print(f"demo: UNEXPECTED {k!r}: expected {want}, got {have}")
        return 1
    print(f"demo: all {len(expect)} keys have their expected status; outputs in {base / 'run'}"
          " (reconciliation/, summary.json, combined.txt, discrepancies.csv, report.html, "
          "manifest.json)")
    return 0
