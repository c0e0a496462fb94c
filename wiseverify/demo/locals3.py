"""A local S3 endpoint (moto server on 127.0.0.1) and fixture uploads.

Used by the demo, the tests and the benchmarks: a real HTTP endpoint in its
own process, so the tool talks to it exactly as it talks to S3.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence

FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "wiseverify-local",
    "AWS_SECRET_ACCESS_KEY": "wiseverify-local-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalS3:
    """A moto server subprocess on a free loopback port."""

    def __init__(self, port: int | None = None, log_path: str | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> LocalS3:
        try:
            import crc32c  # noqa: F401  (moto mislabels CRC32 as CRC32C without it)
            import moto  # noqa: F401
        except ImportError as exc:
            raise RuntimeError(
                f"the local S3 endpoint needs moto[server] and crc32c: {exc}"
            ) from None
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        env = dict(os.environ)
        env.setdefault("MOTO_ALLOW_NONEXISTENT_REGION", "true")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=log, stderr=log, env=env, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto server exited with code {self.proc.returncode}")
            try:
                urllib.request.urlopen(self.url + "/moto-api/", timeout=1).read()
                return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"moto server did not answer on {self.url} within {timeout} s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def client(self, checksums: bool = False):
        """A boto3 client; ``checksums=False`` makes ETag-only objects, like an old import."""
        import boto3
        from botocore.config import Config

        cfg = Config(
            request_checksum_calculation="when_supported" if checksums else "when_required",
            response_checksum_validation="when_required",
            retries={"max_attempts": 3, "mode": "standard"},
        )
        return boto3.client(
            "s3", endpoint_url=self.url, region_name="us-east-1", config=cfg,
            aws_access_key_id=FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        )

    def __enter__(self) -> LocalS3:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@contextlib.contextmanager
def local_s3(log_path: str | None = None) -> Iterator[LocalS3]:
    with LocalS3(log_path=log_path) as s3:
        yield s3


def put_multipart(client, bucket: str, key: str, data: bytes, part_size: int | Sequence[int],
                  checksum: str | None = None, metadata: dict | None = None) -> str:
    """Upload ``data`` in parts of ``part_size``; returns the ETag (without quotes).

    A list of sizes uploads parts of exactly those lengths (an irregular but
    legal layout: every part but the last at least 5 MiB); they must add up to
    the data's length.
    """
    if isinstance(part_size, int):
        bounds = [(off, min(part_size, len(data) - off)) for off in range(0, len(data), part_size)]
    else:
        if sum(part_size) != len(data):
            raise ValueError(f"part sizes add up to {sum(part_size)}, data is {len(data)} bytes")
        starts = [sum(part_size[:i]) for i in range(len(part_size))]
        bounds = list(zip(starts, part_size, strict=True))
    kw = {"ChecksumAlgorithm": checksum} if checksum else {}
    up = client.create_multipart_upload(Bucket=bucket, Key=key, Metadata=metadata or {}, **kw)
    parts = []
    for i, (off, length) in enumerate(bounds, start=1):
        r = client.upload_part(Bucket=bucket, Key=key, UploadId=up["UploadId"], PartNumber=i,
                               Body=data[off : off + length], **kw)
        p = {"ETag": r["ETag"], "PartNumber": i}
        if checksum:
            p["Checksum" + checksum] = r["Checksum" + checksum]
        parts.append(p)
    r = client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=up["UploadId"],
                                         MultipartUpload={"Parts": parts})
    return r["ETag"].strip('"')


def posix_metadata(st: os.stat_result) -> dict:
    """User metadata in the FSx for Lustre / DataSync layout."""
    return {
        "file-permissions": f"{st.st_mode:07o}",
        "file-owner": str(st.st_uid),
        "file-group": str(st.st_gid),
        "file-mtime": f"{st.st_mtime_ns}ns",
    }
