"""Ingest instead of listing, on realistic samples made here from a real tree and bucket.

* a NUL-separated ``find -printf`` listing gives the table a walk gives, and an
  ``lfs find``-style listing (newline-separated, whole seconds) the same verdicts;
* an S3 Inventory report (manifest.json + gzip CSV without header, URL-encoded
  keys; and Parquet) gives the table a ListObjectsV2 listing gives;
* a compute-checksum completion report replaces the HEADs: no request and no byte
  for the objects it covers, and a corrupted object is still caught.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import os
import random
import subprocess
import sys
import unicodedata
from pathlib import Path
from urllib.parse import quote_plus, unquote, urlsplit

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from awscrt import checksums as crt

from wiseverify.core import checksums as D
from wiseverify.core import schema as S
from wiseverify.core.config import VerifyConfig
from wiseverify.core.errors import ConfigError
from wiseverify.demo.locals3 import posix_metadata, put_multipart
from wiseverify.inventory import listing_file as LISTING_FILE
from wiseverify.inventory import s3_inventory as INGEST
from wiseverify.run.driver import verify
from wiseverify.run.prepare import prepare

from ..conftest import read_table
from ..s3proxy import S3Proxy

MiB = 1 << 20
BUCKET = "ingest-tree"
PREFIX = "p/"
RUN_SPECIFIC = {"partition", "evidence_run"}
#: a listing has no ctime or inode unless asked for (%C@, %i)
NOT_LISTED = {"src_ctime_ns", "src_ino"}
NFC_NAME = unicodedata.normalize("NFC", "data/r\u00e9sum\u00e9.csv")
PRINTF = "%s %T@ %U %G %m %y %b %p"


def comparable(table: dict, drop: set = frozenset()) -> dict:
    skip = RUN_SPECIFIC | set(drop)
    return {k: {c: v for c, v in r.items() if c not in skip} for k, r in table.items()}


@pytest.fixture(scope="module")
def tree(s3, tmp_path_factory):
    """A source tree and its upload with every kind of difference an ingest must keep."""
    root = tmp_path_factory.mktemp("ingest") / "src"
    rng = random.Random(11)
    plain, crc = s3.client(), s3.client(checksums=True)
    plain.create_bucket(Bucket=BUCKET)

    def src(rel, data: bytes):
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        return data

    def put(rel, data, client=plain, **kw):
        client.put_object(Bucket=BUCKET, Key=PREFIX + rel, Body=data, **kw)

    for rel in ("docs/readme.txt", "docs/space name.txt", "docs/plus+sign%20.txt", "empty.txt"):
        put(rel, src(rel, rng.randbytes(0 if rel == "empty.txt" else 2000)))
    put("docs/", b"")  # a folder marker
    put(unicodedata.normalize("NFD", NFC_NAME), src(NFC_NAME, b"a;b\n1;2\n"))
    src("data/missing.dat", b"never uploaded")
    put("data/extra.dat", b"only in the bucket")
    put("data/short.bin", src("data/short.bin", rng.randbytes(500))[:400])
    flip = src("data/flip.bin", rng.randbytes(1000))
    put("data/flip.bin", flip[:100] + bytes([flip[100] ^ 1]) + flip[101:])
    for i in range(4):
        put(f"crc/c{i}.bin", src(f"crc/c{i}.bin", rng.randbytes(100_000)), crc,
            ChecksumAlgorithm="CRC64NVME")
    put_multipart(plain, BUCKET, PREFIX + "big/multi.bin",
                  src("big/multi.bin", rng.randbytes(10 * MiB + 12345)), 5 * MiB)
    stamped = src("meta/stamped.bin", rng.randbytes(300))
    put("meta/stamped.bin", stamped, Metadata=posix_metadata(os.stat(root / "meta/stamped.bin")))
    src("odd/new\nline.txt", b"moto cannot store a key with a newline")
    (root / "odd").joinpath(os.fsdecode(b"caf\xe9.txt")).write_bytes(b"latin-1 name")
    os.mkfifo(root / "odd" / "fifo")
    os.symlink("../docs/readme.txt", root / "odd" / "link")
    plain.put_object(Bucket=BUCKET, Key="other/outside.txt", Body=b"not under the prefix")
    return root


def run(dask_client, s3, tmp_path_factory, root, endpoint=None, **kw):
    out = tmp_path_factory.mktemp("run") / "r"
    cfg = VerifyConfig(str(root), f"s3://{BUCKET}/{PREFIX}", str(out),
                       endpoint_url=endpoint or s3.url, full=True, **kw)
    summary = verify(cfg, dask_client, log=None)
    return summary, read_table(out)


@pytest.fixture(scope="module")
def baseline(tree, dask_client, s3, tmp_path_factory):
    """The walk and ListObjectsV2 run every ingest run is compared with."""
    summary, table = run(dask_client, s3, tmp_path_factory, tree)
    st = {k: r["status"] for k, r in table.items()}
    assert st["docs/readme.txt"] == S.MATCH
    assert st[NFC_NAME] == S.NAME_MISMATCH
    assert st["data/flip.bin"] == S.CONTENT_MISMATCH
    assert st["odd/new\nline.txt"] == S.MISSING_IN_DEST
    assert st["odd/caf\\xe9.txt"] == S.NAME_UNMAPPABLE
    assert st["odd/fifo"] == st["odd/link"] == S.SKIPPED
    assert table["big/multi.bin"]["verified_by"] == "etag-multipart"
    return table


# --- source listings ------------------------------------------------------------------------


def find_listing(root: Path, out: Path, fmt: str, end: str) -> str:
    """The real tool's output: GNU find -printf (lfs find --printf takes the same directives)."""
    with open(out, "wb") as f:
        subprocess.run(["find", str(root), "-printf", fmt + end], stdout=f, check=True)
    return str(out)


