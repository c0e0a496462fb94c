"""report.html of a real run, opened in a real headless browser (Debian's chromium).

The page must be readable by people (verdict, numbers, plots, discrepancies),
and self-contained: it is archived with the run and opened years later, so it
may fetch nothing.  The browser's DOM gives the text a reader sees; the
screenshot shows the page was actually laid out and painted.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import zlib
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from wiseverify.core import schema as S
from wiseverify.report.html import CSP, STATUS_COLORS, write_html

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]


def chromium() -> str:
    """The browser; in CI (CI=true) its absence is a failure, elsewhere a skip."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe:
        return exe
    msg = "chromium is not installed (scripts/quickstart.sh test installs it as root)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(msg)
    pytest.skip(msg)


def browse(page: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"chromium-profile-{len(list(tmp_path.iterdir()))}"
    return subprocess.run(
        [chromium(), *FLAGS, f"--user-data-dir={profile}", *args, page.as_uri()],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )


class _Text(HTMLParser):
    """Text a reader sees (no style/script/title), plus every URL-bearing attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.chunks: list[str] = []
        self.urls: list[tuple[str, str, str]] = []
        self.tags: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag in ("style", "script", "title"):
            self._skip += 1
        for name, value in attrs:
            if name in ("src", "href", "xlink:href", "srcset", "action", "data", "poster"):
                self.urls.append((tag, name, value or ""))

    def handle_endtag(self, tag):
        if tag in ("style", "script", "title") and self._skip:
            self._skip -= 1

    def handle_data(self, data):
        if not self._skip:
            self.chunks.append(data)

    @property
    def text(self) -> str:
        return " ".join(" ".join(self.chunks).split())


def parse(html_text: str) -> _Text:
    p = _Text()
    p.feed(html_text)
    return p


def png_pixels(path: Path) -> np.ndarray:
    """Decode an 8-bit RGB/RGBA PNG (what chromium writes) into a height x width x 3 array."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat = 8, b""
    width = height = ctype = 0
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            width, height, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and ctype in (2, 6) and interlace == 0
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    bpp = 3 if ctype == 2 else 4
    stride = width * bpp
    raw = np.frombuffer(zlib.decompress(idat), dtype=np.uint8).reshape(height, stride + 1)
    out = np.zeros((height, stride), dtype=np.uint8)
    prev = np.zeros(stride, dtype=np.int32)
    for y in range(height):
        f, line = raw[y, 0], raw[y, 1:].astype(np.int32)
        if f == 1:  # Sub: running sum per channel
            line = np.cumsum(line.reshape(width, bpp), axis=0).reshape(stride) & 0xFF
        elif f == 2:  # Up
            line = (line + prev) & 0xFF
        elif f in (3, 4):  # Average, Paeth: depend on the pixel to the left
            cur = line.tolist()
            up = prev.tolist()
            for i in range(stride):
                a = cur[i - bpp] if i >= bpp else 0
                b = up[i]
                if f == 3:
                    cur[i] = (cur[i] + (a + b) // 2) & 0xFF
                else:
                    c = up[i - bpp] if i >= bpp else 0
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                    cur[i] = (cur[i] + pred) & 0xFF
            line = np.array(cur, dtype=np.int32)
        out[y] = line
        prev = line
    return out.reshape(height, width, bpp)[:, :, :3]


def count_color(img: np.ndarray, hex_color: str, tol: int = 8) -> int:
    """Pixels within ``tol`` of a colour on every channel."""
    want = np.array([int(hex_color[i:i + 2], 16) for i in (1, 3, 5)], dtype=np.int16)
    return int((np.abs(img.astype(np.int16) - want) <= tol).all(axis=2).sum())


def screenshot(page: Path, tmp_path: Path, name: str, size: str = "1200,2600") -> Path:
    shot = tmp_path / name
    proc = browse(page, tmp_path, f"--window-size={size}", f"--screenshot={shot}",
                  "--hide-scrollbars")
    assert shot.exists(), proc.stderr[-2000:]
    keep = os.environ.get("WISEVERIFY_SCREENSHOT_DIR")
    if keep:  # for a person to look at
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / name)
    return shot


def test_report_is_self_contained(demo_run):  # noqa: F811
    page = demo_run / "report.html"
    html_text = page.read_text(encoding="utf-8")
    p = parse(html_text)
    assert f'content="{CSP}"' in html_text  # the browser itself refuses any fetch
    assert "script" not in p.tags and "link" not in p.tags and "img" not in p.tags
    assert "@import" not in html_text and "url(" not in html_text
    for tag, attr, url in p.urls:
        # only navigation links to sibling files of the run directory
        assert tag == "a" and attr == "href", (tag, attr, url)
        assert "://" not in url and not url.startswith("//") and "/" not in url, url
        assert (demo_run / url).exists() or url == "manifest.json", url
    assert p.tags.count("svg") >= 2


def test_report_in_headless_chromium(demo_run, tmp_path):  # noqa: F811
    summary = json.loads((demo_run / "summary.json").read_text())
    page = demo_run / "report.html"
    proc = browse(page, tmp_path, "--dump-dom")
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = parse(proc.stdout)
    text = dom.text
    assert "FAIL" in text
    assert f"{summary['keys']:,} keys checked, {summary['discrepancies']:,} discrepancies" in text
    for status, n in summary["counts"].items():
        if n:
            assert status in text, status
    for key in ("data/missing.csv", "big/multipart_flip.bin", "data/truncated.csv",
                "data/extra.csv", "meta/perm.bin"):
        assert key in text, key
    assert "Status by top-level directory" in text and "Size distribution" in text
    assert "Run facts" in text and summary["run_id"] in text
    assert ("a", "href", "discrepancies.csv") in dom.urls
    assert dom.tags.count("svg") >= 2 and dom.tags.count("rect") > 5

    shot = screenshot(page, tmp_path, "report-fail.png")
    img = png_pixels(shot)
    assert img.shape == (2600, 1200, 3)
    # the verdict banner and the status colours were painted
    assert count_color(img, "#c62828") > 10_000  # FAIL banner (plus MISSING bars)
    for st in (S.MATCH, S.CONTENT_MISMATCH, S.METADATA_MISMATCH):
        assert count_color(img, STATUS_COLORS[st]) > 50, st


def test_clean_run_report_says_pass(run_verify, s3, bucket, tmp_path):
    src = tmp_path / "clean"
    src.mkdir()
    client = s3.client()
    for i in range(3):
        data = f"row {i}\n".encode() * 50
        (src / f"f{i}.txt").write_bytes(data)
        client.put_object(Bucket=bucket, Key=f"p/f{i}.txt", Body=data)
    summary, _ = run_verify(src, f"s3://{bucket}/p/")
    assert summary["verdict"] == "PASS"
    run_dir = next(d for d in tmp_path.glob("run*") if (d / "summary.json").exists())
    page = run_dir / "report.html"
    # rebuilding from the same run gives the same bytes (the manifest stays valid)
    before = page.read_bytes()
    write_html(run_dir, summary)
    assert page.read_bytes() == before
    proc = browse(page, tmp_path, "--dump-dom")
    text = parse(proc.stdout).text
    assert "PASS" in text and "every key is MATCH or SKIPPED" in text
    assert "No discrepancies." in text
    img = png_pixels(screenshot(page, tmp_path, "report-pass.png", "1200,1200"))
    assert count_color(img, "#2e7d32") > 10_000  # PASS banner
    assert count_color(img, "#c62828") == 0
