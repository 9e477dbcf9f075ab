"""The ssl action end to end on real files (tiny DINO on 32 px images, CPU), its backbone
checkpoint loaded by classification and detection fine-tuning, and the refusals."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from trainer.jobs import resolve_spec, run_action
from trainer.spec import SpecError

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# a DINO small enough for two CPU cores: 2 local views, small head, 2 steps per epoch
TINY_SSL = {
    "epochs": 2,
    "batch_size": 8,
    "max_steps_per_epoch": 2,
    "local_views": 2,
    "hidden_dim": 32,
    "bottleneck_dim": 16,
    "output_dim": 64,
    "warmup_epochs": 1,
}


def _status(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "status.json").read_text().splitlines()]


@pytest.fixture(scope="module")
def unlabeled(tiny_data: Path, tmp_path_factory) -> Path:
    """The train split's images without their class folders' meaning, nested two levels deep,
    plus one corrupt file (skipped and counted)."""
    root = tmp_path_factory.mktemp("unlabeled")
    for i, p in enumerate(sorted((tiny_data / "train").rglob("*.png"))):
        dest = root / f"line{i % 2}" / "cam" / f"{i}.png"
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(p.read_bytes())
    (root / "line0" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    return root


@pytest.fixture(scope="module")
def ssl_run(tiny_data: Path, unlabeled: Path, make_spec, tmp_path_factory):
    results = tmp_path_factory.mktemp("ssl_runs")
    spec = make_spec(tiny_data, results, ssl=TINY_SSL)
    spec["dataset"]["unlabeled_root"] = str(unlabeled)
    return spec, run_action("classification", "ssl", spec)


def test_ssl_action_writes_backbone_and_status(ssl_run) -> None:
    _, res = ssl_run
    out = res.output_dir
    assert res.model_path == out / "backbone.pth"
    states = _status(out)
    assert states[0]["status"] == "started" and states[-1]["status"] == "succeeded"
    progress = [s for s in states if s["status"] == "progress" and "epoch" in s]
    assert [p["epoch"] for p in progress] == [1, 2]
    assert all(p["ssl_loss"] > 0 and p["images_per_s"] > 0 for p in progress)
    assert res.metrics["num_images"] == 72 and res.metrics["corrupt_images"] == 1
    # plain tensors only: the safe loader reads it, and no classifier head is in it
    state = torch.load(out / "backbone.pth", map_location="cpu", weights_only=True)
    assert state and all(isinstance(v, torch.Tensor) for v in state.values())
    assert "conv1.weight" in state and not any(k.startswith("fc.") for k in state)
    meta = json.loads((out / "backbone.json").read_text())
    assert meta["backbone"] == "resnet18" and meta["epochs"] == 2 and meta["image_size"] == 32


def test_classification_fine_tunes_from_ssl_backbone(ssl_run, tiny_data: Path, make_spec, tmp_path) -> None:
    from trainer.models.backbones import build_model, load_pretrained

    spec, res = ssl_run
    state = torch.load(res.model_path, weights_only=True)
    model = build_model("resnet18", 6)
    counts = load_pretrained(model, res.model_path, "resnet18")
    assert counts["loaded"] == len(state) and counts["missing"] == 0
    assert torch.equal(model.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])

    # train.backbone_lr_mult: the pretrained body barely moves, the new head trains at full lr
    ft = make_spec(tiny_data, tmp_path, model={"pretrained_path": str(res.model_path)})
    ft["train"]["backbone_lr_mult"] = 1e-6
    out = run_action("classification", "train", ft)
    assert out.status == "succeeded" and (out.output_dir / "model.pth").is_file()
    assert f"loaded {res.model_path}" in (out.output_dir / "log.txt").read_text()
    last = torch.load(out.output_dir / "last.pth", weights_only=True)
    body = [k for k in state if k.endswith(".weight") and "bn" not in k and "downsample.1" not in k]
    assert body and all(torch.allclose(last["state_dict"][k], state[k], atol=1e-5) for k in body)
    head, rest = last["optimizer"]["param_groups"]
    assert len(head["params"]) == 2  # fc.weight, fc.bias
    assert rest["initial_lr"] == pytest.approx(head["initial_lr"] * 1e-6)


def test_detection_fine_tunes_from_ssl_backbone(ssl_run, tmp_path) -> None:
    from trainer.tasks.detection.backbones import backbone_module, load_pretrained_backbone
    from trainer.tasks.detection.model import DetectorConfig, build_detector
    from trainer.tasks.detection.synth import synthesize

    _, res = ssl_run
    state = torch.load(res.model_path, weights_only=True)
    det = build_detector(
        DetectorConfig(
            backbone="resnet18",
            d_model=32,
            num_queries=5,
            decoder_layers=1,
            encoder_ffn_dim=32,
            decoder_ffn_dim=32,
            attention_heads=2,
        )
    )
    counts = load_pretrained_backbone(det, res.model_path)
    assert counts["loaded"] == len(state) and counts["missing"] == 0
    assert torch.equal(backbone_module(det).body.layer3[0].conv1.weight, state["layer3.0.conv1.weight"])

    data = tmp_path / "coco"
    synthesize(data, 24, 64, seed=1)
    spec = Path(__file__).resolve().parents[2] / "trainer" / "specs" / "detection.yaml"
    out = run_action(
        "detection",
        "train",
        spec,
        [
            f"dataset.root={data}",
            f"results_dir={tmp_path / 'runs'}",
            f"model.pretrained_backbone_path={res.model_path}",
            "dataset.image_size=64",
            "model.num_queries=10",
            "model.d_model=32",
            "model.encoder_ffn_dim=64",
            "model.decoder_ffn_dim=64",
            "model.decoder_layers=1",
            "model.attention_heads=2",
            "model.num_denoising=10",
            "train.epochs=1",
            "train.batch_size=4",
            "train.max_steps_per_epoch=2",
            "train.num_workers=0",
            "train.device=cpu",
            "evaluate.batch_size=8",
        ],
    )
    assert out.status == "succeeded"
    assert f"backbone tensors from {res.model_path}" in (out.output_dir / "log.txt").read_text()


def test_detection_task_has_ssl_action(tmp_path, unlabeled: Path) -> None:
    """The detection spec's own ssl action, on a detection-only backbone (timm convnext_femto)."""
    spec = Path(__file__).resolve().parents[2] / "trainer" / "specs" / "detection.yaml"
    out = run_action(
        "detection",
        "ssl",
        spec,
        [
            f"dataset.root={tmp_path}",
            f"dataset.unlabeled_root={unlabeled}",
            f"results_dir={tmp_path / 'runs'}",
            "dataset.image_size=64",
            "model.backbone=convnext_femto",
            "train.device=cpu",  # train.num_workers left at the spec's null: the auto rule
            *[f"ssl.{k}={v}" for k, v in {**TINY_SSL, "epochs": 1, "max_steps_per_epoch": 1}.items()],
        ],
    )
    from trainer.tasks.detection.backbones import load_pretrained_backbone
    from trainer.tasks.detection.model import DetectorConfig, build_detector

    det = build_detector(
        DetectorConfig(
            backbone="convnext_femto",
            d_model=32,
            num_queries=5,
            decoder_layers=1,
            encoder_ffn_dim=32,
            decoder_ffn_dim=32,
            attention_heads=2,
        )
    )
    counts = load_pretrained_backbone(det, out.model_path)
    assert counts["loaded"] > 50 and counts["missing"] == 0


