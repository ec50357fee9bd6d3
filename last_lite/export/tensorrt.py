"""TensorRT engines from the exported ONNX model (TensorRT 10 Python API).

``python -m last_lite.export ckpt=... backend=tensorrt`` (``backend.precision=fp16`` or ``int8``):

- FP16: the FP32 ONNX model is parsed (``OnnxParser``) into an explicit-batch network (the only
  kind TensorRT 10 has), built with ``BuilderFlag.FP16`` and one optimisation profile over the
  dynamic batch axis (min 1, opt ``opt_batch``, max ``max_batch``).
- INT8: explicit quantization. TensorRT reads the scales of a QDQ model; it only supports
  symmetric signed INT8 (zero point 0), so the QDQ model is quantized for it with
  ``QInt8`` activations and weights and ``ActivationSymmetric`` (calibrated on real training
  samples, like ``onnx_int8``), then built with ``BuilderFlag.INT8`` (+ FP16 for the layers left
  in float).

The engine is checked against ONNX Runtime (CPU) on real test samples: max |logit diff| and top-1
agreement. Device memory is handled through the CUDA driver API (``libcuda``, part of every NVIDIA
driver) with ctypes, so nothing besides ``tensorrt`` is needed.

:func:`require_tensorrt` runs before anything is written: without the ``tensorrt`` package (of
major version 10) or an NVIDIA GPU it raises :class:`TensorRTUnavailable` saying what is needed.
"""

from __future__ import annotations

import ctypes
import re
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from last_lite.io import atomic_write

NEEDS = ("TensorRT export needs the TensorRT 10 Python package (pip install 'last_lite[tensorrt]', "
         "i.e. tensorrt>=10,<11) and an NVIDIA GPU with its driver (libcuda).")
# TensorRT 11 removed BuilderFlag.FP16 / INT8 (strongly typed networks only), which build_engine sets.
SUPPORTED_MAJOR = 10


class TensorRTUnavailable(RuntimeError):
    """TensorRT 10 or an NVIDIA GPU is missing."""


# ------------------------------------------------------------------------------------------------
# CUDA driver API (ctypes)
# ------------------------------------------------------------------------------------------------
def _load_libcuda():
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


def cuda_device_count() -> tuple[int, str]:
    """(number of CUDA devices, reason when 0) via the driver API; no CUDA toolkit needed."""
    lib = _load_libcuda()
    if lib is None:
        return 0, "no NVIDIA driver found (libcuda could not be loaded)"
    if lib.cuInit(0) != 0:
        return 0, "the NVIDIA driver is present but cuInit failed (no usable GPU)"
    count = ctypes.c_int(0)
    if lib.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value < 1:
        return 0, "the NVIDIA driver found no GPU"
    return int(count.value), ""


def require_tensorrt():
    """Return the ``tensorrt`` module, or raise :class:`TensorRTUnavailable` naming what is missing."""
    try:
        import tensorrt as trt  # noqa: F401
    except ImportError as exc:
        raise TensorRTUnavailable(f"{NEEDS} The tensorrt package is not importable here ({exc}).") \
            from None
    version = str(getattr(trt, "__version__", "unknown"))
    major = re.match(r"(\d+)\.", version)
    if major is None or int(major.group(1)) != SUPPORTED_MAJOR:
        raise TensorRTUnavailable(f"{NEEDS} TensorRT {version} is installed here, and the engine build "
                                  f"uses TensorRT {SUPPORTED_MAJOR}'s API (TensorRT 11 removed its precision flags).")
    count, why = cuda_device_count()
    if count < 1:
        raise TensorRTUnavailable(f"{NEEDS} No NVIDIA GPU is available here: {why}.")
    return trt


