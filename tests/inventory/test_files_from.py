"""--files-from: exactly the listed keys, no walk, no full listing; the remediation round trip."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from wiseverify.core import schema as S
from wiseverify.core.config import VerifyConfig
from wiseverify.inventory.files_from import read_files_from
from wiseverify.inventory.sources import IngestError
from wiseverify.run.driver import verify

from ..conftest import read_table
from ..s3proxy import S3Proxy


def test_list_syntax(tmp_path):
    f = tmp_path / "l.txt"
    f.write_bytes(b"a/b.txt\r\n/c.txt\n\na/b.txt\nd/\n")
    assert read_files_from(str(f)) == [b"a/b.txt", b"c.txt", b"d"]
    f.write_bytes(b"ok\n../etc/passwd\n")
    with pytest.raises(IngestError, match=r"l.txt:line 2: '../etc/passwd' is not a path"):
        read_files_from(str(f))
    f.write_bytes(b"with\nnewline\0other\0")
    assert read_files_from(str(f), nul=True) == [b"with\nnewline", b"other"]
    f.write_bytes(b"\n\n")
    with pytest.raises(IngestError, match="lists no key"):
        read_files_from(str(f))


def _tree(root: Path, c, bucket: str) -> dict[str, bytes]:
    files = {f"d{d}/f{i}.txt": f"{d}-{i}".encode() * 10 for d in range(4) for i in range(30)}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
        c.put_object(Bucket=bucket, Key=f"ff/{rel}", Body=data)
    return files


def test_only_listed_keys_and_no_full_listing(tmp_path, s3, bucket, dask_client):
    root = tmp_path / "src"
    c = s3.client()
    _tree(root, c, bucket)
    c.put_object(Bucket=bucket, Key="ff/d3/only-in-dest.txt", Body=b"x")
    listed = tmp_path / "keys.txt"
    listed.write_text("d1/f3.txt\nd1/f4.txt\nd2/f0.txt\nd2/nowhere.txt\nd3/only-in-dest.txt\n"
                      "d0\n")
    out = tmp_path / "run"
    with S3Proxy(s3.url) as proxy:
        summary = verify(VerifyConfig(source=str(root), dest=f"s3://{bucket}/ff", out=str(out),
                                      endpoint_url=proxy.url, files_from=str(listed)),
                         dask_client, log=None)
    rows = read_table(out)
    assert sorted(rows) == ["d1/f3.txt", "d1/f4.txt", "d2/f0.txt", "d2/nowhere.txt",
                            "d3/only-in-dest.txt"]
    assert rows["d1/f3.txt"]["status"] == S.MATCH
    assert rows["d2/nowhere.txt"]["status"] == S.NOT_FOUND
    assert "no source file and no object" in rows["d2/nowhere.txt"]["detail"]
    assert rows["d3/only-in-dest.txt"]["status"] == S.EXTRA_IN_DEST
    ing = summary["ingest"]
    assert ing["files_from_keys"] == 6 and ing["files_from_directories"] == 1
    assert ing["files_from_absent_on_source"] == 2
    lists = [parse_qs(urlsplit(p).query) for m, p in proxy.requests
             if m == "GET" and "list-type=2" in p]
    prefixes = sorted(q["prefix"][0] for q in lists)
    # one non-recursive listing per directory of the listed keys: never the whole bucket
    assert prefixes == ["ff/", "ff/d1/", "ff/d2/", "ff/d3/"]
    assert all(q.get("delimiter") == ["/"] for q in lists)
    assert summary["inventory"]["metadata_ops"] == 6  # one lstat per listed key, no walk
    assert proxy.mutating() == []


def test_remediation_round_trip(tmp_path, s3, bucket, run_verify):
    """A failing run's lists, a re-copy of exactly those files, a re-check of exactly those."""
    root = tmp_path / "src"
    c = s3.client()
    files = _tree(root, c, bucket)
    c.delete_object(Bucket=bucket, Key="ff/d0/f1.txt")  # missing
    c.put_object(Bucket=bucket, Key="ff/d2/f7.txt", Body=b"corrupt")  # another size
    c.put_object(Bucket=bucket, Key="ff/d3/f9.txt", Body=files["d3/f9.txt"][:-1] + b"!")
    summary, rows = run_verify(root, f"s3://{bucket}/ff")
    assert summary["verdict"] == "FAIL"
    lists = _last_run(tmp_path) / "lists"
    missing = (lists / "missing-on-dst.txt").read_text().splitlines()
    differ = (lists / "differ.txt").read_text().splitlines()
    assert missing == ["d0/f1.txt"]
    assert sorted(differ) == ["d2/f7.txt", "d3/f9.txt"]
    # the re-copy, as `rclone copy --files-from-raw` would do it
    todo = tmp_path / "recopy.txt"
    todo.write_text("\n".join(missing + differ) + "\n")
    for rel in todo.read_text().splitlines():
        c.put_object(Bucket=bucket, Key=f"ff/{rel}", Body=(root / rel).read_bytes())
    again, rows2 = run_verify(root, f"s3://{bucket}/ff", files_from=str(todo))
    assert sorted(rows2) == sorted(missing + differ)
    assert {r["status"] for r in rows2.values()} == {S.MATCH}
    assert again["verdict"] == "PASS"


def _last_run(tmp_path: Path) -> Path:
    runs = sorted(p for p in tmp_path.glob("run*") if (p / "summary.json").is_file())
    return runs[-1]


def test_cannot_combine_with_filters(tmp_path, s3, bucket):
    import subprocess
    import sys

    src = tmp_path / "src"
    src.mkdir()
    keys = tmp_path / "k.txt"
    keys.write_text("a.txt\n")
    proc = subprocess.run([sys.executable, "-m", "wiseverify.cli", "verify", str(src),
                           f"s3://{bucket}/w", "--out", str(tmp_path / "r"), "--endpoint-url",
                           s3.url, "--files-from", str(keys), "--exclude", "*.tmp"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "wiseverify: error: --files-from checks exactly the listed keys; it cannot be combined "
        "with --include, --exclude or --filter-from"]
