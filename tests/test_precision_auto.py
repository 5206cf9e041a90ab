"""precision "auto": the chooser as a pure function (each branch, against hand-written manifests and CPU facts),
the agreement measure on hand-made outputs, and end to end: an export records each precision it ships, the
records equal what is recomputed here, and `QAPredictor.load()` with no precision runs what the chooser says,
logs why, and gives the fp32 predictor's answers on the verification windows."""
import json
import logging
import shutil

import numpy as np
import paddle
import pytest

from inference import model_dir as layout
from inference.precision_auto import (EM_TOLERANCE, RECORDS_KEY, Choice, CpuFacts, choose_precision,
                                      cpu_facts)
from test_inference import export_args, model  # noqa: F401  -- the tiny SQuAD checkpoint fixture
from utils.runtime import cpu_bf16_support

NATIVE = CpuFacts(bf16_usable=True, bf16_native=("avx512_bf16",), int8_flags=("avx512_vnni",))
EMULATED_BF16 = CpuFacts(bf16_usable=True, bf16_native=(), int8_flags=("avx512_vnni",))
NO_VNNI = CpuFacts(bf16_usable=True, bf16_native=("avx512_bf16",), int8_flags=())
BF16_RUNS = cpu_bf16_support().usable


def _verification(agree, windows=16, diff=0.03):
    return {"verification": {"windows": windows, "agree": agree, "max_abs_logit_diff": diff}}


def _squad(d_em, d_f1, verification_agree=16):
    return dict(_verification(verification_agree), squad={"questions": 500, "delta_exact_match": d_em,
                                                          "delta_F1": d_f1})


def _manifest(int8_files=True, **records):
    names = layout.REQUIRED_FILES + (layout.INT8_FILES if int8_files else ())
    return {"files": {n: {} for n in names}, RECORDS_KEY: records}


def _auto(manifest, cpu=NATIVE, device="cpu"):
    return choose_precision("auto", manifest, device=device, cpu=cpu)


# ---------------------------------------------------------------------------------------------- the rule
def test_native_bf16_agreeing_on_every_verification_answer_is_chosen_and_the_reason_says_so():
    assert _auto(_manifest(int8_files=False, bf16=_verification(16))) == Choice(
        "bf16", "precision auto -> bf16: this CPU has native bf16 (avx512_bf16); bf16 agrees with fp32 on 16/16 "
                "verification answers (max |dlogit| 0.03); int8 not shipped")


def test_bf16_differing_on_one_verification_answer_is_not_chosen():
    choice = _auto(_manifest(int8_files=False, bf16=_verification(15)))
    assert choice.precision == "fp32" and "bf16 skipped: bf16 differs from fp32 on 15/16" in choice.reason


def test_emulated_bf16_is_never_chosen():
    choice = _auto(_manifest(int8_files=False, bf16=_verification(16)), cpu=EMULATED_BF16)
    assert choice.precision == "fp32" and "no native bf16" in choice.reason


def test_bf16_with_em_f1_recorded_is_judged_on_them_not_on_the_verification_batch():
    assert _auto(_manifest(int8_files=False, bf16=_squad(-0.5, -0.9))).precision == "bf16"
    lost = _auto(_manifest(int8_files=False, bf16=_squad(-1.5, -0.2, verification_agree=16)))
    assert lost.precision == "fp32" and "EM/F1 -1.50/-0.20" in lost.reason


def test_int8_within_one_em_and_f1_is_chosen_on_a_vnni_cpu_over_bf16():
    choice = _auto(_manifest(bf16=_verification(16), int8=_squad(-0.4, -0.3)))
    assert choice.precision == "int8"
    assert choice.reason.startswith("precision auto -> int8: this CPU has fast int8 (avx512_vnni); int8 EM/F1 "
                                    "-0.40/-0.30 vs fp32 on 500 questions (within the 1/1 tolerance)")
    # exactly at the tolerance still counts as within it
    assert _auto(_manifest(int8=_squad(-EM_TOLERANCE, -1.0))).precision == "int8"


def test_int8_off_by_two_em_is_not_chosen_and_bf16_is_next():
    choice = _auto(_manifest(bf16=_verification(16), int8=_squad(-2.0, -0.5)))
    assert choice.precision == "bf16" and "int8 skipped: int8 EM/F1 -2.00/-0.50" in choice.reason
    assert _auto(_manifest(int8=_squad(-0.5, -1.2))).precision == "fp32"  # F1 off by 1.2


def test_int8_is_never_chosen_on_verification_agreement_alone():
    choice = _auto(_manifest(int8=_verification(16)))
    assert choice.precision == "fp32" and "only verification-batch agreement" in choice.reason


