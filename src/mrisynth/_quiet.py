"""TensorFlow's start-up banner, dropped at the one place it is written.

Loading TensorFlow's shared libraries writes, before its own log level (TF_CPP_MIN_LOG_LEVEL) is read,
"WARNING: All log messages before absl::InitializeLog() ..." and an INFO line "oneDNN custom operations
are on ..." - twice, once per library - straight to file descriptor 2. Nothing in them is actionable
(oneDNN stays on; TF_ENABLE_ONEDNN_OPTS=0 would turn it off, the line says so only for reproducibility
work). `install()` wraps the first `import tensorflow`: while the module loads, descriptor 2 goes through
a pipe whose reader passes every line but these banner lines on to stderr as it arrives (so a crash or
hang during the import still shows its messages). Set MRISYNTH_TF_BANNER=1 to see them."""
from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import os
import sys
import threading

BANNER = ("All log messages before absl::InitializeLog() is called", "oneDNN custom operations are on")


def keep(line: str) -> bool:
    """Whether a line written while TensorFlow loads is shown (everything but the banner lines)."""
    return not any(text in line for text in BANNER)


@contextlib.contextmanager
def filtered_stderr():
    """For the block, file descriptor 2 goes through a pipe; a reader thread passes every line `keep`
    accepts to the real stderr as it arrives (so a crash or a hang inside the block still shows what was
    written before it), dropping only the banner lines."""
    sys.stderr.flush()
    saved = os.dup(2)
    read_end, write_end = os.pipe()

    def forward():
        with os.fdopen(read_end, "rb") as pipe:
            for line in pipe:
                if keep(line.decode(errors="replace")):
                    os.write(saved, line)

    reader = threading.Thread(target=forward, name="stderr-filter", daemon=True)
    reader.start()
    os.dup2(write_end, 2)
    os.close(write_end)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # the pipe's last writer is gone: the reader sees its end and stops
        reader.join(timeout=10)
        os.close(saved)


class _QuietTensorFlow(importlib.abc.MetaPathFinder):
    """A finder that only wraps the loader of the top-level `tensorflow` module (first import)."""

    def find_spec(self, name, path, target=None):  # noqa: ARG002 - the finder protocol
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        execute = spec.loader.exec_module

        def exec_module(module):
            with filtered_stderr():
                execute(module)

        spec.loader.exec_module = exec_module
        return spec


def install() -> None:
    """Wrap the first `import tensorflow` (no-op when it is loaded already or MRISYNTH_TF_BANNER=1)."""
    if "tensorflow" in sys.modules or os.environ.get("MRISYNTH_TF_BANNER") == "1":
        return
    if not any(isinstance(f, _QuietTensorFlow) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlow())