def test_nul_listing_gives_the_walk_table(tree, baseline, dask_client, s3, tmp_path_factory,
                                          tmp_path):
    listing = find_listing(tree, tmp_path / "tree.lst0", PRINTF, "\\0")
    assert b"new\nline" in Path(listing).read_bytes()
    summary, table = run(dask_client, s3, tmp_path_factory, tree, source_listing=listing)
    assert comparable(table, NOT_LISTED) == comparable(baseline, NOT_LISTED)
    assert table["odd/caf\\xe9.txt"]["key_bytes"] == b"odd/caf\xe9.txt"
    ing = summary["ingest"]
    assert ing["source_listing"] == listing and ing["listing_format"] == PRINTF
    assert ing["listing_unparsed"] == 0 and ing["listing_outside"] == 0
    assert summary["inventory"]["source_directories"] == 7  # the root and its 6 directories


def test_lfs_style_listing_whole_seconds_and_newlines(tree, baseline, dask_client, s3,
                                                      tmp_path_factory, tmp_path):
    """lfs find prints %T@ in whole seconds and cannot print NUL: newline records."""
    # %Ts is GNU find's whole-seconds mtime: byte for byte what lfs find prints for %T@
    listing = find_listing(tree, tmp_path / "tree.lst", PRINTF.replace("%T@", "%Ts"), "\\n")
    summary, table = run(dask_client, s3, tmp_path_factory, tree, source_listing=listing,
                         listing_format=PRINTF + "\\n", metadata="all")
    assert {k: r["status"] for k, r in table.items()} == {
        k: r["status"] for k, r in baseline.items()}
    assert summary["ingest"]["listing_multiline"] == 1  # the name with a newline, rejoined
    # second resolution does not read as "changed since listing" nor as a metadata change
    stamped = table["meta/stamped.bin"]
    assert stamped["status"] == S.MATCH and stamped["metadata_checked"] is True
    assert stamped["src_mtime_ns"] % 1_000_000_000 == 0


