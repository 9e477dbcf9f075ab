"""Label efficiency of self-supervised pretraining on the synthetic PCB classification set.

For each label fraction (1 %, 10 %, 100 % of the train split, stratified, nested), fine-tune
``--backbone`` (a) from scratch and (b) from the ``ssl`` action's backbone (``--ssl-method``: mim,
masked image modelling, by default; dino), with the same
fine-tuning recipe and budget, and report test accuracy per cell. Everything runs through the
trainer's own actions (``ssl``, ``train``, ``evaluate``).

Protocol (stated so the numbers can be judged):

- the SSL backbone is pretrained once, without labels, on the train images *outside* the 10 %
  subset (the unlabelled remainder of the 1 % and 10 % cells; the 1 % cell's remainder is
  larger, and we use only that part of it). The 100 % cell has no remainder: it reuses that
  backbone, whose images are then labelled in that cell (their labels were never seen by SSL);
- same budget: every cell runs ``--ft-epochs`` epochs of the same number of optimizer steps
  (a small subset is repeated, as symlinks, up to the full train split's size), same optimizer,
  schedule, augmentation and batch size;
- the *last* epoch's model is evaluated on the whole test split (no model selection on the
  labelled validation split, which a 1 % user would not have); best validation accuracy is
  printed beside it for reference.

Goal: at 10 % labels the SSL start beats scratch by >= 10 accuracy points (met with mim on two
seeds: +20.7 and +15.6; DINO gave +1.3 to +6.6; docs/trainer.md). After the cells, a diagnostic
(``--no-probe`` skips it): kNN and linear probes of the frozen SSL and random features.

    python benchmarks/ssl_label_efficiency.py --quick                 # CPU smoke run, numbers meaningless
    OMP_NUM_THREADS=4 python benchmarks/ssl_label_efficiency.py --device cuda --workers 7 --seed 0 --json $OUT/ssl.json
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from trainer.datasets.folder import class_names, list_images  # noqa: E402
from trainer.datasets.synth_pcb import synthesize  # noqa: E402
from trainer.jobs import run_action  # noqa: E402


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/ssl_label_eff"))
    ap.add_argument(
        "--data", type=Path, default=None, help="the synthetic set (default WORK/data; made when missing)"
    )
    ap.add_argument("--num-images", type=int, default=6000)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--difficulty", default="easy")
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument(
        "--fractions", type=float, nargs="+", default=[10.0, 1.0, 100.0], help="percent of labels"
    )
    ap.add_argument("--device", default="auto")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--ssl-method", default="mim", choices=["dino", "mim"], help="ssl.method")
    ap.add_argument("--ssl-epochs", type=int, default=2000, help="horizon; the time limit shortens it")
    ap.add_argument(
        "--ssl-time-limit", type=float, default=150.0, help="seconds; the SSL schedule fits in it"
    )
    ap.add_argument("--ssl-batch-size", type=int, default=256)
    ap.add_argument("--ssl-lr", type=float, default=1e-3)
    ap.add_argument("--ssl-local-views", type=int, default=6)
    ap.add_argument("--ssl-max-steps", type=int, default=0)
    ap.add_argument(
        "--ssl-set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="more ssl.* keys, as spec overrides (e.g. global_crop_scale=[0.8,1.0])",
    )
    ap.add_argument(
        "--no-scratch", action="store_true", help="SSL cells only (scratch cells from another run)"
    )
    ap.add_argument(
        "--ssl-augment-on", default="auto", choices=["auto", "cpu", "device"], help="ssl.augment_on"
    )
    ap.add_argument("--ft-epochs", type=int, default=12)
    ap.add_argument("--ft-batch-size", type=int, default=128)
    ap.add_argument("--ft-lr", type=float, default=1e-3)
    ap.add_argument("--ft-max-steps", type=int, default=0)
    ap.add_argument(
        "--ssl-lr-mults",
        type=float,
        nargs="+",
        default=[1.0],
        help="train.backbone_lr_mult of the SSL cells, one cell each; the first is the goal's",
    )
    ap.add_argument("--seed", type=int, default=0, help="the labelled subsets, SSL and fine-tuning draws")
    ap.add_argument(
        "--data-seed", type=int, default=0, help="the synthetic set's seed (fixed across --seed runs)"
    )
    ap.add_argument(
        "--no-probe",
        action="store_true",
        help="skip the frozen-feature probes (kNN and linear, 10 %% labels) of the SSL and a random backbone",
    )
    ap.add_argument("--json", type=Path, default=None, help="results, rewritten after every cell")
    ap.add_argument("--quick", action="store_true", help="tiny CPU settings (a test runs this)")
    a = ap.parse_args(argv)
    if a.quick:
        a.num_images, a.image_size, a.device, a.workers = 60, 32, "cpu", 0
        a.ssl_epochs, a.ssl_time_limit, a.ssl_batch_size, a.ssl_local_views, a.ssl_max_steps = (
            1,
            0.0,
            16,
            2,
            2,
        )
        a.ft_epochs, a.ft_batch_size, a.ft_max_steps = 1, 16, 2
    return a


def stratified_order(root: Path, seed: int) -> dict[str, list[Path]]:
    """Each class's train images in one seeded order; a fraction is a prefix (subsets nest)."""
    rng = random.Random(seed)
    order = {}
    for c in class_names(root, "train"):
        files = list_images(root / "train" / c)
        rng.shuffle(files)
        order[c] = files
    return order


