from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Gpu(_message.Message):
    __slots__ = ("name", "compute_capability", "memory_bytes", "driver", "index")
    NAME_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_CAPABILITY_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    DRIVER_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    name: str
    compute_capability: str
    memory_bytes: int
    driver: str
    index: int
    def __init__(self, name: _Optional[str] = ..., compute_capability: _Optional[str] = ..., memory_bytes: _Optional[int] = ..., driver: _Optional[str] = ..., index: _Optional[int] = ...) -> None: ...

class Jetson(_message.Message):
    __slots__ = ("module", "jetpack", "l4t", "dla_cores")
    MODULE_FIELD_NUMBER: _ClassVar[int]
    JETPACK_FIELD_NUMBER: _ClassVar[int]
    L4T_FIELD_NUMBER: _ClassVar[int]
    DLA_CORES_FIELD_NUMBER: _ClassVar[int]
    module: str
    jetpack: str
    l4t: str
    dla_cores: int
    def __init__(self, module: _Optional[str] = ..., jetpack: _Optional[str] = ..., l4t: _Optional[str] = ..., dla_cores: _Optional[int] = ...) -> None: ...

class HardwareProfile(_message.Message):
    __slots__ = ("fingerprint", "hostname", "arch", "os", "cpu_model", "cpu_cores", "cpu_flags", "memory_bytes", "gpus", "jetson", "runtimes", "hardware_class", "cpu_threads_limit")
    class RuntimesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    ARCH_FIELD_NUMBER: _ClassVar[int]
    OS_FIELD_NUMBER: _ClassVar[int]
    CPU_MODEL_FIELD_NUMBER: _ClassVar[int]
    CPU_CORES_FIELD_NUMBER: _ClassVar[int]
    CPU_FLAGS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    JETSON_FIELD_NUMBER: _ClassVar[int]
    RUNTIMES_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_CLASS_FIELD_NUMBER: _ClassVar[int]
    CPU_THREADS_LIMIT_FIELD_NUMBER: _ClassVar[int]
    fingerprint: str
    hostname: str
    arch: str
    os: str
    cpu_model: str
    cpu_cores: int
    cpu_flags: _containers.RepeatedScalarFieldContainer[str]
    memory_bytes: int
    gpus: _containers.RepeatedCompositeFieldContainer[Gpu]
    jetson: Jetson
    runtimes: _containers.ScalarMap[str, str]
    hardware_class: str
    cpu_threads_limit: int
    def __init__(self, fingerprint: _Optional[str] = ..., hostname: _Optional[str] = ..., arch: _Optional[str] = ..., os: _Optional[str] = ..., cpu_model: _Optional[str] = ..., cpu_cores: _Optional[int] = ..., cpu_flags: _Optional[_Iterable[str]] = ..., memory_bytes: _Optional[int] = ..., gpus: _Optional[_Iterable[_Union[Gpu, _Mapping]]] = ..., jetson: _Optional[_Union[Jetson, _Mapping]] = ..., runtimes: _Optional[_Mapping[str, str]] = ..., hardware_class: _Optional[str] = ..., cpu_threads_limit: _Optional[int] = ...) -> None: ...