class _Cuda:
    """The few driver-API calls an engine run needs: a context, device buffers, one stream."""

    def __init__(self, device: int = 0) -> None:
        self.lib = _load_libcuda()
        if self.lib is None:
            raise TensorRTUnavailable(NEEDS)
        self._check(self.lib.cuInit(0), "cuInit")
        self.device = ctypes.c_int(0)
        self._check(self.lib.cuDeviceGet(ctypes.byref(self.device), int(device)), "cuDeviceGet")
        self.ctx = ctypes.c_void_p()
        self._check(self.lib.cuDevicePrimaryCtxRetain(ctypes.byref(self.ctx), self.device),
                    "cuDevicePrimaryCtxRetain")
        self._check(self.lib.cuCtxPushCurrent_v2(self.ctx), "cuCtxPushCurrent")
        self.stream = ctypes.c_void_p()
        self._check(self.lib.cuStreamCreate(ctypes.byref(self.stream), 0), "cuStreamCreate")
        self._buffers: list[int] = []

    @staticmethod
    def _check(code: int, what: str) -> None:
        if code != 0:
            raise RuntimeError(f"CUDA driver call {what} failed with error {code}")

    def device_name(self) -> str:
        buf = ctypes.create_string_buffer(256)
        self.lib.cuDeviceGetName(buf, 256, self.device)
        return buf.value.decode(errors="replace")

    def alloc(self, nbytes: int) -> int:
        ptr = ctypes.c_uint64(0)
        self._check(self.lib.cuMemAlloc_v2(ctypes.byref(ptr), ctypes.c_size_t(max(int(nbytes), 1))),
                    "cuMemAlloc")
        self._buffers.append(ptr.value)
        return ptr.value

    def to_device(self, ptr: int, host: np.ndarray) -> None:
        host = np.ascontiguousarray(host)
        self._check(self.lib.cuMemcpyHtoD_v2(ctypes.c_uint64(ptr), host.ctypes.data_as(ctypes.c_void_p),
                                             ctypes.c_size_t(host.nbytes)), "cuMemcpyHtoD")

    def to_host(self, host: np.ndarray, ptr: int) -> None:
        self._check(self.lib.cuMemcpyDtoH_v2(host.ctypes.data_as(ctypes.c_void_p), ctypes.c_uint64(ptr),
                                             ctypes.c_size_t(host.nbytes)), "cuMemcpyDtoH")

    def synchronize(self) -> None:
        self._check(self.lib.cuStreamSynchronize(self.stream), "cuStreamSynchronize")

    def close(self) -> None:
        for ptr in self._buffers:
            self.lib.cuMemFree_v2(ctypes.c_uint64(ptr))
        self._buffers.clear()
        if self.stream:
            self.lib.cuStreamDestroy_v2(self.stream)
            self.stream = ctypes.c_void_p()
        popped = ctypes.c_void_p()
        self.lib.cuCtxPopCurrent_v2(ctypes.byref(popped))
        self.lib.cuDevicePrimaryCtxRelease_v2(self.device)


# ------------------------------------------------------------------------------------------------
# build and run
# ------------------------------------------------------------------------------------------------
def build_engine(onnx_path: str | Path, engine_path: str | Path, *, precision: str = "fp16",
                 input_shape: Sequence[int], max_batch: int = 32, opt_batch: int = 1,
                 workspace_mib: int = 1024) -> dict[str, Any]:
    """Build and save (atomically) a serialized engine for ``onnx_path``; ``input_shape`` is one
    sample's (C, T, V, M). Returns build facts."""
    trt = require_tensorrt()
    if precision not in ("fp32", "fp16", "int8"):
        raise ValueError(f"precision must be fp32, fp16 or int8, got {precision!r}")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: networks are always explicit-batch
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mib) << 20)
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)  # explicit quantization: scales from the Q/DQ nodes
    profile = builder.create_optimization_profile()
    sample = tuple(int(s) for s in input_shape)
    name = network.get_input(0).name
    opt = max(1, min(int(opt_batch), int(max_batch)))
    profile.set_shape(name, (1,) + sample, (opt,) + sample, (int(max_batch),) + sample)
    config.add_optimization_profile(profile)
    started = time.time()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see the log above)")
    data = bytes(memoryview(serialized))
    atomic_write(engine_path, lambda tmp: tmp.write_bytes(data))
    return {"version": trt.__version__, "precision": precision, "engine": str(engine_path),
            "engine_bytes": len(data), "build_s": round(time.time() - started, 1),
            "profile": {"min": 1, "opt": opt, "max": int(max_batch)}, "input": name}


