"""One measurement in a fresh process: ``python -m pyramid_cli.bench.worker < job.json``.

``runner`` starts one of these per model, input length and allocator, so that every memory peak is
clean (nothing retained from an earlier model) and jemalloc can be preloaded (``LD_PRELOAD`` only
works at process start). The job is a JSON object on stdin; the answer is written as JSON to the
file the job names (stdout stays free for whatever the peers' packages print):
``{"result": {...}}``, ``{"unavailable": reason}`` for a peer that cannot run, or ``{"error": text}``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from pyramid_cli.errors import DependencyError


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Run one job (``kind`` ``codec`` or ``lm``) and return its answer object."""
    from pyramid_cli.bench.codecs import measure_codec
    from pyramid_cli.bench.lm import measure_lm

    try:
        if job["kind"] == "codec":
            codec = measure_codec(job["key"], job["seconds"], device=job["device"], threads=job["threads"],
                                  chunk_seconds=job["chunk_seconds"])
            return {"result": codec.to_dict()}
        lm = measure_lm(job["seconds"], model=job["model"], naive_tokens=job["naive_tokens"], device=job["device"],
                        threads=job["threads"], dtype=job.get("dtype", "auto"), compile=job.get("compile", False))
        return {"result": lm.to_dict()}
    except DependencyError as error:
        return {"unavailable": str(error)}
    except Exception as error:  # reported to the parent, which records it and goes on with the next model
        return {"error": f"{type(error).__name__}: {error}"}


def main() -> None:
    job = json.loads(sys.stdin.read())
    answer = run_job(job)
    Path(job["output"]).write_text(json.dumps(answer), encoding="utf-8")


if __name__ == "__main__":
    main()
