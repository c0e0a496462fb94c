"""Checksum functions and their S3 encodings: what the digest stage and the readback share.

CRC64NVME/CRC32C/CRC32 come from awscrt (about 11 GB/s per core, and
combinable across ranges); MD5/SHA1/SHA256 from hashlib.  The encodings are
S3's: base64 of the big-endian CRC in headers, COMPOSITE checksums over the
part digests, and the multipart ETag over the part MD5s.
"""

from __future__ import annotations

import base64
import hashlib

from awscrt import checksums as crc

CRC_FUNCS = {"crc32": crc.crc32, "crc32c": crc.crc32c, "crc64nvme": crc.crc64nvme}
CRC_COMBINE = {
    "crc32": crc.combine_crc32,
    "crc32c": crc.combine_crc32c,
    "crc64nvme": crc.combine_crc64nvme,
}
CRC_BYTES = {"crc32": 4, "crc32c": 4, "crc64nvme": 8}
HASH_FUNCS = {"md5": hashlib.md5, "sha1": hashlib.sha1, "sha256": hashlib.sha256}
COMBINABLE = frozenset(CRC_FUNCS)


def crc_bytes(algo: str, value: int) -> bytes:
    return value.to_bytes(CRC_BYTES[algo], "big")


def crc_b64(algo: str, value: int) -> str:
    """The S3 header encoding: base64 of the big-endian CRC."""
    return base64.b64encode(crc_bytes(algo, value)).decode()


def part_digest_raw(algo: str, value: int | bytes) -> bytes:
    return crc_bytes(algo, value) if isinstance(value, int) else value


def composite(algo: str, parts: list) -> str:
    """S3 COMPOSITE checksum: base64(H(H(p1) || ... || H(pN))), without the ``-N`` suffix."""
    joined = b"".join(part_digest_raw(algo, p) for p in parts)
    if algo in CRC_FUNCS:
        return crc_b64(algo, CRC_FUNCS[algo](joined))
    return base64.b64encode(HASH_FUNCS[algo](joined).digest()).decode()


def multipart_etag(part_md5s: list[bytes]) -> str:
    """hex(md5(md5(p1) || ... || md5(pN))) + '-N', the multipart upload ETag."""
    return f"{hashlib.md5(b''.join(part_md5s)).hexdigest()}-{len(part_md5s)}"