@pytest.fixture(scope="module")
def mim_run(tiny_data: Path, unlabeled: Path, make_spec, tmp_path_factory):
    results = tmp_path_factory.mktemp("mim_runs")
    cfg = {"method": "mim", "epochs": 2, "batch_size": 8, "max_steps_per_epoch": 2, "decoder_dim": 16}
    spec = make_spec(tiny_data, results, ssl=cfg)
    spec["dataset"]["unlabeled_root"] = str(unlabeled)
    return spec, run_action("classification", "ssl", spec)


def test_mim_action_learns_and_writes_backbone(mim_run) -> None:
    """ssl.method=mim end to end: two epochs of masked-image modelling, progress per epoch, and
    a headless backbone of plain tensors (no decoder, no classifier head)."""
    _, res = mim_run
    out = res.output_dir
    assert res.metrics["method"] == "mim" and res.metrics["epochs"] == 2
    progress = [s for s in _status(out) if s["status"] == "progress" and "epoch" in s]
    assert [p["epoch"] for p in progress] == [1, 2] and "teacher_momentum" not in progress[0]
    assert all(0 < p["ssl_loss"] < 10 for p in progress)
    state = torch.load(out / "backbone.pth", map_location="cpu", weights_only=True)
    assert "layer4.1.conv2.weight" in state
    assert not any(k.startswith(("fc.", "lateral", "fuse", "head")) for k in state)
    assert json.loads((out / "backbone.json").read_text())["method"] == "mim"


