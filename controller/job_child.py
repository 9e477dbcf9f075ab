"""The trainer job in its own process: ``python -m controller.job_child REQUEST.json RESULT.json``.

REST jobs run the trainer here, never inside the controller: whatever a spec makes the trainer
load cannot touch the controller's memory, keys or database session, and a job that crashes or
exhausts memory takes only this process down. The controller (``services.jobs``) writes the
request, starts this through ``controller.children.spawn`` (it ends with the controller) and
reads the result file; the exit code says how it went: 0 done, 3 the trainer is not installed,
1 the job failed (the result file carries the error).
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import sys
import traceback
from pathlib import Path

from controller.children import atomic_json


def _end_the_group(signum: int, frame: object) -> None:
    """The controller died (PR_SET_PDEATHSIG) or stops the job: end what the trainer started
    too (torchrun and its workers share this process group), then this process."""
    os.killpg(os.getpgid(0), signal.SIGKILL)


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGTERM, _end_the_group)
    request_path, result_path = Path(argv[0]), Path(argv[1])
    request = json.loads(request_path.read_text(encoding="utf-8"))
    try:
        jobs = importlib.import_module("trainer.jobs")
    except ImportError as exc:
        atomic_json(result_path, {"error": f"the trainer is not installed with this controller "
                                           f"(import trainer.jobs failed: {exc})"})  # fmt: skip
        return 3
    try:
        out = jobs.run_action(
            request["task"], request["action"], request["spec"], request["overrides"], untrusted=True
        )
        result = out.to_dict() if hasattr(out, "to_dict") else {"result": repr(out)}
    except Exception as exc:  # the job's own failure, kept with its traceback tail
        atomic_json(result_path, {"error": f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}"})
        return 1
    atomic_json(result_path, {"result": json.loads(json.dumps(result, default=str))})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
