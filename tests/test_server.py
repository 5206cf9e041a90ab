"""The answer service end to end: a tiny fine-tuned model exported with python -m inference.export, the real
server (python -m inference.server) started as a subprocess on a free loopback port, and HTTP to it.

Covers: answers equal to QAPredictor.answer on the same inputs (single, batch form, n-best, multi-window and
non-ASCII contexts) and to the known answers the model memorised; every malformed request's 4xx and what it
says; concurrent requests batched (seen in /v1/metrics) and none lost or mixed up; queue full -> 503; SIGTERM
answers what is in flight and exits 0; start-up errors as one line and exit 2.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from benchmarks.bench_server import ServerProcess
from server_helpers import REPO, export_tiny_model, post_retrying_503

MAX_CONTEXT, MAX_BODY, MAX_QUEUE = 300, 4096, 16


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """(export dir, [(question, context, known answer)]) of the tiny model trained on six questions."""
    return export_tiny_model(tmp_path_factory.mktemp("served"))


@pytest.fixture(scope="module")
def server(model, tmp_path_factory):
    """A server with small limits (so each is easy to pass) and a short batching wait."""
    proc = ServerProcess(model[0], tmp_path_factory.mktemp("log") / "server.log", "--threads", "1",
                         "--max-context-chars", str(MAX_CONTEXT), "--max-body-bytes", str(MAX_BODY),
                         "--max-queue", str(MAX_QUEUE), "--max-batch-size", "4", "--max-wait-ms", "20")
    yield proc
    assert proc.stop(sig=signal.SIGINT) == 0, proc.log()  # Ctrl-C is a graceful stop too
    assert "stopped on SIGINT after answering the requests in flight" in proc.log()


@pytest.fixture(scope="module")
def predictor(model):
    from inference.predictor import QAPredictor

    return QAPredictor.load(str(model[0]), threads=1)


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def _post(client, body):
    return client.post("/v1/answer", json=body)


def test_health_and_model_info_describe_the_loaded_model(client, model):
    assert client.get("/health").json() == {"status": "ready"}
    info = client.get("/v1/model").json()
    manifest = json.loads((model[0] / "manifest.json").read_text())
    assert info["model"]["max_seq_length"] == 32 and info["model"]["threads"] == 1
    assert info["model"]["model_dir"] == str(model[0].resolve()) and len(info["model"]["manifest_sha256"]) == 64
    assert manifest["files"]  # the model the server reports is the export the test wrote
    assert info["server"]["max_context_chars"] == MAX_CONTEXT and info["server"]["max_queue"] == MAX_QUEUE


def test_answers_are_the_memorised_ones_and_equal_the_offline_predictor(client, model, predictor):
    for question, context, known in model[1]:  # one at a time: each request is a batch of one, as offline
        want = predictor.answer([(question, context)])[0]
        got = _post(client, {"question": question, "context": context}).json()
        assert got["answer"] == known == context[got["start"]:got["end"]]
        assert (got["answer"], got["start"], got["end"]) == (want.text, want.start, want.end)
        assert got["score"] == pytest.approx(want.score, rel=1e-6)
        assert set(got) == {"answer", "score", "start", "end"}


def test_batch_form_nbest_long_and_non_ascii_contexts_equal_the_offline_predictor(client, predictor):
    long_context = " ".join(["the grass in the garden is green ."] * 6 + ["tom has a red car ."])  # > 1 window
    items = [("who has a red car ?", long_context), ("what color is the sky ?", "the sky is blue today ."),
             ("who has a red car ?", "tóm has a red car . ✓ café"), ("what is the capital of france ?",
                                                                       "paris\tis the capital\nof france .")]
    # The four share one model run (--max-batch-size 4), as they do offline.
    offline = predictor.answer(items, n_best=3, max_answer_length=5)
    got = _post(client, [{"question": q, "context": c, "n_best": 3, "max_answer_length": 5} for q, c in items])
    assert got.status_code == 200
    for (question, context), answer, want in zip(items, got.json(), offline):
        assert (answer["answer"], answer["start"], answer["end"]) == (want.text, want.start, want.end)
        assert answer["score"] == pytest.approx(want.score, rel=1e-6)
        assert answer["answer"] == context[answer["start"]:answer["end"]]
        assert [(e["text"], e["start"], e["end"]) for e in answer["nbest"]] == \
            [(e["text"], e["start"], e["end"]) for e in want.nbest]
        assert len(answer["nbest"]) == 3 and answer["nbest"][0]["text"] == answer["answer"]


BAD_REQUESTS = [
    # (raw body or JSON value, status, words the error must contain)
    (b'{"question": "why', 400, "not valid JSON: Unterminated string"),
    (b'\xff\xfe{"question"', 400, "not UTF-8: byte 0"),
    (b"", 400, "body is empty"),
    (b"[" * 2000 + b"]" * 2000, 400, "nested too deeply"),
    ("just text", 422, "a JSON object or an array of objects, got a string"),
    ([], 422, "array of questions is empty"),
    ([1], 422, "[0]: each question must be a JSON object, got a number"),
    ({"question": "who ?"}, 422, "context: Field required"),
    ({"question": 7, "context": "x"}, 422, "question: Input should be a valid string"),
    ({"question": "q", "context": "c", "n_best": "3"}, 422, "n_best: Input should be a valid integer"),
    ({"question": "q", "context": "c", "n_best": True}, 422, "n_best: Input should be a valid integer"),
    ({"question": "q", "context": "c", "n_best": 21}, 422, "n_best: Input should be less than or equal to 20"),
    ({"question": "q", "context": "c", "max_answer_length": 0}, 422, "greater than or equal to 1"),
    ({"question": "q", "context": "c", "contxt": "typo"}, 422, "contxt: Extra inputs are not permitted"),
    ({"question": "", "context": "c"}, 422, "question: must not be empty"),
    ({"question": "q", "context": " \n\t "}, 422, "context: must not be empty"),
    (b'{"question": "q", "context": "tom \\ud800 has"}', 422, "context: has an unpaired surrogate (U+D800) at "
                                                            "character 4"),
    ([{"question": "q", "context": "c"}, {"question": "q", "context": ""}], 422, "[1].context: must not be empty"),
    ({"question": "q", "context": "x" * (MAX_CONTEXT + 1)}, 422, f"more than the limit of {MAX_CONTEXT}"),
    ({"question": "q", "context": "x " * 2100}, 413, f"more than the limit of {MAX_BODY}"),
    ([{"question": "q", "context": "c"}] * (MAX_QUEUE + 1), 413, f"{MAX_QUEUE + 1} questions, more than the limit"),
]


@pytest.mark.parametrize("body, status, words", BAD_REQUESTS, ids=[w for _, _, w in BAD_REQUESTS])
def test_each_malformed_request_gets_its_4xx_saying_what_is_wrong(client, body, status, words):
    reply = (client.post("/v1/answer", content=body) if isinstance(body, bytes)
             else client.post("/v1/answer", json=body))
    assert reply.status_code == status, reply.text
    assert words in reply.json()["error"]
    if status == 413:
        assert reply.json()["limit"] in (MAX_BODY, MAX_QUEUE)


def test_limits_are_reported_in_the_detail_and_a_chunked_body_is_bounded_too(client):
    reply = _post(client, {"question": "q", "context": "x" * (MAX_CONTEXT + 5)})
    assert reply.json()["detail"] == [{"field": "context", "limit": MAX_CONTEXT,
                                       "message": f"has {MAX_CONTEXT + 5} characters, more than the limit of "
                                                  f"{MAX_CONTEXT}"}]

    def chunks():  # no Content-Length: the server must count as it reads
        for _ in range(10):
            yield b" " * 1000

    reply = client.post("/v1/answer", content=chunks())
    assert reply.status_code == 413 and reply.json()["limit"] == MAX_BODY


def test_a_python_client_that_sends_a_whole_oversized_body_receives_the_413(server):
    """urllib sends the whole body before it reads the answer: a server that answered 413 and closed on
    the unread rest reset the connection and urllib raised "Broken pipe" instead."""
    import urllib.error
    import urllib.request

    big = 8 << 20  # far more than the kernel's socket buffers hold, so the server must read it
    with_length = b'{"question": "q", "context": "' + b"x" * big + b'"}'
    for data, size in [(with_length, len(with_length)), ((b"x" * (1 << 20) for _ in range(8)), None)]:  # chunked
        request = urllib.request.Request(f"{server.url}/v1/answer", data=data,
                                         headers={"content-type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=60)
        assert refused.value.code == 413
        reply = json.loads(refused.value.read())
        assert reply["limit"] == MAX_BODY and f"more than the limit of {MAX_BODY}" in reply["error"]
        assert size is None or reply["error"].startswith(f"the body has {size} bytes")


def test_a_client_that_expects_100_continue_gets_the_413_without_sending_the_body(server):
    host, port = server.url.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(b"POST /v1/answer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 100000000\r\nExpect: 100-continue\r\n\r\n")
        head = s.recv(1000)
    assert head.startswith(b"HTTP/1.1 413 ") and b"100 Continue" not in head


def test_wrong_routes_and_methods_answer_json_and_the_server_survives_everything(client, server):
    assert client.get("/v1/answer").status_code == 405
    assert client.get("/nowhere").json() == {"error": "Not Found"}
    wrong = client.post("/v1/classify", json={"text": "tom has a car ."})  # a GLUE route on a SQuAD model
    assert wrong.status_code == 404 and wrong.json()["route"] == "/v1/answer"
    assert "a SQuAD question-answering model: it serves POST /v1/answer" in wrong.json()["error"]
    with socket.create_connection((server.url.split("//")[1].split(":")[0], int(server.url.rsplit(":", 1)[1]))) as s:
        s.sendall(b"POST /v1/answer HTTP/1.1\r\nHost: x\r\nContent-Length: zz\r\n\r\n")  # not even HTTP
        s.recv(1000)
    assert client.get("/health").json() == {"status": "ready"}
    assert _post(client, {"question": "what color is the sky ?",
                          "context": "the sky is blue today ."}).json()["answer"] == "blue"


def test_concurrent_requests_are_all_answered_correctly(client, model):
    triples = model[1] * 4  # 24 requests in flight at once, six different answers
    results = [None] * len(triples)

    def ask(i):  # a 503 (the queue of 16 full) is retried, as a client should
        question, context, _ = triples[i]
        with httpx.Client(base_url=client.base_url, timeout=60) as own:
            results[i] = post_retrying_503(own, "/v1/answer", {"question": question, "context": context})

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(triples))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [r.status_code for r in results] == [200] * len(triples)  # none lost ...
    assert [r.json()["answer"] for r in results] == [a for _, _, a in triples]  # ... and none mixed up


def test_the_load_test_counts_every_request_and_every_wrong_answer(server, model):
    from benchmarks.bench_server import drive, reference_answers

    pairs = [(q, c) for q, c, _ in model[1]]
    expected = reference_answers(server.url, pairs)
    assert [text for text, _, _ in expected] == [a for _, _, a in model[1]]
    result = drive(server.url, pairs, expected, clients=3, seconds=60, max_requests=30)  # bounded by count
    assert (result["sent"], result["answered"], result["wrong"], result["transport"]) == (30, 30, 0, 0)
    assert len(result["latencies"]) == 30 and result["elapsed"] < 60
    expected[0] = ("not the answer", 0, 1)  # a server that mixed answers up must be caught
    result = drive(server.url, pairs, expected, clients=2, seconds=60, max_requests=12)
    assert (result["sent"], result["answered"], result["wrong"]) == (12, 10, 2)  # requests 0 and 6 ask q0


@pytest.fixture(scope="module")
def slow_batching_server(model, tmp_path_factory):
    """A server whose batches wait up to 3 s for a 4th question, with room for 4 questions in all. Shared by
    the next two tests, in file order: the batching test reads its fresh counters, the SIGTERM test ends it."""
    proc = ServerProcess(model[0], tmp_path_factory.mktemp("slow") / "server.log", "--threads", "1",
                         "--max-batch-size", "4", "--max-queue", "4", "--max-wait-ms", "3000")
    yield proc
    proc.stop()


def _ask_in_background(url, body):
    box = {}

    def run():
        with httpx.Client(base_url=url, timeout=60) as c:
            box["reply"] = _post(c, body)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, box


def _wait_queued(url, depth, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if httpx.get(f"{url}/v1/metrics").json()["batching"]["queue_depth"] == depth:
            return
        time.sleep(0.02)
    raise AssertionError(f"the queue never held {depth} questions")


def test_requests_share_a_batch_and_a_full_queue_answers_503(slow_batching_server, model):
    url = slow_batching_server.url
    (q1, c1, a1), (q2, c2, a2), (q3, c3, a3) = model[1][:3]
    waiting, box = _ask_in_background(url, [{"question": q1, "context": c1}, {"question": q2, "context": c2}])
    _wait_queued(url, 2)
    full = httpx.post(f"{url}/v1/answer", json=[{"question": q3, "context": c3}] * 3)  # 2 + 3 > 4
    assert full.status_code == 503 and full.json()["limit"] == 4 and full.headers["retry-after"] == "1"
    assert "holds 2 of at most 4 questions; 3 more do not fit" in full.json()["error"]
    others = [_ask_in_background(url, {"question": q3, "context": c3}) for _ in range(2)]  # 4th fills the batch
    for thread, _ in [(waiting, box)] + others:
        thread.join(30)
    assert [a["answer"] for a in box["reply"].json()] == [a1, a2]
    assert [b["reply"].json()["answer"] for _, b in others] == [a3, a3]
    stats = httpx.get(f"{url}/v1/metrics").json()
    # Four questions of three requests in one model run: had the first two waited out their 3 s, they
    # would have left as a batch of 2.
    assert stats["batching"]["batch_sizes"] == {"4": 1}
    assert stats["batching"]["refused_queue_full"] == 3 and stats["responses"]["503"] == 1


def test_sigterm_answers_the_requests_in_flight_then_exits_0(slow_batching_server, model):
    question, context, answer = model[1][0]
    waiting, box = _ask_in_background(slow_batching_server.url, {"question": question, "context": context})
    _wait_queued(slow_batching_server.url, 1)  # queued, waiting for batch mates that will not come
    slow_batching_server.terminate()
    waiting.join(30)
    assert box["reply"].status_code == 200 and box["reply"].json()["answer"] == answer
    assert slow_batching_server.proc.wait(30) == 0
    # 4 questions in 1 batch from the test before, and this one alone.
    assert "stopped on SIGTERM after answering the requests in flight: 5 questions answered in 2 batches" in \
        slow_batching_server.log()


def _open_request(url, body, sent):
    """A raw connection that has sent a POST /v1/answer's headers and the first `sent` bytes of `body`."""
    host, port = url.split("//")[1].split(":")
    conn = socket.create_connection((host, int(port)), timeout=60)
    conn.sendall(b"POST /v1/answer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(body) + body[:sent])
    return conn


def _finish_request(conn, rest=b""):
    """Send `rest` of the body, read the answer until the server closes: (status, headers, JSON body)."""
    conn.sendall(rest)
    data = b""
    while chunk := conn.recv(65536):
        data += chunk
    conn.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, json.loads(body)


def _wait_not_listening(url, timeout=20):
    """Return once the server refuses new connections: its graceful shutdown has begun."""
    host, port = url.split("//")[1].split(":")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
        except ConnectionRefusedError:
            return
        time.sleep(0.02)
    raise AssertionError("the server kept accepting connections after SIGTERM")


def test_at_the_drain_deadline_what_is_unanswered_gets_a_json_503_and_nothing_a_traceback(model, tmp_path):
    """Answers computed during the drain are delivered; a question still queued and a body still being sent
    at the deadline get JSON 503 + Retry-After (uvicorn used to cancel them: plain-text 500, tracebacks)."""
    (q1, c1, a1), (q2, c2, a2), (q3, c3, _) = model[1][:3]
    server = ServerProcess(model[0], tmp_path / "server.log", "--threads", "1", "--max-batch-size", "2",
                           "--max-queue", "4", "--max-wait-ms", "600000", "--drain-timeout", "4")
    try:
        bodies = [json.dumps({"question": q, "context": c}).encode() for q, c in [(q2, c2), (q3, c3), (q3, c3)]]
        paired, queued, unfinished = (_open_request(server.url, body, 10) for body in bodies)
        waiting, box = _ask_in_background(server.url, {"question": q1, "context": c1})
        _wait_queued(server.url, 1)  # waits (for 10 minutes) for a second question to share its batch
        server.terminate()
        _wait_not_listening(server.url)
        assert _finish_request(paired, bodies[0][10:])[2]["answer"] == a2  # the batch of two runs in the drain
        waiting.join(30)
        assert box["reply"].status_code == 200 and box["reply"].json()["answer"] == a1
        for conn, rest in [(queued, bodies[1][10:]), (unfinished, b"")]:  # waits alone / never ends its body
            status, headers, reply = _finish_request(conn, rest)
            assert (status, headers["retry-after"], headers["content-type"]) == (503, "1", "application/json")
            assert reply == {"error": "the server is shutting down and did not answer within --drain-timeout (4 s); "
                                      "retry"}
        assert server.proc.wait(30) == 0
    finally:
        server.stop()
    log = server.log()
    assert "Traceback" not in log and "Exception in ASGI application" not in log, log
    assert "2 requests were not answered within --drain-timeout (4 s) and got 503" in log
    assert ": 2 questions answered in 1 batches" in log


def test_bad_flags_and_a_busy_port_are_refused_before_the_model_loads(model, tmp_path):
    from inference import server as cli

    def refused(*argv):
        with pytest.raises(ValueError) as err:
            cli.parse_args(["--model-dir", str(model[0]), *argv])
        return str(err.value)

    assert refused("--max-batch-size", "0") == "--max-batch-size must be >= 1, got 0"
    assert refused("--max-wait-ms", "nan") == "--max-wait-ms must be >= 0, got nan"
    assert refused("--max-queue", "2").startswith("--max-queue (2) must be >= --max-batch-size (8)")
    assert refused("--port", "70000") == "--port must be in 0..65535, got 70000"
    with pytest.raises(ValueError, match="has no manifest.json: not an exported model"):
        cli.parse_args(["--model-dir", str(tmp_path)])
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(ValueError, match="cannot listen on 127.0.0.1:.*choose another --port"):
            cli.bind_socket("127.0.0.1", busy.getsockname()[1])


def test_the_curl_example_is_logged_after_the_serving_line_with_the_bound_port(server):
    """Issue 24 item 9: the example request comes from the server once it is ready (serve.sh printed it first)."""
    deadline = time.monotonic() + 30  # the fixture waited for the serving line; the next may still be on its way
    while " ask: curl " not in server.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    lines = server.log().splitlines()
    serving = next(i for i, line in enumerate(lines) if " serving " in line)
    ask = next(i for i, line in enumerate(lines) if " ask: curl " in line)
    assert ask > serving, lines
    assert f"ask: curl -s {server.url}/v1/answer -H 'content-type: application/json' -d '{{\"question\": " in lines[ask]


def test_serve_sh_on_a_busy_port_stops_with_one_line_and_no_curl_example(model):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        result = subprocess.run(["bash", str(REPO / "scripts" / "serve.sh"), str(model[0]),
                                 str(busy.getsockname()[1])], capture_output=True, text=True, timeout=120,
                                env={**os.environ, "PYTHON": sys.executable})
    assert result.returncode == 2, result.stderr
    assert "curl" not in result.stderr and "cannot listen on 127.0.0.1:" in result.stderr, result.stderr


def test_device_gpu_is_refused_on_a_cpu_only_paddle_and_auto_resolves_to_cpu(model):
    import paddle

    from inference import server as cli

    if paddle.is_compiled_with_cuda():
        pytest.skip("this Paddle has CUDA: --device gpu may be valid here")
    with pytest.raises(ValueError) as err:
        cli.parse_args(["--model-dir", str(model[0]), "--device", "gpu"])
    assert str(err.value) == ("--device gpu: this paddlepaddle build has no CUDA (install paddlepaddle-gpu==2.6.2); "
                              "use --device cpu or auto")
    assert cli.parse_args(["--model-dir", str(model[0]), "--device", "auto"]).device == "cpu"


def test_a_model_that_fails_to_load_stops_the_server_with_one_line_and_exit_2(model, tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(model[0], damaged)
    with open(damaged / "vocab.txt", "a") as f:
        f.write("extra\n")
    result = subprocess.run([sys.executable, "-m", "inference.server", "--model-dir", str(damaged), "--port", "0"],
                            cwd=REPO, capture_output=True, text=True, timeout=120,
                            env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode == 2 and len(errors) == 1, result.stderr
    assert "vocab.txt" in errors[0] and "manifest.json" in errors[0]  # found by the load, in the worker thread
