"""Live video analytics on the agent: sources -> batching across streams -> the slot's engine ->
tracker -> events and annotated views (docs/stream.md). One module per job: ``spec`` (the typed
pipeline spec), ``sources`` (PyAV decoding, reconnects), ``muxer`` (batches across streams, drop
policy), ``infer`` (pre/postprocessing per the manifest), ``tracking`` (ByteTrack), ``events``
(the published schema, rate per source), ``annotate``, ``sinks`` and ``http`` (MQTT, JSON lines,
mp4/RTSP, MJPEG view), ``metrics``, ``pipeline`` and ``manager`` (pipelines by name, persisted)."""
