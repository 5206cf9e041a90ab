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
