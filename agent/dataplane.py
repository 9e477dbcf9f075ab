"""The protocol-free core of live inference (kserve's dataplane layer).

Takes decoded requests (numpy arrays with their declared datatype and shape), checks them
against the active engine's input spec, runs the engine and returns arrays. Knows nothing of
gRPC: errors are ``agent.errors`` types, mapped to status codes by the protocol layer.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field

import numpy as np

import agent
from agent.backends.base import TensorInfo
from agent.batching import DynamicBatcher, run_timed
from agent.errors import InvalidInput, ModelNotFound
from agent.repository import ModelIndex, ModelRepository
from agent.slots import ModelSlots
from agent.stats import ModelStatistics, RequestStats

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
# Triton's extension names, as its server metadata lists them
EXTENSIONS = ["binary_tensor_data", "model_repository", "statistics", "model_configuration"]
PLATFORM = "edgeloop_{backend}"


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the agent, checked before anything is allocated: the largest
    batch (the manifest's ``max_batch`` lowers it per model) and the largest tensor data."""

    max_batch: int = 64
    max_bytes: int = 64 * 1024 * 1024


def tensor_bytes(
    name: str, datatype: str, shape: list[int] | tuple[int, ...], limits: Limits
) -> tuple[np.dtype, int]:
    """The numpy dtype and byte size of a declared tensor, checked with Python integers (no int64
    overflow) against ``limits`` before a byte is read: the one size check of both protocols."""
    dtype = DTYPE_OF.get(datatype)
    if dtype is None:
        raise InvalidInput(f"input {name!r}: unsupported datatype {datatype!r}")
    dims = list(shape)
    if any(not isinstance(d, int) or isinstance(d, bool) for d in dims):
        raise InvalidInput(f"input {name!r}: shape {dims} must hold integers")
    if any(d < 0 for d in dims):
        raise InvalidInput(f"input {name!r}: negative dimension in shape {dims}")
    if dims and dims[0] > limits.max_batch:
        raise InvalidInput(f"input {name!r}: batch {dims[0]} exceeds this agent's maximum {limits.max_batch}")
    nbytes = math.prod(dims) * dtype.itemsize
    if nbytes > limits.max_bytes:
        raise InvalidInput(
            f"input {name!r}: shape {dims} of {datatype} is {nbytes} bytes, over this agent's "
            f"maximum request of {limits.max_bytes}"
        )
    return dtype, nbytes


@dataclass(frozen=True)
class Batching:
    """Dynamic batching of one model (Triton's ``dynamic_batching``): ``max_delay_s`` of waiting,
    up to ``max_batch`` rows, a batch reaching a preferred size runs at once."""

    max_batch: int = 8
    max_delay_s: float = 0.0
    preferred_batch_sizes: tuple[int, ...] = ()

    @property
    def enabled(self) -> bool:
        return self.max_delay_s > 0 or bool(self.preferred_batch_sizes)

    def as_json(self) -> dict:
        return {"max_batch": self.max_batch, "max_delay_s": self.max_delay_s,
                "preferred_batch_sizes": list(self.preferred_batch_sizes)}  # fmt: skip

    @classmethod
    def from_json(cls, doc: dict) -> Batching:
        return cls(
            int(doc["max_batch"]),
            float(doc["max_delay_s"]),
            tuple(int(b) for b in doc["preferred_batch_sizes"]),
        )


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
            f"input {spec.name!r}: batch {tensor.shape[0]} exceeds the model's maximum {batch_limit}"
        )


