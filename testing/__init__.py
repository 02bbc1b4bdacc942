"""Harnesses shared by the tests and the benchmarks (``bench/`` imports these, never ``tests/``).

- ``testing.triton_local``: a real Triton server from the bundled Triton venv;
- ``testing.onnx_fixture``: a small real ONNX model that honours the gateway's tensor contract;
- ``testing.tiny_run``: a tiny trained run folder, as ``headct train`` writes it (needs torch);
- ``testing.gateway_process``: a real ``headct serve`` on a free port, handed over once ready.

Not shipped in the wheel: a development and CI package.
"""