class Capability(_message.Message):
    __slots__ = ("backend", "precision", "device", "available", "reason")
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    backend: str
    precision: str
    device: str
    available: bool
    reason: str
    def __init__(self, backend: _Optional[str] = ..., precision: _Optional[str] = ..., device: _Optional[str] = ..., available: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class RegisterRequest(_message.Message):
    __slots__ = ("enrollment_token", "name", "hardware", "capabilities", "agent_version", "tags", "device_id", "csr_pem")
    ENROLLMENT_TOKEN_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    enrollment_token: str
    name: str
    hardware: HardwareProfile
    capabilities: _containers.RepeatedCompositeFieldContainer[Capability]
    agent_version: str
    tags: _containers.RepeatedScalarFieldContainer[str]
    device_id: str
    csr_pem: bytes
    def __init__(self, enrollment_token: _Optional[str] = ..., name: _Optional[str] = ..., hardware: _Optional[_Union[HardwareProfile, _Mapping]] = ..., capabilities: _Optional[_Iterable[_Union[Capability, _Mapping]]] = ..., agent_version: _Optional[str] = ..., tags: _Optional[_Iterable[str]] = ..., device_id: _Optional[str] = ..., csr_pem: _Optional[bytes] = ...) -> None: ...

class RegisterResponse(_message.Message):
    __slots__ = ("device_id", "device_token", "artifact_signing_public_key", "mqtt_url", "telemetry_prefix", "heartbeat_interval_s", "client_certificate_pem", "ca_certificate_pem", "mqtt_username", "mqtt_password")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_SIGNING_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    MQTT_URL_FIELD_NUMBER: _ClassVar[int]
    TELEMETRY_PREFIX_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    CLIENT_CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    CA_CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    MQTT_USERNAME_FIELD_NUMBER: _ClassVar[int]
    MQTT_PASSWORD_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    device_token: str
    artifact_signing_public_key: bytes
    mqtt_url: str
    telemetry_prefix: str
    heartbeat_interval_s: int
    client_certificate_pem: bytes
    ca_certificate_pem: bytes
    mqtt_username: str
    mqtt_password: str
    def __init__(self, device_id: _Optional[str] = ..., device_token: _Optional[str] = ..., artifact_signing_public_key: _Optional[bytes] = ..., mqtt_url: _Optional[str] = ..., telemetry_prefix: _Optional[str] = ..., heartbeat_interval_s: _Optional[int] = ..., client_certificate_pem: _Optional[bytes] = ..., ca_certificate_pem: _Optional[bytes] = ..., mqtt_username: _Optional[str] = ..., mqtt_password: _Optional[str] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("timestamp", "active_version", "candidate_version", "metrics", "previous_version")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_VERSION_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_VERSION_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    timestamp: float
    active_version: str
    candidate_version: str
    metrics: _containers.ScalarMap[str, float]
    previous_version: str
    def __init__(self, timestamp: _Optional[float] = ..., active_version: _Optional[str] = ..., candidate_version: _Optional[str] = ..., metrics: _Optional[_Mapping[str, float]] = ..., previous_version: _Optional[str] = ...) -> None: ...

class CommandStatus(_message.Message):
    __slots__ = ("command_id", "state", "message", "progress", "kind", "model_version")
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    command_id: str
    state: str
    message: str
    progress: float
    kind: str
    model_version: str
    def __init__(self, command_id: _Optional[str] = ..., state: _Optional[str] = ..., message: _Optional[str] = ..., progress: _Optional[float] = ..., kind: _Optional[str] = ..., model_version: _Optional[str] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("agent_version", "active_version", "cached_artifacts", "candidate_version", "previous_version")
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_VERSION_FIELD_NUMBER: _ClassVar[int]
    CACHED_ARTIFACTS_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_VERSION_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    agent_version: str
    active_version: str
    cached_artifacts: _containers.RepeatedScalarFieldContainer[str]
    candidate_version: str
    previous_version: str
    def __init__(self, agent_version: _Optional[str] = ..., active_version: _Optional[str] = ..., cached_artifacts: _Optional[_Iterable[str]] = ..., candidate_version: _Optional[str] = ..., previous_version: _Optional[str] = ...) -> None: ...

class AgentMessage(_message.Message):
    __slots__ = ("hello", "heartbeat", "status")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    heartbeat: Heartbeat
    status: CommandStatus
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., status: _Optional[_Union[CommandStatus, _Mapping]] = ...) -> None: ...

class ArtifactRef(_message.Message):
    __slots__ = ("artifact_id", "model_version", "sha256", "size_bytes", "signature", "manifest_json", "kind", "url", "url_expires_at")
    ARTIFACT_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_JSON_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    URL_EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    artifact_id: str
    model_version: str
    sha256: str
    size_bytes: int
    signature: bytes
    manifest_json: str
    kind: str
    url: str
    url_expires_at: int
    def __init__(self, artifact_id: _Optional[str] = ..., model_version: _Optional[str] = ..., sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ..., signature: _Optional[bytes] = ..., manifest_json: _Optional[str] = ..., kind: _Optional[str] = ..., url: _Optional[str] = ..., url_expires_at: _Optional[int] = ...) -> None: ...

class Deploy(_message.Message):
    __slots__ = ("artifact", "backend", "precision", "activate", "accuracy_floor", "rollout_id", "calibration", "evaluation", "batching")
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    ACTIVATE_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FLOOR_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_ID_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_FIELD_NUMBER: _ClassVar[int]
    EVALUATION_FIELD_NUMBER: _ClassVar[int]
    BATCHING_FIELD_NUMBER: _ClassVar[int]
    artifact: ArtifactRef
    backend: str
    precision: str
    activate: bool
    accuracy_floor: float
    rollout_id: str
    calibration: ArtifactRef
    evaluation: ArtifactRef
    batching: DynamicBatching
    def __init__(self, artifact: _Optional[_Union[ArtifactRef, _Mapping]] = ..., backend: _Optional[str] = ..., precision: _Optional[str] = ..., activate: _Optional[bool] = ..., accuracy_floor: _Optional[float] = ..., rollout_id: _Optional[str] = ..., calibration: _Optional[_Union[ArtifactRef, _Mapping]] = ..., evaluation: _Optional[_Union[ArtifactRef, _Mapping]] = ..., batching: _Optional[_Union[DynamicBatching, _Mapping]] = ...) -> None: ...

class DynamicBatching(_message.Message):
    __slots__ = ("preferred_batch_sizes", "max_queue_delay_us", "max_batch")
    PREFERRED_BATCH_SIZES_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_DELAY_US_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_FIELD_NUMBER: _ClassVar[int]
    preferred_batch_sizes: _containers.RepeatedScalarFieldContainer[int]
    max_queue_delay_us: int
    max_batch: int
    def __init__(self, preferred_batch_sizes: _Optional[_Iterable[int]] = ..., max_queue_delay_us: _Optional[int] = ..., max_batch: _Optional[int] = ...) -> None: ...

class Benchmark(_message.Message):
    __slots__ = ("artifact", "backends", "precisions", "scenarios", "calibration", "evaluation", "duration_ms", "round_id", "stream_clip", "stream_counts", "stream_step_s")
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    BACKENDS_FIELD_NUMBER: _ClassVar[int]
    PRECISIONS_FIELD_NUMBER: _ClassVar[int]
    SCENARIOS_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_FIELD_NUMBER: _ClassVar[int]
    EVALUATION_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    STREAM_CLIP_FIELD_NUMBER: _ClassVar[int]
    STREAM_COUNTS_FIELD_NUMBER: _ClassVar[int]
    STREAM_STEP_S_FIELD_NUMBER: _ClassVar[int]
    artifact: ArtifactRef
    backends: _containers.RepeatedScalarFieldContainer[str]
    precisions: _containers.RepeatedScalarFieldContainer[str]
    scenarios: _containers.RepeatedScalarFieldContainer[str]
    calibration: ArtifactRef
    evaluation: ArtifactRef
    duration_ms: int
    round_id: str
    stream_clip: ArtifactRef
    stream_counts: _containers.RepeatedScalarFieldContainer[int]
    stream_step_s: float
    def __init__(self, artifact: _Optional[_Union[ArtifactRef, _Mapping]] = ..., backends: _Optional[_Iterable[str]] = ..., precisions: _Optional[_Iterable[str]] = ..., scenarios: _Optional[_Iterable[str]] = ..., calibration: _Optional[_Union[ArtifactRef, _Mapping]] = ..., evaluation: _Optional[_Union[ArtifactRef, _Mapping]] = ..., duration_ms: _Optional[int] = ..., round_id: _Optional[str] = ..., stream_clip: _Optional[_Union[ArtifactRef, _Mapping]] = ..., stream_counts: _Optional[_Iterable[int]] = ..., stream_step_s: _Optional[float] = ...) -> None: ...

class Calibrate(_message.Message):
    __slots__ = ("artifact", "backend", "precision", "calibration")
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_FIELD_NUMBER: _ClassVar[int]
    artifact: ArtifactRef
    backend: str
    precision: str
    calibration: ArtifactRef
    def __init__(self, artifact: _Optional[_Union[ArtifactRef, _Mapping]] = ..., backend: _Optional[str] = ..., precision: _Optional[str] = ..., calibration: _Optional[_Union[ArtifactRef, _Mapping]] = ...) -> None: ...

class Switch(_message.Message):
    __slots__ = ("model_version", "rollout_id")
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_ID_FIELD_NUMBER: _ClassVar[int]
    model_version: str
    rollout_id: str
    def __init__(self, model_version: _Optional[str] = ..., rollout_id: _Optional[str] = ...) -> None: ...

class Rollback(_message.Message):
    __slots__ = ("reason", "to_version", "rollout_id")
    REASON_FIELD_NUMBER: _ClassVar[int]
    TO_VERSION_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_ID_FIELD_NUMBER: _ClassVar[int]
    reason: str
    to_version: str
    rollout_id: str
    def __init__(self, reason: _Optional[str] = ..., to_version: _Optional[str] = ..., rollout_id: _Optional[str] = ...) -> None: ...

class Pipeline(_message.Message):
    __slots__ = ("action", "name", "spec_json", "source_json", "source_id")
    ACTION_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SPEC_JSON_FIELD_NUMBER: _ClassVar[int]
    SOURCE_JSON_FIELD_NUMBER: _ClassVar[int]
    SOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    action: str
    name: str
    spec_json: str
    source_json: str
    source_id: str
    def __init__(self, action: _Optional[str] = ..., name: _Optional[str] = ..., spec_json: _Optional[str] = ..., source_json: _Optional[str] = ..., source_id: _Optional[str] = ...) -> None: ...

class ControllerCommand(_message.Message):
    __slots__ = ("command_id", "deploy", "benchmark", "switch", "rollback", "calibrate", "pipeline")
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    DEPLOY_FIELD_NUMBER: _ClassVar[int]
    BENCHMARK_FIELD_NUMBER: _ClassVar[int]
    SWITCH_FIELD_NUMBER: _ClassVar[int]
    ROLLBACK_FIELD_NUMBER: _ClassVar[int]
    CALIBRATE_FIELD_NUMBER: _ClassVar[int]
    PIPELINE_FIELD_NUMBER: _ClassVar[int]
    command_id: str
    deploy: Deploy
    benchmark: Benchmark
    switch: Switch
    rollback: Rollback
    calibrate: Calibrate
    pipeline: Pipeline
    def __init__(self, command_id: _Optional[str] = ..., deploy: _Optional[_Union[Deploy, _Mapping]] = ..., benchmark: _Optional[_Union[Benchmark, _Mapping]] = ..., switch: _Optional[_Union[Switch, _Mapping]] = ..., rollback: _Optional[_Union[Rollback, _Mapping]] = ..., calibrate: _Optional[_Union[Calibrate, _Mapping]] = ..., pipeline: _Optional[_Union[Pipeline, _Mapping]] = ...) -> None: ...

class DownloadRequest(_message.Message):
    __slots__ = ("artifact_id", "offset", "chunk_size")
    ARTIFACT_ID_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    artifact_id: str
    offset: int
    chunk_size: int
    def __init__(self, artifact_id: _Optional[str] = ..., offset: _Optional[int] = ..., chunk_size: _Optional[int] = ...) -> None: ...

class ArtifactChunk(_message.Message):
    __slots__ = ("offset", "data", "total_size", "sha256")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    offset: int
    data: bytes
    total_size: int
    sha256: str
    def __init__(self, offset: _Optional[int] = ..., data: _Optional[bytes] = ..., total_size: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class ScenarioResult(_message.Message):
    __slots__ = ("scenario", "batch_size", "throughput_fps", "latency_mean_ms", "latency_p50_ms", "latency_p90_ms", "latency_p95_ms", "latency_p99_ms", "target_latency_ms", "valid", "compute_mean_ms", "streams", "stream_fps", "min_stream_fps", "dropped_frames")
    SCENARIO_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    THROUGHPUT_FPS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MEAN_MS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P50_MS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P90_MS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P95_MS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P99_MS_FIELD_NUMBER: _ClassVar[int]
    TARGET_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    VALID_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_MEAN_MS_FIELD_NUMBER: _ClassVar[int]
    STREAMS_FIELD_NUMBER: _ClassVar[int]
    STREAM_FPS_FIELD_NUMBER: _ClassVar[int]
    MIN_STREAM_FPS_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FRAMES_FIELD_NUMBER: _ClassVar[int]
    scenario: str
    batch_size: int
    throughput_fps: float
    latency_mean_ms: float
    latency_p50_ms: float
    latency_p90_ms: float
    latency_p95_ms: float
    latency_p99_ms: float
    target_latency_ms: float
    valid: bool
    compute_mean_ms: float
    streams: int
    stream_fps: float
    min_stream_fps: float
    dropped_frames: int
    def __init__(self, scenario: _Optional[str] = ..., batch_size: _Optional[int] = ..., throughput_fps: _Optional[float] = ..., latency_mean_ms: _Optional[float] = ..., latency_p50_ms: _Optional[float] = ..., latency_p90_ms: _Optional[float] = ..., latency_p95_ms: _Optional[float] = ..., latency_p99_ms: _Optional[float] = ..., target_latency_ms: _Optional[float] = ..., valid: _Optional[bool] = ..., compute_mean_ms: _Optional[float] = ..., streams: _Optional[int] = ..., stream_fps: _Optional[float] = ..., min_stream_fps: _Optional[float] = ..., dropped_frames: _Optional[int] = ...) -> None: ...

class Report(_message.Message):
    __slots__ = ("artifact_id", "model_version", "backend", "precision", "accuracy", "scenarios", "peak_memory_bytes", "build_time_s", "calibration_time_s", "errors", "engine_key", "hardware_fingerprint", "round_id", "command_id", "stream_capacity", "stream_fps")
    class AccuracyEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ARTIFACT_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    SCENARIOS_FIELD_NUMBER: _ClassVar[int]
    PEAK_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    BUILD_TIME_S_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_TIME_S_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    ENGINE_KEY_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    STREAM_CAPACITY_FIELD_NUMBER: _ClassVar[int]
    STREAM_FPS_FIELD_NUMBER: _ClassVar[int]
    artifact_id: str
    model_version: str
    backend: str
    precision: str
    accuracy: _containers.ScalarMap[str, float]
    scenarios: _containers.RepeatedCompositeFieldContainer[ScenarioResult]
    peak_memory_bytes: int
    build_time_s: float
    calibration_time_s: float
    errors: _containers.RepeatedScalarFieldContainer[str]
    engine_key: str
    hardware_fingerprint: str
    round_id: str
    command_id: str
    stream_capacity: int
    stream_fps: float
    def __init__(self, artifact_id: _Optional[str] = ..., model_version: _Optional[str] = ..., backend: _Optional[str] = ..., precision: _Optional[str] = ..., accuracy: _Optional[_Mapping[str, float]] = ..., scenarios: _Optional[_Iterable[_Union[ScenarioResult, _Mapping]]] = ..., peak_memory_bytes: _Optional[int] = ..., build_time_s: _Optional[float] = ..., calibration_time_s: _Optional[float] = ..., errors: _Optional[_Iterable[str]] = ..., engine_key: _Optional[str] = ..., hardware_fingerprint: _Optional[str] = ..., round_id: _Optional[str] = ..., command_id: _Optional[str] = ..., stream_capacity: _Optional[int] = ..., stream_fps: _Optional[float] = ...) -> None: ...

class ResultReport(_message.Message):
    __slots__ = ("report",)
    REPORT_FIELD_NUMBER: _ClassVar[int]
    report: Report
    def __init__(self, report: _Optional[_Union[Report, _Mapping]] = ...) -> None: ...

class ReportAck(_message.Message):
    __slots__ = ("result_id",)
    RESULT_ID_FIELD_NUMBER: _ClassVar[int]
    result_id: str
    def __init__(self, result_id: _Optional[str] = ...) -> None: ...
