"""GLUE models through inference/: export of a fine-tuned classifier (head detected from the checkpoint,
parity with the training program, the task in settings.json), `ClassifierPredictor` (equal to the executor's
logits, bucketed == unbucketed == one by one, softmax probabilities, STS-B scores), the real server over
HTTP on loopback (`/v1/classify` equal to the predictor, refusals, the wrong route's 404, a pair task
without text_b, concurrent requests), and one-line errors for damaged exports and ambiguous checkpoints.
Request texts are real MRPC dev rows when ../shared has them (the tests using them skip otherwise)."""
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import numpy as np
import paddle
import pytest

from conftest import shared_path
from server_helpers import post_retrying_503

REPO = Path(__file__).resolve().parents[1]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ["the", "cat", "sat", "on", "mat", "a", "dog", "ran", "in", "park", "is", "red", "blue", ".", "tom", "has",
         "car", "owns"]
TINY = {"attention_probs_dropout_prob": 0.0, "hidden_act": "gelu", "hidden_dropout_prob": 0.0, "hidden_size": 16,
        "initializer_range": 0.02, "intermediate_size": 32, "max_position_embeddings": 128, "num_attention_heads": 2,
        "num_hidden_layers": 1, "type_vocab_size": 2}
MAX_SEQ = 96
PAIRS = [("the cat sat on the mat .", "the cat sat on the mat ."), ("a dog ran in the park .", "the mat is red ."),
         ("tom has a red car .", "tom owns a red car ."), ("the dog is blue .", "a cat ran"),
         (" ".join(["the red car"] * 12), "a dog"), ("cat", " ".join(["the blue mat is red ."] * 9))]
MAX_CHARS, MAX_BODY, MAX_QUEUE = 400, 8192, 16
MRPC_ROWS = 24


def mrpc_rows(limit=MRPC_ROWS):
    """(text_a, text_b) of the first real MRPC dev rows, or None when ../shared lacks them."""
    from data.features.glue import read_examples, task_spec

    path = REPO.parent / "shared" / "data" / "glue" / "MRPC" / "dev.tsv"
    if not path.is_file():
        return None
    return [(e.text_a, e.text_b) for e in read_examples(str(path), task_spec("MRPC"), "dev")[:limit]]


@pytest.fixture(autouse=True)
def dynamic_mode_afterwards():
    yield
    paddle.disable_static()


