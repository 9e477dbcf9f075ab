"""Shared by the agent benchmarks: torchvision backbones exported to ONNX with a manifest, and
a folder of synthetic images. Benchmarks may use torch; the agent itself never does.

Models are randomly initialised (no weight download); their BatchNorm statistics are
re-estimated on the synthetic images so activations have the ranges of a trained network,
which is what INT8 calibration and FP32/INT8 agreement depend on.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from protos import artifact_pb2  # noqa: E402
from protos.manifest import save_manifest, sha256_file  # noqa: E402

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def synthetic_images(root: Path, count: int, size: int = 256, classes: int = 10, seed: int = 0) -> Path:
    """Smooth random images (low-frequency noise + shapes) in ``classes`` folders."""
    if root.exists() and sum(1 for _ in root.rglob("*.png")) >= count:
        return root
    rng = np.random.default_rng(seed)
    for i in range(count):
        low = rng.uniform(0, 255, size=(8, 8, 3)).astype(np.uint8)
        img = Image.fromarray(low).resize((size, size), Image.Resampling.BICUBIC)
        arr = np.asarray(img).astype(np.float32) + rng.normal(0, 12, size=(size, size, 3))
        folder = root / f"class{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(folder / f"{i:05d}.png")
    return root


def export_torchvision(name: str, out_dir: Path, images: Path, *, size: int = 224, opset: int = 17) -> Path:
    """``out_dir/model.onnx`` + ``manifest.json`` for a torchvision classifier (dynamic batch).

    Runs in a child process: torch's OpenMP threads left in the measuring process would steal
    the cores the engine is timed on (we saw FP32 ResNet-18 drop from 123 to 40 img/s)."""
    onnx_path = out_dir / "model.onnx"
    if not (onnx_path.exists() and (out_dir / "manifest.json").exists()):
        subprocess.run(
            [sys.executable, __file__, name, str(out_dir), str(images), str(size), str(opset)], check=True
        )
    return onnx_path


def _export(name: str, out_dir: Path, images: Path, size: int, opset: int) -> None:
    onnx_path = out_dir / "model.onnx"
    import torch
    import torchvision

    from agent.preprocess import ImageFolder, Preprocessor

    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None, num_classes=1000)
    manifest = artifact_pb2.Manifest(
        schema_version=1,
        name=name,
        version=f"{name}:random-init",
        task="classification",
        labels=[f"class{i}" for i in range(1000)],
        inputs=[
            artifact_pb2.TensorSpec(name="images", dtype="float32", shape=[-1, 3, size, size], layout="NCHW")
        ],
        outputs=[artifact_pb2.TensorSpec(name="logits", dtype="float32", shape=[-1, 1000])],
        preprocessing=artifact_pb2.Preprocessing(
            height=size,
            width=size,
            resize_mode="center_crop",
            interpolation="bilinear",
            color_order="RGB",
            scale=1 / 255,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
        ),  # fmt: skip
        onnx_file="model.onnx",
        precision="fp32",
        opset=opset,
        backbone=name,
    )
    # BN statistics from the synthetic images (train-mode forward passes, no gradient)
    pre = Preprocessor.from_manifest(manifest)
    folder = ImageFolder.open(images).subset(64)
    batch = torch.from_numpy(np.stack([pre.load(p) for p, _ in folder.samples]))
    model.train()
    with torch.no_grad():
        for _ in range(3):
            for chunk in batch.split(16):
                model(chunk)
    model.eval()
    torch.onnx.export(
        model, torch.zeros(1, 3, size, size), str(onnx_path), opset_version=opset,
        input_names=["images"], output_names=["logits"],
        dynamic_axes={"images": {0: "N"}, "logits": {0: "N"}}, dynamo=False,
    )  # fmt: skip
    manifest.sha256 = sha256_file(onnx_path)
    manifest.size_bytes = onnx_path.stat().st_size
    save_manifest(manifest, out_dir / "manifest.json")


def depthwise_convs(onnx_path: Path) -> tuple[int, int]:
    """(depthwise convs, all convs) in the graph: depthwise convs are where CPU INT8 loses."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    weights = {i.name: numpy_helper.to_array(i).shape for i in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    depthwise = 0
    for n in convs:
        group = next((a.i for a in n.attribute if a.name == "group"), 1)
        shape = weights.get(n.input[1])
        if group > 1 and shape is not None and shape[1] == 1:
            depthwise += 1
    return depthwise, len(convs)


if __name__ == "__main__":
    _export(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
