"""Stage 2's ``--metadata auto`` step: the destination's sample HEADed, each prefix decided.

See :mod:`wiseverify.compare.metascope` for the rule; this is the driver's side of it:
one worker task, started while the partition stage still compacts, and its decision
kept in the run directory.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from wiseverify.compare import metascope as MS
from wiseverify.core.config import VerifyConfig
from wiseverify.core.runio import write_text
from wiseverify.core.s3 import S3Target


class MetadataProbe:
    """``--metadata auto``: the run's sample HEADed (one worker task), then each prefix decided.

    Started as a future, so the HEADs run while the rest of the partition stage
    does; :meth:`decide` waits for it.  Kept in the run directory: a resumed run
    decides as the interrupted one did.
    """

    def __init__(self, client, cfg: VerifyConfig, run_dir: Path, target: S3Target,
                 inv_reused: bool, samples: list[dict], run_id: str) -> None:
        self.path = run_dir / "inventory" / "metadata_sample.json"
        self.saved: MS.Decision | None = None
        self.future = None
        if cfg.metadata != "auto" or cfg.mode != "stored":
            self.off = True
            return
        self.off = False
        if inv_reused and self.path.is_file():
            self.saved = MS.Decision.from_json(json.loads(self.path.read_text()))
            return
        self.future = client.submit(MS.probe, target, MS.merge_samples(samples),
                                    cfg.head_concurrency, pure=False, priority=1,
                                    key=f"metadata-sample-{run_id}")

    def decide(self, say: Callable[[str], None]) -> MS.Decision | None:
        if self.off or self.saved is not None:
            return self.saved
        decision = self.future.result()
        write_text(self.path, json.dumps(decision.to_json()))
        n = {s: sum(1 for v in decision.state.values() if v == s)
             for s in (MS.WITH, MS.WITHOUT, MS.FAILED)}
        say(f"metadata sample: {decision.sampled:,} objects in {len(decision.state):,} "
            f"top-level prefixes; POSIX metadata in {n[MS.WITH]:,}, none in {n[MS.WITHOUT]:,}"
            + (f", not sampled in {n[MS.FAILED]:,}" if n[MS.FAILED] else ""))
        return decision
