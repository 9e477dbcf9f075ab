"""The video pipeline against a plain loop and the bare engine, on the same clip, engine and host.

    python benchmarks/stream_throughput.py [--work runs/bench_stream] [--streams 1,2,4,8]
        [--size 1280x720 --seconds 4 --fps 15] [--precision int8] [--overload-s 60] [--model M.onnx]

- The detector: an RT-DETR (resnet18, 256 px, 100 queries) trained for two steps by the trainer
  on synthetic PCB images, exported, then built at ``--precision`` by the agent (INT8
  calibrated on this host from those images). Its accuracy is beside the point: only its cost
  is measured.
- The clip: ``edgeloop data synth --task detection --video`` at ``--size``, decoded by every
  stream (N streams = the same file N times).
- **plain loop**: one thread reads each stream in turn with PyAV, preprocesses, runs the engine
  on one frame, decodes the boxes, draws them and writes the event as a JSON line. It uses the
  pipeline's own per-frame code (swscale preprocessing, drawing, event), and it runs twice: on
  an engine with ONNX Runtime's default threads and on one with the pipeline's engine threads.
  The faster of the two is the baseline.
- **pipeline**: ``agent.stream`` with N file sources, ``max_batch`` = 8, ByteTrack, JSON-lines
  sink, frames drawn (a sink that takes the annotated image), every frame processed.
- **bare engine**: ``engine.run`` on ready batches of 8 preprocessed frames: the images/s the
  pipeline could reach if decoding, preprocessing, tracking and sinks cost nothing. Measured
  right before and right after each row's pipeline run, each time with both thread settings;
  the best of the four is the baseline (a shared host's speed drifts).
- CPU ms per frame (the process's CPU time over the frames) is printed beside each FPS: it
  moves much less than FPS when other work shares the host.
- **live**: one source paced at 15 FPS (a file played as a camera): capture-to-event latency
  p50/p99 against 3 frame periods; then 8 live sources at the clip's rate for ``--overload-s``
  seconds, more than the engine can take: frames dropped (counted) and latency p99 per 10 s window
  (bounded: it must not grow).
Ratios are printed against the baselines of the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from agent.engine_cache import EngineCache  # noqa: E402
from agent.engines import build_engine  # noqa: E402
from agent.model_spec import resolve_model  # noqa: E402
from agent.probe import probe_hardware  # noqa: E402
from agent.stream.infer import (  # noqa: E402
    Inference,
    _active_model,
    build_fixed_engine,
    engine_inflight,
    engine_threads,
    model_input,
)
from agent.stream.metrics import StageTimes  # noqa: E402
from agent.stream.pipeline import Pipeline  # noqa: E402
from agent.stream.sinks import Sink  # noqa: E402
from agent.stream.spec import Postprocess, load_pipeline_spec  # noqa: E402

DETECTOR = ["dataset.image_size=256", "train.epochs=1", "train.batch_size=4", "train.max_steps_per_epoch=2",
            "train.num_workers=0", "train.device=cpu", "evaluate.batch_size=8",
            "quantize.num_calibration_samples=8"]  # fmt: skip


class DrawnSink(Sink):
    """Takes the annotated frame (so the pipeline draws every frame, as the plain loop does)."""

    wants_image = True

    def write(self, event, annotated=None) -> None:
        pass


def make_detector(work: Path) -> Path:
    from trainer.jobs import run_action
    from trainer.tasks.detection.synth import synthesize

    onnx = work / "detector" / "export" / "model.onnx"
    if onnx.is_file():
        return onnx
    data = work / "pcb_det"
    if not (data / "train").is_dir():
        synthesize(data, 40, 256, seed=0)
    spec = ROOT / "trainer" / "specs" / "detection.yaml"
    base = [f"dataset.root={data}", f"results_dir={work / 'detector'}", *DETECTOR]
    run_action("detection", "train", spec, base)
    out = run_action(
        "detection", "export", spec, [*base, f"export.checkpoint={work / 'detector' / 'train' / 'model.pth'}"]
    )
    return Path(out.onnx_path)


def make_clip(work: Path, size: tuple[int, int], seconds: float, fps: float) -> Path:
    from trainer.tasks.detection.video import synthesize_video

    clip = work / f"conveyor_{size[0]}x{size[1]}_{fps:g}fps.mp4"
    if not clip.is_file():
        synthesize_video(clip, seconds, fps, size, seed=0)
    return clip


def plain_loop(model, clip: Path, streams: int, out: Path, threshold: float) -> tuple[int, float, float]:
    """Read, infer one frame at a time, draw, publish: the loop a user writes first (with the
    pipeline's per-frame code). Returns (frames, seconds, CPU seconds)."""
    import av

    from agent.stream.annotate import annotate
    from agent.stream.events import build_event
    from agent.stream.muxer import Frame

    infer = Inference(Postprocess(score_threshold=threshold), StageTimes())
    containers = [av.open(str(clip)) for _ in range(streams)]
    decoders = [c.decode(video=0) for c in containers]
    frames = 0
    start, cpu = time.perf_counter(), time.process_time()
    with out.open("w") as sink:
        live = list(range(streams))
        index = [0] * streams
        while live:
            for s in list(live):
                vf = next(decoders[s], None)
                if vf is None:
                    live.remove(s)
                    continue
                frame = Frame(f"s{s}", index[s], None, time.time(), vf)
                index[s] += 1
                frame.tensor, frame.tensor_key = model_input(vf, model.preprocess), model.preprocess
                det = infer(model, [frame])[0]
                annotate(frame.canvas(), det)
                sink.write(json.dumps(build_event("plain", frame, det, model.version)) + "\n")
                frames += 1
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    for c in containers:
        c.close()
    return frames, elapsed, cpu


def bare_engine(model, clip: Path, batch: int, seconds: float = 5.0, calls: int = 1) -> tuple[float, float]:
    """(images/s, CPU ms per image) of ``engine.run`` on one ready batch, again and again, from
    ``calls`` threads at once (the pipeline's ``model.inflight``)."""
    import threading

    import av

    with av.open(str(clip)) as c:
        frames = [f for _, f in zip(range(batch), c.decode(video=0), strict=False)]
    tensors = np.stack([model_input(f, model.preprocess) for f in frames])
    infer = Inference(Postprocess(), StageTimes())
    infer._run_engine(model, tensors)  # warm-up
    done = [0] * calls
    start, cpu = time.perf_counter(), time.process_time()

    def loop(i: int) -> None:
        while time.perf_counter() - start < seconds:
            infer._run_engine(model, tensors)
            done[i] += len(tensors)

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    n = sum(done)
    return n / (time.perf_counter() - start), (time.process_time() - cpu) / n * 1000


def best_bare(engines: dict, clip: Path, batch: int = 8) -> dict:
    """The bare engine at each setting: {label: (images/s, CPU ms/image)}. A label "T thread(s)
    xN" runs N calls at once, as the pipeline does with ``model.inflight`` = N."""
    out = {}
    for label, (m, calls) in engines.items():
        out[label] = bare_engine(m, clip, batch, calls=calls)
    return out


def load() -> float:
    return round(os.getloadavg()[0], 1)


def run_pipeline(model_args: list[str], build, clip: Path, streams: int, work: Path, *, live: bool = False, pace: bool = False,
                 loop: bool = False, duration_s: float = 0.0, windows: list | None = None) -> dict:  # fmt: skip
    (work / f"events_{streams}_{int(live)}.jsonl").unlink(missing_ok=True)  # the sink appends
    sources = [
        {"id": f"s{i}", "uri": str(clip), "live": live, "pace": pace, "loop": loop} for i in range(streams)
    ]
    spec = load_pipeline_spec({"name": f"bench{streams}", "sources": sources},
                              [f"sinks.jsonl.path={work / f'events_{streams}_{int(live)}.jsonl'}", "batching.max_wait_ms=5",
                               *model_args])  # fmt: skip
    p = Pipeline(spec, build=build)
    p.sinks.append(DrawnSink())
    p.start()  # engine loaded in the constructor, tracker imported here: neither is counted
    start, cpu = time.perf_counter(), time.process_time()
    if duration_s:
        next_window = start + 10
        while time.perf_counter() - start < duration_s:
            time.sleep(0.25)
            if windows is not None and time.perf_counter() >= next_window:
                snap = p.stats()["sources"]
                windows.append({"t_s": round(time.perf_counter() - start),
                                "p99_ms": max(s["latency_ms"]["p99"] for s in snap),
                                "dropped": sum(s["dropped"] for s in snap)})  # fmt: skip
                next_window += 10
    else:
        assert p.wait(1800), "pipeline did not finish"
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    stats = p.stats()
    p.stop()
    frames = sum(s["processed"] for s in stats["sources"])
    return {"frames": frames, "elapsed_s": elapsed, "fps": frames / elapsed, "stats": stats,
            "cpu_ms_per_frame": round(cpu / max(1, frames) * 1000, 1)}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "bench_stream")
    ap.add_argument("--streams", default="1,2,4,8")
    ap.add_argument("--size", default="1280x720")
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--fps", type=float, default=15.0)
    ap.add_argument("--precision", default="int8")
    ap.add_argument("--threads", type=int, default=0, help="model.threads (0: the pipeline's default)")
    ap.add_argument("--inflight", type=int, default=0, help="model.inflight (0: the pipeline's default)")
    ap.add_argument("--overload-s", type=float, default=60.0)
    ap.add_argument("--score-threshold", type=float, default=0.65,
                    help="the briefly trained detector scores many boxes near 0.5; 0.65 leaves ~5 a frame, like real defects")  # fmt: skip
    ap.add_argument(
        "--model", type=Path, help="a detector ONNX (+ manifest.json beside it) instead of training one"
    )
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    from trainer.tasks.detection.video import parse_size

    args.work.mkdir(parents=True, exist_ok=True)
    size = parse_size(args.size)
    onnx = args.model or make_detector(args.work)
    clip = make_clip(args.work, size, args.seconds, args.fps)
    profile = probe_hardware(threads=args.threads or None)
    cache = EngineCache(args.work / "engines")
    calib = args.work / "pcb_det" / "train" if args.precision == "int8" else None
    resolved = resolve_model(onnx)
    model_args = [
        f"model.path={onnx}",
        f"model.precision={args.precision}",
        f"postprocess.score_threshold={args.score_threshold}",
    ] + ([f"model.calib={calib}"] if calib else [])
    model_args += [f"model.inflight={args.inflight}"] if args.inflight else []
    pipe_model = load_pipeline_spec({"sources": []}, model_args).model
    pipe_threads = engine_threads(pipe_model, args.threads or None)
    pipe_inflight = engine_inflight(pipe_model)
    plain_engines = {}  # the plain loop runs on both: ONNX Runtime's default threads and the pipeline's
    wanted = {args.threads or None: "default", pipe_threads: f"{pipe_threads} thread(s)"}  # one when equal
    for threads, label in wanted.items():
        built = build_engine(resolved, profile=profile, cache=cache, precision=args.precision, calib_dir=calib,
                             threads=threads)  # fmt: skip
        plain_engines[label] = _active_model(resolved.manifest.version, built.engine, resolved.manifest)
    model = next(iter(plain_engines.values()))
    # the bare engine: one call at a time on each, and the pipeline's calls in flight on its engine
    engines = {label: (m, 1) for label, m in plain_engines.items()}
    if pipe_inflight > 1:
        engines[f"{pipe_threads} thread(s) x{pipe_inflight}"] = (
            plain_engines[f"{pipe_threads} thread(s)"],
            pipe_inflight,
        )
    # each pipeline loads its own engine from the cache (a hit: the INT8 calibration is not redone)
    build = lambda spec: build_fixed_engine(spec, profile, cache, args.threads or None)  # noqa: E731
    print(f"detector {model.version} {built.backend}/{built.precision}, input {model.preprocess.width}x"
          f"{model.preprocess.height}; clip {clip.name}; pipeline engine {pipe_inflight} call(s) in flight of "
          f"{pipe_threads} thread(s); "
          f"baselines on engines {list(engines)}; load average {load()}", flush=True)  # fmt: skip

    first_bare = best_bare(engines, clip)
    bare = max(v[0] for v in first_bare.values())
    print(f"bare engine, batch 8: {json.dumps(first_bare)} (images/s, CPU ms/image)", flush=True)
    rows = []
    for n in [int(x) for x in args.streams.split(",")]:
        load_before = load()
        plains = {}
        for label, m in plain_engines.items():
            f, secs, cpu = plain_loop(m, clip, n, args.work / f"plain_{n}.jsonl", args.score_threshold)
            plains[label] = (round(f / secs, 2), round(cpu / f * 1000, 1))
        plain_label = max(plains, key=lambda k: plains[k][0])
        plain = plains[plain_label][0]
        before = best_bare(engines, clip)
        pipe = run_pipeline(model_args, build, clip, n, args.work)
        after = best_bare(engines, clip)  # beside this row, before and after: a shared host's speed drifts
        bare_label, (row_bare, bare_cpu) = max(
            ((f"{k} {when}", v) for when, d in (("before", before), ("after", after)) for k, v in d.items()),
            key=lambda kv: kv[1][0],
        )
        frames = pipe["frames"]
        events = [json.loads(line) for line in (args.work / f"events_{n}_0.jsonl").read_text().splitlines()]
        stages = {k: round(v / frames * 1000, 2) for k, v in pipe["stats"]["stage_s"].items()}
        row = {"streams": n, "plain_fps": round(plain, 1), "plain_engine": plain_label, "plain_runs": plains,
               "pipeline_fps": round(pipe["fps"], 1), "pipeline_cpu_ms_per_frame": pipe["cpu_ms_per_frame"],
               "vs_plain": round(pipe["fps"] / plain, 2), "bare_fps": round(row_bare, 1), "bare_engine": bare_label,
               "bare_cpu_ms_per_image": round(bare_cpu, 1), "bare_runs": {"before": before, "after": after},
               "vs_bare": round(pipe["fps"] / row_bare, 2),
               "mean_batch": pipe["stats"]["mean_batch"], "frames": frames,
               "inflight": pipe["stats"]["inflight"], "inflight_peak": pipe["stats"]["inflight_peak"],
               "objects_per_frame": round(sum(len(e["objects"]) for e in events) / max(1, len(events)), 1),
               "stage_ms_per_frame": stages, "load_average": [load_before, load()]}  # fmt: skip
        rows.append(row)
        print(json.dumps(row), flush=True)

    live_rows = []
    rates = [args.fps] + ([max(1.0, float(int(bare / 2)))] if bare < 2 * args.fps else [])
    for rate in rates:  # the asked rate, and where the engine cannot keep up with it, one it can
        live_clip = make_clip(args.work, size, args.seconds, rate)
        live = run_pipeline(
            model_args, build, live_clip, 1, args.work, live=True, pace=True, loop=True, duration_s=10
        )
        src = live["stats"]["sources"][0]
        period_ms = 1000 / rate
        live_row = {"live_fps": rate, "fps": src["fps"], "p50_ms": src["latency_ms"]["p50"],
                    "p99_ms": src["latency_ms"]["p99"], "p99_in_periods": round(src["latency_ms"]["p99"] / period_ms, 2),
                    "dropped": src["dropped"], "decoded": src["decoded"]}  # fmt: skip
        live_rows.append(live_row)
        print("live 1 source:", json.dumps(live_row), flush=True)
    windows: list = []
    over = run_pipeline(model_args, build, clip, 8, args.work, live=True, pace=True, loop=True, duration_s=args.overload_s,
                        windows=windows)  # fmt: skip
    srcs = over["stats"]["sources"]
    over_row = {"streams": 8, "offered_fps": 8 * args.fps, "processed_fps": round(over["fps"], 1),
                "dropped": sum(s["dropped"] for s in srcs), "decoded": sum(s["decoded"] for s in srcs),
                "p99_ms": max(s["latency_ms"]["p99"] for s in srcs), "windows": windows}  # fmt: skip
    print("overloaded 8 live sources:", json.dumps(over_row), flush=True)

    print("\n| streams | plain loop FPS | pipeline FPS | bare engine img/s | vs plain | vs bare engine | mean batch "
          "| CPU ms/frame: plain, pipeline, bare | load average |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        pcpu = r["plain_runs"][r["plain_engine"]][1]
        print(f"| {r['streams']} | {r['plain_fps']} | {r['pipeline_fps']} | {r['bare_fps']} | {r['vs_plain']}x "
              f"| {r['vs_bare']} | {r['mean_batch']} | {pcpu}, {r['pipeline_cpu_ms_per_frame']}, "
              f"{r['bare_cpu_ms_per_image']} | {r['load_average'][0]}-{r['load_average'][1]} |")  # fmt: skip
    print(f"\nbare engine (batch 8): {bare:.1f} images/s; per-stage ms/frame at {rows[-1]['streams']} streams: "
          f"{rows[-1]['stage_ms_per_frame']}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"bare_engine": bare, "rows": rows, "live": live_rows, "overload": over_row},
                                        indent=2))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
