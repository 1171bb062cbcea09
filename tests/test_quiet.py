"""TensorFlow's start-up banner is dropped; every other line written while it loads is kept."""
import os
import subprocess
import sys

import pytest

from mrisynth import _quiet


def test_filtered_stderr_drops_banner_lines_only(capfd):
    with _quiet.filtered_stderr():
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n")
        os.write(2, b"I0000 00:00:1.0 1 port.cc:153] oneDNN custom operations are on. You may see ...\n")
        os.write(2, b"E0000 a real error line\n")
    assert capfd.readouterr().err == "E0000 a real error line\n"


def test_filtered_stderr_writes_back_when_the_block_fails(capfd):
    try:
        with _quiet.filtered_stderr():
            os.write(2, b"something went wrong\n")
            raise ImportError("boom")
    except ImportError:
        pass
    assert capfd.readouterr().err == "something went wrong\n"


def _import_tensorflow(env_extra: dict, code: str = "import mrisynth, tensorflow") -> str:
    env = {k: v for k, v in os.environ.items() if k != "MRISYNTH_TF_BANNER"} | env_extra
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stderr


def test_importing_tensorflow_through_mrisynth_prints_no_banner():
    quiet = _import_tensorflow({})
    assert not [text for text in _quiet.BANNER if text in quiet], quiet
    # the switch shows what a bare import at mrisynth's log level prints on this CPU: TensorFlow writes the
    # oneDNN line only where it turns oneDNN on by default (e.g. AVX-512 Intel CPUs, not an AMD EPYC without it)
    bare = _import_tensorflow({"TF_CPP_MIN_LOG_LEVEL": "2"}, "import tensorflow")
    shown = _import_tensorflow({"MRISYNTH_TF_BANNER": "1"})
    assert [text for text in _quiet.BANNER if text in shown] == [text for text in _quiet.BANNER if text in bare], (shown, bare)


@pytest.mark.parametrize("switch, hooked", [(None, "True"), ("1", "False")])
def test_the_banner_switch_decides_whether_the_import_is_wrapped(switch, hooked):
    """On any CPU (the comparison above is empty where TensorFlow prints no oneDNN line): importing mrisynth
    puts the wrapper before TensorFlow's import unless MRISYNTH_TF_BANNER=1."""
    env = {k: v for k, v in os.environ.items() if k != "MRISYNTH_TF_BANNER"} | ({"MRISYNTH_TF_BANNER": switch} if switch else {})
    code = "import sys, mrisynth\nfrom mrisynth import _quiet\nprint(any(isinstance(f, _quiet._QuietTensorFlow) for f in sys.meta_path))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == hooked, done.stdout + done.stderr


def test_lines_written_before_a_hard_crash_in_the_block_still_show():
    code = ("import os, time\nfrom mrisynth import _quiet\nwith _quiet.filtered_stderr():\n"
            "    os.write(2, b'F0000 check failed: the real reason\\n')\n    time.sleep(0.5)\n    os._exit(3)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 3 and "the real reason" in done.stderr
