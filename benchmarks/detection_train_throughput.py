"""Images/s of edgeloop's detection train step against a plain loop over transformers'
``RTDetrForObjectDetection`` with its own loss: same model config, batch, image size, precision.

Both loops train identically initialised detectors (the student shape by default: resnet18
backbone, d_model 128, 3 decoder layers, 100 queries, 100 denoising queries) on the same batch
already on the device (data loading is not measured: the step is), AdamW, autocast with the same
dtype (bf16 on GPUs that have it, fp32 on CPU). ``plain`` is the loop a user writes:
``model(pixel_values, labels=...).loss``, backward, step. ``ours`` is ``trainer.engine.TrainStep``
with the batched RT-DETR loss (``trainer/tasks/detection/criterion.py``), the weight EMA update
and channels_last on CUDA, as ``edgeloop model detection train`` runs it. ``ours_compiled``
(``--compile``) adds ``torch.compile`` of the backbone. Rounds alternate the loops so drift hits
all; the median round is reported with the ratio to ``plain`` (goal on the H200: >= 2x and
>= 1000 images/s for the student at 256 px).

    python benchmarks/detection_train_throughput.py --device cpu --image-size 64 --batch 2 --steps 1 --tiny
    python benchmarks/detection_train_throughput.py --device cuda --batch 128 256 --profile prof.txt --compile
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer.ema import ModelEMA  # noqa: E402
from trainer.engine import TrainStep, make_optimizer  # noqa: E402
from trainer.runtime import amp_dtype  # noqa: E402
from trainer.tasks.detection.criterion import install  # noqa: E402
from trainer.tasks.detection.model import DetectorConfig, build_detector  # noqa: E402
from trainer.tasks.detection.spec import DetectionTrainSpec  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_batch(batch: int, size: int, classes: int, device: torch.device, seed: int = 0):
    """Images and 0-4 boxes per image (the synthetic PCB set's range), fixed by the seed."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, size, size, generator=g)
    targets = []
    for _ in range(batch):
        n = int(torch.randint(0, 5, (1,), generator=g))
        wh = torch.rand(n, 2, generator=g) * 0.1 + 0.03
        c = torch.rand(n, 2, generator=g) * 0.8 + 0.1
        targets.append(
            {
                "class_labels": torch.randint(0, classes, (n,), generator=g).to(device),
                "boxes": torch.cat([c, wh], 1).to(device),
            }
        )
    return x.to(device), targets


def plain_loop(model, x, targets, device, lr):
    """The textbook loop: transformers computes its loss inside forward."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    dtype = amp_dtype(device, True)
    model.train()

    def run(n: int) -> None:
        for _ in range(n):
            with torch.autocast(device.type, dtype=dtype) if dtype else nullcontext():
                loss = model(pixel_values=x, labels=targets).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    return run


def our_loop(model, x, targets, device, lr, *, channels_last: bool):
    install(model)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=fmt)
    cfg = DetectionTrainSpec(lr=lr)
    opt = make_optimizer(model.parameters(), cfg, fused=device.type == "cuda")  # as fit() builds it
    ema = ModelEMA(model, cfg.ema_decay, cfg.ema_warmup_steps).to(device, fmt)

    def loss_fn(m, images, tgts):
        return m(pixel_values=images, labels=tgts).loss

    step = TrainStep(model, opt, loss_fn, device, True, channels_last, clip_grad_norm=cfg.clip_grad_norm)
    model.train()

    def run(n: int) -> None:
        for _ in range(n):
            xb, _ = step.to_device(x, None)
            step(xb, targets)
            ema.update(model)

    return run


def timed(run, n: int, device: torch.device) -> float:
    sync(device)
    t0 = time.perf_counter()
    run(n)
    sync(device)
    return time.perf_counter() - t0


def profile(run, device: torch.device, path: Path, steps: int = 5) -> str:
    """Top ops of a few steps by device time (CPU time on CPU), written to ``path``."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch_profile(activities=acts) as prof:
        run(steps)
        sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    text = prof.key_averages().table(sort_by=key, row_limit=20)
    text += "\n\n" + prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
    path.write_text(text, encoding="utf-8")
    return text


def config(args) -> DetectorConfig:
    if args.tiny:
        return DetectorConfig(
            num_labels=args.classes,
            num_queries=10,
            d_model=32,
            encoder_ffn_dim=32,
            decoder_ffn_dim=32,
            decoder_layers=2,
            num_denoising=10,
            image_size=args.image_size,
        )
    return DetectorConfig(
        backbone=args.backbone,
        num_labels=args.classes,
        num_queries=args.queries,
        d_model=args.d_model,
        encoder_ffn_dim=4 * args.d_model,
        decoder_ffn_dim=4 * args.d_model,
        decoder_layers=args.decoder_layers,
        num_denoising=100,
        image_size=args.image_size,
    )


def measure(args, batch: int, device: torch.device) -> dict:
    cfg = config(args)
    torch.manual_seed(0)
    base = build_detector(cfg)
    variants = ["plain", "ours"] + (["ours_compiled"] if args.compile else [])
    x, targets = make_batch(batch, args.image_size, args.classes, device)
    channels_last = device.type == "cuda"
    runs = {}
    for name in variants:
        m = build_detector(cfg)
        m.load_state_dict(base.state_dict())
        m.to(device)
        if name == "plain":
            runs[name] = plain_loop(m, x, targets, device, args.lr)
            continue
        if name == "ours_compiled":
            body = m.model.backbone.model
            body.forward = torch.compile(body.forward)
        runs[name] = our_loop(m, x, targets, device, args.lr, channels_last=channels_last)
    failed = {}
    for name, run in list(runs.items()):
        try:
            timed(run, args.warmup, device)
        except Exception as exc:  # torch.compile may not cope with a backend; report, keep the rest
            failed[name] = f"{type(exc).__name__}: {str(exc)[:300]}"
            del runs[name]
            variants.remove(name)
    rates: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(args.rounds):
        for name, run in runs.items():
            rates[name].append(batch * args.steps / timed(run, args.steps, device))
    med = {k: statistics.median(v) for k, v in rates.items()}
    out = {"batch": batch, **{f"{k}_images_per_s": round(v, 1) for k, v in med.items()}, "failed": failed}
    for k in variants[1:]:
        out[f"{k}_vs_plain"] = round(med[k] / med["plain"], 2)
    if args.profile:
        path = Path(args.profile)
        path = path.with_name(f"{path.stem}_b{batch}{path.suffix}")
        profile(runs["ours"], device, path)
        out["profile"] = str(path)
    if device.type == "cuda":
        out["max_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
        torch.cuda.reset_peak_memory_stats()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--decoder-layers", type=int, default=3)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--classes", type=int, default=6)
    ap.add_argument("--batch", type=int, nargs="+", default=[128])
    ap.add_argument("--steps", type=int, default=10, help="timed steps per round")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--compile", action="store_true", help="also time torch.compile of the backbone")
    ap.add_argument("--tiny", action="store_true", help="a few-thousand-parameter detector (CI)")
    ap.add_argument("--profile", help="write a torch.profiler table of our step here")
    ap.add_argument("--json", help="also write the result here")
    args = ap.parse_args(argv)
    device = torch.device(
        "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    )
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    dtype = amp_dtype(device, True)
    result = {
        "device": torch.cuda.get_device_name()
        if device.type == "cuda"
        else f"cpu ({torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "config": config(args).to_dict() | {"id2label": None},
        "precision": str(dtype).replace("torch.", "") if dtype else "fp32",
        "runs": [measure(args, b, device) for b in args.batch],
    }
    for r in result["runs"]:
        line = (
            f"batch {r['batch']}: plain {r['plain_images_per_s']} img/s, ours {r['ours_images_per_s']} img/s"
        )
        line += f" ({r['ours_vs_plain']}x)"
        if "ours_compiled_images_per_s" in r:
            line += f", compiled {r['ours_compiled_images_per_s']} img/s ({r['ours_compiled_vs_plain']}x)"
        print(line)
    print(json.dumps(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
