"""Images/s of edgeloop's train step against a plain PyTorch loop, same model/batch/precision.

Both loops train an identically initialised model on the same in-memory batch (so data loading
is not measured: this isolates the step), SGD-Nesterov, cross-entropy, autocast with the same
dtype (bf16 on GPUs that have it, fp16 + GradScaler otherwise, fp32 on CPU), the same memory
format. Rounds alternate plain/ours so clock or thermal drift hits both; the median round is
reported with the ratio ours/plain (goal >= 0.95).

    python benchmarks/train_throughput.py --model resnet18 --image-size 64 --batch 32 --steps 20
    python benchmarks/train_throughput.py --device cuda --model resnet50 --image-size 224 --batch 128 --amp --channels-last
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer.engine import TrainStep, cross_entropy, make_optimizer, make_scheduler  # noqa: E402
from trainer.models.backbones import build_model  # noqa: E402
from trainer.runtime import amp_dtype  # noqa: E402
from trainer.spec import TrainSpec  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def plain_loop(model, x, y, steps, device, amp, lr):
    """The textbook loop a user would write."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-5, nesterov=True)
    crit = nn.CrossEntropyLoss()
    dtype = amp_dtype(device, amp)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    model.train()

    def run(n: int) -> None:
        for _ in range(n):
            ctx = torch.autocast(device.type, dtype=dtype) if dtype else nullcontext()
            with ctx:
                loss = crit(model(x), y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()

    return run


def our_loop(model, x, y, steps, device, amp, lr, channels_last):
    cfg = TrainSpec(lr=lr, amp=amp, channels_last=channels_last, warmup_epochs=0)
    opt = make_optimizer(model.parameters(), cfg)
    sched = make_scheduler(opt, cfg, steps_per_epoch=10_000, epochs=1)
    step = TrainStep(model, opt, cross_entropy(), device, amp, channels_last)
    model.train()

    def run(n: int) -> None:
        for _ in range(n):
            xb, yb = step.to_device(x, y)  # a no-op copy when already there, as in fit()
            step(xb, yb)
            sched.step()

    return run


def timed(run, n: int, device: torch.device) -> float:
    sync(device)
    t0 = time.perf_counter()
    run(n)
    sync(device)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per round")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--classes", type=int, default=6)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    ap.add_argument("--json", help="also write the result here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(
        "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    )
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    channels_last = args.channels_last and device.type == "cuda"
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    torch.manual_seed(0)
    base = build_model(args.model, args.classes)
    models = {}
    for name in ("plain", "ours"):
        m = build_model(args.model, args.classes)
        m.load_state_dict(base.state_dict())
        models[name] = m.to(device, memory_format=fmt)
    x = torch.randn(args.batch, 3, args.image_size, args.image_size, device=device).to(memory_format=fmt)
    y = torch.randint(0, args.classes, (args.batch,), device=device)
    lr = 0.01
    runs = {
        "plain": plain_loop(models["plain"], x, y, args.steps, device, args.amp, lr),
        "ours": our_loop(models["ours"], x, y, args.steps, device, args.amp, lr, channels_last),
    }
    for run in runs.values():
        timed(run, args.warmup, device)
    rates: dict[str, list[float]] = {"plain": [], "ours": []}
    for _ in range(args.rounds):
        for name, run in runs.items():
            rates[name].append(args.batch * args.steps / timed(run, args.steps, device))
    plain, ours = statistics.median(rates["plain"]), statistics.median(rates["ours"])
    dtype = amp_dtype(device, args.amp)
    result = {
        "device": torch.cuda.get_device_name()
        if device.type == "cuda"
        else f"cpu ({torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "model": args.model,
        "image_size": args.image_size,
        "batch": args.batch,
        "precision": str(dtype).replace("torch.", "") if dtype else "fp32",
        "channels_last": channels_last,
        "plain_images_per_s": round(plain, 1),
        "ours_images_per_s": round(ours, 1),
        "ratio": round(ours / plain, 3),
        "rounds": rates,
    }
    print(
        f"{result['device']} {args.model} {args.image_size}px batch {args.batch} {result['precision']}"
        f"{' channels_last' if channels_last else ''}: plain {plain:.1f} img/s, edgeloop {ours:.1f} img/s, "
        f"ratio {ours / plain:.3f} (goal >= 0.95)"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
