"""Precision `auto` and the device tags (mrisynth.io.devices): the rule, and this machine's answer."""
import pytest

from mrisynth.io import devices, registry, tracking


@pytest.mark.parametrize("requested, gpus, flags, expected", [
    ("auto", ("NVIDIA H100",), frozenset({"amx_bf16"}), "mixed_float16"),   # a GPU wins over CPU features
    ("auto", (), frozenset({"sse", "amx_bf16"}), "mixed_bfloat16"),
    ("auto", (), frozenset({"avx512_bf16"}), "mixed_bfloat16"),
    ("auto", (), frozenset({"sse", "avx2"}), "float32"),
    ("float32", ("NVIDIA H100",), frozenset({"amx_bf16"}), "float32"),       # set explicitly: used as written
    ("mixed_bfloat16", (), frozenset(), "mixed_bfloat16"),
])
def test_choose_precision(requested, gpus, flags, expected):
    policy, why = devices.choose_precision(requested, gpus, flags)
    assert policy == expected
    assert why.startswith("auto") == (requested == "auto")


def test_cpu_flags_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 amx_bf16 avx2\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    assert devices.cpu_flags.__wrapped__(str(info)) == frozenset({"fpu", "sse2", "amx_bf16", "avx2"})
    assert devices.cpu_flags.__wrapped__(str(tmp_path / "absent")) == frozenset()


def test_this_machine_records_cpu_and_its_precision():
    tags = tracking.device_tags("auto")
    assert tags["precision_requested"] == "auto"
    if devices.gpus():
        assert tags["device"].startswith("GPU:") and tags["precision"] == "mixed_float16"
    else:
        assert tags["device"].startswith("CPU:") and tags["device_kind"] == "cpu" and tags["gpu_count"] == "0"
        assert "gpu_memory_mib" not in tags
        assert devices.gpu_memory_mib() == []  # no driver here: nothing to report, and no error
        expected = "mixed_bfloat16" if set(devices.BF16_FLAGS) & devices.cpu_flags() else "float32"
        assert tags["precision"] == expected == devices.resolve_precision("auto")


def test_registered_requirements_name_the_installed_tensorflow():
    assert registry.tensorflow_distribution() in ("tensorflow-cpu", "tensorflow")


def test_gan_under_mixed_float16_scales_its_losses():
    """A GPU gets mixed_float16 from `auto`: the GAN's own train step must then scale its losses (float16
    gradients underflow otherwise). Checked on the CPU by asking for mixed_float16 explicitly."""
    import keras
    import numpy as np

    from mrisynth.training.gan import GanTrainer, paper_settings

    before = keras.mixed_precision.global_policy().name
    try:
        trainer = GanTrainer(paper_settings(batch_size=2, width=0.125, precision="mixed_float16"), 32, 4, 2)
        assert isinstance(trainer.g_opt, keras.optimizers.LossScaleOptimizer)
        assert isinstance(trainer.d_opt, keras.optimizers.LossScaleOptimizer)
        rng = np.random.default_rng(0)
        cond = (rng.random((2, 32, 32, 4)) > 0.5).astype(np.float32)
        real = rng.uniform(-1, 1, (2, 32, 32, 2)).astype(np.float32)
        weights = [w.numpy().copy() for w in trainer.generator.trainable_variables[:2]]
        losses = {k: float(v) for k, v in trainer._train_step(cond, real).items()}
        assert all(np.isfinite(v) for v in losses.values()), losses
        moved = [not np.array_equal(w, v.numpy()) for w, v in zip(weights, trainer.generator.trainable_variables[:2])]
        assert any(moved)  # the scaled gradients were unscaled and applied
        plain = GanTrainer(paper_settings(batch_size=2, width=0.125, precision="float32"), 32, 4, 2)
        assert not isinstance(plain.g_opt, keras.optimizers.LossScaleOptimizer)
    finally:
        keras.mixed_precision.set_global_policy(before)
