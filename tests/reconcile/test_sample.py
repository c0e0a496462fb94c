"""--sample: a deterministic, stratified read-back sample and the bound it states."""

from __future__ import annotations

import base64
import math

import pytest
from awscrt import checksums

from wiseverify.core import schema as S
from wiseverify.core.stats import cp_upper
from wiseverify.reconcile.sample import parse_spec


def _independent_upper(k: int, n: int, conf: float) -> float:
    try:
        from scipy.stats import beta  # where the environment has it

        return float(beta.ppf(conf, k + 1, n - k))
    except ImportError:
        pass
    # exact: the p where P(X <= k) = 1 - conf, by bisection on a direct binomial sum
    lo, hi = 0.0, 1.0
    for _ in range(100):
        p = (lo + hi) / 2
        cdf = sum(math.comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(k + 1))
        lo, hi = (p, hi) if cdf > 1 - conf else (lo, p)
    return hi


@pytest.mark.parametrize("k,n", [(0, 30), (0, 1000), (1, 200), (3, 5000)])
def test_clopper_pearson(k, n):
    for conf in (0.95, 0.99):
        assert cp_upper(k, n, conf) == pytest.approx(_independent_upper(k, n, conf), rel=1e-6)
    assert cp_upper(0, 1000, 0.95) == pytest.approx(3 / 1000, rel=0.01)


def test_spec():
    assert parse_spec("0.5%") == ("fraction", 0.005)
    assert parse_spec("20000") == ("count", 20000.0)
    from wiseverify.core.errors import ConfigError

    for bad in ("0", "150%", "-3", "lots"):
        with pytest.raises(ConfigError, match="give a count"):
            parse_spec(bad)


def _tree(root, s3, bucket, n=200):
    c = s3.client()
    for i in range(n):
        p = root / f"d{i % 4}" / f"f{i:03d}.dat"
        p.parent.mkdir(parents=True, exist_ok=True)
        data = (b"%05d" % i) * 40
        p.write_bytes(data)
        body = data
        if i == 7:  # bytes wrong in S3, stored checksum of the right bytes (moto trusts it)
            body = b"?" + data[1:]
        crc = base64.b64encode(checksums.crc64nvme(data).to_bytes(8, "big")).decode()
        c.put_object(Bucket=bucket, Key=f"sm/d{i % 4}/f{i:03d}.dat", Body=body,
                     ChecksumAlgorithm="CRC64NVME", ChecksumCRC64NVME=crc)


def _sampled(rows):
    return {k for k, r in rows.items() if r["readback_sample"] is not None}


def test_sample_catches_a_wrong_stored_checksum(tmp_path, s3, bucket, run_verify):
    root = tmp_path / "src"
    _tree(root, s3, bucket)
    # HEADs for the stored CRC64NVME even of small objects: it is then the evidence
    plain, rows0 = run_verify(root, f"s3://{bucket}/sm", metadata="off", head_min_size=0)
    assert rows0["d3/f007.dat"]["status"] == S.MATCH  # the stored checksum says so
    assert rows0["d3/f007.dat"]["verified_by"] == "crc64nvme"
    s, rows = run_verify(root, f"s3://{bucket}/sm", metadata="off", sample="100%", full=True,
                         head_min_size=0)
    r = rows["d3/f007.dat"]
    assert r["status"] == S.CONTENT_MISMATCH and r["cause"] == S.CAUSE_STORED_WRONG
    assert r["readback_sample"] == "disagree"
    smp = s["sample"]
    assert smp["read_back"] == 200 and smp["wrong"] == 1 and smp["wrong_keys"] == ["d3/f007.dat"]
    assert smp["statement"].startswith("ALARM: 1 stored checksums proved wrong")
    assert s["causes"] == {S.CAUSE_STORED_WRONG: 1}
    assert s["counts"][S.CONTENT_MISMATCH] == 1 and s["counts"][S.MATCH] == 199
    assert smp["upper_bound_keys"]["95"] == pytest.approx(_independent_upper(1, 200, 0.95),
                                                          rel=1e-6)


def test_sample_is_deterministic_and_stratified(tmp_path, s3, bucket, run_verify):
    root = tmp_path / "src"
    _tree(root, s3, bucket)
    big = root / "big" / "large.bin"  # a stratum of its own: always represented
    big.parent.mkdir()
    big.write_bytes(b"L" * (2 << 20))
    s3.client().put_object(Bucket=bucket, Key="sm/big/large.bin", Body=big.read_bytes())
    a, ra = run_verify(root, f"s3://{bucket}/sm", metadata="off", sample="5%", full=True)
    b, rb = run_verify(root, f"s3://{bucket}/sm", metadata="off", sample="5%", full=True)
    c, rc = run_verify(root, f"s3://{bucket}/sm", metadata="off", sample="5%",
                       sample_seed=9, full=True)
    assert _sampled(ra) == _sampled(rb) and _sampled(ra) != _sampled(rc)
    # 5% of 200 small keys is 10, but each stratum gives at least 30 where it has them
    small = [x for x in a["sample"]["strata"] if x["stratum"] == "<1MiB"][0]
    # f007 fails its ETag here (no HEAD below 4 MiB): 199 content-verified small keys
    assert small["eligible_keys"] == 199 and small["read_back"] == len(
        [k for k in _sampled(ra) if not k.startswith("big/")])
    assert 15 <= small["read_back"] <= 50  # a 15% draw by hash, not an exact count
    mid = [x for x in a["sample"]["strata"] if x["stratum"] == "1MiB-64MiB"][0]
    assert mid["eligible_keys"] == mid["read_back"] == 1 and "big/large.bin" in _sampled(ra)
    assert a["sample"]["seed"] == 0 and c["sample"]["seed"] == 9
    assert "with 95% confidence at most" in a["sample"]["statement"]