def subset(order: dict[str, list[Path]], percent: float) -> dict[str, list[Path]]:
    return {c: files[: max(1, math.ceil(len(files) * percent / 100))] for c, files in order.items()}


def labelled_root(data: Path, picked: dict[str, list[Path]], dest: Path) -> Path:
    """An ImageFolder root: the subset repeated (symlinks) up to the full split's size, so every
    fraction gets the same steps per epoch; val and test are the full splits."""
    full = sum(len(list_images(data / "train" / c)) for c in picked)
    n = sum(len(v) for v in picked.values())
    copies = max(1, round(full / n))
    for c, files in picked.items():
        (dest / "train" / c).mkdir(parents=True, exist_ok=True)
        for k in range(copies):
            for f in files:
                link = dest / "train" / c / f"{k}_{f.name}"
                if not link.exists():
                    link.symlink_to(f.resolve())
    for split in ("val", "test"):
        if not (dest / split).exists():
            (dest / split).symlink_to((data / split).resolve())
    return dest


def unlabelled_root(order: dict[str, list[Path]], held: dict[str, list[Path]], dest: Path) -> int:
    """Flat folder of the train images outside ``held`` (no class folders: labels are gone)."""
    dest.mkdir(parents=True, exist_ok=True)
    n = 0
    for c, files in order.items():
        keep = set(held[c])
        for f in files:
            if f not in keep:
                link = dest / f"{c}_{f.name}"
                if not link.exists():
                    link.symlink_to(f.resolve())
                n += 1
    return n


def _features(net, paths: list[Path], a: argparse.Namespace, device) -> torch.Tensor:
    from trainer.datasets.folder import eval_transform, load_rgb
    from trainer.tasks.classification.spec import IMAGENET_MEAN, IMAGENET_STD

    tf = eval_transform(a.image_size, IMAGENET_MEAN, IMAGENET_STD)  # the spec defaults used here
    out = []
    with torch.no_grad():
        for i in range(0, len(paths), 256):
            x = torch.stack([tf(load_rgb(p)) for p in paths[i : i + 256]]).to(device)
            out.append(net(x).float().cpu())
    return torch.cat(out)


