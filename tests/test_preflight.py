"""utils.preflight: the MKL code-path choice (vendor detection, when MKL_DEBUG_CPU_TYPE is set, the one log
line), and the Paddle noise it silences."""
import os
import subprocess
import sys

import pytest

from utils.preflight import choose_mkl_cpu_type, cpu_vendor, read_cpuinfo

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

AMD_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model name\t: AMD EPYC 7B13
flags\t\t: fpu vme avx2 fma

processor\t: 1
vendor_id\t: AuthenticAMD
"""
INTEL_CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) CPU @ 2.20GHz
"""
ARM_CPUINFO = """processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm
CPU implementer\t: 0x41
"""


@pytest.mark.parametrize("text, vendor", [
    (AMD_CPUINFO, "AuthenticAMD"), (INTEL_CPUINFO, "GenuineIntel"), (ARM_CPUINFO, None), ("", None), (None, None),
    ("vendor_id\t:\n", None),  # an empty value is no vendor
])
def test_cpu_vendor_from_cpuinfo_text(text, vendor):
    assert cpu_vendor(text) == vendor


def test_read_cpuinfo_of_a_missing_file_is_empty(tmp_path):
    assert read_cpuinfo(str(tmp_path / "no-cpuinfo")) == ""


def test_amd_without_a_user_value_gets_5():
    value, message = choose_mkl_cpu_type("AuthenticAMD", {})
    assert value == "5" and "MKL_DEBUG_CPU_TYPE=5" in message and "AMD" in message


@pytest.mark.parametrize("vendor", ["GenuineIntel", None, "HygonGenuine"])
def test_intel_and_other_vendors_are_left_alone(vendor):
    value, message = choose_mkl_cpu_type(vendor, {})
    assert value is None and "left unset" in message and (vendor or "unknown") in message


@pytest.mark.parametrize("user_value", ["4", "", "5"])
@pytest.mark.parametrize("vendor", ["AuthenticAMD", "GenuineIntel"])
def test_a_user_value_is_kept(vendor, user_value):
    value, message = choose_mkl_cpu_type(vendor, {"MKL_DEBUG_CPU_TYPE": user_value})
    assert value is None and repr(user_value) in message and "user" in message


def _python(code, env_update=(), drop=()):
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(env_update)
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=60)


_PRINT = "import utils.preflight, os; print(os.environ.get('MKL_DEBUG_CPU_TYPE'))"


def test_importing_preflight_sets_the_variable_on_this_machine():
    expected = "5" if cpu_vendor(read_cpuinfo()) == "AuthenticAMD" else "None"
    proc = _python(_PRINT, drop=("MKL_DEBUG_CPU_TYPE",))
    assert (proc.returncode, proc.stdout.strip()) == (0, expected), proc.stderr


def test_importing_preflight_keeps_the_users_value():
    proc = _python(_PRINT, env_update={"MKL_DEBUG_CPU_TYPE": "3"})
    assert (proc.returncode, proc.stdout.strip()) == (0, "3"), proc.stderr


def _device_lines(stderr):
    return [line for line in stderr.splitlines() if "utils.runtime" in line and "device: " in line]


# As an entry point: paddle imported (it sets the root logger to WARNING), then logging set up.
_RESOLVE_TWICE = ("import utils.preflight, paddle; from utils.logger import init_logging; init_logging(); "
                  "from utils.runtime import resolve_device; resolve_device('auto'); resolve_device('cpu')")


def test_the_choice_is_logged_once_with_the_device():
    """Issue 14: the device was logged twice (and contradicted itself: 'no usable GPU', then 'requested');
    the MKL choice was logged by every data tool although only Paddle runs use MKL."""
    proc = _python(_RESOLVE_TWICE, drop=("MKL_DEBUG_CPU_TYPE",))
    assert proc.returncode == 0, proc.stderr
    lines = _device_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr
    on_amd = cpu_vendor(read_cpuinfo()) == "AuthenticAMD"
    assert ("MKL_DEBUG_CPU_TYPE=5 set" if on_amd else "MKL_DEBUG_CPU_TYPE left unset") in lines[0]
    assert "OpenMP threads per process" in lines[0] and " INFO " in lines[0]


def test_the_user_value_is_what_the_device_line_says():
    proc = _python(_RESOLVE_TWICE, env_update={"MKL_DEBUG_CPU_TYPE": "", "KMP_BLOCKTIME": "7"})
    lines = _device_lines(proc.stderr)
    assert len(lines) == 1 and "MKL_DEBUG_CPU_TYPE='' kept as set by the user" in lines[0], proc.stderr
    assert "KMP_BLOCKTIME='7' kept as set by the user" in lines[0]