def test_int8_is_not_chosen_without_vnni_or_without_its_files():
    no_vnni = _auto(_manifest(bf16=_verification(16), int8=_squad(0.0, 0.0)), cpu=NO_VNNI)
    assert no_vnni.precision == "bf16" and "int8 skipped: this CPU has none of avx512_vnni" in no_vnni.reason
    assert _auto(_manifest(int8_files=False, int8=_squad(0.0, 0.0))).precision == "fp32"


def test_a_gpu_runs_fp32():
    choice = _auto(_manifest(bf16=_verification(16), int8=_squad(0.0, 0.0)), device="gpu")
    assert choice.precision == "fp32" and "device gpu runs fp32" in choice.reason


def test_an_export_from_before_the_records_runs_fp32_saying_why():
    old = _manifest(bf16=_verification(16))
    del old[RECORDS_KEY]
    old["int8"] = {"delta_exact_match": 0.0, "delta_F1": 0.0}  # the old int8 record is not a per-precision one
    choice = _auto(old)
    assert choice.precision == "fp32" and "no per-precision accuracy records" in choice.reason


def test_an_explicit_precision_always_wins():
    good = _manifest(bf16=_verification(16), int8=_squad(0.0, 0.0))
    assert choose_precision("fp32", good, device="cpu", cpu=NATIVE).precision == "fp32"
    assert choose_precision("bf16", {}, device="cpu", cpu=EMULATED_BF16).precision == "bf16"
    assert choose_precision("int8", good, device="gpu", cpu=NATIVE).precision == "int8"  # refused by the loader


# ---------------------------------------------------------------------------------------------- agreement
def _mask(lengths, width):
    return (np.arange(width)[None, :] < np.asarray(lengths)[:, None]).astype(np.int64)[:, None, None, :]


def test_squad_agreement_compares_argmax_start_and_end_over_real_tokens_only():
    from inference.precision_records import agreement

    settings = layout.ExportSettings("m", True, 4, 2, 2)
    feed = {"attention_mask": _mask([3, 3, 2], 4)}
    start = np.array([[0, 5, 1, 0], [3, 0, 0, 0], [0, 2, 9, 0]], np.float32)  # row 2's 9 is padding
    end = np.array([[0, 0, 4, 0], [0, 1, 0, 0], [1, 0, 0, 0]], np.float32)
    other_start = start.copy()
    other_start[0, 1] = 0.5          # row 0: start argmax moves 1 -> 2
    other_start[2, 2] = -9.0         # row 2: a padding value changes (real argmax unchanged)
    got = agreement(settings, [start, end], [other_start, end], feed)
    assert got == {"windows": 3, "agree": 2, "max_abs_logit_diff": 4.5}  # |5 - 0.5| over real tokens


def test_glue_agreement_is_the_argmax_label_and_stsb_a_score_within_the_tolerance():
    from inference.precision_records import SCORE_AGREEMENT, agreement

    feed = {"attention_mask": _mask([2, 2], 3)}
    mrpc = layout.ExportSettings("m", True, 3, task="MRPC", labels=("0", "1"), fetch_names=("logits",))
    got = agreement(mrpc, [np.array([[0.1, 0.2], [1.0, 0.0]])], [np.array([[0.3, 0.2], [0.9, 0.0]])], feed)
    assert got["agree"] == 1 and got["max_abs_logit_diff"] == pytest.approx(0.2)
    stsb = layout.ExportSettings("m", True, 3, task="STS-B", regression=True, fetch_names=("logits",))
    scores = np.array([[2.0], [4.0]])
    moved = scores + np.array([[SCORE_AGREEMENT / 2], [SCORE_AGREEMENT * 2]])
    assert agreement(stsb, [scores], [moved], feed)["agree"] == 1


# ---------------------------------------------------------------------------------------------- end to end
@pytest.fixture(autouse=True)
def dynamic_mode_afterwards():
    yield
    paddle.disable_static()


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):  # noqa: F811
    from inference import export

    out = tmp_path_factory.mktemp("auto") / "export"
    return out, export.main(export_args(model[0], out))


def _verification_windows(out):
    from inference.precision_records import PRECISION_CHECK_SEED, PRECISION_CHECK_WINDOWS
    from inference.verified_export import verification_feed

    vocab_size = json.loads((out / layout.CONFIG_FILE).read_text())["vocab_size"]
    return verification_feed(vocab_size, 32, PRECISION_CHECK_WINDOWS, seed=PRECISION_CHECK_SEED)