def test_mim_backbone_loads_in_both_tasks(mim_run) -> None:
    from trainer.models.backbones import build_model, load_pretrained
    from trainer.tasks.detection.backbones import backbone_module, load_pretrained_backbone
    from trainer.tasks.detection.model import DetectorConfig, build_detector

    _, res = mim_run
    state = torch.load(res.model_path, weights_only=True)
    model = build_model("resnet18", 6)
    counts = load_pretrained(model, res.model_path, "resnet18")
    assert counts["loaded"] == len(state) and counts["missing"] == 0
    assert torch.equal(model.layer2[0].conv1.weight, state["layer2.0.conv1.weight"])
    det = build_detector(
        DetectorConfig(
            backbone="resnet18",
            d_model=32,
            num_queries=5,
            decoder_layers=1,
            encoder_ffn_dim=32,
            decoder_ffn_dim=32,
            attention_heads=2,
        )
    )
    counts = load_pretrained_backbone(det, res.model_path)
    assert counts["loaded"] == len(state) and counts["missing"] == 0
    assert torch.equal(backbone_module(det).body.layer3[0].conv1.weight, state["layer3.0.conv1.weight"])


def test_mim_hides_masked_squares_from_the_encoder() -> None:
    """Exactly mask_ratio of the squares is hidden; the encoder sees 0 there and the image
    elsewhere; what is under the hidden squares is the target (the loss moves with it) but
    never the input."""
    from trainer.ssl.dino import headless_backbone
    from trainer.ssl.mim import MaskedConvAE, stage_names

    torch.manual_seed(0)
    net, _ = headless_backbone("resnet18", 32)
    m = MaskedConvAE(net, stage_names("resnet18"), 32, patch=8, mask_ratio=0.5, dim=8).eval()
    seen: list[torch.Tensor] = []
    net.register_forward_pre_hook(lambda _m, args: seen.append(args[0].clone()))
    x = torch.randn(2, 3, 32, 32)
    mask = m.random_mask(2, 32, x.device)
    assert mask.sum(1).tolist() == [8, 8]  # half of the 4 x 4 squares of each image
    hidden = torch.nn.functional.interpolate(mask.view(2, 1, 4, 4).float(), scale_factor=8).bool()
    hidden = hidden.expand_as(x)
    with torch.no_grad():
        base = m(x, mask)
        changed = m(torch.where(hidden, torch.randn_like(x), x), mask)
    assert torch.equal(seen[0][hidden], torch.zeros(int(hidden.sum())))
    assert torch.equal(seen[0][~hidden], x[~hidden])
    assert torch.equal(seen[1], seen[0])  # new pixels under the mask: the same input
    assert not torch.allclose(changed, base)  # ... and another target