def test_listing_ranges_cut_anywhere(tree, tmp_path):
    """Records split over range boundaries, names with newlines, a damaged record."""
    for end, fmt in (("\\0", PRINTF), ("\\n", PRINTF.replace("%T@", "%Ts"))):
        listing = Path(find_listing(tree, tmp_path / "l", fmt, end))
        sep = LISTING_FILE.detect_separator(str(listing))
        assert sep == (b"\0" if end == "\\0" else b"\n")
        with open(listing, "ab") as f:
            f.write(b"garbage without fields" + sep)
        results = []
        for chunk in (listing.stat().st_size, 97, 13, 1):
            rows = []
            for i, job in enumerate(LISTING_FILE.listing_jobs(str(listing), None, chunk)):
                res = LISTING_FILE.parse_listing_range(
                    job.listing, str(tree), job.start, job.end, job.fmt, job.sep, PREFIX,
                    str(tmp_path / f"s{i}.parquet"))
                if res["spool"]:
                    rows += pq.read_table(res["spool"]).to_pylist()
            results.append(sorted((r["key"], r["kind"], r["size"], r["error"]) for r in rows))
        assert results[0] == results[1] == results[2] == results[3]
        keys = {r[0] for r in results[0]}
        assert "odd/new\nline.txt" in keys and "odd/caf\\xe9.txt" in keys
        if sep == b"\0":  # a NUL record that is not a record is a SOURCE_ERROR row
            assert [r for r in results[0] if r[3]][0][0] == "garbage without fields"
        else:  # a newline one continues the name before it, as a name with a newline would
            assert not any(r[3] for r in results[0])


def test_listing_configuration_errors(tree, s3, tmp_path):
    listing = find_listing(tree, tmp_path / "l", PRINTF, "\\0")

    def err(**kw) -> str:
        kw = {"source": str(tree), **kw}
        cfg = VerifyConfig(dest=f"s3://{BUCKET}/{PREFIX}", out=str(tmp_path / "r"),
                           endpoint_url=s3.url, **kw)
        with pytest.raises(ConfigError) as exc:
            prepare(cfg)
        return str(exc.value)

    assert "not with the source" in err(source=str(tree / "docs"), source_listing=listing)
    assert "is not in the format" in err(source_listing=listing,
                                         listing_format="%s %T@ %U %G %m %y %i %b %p")
    assert "lacks %T@" in err(source_listing=listing, listing_format="%s %U %G %m %p")
    assert "%p last" in err(source_listing=listing, listing_format="%p %s %T@ %U %G %m")
    assert "listing_format" not in err(listing_format="%s %T@ %U %G %m %p")
    assert "readback" in err(checksum_report=listing, mode="readback")
    assert "does not exist" in err(checksum_report=f"s3://{BUCKET}/reports/none.csv")


# --- S3 Inventory -----------------------------------------------------------------------------

CSV_SCHEMA = ("Bucket, Key, VersionId, IsLatest, IsDeleteMarker, Size, LastModifiedDate, ETag, "
              "IsMultipartUploaded, StorageClass, ChecksumAlgorithm")


def inventory_rows(s3) -> list[dict]:
    """The bucket as S3 Inventory would describe it, from a real listing, plus two rows only
    a versioned inventory has: an older version and a delete marker."""
    rows = []
    for page in s3.client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for o in page.get("Contents", ()):
            etag = o["ETag"].strip('"')
            rows.append({"bucket": BUCKET, "key": o["Key"], "version_id": "v2",
                         "is_latest": True, "is_delete_marker": False, "size": o["Size"],
                         "last_modified_date": o["LastModified"], "e_tag": etag,
                         "is_multipart_uploaded": "-" in etag,
                         "storage_class": o.get("StorageClass", "STANDARD"),
                         "checksum_algorithm": ",".join(o.get("ChecksumAlgorithm") or [])})
    readme = next(r for r in rows if r["key"] == PREFIX + "docs/readme.txt")
    old = dict(readme, version_id="v1", is_latest=False, size=7)
    gone = dict(readme, key=PREFIX + "data/deleted.dat", is_delete_marker=True, size=None,
                e_tag="", checksum_algorithm="")
    return [*rows, old, gone]


def _csv_gz(rows: list[dict]) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, quoting=csv.QUOTE_ALL, lineterminator="\n")
    for r in rows:
        lm = r["last_modified_date"]
        w.writerow([r["bucket"], quote_plus(r["key"], safe=""), r["version_id"],
                    str(r["is_latest"]).lower(), str(r["is_delete_marker"]).lower(),
                    "" if r["size"] is None else r["size"],
                    lm.strftime("%Y-%m-%dT%H:%M:%S.") + f"{lm.microsecond // 1000:03d}Z",
                    r["e_tag"], str(r["is_multipart_uploaded"]).lower(), r["storage_class"],
                    r["checksum_algorithm"]])
    return gzip.compress(buf.getvalue().encode())