def probe(a: argparse.Namespace, data: Path, held: dict[str, list[Path]], backbone: Path) -> dict:
    """Do the frozen features carry the defect class? kNN (k=20, cosine) and a linear
    classifier (standardised features, full-batch AdamW) fitted on the 10 % labelled subset,
    scored on the test split; the same for a randomly initialised backbone as the floor."""
    import torch

    from trainer.runtime import select_device
    from trainer.ssl.dino import classification_name, headless_backbone

    device = select_device(a.device, 0)
    classes = sorted(held)
    tr = [(p, classes.index(c)) for c in classes for p in held[c]]
    te = [(p, classes.index(c)) for c in classes for p in list_images(data / "test" / c)]
    ytr, yte = torch.tensor([y for _, y in tr]), torch.tensor([y for _, y in te])
    out = {}
    for name, path in (("random init", None), ("ssl", backbone)):
        torch.manual_seed(a.seed)
        net, _ = headless_backbone(classification_name(a.backbone), a.image_size)
        if path is not None:
            net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        net = net.to(device).eval()
        ftr, fte = (
            _features(net, [p for p, _ in tr], a, device),
            _features(net, [p for p, _ in te], a, device),
        )
        sim = torch.nn.functional.normalize(fte, dim=1) @ torch.nn.functional.normalize(ftr, dim=1).T
        top = sim.topk(min(20, len(tr)), dim=1).indices
        votes = torch.zeros(len(te), len(classes)).scatter_add_(1, ytr[top], torch.ones(top.shape))
        knn = float((votes.argmax(1) == yte).float().mean())
        mu, sd = ftr.mean(0), ftr.std(0) + 1e-6
        lin = torch.nn.Linear(ftr.shape[1], len(classes))
        opt = torch.optim.AdamW(lin.parameters(), lr=1e-2, weight_decay=1e-2)
        for _ in range(300):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(lin((ftr - mu) / sd), ytr).backward()
            opt.step()
        with torch.no_grad():
            linear = float((lin((fte - mu) / sd).argmax(1) == yte).float().mean())
        out[name] = {"knn_accuracy": round(knn, 4), "linear_accuracy": round(linear, 4)}
    return out


def base_spec(a: argparse.Namespace, root: Path, results: Path) -> dict:
    return {
        "results_dir": str(results),
        "seed": a.seed,
        "model": {"backbone": a.backbone},
        "dataset": {"root": str(root), "image_size": a.image_size},
        "train": {
            "device": a.device,
            "num_workers": a.workers,
            "epochs": a.ft_epochs,
            "batch_size": a.ft_batch_size,
            "optimizer": "adamw",
            "lr": a.ft_lr,
            "weight_decay": 0.05,
            "warmup_epochs": 1 if a.ft_epochs > 2 else 0,
            "max_steps_per_epoch": a.ft_max_steps,
            "checkpoint_interval": a.ft_epochs,
        },
    }


def ssl_name(mult: float) -> str:
    return "ssl" if mult == 1.0 else f"ssl, backbone lr x{mult:g}"


