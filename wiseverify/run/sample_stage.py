"""Stage 5 (``--sample``): the read-back sample over the reconciled partitions.

Two task passes (stratum counts, then the read-back per partition) and the
statement of what the sample proves; see :mod:`wiseverify.reconcile.sample`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from wiseverify.reconcile import plan as R

if TYPE_CHECKING:
    from wiseverify.run.driver import Partitioned, Run


def sample_stage(run: Run, parts: Partitioned, totals: dict) -> dict | None:
    """``--sample``: read back a stratified random sample of the verified keys (see
    :mod:`wiseverify.reconcile.sample`); ``totals`` take the sample's corrections."""
    cfg = run.cfg
    if not cfg.sample or cfg.mode != "stored":
        return None
    from wiseverify.reconcile import sample as SAMPLE

    ctx = R.Context.from_config(cfg, root=run.root, target=run.target,
                                run_dir=str(run.run_dir), run_id=run.run_id)
    files = [str(ctx.part_path(p)) for p in range(parts.nparts)]
    counts = run.client.gather(run.client.map(SAMPLE.strata_counts, files, pure=False,
                                              key=[f"sample-strata-{p}-{run.run_id}"
                                                   for p in range(parts.nparts)]))
    strata = {"keys": [sum(c["keys"][s] for c in counts) for s in range(4)],
              "bytes": [sum(c["bytes"][s] for c in counts) for s in range(4)],
              "archived": sum(c["archived"] for c in counts),
              "archived_bytes": sum(c["archived_bytes"] for c in counts)}
    probs = SAMPLE.rates(SAMPLE.parse_spec(cfg.sample), strata["keys"])
    found = {"n": [0] * 4, "k": [0] * 4, "n_bytes": [0] * 4, "k_bytes": [0] * 4,
             "inconclusive": 0, "wrong_keys": []}
    futs = [run.client.submit(SAMPLE.sample_partition, ctx, p, probs, cfg.sample_seed,
                              pure=False, key=f"sample-{p}-{run.run_id}")
            for p in range(parts.nparts) if counts[p]["keys"] and any(counts[p]["keys"])]
    for res in run.client.gather(futs):
        for f in ("n", "k", "n_bytes", "k_bytes"):
            found[f] = [a + b for a, b in zip(found[f], res[f], strict=True)]
        found["inconclusive"] += res["inconclusive"]
        found["wrong_keys"] += res["wrong_keys"]
        totals["bytes_read_src"] += res["bytes_read_src"]
        totals["bytes_read_dst"] += res["bytes_read_dst"]
        for k, d in (res.get("delta") or {}).items():
            for name, v in d.items():
                totals.setdefault(k, {})[name] = totals[k].get(name, 0) + v
    st = SAMPLE.statement(cfg.sample, cfg.sample_seed, strata, found)
    run.say(f"{st['statement']} ({run.lap('sample'):.1f} s)")
    return st
