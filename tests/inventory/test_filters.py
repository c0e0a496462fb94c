"""Filters: rclone's rule semantics, pruning in the walk, the same rules on the destination."""

from __future__ import annotations

import subprocess
import sys

import pyarrow as pa
import pytest

from wiseverify.core.filters import FilterError, Filters, compile_rule


def _kept(f: Filters, paths: list[str]) -> list[str]:
    t = pa.table({"key": paths, "size": [1] * len(paths)})
    return f.keep(t).column("key").to_pylist()


@pytest.mark.parametrize("pattern,matches,misses", [
    # the examples of rclone.org/filtering
    ("*.jpg", ["file.jpg", "directory/file.jpg"], ["file.png", "file.jpg.txt"]),
    ("/file.jpg", ["file.jpg"], ["directory/file.jpg", "afile.jpg"]),
    ("file.jpg", ["file.jpg", "directory/file.jpg"], ["afile.jpg"]),
    ("l?ss", ["less", "lass", "d/less"], ["floss", "l/ss"]),
    ("*.{jpg,png}", ["a.jpg", "b/c.png"], ["a.gif"]),
    ("file[0-9].jpg", ["file1.jpg", "x/file9.jpg"], ["filea.jpg"]),
    ("file[!0-9].jpg", ["filea.jpg"], ["file1.jpg"]),
    ("dir/**", ["dir/a", "x/dir/a/b"], ["dir", "adir/a"]),
    ("/dir/**", ["dir/a", "dir/a/b"], ["x/dir/a"]),
    ("a\\*b", ["a*b"], ["axb"]),
])
def test_rclone_pattern_examples(pattern, matches, misses):
    f = Filters.build(exclude=[pattern])
    assert _kept(f, matches) == []
    assert _kept(f, misses) == misses


def test_first_match_wins_and_include_order():
    # rclone: --include rules come before --exclude, then an implicit "- **"
    f = Filters.build(include=["*.txt"], exclude=["secret.txt"])
    assert f.describe() == ["+ *.txt", "- secret.txt", "- /**"]
    assert _kept(f, ["a.txt", "secret.txt", "b.csv"]) == ["a.txt", "secret.txt"]


def test_filter_file_syntax(tmp_path):
    rules = tmp_path / "rules.txt"
    rules.write_text("# a comment\n; another\n- *.bak\n!\n+ keep/**\n- *\n\n")
    f = Filters.build(filter_from=[str(rules)])
    assert f.describe() == ["+ keep/**", "- *"]  # "!" cleared "- *.bak"
    # "- *" matches the last segment of any path, so only keep/ is left
    assert _kept(f, ["keep/a.bak", "top.bak", "other/x"]) == ["keep/a.bak"]
    rules.write_text("- ok\nexclude this\n")
    with pytest.raises(FilterError, match=r"rules.txt:2: 'exclude this' is not '- PATTERN'"):
        Filters.build(filter_from=[str(rules)])
    with pytest.raises(FilterError, match="cannot read it"):
        Filters.build(filter_from=[str(tmp_path / "missing.txt")])


@pytest.mark.parametrize("bad,why", [("a[b", "unclosed '\\['"), ("{a,b", "unclosed '{'"),
                                     ("a}", "without its"), ("x\\", "lone backslash"),
                                     ("/", "names nothing"), ("  ", "empty pattern")])
def test_bad_patterns(bad, why):
    with pytest.raises(FilterError, match=why):
        compile_rule(False, bad, "--exclude")


def test_pruning_is_sound():
    f = Filters.build(exclude=[".snapshot/", "scratch/**", "*.tmp"])
    assert f.prune(".snapshot") == 0 and f.prune("a/b/.snapshot") == 0
    assert f.prune("scratch") == 1 and f.prune("x/scratch") == 1
    assert f.prune("scratchy") is None and f.prune("a") is None
    # an include that could match below a directory keeps it walked
    g = Filters.build(include=["/study1/data/*.csv"])
    assert g.prune("study1") is None and g.prune("study1/data") is None
    assert g.prune("study2") == 1 and g.prune("study1/data/deep") == 1
    h = Filters.build(filter_from=[], include=["*.sas7bdat"])
    assert h.prune("anything") is None  # unanchored: may match at any depth