def run_cell(a, root: Path, results: Path, pretrained: Path | None, lr_mult: float = 1.0) -> dict:
    spec = base_spec(a, root, results)
    if pretrained is not None:
        spec["model"]["pretrained_path"] = str(pretrained)
    spec["train"]["backbone_lr_mult"] = lr_mult
    t0 = time.perf_counter()
    tr = run_action("classification", "train", spec)
    ev = run_action(
        "classification",
        "evaluate",
        spec,
        [f"evaluate.checkpoint={tr.output_dir / 'last.pth'}", "evaluate.batch_size=256"],
    )
    return {
        "test_accuracy": ev.metrics["accuracy"],
        "best_val_accuracy": tr.metrics.get("best_val_accuracy"),
        "last_val_accuracy": tr.metrics.get("val_accuracy"),
        "images_per_s": tr.metrics.get("images_per_s"),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def table(res: dict, names: list[str]) -> str:
    lines = [
        "| labels | labelled images | start | scratch test acc | SSL test acc | SSL - scratch (points) | best val (scratch / SSL) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key, cell in res["cells"].items():
        s = cell.get("scratch")
        for name in names:
            p = cell.get(name)
            if not (s and p):
                continue
            d = 100 * (p["test_accuracy"] - s["test_accuracy"])
            lines.append(
                f"| {key} | {cell['labelled']} | {name} | {100 * s['test_accuracy']:.1f} % "
                f"| {100 * p['test_accuracy']:.1f} % | {d:+.1f} "
                f"| {100 * (s['best_val_accuracy'] or 0):.1f} / {100 * (p['best_val_accuracy'] or 0):.1f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    started = time.perf_counter()
    data = a.data or a.work / "data"
    if not (data / "test").is_dir():
        synthesize(
            data,
            a.num_images,
            a.image_size,
            seed=a.data_seed,
            workers=max(1, a.workers),
            difficulty=a.difficulty,
        )
    order = stratified_order(data, a.seed)
    res: dict = {"args": {k: str(v) for k, v in vars(a).items()}, "cells": {}}

    def dump() -> None:
        res["elapsed_s"] = round(time.perf_counter() - started, 1)
        if a.json:
            a.json.parent.mkdir(parents=True, exist_ok=True)
            a.json.write_text(json.dumps(res, indent=2) + "\n")

    held = subset(order, 10.0)
    pool = a.work / "unlabeled"
    res["unlabelled_images"] = unlabelled_root(order, held, pool)
    spec = base_spec(a, data, a.work / "runs" / "ssl")
    spec["dataset"]["unlabeled_root"] = str(pool)
    spec["ssl"] = {
        "method": a.ssl_method,
        "epochs": a.ssl_epochs,
        "time_limit_s": a.ssl_time_limit,
        "batch_size": a.ssl_batch_size,
        "lr": a.ssl_lr,
        "local_views": a.ssl_local_views,
        "max_steps_per_epoch": a.ssl_max_steps,
        "warmup_epochs": 10 if a.ssl_epochs > 20 else 0,
        "vflip": 0.5,
        "augment_on": a.ssl_augment_on,
    }
    ssl = run_action("classification", "ssl", spec, [f"ssl.{kv}" for kv in a.ssl_set])
    res["ssl"] = ssl.metrics
    res["ssl_history"] = json.loads((ssl.output_dir / "backbone.json").read_text())["history"]
    print(f"ssl: {ssl.metrics}", flush=True)
    dump()
    for pct in a.fractions:
        key = f"{pct:g} %"
        picked = subset(order, pct)
        root = labelled_root(data, picked, a.work / f"labels_{pct:g}")
        cell = res["cells"].setdefault(key, {"labelled": sum(len(v) for v in picked.values())})
        runs = [] if a.no_scratch else [("scratch", None, 1.0)]
        runs += [(ssl_name(m), ssl.model_path, m) for m in a.ssl_lr_mults]
        for i, (name, start, mult) in enumerate(runs):
            cell[name] = run_cell(a, root, a.work / "runs" / f"{pct:g}_{i}", start, mult)
            print(f"{key} {name}: {cell[name]}", flush=True)
            dump()
    if not a.no_probe:  # after the cells: a diagnostic, never in the way of the goal's figures
        res["probe"] = probe(a, data, held, ssl.model_path)
        print(f"probe (frozen features, 10 % labels, test split): {res['probe']}", flush=True)
        dump()
    names = [ssl_name(m) for m in a.ssl_lr_mults]
    print(table(res, names))
    if a.quick:
        print("--quick: tiny CPU settings, the accuracies are NOT MEANINGFUL (--quick)")
    ten = res["cells"].get("10 %")
    if ten and names[0] in ten and "scratch" in ten:
        gain = 100 * (ten[names[0]]["test_accuracy"] - ten["scratch"]["test_accuracy"])
        res["gain_at_10_percent_points"] = round(gain, 2)
        verdict = "NOT MEANINGFUL (--quick)" if a.quick else ("MET" if gain >= 10 else "NOT MET")
        print(
            f"goal: SSL ({names[0]}) beats scratch by >= 10 points at 10 % labels: {gain:+.1f} points -> {verdict}"
        )
    dump()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