def test_mim_refusals(tiny_data: Path, unlabeled: Path, make_spec, tmp_path) -> None:
    spec = make_spec(tiny_data, tmp_path)
    spec["dataset"]["unlabeled_root"] = str(unlabeled)
    with pytest.raises(SpecError, match="key 'ssl.mask_ratio'"):
        resolve_spec("classification", spec, ["ssl.method=mim", "ssl.mask_ratio=1.5"], action="ssl")
    with pytest.raises(SpecError, match=r"unknown key 'ssl.mask_ration' \(did you mean 'mask_ratio'\?\)"):
        resolve_spec("classification", spec, ["ssl.mask_ration=0.5"], action="ssl")
    bad = make_spec(tiny_data, tmp_path / "a", ssl={"method": "mim", "mask_patch": 5})
    bad["dataset"]["unlabeled_root"] = str(unlabeled)
    with pytest.raises(ValueError, match="ssl.mask_patch=5 must divide dataset.image_size=32"):
        run_action("classification", "ssl", bad)
    vit = make_spec(tiny_data, tmp_path / "b", model={"backbone": "vit_tiny"}, ssl={"method": "mim"})
    vit["dataset"]["unlabeled_root"] = str(unlabeled)
    with pytest.raises(ValueError, match="ssl.method=mim supports the resnet backbones.*use ssl.method=dino"):
        run_action("classification", "ssl", vit)
    assert _status(tmp_path / "b" / "ssl")[-1]["kind"] == "invalid_input"


def test_crop_too_small_for_backbone_refused(tiny_data: Path, unlabeled: Path, make_spec, tmp_path) -> None:
    spec = make_spec(
        tiny_data, tmp_path, model={"backbone": "convnext_atto"}, ssl={**TINY_SSL, "local_crop_size": 16}
    )
    spec["dataset"]["unlabeled_root"] = str(unlabeled)
    with pytest.raises(ValueError, match="cannot take 16px crops.*ssl.local_crop_size"):
        run_action("classification", "ssl", spec)
    assert _status(tmp_path / "ssl")[-1]["kind"] == "invalid_input"


def test_bad_ssl_keys_refused(tiny_data: Path, unlabeled: Path, make_spec, tmp_path) -> None:
    spec = make_spec(tiny_data, tmp_path)
    spec["dataset"]["unlabeled_root"] = str(unlabeled)
    with pytest.raises(SpecError, match=r"unknown key 'ssl.epoch' \(did you mean 'epochs'\?\)"):
        resolve_spec("classification", spec, ["ssl.epoch=3"], action="ssl")
    with pytest.raises(SpecError, match="key 'ssl.method'"):
        resolve_spec("classification", spec, ["ssl.method=simclr"], action="ssl")
    with pytest.raises(SpecError, match="key 'ssl.local_crop_scale'"):
        resolve_spec("classification", spec, ["ssl.local_crop_scale=[0.5,0.1]"], action="ssl")
    det = Path(__file__).resolve().parents[2] / "trainer" / "specs" / "detection.yaml"
    with pytest.raises(SpecError, match="unknown key 'ssl.lrr'"):
        resolve_spec("detection", det, [f"dataset.root={tmp_path}", "ssl.lrr=1"], action="ssl")
    assert not (tmp_path / "ssl").exists()


def test_empty_or_missing_unlabeled_folder_refused(tiny_data: Path, make_spec, tmp_path) -> None:
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "notes.txt").write_text("no images here")
    spec = make_spec(tiny_data, tmp_path / "runs", ssl=TINY_SSL)
    with pytest.raises(SpecError, match="'dataset.unlabeled_root': required for the ssl action"):
        run_action("classification", "ssl", spec)
    spec["dataset"]["unlabeled_root"] = str(empty)
    with pytest.raises(SpecError, match=f"'dataset.unlabeled_root': no images under {empty}"):
        run_action("classification", "ssl", spec)
    spec["dataset"]["unlabeled_root"] = str(tmp_path / "nowhere")
    with pytest.raises(SpecError, match="'dataset.unlabeled_root': folder not found"):
        run_action("classification", "ssl", spec)
    assert not (tmp_path / "runs" / "ssl").exists()  # refused before any work


