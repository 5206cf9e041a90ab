"""Test helpers of the answer-service tests: a tiny fine-tuned SQuAD model, trained with run_squad.py's
`main` and exported with `inference.export`'s `main` (in-process: two fresh interpreters importing paddle
would cost more than the training itself); a client that retries a 503 as a well-behaved client does."""
import json
import time
from pathlib import Path

import paddle

REPO = Path(__file__).resolve().parents[1]


def export_tiny_model(root):
    """Fine-tune the tiny BERT of tests/test_run_squad.py on its six questions and export it.

    Returns:
      (export directory Path, the six (question, context, answer) triples it was trained on).
    """
    import run_squad
    import test_run_squad as T
    from inference import export

    root = Path(root)
    words = sorted({w for context, qas in T.PARAGRAPHS for text in [context] + [q for _, q, _ in qas]
                    for w in text.split()} | {"what", "who"})
    (root / "vocab.txt").write_text("\n".join(T.SPECIAL + words) + "\n")
    (root / "tiny.json").write_text(json.dumps(dict(T.TINY, vocab_size=len(T.SPECIAL) + len(words))))
    (root / "train.json").write_text(json.dumps(T.squad_json(T.PARAGRAPHS)))
    (root / "pretrained").mkdir()
    try:
        T._write_encoder_params(root / "tiny.json", root / "pretrained" / "bert_paddle.pdparams")
        run_squad.main(T.train_args(root, root / "run", "--mode", "train", "--epochs", "30"))
        out = root / "export"
        export.main(["--checkpoint", str(root / "run" / "custom" / "squad"), "--output-dir", str(out),
                     "--vocab-file", str(root / "vocab.txt"), "--do-lower-case", "--bert-model", "custom",
                     "--config-file", str(root / "tiny.json"), "--max-seq-length", "32", "--doc-stride", "16",
                     "--max-query-length", "12"])
    finally:
        paddle.disable_static()  # both mains switch to static mode; later test files expect dygraph
    triples = [(q, context, answer) for context, qas in T.PARAGRAPHS for _, q, answer in qas]
    return out, triples


def post_retrying_503(client, path, body, attempts=30):
    """POST `body`, retrying while the server answers 503 (its queue full: a small test queue fills when
    many clients start at once on a loaded machine), after a tenth of its Retry-After. Returns the last
    response: what "none lost" means for a client that honours 503s."""
    for _ in range(attempts):
        reply = client.post(path, json=body)
        if reply.status_code != 503:
            return reply
        time.sleep(float(reply.headers["Retry-After"]) / 10)
    return reply
