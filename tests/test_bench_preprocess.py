"""benchmarks/bench_preprocess.py: the comparison runs end to end and its figures add up."""
import pytest

from benchmarks import bench_preprocess as bench
from conftest import shared_path


@pytest.fixture(scope="module")
def small_source(tmp_path_factory):
    from data.prep.sample_corpus import build_sample_corpus

    directory = tmp_path_factory.mktemp("bench") / "source"
    build_sample_corpus(str(directory), num_files=1, max_documents=12)
    return str(directory)


def test_comparison_on_a_small_corpus(small_source):
    vocab = str(shared_path("vocab", "bert-base-uncased-vocab.txt"))
    results = bench.main(["--vocab-file", vocab, "--corpus", small_source, "--repeat", "2", "--duplicate-factor", "1",
                          "--executors", "pool,inline", "--num-workers", "2"])
    base = results["baseline"]
    ours = [v for k, v in results.items() if k.startswith("ours (")]
    assert len(ours) == 2 and base["instances"] > 50
    for figures in ours:
        # Same algorithm, different random streams (and ours draws random B's within a block): on ~100 KB of
        # short docstrings the counts differ by up to ~25 %; on Wikipedia x4 by 2 %.
        assert 0.6 * base["instances"] <= figures["instances"] <= 1.4 * base["instances"]
        assert figures["speedup"] == pytest.approx(figures["instances_per_s"] / base["instances_per_s"])
        assert figures["cpu_seconds"] > 0 and figures["mb_per_s"] > 0
    assert ours[0]["instances"] == ours[1]["instances"]  # pool and inline write the same rows
    assert set(results["stages"]) == {"start-up", "read+sentences", "tokenize", "pairs", "masking+rows", "write"}


def test_bad_executor_is_an_error():
    with pytest.raises(ValueError, match="--executors 'threads'"):
        bench.main(["--vocab-file", "v.txt", "--executors", "threads"])