def test_a_data_cli_says_nothing_about_mkl(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "data.prep.inspect_shards", str(tmp_path / "missing")],
                          cwd=REPO, env=os.environ.copy(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "MKL" not in proc.stderr


_RUN_A_PROGRAM = """
import paddle
paddle.enable_static()
main, startup = paddle.static.Program(), paddle.static.Program()
with paddle.static.program_guard(main, startup):
    x = paddle.static.data("x", [2, 3], "float32")
    w = paddle.create_parameter([3, 1], "float32")
    loss = paddle.mean(paddle.matmul(x, w))
    paddle.optimizer.Adam(0.1).minimize(loss)
exe = paddle.static.Executor(paddle.CPUPlace())
exe.run(startup)
import numpy as np
print(exe.run(main, feed={"x": np.ones((2, 3), "float32")}, fetch_list=[loss])[0].shape)
"""


@pytest.mark.parametrize("first", ["import utils.preflight", "import zlib"])
def test_paddles_noise_is_silenced_and_its_output_kept(first):
    """Issue 14: Paddle's OMP_NUM_THREADS warning on every import with threads > 1, glog's executor INFO
    lines and the force_cpu UserWarning; the run without preflight shows the noise exists."""
    proc = _python(first + "\n" + _RUN_A_PROGRAM, env_update={"OMP_NUM_THREADS": "2"},
                   drop=("GLOG_minloglevel", "GLOG_v"))
    assert proc.returncode == 0 and proc.stdout.strip() == "()", proc.stderr
    noise = ("PLEASE USE OMP_NUM_THREADS WISELY", "OMP_NUM_THREADS set to 2", "New Executor is Running",
             "force_cpu")
    found = [n for n in noise if n in proc.stderr]
    if first == "import utils.preflight":
        assert found == [], proc.stderr
    else:
        assert "PLEASE USE OMP_NUM_THREADS WISELY" in found and "New Executor is Running" in found


def test_what_paddle_prints_at_import_apart_from_that_warning_is_kept():
    from utils.preflight import _QuietImportLoader

    class Loader:
        def exec_module(self, module):
            sys.stderr.write("WARNING: OMP_NUM_THREADS set to 4, not 1. ...\nkeep me\nPLEASE USE OMP_NUM_THREADS "
                             "WISELY.\nand me")

        def get_data(self, path):
            return b"delegated"

    captured = __import__("io").StringIO()
    real, sys.stderr = sys.stderr, captured
    try:
        loader = _QuietImportLoader(Loader(), ("WARNING: OMP_NUM_THREADS set to", "PLEASE USE OMP_NUM_THREADS"))
        loader.exec_module(None)
    finally:
        sys.stderr = real
    assert captured.getvalue() == "keep me\nand me" and loader.get_data("x") == b"delegated"


@pytest.mark.parametrize("argv, expected", [
    (["--num-threads", "3"], 3), (["--num-threads=4"], 4), (["--num_threads", "5"], 5),
    (["--num-threads", "0"], None), (["--num-threads", "x"], None), (["--num-threads"], None),
    (["--", "--num-threads", "2"], None), (["--seed", "3"], None)])
def test_threads_flag_from_the_command_line(argv, expected):
    from utils.preflight import threads_flag
    assert threads_flag(argv) == expected


def test_num_threads_flag_wins_over_the_environment():
    """Issue 14: users had to export OMP_NUM_THREADS; --num-threads must act before paddle loads."""
    code = "import utils.preflight, os, sys; print(os.environ['OMP_NUM_THREADS'])"
    proc = subprocess.run([sys.executable, "-c", code, "--num-threads", "3"], cwd=REPO, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.stdout.strip() == "3", proc.stderr
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.stdout.strip() == "1", proc.stderr


def test_logging_set_up_before_paddle_keeps_its_info_lines():
    """Paddle's import lowered the root logger to WARNING: INFO lines logged after it vanished."""
    code = ("import utils.preflight, logging; from utils.logger import init_logging; init_logging(); "
            "import paddle; logging.getLogger('x').info('still here')")
    assert "still here" in _python(code).stderr
    assert "still here" not in _python(code.replace("import utils.preflight, ", "import zlib, ")).stderr


# ------------------------------------------------------------ OpenMP waiting and the executor's threads
def test_idle_openmp_threads_sleep_unless_the_user_chose():
    from utils.preflight import choose_openmp_wait
    assert choose_openmp_wait({}) == ("0", "idle OpenMP threads sleep (KMP_BLOCKTIME=0)")
    for name in ("KMP_BLOCKTIME", "OMP_WAIT_POLICY"):
        value, message = choose_openmp_wait({name: "200" if name == "KMP_BLOCKTIME" else "ACTIVE"})
        assert value is None and name in message and "kept as set by the user" in message


@pytest.mark.parametrize("distribution, expected", [
    ("paddlepaddle", "1"), ("paddlepaddle-gpu", None), (None, None)])
def test_serial_executor_only_for_the_cpu_wheel(distribution, expected):
    from utils.preflight import choose_serial_executor
    value, message = choose_serial_executor({}, distribution)
    assert value == expected
    assert ("one at a time" in message) == (expected == "1")
    value, message = choose_serial_executor({"FLAGS_new_executor_serial_run": "0"}, distribution)
    assert value is None and "kept as set by the user" in message


def test_the_process_runs_with_what_preflight_chose():
    """The settings must reach Paddle: env variables read when libpaddle loads, so only a real process shows
    it; the user's own setting wins."""
    from utils.preflight import paddle_distribution
    code = ("import utils.preflight as p, os, paddle; "
            "print(os.environ.get('KMP_BLOCKTIME'), paddle.get_flags(['FLAGS_new_executor_serial_run'])"
            "['FLAGS_new_executor_serial_run'])")
    env = {k: v for k, v in os.environ.items()
           if k not in ("KMP_BLOCKTIME", "OMP_WAIT_POLICY", "FLAGS_new_executor_serial_run")}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env=env)
    assert proc.stdout.split() == ["0", str(paddle_distribution() == "paddlepaddle")], proc.stderr[-2000:]
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**env, "KMP_BLOCKTIME": "50", "FLAGS_new_executor_serial_run": "0"})
    assert proc.stdout.split() == ["50", "False"], proc.stderr[-2000:]