def _spans(predictor, feed):
    """(argmax start, argmax end) over real tokens of each window, and the raw logits, computed here."""
    start, end = predictor.run(feed)
    real = feed["attention_mask"][:, 0, 0, :] > 0
    spans = [(int(np.argmax(np.where(r, s, -np.inf))), int(np.argmax(np.where(r, e, -np.inf))))
             for s, e, r in zip(start, end, real)]
    return spans, start, end, real


@pytest.mark.skipif(not BF16_RUNS, reason="this CPU / Paddle cannot run bf16")
def test_the_export_records_bf16_agreement_as_recomputed_here(exported):
    from inference.predictor import QAPredictor

    out, manifest = exported
    assert set(manifest[RECORDS_KEY]) == {"bf16"}  # no int8 copy was made
    record = manifest[RECORDS_KEY]["bf16"]
    assert "squad" not in record  # no --eval-file
    feed = _verification_windows(out)
    fp32_spans, s32, e32, real = _spans(QAPredictor.load(str(out), precision="fp32", threads=1), feed)
    bf16_spans, s16, e16, _ = _spans(QAPredictor.load(str(out), precision="bf16", threads=1), feed)
    agree = sum(a == b for a, b in zip(fp32_spans, bf16_spans))
    diff = max(np.abs(s32 - s16)[real].max(), np.abs(e32 - e16)[real].max())
    assert record["verification"]["windows"] == len(fp32_spans) == 16
    assert record["verification"]["agree"] == agree
    assert record["verification"]["max_abs_logit_diff"] == pytest.approx(float(diff), rel=1e-6)
    assert json.loads((out / layout.MANIFEST_FILE).read_text())[RECORDS_KEY] == manifest[RECORDS_KEY]


def test_default_load_runs_what_the_chooser_says_logs_why_and_answers_as_fp32(exported, caplog):
    from inference.predictor import QAPredictor

    out, manifest = exported
    want = choose_precision("auto", manifest, device="cpu", cpu=cpu_facts())
    with caplog.at_level(logging.INFO, logger="inference.predictor"):
        predictor = QAPredictor.load(str(out), threads=1)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("precision auto -> ")]
    assert lines == [want.reason] and lines[0].startswith(f"precision auto -> {predictor.info['precision']}: ")
    assert predictor.info["precision"] == want.precision and predictor.info["precision_choice"] == want.reason
    facts, record = cpu_facts(), manifest[RECORDS_KEY].get("bf16")
    if facts.bf16_native and record and record["verification"]["agree"] == record["verification"]["windows"]:
        assert predictor.info["precision"] == "bf16"  # this machine: native bf16, and it agreed everywhere
    feed = _verification_windows(out)
    fp32 = QAPredictor.load(str(out), precision="fp32", threads=1)
    assert _spans(predictor, feed)[0] == _spans(fp32, feed)[0]


def test_an_export_without_records_loads_in_fp32_and_says_why(exported, tmp_path, caplog):
    from inference.predictor import QAPredictor

    out, manifest = exported
    old = tmp_path / "old"
    shutil.copytree(out, old)
    extra = {k: v for k, v in manifest.items() if k not in ("format", "task", "source_checkpoint", "paddle_version",
                                                          "created", "files", RECORDS_KEY)}
    layout.write_manifest(str(old), source=manifest["source_checkpoint"], extra=extra)
    with caplog.at_level(logging.INFO, logger="inference.predictor"):
        predictor = QAPredictor.load(str(old), threads=1)
    assert predictor.info["precision"] == "fp32"
    assert any(r.getMessage().startswith("precision auto -> fp32: this export has no per-precision accuracy")
               for r in caplog.records)


def test_an_explicit_precision_the_device_cannot_run_still_fails(exported):
    from inference.predictor import QAPredictor

    with pytest.raises(ValueError, match="precision 'bf16' is a CPU"):
        QAPredictor.load(str(exported[0]), precision="bf16", device="gpu")


def test_an_eval_file_with_nothing_to_measure_is_refused(model, tmp_path, monkeypatch):  # noqa: F811
    from inference import export
    from utils.runtime import Bf16Support

    monkeypatch.setattr(export, "cpu_bf16_support", lambda: Bf16Support(False, False, "this CPU lacks avx512bw"))
    with pytest.raises(ValueError, match=r"^--eval-file measures bf16 .*this CPU lacks avx512bw.*add "
                                         r"--int8-calibration-file or drop --eval-file$"):
        export.main(export_args(model[0], tmp_path / "x", "--eval-file", str(model[0] / "dev.json")))
    assert not (tmp_path / "x").exists()
