"""benchmarks.bench_train's model FLOP count, against the parameters of the program it times."""
import numpy as np
import pytest

import program as P
from benchmarks import bench_train
from modeling import BertConfig

pytestmark = pytest.mark.usefixtures("static_graph")


def test_training_flops_counts_the_programs_parameters_per_row_they_see():
    cfg = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=32)
    bundle = P.build_pretraining(cfg, P.TrainConfig(optimizer="Lamb", total_steps=10, device="gpu"))
    size = {p.name: int(np.prod(p.shape)) for p in bundle.main_program.all_parameters()}

    def total(prefixes):
        return sum(n for name, n in size.items() if name.startswith(prefixes))

    batch, seq, predicted = 4, 16, 3
    encoder = total(("bert.encoder.",))
    pooler_nsp = total(("bert.pooler.", "cls.seq_relationship."))
    mlm = total(("cls.predictions.",)) + size["bert.embeddings.word_embeddings.weight"]  # tied decoder
    expected = (6 * (encoder * batch * seq + pooler_nsp * batch + mlm * batch * predicted)
                + 12 * cfg.num_hidden_layers * batch * seq * seq * cfg.hidden_size)
    assert bench_train.training_flops(cfg, batch, seq, predicted) == expected


def test_bert_base_step_is_560_gflop():
    """By hand: 12 x 7,087,872 encoder parameters x 1024 tokens x 6 = 522.57 G; attention 12 x 12 x 8 x 128^2
    x 768 = 14.50 G; MLM head (transform 592,128 + decoder 23,471,418) x 160 positions x 6 = 23.10 G; pooler
    and NSP 592,130 x 8 x 6 = 0.03 G."""
    cfg = BertConfig.from_json_file(bench_train.BERT_BASE)
    assert bench_train.training_flops(cfg) == 560_199_567_840


def _args(**overrides):
    return bench_train.parse_args([f"--{k.replace('_', '-')}" if v is True else f"--{k.replace('_', '-')}={v}"
                                   for k, v in overrides.items()])


def test_sides_alternate_paddle_and_torch_and_bf16_needs_the_cpu_for_it():
    avx2_only = {"avx2", "fma", "avx512f"}
    sides, skipped = bench_train.plan_sides(_args(), avx2_only)
    assert sides == ["ours", "torch", "paddle_lamb", "baseline"]
    assert list(skipped) == ["torch_bf16"] and "neither avx512_bf16 nor amx_bf16" in skipped["torch_bf16"]
    sides, skipped = bench_train.plan_sides(_args(), avx2_only | {"avx512_bf16"})
    assert sides == ["ours", "torch", "paddle_lamb", "torch_bf16", "baseline"] and skipped == {}
    sides, skipped = bench_train.plan_sides(_args(skip_hf=True), {"amx_bf16"})
    assert sides == ["ours", "paddle_lamb", "baseline"] and skipped == {"torch": "--skip-hf",
                                                                        "torch_bf16": "--skip-hf"}


def test_quick_runs_two_rounds_and_rounds_must_be_positive(capsys):
    args = _args(quick=True)
    assert (args.layers, args.steps, args.warmup, args.rounds) == (2, 2, 1, 2)
    assert _args().rounds == 3
    with pytest.raises(SystemExit):
        _args(rounds=0)
    assert "--rounds must be >= 1, got 0" in capsys.readouterr().err


def test_a_side_is_summarised_by_its_median_and_its_largest_peak_memory():
    runs = [{"seq_per_s": 1.40, "loss": 11.2, "user_s_per_step": 10.0, "sys_s_per_step": 0.5, "peak_rss_mb": 5000},
            {"seq_per_s": 1.20, "loss": 11.2, "user_s_per_step": 12.0, "sys_s_per_step": 0.9, "peak_rss_mb": 5100},
            {"seq_per_s": 1.46, "loss": 11.2, "user_s_per_step": 11.0, "sys_s_per_step": 0.7, "peak_rss_mb": 4900}]
    row = bench_train.summarise_side(runs)
    assert row["seq_per_s"]["median"] == 1.40
    assert row["seq_per_s"]["spread"] == pytest.approx((1.46 - 1.20) / 1.40)
    assert (row["user_s_per_step"], row["sys_s_per_step"], row["peak_rss_mb"]) == (11.0, 0.7, 5100)
    assert row["runs"] == [1.40, 1.20, 1.46] and row["loss"] == 11.2 and "torch" not in row
    assert bench_train.summarise_side([dict(runs[0], torch="2.13.0+cpu")])["torch"] == "2.13.0+cpu"


def test_measure_training_times_only_the_steps_after_warm_up_and_refuses_a_nan_first_loss():
    losses = iter([11.0, 10.0, 9.0, 8.0, 7.0])
    calls = []

    def step():
        calls.append(1)
        return next(losses)

    result = bench_train.measure_training(step, warmup=2, steps=3)
    assert len(calls) == 5 and result["loss"] == 11.0  # 1 first + 1 more warm-up + 3 timed
    assert result["seq_per_s"] > 0 and result["peak_rss_mb"] > 0
    assert result["user_s_per_step"] >= 0 and result["sys_s_per_step"] >= 0
    with pytest.raises(RuntimeError, match="non-finite first-step loss: nan"):
        bench_train.measure_training(lambda: float("nan"), warmup=1, steps=1)


def test_the_report_gives_every_side_a_row_or_a_line_saying_why_not(capsys):
    cfg = BertConfig.from_json_file(bench_train.BERT_BASE)
    ours = {"seq_per_s": {"median": 1.46, "min": 1.40, "max": 1.50, "spread": 0.1 / 1.46}, "loss": 11.19,
            "peak_rss_mb": 5120.0, "user_s_per_step": 10.5, "sys_s_per_step": 0.4, "runs": [1.46, 1.40, 1.50]}
    torch = dict(ours, seq_per_s={"median": 0.73, "min": 0.7, "max": 0.8, "spread": 0.1 / 0.73},
                 runs=[0.73, 0.7, 0.8], torch="2.13.0+cpu")
    infer = {"fp32": 2.0, "bf16": None, "bf16_reason": "this CPU lacks avx512bw", "max_abs_diff": None,
             "logit_scale": 1.0, "peak_rss_mb": 900.0}
    bench_train.report(_args(), cfg, 100.0, {"ours": ours, "torch": torch},
                       {"torch_bf16": "this CPU has neither avx512_bf16 nor amx_bf16"}, infer)
    lines = capsys.readouterr().out.splitlines()
    ours_line = next(line for line in lines if "ours (as a CPU run builds it)" in line)
    torch_line = next(line for line in lines if "torch 2.13.0+cpu, AdamW, fp32" in line)
    # 1.46 seq/s x 560.2 GFLOP per 8 sequences = 102.2 GFLOP/s, 102 % of a 100 GFLOP/s probe.
    assert "1.46 seq/s (runs 1.46 / 1.40 / 1.50; spread   7%)" in ours_line and "102.2 GFLOP/s" in ours_line
    assert "peak RSS   5120 MB" in ours_line and "user 10.50 sys 0.40" in ours_line
    assert "ours/this  2.00x" in torch_line
    assert any("bf16 autocast" in line and "not measured: this CPU has neither" in line for line in lines)
    assert lines[-1].endswith("bf16 not measured: this CPU lacks avx512bw   peak RSS 900 MB (both programs, one scope)")
