"""The HTTP model service: an exported SQuAD or GLUE model behind FastAPI + uvicorn, with micro-batching and
limits.

Owns: the routes, turning refusals into JSON answers with their status, the flags and their validation, and
the process's life (bind, load the model in the worker, serve, drain on SIGTERM). Does not own what a
request may contain (`inference.answer_request`), how requests are gathered into batches
(`inference.batching`) or the model (`inference.predictor`).

Routes (the export's settings.json says which of the first two this model serves; the other answers 404
saying which route to use):
  POST /v1/answer   SQuAD: {"question", "context"[, "n_best" (1..20), "max_answer_length" (1..512 tokens)]}
                    -> {"answer", "score", "start", "end"} (character offsets, end exclusive: the answer is
                    context[start:end]; "nbest" too when n_best > 1). A JSON array of such objects is the
                    batch form -> an array of answers in the same order.
  POST /v1/classify GLUE: {"text"} (single-sentence tasks) or {"text_a", "text_b"} (pair tasks) -> {"label",
                    "probabilities": {label: p}} ({"score"} for STS-B); an array of them -> an array.
  GET  /health      200 {"status": "ready"} once the model is loaded; 503 while loading or when it failed.
  GET  /v1/model    the predictor's info (model, precision and why it was chosen, threads, window settings,
                    manifest checksum)
                    and the server's limits.
  GET  /v1/metrics  request counts by status, and the batcher's counters (batches, batch sizes, queue).
Refusals: 400 body not UTF-8 / not JSON; 413 body or question / text count over a limit; 422 wrong shape
or type, empty question/context/text, context or text over --max-context-chars, a pair task without
text_b; 503 queue full (Retry-After) or model not ready. Every refusal is {"error": "<what is wrong>", ...}
with "limit" when a limit was passed.

Concurrency: the event loop parses requests and hands questions to the MicroBatcher; its one worker thread
loads the model and runs every batch (a Paddle predictor must not run concurrently). SIGTERM or Ctrl-C
stops accepting connections, answers what is in flight, then exits 0 (a second Ctrl-C: at once); a
request not answered within --drain-timeout gets a JSON 503 with Retry-After, and its questions still
queued are dropped.

Usage (from the repo root):
  python -m inference.server --model-dir exported/squad --port 8000 [--threads 2 --precision auto]
  curl -s localhost:8000/v1/answer -H 'content-type: application/json' \
       -d '{"question": "Who has a car?", "context": "Tom has a red car."}'
  python -m inference.server --model-dir exported/mrpc --port 8001
  curl -s localhost:8001/v1/classify -H 'content-type: application/json' \
       -d '{"text_a": "Tom has a red car.", "text_b": "Tom owns a red car."}'
"""
import zlib  # noqa: F401  -- before paddle: libpaddle's own zlib symbols crash later zlib users
import utils.preflight  # noqa: F401  -- OMP threads default, MKL path; must stay before paddle

import asyncio
import collections
import contextlib
import logging
import math
import os
import signal
import socket
import sys
import threading

import paddle  # noqa: F401  -- imported before logging is set up: its import lowers the root logger to WARNING
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from data.features.glue import task_spec
from inference import model_dir as layout
from inference.answer_request import Limits, RequestError, body_too_large, parse_questions, parse_texts, read_json
from inference.batching import READY, MicroBatcher, QueueFull, Unavailable
from inference.predictor import load_predictor
from utils.cli import ArgumentParser, run_cli
from utils.runtime import DEVICES, resolve_device

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "int8")
RETRY_AFTER_S = 1  # what a 503 asks a client to wait: a batch takes well under a second
DRAIN_GRACE_S = 2.0  # after the drain deadline, time to write the 503s before uvicorn cancels what is left
# Most bytes of a refused body read (and dropped) so that a client that sends it all before reading, as
# Python's urllib and requests do, gets the 413 instead of a reset connection (64 MiB: ~0.3 s on loopback).
DISCARD_MAX_BYTES = 64 << 20


