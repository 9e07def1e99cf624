"""Settings, read once from the environment (SageMaker's names and our SERVING_ ones) and `serve` flags."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields

from sagemaker_inference import parameters as sm

PREFIX = "SERVING_"
MULTI_MODEL_ENV = "SAGEMAKER_MULTI_MODEL"  # as the SageMaker inference toolkits read it



@dataclass(frozen=True)
class Settings:
    """Every knob of the server; each is a `serve --flag` and the env var SERVING_<NAME> (SageMaker's where noted)."""

    model_dir: str | None = field(default=None, metadata={"help": "model folder or model.tar.gz"})
    host: str = field(default="0.0.0.0", metadata={"help": "address to bind"})
    port: int = field(default=8080, metadata={"help": "port (SAGEMAKER_BIND_TO_PORT)"})
    layout: str = field(default="auto", metadata={
        "help": "engines (HTTP front-end processes feeding one engine process per accelerator, which owns the "
                "model and the batcher), workers (each worker process its own model and batcher), or auto: engines "
                "on GPUs and simulated accelerators, workers on the CPU and whenever the folder has user code"})
    workers: int = field(default=0, metadata={"help": "worker processes, 0 = workers_per_gpu on each GPU, or one "
                                                      "per core on CPU; spread evenly over the GPUs; with layout "
                                                      "engines: front-end processes, 0 = one per core "
                                                      "(SAGEMAKER_MODEL_SERVER_WORKERS)"})
    workers_per_gpu: int = field(default=1, metadata={"help": "workers (each its own model copy) per GPU when "
                                                              "workers is 0"})
    threads: int = field(default=128, metadata={"help": "request threads per worker (in-flight requests); "
                                                        "engines: requests a front end has waiting on them, and "
                                                        "its threads for the other routes"})
    timeout_s: int = field(default=55, metadata={
        "help": "seconds from a request's arrival to its answer, else 504; under SageMaker's own 60 s so the "
                "client gets our error (SAGEMAKER_MODEL_SERVER_TIMEOUT)"})
    max_payload_mb: float = field(default=6.0, metadata={"help": "request body limit (SAGEMAKER_MAX_PAYLOAD_IN_MB)"})
    device: str = field(default="auto", metadata={
        "help": "auto (every visible GPU, else the CPU), cpu, cuda (every visible GPU) or cuda:N (that one); "
                "CUDA_VISIBLE_DEVICES, indices or UUIDs, is the set of GPUs visible"})
    backend: str = field(default="auto", metadata={
        "help": "auto (ONNX Runtime fp32 on CPU when the folder has a current export, else torch), torch, onnx "
                "(ONNX Runtime over onnx/ in the folder, any variant), or sim (simulated accelerators for capacity "
                "planning: the real tokenizer, a forward that waits sim_fixed_ms + sim_per_token_us per padded "
                "token and returns constant scores)"})
    sim_devices: int = field(default=1, metadata={
        "help": "simulated accelerators with backend sim; workers are pinned to them as to GPUs"})
    sim_fixed_ms: float = field(default=0.5, metadata={"help": "simulated forward: fixed milliseconds"})
    sim_per_token_us: float = field(default=2.0, metadata={
        "help": "simulated forward: microseconds per padded token (batch x longest)"})
    torch_dtype: str = field(default="auto", metadata={
        "help": "auto (GPU: fp16 when its scores agree with fp32 at start-up, else fp32; CPU: fp32), fp32, fp16 or "
                "bf16 (compute capability 8.0+), with backend torch"})
    onnx_variant: str = field(default="fp32", metadata={"help": "fp32, fp16 (GPU) or int8 (CPU), with backend onnx "
                                                                "(auto uses fp32 only)"})
    onnx_provider: str = field(default="cuda", metadata={
        "help": "ONNX Runtime on a GPU: cuda, or tensorrt (engines built at warm-up, cached in onnx_cache_dir)"})
    onnx_cache_dir: str = field(default="", metadata={
        "help": "writable folder for TensorRT engine and timing caches, '' = a folder under the temp dir"})
    torch_threads: int = field(default=0, metadata={"help": "intra-op threads per worker, 0 = cores / workers"})
    max_batch_size: int = field(default=32, metadata={"help": "texts per forward pass"})
    max_batch_tokens: int = field(default=4096, metadata={"help": "padded tokens per forward pass"})
    max_batch_padding: float = field(default=-1.0, metadata={
        "help": "largest share of padding tokens in a batch, 0-1; -1 = auto: on CPU a text joins a batch only "
                "while the padding it adds costs less than the per-forward cost it saves (both timed at "
                "warm-up), on GPU no limit"})
    max_batch_delay_ms: float = field(default=0.0, metadata={"help": "wait for more texts when idle"})
    max_queue_texts: int = field(default=2048, metadata={"help": "queued texts per worker before 429"})
    batching: str = field(default="dynamic", metadata={"help": "dynamic, or none: one forward per request in "
                                                                  "its own thread (the per-request baseline)"})
    max_length: int = field(default=0, metadata={"help": "truncate texts to this many tokens, 0 = model limit"})
    max_text_chars: int = field(default=0, metadata={
        "help": "characters of a text kept before tokenising (more: cut and reported truncated, or 422 with "
                "truncate=false), 0 = 50 per token (or word) of the model's limit"})
    max_word_chars: int = field(default=100, metadata={
        "help": "LSTM: characters of one word whose n-grams are hashed (fastText hashes them all)"})
    graceful_timeout_s: int = field(default=25, metadata={"help": "drain time after SIGTERM"})
    multi_model: bool = field(default=False, metadata={
        "help": "a multi-model endpoint: start with no model, load and unload them through /models "
                "(SAGEMAKER_MULTI_MODEL); runs layout engines, every model shared by the engines' accelerators"})
    models_root: str = field(default="/opt/ml/models", metadata={
        "help": "multi-model: the folder every model to load must be inside (SageMaker extracts them there)"})
    models_memory_mb: float = field(default=0.0, metadata={
        "help": "multi-model: the most the loaded models' estimated footprints (weights, vectors, activations of "
                "the largest batch) may add up to, per engine; 0 = what the device (or host) has free"})
    log_level: str = field(default="info", metadata={"help": "logging level"})

    def __post_init__(self) -> None:
        positive = ("port", "threads", "timeout_s", "max_batch_size", "max_batch_tokens", "max_queue_texts",
                    "max_word_chars", "sim_devices")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("workers", "torch_threads", "max_length", "max_batch_delay_ms", "graceful_timeout_s",
                     "max_text_chars", "sim_fixed_ms", "sim_per_token_us"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")
        if not (self.max_batch_padding == -1 or 0 <= self.max_batch_padding <= 1):
            raise ValueError(f"max_batch_padding must be -1 (auto) or within 0-1, got {self.max_batch_padding}")
        if self.layout not in ("auto", "engines", "workers"):
            raise ValueError(f"layout must be auto, engines or workers, got {self.layout!r}")
        if self.backend not in ("auto", "torch", "onnx", "sim"):
            raise ValueError(f"backend must be auto, torch, onnx or sim, got {self.backend!r}")
        if self.torch_dtype not in ("auto", "fp32", "fp16", "bf16"):
            raise ValueError(f"torch_dtype must be auto, fp32, fp16 or bf16, got {self.torch_dtype!r}")
        if self.onnx_provider not in ("cuda", "tensorrt"):
            raise ValueError(f"onnx_provider must be cuda or tensorrt, got {self.onnx_provider!r}")
        if self.workers_per_gpu < 1:
            raise ValueError(f"workers_per_gpu must be at least 1, got {self.workers_per_gpu}")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")
                and self.device[5:].isdigit()):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.onnx_variant not in ("fp32", "fp16", "int8"):
            raise ValueError(f"onnx_variant must be fp32, fp16 or int8, got {self.onnx_variant!r}")
        if self.batching not in ("dynamic", "none"):
            raise ValueError(f"batching must be dynamic or none, got {self.batching!r}")
        if self.models_memory_mb < 0:
            raise ValueError(f"models_memory_mb must not be negative, got {self.models_memory_mb}")
        if self.multi_model and self.layout == "workers":
            raise ValueError("multi_model runs layout engines (models share the accelerators); not layout workers")
        if self.max_payload_mb <= 0:
            raise ValueError(f"max_payload_mb must be positive, got {self.max_payload_mb}")

    @property
    def max_payload_bytes(self) -> int:
        return int(self.max_payload_mb * 1024 * 1024)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides) -> Settings:
        """SageMaker's variables, then SERVING_* ones, then explicit overrides (flags); None means unset."""
        env = os.environ if env is None else env
        values: dict = {}
        sagemaker_names = {
            "port": sm.BIND_TO_PORT_ENV, "workers": sm.MODEL_SERVER_WORKERS_ENV,
            "timeout_s": sm.MODEL_SERVER_TIMEOUT_ENV, "max_payload_mb": sm.MAX_REQUEST_SIZE,
            "multi_model": MULTI_MODEL_ENV,
        }
        for f in fields(cls):
            for name in (sagemaker_names.get(f.name), PREFIX + f.name.upper()):
                if name and env.get(name, "").strip():
                    values[f.name] = _convert(f, env[name], name)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def describe(self) -> dict:
        return dataclasses.asdict(self)


def _convert(f: dataclasses.Field, raw: str, name: str):
    kind = f.type if isinstance(f.type, str) else f.type.__name__
    if kind == "bool":
        text = raw.strip().lower()
        if text not in ("true", "1", "yes", "false", "0", "no"):
            raise ValueError(f"{name}={raw!r} is not true or false")
        return text in ("true", "1", "yes")
    try:
        if kind.startswith("int"):
            return int(raw)
        if kind.startswith("float"):
            return float(raw)
    except ValueError as exc:
        raise ValueError(f"{name}={raw!r} is not a number") from exc
    return raw