def _tree(root, s3, bucket):
    files = {
        "study/a.txt": b"alpha", "study/b.tmp": b"temp", "study/sub/c.txt": b"gamma",
        "scratch/big.dat": b"x" * 100, "scratch/deep/y.dat": b"y",
        "study/.snapshot/hourly/a.txt": b"old", "notes.txt": b"n",
    }
    for i in range(40):  # enough entries below the pruned directory to show in the counters
        files[f"study/.snapshot/daily/f{i:02d}.txt"] = b"s"
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    c = s3.client()
    for rel, data in files.items():
        if rel != "notes.txt":  # a real MISSING, to show the rest still works
            c.put_object(Bucket=bucket, Key=f"f/{rel}", Body=data)
    c.put_object(Bucket=bucket, Key="f/scratch/only-in-dest.dat", Body=b"z")  # excluded
    c.put_object(Bucket=bucket, Key="f/study/extra.txt", Body=b"e")  # a real EXTRA


def test_filters_on_both_sides(tmp_path, s3, bucket, run_verify):
    root = tmp_path / "src"
    root.mkdir()
    _tree(root, s3, bucket)
    excl = [".snapshot/", "scratch/", "*.tmp", "nomatch/"]
    summary, rows = run_verify(root, f"s3://{bucket}/f", exclude=excl)
    assert sorted(rows) == ["notes.txt", "study/a.txt", "study/extra.txt", "study/sub/c.txt"]
    assert rows["notes.txt"]["status"] == "MISSING_IN_DEST"
    assert rows["study/extra.txt"]["status"] == "EXTRA_IN_DEST"
    assert rows["study/a.txt"]["status"] == "MATCH"
    f = summary["filters"]
    by = {r["rule"]: r for r in f["rules"]}
    assert by["- .snapshot/"]["source"]["directories"] == 1  # pruned: never listed
    assert by["- .snapshot/"]["source"]["entries"] == 0
    assert by["- scratch/"]["source"]["directories"] == 1
    # on the destination the excluded prefixes are not even listed
    assert by["- scratch/"]["destination"] == {"entries": 0, "bytes": 0, "directories": 1}
    assert by["- .snapshot/"]["destination"]["directories"] == 1
    assert by["- *.tmp"]["source"] == {"entries": 1, "bytes": 4, "directories": 0}
    assert by["- *.tmp"]["destination"]["entries"] == 1
    assert f["unused"] == ["- nomatch/"]
    assert f["fingerprint"]
    # without the rules the walk enters the pruned directories: 40+ more lstat calls
    full, rows_all = run_verify(root, f"s3://{bucket}/f", full=True)
    assert full["inventory"]["metadata_ops"] - summary["inventory"]["metadata_ops"] >= 44
    assert "study/.snapshot/daily/f00.txt" in rows_all
    # and a run with other rules does not reuse evidence across them
    again, _ = run_verify(root, f"s3://{bucket}/f", exclude=excl[:2])
    assert again["incremental"]["previous_run"] is None
    assert "covered other paths" in again["incremental"]["note"]