# ------------------------------------------------------------------------------------------------ flags
def parse_args(argv):
    """Parse and validate the flags (before anything is bound or loaded).

    Raises:
      ValueError: naming the bad flag and the accepted range.
    """
    p = ArgumentParser(prog="python -m inference.server", description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", required=True, help="a directory written by python -m inference.export")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s; 0.0.0.0 "
                                                       "for all interfaces)")
    p.add_argument("--port", type=int, default=8000, help="TCP port, 0 = any free one (default %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="math-library threads of the model "
                                                             "(default: OMP_NUM_THREADS, i.e. the usable cores)")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="auto: the fastest precision this CPU runs natively whose accuracy the export recorded "
                        "within tolerance of fp32 (one log line and /v1/model's precision_choice say which and "
                        "why; fp32 on a GPU); an explicit one is used as asked (default %(default)s)")
    p.add_argument("--device", default="cpu", choices=DEVICES,
                   help="gpu is refused when this Paddle has no usable GPU; auto = gpu if usable, else cpu "
                        "(default %(default)s)")
    p.add_argument("--max-batch-size", type=int, default=8, help="most questions per model run (default "
                                                                 "%(default)s)")
    p.add_argument("--max-wait-ms", type=float, default=5.0,
                   help="longest a question waits for others to share its batch (default %(default)s)")
    p.add_argument("--max-queue", type=int, default=64,
                   help="most questions waiting; more get 503 (default %(default)s); also the most questions "
                        "one batch request may hold")
    p.add_argument("--max-context-chars", type=int, default=20000,
                   help="longest context in characters; longer gets 422 (default %(default)s)")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20,
                   help="largest request body; larger gets 413 (default %(default)s)")
    p.add_argument("--drain-timeout", type=float, default=30.0,
                   help="seconds SIGTERM waits for requests in flight; those not answered by then get 503 with "
                        "Retry-After (default %(default)s)")
    p.add_argument("--access-log", action="store_true", help="log one line per request (off: it costs "
                                                              "under load)")
    args = p.parse_args(argv)
    validate_args(args)
    # Which route to serve is known before the model loads (the manifest is checked by the load).
    args.settings = layout.read_settings(args.model_dir)
    return args


def validate_args(args):
    """Range checks of the parsed flags, and --device resolved to "cpu" | "gpu"; raises ValueError naming the
    first bad one."""
    if not os.path.isdir(args.model_dir):
        raise ValueError(f"--model-dir '{args.model_dir}' does not exist or is not a directory")
    if not os.path.isfile(os.path.join(args.model_dir, layout.MANIFEST_FILE)):
        raise ValueError(f"--model-dir '{args.model_dir}' has no {layout.MANIFEST_FILE}: not an exported model; "
                         "write one with python -m inference.export --checkpoint <fine-tuned dir> --output-dir <dir>")
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in 0..65535, got {args.port}")
    minimums = {"threads": 1, "max_batch_size": 1, "max_queue": 1, "max_context_chars": 1,
                "max_body_bytes": 64, "max_wait_ms": 0, "drain_timeout": 0}
    for name, low in minimums.items():
        value = getattr(args, name)
        if value is not None and not value >= low:  # `not >=` also refuses NaN
            raise ValueError(f"--{name.replace('_', '-')} must be >= {low}, got {value}")
    if args.max_queue < args.max_batch_size:
        raise ValueError(f"--max-queue ({args.max_queue}) must be >= --max-batch-size ({args.max_batch_size}): "
                         "a batch can only hold questions that were queued")
    # run_pretraining's check: a CPU-only Paddle would otherwise serve on the CPU and report "gpu".
    args.device = resolve_device(args.device)