def _save_classifier(directory, cfg, num_labels, seed):
    """A 'fine-tuned' GLUE checkpoint (random weights with a classifier) as run_glue saves one."""
    import program as P
    from utils.weights import save_params

    paddle.enable_static()
    bundle = P.build_glue(cfg, P.TrainConfig(seed=seed), num_labels, is_training=False)
    with paddle.static.scope_guard(paddle.static.Scope()):
        exe = paddle.static.Executor(paddle.CPUPlace())
        exe.run(bundle.startup_program)
        save_params(bundle.main_program, str(directory), "bert_paddle", cfg)
    paddle.disable_static()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """Vocab (the tiny words + those of the MRPC rows), config, an MRPC run directory named as run_glue names
    it, an STS-B checkpoint whose eval_results.json names its task, and one that says nothing."""
    from modeling import BertConfig

    root = tmp_path_factory.mktemp("glue_serving")
    words = set(WORDS)
    for a, b in mrpc_rows() or []:
        words |= set(re.findall(r"\w+|[^\w\s]", (a + " " + b).lower()))
    vocab = SPECIAL + sorted(words)
    (root / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    cfg = BertConfig.from_dict(dict(TINY, vocab_size=len(vocab)))
    (root / "tiny.json").write_text(json.dumps(cfg.to_dict()))
    mrpc = root / "out" / "custom" / "glue" / "MRPC"
    _save_classifier(mrpc, cfg, 2, seed=7)
    _save_classifier(root / "stsb", cfg, 1, seed=8)
    (root / "stsb" / "eval_results.json").write_text(json.dumps({"task": "STS-B", "pearson": 0.1}))
    shutil.copytree(mrpc, root / "anonymous")  # a classifier in a directory that names no task
    return root, cfg


def export_args(root, checkpoint, out, *extra):
    return ["--checkpoint", str(checkpoint), "--output-dir", str(out), "--vocab-file", str(root / "vocab.txt"),
            "--do-lower-case", "--bert-model", "custom", "--max-seq-length", str(MAX_SEQ), *extra]


@pytest.fixture(scope="module")
def mrpc_export(model, tmp_path_factory):
    from inference import export

    root, _ = model
    out = tmp_path_factory.mktemp("exp") / "mrpc"
    manifest = export.main(export_args(root, root / "out" / "custom" / "glue" / "MRPC", out))  # task from the dir
    return out, manifest


@pytest.fixture(scope="module")
def predictor(mrpc_export):
    from inference.predictor import ClassifierPredictor

    return ClassifierPredictor.load(str(mrpc_export[0]), precision="fp32", threads=1, batch_size=4)


def _texts():
    return (mrpc_rows() or []) + PAIRS


def _executor_logits(root, cfg, checkpoint, num_labels, features):
    """The training-side path: run_glue's eval program in the static executor (tasks.glue.predict)."""
    import program as P
    from tasks import glue
    from utils.weights import init_parameters

    paddle.enable_static()
    bundle = P.build_glue(cfg, P.TrainConfig(), num_labels, is_training=False)
    with paddle.static.scope_guard(paddle.static.Scope()):
        exe = paddle.static.Executor(paddle.CPUPlace())
        exe.run(bundle.startup_program)
        init_parameters(exe, bundle.main_program, str(checkpoint), require_head=True, vocab_size=cfg.vocab_size,
                        task="GLUE")
        outputs, _ = glue.predict(exe, bundle.eval_program, bundle.eval_fetches["logits"], features, 3)
    paddle.disable_static()
    return outputs


# ---------------------------------------------------------------------------------------------- export
def test_export_detects_the_task_records_it_and_verifies_parity(mrpc_export, model):
    from inference import model_dir as layout

    out, manifest = mrpc_export
    assert sorted(p.name for p in out.iterdir()) == sorted(layout.REQUIRED_FILES + (layout.MANIFEST_FILE,))
    assert manifest["task"] == "MRPC" and 0 <= manifest["verified_max_abs_logit_diff"] < 1e-4
    settings = json.loads((out / "settings.json").read_text())
    assert {k: settings[k] for k in ("task", "labels", "regression", "max_seq_length", "do_lower_case",
                                     "fetch_names")} == {"task": "MRPC", "labels": ["0", "1"], "regression": False,
                                                         "max_seq_length": MAX_SEQ, "do_lower_case": True,
                                                         "fetch_names": ["logits"]}
    assert settings["doc_stride"] is None and settings["max_query_length"] is None
    assert layout.read_settings(str(out)).route == "/v1/classify"
    from utils.runtime import cpu_bf16_support  # bf16's label agreement is recorded where it runs
    check = manifest["precisions"].get("bf16", {}).get("verification")
    assert (check["windows"] == 16 and 0 <= check["agree"] <= 16) if cpu_bf16_support().usable else check is None


def test_a_failed_parity_check_of_a_glue_export_writes_nothing(model, tmp_path, monkeypatch):
    from inference import export, verified_export

    root, _ = model
    monkeypatch.setattr(verified_export, "max_logit_difference", lambda *a, **k: 0.25)
    with pytest.raises(ValueError, match="differ from the training program's by 0.25"):
        export.main(export_args(root, root / "out" / "custom" / "glue" / "MRPC", tmp_path / "bad"))
    assert not list(tmp_path.iterdir())


def test_stsb_task_read_from_eval_results_and_its_scores_are_the_clipped_executor_outputs(model, tmp_path):
    from data.features.glue import task_spec
    from inference import export
    from inference.predictor import load_predictor

    root, cfg = model
    manifest = export.main(export_args(root, root / "stsb", tmp_path / "stsb"))
    assert manifest["task"] == "STS-B"
    stsb = load_predictor(str(tmp_path / "stsb"), precision="fp32", threads=1)  # executor parity
    assert stsb.info["regression"] and stsb.info["labels"] == [] and stsb.info["pair"]
    features = stsb.featurize(PAIRS)
    want = _executor_logits(root, cfg, root / "stsb", 1, features)[:, 0]
    got = stsb.classify(PAIRS)
    np.testing.assert_allclose([c.score for c in got], np.clip(want, 0.0, 5.0), atol=1e-5)
    assert all(c.label is None and set(c.to_dict()) == {"score"} for c in got)
    assert task_spec("sts-b").is_regression


@pytest.mark.parametrize("checkpoint, extra, message", [
    ("anonymous", (), "has a classification head (2 outputs) but no eval_results.json or glue/<Task> directory "
                      "says which GLUE task it is; give --task-name"),
    ("anonymous", ("--task-name", "MNLI"), "has a classifier with 2 outputs, but MNLI has 3; check --task-name"),
    ("anonymous", ("--task-name", "GLUX"), "--task-name 'GLUX' is not a GLUE task"),
    ("out/custom/glue/MRPC", ("--doc-stride", "16"), "--doc-stride applies to SQuAD exports"),
    ("out/custom/glue/MRPC", ("--max-seq-length", "4"), "--max-seq-length must be >= 5 for MRPC, got 4"),
])
def test_an_ambiguous_or_mismatched_checkpoint_is_refused_and_nothing_written(model, tmp_path, checkpoint, extra,
                                                                              message):
    from inference import export

    root, _ = model
    with pytest.raises(ValueError) as err:
        export.main(export_args(root, root / checkpoint, tmp_path / "x") + list(extra))
    assert message in str(err.value)
    assert not (tmp_path / "x").exists()


def test_a_named_task_overrides_detection(model, tmp_path):
    from inference import export

    root, _ = model
    manifest = export.main(export_args(root, root / "anonymous", tmp_path / "sst2", "--task-name", "sst-2"))
    settings = json.loads((tmp_path / "sst2" / "settings.json").read_text())
    assert manifest["task"] == settings["task"] == "SST-2" and settings["labels"] == ["0", "1"]
    from inference.predictor import load_predictor

    sst2 = load_predictor(str(tmp_path / "sst2"), threads=1)
    assert not sst2.is_pair
    (result,) = sst2.classify(["the cat sat on the mat ."])
    assert result.label in ("0", "1") and sum(result.probabilities.values()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="item 0: SST-2 classifies single sentences"):
        sst2.classify([("a", "b")])


# ---------------------------------------------------------------------------------------------- predictor
def test_predictor_equals_the_executor_and_batching_changes_nothing(predictor, model):
    from inference.predictor import softmax

    root, cfg = model
    texts = _texts()
    features = predictor.featurize(texts)
    assert len(set((features.seq_lengths // 16).tolist())) > 2  # several buckets
    want = _executor_logits(root, cfg, root / "out" / "custom" / "glue" / "MRPC", 2, features)
    bucketed, stats = predictor.predict_logits(features, bucket=True)
    plain, plain_stats = predictor.predict_logits(features, bucket=False)
    one_by_one, _ = predictor.predict_logits(features, batch_size=1)
    for got in (bucketed, plain, one_by_one):
        np.testing.assert_allclose(got, want, atol=1e-5)
    assert stats["padded_tokens"] < plain_stats["padded_tokens"] == len(features) * MAX_SEQ
    results = predictor.classify(texts)
    assert [r.label for r in results] == [str(i) for i in np.argmax(want, axis=1)]
    probabilities = np.array([[r.probabilities["0"], r.probabilities["1"]] for r in results])
    np.testing.assert_allclose(probabilities, softmax(want), atol=1e-5)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-12)
    assert [r.to_dict() for r in predictor.classify(texts[:1])] == [results[0].to_dict()]  # alone == batched


def test_real_mrpc_rows_are_truncated_longer_side_first_as_run_glue_does(predictor, model):
    from data.features.glue import examples_to_features, read_examples, task_spec

    path = shared_path("data", "glue", "MRPC", "dev.tsv")
    examples = read_examples(str(path), task_spec("MRPC"), "dev")[:MRPC_ROWS]
    features = examples_to_features(examples, predictor.tokenizer, task_spec("MRPC"), MAX_SEQ)
    mine = predictor.featurize([(e.text_a, e.text_b) for e in examples])
    np.testing.assert_array_equal(mine.input_ids, features.input_ids)  # run_glue's features exactly
    np.testing.assert_array_equal(mine.token_type_ids, features.token_type_ids)
    assert examples[0].text_b.startswith('"')  # dev row 1's unbalanced quote survives


def test_softmax_is_stable_and_correct():
    from inference.predictor import softmax

    np.testing.assert_allclose(softmax(np.array([[0.0, np.log(3.0)], [1000.0, 1000.0]])), [[0.25, 0.75], [0.5, 0.5]])


def test_changed_exports_and_wrong_classes_fail_in_one_sentence(mrpc_export, tmp_path):
    from inference.predictor import ClassifierPredictor, QAPredictor

    damaged = tmp_path / "damaged"
    shutil.copytree(mrpc_export[0], damaged)
    settings = json.loads((damaged / "settings.json").read_text())
    (damaged / "settings.json").write_text(json.dumps(dict(settings, labels=["1", "0"])))
    with pytest.raises(ValueError, match="settings.json' does not match manifest.json"):
        ClassifierPredictor.load(str(damaged))
    with pytest.raises(ValueError, match="is a GLUE MRPC classifier, not a SQuAD model"):
        QAPredictor.load(str(mrpc_export[0]))
    proc = subprocess.run([sys.executable, "-m", "inference.server", "--model-dir", str(damaged), "--port", "0"],
                          cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-2000:]
    assert "settings.json" in errors[0] and "manifest.json" in errors[0]


def test_export_cli_refuses_an_ambiguous_checkpoint_in_one_line(model, tmp_path):
    root, _ = model
    proc = subprocess.run([sys.executable, "-m", "inference.export",
                           *export_args(root, root / "anonymous", tmp_path / "x")], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1"))
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "give --task-name" in errors[0], proc.stderr[-2000:]
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------------------------------------- requests
def test_text_request_shapes_for_pair_and_single_sentence_tasks():
    from inference.answer_request import Limits, RequestError, parse_texts

    limits = Limits(max_body_bytes=1000, max_questions=3, max_context_chars=10)

    def refused(value, pair):
        with pytest.raises(RequestError) as err:
            parse_texts(value, limits, pair=pair, task="MRPC" if pair else "SST-2")
        return err.value.status, err.value.body

    texts, is_batch = parse_texts({"text": "a b"}, limits, pair=False, task="SST-2")
    assert [t.payload for t in texts] == ["a b"] and not is_batch
    texts, is_batch = parse_texts([{"text_a": "a", "text_b": "b"}, {"text": "c", "text_b": "d"}], limits, pair=True,
                                  task="MRPC")
    assert [t.payload for t in texts] == [("a", "b"), ("c", "d")] and is_batch
    status, body = refused({"text": "a"}, pair=True)
    assert status == 422 and body["detail"] == [
        {"field": "text_b", "message": "Field required: MRPC classifies sentence pairs; send text_a and text_b"}]
    status, body = refused({"text": "a", "text_b": "b"}, pair=False)
    assert status == 422 and body["detail"][0]["field"] == "text_b" and "single sentences" in body["error"]
    assert refused({"text": "a", "text_a": "b", "text_b": "c"}, pair=True)[1]["detail"][0]["field"] == "text_a"
    assert refused({"text_b": "b"}, pair=True)[1]["detail"][0] == {"field": "text_a", "message": "Field required"}
    assert refused({"text": "x" * 11}, pair=False)[1]["detail"][0]["limit"] == 10
    assert refused([{"text": "a"}] * 4, pair=False) == (413, {"error": "the request has 4 texts, more than the limit "
                                                                       "of 3; split it", "limit": 3})


# ---------------------------------------------------------------------------------------------- server
@pytest.fixture(scope="module")
def server(mrpc_export, tmp_path_factory):
    from benchmarks.bench_server import ServerProcess

    proc = ServerProcess(mrpc_export[0], tmp_path_factory.mktemp("log") / "server.log", "--threads", "1",
                         "--max-context-chars", str(MAX_CHARS), "--max-body-bytes", str(MAX_BODY),
                         "--max-queue", str(MAX_QUEUE), "--max-batch-size", "4", "--max-wait-ms", "20")
    yield proc
    assert proc.stop() == 0, proc.log()  # SIGTERM drains, then exit 0
    assert "stopped on SIGTERM after answering the requests in flight" in proc.log()


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def _pair_json(a, b):
    return {"text_a": a, "text_b": b}


@pytest.fixture(scope="module")
def served(mrpc_export):
    """The model as the server loads it: the default precision ("auto"), one thread, batches of 4."""
    from inference.predictor import ClassifierPredictor

    return ClassifierPredictor.load(str(mrpc_export[0]), threads=1, batch_size=4)


def _same(reply, want):
    assert reply["label"] == want.label and set(reply) == {"label", "probabilities"}
    assert reply["probabilities"] == pytest.approx(want.probabilities, abs=1e-5)


def test_health_model_info_and_the_announced_route(client, server, mrpc_export):
    assert client.get("/health").json() == {"status": "ready"}
    info = client.get("/v1/model").json()["model"]
    assert (info["task"], info["labels"], info["pair"], info["regression"]) == ("MRPC", ["0", "1"], True, False)
    # the server's default precision is auto, and its info says what auto chose and why
    assert info["precision_choice"].startswith(f"precision auto -> {info['precision']}: ")
    assert f"{info['precision']}, cpu, 1 threads" in server.log()
    assert info["max_seq_length"] == MAX_SEQ and info["model_dir"] == str(mrpc_export[0].resolve())
    assert re.search(r"serving custom MRPC .* at http://127\.0\.0\.1:\d+/v1/classify", server.log())


def test_classify_equals_the_offline_predictor_single_and_batch(client, served):
    predictor = served
    texts = _texts()
    for a, b in texts[:6]:  # one at a time: a batch of one, as offline
        _same(client.post("/v1/classify", json=_pair_json(a, b)).json(), predictor.classify([(a, b)])[0])
    a, b = texts[0]
    _same(client.post("/v1/classify", json={"text": a, "text_b": b}).json(), predictor.classify([(a, b)])[0])
    reply = client.post("/v1/classify", json=[_pair_json(a, b) for a, b in texts[:MAX_QUEUE]])
    assert reply.status_code == 200
    for got, want in zip(reply.json(), predictor.classify(texts[:MAX_QUEUE]), strict=True):
        _same(got, want)


def test_real_mrpc_rows_are_classified_over_http_as_offline(client, served):
    predictor = served
    shared_path("data", "glue", "MRPC", "dev.tsv")
    rows = mrpc_rows(8)
    reply = client.post("/v1/classify", json=[_pair_json(a, b) for a, b in rows])
    for got, want in zip(reply.json(), predictor.classify(rows), strict=True):
        _same(got, want)


BAD = [
    (b'{"text_a": "x', 400, "not valid JSON"),
    (b"", 400, 'body is empty; send JSON like {"text_a": "...", "text_b": "..."}'),
    ({"text": "tom has a car ."}, 422, "text_b: Field required: MRPC classifies sentence pairs"),
    ({"text_a": "a", "text_b": "b", "label": "1"}, 422, "label: Extra inputs are not permitted"),
    ({"text_a": 3, "text_b": "b"}, 422, "text_a: Input should be a valid string"),
    ({"text_a": " ", "text_b": "b"}, 422, "text_a: must not be empty"),
    ({"text_a": "a", "text_b": "x" * (MAX_CHARS + 1)}, 422, f"text_b: has {MAX_CHARS + 1} characters, more than"),
    ([], 422, "the array of texts is empty"),
    ([{"text_a": "a", "text_b": "b"}] * (MAX_QUEUE + 1), 413, f"{MAX_QUEUE + 1} texts, more than the limit"),
    ({"text_a": "a " * 5000, "text_b": "b"}, 413, f"more than the limit of {MAX_BODY}"),
]


@pytest.mark.parametrize("body, status, words", BAD, ids=[w for _, _, w in BAD])
def test_each_bad_request_gets_its_status_naming_the_field(client, body, status, words):
    reply = (client.post("/v1/classify", content=body) if isinstance(body, bytes)
             else client.post("/v1/classify", json=body))
    assert reply.status_code == status, reply.text
    assert words in reply.json()["error"]


def test_the_squad_route_answers_404_naming_the_route_this_model_serves(client):
    reply = client.post("/v1/answer", json={"question": "who ?", "context": "tom has a car ."})
    assert reply.status_code == 404
    assert reply.json() == {"error": "this server's model is a GLUE MRPC classifier: it serves POST /v1/classify, "
                                     "not /v1/answer", "route": "/v1/classify"}


def test_concurrent_requests_are_all_answered_and_none_mixed_up(client, predictor):
    texts = _texts()[:12] * 2
    want = predictor.classify(texts)
    results = [None] * len(texts)

    def ask(i):  # a 503 (the small test queue full) is retried, as a client should
        with httpx.Client(base_url=client.base_url, timeout=60) as own:
            results[i] = post_retrying_503(own, "/v1/classify", _pair_json(*texts[i]))

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(texts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [r.status_code for r in results] == [200] * len(texts)
    for reply, expected in zip(results, want):
        _same(reply.json(), expected)
    stats = client.get("/v1/metrics").json()["batching"]
    assert stats["answered"] >= len(texts) and stats["failed"] == 0 and stats["largest_batch"] > 1


def test_the_load_test_drives_classify(server, predictor):
    from benchmarks.bench_server import CLASSIFY, drive, reference_answers

    texts = _texts()[:6]
    expected = reference_answers(server.url, texts, CLASSIFY)
    assert expected == [r.label for r in predictor.classify(texts)]
    result = drive(server.url, texts, expected, clients=3, seconds=60, max_requests=18, route=CLASSIFY)
    assert (result["sent"], result["answered"], result["wrong"], result["transport"]) == (18, 18, 0, 0)


def test_serve_script_leaves_the_classify_example_to_the_server(mrpc_export, tmp_path):
    """Issue 24 item 9: the script printed its curl hint before the server could fail (a busy port); the
    server now logs it once it listens, for the route and port it really serves."""
    from inference import model_dir as layout
    from inference.server import curl_example

    fake = tmp_path / "fake_python"
    fake.write_text('#!/bin/bash\necho "server started with: $*"\n')
    fake.chmod(0o755)
    for script in ("serve.sh", "serve_squad.sh"):
        result = subprocess.run(["bash", str(REPO / "scripts" / script), str(mrpc_export[0]), "8124"],
                                capture_output=True, text=True, timeout=60, env=dict(os.environ, PYTHON=str(fake)))
        assert result.returncode == 0 and result.stdout == (
            f"server started with: -m inference.server --model-dir={mrpc_export[0]} --host=127.0.0.1 --port=8124\n")
        assert "curl" not in result.stderr
    example = curl_example(layout.read_settings(str(mrpc_export[0])), "0.0.0.0", 8124)
    assert "curl -s http://127.0.0.1:8124/v1/classify" in example
    assert '"text_a": "Tom has a red car.", "text_b": "Tom owns a red car."' in example


# ---------------------------------------------------------------------------------------------- run_glue
def test_run_glue_eval_and_prediction_through_the_predictor_equal_the_executor_path(model, tmp_path):
    import run_glue
    from data.features.glue import examples_to_features, read_examples, task_spec
    from tasks import glue
    from tokenizer import BertTokenizer
    from tasks import glue_metrics

    root, cfg = model
    spec, data_dir = task_spec("MRPC"), tmp_path / "MRPC"
    data_dir.mkdir()
    texts = _texts()
    header = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
    (data_dir / "dev.tsv").write_text(header + "".join(f"{i % 2}\t{i}\t{i}\t{a}\t{b}\n" for i, (a, b) in
                                                       enumerate(texts)), encoding="utf-8")
    (data_dir / "test.tsv").write_text("index" + header[len("Quality"):] + "".join(
        f"{i}\t{i}\t{i}\t{a}\t{b}\n" for i, (a, b) in enumerate(texts)), encoding="utf-8")
    checkpoint = root / "out" / "custom" / "glue" / "MRPC"

    def executor_used(*_args, **_kwargs):
        raise AssertionError("run_glue evaluated through the executor, not the predictor")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(glue, "predict", executor_used)
        results = run_glue.main(["--task-name", "MRPC", "--data-dir", str(data_dir), "--vocab-file",
                                 str(root / "vocab.txt"), "--do-lower-case", "--bert-model", "custom",
                                 "--output-dir", str(tmp_path / "out"),
                                 "--device", "cpu", "--max-seq-length", str(MAX_SEQ), "--show-config", "false",
                                 "--mode", "eval_prediction", "--from-checkpoint", str(checkpoint),
                                 "--eval-batch-size", "5"])
    # The executor path, computed here independently: run_glue's program and features, tasks.glue.predict.
    tokenizer = BertTokenizer(str(root / "vocab.txt"), do_lower_case=True)
    dev = examples_to_features(read_examples(str(data_dir / "dev.tsv"), spec, "dev"), tokenizer, spec, MAX_SEQ)
    test_examples = read_examples(str(data_dir / "test.tsv"), spec, "test")
    test = examples_to_features(test_examples, tokenizer, spec, MAX_SEQ)
    want = glue.evaluate(spec, _executor_logits(root, cfg, checkpoint, 2, dev), dev)
    assert results["acc"] == want["acc"] and results["f1"] == want["f1"] and 0 < want["acc"] < 1
    assert results["eval_loss"] == pytest.approx(want["eval_loss"], rel=1e-5)
    assert want["acc"] == glue_metrics.task_metrics("MRPC", glue.decide(spec, _executor_logits(
        root, cfg, checkpoint, 2, dev)), dev.labels)["acc"]
    expected_tsv = tmp_path / "expected.tsv"
    glue.write_submission(str(expected_tsv), test_examples, spec,
                          glue.decide(spec, _executor_logits(root, cfg, checkpoint, 2, test)))
    assert (tmp_path / "out" / "custom" / "glue" / "MRPC" / "MRPC.tsv").read_text() == expected_tsv.read_text()


def test_run_glue_evaluates_an_export_directory_as_its_checkpoint(model, mrpc_export, tmp_path):
    import run_glue

    root, _ = model
    data_dir = tmp_path / "MRPC"
    data_dir.mkdir()
    header = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
    rows = header + "".join(f"{i % 2}\t{i}\t{i}\t{a}\t{b}\n" for i, (a, b) in enumerate(_texts()))
    for split in ("train", "dev"):
        (data_dir / f"{split}.tsv").write_text(rows, encoding="utf-8")

    def argv(checkpoint, out, *extra):
        return ["--task-name", "MRPC", "--data-dir", str(data_dir), "--vocab-file", str(root / "vocab.txt"),
                "--do-lower-case", "--bert-model", "custom", "--output-dir", str(tmp_path / out), "--device", "cpu",
                "--max-seq-length", str(MAX_SEQ), "--show-config", "false", "--mode", "eval",
                "--from-checkpoint", str(checkpoint), *extra]

    from_checkpoint = run_glue.main(argv(root / "out" / "custom" / "glue" / "MRPC", "a"))
    from_export = run_glue.main(argv(mrpc_export[0], "b"))
    for key in ("acc", "f1", "eval_loss"):
        assert from_export[key] == pytest.approx(from_checkpoint[key], abs=1e-9), key
    with pytest.raises(ValueError, match="is an export of a GLUE MRPC classifier, not of SST-2"):
        run_glue.main(argv(mrpc_export[0], "c") + ["--task-name", "SST-2"])
    with pytest.raises(ValueError, match="was exported with --max-seq-length 96 --do-lower-case: give the same"):
        run_glue.main(argv(mrpc_export[0], "d") + ["--max-seq-length", "64"])
    with pytest.raises(ValueError, match="is an exported inference model, which cannot be trained further"):
        run_glue.main(argv(mrpc_export[0], "e") + ["--mode", "train_eval"])
    assert not any((tmp_path / d).exists() for d in "cde")


def test_run_squad_refuses_a_glue_export_in_one_sentence(model, mrpc_export, tmp_path):
    import run_squad

    root, _ = model
    with pytest.raises(ValueError, match="is an export of a GLUE MRPC classifier, not a SQuAD model"):
        run_squad.main(["--vocab-file", str(root / "vocab.txt"), "--do-lower-case", "--bert-model", "custom",
                        "--device", "cpu", "--output-dir", str(tmp_path / "o"), "--from-checkpoint",
                        str(mrpc_export[0]), "--question", "who ?", "--context", "tom has a car ."])
    assert not (tmp_path / "o").exists()