class DataPlane:
    def __init__(
        self,
        slots: ModelSlots,
        stats: RequestStats | None = None,
        batcher: DynamicBatcher | None = None,
        limits: Limits | None = None,
    ) -> None:
        self.slots = slots
        self.stats = stats or RequestStats()
        self.batcher = batcher  # dynamic batching across requests; None = each request runs alone
        self.limits = limits or Limits()
        self.model_stats = ModelStatistics()  # the statistics extension and /metrics read it
        self.repository = ModelRepository(slots)  # the runtime replaces it with its own settings
        # per model version dynamic batching (a fleet deploy's); others use ``batcher``
        self.model_batching: dict[str, Batching] = {}
        self._model_batchers: dict[str, DynamicBatcher] = {}
        self._batchers_lock = threading.Lock()

    def set_batching(self, version: str, batching: Batching | None) -> None:
        """Dynamic batching for one model version (None: the agent-wide ``batcher`` again)."""
        with self._batchers_lock:
            old = self._model_batchers.pop(version, None)
            if batching is None:
                self.model_batching.pop(version, None)
            else:
                self.model_batching[version] = batching
        if old is not None:
            old.close()

    def batcher_for(self, version: str) -> DynamicBatcher | None:
        """The batcher requests for ``version`` go through: its own when its deploy set one."""
        batching = self.model_batching.get(version)
        if batching is None:
            return self.batcher
        if not batching.enabled:
            return None
        with self._batchers_lock:
            batcher = self._model_batchers.get(version)
            if batcher is None:
                batcher = self.make_batcher(
                    batching.max_batch, batching.max_delay_s, batching.preferred_batch_sizes
                )
                self._model_batchers[version] = batcher
            return batcher

    def close_batchers(self) -> None:
        """Stop every batcher (the runtime's close)."""
        with self._batchers_lock:
            batchers, self._model_batchers = [*self._model_batchers.values(), self.batcher], {}
            self.batcher = None
        for b in batchers:
            if b is not None:
                b.close()

    def make_batcher(
        self, max_batch: int, max_delay_s: float, preferred_batch_sizes: tuple[int, ...] = ()
    ) -> DynamicBatcher:
        """A dynamic batcher whose executions count in this dataplane's model statistics."""
        return DynamicBatcher(max_batch, max_delay_s, preferred_batch_sizes, on_batch=self._executed)

    def _executed(self, tag: object, batch: int, input_ns: int, infer_ns: int, output_ns: int) -> None:
        name, version = tag if isinstance(tag, tuple) else ("", "")
        self.model_stats.execution(name, version, batch, input_ns, infer_ns, output_ns)

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
        return SERVER_NAME, agent.__version__, list(EXTENSIONS)

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

    def model_config(self, name: str, version: str = "") -> dict:
        """Triton's model configuration (JSON form) of the active model: what clients read to
        learn the batch limit and whether dynamic batching is on."""
        model = self.slots.get(name, version)

        def io(t: TensorInfo) -> dict:
            dims = list(t.shape[1:]) if not model.engine.fixed_batch else list(t.shape)
            return {
                "name": t.name,
                "data_type": "TYPE_" + DATATYPE_OF.get(np.dtype(t.dtype), "INVALID"),
                "dims": dims,
            }

        config = {
            "name": model.name,
            "platform": PLATFORM.format(backend=model.backend),
            "backend": model.backend,
            "max_batch_size": 0 if model.engine.fixed_batch else self._batch_limit(model),
            "input": [io(t) for t in model.engine.inputs],
            "output": [io(t) for t in model.engine.outputs],
        }
        batcher = self.batcher_for(model.version)
        if batcher is not None:
            config["dynamic_batching"] = {
                "preferred_batch_size": sorted(batcher.preferred),
                "max_queue_delay_microseconds": int(batcher.max_delay_s * 1e6),
            }
        return config

    def statistics(self, name: str = "", version: str = "") -> list:
        """The statistics extension: every model's, or ``name``'s (NOT_FOUND when never loaded)."""
        found = self.model_stats.snapshot(name, version)
        if name and not found:
            try:
                model = self.slots.get(name, version)
            except Exception as exc:
                raise ModelNotFound(f"no statistics for model {name!r}: it is not loaded") from exc
            return self.model_stats.snapshot(model.name, model.version) or [
                self.model_stats.empty(model.name, model.version)
            ]
        return found

    def repository_index(self, ready_only: bool = False) -> list[ModelIndex]:
        return self.repository.index(ready_only)

    def load_model(self, name: str) -> None:
        self.repository.load(name)

    def unload_model(self, name: str) -> None:
        self.repository.unload(name)

    def _batch_limit(self, model) -> int:
        """The agent's limit, lowered by the manifest's ``max_batch`` and the engine's own."""
        limits = [self.limits.max_batch, model.manifest.max_batch, model.engine.max_batch]
        return min(n for n in limits if n)

    def infer(self, request: InferRequest) -> InferResponse:
        start = time.perf_counter_ns()
        images = 0
        model = None
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
            batch_limit = None if engine.fixed_batch else self._batch_limit(model)
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
            tag = (model.name, model.version)
            batcher = self.batcher_for(model.version)
            if batcher is not None:
                results, timing = batcher.run_timed(engine, feeds, tag)
            else:
                results, timing = run_timed(engine, feeds)
                self._executed(tag, timing.batch, 0, timing.infer_ns, 0)
            wrapped = time.perf_counter_ns()
            outputs = [
                Tensor(
                    n, DATATYPE_OF.get(results[n].dtype, str(results[n].dtype)), results[n].shape, results[n]
                )
                for n in out_names
            ]
        except Exception:
            elapsed = time.perf_counter_ns() - start
            self.stats.record(elapsed / 1e9, images, ok=False)
            if model is not None:  # only a loaded model's counters: a made-up name allocates nothing
                self.model_stats.request(model.name, model.version, ok=False, total_ns=elapsed)
            raise
        elapsed = time.perf_counter_ns() - start
        self.stats.record(elapsed / 1e9, images)
        self.model_stats.request(model.name, model.version, ok=True, total_ns=elapsed, images=images,
                                 queue_ns=timing.queue_ns, input_ns=timing.input_ns, infer_ns=timing.infer_ns,
                                 output_ns=timing.output_ns + time.perf_counter_ns() - wrapped)  # fmt: skip
        return InferResponse(model.name, model.version, request.id, outputs)