class EngineRunner:
    """Run a serialized engine on numpy batches: ``runner(x) -> logits`` (batch <= max_batch)."""

    def __init__(self, engine_path: str | Path, device: int = 0) -> None:
        trt = require_tensorrt()
        self.trt = trt
        self.cuda = _Cuda(device)
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise RuntimeError(f"cannot deserialize the TensorRT engine {engine_path}")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        min_shape, _, max_shape = self.engine.get_tensor_profile_shape(self.inputs[0], 0)
        self.min_shape = tuple(int(s) for s in min_shape)
        self.max_shape = tuple(int(s) for s in max_shape)
        self.max_batch = self.max_shape[0]
        self.sample_shape = self.max_shape[1:]
        self.in_ptr = self.cuda.alloc(int(np.prod(max_shape)) * 4)
        self.out_ptrs: dict[str, int] = {}
        self.out_shapes: dict[str, tuple[int, ...]] = {}
        self.set_input_shape(self.max_shape)
        for name in self.outputs:
            shape = tuple(int(s) for s in self.context.get_tensor_shape(name))
            self.out_ptrs[name] = self.cuda.alloc(int(np.prod(shape)) * 4)
        self.device_name = self.cuda.device_name()

    def set_input_shape(self, shape: Sequence[int]) -> None:
        """Set the input's shape. TensorRT answers False (and only logs) for a shape outside the
        engine's optimisation profile; the context would then run with its previous shape."""
        shape = tuple(int(s) for s in shape)
        if not self.context.set_input_shape(self.inputs[0], shape):
            raise ValueError(f"the TensorRT engine refuses input shape {shape} for {self.inputs[0]!r}: its "
                             f"optimisation profile takes {self.min_shape} to {self.max_shape}; pass "
                             f"{self.min_shape[0]} to {self.max_shape[0]} clips of shape {self.max_shape[1:]}")

    def run_batch(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if len(x) > self.max_batch:
            raise ValueError(f"batch {len(x)} exceeds the engine's max batch {self.max_batch}")
        self.set_input_shape(x.shape)
        self.cuda.to_device(self.in_ptr, x)
        self.context.set_tensor_address(self.inputs[0], self.in_ptr)
        for name, ptr in self.out_ptrs.items():
            self.context.set_tensor_address(name, ptr)
        if not self.context.execute_async_v3(self.cuda.stream.value or 0):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        out_name = self.outputs[0]
        out = np.empty(tuple(int(s) for s in self.context.get_tensor_shape(out_name)), np.float32)
        self.cuda.synchronize()
        self.cuda.to_host(out, self.out_ptrs[out_name])
        return out

    def __call__(self, x: np.ndarray) -> np.ndarray:
        from last_lite.runtime.session import clip_logits

        return clip_logits(self.run_batch, x, self.max_batch)

    def latency(self, x: np.ndarray, warmup: int = 20, repeats: int = 100) -> dict[str, float]:
        from last_lite.export.results import time_calls

        return time_calls(lambda: self.run_batch(x), len(x), warmup, repeats)

    def close(self) -> None:
        self.context = None
        self.engine = None
        self.cuda.close()


def compare_with_ort(runner: EngineRunner, session, x: np.ndarray) -> dict[str, Any]:
    """Max |logit diff| and top-1 agreement of the engine against an ORT session on ``x``."""
    from last_lite.export.onnx import ort_logits

    a = runner(x)
    b = ort_logits(session, x)
    return {"samples": int(len(a)), "max_abs_diff": float(np.abs(a - b).max()) if len(a) else None,
            "agreement": float((a.argmax(1) == b.argmax(1)).mean()) if len(a) else None,
            "finite": bool(np.isfinite(a).all())}
