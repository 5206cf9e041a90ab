"""Default inputs of the benchmarks, so that `python -m benchmarks.bench_loader` (and bench_preprocess,
bench_squad) run as the README writes them on a fresh clone, offline.

A fresh clone has no BERT vocab (vocab/ holds only its README until `python -m data.prep.download vocab`
runs) and no downloaded SQuAD. The benchmarks then use what the repository can make by itself: a WordPiece
vocab trained once on the embedded stdlib-docstring corpus (the recipe scripts/demo.sh and the pretraining
`sample:` source use: 4 files, 3 MB, 8192 tokens, lower case) and the embedded SQuAD sample. A downloaded
vocab or SQuAD is preferred when present, since the figures the README quotes were measured on them.
"""
import logging
import os
import tempfile

logger = logging.getLogger(__name__)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOWNLOADED_VOCABS = ("vocab/bert-base-uncased-vocab.txt", "vocab/bert-large-uncased-vocab.txt")
SAMPLE_VOCAB = "results/benchmarks/sample-vocab.txt"  # built once, reused by every later run
DOWNLOADED_SQUAD_DEV = "data/download/squad/v1.1/dev-v1.1.json"
SAMPLE_SQUAD_DEV = "data/samples/squad/dev-v1.1.json"


def _in_repo(path):
    return os.path.join(REPO, path)


def default_vocab():
    """The vocab a benchmark uses without --vocab-file: a downloaded uncased BERT vocab, else the sample vocab
    (built now if missing). Logs which one, and how to get the real one."""
    for path in DOWNLOADED_VOCABS:
        if os.path.isfile(_in_repo(path)):
            logger.info("--vocab-file not given: using %s", path)
            return _in_repo(path)
    path = _in_repo(SAMPLE_VOCAB)
    logger.info("--vocab-file not given and no BERT vocab in vocab/: using %s, an 8192-token vocab of the embedded "
                "sample corpus (for the README's figures: python -m data.prep.download vocab --vocab-dir vocab)",
                SAMPLE_VOCAB)
    if not os.path.isfile(path):
        build_sample_vocab(path)
    return path


def build_sample_vocab(path):
    """Train the sample vocab into `path` from a temporary copy of the embedded corpus."""
    from data.prep.build_vocab import train_wordpiece_vocab
    from data.prep.sample_corpus import build_sample_corpus

    with tempfile.TemporaryDirectory(prefix="sample-vocab-") as tmp:
        corpus = os.path.join(tmp, "corpus")
        build_sample_corpus(corpus, num_files=4, max_bytes=3_000_000)
        train_wordpiece_vocab([corpus], 8192, do_lower_case=True, output_path=path)


def default_squad_dev():
    """The SQuAD dev file a benchmark uses without --dev-file: the downloaded v1.1 dev set, else the embedded
    13-question sample (enough to run every path; too small for the README's timings)."""
    if os.path.isfile(_in_repo(DOWNLOADED_SQUAD_DEV)):
        logger.info("--dev-file not given: using %s", DOWNLOADED_SQUAD_DEV)
        return _in_repo(DOWNLOADED_SQUAD_DEV)
    logger.info("--dev-file not given and no downloaded SQuAD: using the embedded sample %s (for the README's "
                "figures: python -m data.prep.download squad)", SAMPLE_SQUAD_DEV)
    return _in_repo(SAMPLE_SQUAD_DEV)
