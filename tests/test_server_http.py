"""inference.server's HTTP layer in-process (Starlette's TestClient) over a MicroBatcher of a predictor
double: the states a real tiny model passes too quickly to observe -- still loading, load failed -- and a
model that refuses an input or breaks. The real server and model are tested in tests/test_server.py."""
import threading

import pytest
from fastapi.testclient import TestClient

from inference.answer_request import Limits
from inference.batching import MicroBatcher
from inference.predictor import Answer
from inference.server import create_app

LIMITS = Limits(max_body_bytes=10_000, max_questions=8, max_context_chars=1000)


class Double:
    """Answers with the context's first word; refuses contexts starting with "refuse", breaks on "break"."""
    info = {"model_name": "double", "max_seq_length": 32}

    def answer(self, items, *, n_best=1, max_answer_length=30):
        out = []
        for question, context in items:
            if context.startswith("refuse"):
                raise ValueError("item 0: the context is empty")
            if context.startswith("break"):
                raise RuntimeError("the predictor broke")
            word = context.split()[0]
            out.append(Answer(word, 0.5, 0, len(word), [{"text": word, "probability": 0.5, "start": 0,
                                                         "end": len(word)}] * n_best))
        return out


def make_client(load):
    batcher = MicroBatcher(load, lambda m, pairs, key: m.answer(pairs, n_best=key[0], max_answer_length=key[1]),
                           max_batch_size=4, max_wait_s=0, max_queue=8)
    return TestClient(create_app(batcher, LIMITS, lambda: {"port": 0}), raise_server_exceptions=False), batcher


def test_nothing_is_served_until_the_model_is_loaded():
    loaded = threading.Event()
    client, batcher = make_client(lambda: loaded.wait(10) and Double())
    with client:
        assert client.get("/health").status_code == 503
        assert client.get("/health").json() == {"status": "loading"}
        early = client.post("/v1/answer", json={"question": "q", "context": "tom has"})
        assert early.status_code == 503 and early.json() == {"error": "the model is still loading"}
        assert early.headers["retry-after"] == "1"
        assert client.get("/v1/model").status_code == 503
        loaded.set()
        assert batcher.wait_ready(10)
        assert client.get("/health").json() == {"status": "ready"}
        assert client.get("/v1/model").json() == {"model": Double.info, "server": {"port": 0}}
        assert client.post("/v1/answer", json={"question": "q", "context": "tom has"}).json() == \
            {"answer": "tom", "score": 0.5, "start": 0, "end": 3}
    assert batcher.state == "closed"  # the app's shutdown closed the batcher


def test_a_failed_load_is_what_health_reports():
    def load():
        raise ValueError("'/m' has no manifest.json")

    client, batcher = make_client(load)
    with client:
        batcher.wait_ready(10)
        reply = client.get("/health")
        assert reply.status_code == 503
        assert reply.json() == {"status": "failed", "error": "'/m' has no manifest.json"}
        assert "failed to load" in client.post("/v1/answer", json={"question": "q", "context": "c"}).json()["error"]


@pytest.mark.parametrize("context, status, words", [("refuse this", 422, "the model cannot answer this: item 0"),
                                                    ("break this", 500, "internal error (RuntimeError: the "
                                                                        "predictor broke)")])
def test_a_model_that_refuses_or_breaks_answers_json_and_keeps_serving(context, status, words):
    client, batcher = make_client(Double)
    with client:
        batcher.wait_ready(10)
        reply = client.post("/v1/answer", json={"question": "q", "context": context})
        assert reply.status_code == status and words in reply.json()["error"]
        assert client.post("/v1/answer", json=[{"question": "q", "context": "anna rides", "n_best": 2}]).json() == \
            [{"answer": "anna", "score": 0.5, "start": 0, "end": 4,
              "nbest": [{"text": "anna", "probability": 0.5, "start": 0, "end": 4}] * 2}]
        assert client.get("/v1/metrics").json()["responses"] == {"200": 1, str(status): 1}


@pytest.mark.parametrize("body, field", [
    ({"question": "q", "context": "\u0000\u0001\u0002"}, "context"),       # control characters only
    ({"question": "\u200b\u200b", "context": "tom has"}, "question"),      # zero-width spaces only
    ({"question": "\ufeff\u2028 \u00ad", "context": "tom has"}, "question"),  # BOM, line separator, soft hyphen
])
def test_text_the_tokenizer_drops_entirely_is_empty_422_naming_the_field(body, field):
    client, batcher = make_client(Double)
    with client:
        batcher.wait_ready(10)
        reply = client.post("/v1/answer", json=body)
        assert reply.status_code == 422, reply.text  # the double would answer it: only the validation refuses
        assert reply.json()["detail"][0]["field"] == field
        assert f"{field}: must not be empty" in reply.json()["error"]
        assert batcher.stats()["submitted"] == 0


def test_an_integer_too_long_for_python_anywhere_in_the_body_is_422_not_a_500(caplog):
    client, batcher = make_client(Double)
    digits = "7" * 4301  # one over CPython's default int_max_str_digits
    with client:
        batcher.wait_ready(10)
        for body in (f'{{"question": "q", "context": "tom has", "n_best": {digits}}}',
                     f'[{{"question": "q", "context": "tom has", "extra": [{digits}]}}]'):
            reply = client.post("/v1/answer", content=body.encode(), headers={"content-type": "application/json"})
            assert reply.status_code == 422, reply.text
            assert reply.json() == {"error": "the body has an integer of more than 4300 digits; no field takes one"}
        assert client.get("/v1/metrics").json()["responses"] == {"422": 2}
    assert "Traceback" not in caplog.text and not [r for r in caplog.records if r.exc_info]


def test_glue_texts_the_tokenizer_drops_entirely_are_empty_422_naming_the_field():
    from inference.answer_request import RequestError, parse_texts

    for value, pair, field in [({"text": "\u0000\u0001"}, False, "text"),
                               ({"text_a": "\u200b", "text_b": "tom has"}, True, "text_a"),
                               ([{"text_a": "tom", "text_b": "ok"}, {"text_a": "tom", "text_b": "\u2060\u00ad"}],
                                True, "[1].text_b")]:
        with pytest.raises(RequestError) as err:
            parse_texts(value, LIMITS, pair=pair, task="MRPC" if pair else "SST-2")
        assert err.value.status == 422 and [p["field"] for p in err.value.body["detail"]] == [field]