def _parquet(rows: list[dict]) -> bytes:
    schema = pa.schema([("bucket", pa.string()), ("key", pa.string()),
                        ("version_id", pa.string()), ("is_latest", pa.bool_()),
                        ("is_delete_marker", pa.bool_()), ("size", pa.int64()),
                        ("last_modified_date", pa.timestamp("ms", tz="UTC")),
                        ("e_tag", pa.string()), ("is_multipart_uploaded", pa.bool_()),
                        ("storage_class", pa.string()), ("checksum_algorithm", pa.string())])
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), buf)
    return buf.getvalue()


def publish_inventory(s3, fmt: str, rows: list[dict]) -> str:
    """Store an inventory the way S3 delivers one; returns the manifest's s3:// URL."""
    c = s3.client()
    base = f"inventory/{BUCKET}/daily-{fmt.lower()}"
    files = []
    for i, part in enumerate((rows[::2], rows[1::2])):
        body, ext = (_csv_gz(part), "csv.gz") if fmt == "CSV" else (_parquet(part), "parquet")
        key = f"{base}/data/{hashlib.sha1(body).hexdigest()}-{i}.{ext}"
        c.put_object(Bucket="inventory-dest", Key=key, Body=body)
        files.append({"key": key, "size": len(body), "MD5checksum": hashlib.md5(body).hexdigest()})
    manifest = {
        "sourceBucket": BUCKET, "destinationBucket": "arn:aws:s3:::inventory-dest",
        "version": "2016-11-30", "creationTimestamp": "1795651200000", "fileFormat": fmt,
        "fileSchema": CSV_SCHEMA if fmt == "CSV" else
        "message s3.inventory { required binary bucket (STRING); required binary key "
        "(STRING); ... }",
        "files": files,
    }
    key = f"{base}/2026-11-26T00-00Z/manifest.json"
    c.put_object(Bucket="inventory-dest", Key=key, Body=json.dumps(manifest).encode())
    return f"s3://inventory-dest/{key}"


@pytest.fixture(scope="module")
def inventories(tree, s3):
    s3.client().create_bucket(Bucket="inventory-dest")
    rows = inventory_rows(s3)
    return {fmt: publish_inventory(s3, fmt, rows) for fmt in ("CSV", "Parquet")}


@pytest.mark.parametrize("fmt", ["CSV", "Parquet"])
def test_inventory_gives_the_listing_table(fmt, inventories, baseline, tree, dask_client, s3,
                                           tmp_path_factory):
    summary, table = run(dask_client, s3, tmp_path_factory, tree,
                         dest_inventory=inventories[fmt])
    assert comparable(table) == comparable(baseline)
    ing = summary["ingest"]
    assert ing["inventory_format"] == fmt.upper() and ing["inventory_files"] == 2
    assert ing["inventory_not_current"] == 2  # an older version and a delete marker
    assert ing["inventory_outside_prefix"] == 1  # other/outside.txt
    assert summary["inventory"]["folder_markers"] == 1
    assert summary["requests"]["list"] == 0


def test_inventory_local_copy_and_damage(inventories, s3, tmp_path):
    """A downloaded inventory (files found beside the manifest); a damaged file fails."""
    from wiseverify.core.s3 import S3Target

    target = S3Target.parse(f"s3://{BUCKET}/{PREFIX}", endpoint_url=s3.url)
    c = s3.client()
    key = inventories["CSV"][len("s3://inventory-dest/"):]
    manifest = json.loads(c.get_object(Bucket="inventory-dest", Key=key)["Body"].read())
    local = tmp_path / key
    local.parent.mkdir(parents=True)
    local.write_text(json.dumps(manifest))
    for f in manifest["files"]:
        p = tmp_path / "inventory" / f["key"].split("/", 1)[1]
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(c.get_object(Bucket="inventory-dest", Key=f["key"])["Body"].read())
    info, jobs = INGEST.inventory_plan(str(local), target)
    assert all(Path(j.url).is_file() for j in jobs)
    keys = set()
    for i, job in enumerate(jobs):
        res = INGEST.ingest_inventory_file(job.url, job.fmt, job.columns, job.md5, target,
                                           str(tmp_path / f"spool{i}"))
        assert res["error"] is None and res["count"] > 5
        keys |= set(pq.read_table(res["spools"][0][0]).column("key").to_pylist())
    # URL-encoded in the CSV, decoded here: '+' for a space, %2B for a plus, %25 for a percent
    assert {"docs/plus+sign%20.txt", "docs/space name.txt"} <= keys
    assert unicodedata.normalize("NFD", NFC_NAME) in keys
    j = jobs[0]
    res = INGEST.ingest_inventory_file(j.url, j.fmt, j.columns, "0" * 32, target,
                                       str(tmp_path / "spool2"))
    assert "differs from the manifest" in res["error"]