def test_label_efficiency_benchmark_runs(tmp_path, capsys) -> None:
    """benchmarks/ssl_label_efficiency.py --quick: one SSL run and both fine-tunes of a cell."""
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "ssl_label_efficiency.py"
    spec = importlib.util.spec_from_file_location("ssl_label_efficiency", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "r.json"
    args = ["--quick", "--work", str(tmp_path / "w"), "--fractions", "50", "--json", str(out)]
    more = ["--ssl-augment-on", "device", "--ssl-lr-mults", "0.1", "--ssl-set", "global_crop_scale=[0.8,1.0]"]
    assert mod.main([*args, *more]) == 0
    ssl_spec = (tmp_path / "w" / "runs" / "ssl" / "ssl" / "spec.yaml").read_text()
    assert "- 0.8" in ssl_spec.split("global_crop_scale:")[1].split(":")[0]
    res = json.loads(out.read_text())
    cell = res["cells"]["50 %"]
    ssl = "ssl, backbone lr x0.1"
    assert {"scratch", ssl} <= set(cell) and 0 <= cell[ssl]["test_accuracy"] <= 1
    assert res["ssl"]["views_on"] == "cpu"  # the device path, on this machine's CPU
    # the SSL pool is the train split minus the labelled 10 %: no labelled image leaks into it
    train = len(list((tmp_path / "w" / "data" / "train").rglob("*.png")))
    assert res["unlabelled_images"] == train - 6  # one labelled image per class at 10 %
    printed = capsys.readouterr().out
    assert "| 50 % | " in printed and "NOT MEANINGFUL (--quick)" in printed


def test_backbone_survives_sigkill(tiny_data: Path, unlabeled: Path, tmp_path) -> None:
    """Killed mid-run (SIGKILL, after at least one epoch), the backbone on disk is a whole one
    from a finished epoch: it is replaced atomically, never written in place."""
    import signal
    import subprocess
    import sys
    import time

    results = tmp_path / "runs"
    args = [
        f"dataset.root={tiny_data}",
        f"dataset.unlabeled_root={unlabeled}",
        f"results_dir={results}",
        "dataset.image_size=32",
        "train.device=cpu",
        "train.num_workers=0",
        *[f"ssl.{k}={v}" for k, v in {**TINY_SSL, "epochs": 1000, "max_steps_per_epoch": 1}.items()],
    ]
    spec = Path(__file__).resolve().parents[2] / "trainer" / "specs" / "classification.yaml"
    code = (
        "import sys, torch; torch.set_num_threads(1); from trainer.jobs import run_action; "
        f"run_action('classification', 'ssl', {str(spec)!r}, sys.argv[1:])"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen([sys.executable, "-c", code, *args], env=env)
    status = results / "ssl" / "status.json"
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if status.is_file() and sum('"epoch": ' in line for line in status.read_text().splitlines()) >= 2:
                break
            time.sleep(0.2)
        assert proc.poll() is None, "the ssl run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    state = torch.load(results / "ssl" / "backbone.pth", map_location="cpu", weights_only=True)
    assert "layer4.1.conv2.weight" in state and all(isinstance(v, torch.Tensor) for v in state.values())


def test_time_limit_shortens_the_schedule(tiny_data: Path, unlabeled: Path, make_spec, tmp_path) -> None:
    """ssl.time_limit_s sets the schedule's horizon: a budget smaller than one epoch stops after
    the first, with the horizon reported in the progress records."""
    spec = make_spec(tiny_data, tmp_path, ssl={**TINY_SSL, "epochs": 50, "time_limit_s": 0.01})
    spec["dataset"]["unlabeled_root"] = str(unlabeled)
    res = run_action("classification", "ssl", spec)
    assert res.metrics["epochs"] == 1
    progress = [s for s in _status(res.output_dir) if s["status"] == "progress" and "epoch" in s]
    assert [p["horizon_epochs"] for p in progress] == [1]


def _device_crop(**kw):
    from trainer.ssl.device_views import DeviceMultiCrop

    args = dict(
        global_size=32,
        local_size=16,
        local_views=3,
        global_scale=(0.4, 1.0),
        local_scale=(0.05, 0.4),
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
    )
    return DeviceMultiCrop(**{**args, **kw})


def test_device_views_shapes_and_per_image_randomness() -> None:
    """The device path (run here on the CPU) makes 2 global + N local normalised float views of a
    uint8 batch; two copies of one image in a batch get different random views."""
    torch.manual_seed(0)
    img = torch.randint(0, 256, (1, 3, 40, 40), dtype=torch.uint8)
    views = _device_crop()(img.repeat(4, 1, 1, 1))
    assert [tuple(v.shape) for v in views] == [(4, 3, 32, 32)] * 2 + [(4, 3, 16, 16)] * 3
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in views)
    assert all(not torch.allclose(v[0], v[1]) for v in views)
    with pytest.raises(ValueError, match="uint8"):
        _device_crop()(img.float())


def test_device_view_ops_do_what_they_say() -> None:
    from trainer.ssl.device_views import color_jitter, gaussian_blur, random_grayscale, resized_crop, solarize

    torch.manual_seed(1)
    flat = torch.full((3, 3, 24, 24), 0.3)  # crop + resample + blur of a constant image stays constant
    out = gaussian_blur(resized_crop(flat, 16, (0.1, 0.5), 0.5, 0.5), 1.0, (0.5, 2.0))
    assert torch.allclose(out, torch.full_like(out, 0.3), atol=1e-5)
    ramp = torch.linspace(0, 1, 24).expand(2, 3, 24, 24).contiguous()  # bright to the right
    right = resized_crop(ramp, 16, (1.0, 1.0), hflip=0.0, vflip=0.0)
    left = resized_crop(ramp, 16, (1.0, 1.0), hflip=1.0, vflip=0.0)
    assert (right[..., 1:] >= right[..., :-1]).all() and (left[..., 1:] <= left[..., :-1]).all()
    x = torch.rand(4, 3, 8, 8)
    assert torch.equal(color_jitter(x, 0.0, 0.4, 0.4, 0.2, 0.1), x)
    jit = color_jitter(x, 1.0, 0.4, 0.4, 0.2, 0.1)
    assert not torch.allclose(jit, x) and jit.min() >= 0 and jit.max() <= 1
    g = random_grayscale(x, 1.0)
    assert torch.allclose(g[:, 0], g[:, 1]) and torch.allclose(g[:, 1], g[:, 2])
    assert torch.equal(solarize(x, 1.0), torch.where(x >= 0.5, 1 - x, x))
    sharp = torch.zeros(1, 3, 9, 9)
    sharp[..., 4, 4] = 1.0
    blurred = gaussian_blur(sharp, 1.0, (1.0, 1.0))
    assert blurred[..., 4, 4].max() < 1.0 and torch.allclose(blurred.sum((2, 3)), torch.ones(1, 3))


def test_ssl_with_views_made_on_the_device_path(
    tiny_data: Path, unlabeled: Path, make_spec, tmp_path
) -> None:
    """ssl.augment_on=device runs the GPU code path (here on the CPU) end to end."""
    spec = make_spec(tiny_data, tmp_path, ssl={**TINY_SSL, "epochs": 1, "augment_on": "device"})
    spec["dataset"]["unlabeled_root"] = str(unlabeled)
    res = run_action("classification", "ssl", spec)
    assert res.status == "succeeded" and res.metrics["views_on"] == "cpu"
    assert res.metrics["ssl_loss"] > 0 and (res.output_dir / "backbone.pth").is_file()
    spec["ssl"]["augment_on"] = "auto"  # on a CPU machine auto keeps lightly's loader transform
    assert run_action("classification", "ssl", spec).metrics["views_on"] == "loader"
