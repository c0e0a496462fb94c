"""The command line's forkserver preloads the project: the workers must run the driver's copy."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import json, sys
    from wiseverify.deploy.cluster import open_client, prestart_local_workers

    def where():
        import wiseverify, wiseverify.run.tasks
        return [wiseverify.__file__, wiseverify.run.tasks.__file__]

    if __name__ == "__main__":
        assert prestart_local_workers()
        import wiseverify
        with open_client(workers=1, threads_per_worker=1) as client:
            print(json.dumps({"driver": wiseverify.__file__,
                              "workers": list(client.run(where).values())}))
""")


def test_workers_import_the_drivers_package_not_the_working_directorys(tmp_path):
    """Run from a directory that holds another ``wiseverify`` (a checkout, with the
    package installed elsewhere), the preloaded workers still run the driver's."""
    decoy = tmp_path / "cwd" / "wiseverify"
    (decoy / "run").mkdir(parents=True)
    (decoy / "__init__.py").write_text("")  # imports: it would stay in the forkserver
    (decoy / "run" / "__init__.py").write_text("")
    (decoy / "run" / "tasks.py").write_text("")
    script = tmp_path / "drive.py"
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH")}
    p = subprocess.run([sys.executable, str(script)], cwd=decoy.parent, env=env,
                       capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr[-3000:]
    out = __import__("json").loads(p.stdout.strip().splitlines()[-1])
    assert not out["driver"].startswith(str(tmp_path))
    [(pkg, tasks)] = out["workers"]
    assert pkg == out["driver"]
    assert tasks.startswith(os.path.dirname(out["driver"]))


def test_a_configured_start_method_stops_the_forkserver_started_before_it_was_read():
    """The forkserver starts before dask's settings are read; one they do not want is stopped."""
    code = ("import multiprocessing.forkserver as f; "
            "from wiseverify.deploy.cluster import prestart_local_workers; "
            "print(prestart_local_workers(), f._forkserver._forkserver_pid)")
    out = {}
    for method in ("fork", "spawn"):
        env = {**os.environ, "DASK_DISTRIBUTED__WORKER__MULTIPROCESSING_METHOD": method}
        p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                           text=True, timeout=120)
        assert p.returncode == 0, p.stderr[-3000:]
        out[method] = p.stdout.split()
    assert out["fork"] == ["False", "None"]
    assert out["spawn"][0] == "True" and int(out["spawn"][1]) > 0


POOL_SCRIPT = textwrap.dedent("""
    import json, sys
    from wiseverify.deploy.cluster import open_client, prestart_local_workers

    def pool():
        import pyarrow as pa
        # the environment the process started with, which glibc read
        with open("/proc/self/environ", "rb") as f:
            env = dict(v.split(b"=", 1) for v in f.read().split(b"\\0") if b"=" in v)
        return [pa.default_memory_pool().backend_name,
                env.get(b"MALLOC_TRIM_THRESHOLD_", b"").decode()]

    if __name__ == "__main__":
        prestart_local_workers()
        with open_client(workers=1, threads_per_worker=1) as client:
            print(json.dumps(list(client.run(pool).values())))
""")


def test_workers_allocate_from_the_pool_that_gives_memory_back(tmp_path):
    """The workers of the local cluster (forkserver or spawned) load Arrow with jemalloc
    from this environment's manylinux wheel, an operator's own choice kept, and start
    with glibc's trim threshold (a forked worker misses the nanny's own setting)."""
    import json

    from wiseverify.core import arrowmem

    assert arrowmem._wheel_has_jemalloc(), "the test environment installs pyarrow's wheel"
    script = tmp_path / "pool.py"
    script.write_text(POOL_SCRIPT)
    base = {k: v for k, v in os.environ.items()
            if k not in (arrowmem.VARIABLE, arrowmem.TRIM[0])}
    cases = {
        ("forkserver", None): "jemalloc",
        ("spawn", None): "jemalloc",
        ("forkserver", "system"): "system",
    }
    for (method, chosen), want in cases.items():
        env = {**base, "DASK_DISTRIBUTED__WORKER__MULTIPROCESSING_METHOD": method,
               **({arrowmem.VARIABLE: chosen} if chosen else {})}
        p = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                           text=True, timeout=180)
        assert p.returncode == 0, p.stderr[-3000:]
        assert json.loads(p.stdout.strip().splitlines()[-1]) == [[want, "65536"]], (method, chosen)
        assert "Unsupported backend" not in p.stderr
