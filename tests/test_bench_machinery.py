"""The pieces the CPU benchmarks share: the CPU line (benchmarks.machine), running a side in a child
process (benchmarks.child) and taking sides in turn over rounds (benchmarks.rounds)."""
import textwrap
from pathlib import Path

import pytest

from benchmarks import child, machine, rounds
from utils import preflight

REPO = Path(__file__).resolve().parents[1]

FAKE_CPUINFO = textwrap.dedent("""\
    processor\t: 0
    vendor_id\t: GenuineIntel
    model name\t: Intel(R) Xeon(R) Platinum 8480+
    flags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8

    processor\t: 1
    vendor_id\t: GenuineIntel
    model name\t: Intel(R) Xeon(R) Platinum 8480+
    flags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8
    """)


def test_the_cpu_line_names_model_vendor_each_isa_extension_and_the_mkl_choice(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(FAKE_CPUINFO)
    expected_isa = ("avx2 yes, avx512f yes, avx512_vnni yes, avx512_bf16 yes, avx_vnni no, amx_bf16 yes, "
                    "amx_int8 yes")
    assert machine.machine_line(str(path)) == (
        f"CPU: Intel(R) Xeon(R) Platinum 8480+ (GenuineIntel); ISA: {expected_isa}; MKL: {preflight.MKL_CHOICE}")


def test_the_cpu_line_says_what_it_could_not_read():
    assert machine.cpu_model_name("processor\t: 0\n") is None
    assert machine.isa_line(None, None, None, None) == (
        "CPU: model unknown (vendor unknown); ISA: flags unknown (no /proc/cpuinfo flags line); "
        "MKL: no choice recorded")
    # An AVX2-only CPU: every AVX-512 and AMX extension is listed as absent, not left out.
    line = machine.isa_line("AMD EPYC", "AuthenticAMD", {"avx2", "fma"}, "MKL_DEBUG_CPU_TYPE=5 set")
    assert "avx2 yes, avx512f no, avx512_vnni no, avx512_bf16 no, avx_vnni no, amx_bf16 no, amx_int8 no" in line


@pytest.mark.parametrize("flags, native", [({"avx2", "avx512f"}, False), ({"avx512_bf16"}, True),
                                           ({"amx_bf16"}, True), (None, False), (set(), False)])
def test_native_bf16_needs_avx512_bf16_or_amx(flags, native):
    assert machine.has_native_bf16(flags) is native


def test_a_childs_peak_rss_is_its_own_not_its_parents(tmp_path):
    """This process first touches 300 MiB; the fresh interpreter it then starts (about 10 MB) touches
    100 MiB. The child's figure must lie between 100 and 200 MiB: getrusage's ru_maxrss, which Linux
    carries across exec, would say 300 or more. Its CPU seconds are never negative."""
    parent_block = bytearray(300 * 1024 * 1024)
    parent_block[::4096] = b"\x01" * len(parent_block[::4096])
    (tmp_path / "rss_worker.py").write_text(textwrap.dedent("""\
        import json
        from benchmarks import machine
        block = bytearray(100 * 1024 * 1024)
        block[::4096] = b"\\x01" * len(block[::4096])
        print(json.dumps({"rss": machine.peak_rss_mb(), "cpu": machine.cpu_seconds()}))
        """))
    result, reason = child.run_child("rss_worker", "--worker", {}, {"PYTHONPATH": f"{tmp_path}:{REPO}"})
    assert reason == ""
    assert 100 <= result["rss"] < 200
    assert min(result["cpu"]) >= 0 and sum(result["cpu"]) > 0
    assert machine.peak_rss_mb() >= 300  # and the parent's own peak saw its block
    del parent_block


def test_peak_rss_reads_vmhwm_in_kib(tmp_path):
    status = tmp_path / "status"
    status.write_text("Name:\tpython\nVmPeak:\t 9999999 kB\nVmHWM:\t   13564 kB\nVmRSS:\t 10000 kB\n")
    assert machine.peak_rss_mb(str(status)) == pytest.approx(13564 / 1024)


def test_median_spread_by_hand():
    assert rounds.median_spread([3.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0, "spread": 1.0}
    two = rounds.median_spread([1.2, 1.5])
    assert two["median"] == pytest.approx(1.35) and two["spread"] == pytest.approx(0.3 / 1.35)
    assert rounds.median_spread([4.0])["spread"] == 0.0
    with pytest.raises(ValueError, match="no values"):
        rounds.median_spread([])
    with pytest.raises(ValueError, match="not positive"):
        rounds.median_spread([0.0, 0.0])


def test_rounds_take_the_sides_in_turn_and_drop_a_failed_side_once():
    calls = []

    def run_side(side, round_index):
        calls.append((side, round_index))
        if side == "torch":
            return None, "No module named 'torch'"
        return {"seq_per_s": 1.0 + round_index}, ""

    runs, failures = rounds.run_rounds(["ours", "torch", "base", "torch_bf16"], run_side, 3,
                                       requires={"torch_bf16": "torch"})
    assert calls == [("ours", 0), ("torch", 0), ("base", 0), ("ours", 1), ("base", 1), ("ours", 2), ("base", 2)]
    assert runs == {"ours": [{"seq_per_s": 1.0}, {"seq_per_s": 2.0}, {"seq_per_s": 3.0}],
                    "base": [{"seq_per_s": 1.0}, {"seq_per_s": 2.0}, {"seq_per_s": 3.0}]}
    assert failures == {"torch": "No module named 'torch'",
                        "torch_bf16": "not run: torch failed (No module named 'torch')"}


def test_a_childs_result_is_its_last_json_line():
    out = 'W1201 some warning paddle printed\n{"seq_per_s": 1.5, "loss": 11.2}\n\n'
    assert child.parse_child_output(0, out, "") == ({"seq_per_s": 1.5, "loss": 11.2}, "")


@pytest.mark.parametrize("returncode, stdout, stderr, reason", [
    (1, "", "Traceback ...\nModuleNotFoundError: No module named 'torch'\n",
     "ModuleNotFoundError: No module named 'torch'"),
    (-9, "", "", "exit status -9, no output"),
    (0, "", "", "the child printed no result line"),
    (0, "done\n", "", "the child's last line is not JSON: 'done'"),
    (0, "[1, 2]\n", "", "the child's last line is JSON but not an object: '[1, 2]'"),
])
def test_a_child_without_a_result_gives_one_reason(returncode, stdout, stderr, reason):
    assert child.parse_child_output(returncode, stdout, stderr) == (None, reason)


def test_a_child_gets_the_spec_and_inherits_the_environment(tmp_path, monkeypatch):
    """A real child: the user's variables (KMP_BLOCKTIME here) reach it, the overrides win, the spec arrives."""
    (tmp_path / "echo_worker.py").write_text(textwrap.dedent("""\
        import json, os, sys
        spec = json.loads(sys.argv[2])
        print("noise before the result")
        print(json.dumps({"flag": sys.argv[1], "spec": spec, "kmp": os.environ.get("KMP_BLOCKTIME"),
                          "omp": os.environ.get("OMP_NUM_THREADS")}))
        """))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KMP_BLOCKTIME", "7")
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    result, reason = child.run_child("echo_worker", "--worker", {"side": "ours", "steps": 2},
                                     {"OMP_NUM_THREADS": "2", "PYTHONPATH": str(tmp_path)})
    assert reason == ""
    assert result == {"flag": "--worker", "spec": {"side": "ours", "steps": 2}, "kmp": "7", "omp": "2"}


def test_a_failing_child_reports_its_last_error_line(tmp_path, monkeypatch):
    (tmp_path / "bad_worker.py").write_text("raise SystemExit('no bf16 on this CPU')\n")
    monkeypatch.chdir(tmp_path)
    assert child.run_child("bad_worker", "--worker", {}, {"PYTHONPATH": str(tmp_path)}) == (
        None, "no bf16 on this CPU")


def test_the_inference_table_shows_each_rows_peak_memory_and_says_whose():
    from benchmarks import bench_inference as bi

    rows = [bi.Row("baseline", 8, 384, 10, 2.0, 1.0, 1.0, 1.0, speedup=1.0, peak_rss_mb=1234.4),
            bi.Row("hf-torch", 8, 384, 10, 1.0, 1.0, 1.0, 1.0)]
    lines = bi.table(rows).splitlines()
    assert lines[0].endswith("| x baseline | peak RSS MB |")
    assert lines[2].endswith("| 1.00 | 1234 |") and lines[3].endswith("| - | - |")
    assert "share one process" in bi.RSS_NOTE and "hf-torch routes share a process of their own" in bi.RSS_NOTE
