"""What the machine offers: accelerators, CPU features, and the precision policy that follows.

`precision: auto` (params.yaml) resolves here, once per process:
- a GPU visible to TensorFlow            -> mixed_float16 (tensor cores; losses scaled: the GAN's
                                            LossScaleOptimizer, the segmenter's compile);
- a CPU with AMX-BF16 or AVX512-BF16    -> mixed_bfloat16 (~1.7x float32 for the paper GAN here);
- otherwise                              -> float32.
Any other value is used as written. Nothing here hides a device: no CUDA_VISIBLE_DEVICES, no
tf.config.set_visible_devices."""
from __future__ import annotations

import functools
from pathlib import Path

BF16_FLAGS = ("amx_bf16", "avx512_bf16")


@functools.lru_cache(maxsize=1)
def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU feature flags the kernel reports (empty where /proc/cpuinfo is absent, e.g. macOS)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


@functools.lru_cache(maxsize=1)
def gpus() -> tuple[str, ...]:
    """Names of the GPUs TensorFlow sees (empty on a CPU-only install)."""
    import tensorflow as tf

    found = tf.config.list_physical_devices("GPU")
    return tuple(tf.config.experimental.get_device_details(g).get("device_name", g.name) for g in found)


def gpu_memory_mib() -> list[int]:
    """Total memory of each NVIDIA GPU in MiB via nvidia-ml-py (the library MLflow's GPU system
    metrics use); empty without a driver or GPU, never an error."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - no driver / no library: simply no GPU memory to report
        return []
    try:
        return [int(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(i)).total // 2**20)
                for i in range(pynvml.nvmlDeviceGetCount())]
    finally:
        pynvml.nvmlShutdown()


def choose_precision(requested: str, gpu_names: tuple[str, ...], flags: frozenset[str]) -> tuple[str, str]:
    """(policy, why) for `requested`; pure, so the rule is testable without the hardware."""
    if requested != "auto":
        return requested, "set in params.yaml"
    if gpu_names:
        return "mixed_float16", f"auto: GPU {gpu_names[0]}"
    bf16 = [f for f in BF16_FLAGS if f in flags]
    if bf16:
        return "mixed_bfloat16", f"auto: CPU has {bf16[0]}"
    return "float32", "auto: no GPU and no bfloat16 CPU instructions"


def _on_this_machine(requested: str) -> tuple[str, str]:
    """choose_precision for this machine (TensorFlow is asked for GPUs only when the choice needs it)."""
    return choose_precision(requested, gpus() if requested == "auto" else (), cpu_flags())


def resolve_precision(requested: str) -> str:
    """The Keras mixed-precision policy to use for `requested` (see the module docstring)."""
    return _on_this_machine(requested)[0]


def precision_tags(requested: str) -> dict[str, str]:
    """{"precision": policy, "precision_requested": requested, "precision_reason": why} for run tags."""
    policy, why = _on_this_machine(requested)
    return {"precision": policy, "precision_requested": requested, "precision_reason": why}
