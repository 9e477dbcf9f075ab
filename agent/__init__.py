"""edgeloop agent: the program on every edge device.

Probe the hardware, build the right engine (ONNX Runtime or TensorRT) for each artifact, calibrate
INT8 on the device, benchmark with MLPerf LoadGen, serve live inference over the Open Inference
Protocol and publish telemetry over MQTT. No torch here, ever (tests/test_layering.py).
"""

__version__ = "0.1.0"
