"""What this host is: CPU, ISA flags, NVIDIA GPUs (NVML), Jetson module, installed runtimes.

The profile is what the controller sees at registration and what engine compatibility hangs on:
``fingerprint`` hashes exactly the facts that decide whether an engine built here runs (and runs
the same) elsewhere, so it is stable across reboots and hostnames and changes when the CPU, GPU,
Jetson module, hardware class or thread limit changes. Runtime versions are not part of it: the
engine key carries those separately (see ``agent.engine_cache``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import re
import socket
from pathlib import Path

from agent.backends.base import usable_cores
from protos import fleet_pb2

log = logging.getLogger(__name__)

# ISA features that change which kernels a runtime picks (and so its speed and INT8 support).
X86_FLAGS = (
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
    "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16",
)  # fmt: skip
ARM_FLAGS = ("asimd", "asimddp", "asimdhp", "fphp", "i8mm", "bf16", "sve", "sve2")

# L4T release -> JetPack (NVIDIA's release notes); unknown releases are reported as "L4T x.y".
_JETPACK_OF_L4T = {
    "32.7": "4.6", "35.1": "5.0.2", "35.2": "5.1", "35.3": "5.1.1", "35.4": "5.1.2", "35.5": "5.1.3",
    "35.6": "5.1.4", "36.2": "6.0 DP", "36.3": "6.0", "36.4": "6.1/6.2", "38.2": "7.0", "38.3": "7.1",
}  # fmt: skip


def _read(path: str | Path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _cpu_info() -> tuple[str, list[str]]:
    text = _read("/proc/cpuinfo")
    model = ""
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and not model:
            model = value.strip()
        elif key in ("flags", "features"):
            flags.update(value.split())
    if not model:
        model = platform.processor() or platform.machine()
    wanted = X86_FLAGS if platform.machine() in ("x86_64", "AMD64", "i686") else ARM_FLAGS
    return model, [f for f in wanted if f in flags]


def _memory_bytes() -> int:
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except Exception:  # psutil missing: read it ourselves
        match = re.search(r"MemTotal:\s+(\d+) kB", _read("/proc/meminfo"))
        return int(match.group(1)) * 1024 if match else 0


def _gpus() -> tuple[list[fleet_pb2.Gpu], str]:
    """NVIDIA GPUs through NVML; returns (gpus, driver) or ([], "") with the reason logged."""
    try:
        import pynvml
    except ImportError:
        log.debug("nvidia-ml-py not installed: no GPU probe")
        return [], ""
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # no driver / no GPU: the normal case on CPU hosts
        log.debug("NVML unavailable: %s", exc)
        return [], ""
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        driver = driver.decode() if isinstance(driver, bytes) else str(driver)
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(handle)
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
            gpus.append(
                fleet_pb2.Gpu(
                    index=i,
                    name=name.decode() if isinstance(name, bytes) else str(name),
                    compute_capability=f"{major}.{minor}",
                    memory_bytes=int(pynvml.nvmlDeviceGetMemoryInfo(handle).total),
                    driver=driver,
                )
            )
        return gpus, driver
    finally:
        pynvml.nvmlShutdown()


def _dla_cores_from_tensorrt() -> int | None:
    try:
        import tensorrt as trt
    except Exception:
        return None
    try:
        builder = trt.Builder(trt.Logger(trt.Logger.ERROR))
        return int(builder.num_DLA_cores)
    except Exception:
        return None


def _jetson() -> fleet_pb2.Jetson | None:
    """Jetson module, L4T/JetPack and DLA cores from the tegra release file and device tree."""
    release = _read("/etc/nv_tegra_release")
    if not release:
        return None
    match = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", release)
    l4t = f"{match.group(1)}.{match.group(2)}" if match else release.split(",")[0].strip("# \n")
    major_minor = ".".join(l4t.split(".")[:2])
    module = _read("/proc/device-tree/model").strip("\x00 \n") or "Jetson (unknown module)"
    dla = _dla_cores_from_tensorrt()
    if dla is None:  # no TensorRT to ask: what NVIDIA's module data sheets say
        lowered = module.lower()
        dla = 0 if "nano" in lowered else 2 if ("xavier" in lowered or "agx orin" in lowered) else 0
        if "orin nx" in lowered:
            dla = 1 if "8gb" in lowered.replace(" ", "") else 2
    return fleet_pb2.Jetson(
        module=module, l4t=l4t, jetpack=_JETPACK_OF_L4T.get(major_minor, f"L4T {l4t}"), dla_cores=dla
    )


def runtime_versions() -> dict[str, str]:
    """Installed inference runtimes (only those that import) and their versions."""
    versions: dict[str, str] = {"python": platform.python_version()}
    try:
        import onnxruntime as ort

        versions["onnxruntime"] = ort.__version__
        versions["onnxruntime.providers"] = ",".join(ort.get_available_providers())
    except ImportError:
        pass
    try:
        import tensorrt as trt

        versions["tensorrt"] = trt.__version__
    except Exception:  # ImportError, or a broken install that fails loading its libraries
        pass
    try:
        from importlib.metadata import version

        import mlperf_loadgen  # noqa: F401

        versions["mlcommons-loadgen"] = version("mlcommons-loadgen")
    except Exception:
        pass
    return versions


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def default_hardware_class(profile: fleet_pb2.HardwareProfile) -> str:
    """A readable class name from the probed facts, e.g. ``x86_64-avx512_vnni-cpu-2t``."""
    if profile.HasField("jetson"):
        base = _slug(profile.jetson.module.replace("NVIDIA", "").replace("Developer Kit", ""))
        return f"jetson-{base}"
    if profile.gpus:
        return f"{profile.arch}-gpu-{_slug(profile.gpus[0].name.replace('NVIDIA', ''))}"
    flags = set(profile.cpu_flags)
    isa = next(
        (
            f
            for f in ("amx_int8", "avx512_vnni", "avx512f", "avx_vnni", "avx2", "i8mm", "asimddp")
            if f in flags
        ),
        "base",
    )
    cls = f"{profile.arch}-{isa}-cpu"
    return f"{cls}-{profile.cpu_threads_limit}t" if profile.cpu_threads_limit else cls


def compute_fingerprint(profile: fleet_pb2.HardwareProfile) -> str:
    """Stable hash of what decides engine compatibility (not hostname, memory or runtimes)."""
    facts = {
        "arch": profile.arch,
        "cpu_model": profile.cpu_model,
        "cpu_flags": sorted(profile.cpu_flags),
        "gpus": [(g.name, g.compute_capability) for g in profile.gpus],
        "jetson": [profile.jetson.module, profile.jetson.dla_cores] if profile.HasField("jetson") else None,
        "hardware_class": profile.hardware_class,
        "threads": profile.cpu_threads_limit,
    }
    blob = json.dumps(facts, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def probe_hardware(
    *, threads: int | None = None, hardware_class: str | None = None
) -> fleet_pb2.HardwareProfile:
    """Probe this host. ``threads`` / ``hardware_class`` come from ``AgentSettings``
    (EDGELOOP_AGENT_THREADS / EDGELOOP_HARDWARE_CLASS) for emulated device classes."""
    cpu_model, flags = _cpu_info()
    gpus, _driver = _gpus()
    profile = fleet_pb2.HardwareProfile(
        hostname=socket.gethostname(),
        arch=platform.machine(),
        os=f"{platform.system()} {platform.release()}",
        cpu_model=cpu_model,
        cpu_cores=usable_cores(),
        cpu_flags=flags,
        memory_bytes=_memory_bytes(),
        gpus=gpus,
        runtimes=runtime_versions(),
        cpu_threads_limit=int(threads or 0),
    )
    jetson = _jetson()
    if jetson is not None:
        profile.jetson.CopyFrom(jetson)
    profile.hardware_class = str(hardware_class or default_hardware_class(profile))
    profile.fingerprint = compute_fingerprint(profile)
    return profile


def capabilities(profile: fleet_pb2.HardwareProfile) -> list[fleet_pb2.Capability]:
    """Every (backend, precision, device) the registered backends could build here, with the
    reason for each one that is unavailable."""
    from agent.backends import all_backends

    caps: list[fleet_pb2.Capability] = []
    for backend in all_backends():
        caps.extend(backend.capabilities(profile))
    return caps


def probe_capabilities(profile: fleet_pb2.HardwareProfile | None = None) -> list[fleet_pb2.Capability]:
    """``capabilities`` of ``profile`` (probed from the environment's settings when None)."""
    return capabilities(profile if profile is not None else probe_hardware())
