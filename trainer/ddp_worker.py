"""One torchrun process of a distributed action (started by trainer.jobs, not by users)."""

from __future__ import annotations

import logging
import sys

import torch
import torch.distributed as dist


def main(argv: list[str]) -> int:
    task, action, spec_file = argv
    from trainer.runtime import dist_env, execute
    from trainer.spec import load_spec
    from trainer.tasks.registry import get_task

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    t = get_task(task)
    spec = load_spec(t.schema, spec_file)
    _, local_rank, _ = dist_env()
    device = getattr(getattr(getattr(spec, "train", None), "device", "auto"), "value", "auto")
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    try:
        execute(task, action, spec, t.get_action(action).fn)
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