def test_bad_pattern_is_one_line_exit_2(tmp_path, s3, bucket):
    src = tmp_path / "src"
    src.mkdir()
    proc = subprocess.run([sys.executable, "-m", "wiseverify.cli", "verify", str(src),
                           f"s3://{bucket}/w", "--out", str(tmp_path / "r"), "--endpoint-url",
                           s3.url, "--exclude", "data[12"], capture_output=True, text=True,
                           timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines == ["wiseverify: error: --exclude: pattern 'data[12' has an unclosed '['"]


def test_job_file_lists(tmp_path):
    from wiseverify.deploy.jobfile import load_job, verify_argv

    job = tmp_path / "j.yaml"
    rules = tmp_path / "rules.txt"
    rules.write_text("- *.bak\n")
    job.write_text(f"source: /data\ndest: s3://b/p\nout: {tmp_path}/run\n"
                   f"exclude: ['.snapshot/', 'scratch/']\ninclude: ['*.txt']\n"
                   f"filter_from: [{rules}]\n")
    argv = verify_argv(load_job(job))
    assert argv[argv.index("--include") + 1] == "*.txt"
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--exclude"] == \
        [".snapshot/", "scratch/"]
    assert argv[argv.index("--filter-from") + 1] == str(rules)


def test_lustre_control_directory_never_walked(tmp_path, monkeypatch):
    from wiseverify.inventory import prune as PRUNE
    from wiseverify.inventory import walk as WALK

    root = tmp_path / "mnt"
    (root / ".lustre" / "fid").mkdir(parents=True)
    (root / ".lustre" / "fid" / "x").write_bytes(b"virtual")
    (root / "sub" / ".lustre").mkdir(parents=True)  # below the root it is an ordinary name
    (root / "sub" / ".lustre" / "y").write_bytes(b"real")
    (root / "a").write_bytes(b"a")
    mounts = tmp_path / "mounts"
    mounts.write_text(f"10.0.0.1@tcp:/fs {root} lustre rw,flock 0 0\n")
    monkeypatch.setattr(PRUNE, "MOUNTS", str(mounts))
    monkeypatch.setattr(PRUNE, "_LUSTRE_ROOTS", {})
    res = WALK.walk_dirs(str(root), [b""], str(tmp_path / "spool.arrow"))
    import pyarrow.ipc as ipc

    keys = sorted(ipc.open_file(res["spool"]).read_all().column("key").to_pylist())
    assert keys == ["a", "sub/.lustre/y"]
    monkeypatch.setattr(PRUNE, "_LUSTRE_ROOTS", {})
    mounts.write_text(f"/dev/sda1 {root} ext4 rw 0 0\n")  # not Lustre: an ordinary directory
    res = WALK.walk_dirs(str(root), [b""], str(tmp_path / "spool2.arrow"))
    assert res["count"] == 3


def test_slices_cover_every_key_once(tmp_path, s3, bucket, run_verify):
    root = tmp_path / "src"
    c = s3.client()
    for i in range(60):
        p = root / f"d{i % 5}" / f"f{i}.txt"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"%d" % i)
        c.put_object(Bucket=bucket, Key=f"sl/d{i % 5}/f{i}.txt", Body=b"%d" % i)
    c.put_object(Bucket=bucket, Key="sl/extra.txt", Body=b"e")
    seen: list[str] = []
    for k in range(1, 5):
        summary, rows = run_verify(root, f"s3://{bucket}/sl", slice=f"{k}/4")
        seen += rows
        assert summary["filters"]["slice"] == {
            "k": k, "n": 4, "source_entries_elsewhere": 60 - sum(
                1 for r in rows.values() if r["status"] != "EXTRA_IN_DEST"),
            "destination_objects_elsewhere": 61 - len(rows)}
        assert summary["incremental"]["previous_run"] is None  # another slice: no reuse
    assert sorted(seen) == sorted([f"d{i % 5}/f{i}.txt" for i in range(60)] + ["extra.txt"])
    proc = subprocess.run([sys.executable, "-m", "wiseverify.cli", "runs", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert "slice 4/4" in proc.stdout and "every slice has a completed run" in proc.stdout


def test_bad_slice(tmp_path, s3, bucket):
    src = tmp_path / "src"
    src.mkdir()
    proc = subprocess.run([sys.executable, "-m", "wiseverify.cli", "verify", str(src),
                           f"s3://{bucket}/w", "--out", str(tmp_path / "r"), "--endpoint-url",
                           s3.url, "--slice", "5/4"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "--slice '5/4': expected K/N with 1 <= K <= N" in proc.stderr


def test_diff_names_different_rules(tmp_path, s3, bucket, run_verify):
    from wiseverify.report.history import diff, format_diff

    root = tmp_path / "src"
    (root / "a").mkdir(parents=True)
    for n in ("x.txt", "y.tmp"):
        (root / "a" / n).write_bytes(n.encode())
        s3.client().put_object(Bucket=bucket, Key=f"df/a/{n}", Body=n.encode())
    run_verify(root, f"s3://{bucket}/df")
    run_verify(root, f"s3://{bucket}/df", exclude=["*.tmp"])
    a, b = sorted(p for p in tmp_path.glob("run*") if (p / "summary.json").is_file())
    res = diff(a, b)
    assert res["filters"] == {"a": [], "b": ["- *.tmp"], "same": False}
    text = format_diff(res)
    assert "different filter rules" in text and "B: - *.tmp" in text
    assert res["removed"] == 1  # the key the rule left out, not a lost file