def bind_socket(host, port):
    """A listening TCP socket on (host, port); port 0 picks a free one.

    Raises:
      ValueError: the address cannot be resolved or bound (in use, not this machine's), naming the flags.
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
    except (OSError, UnicodeError) as err:
        raise ValueError(f"--host {host!r} cannot be resolved: {err}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(1024)
    except OSError as err:
        sock.close()
        raise ValueError(f"cannot listen on {host}:{port} (--host/--port): {err.strerror}; choose another "
                         "--port (0 = any free one)") from None
    sock.set_inheritable(True)
    return sock


# ------------------------------------------------------------------------------------------------ app
class StatusCounter:
    """ASGI middleware counting responses by status code (what /v1/metrics reports as "responses")."""

    def __init__(self, app, counts):
        self.app, self.counts = app, counts

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def counting_send(message):
            if message["type"] == "http.response.start":
                self.counts[str(message["status"])] += 1
            await send(message)

        return await self.app(scope, receive, counting_send)


class Drain:
    """The deadline of a graceful stop. `begin()` (the server's shutdown, on SIGTERM / Ctrl-C) starts it:
    `timeout_s` later every request not yet being answered gets a JSON 503 with Retry-After from
    `DrainDeadline`. Without it uvicorn cancels such requests itself: a plain-text 500 each, and a
    CancelledError traceback in the log.
    """

    def __init__(self, timeout_s):
        self.timeout_s = timeout_s
        self.refused = 0  # requests answered 503 at the deadline (DrainDeadline counts them)
        self._expired = asyncio.Event()  # binds to the running loop at first use, not here

    def begin(self):
        """Start the countdown; call from the event loop."""
        asyncio.get_running_loop().call_later(self.timeout_s, self._expired.set)

    async def wait(self):
        """Return once the deadline has passed."""
        await self._expired.wait()


class DrainDeadline:
    """ASGI middleware: runs each request as its own task and, when the drain deadline passes before that
    request's response has started, cancels it (its questions still queued are dropped with it, see
    `run` in `create_app`) and answers 503 with Retry-After. A response already started, such as an
    answer computed before the deadline, is left to finish."""

    def __init__(self, app, drain):
        self.app, self.drain = app, drain

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = asyncio.Event()

        async def noting_send(message):
            if message["type"] == "http.response.start":
                started.set()
            await send(message)

        request = asyncio.ensure_future(self.app(scope, receive, noting_send))
        deadline = asyncio.ensure_future(self.drain.wait())
        try:
            await asyncio.wait({request, deadline}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # uvicorn gave up on this connection: the request goes with it
            request.cancel()
            raise
        finally:
            deadline.cancel()
        if request.done() or started.is_set():
            return await request  # (cancelling this task while it waits here cancels `request` too)
        request.cancel()
        await asyncio.wait({request})  # unlike `await request`, does not raise its CancelledError here
        if started.is_set():  # cannot happen (cancelled before it could run again); never send two answers
            return None
        self.drain.refused += 1
        await _error(503, {"error": f"the server is shutting down and did not answer within --drain-timeout "
                                    f"({self.drain.timeout_s:g} s); retry"},
                     {"Retry-After": str(RETRY_AFTER_S)})(scope, receive, send)


class DrainingServer(uvicorn.Server):
    """uvicorn's server with one addition: its graceful shutdown starts the app's `Drain` first."""

    def __init__(self, config, drain):
        super().__init__(config)
        self.drain = drain

    async def shutdown(self, sockets=None):
        self.drain.begin()
        await super().shutdown(sockets)


def _error(status, body, headers=None):
    return JSONResponse(body, status_code=status, headers=headers)


def _answer_json(answer, n_best):
    out = {"answer": answer.text, "score": float(answer.score), "start": int(answer.start), "end": int(answer.end)}
    if n_best > 1:
        out["nbest"] = [{k: entry[k] for k in ("text", "probability", "start", "end")} for entry in answer.nbest]
    return out


async def read_body(request, limits):
    """The request body, refused with 413 once it (or its Content-Length) passes the limit.

    A refused body is still read, up to DISCARD_MAX_BYTES, and dropped: a client such as Python's urllib or
    requests sends the whole body before it reads the answer, and a connection closed on unread data is
    reset, so it would see "Broken pipe" instead of the 413. A client that sent `Expect: 100-continue`
    (curl, for large bodies) has not sent the body yet: it gets the 413 at once and never sends it.

    Raises:
      RequestError: 413 over the limit; 400 for a Content-Length that is not a number.
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise RequestError(400, f"Content-Length {declared!r} is not a number")
        if int(declared) > limits.max_body_bytes:
            if request.headers.get("expect", "").lower() != "100-continue":
                await _discard(request.stream(), 0)
            raise body_too_large(int(declared), limits)
    chunks, size = [], 0
    stream = request.stream()
    async for chunk in stream:  # also bounds a chunked body, which has no Content-Length
        size += len(chunk)
        if size > limits.max_body_bytes:
            raise body_too_large(await _discard(stream, size), limits)
        chunks.append(chunk)
    return b"".join(chunks)