# --- S3 Batch Operations compute-checksum report ---------------------------------------------


def publish_checksum_report(s3) -> str:
    """A completion report as a compute-checksum job writes it, from the objects' bytes."""
    c = s3.client()
    ok, failed = io.StringIO(), io.StringIO()
    w_ok = csv.writer(ok, lineterminator="\n")
    w_failed = csv.writer(failed, lineterminator="\n")
    for page in c.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=PREFIX):
        for o in page.get("Contents", ()):
            key, etag = o["Key"], o["ETag"].strip('"')
            rel = key[len(PREFIX):]
            if rel.endswith("/") or rel == "docs/space name.txt":
                continue  # not in the job: such objects get their evidence the usual way
            enc = quote_plus(key, safe="")
            if rel == "data/short.bin":
                w_failed.writerow([BUCKET, enc, "", "failed", "403", "AccessDenied",
                                   "Access Denied"])
                continue
            data = c.get_object(Bucket=BUCKET, Key=key)["Body"].read()
            if rel == "big/multi.bin":  # a full-object MD5 of a multipart object
                algo, raw = "MD5", hashlib.md5(data).digest()
            elif rel == "docs/readme.txt":
                algo, raw = "SHA256", hashlib.sha256(data).digest()
            else:
                algo, raw = "CRC64NVME", D.crc_bytes("crc64nvme", crt.crc64nvme(data))
            if rel == "crc/c3.bin":
                etag = "0" * 32  # the job saw an older object: the entry must not count
            msg = {"checksum_base64": __import__("base64").b64encode(raw).decode(),
                   "etag": etag, "checksumAlgorithm": algo, "checksumType": "FULL_OBJECT",
                   "checksum_hex": raw.hex().upper()}
            w_ok.writerow([BUCKET, enc, "", "succeeded", "200", "", json.dumps(msg)])
    job = "reports/job-5f1e2d3c-aaaa-bbbb-cccc-0123456789ab"
    results = []
    for status, body in (("succeeded", ok.getvalue()), ("failed", failed.getvalue())):
        key = f"{job}/results/{hashlib.sha1(body.encode()).hexdigest()}.csv"
        c.put_object(Bucket="inventory-dest", Key=key, Body=body.encode())
        results.append({"TaskExecutionStatus": status, "Bucket": "inventory-dest",
                        "MD5Checksum": hashlib.md5(body.encode()).hexdigest(), "Key": key})
    manifest = {"Format": "Report_CSV_20180820", "ReportCreationDate": "2026-11-26T09:00:00Z",
                "Results": results,
                "ReportSchema": "Bucket, Key, VersionId, TaskStatus, ErrorCode, HTTPStatusCode, "
                                "ResultMessage"}
    c.put_object(Bucket="inventory-dest", Key=f"{job}/manifest.json",
                 Body=json.dumps(manifest).encode())
    return f"s3://inventory-dest/{job}/manifest.json"


