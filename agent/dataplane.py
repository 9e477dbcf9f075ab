"""The protocol-free core of live inference (kserve's dataplane layer).

Takes decoded requests (numpy arrays with their declared datatype and shape), checks them
against the active engine's input spec, runs the engine and returns arrays. Knows nothing of
gRPC: errors are ``agent.errors`` types, mapped to status codes by the protocol layer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

import agent
from agent.backends.base import TensorInfo
from agent.batching import DynamicBatcher
from agent.errors import InvalidInput
from agent.slots import ModelSlots
from agent.stats import RequestStats

# Open Inference Protocol datatypes <-> numpy
DATATYPE_OF = {
    np.dtype(np.bool_): "BOOL",
    np.dtype(np.uint8): "UINT8",
    np.dtype(np.uint16): "UINT16",
    np.dtype(np.uint32): "UINT32",
    np.dtype(np.uint64): "UINT64",
    np.dtype(np.int8): "INT8",
    np.dtype(np.int16): "INT16",
    np.dtype(np.int32): "INT32",
    np.dtype(np.int64): "INT64",
    np.dtype(np.float16): "FP16",
    np.dtype(np.float32): "FP32",
    np.dtype(np.float64): "FP64",
}
DTYPE_OF = {v: k for k, v in DATATYPE_OF.items()}
SERVER_NAME = "edgeloop-agent"
PLATFORM = "edgeloop_{backend}"


@dataclass
class Tensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray


@dataclass
class InferRequest:
    model_name: str
    model_version: str = ""
    id: str = ""
    inputs: list[Tensor] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)  # requested outputs; empty = all


@dataclass
class InferResponse:
    model_name: str
    model_version: str
    id: str
    outputs: list[Tensor]


@dataclass
class ModelMetadata:
    name: str
    versions: list[str]
    platform: str
    inputs: list[Tensor]  # data unused
    outputs: list[Tensor]


def _check_input(spec: TensorInfo, tensor: Tensor, batch_limit: int | None) -> None:
    expected = DATATYPE_OF.get(np.dtype(spec.dtype), str(spec.dtype))
    if tensor.datatype != expected:
        raise InvalidInput(
            f"input {spec.name!r}: datatype {tensor.datatype} given, the model takes {expected}"
        )
    if len(tensor.shape) != len(spec.shape):
        raise InvalidInput(
            f"input {spec.name!r}: shape {list(tensor.shape)} has rank {len(tensor.shape)}, "
            f"the model takes {list(spec.shape)}"
        )
    for axis, (got, want) in enumerate(zip(tensor.shape, spec.shape, strict=True)):
        if got < 1 or (want > 0 and got != want):
            raise InvalidInput(
                f"input {spec.name!r}: shape {list(tensor.shape)} does not fit {list(spec.shape)} (axis {axis})"
            )
    if batch_limit is not None and tensor.shape and tensor.shape[0] > batch_limit:
        raise InvalidInput(
            f"input {spec.name!r}: batch {tensor.shape[0]} exceeds the engine's maximum {batch_limit}"
        )


class DataPlane:
    def __init__(
        self, slots: ModelSlots, stats: RequestStats | None = None, batcher: DynamicBatcher | None = None
    ) -> None:
        self.slots = slots
        self.stats = stats or RequestStats()
        self.batcher = batcher  # dynamic batching across requests; None = each request runs alone

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return self.slots.active is not None

    def model_ready(self, name: str, version: str = "") -> bool:
        try:
            self.slots.get(name, version)
        except Exception:
            return False
        return True

    def server_metadata(self) -> tuple[str, str, list[str]]:
        return SERVER_NAME, agent.__version__, []

    def model_metadata(self, name: str, version: str = "") -> ModelMetadata:
        model = self.slots.get(name, version)
        engine = model.engine
        empty = np.empty(0)
        return ModelMetadata(
            name=model.name,
            versions=[model.version],
            platform=PLATFORM.format(backend=model.backend),
            inputs=[
                Tensor(t.name, DATATYPE_OF.get(np.dtype(t.dtype), str(t.dtype)), t.shape, empty)
                for t in engine.inputs
            ],
            outputs=[
                Tensor(t.name, DATATYPE_OF.get(np.dtype(t.dtype), str(t.dtype)), t.shape, empty)
                for t in engine.outputs
            ],
        )

    def infer(self, request: InferRequest) -> InferResponse:
        start = time.perf_counter()
        images = 0
        try:
            model = self.slots.get(request.model_name, request.model_version)  # one reference for the request
            engine = model.engine
            given = {t.name: t for t in request.inputs}
            if len(given) != len(request.inputs):
                raise InvalidInput("an input name appears twice in the request")
            wanted = {s.name for s in engine.inputs}
            unknown = sorted(set(given) - wanted)
            missing = sorted(wanted - set(given))
            if unknown or missing:
                raise InvalidInput(
                    f"inputs do not match the model: unknown {unknown}, missing {missing} (the model takes {sorted(wanted)})"
                )
            batch_limit = None if engine.fixed_batch else engine.max_batch
            batches = set()
            for spec in engine.inputs:
                _check_input(spec, given[spec.name], batch_limit)
                batches.add(given[spec.name].shape[0] if given[spec.name].shape else 1)
            if len(batches) > 1:
                raise InvalidInput(f"inputs disagree on the batch size: {sorted(batches)}")
            images = batches.pop() if batches else 1
            out_names = [o.name for o in engine.outputs]
            if request.outputs:
                bad = sorted(set(request.outputs) - set(out_names))
                if bad:
                    raise InvalidInput(f"requested outputs {bad} do not exist (the model has {out_names})")
                out_names = list(request.outputs)
            feeds = {name: t.data for name, t in given.items()}
            results = self.batcher.run(engine, feeds) if self.batcher else engine.run(feeds)
            outputs = [
                Tensor(
                    n, DATATYPE_OF.get(results[n].dtype, str(results[n].dtype)), results[n].shape, results[n]
                )
                for n in out_names
            ]
        except Exception:
            self.stats.record(time.perf_counter() - start, images, ok=False)
            raise
        self.stats.record(time.perf_counter() - start, images)
        return InferResponse(model.name, model.version, request.id, outputs)