async def _discard(stream, size):
    """Read and drop the rest of `stream` (a refused body, `size` bytes of it seen) until it ends, the
    client leaves, or DISCARD_MAX_BYTES were seen. Returns the bytes seen."""
    try:
        async for chunk in stream:
            size += len(chunk)
            if size > DISCARD_MAX_BYTES:  # not worth reading: close the connection (curl still sees the 413)
                break
    except ClientDisconnect:  # nobody left to answer; the 413 goes nowhere
        pass
    return size


def create_app(batcher, limits, describe_server, settings=None, drain=None):
    """The FastAPI application over a started-or-not MicroBatcher of a QAPredictor or ClassifierPredictor.

    Args:
      batcher: inference.batching.MicroBatcher whose model is a QAPredictor (or anything with `info` and
        answers with text/score/start/end/nbest) or, for a GLUE export, a ClassifierPredictor (items are
        TextRequest payloads, results Classifications); started by the app's lifespan, closed at shutdown.
      limits: inference.answer_request.Limits.
      describe_server: callable() -> dict, the server settings shown by /v1/model.
      settings: the export's inference.model_dir.ExportSettings (None: a SQuAD model), which picks the
        route served; the other route answers 404 naming the right one.
      drain: the Drain the server's shutdown begins (None: requests are never cut off).

    Returns:
      A Starlette/ASGI application (the FastAPI app wrapped by the drain deadline and the status counter).
    """
    responses = collections.Counter()

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        batcher.start()
        yield
        # uvicorn calls this after the connections in flight were answered; the queue is empty by then
        # unless the drain timed out, and close() still answers what is left before the worker stops.
        await asyncio.get_running_loop().run_in_executor(None, batcher.close)

    squad = settings is None or settings.is_squad
    pair = not squad and task_spec(settings.task).train.text_b is not None
    route = "/v1/answer" if squad else "/v1/classify"
    kind = "a SQuAD question-answering model" if squad else f"a GLUE {settings.task} classifier"
    app = FastAPI(title="BERT SQuAD answer service" if squad else f"BERT GLUE {settings.task} classifier",
                  lifespan=lifespan, docs_url=None, redoc_url=None)

    def wrong_route(path):
        return _error(404, {"error": f"this server's model is {kind}: it serves POST {route}, not {path}",
                            "route": route})

    @app.exception_handler(RequestError)
    async def refused(_request, err):
        return _error(err.status, err.body)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request, err):  # 404 / 405 in the same {"error": ...} shape as our refusals
        return _error(err.status_code, {"error": str(err.detail)}, getattr(err, "headers", None))

    @app.exception_handler(Exception)
    async def bug(_request, err):  # a defect, not the client's fault: logged with its traceback, JSON 500
        logger.error("request failed: %s", err, exc_info=err)
        return _error(500, {"error": f"internal error ({type(err).__name__}: {err}); see the server log"})

    @app.get("/health")
    async def health():
        state = batcher.state
        if state == READY:
            return {"status": "ready"}
        body = {"status": state}
        if batcher.load_error is not None:
            body["error"] = str(batcher.load_error)
        return _error(503, body)

    @app.get("/v1/model")
    async def model_info():
        model = batcher.model
        if model is None:
            return _error(503, {"error": f"the model is not loaded ({batcher.state})"})
        return {"model": model.info, "server": describe_server()}

    @app.get("/v1/metrics")
    async def metrics():
        return {"responses": dict(sorted(responses.items())), "batching": batcher.stats()}

    async def run(payloads, keys):
        """The model's results for `payloads` via the batcher, or the 503 / 422 response to send instead."""
        try:
            futures = batcher.submit(payloads, keys=keys)
        except QueueFull as err:
            return _error(503, {"error": err.reason, "limit": err.limit}, {"Retry-After": str(RETRY_AFTER_S)})
        except Unavailable as err:
            return _error(503, {"error": err.reason}, {"Retry-After": str(RETRY_AFTER_S)})
        try:  # cancelled at the drain deadline: the gather cancels the futures, the batcher skips them
            return await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
        except ValueError as err:  # the predictor refused this input (e.g. a context without any word)
            return _error(422, {"error": f"the model cannot {'answer' if squad else 'classify'} this: {err}"})

    @app.post("/v1/answer")
    async def answer(request: Request):
        if not squad:
            return wrong_route("/v1/answer")
        questions, is_batch = parse_questions(read_json(await read_body(request, limits), limits), limits)
        answers = await run([(q.question, q.context) for q in questions], [q.options for q in questions])
        if isinstance(answers, JSONResponse):
            return answers
        out = [_answer_json(a, q.n_best) for a, q in zip(answers, questions)]
        return out if is_batch else out[0]

    @app.post("/v1/classify")
    async def classify(request: Request):
        if squad:
            return wrong_route("/v1/classify")
        example = '{"text_a": "...", "text_b": "..."}' if pair else '{"text": "..."}'
        texts, is_batch = parse_texts(read_json(await read_body(request, limits), limits, example), limits,
                                      pair=pair, task=settings.task)
        results = await run([t.payload for t in texts], [None] * len(texts))
        if isinstance(results, JSONResponse):
            return results
        out = [r.to_dict() for r in results]
        return out if is_batch else out[0]

    return StatusCounter(DrainDeadline(app, drain if drain is not None else Drain(math.inf)), responses)