def test_checksum_report_replaces_heads(inventories, baseline, tree, dask_client, s3,
                                        tmp_path_factory):
    report = publish_checksum_report(s3)
    # content evidence only: under --metadata auto the metadata sample HEADs objects of its
    # own (test_evidence_defects counts those)
    with S3Proxy(s3.url) as proxy:
        summary, table = run(dask_client, s3, tmp_path_factory, tree, endpoint=proxy.url,
                             checksum_report=report, head_min_size=64 << 10, metadata="off")
    assert proxy.mutating() == []
    assert {k: r["status"] for k, r in table.items()} == {
        k: r["status"] for k, r in baseline.items()}
    # object requests: only the HEAD of the object whose report entry is stale
    touched = sorted((m, unquote(urlsplit(p).path)) for m, p in proxy.requests
                     if unquote(urlsplit(p).path).startswith(f"/{BUCKET}/{PREFIX}"))
    assert touched == [("HEAD", f"/{BUCKET}/{PREFIX}crc/c3.bin")]
    assert summary["bytes_read_destination"] == 0
    for rel in ("crc/c0.bin", "empty.txt", "meta/stamped.bin"):
        assert table[rel]["verified_by"] == "crc64nvme"
        assert "compute-checksum report" in table[rel]["detail"]
    assert table["big/multi.bin"]["verified_by"] == "md5"
    assert table["docs/readme.txt"]["verified_by"] == "sha256"
    assert table["crc/c3.bin"]["verified_by"] == "crc64nvme"  # from its HEAD
    assert table["crc/c3.bin"]["detail"] is None
    assert table["docs/space name.txt"]["verified_by"] == "etag-md5"
    assert "content matches (crc64nvme)" in table[NFC_NAME]["detail"]
    flip = table["data/flip.bin"]
    assert flip["status"] == S.CONTENT_MISMATCH and flip["verified_by"] == "crc64nvme"
    assert "compute-checksum report" in flip["detail"]
    ing = summary["ingest"]
    assert ing["checksum_report_files"] == 2 and ing["checksum_failed"] == 1
    assert ing["checksum_outside"] == 0
    objects = [k for k, r in baseline.items() if r["dst_size"] is not None]
    assert ing["checksum_entries"] == len(objects) - 2  # not in the job: space name, short.bin


def test_inventory_orc(tree, s3, tmp_path):
    """ORC inventories have the Parquet column names; a local manifest finds data/ beside it."""
    import pyarrow.orc as orc

    from wiseverify.core.s3 import S3Target

    target = S3Target.parse(f"s3://{BUCKET}/{PREFIX}", endpoint_url=s3.url)
    table = pq.read_table(io.BytesIO(_parquet(inventory_rows(s3))))
    base = tmp_path / "inventory" / BUCKET / "daily-orc"
    (base / "data").mkdir(parents=True)
    orc.write_table(table, base / "data" / "part-0.orc")
    (base / "2026-11-26T00-00Z").mkdir()
    manifest = base / "2026-11-26T00-00Z" / "manifest.json"
    manifest.write_text(json.dumps({"sourceBucket": BUCKET, "fileFormat": "ORC",
                                    "fileSchema": "struct<bucket:string,key:string>",
                                    "files": [{"key": "daily-orc/data/part-0.orc"}]}))
    info, jobs = INGEST.inventory_plan(str(manifest), target)
    j = jobs[0]
    res = INGEST.ingest_inventory_file(j.url, j.fmt, j.columns, j.md5, target,
                                       str(tmp_path / "spool"))
    assert res["error"] is None
    keys = set(pq.read_table(res["spools"][0][0]).column("key").to_pylist())
    assert "big/multi.bin" in keys and "data/deleted.dat" not in keys
    assert res["markers"] == 1 and res["ingest"]["inventory_not_current"] == 2


def test_command_line_and_job_file(tree, s3, tmp_path):
    """The options reach the run from the command line and from a job file alike."""
    from wiseverify.deploy.jobfile import verify_argv

    other = tmp_path / "other-tree"
    other.mkdir()
    (other / "f").write_bytes(b"x")
    listing = find_listing(other, tmp_path / "other.lst", PRINTF, "\\0")
    proc = subprocess.run(
        [sys.executable, "-m", "wiseverify.cli", "verify", str(tree), f"s3://{BUCKET}/{PREFIX}",
         "--out", str(tmp_path / "r"), "--endpoint-url", s3.url, "--source-listing", listing],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "not with the source" in proc.stderr and "Traceback" not in proc.stderr
    argv = verify_argv({"source": str(tree), "dest": "s3://b/p", "out": "/r",
                        "source_listing": "/l/tree.lst", "listing_format": PRINTF,
                        "dest_inventory": "s3://inv/manifest.json",
                        "checksum_report": "s3://rep/manifest.json"})
    for flag, value in (("--source-listing", "/l/tree.lst"), ("--listing-format", PRINTF),
                        ("--dest-inventory", "s3://inv/manifest.json"),
                        ("--checksum-report", "s3://rep/manifest.json")):
        assert argv[argv.index(flag) + 1] == value