# ------------------------------------------------------------------------------------------------ main
def _load_predictor(args):
    """Load the model (QAPredictor or ClassifierPredictor, as the export says); runs in the batcher's worker
    thread, the only thread that will ever call it."""
    return load_predictor(args.model_dir, threads=args.threads, precision=args.precision, device=args.device,
                          batch_size=args.max_batch_size)


def _run_batch(predictor, pairs, options):
    n_best, max_answer_length = options
    return predictor.answer(pairs, n_best=n_best, max_answer_length=max_answer_length)


def _run_classify(predictor, payloads, _key):
    return predictor.classify(payloads)


class _Termination:
    """SIGTERM or Ctrl-C after a graceful drain means "done" (exit 0), not "killed": uvicorn re-raises the
    signal it caught once it has shut down, and this handler is what it then calls."""

    def __init__(self):
        self.received = None

    def __call__(self, signum, frame):
        self.received = signal.Signals(signum).name


def main(argv=None):
    """Serve until SIGTERM / Ctrl-C. Returns {"batching": the batcher's final counters}.

    Raises:
      ValueError: a bad flag, an unusable address, or a model directory the predictor refuses.
    """
    args = parse_args(argv)
    sock = bind_socket(args.host, args.port)
    host, port = sock.getsockname()[:2]
    limits = Limits(max_body_bytes=args.max_body_bytes, max_questions=args.max_queue,
                    max_context_chars=args.max_context_chars)
    server_box = []

    def stop_on_load_error(_err):  # the worker thread: let uvicorn's loop see it and shut down
        server_box[0].should_exit = True

    batcher = MicroBatcher(lambda: _load_predictor(args), _run_batch if args.settings.is_squad else _run_classify,
                           max_batch_size=args.max_batch_size,
                           max_wait_s=args.max_wait_ms / 1000.0, max_queue=args.max_queue,
                           on_load_error=stop_on_load_error)

    def describe_server():
        return {"host": host, "port": port, "max_batch_size": args.max_batch_size, "max_wait_ms": args.max_wait_ms,
                "max_queue": args.max_queue, **limits.as_dict()}

    drain = Drain(args.drain_timeout)
    app = create_app(batcher, limits, describe_server, args.settings, drain)
    config = uvicorn.Config(app, log_config=None, log_level="warning", access_log=args.access_log,
                            timeout_graceful_shutdown=args.drain_timeout + DRAIN_GRACE_S, lifespan="on")
    server = DrainingServer(config, drain)
    server_box.append(server)
    logger.info("loading %s (%s, %s) in the predictor thread; http://%s:%d/health says ready when done",
                args.model_dir, args.precision, args.device, host, port)
    _announce_when_ready(batcher, host, port, args)
    termination = _Termination()
    previous = {sig: signal.signal(sig, termination) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        sock.close()
    if batcher.load_error is not None:
        raise batcher.load_error
    stats = {"batching": batcher.stats()}
    if drain.refused:
        logger.warning("%d requests were not answered within --drain-timeout (%g s) and got 503",
                       drain.refused, args.drain_timeout)
    logger.info("stopped%s: %d questions answered in %d batches, %d refused (queue full)",
                f" on {termination.received} after answering the requests in flight" if termination.received else "",
                stats["batching"]["answered"], stats["batching"]["batches"], stats["batching"]["refused_queue_full"])
    return stats


def _announce_when_ready(batcher, host, port, args):
    """Log the one start-up line (what was chosen) once the model is loaded, from a helper thread."""
    def announce():
        if not batcher.wait_ready():
            return
        info = batcher.model.info
        shown = f"[{host}]" if ":" in host else host
        items, text = ("questions", "context") if args.settings.is_squad else ("texts", "text")
        logger.info("serving %s %s (%s, %s, %s threads, max_seq_length %s) at http://%s:%d%s; batches of "
                    "<= %d %s, wait <= %g ms, queue <= %d, %s <= %d chars, body <= %d bytes",
                    info.get("model_name"), info.get("task", "squad"), info.get("precision"), info.get("device"),
                    info.get("threads"), info.get("max_seq_length"), shown, port, args.settings.route,
                    args.max_batch_size, items, args.max_wait_ms, args.max_queue, text, args.max_context_chars,
                    args.max_body_bytes)
        logger.info("ask: %s", curl_example(args.settings, host, port))

    threading.Thread(target=announce, name="announce-ready", daemon=True).start()


def curl_example(settings, host, port):
    """A request this server answers, as one curl command line. Logged once the model is ready (never for a
    server that did not start, e.g. on a busy port), with the port really bound (--port 0 included)."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    shown = f"[{shown}]" if ":" in shown else shown
    if settings.is_squad:
        body = '{"question": "Who has a red car?", "context": "Tom has a red car."}'
    elif task_spec(settings.task).train.text_b is None:
        body = '{"text": "Tom has a red car."}'
    else:
        body = '{"text_a": "Tom has a red car.", "text_b": "Tom owns a red car."}'
    return f"curl -s http://{shown}:{port}{settings.route} -H 'content-type: application/json' -d '{body}'"


if __name__ == "__main__":
    sys.exit(run_cli(main))
