"""Benchmark: a bounded load test of the model service on loopback, beside the predictor it serves.

Owns: starting the real server (`python -m inference.server`) as a subprocess on a free 127.0.0.1 port
(`ServerProcess`, also used by tests/test_server.py), and four timed phases:
  1. reference: every benchmark question once, one at a time; these answers are what every later answer
     to the same question must equal (a mixed-up batch would show as "wrong");
  2. load: `--clients` concurrent clients (keep-alive connections) send single questions for `--seconds`
     (after `--warmup-seconds` untimed) -> requests/s, latency p50/p90/p99, and the requests LOST: every
     request without a correct 200 answer (errors, refusals, transport failures, wrong answers) -- 0 expected;
     the server's own counters give the batches it formed;
  3. single: one client, one question at a time, against a server restricted to one core
     (`--single-cpus`, sched_setaffinity) and one math thread -> the single-question latency p50/p90/p99;
  4. direct (the baselines beside them, `--skip-direct` to leave out): the same questions through
     `QAPredictor.answer` in this process -- in batches of `--max-batch-size` with `--threads` threads (the
     questions/s the load phase can at best reach), and one at a time on phase 3's core and thread (what
     the HTTP layer and the batcher add to a single question is the difference).
A GLUE export is driven the same way through `/v1/classify` with the rows of `--glue-file` (e.g. MRPC's
dev.tsv), its baseline `ClassifierPredictor.classify`; a reply is right when its label (STS-B: its score to
4 decimals) equals the one the same text got alone.
Does not own the server or the predictor. Every request loop is bounded in time and count
(`--max-requests`) and talks only to 127.0.0.1.

Usage (from the repo root; the model directory comes from python -m inference.export):
  python -m benchmarks.bench_server --model-dir export/squad [--squad-file data/samples/squad/dev-v1.1.json] \
      [--clients 8 --seconds 20 --threads 2 --single-seconds 10 --report-file server_bench.json]
  python -m benchmarks.bench_server --model-dir export/mrpc --glue-file data/download/glue/MRPC/dev.tsv
"""
import zlib  # noqa: F401  -- before paddle (phase 4 imports it): libpaddle's zlib symbols crash later users
import utils.preflight  # noqa: F401  -- OMP threads default, MKL path; must stay before paddle

import argparse
import itertools
import json
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from utils.cli import ArgumentParser, run_cli
from utils.fs import atomic_write_json

logger = logging.getLogger("bench_server")

REPO = Path(__file__).resolve().parents[1]
SERVING_LINE = re.compile(r"serving .* at http://(?P<host>[^ ]+):(?P<port>\d+)/v1/(answer|classify)")
DEFAULT_SQUAD = REPO / "data" / "samples" / "squad" / "dev-v1.1.json"
REQUEST_TIMEOUT_S = 120.0


class ServerProcess:
    """`python -m inference.server` on 127.0.0.1, port chosen by the OS, log written to a file.

    Args:
      model_dir: export directory.
      log_path: file for the server's stderr/stdout (read to find its port and for failures).
      *flags: more server flags (e.g. "--threads", "1").
      cpus: optional set of CPU ids the server may run on (a core budget), via sched_setaffinity.
      env: optional extra environment variables.
      timeout: seconds to wait for the "serving ..." line.

    Attributes:
      url: "http://127.0.0.1:<port>"; proc: subprocess.Popen; log_path: Path.

    Raises:
      RuntimeError: the server exited or did not announce itself in time (its log is in the message).
    """

    def __init__(self, model_dir, log_path, *flags, cpus=None, env=None, timeout=120.0):
        self.log_path = Path(log_path)
        self._log = open(self.log_path, "w")
        full_env = dict(os.environ, PYTHONPATH=str(REPO), **(env or {}))
        preexec = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
        self.proc = subprocess.Popen([sys.executable, "-m", "inference.server", "--model-dir", str(model_dir),
                                      "--host", "127.0.0.1", "--port", "0", *flags], cwd=REPO, env=full_env,
                                     stdout=self._log, stderr=subprocess.STDOUT, preexec_fn=preexec)
        self.url = self._wait_serving(timeout)

    def _wait_serving(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = SERVING_LINE.search(self.log())
            if found:
                return f"http://{found['host']}:{found['port']}"
            if self.proc.poll() is not None:
                self._log.close()
                raise RuntimeError(f"the server exited with status {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the server did not start within {timeout} s:\n{self.log()}")

    def log(self):
        """The server's output so far (str)."""
        return self.log_path.read_text(errors="replace")

    def terminate(self, sig=signal.SIGTERM):
        """SIGTERM (or `sig`, e.g. SIGINT): the server stops accepting, answers what is in flight, exits 0."""
        self.proc.send_signal(sig)

    def stop(self, timeout=60.0, sig=signal.SIGTERM):
        """Send `sig` and wait (kill after `timeout` s). Returns the exit status."""
        if self.proc.poll() is None:
            self.terminate(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def load_questions(path, limit):
    """The first `limit` (question, context) pairs of a SQuAD JSON file (0 = all).

    Raises:
      ValueError: the file is missing, not SQuAD JSON, or has no questions.
    """
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        pairs = [(qa["question"], paragraph["context"]) for article in data["data"]
                 for paragraph in article["paragraphs"] for qa in paragraph["qas"]]
    except FileNotFoundError:
        raise ValueError(f"--squad-file {path} does not exist") from None
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"--squad-file {path} is not SQuAD JSON ({type(err).__name__}: {err})") from None
    if not pairs:
        raise ValueError(f"--squad-file {path} has no questions")
    return pairs[:limit] if limit else pairs


def _key(answer):
    return answer["answer"], answer["start"], answer["end"]


class Route:
    """How one kind of model is asked.

    Attributes:
      path: the HTTP route.
      body: callable(item) -> the JSON request of one item.
      key: callable(reply JSON) -> what must equal the reference reply of the same item.
      direct: callable(predictor, items) -> the in-process baseline's call on a batch of items.
    """

    def __init__(self, path, body, key, direct):
        self.path, self.body, self.key, self.direct = path, body, key, direct


def _classification_key(reply):
    return reply["label"] if "label" in reply else round(reply["score"], 4)


SQUAD = Route("/v1/answer", lambda item: {"question": item[0], "context": item[1]}, _key,
              lambda predictor, items: predictor.answer(items))
CLASSIFY = Route("/v1/classify", lambda item: {"text": item} if isinstance(item, str)
                 else {"text_a": item[0], "text_b": item[1]}, _classification_key,
                 lambda predictor, items: predictor.classify(items))


def load_texts(path, model_dir, limit):
    """The first `limit` items (0 = all) of a GLUE TSV file for the export's task: texts, or (text_a,
    text_b) pairs. The layout (header, columns) is the one of the file's split, read from its name.

    Raises:
      ValueError: the file is missing or malformed (naming file:line), or the export is not a GLUE model.
    """
    from data.features.glue import read_examples, task_spec
    from inference import model_dir as layout

    settings = layout.read_settings(model_dir)
    if settings.is_squad:
        raise ValueError(f"--glue-file: '{model_dir}' is a SQuAD model; ask it with --squad-file")
    stem = os.path.splitext(os.path.basename(path))[0]
    examples = read_examples(path, task_spec(settings.task), stem if stem.split("_")[0] in ("train", "dev", "test")
                             else "dev")
    items = [e.text_a if e.text_b is None else (e.text_a, e.text_b) for e in examples]
    return items[:limit] if limit else items


def percentiles_ms(seconds):
    """{"p50", "p90", "p99", "mean"} in milliseconds of a list of latencies in seconds (NaN when empty)."""
    if not seconds:
        return {name: float("nan") for name in ("p50", "p90", "p99", "mean")}
    ms = np.asarray(seconds) * 1000.0
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "mean": float(ms.mean())}


def reference_answers(url, pairs, route=SQUAD):
    """Each question (item of `route`) answered once, one at a time: [(text, start, end)] (`route.key` of
    each reply) in order.

    Raises:
      RuntimeError: a question got no 200 (the benchmark cannot judge answers without a reference).
    """
    out = []
    with httpx.Client(timeout=REQUEST_TIMEOUT_S) as client:
        for item in pairs:
            reply = client.post(f"{url}{route.path}", json=route.body(item))
            if reply.status_code != 200:
                raise RuntimeError(f"reference request failed with {reply.status_code}: {reply.text[:300]}")
            out.append(route.key(reply.json()))
    return out


def drive(url, pairs, expected, clients, seconds, max_requests, route=SQUAD):
    """`clients` threads, each with its own keep-alive connection, sending single questions round-robin
    until `seconds` pass or `max_requests` were sent in all.

    Returns:
      dict: sent, answered (200 and equal to `expected`), latencies (s, of answered requests), elapsed (s),
      and the lost ones by cause: wrong (200, other answer), status ({code: count}), transport (no answer).
    """
    counter, lock = itertools.count(), threading.Lock()
    records = []
    deadline = time.monotonic() + seconds

    def client_loop():
        mine = []
        with httpx.Client(timeout=REQUEST_TIMEOUT_S) as client:
            while time.monotonic() < deadline:
                with lock:
                    index = next(counter)
                if index >= max_requests:
                    break
                body = route.body(pairs[index % len(pairs)])
                began = time.perf_counter()
                try:
                    reply = client.post(f"{url}{route.path}", json=body)
                except httpx.HTTPError as err:
                    mine.append(("transport", type(err).__name__, 0.0))
                    continue
                took = time.perf_counter() - began
                if reply.status_code != 200:
                    mine.append(("status", reply.status_code, took))
                elif route.key(reply.json()) != expected[index % len(pairs)]:
                    mine.append(("wrong", None, took))
                else:
                    mine.append(("ok", None, took))
        with lock:
            records.extend(mine)

    started = time.monotonic()
    threads = [threading.Thread(target=client_loop, name=f"client-{i}") for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    status = {}
    for kind, code, _ in records:
        if kind == "status":
            status[str(code)] = status.get(str(code), 0) + 1
    latencies = [took for kind, _, took in records if kind == "ok"]
    return {"sent": len(records), "answered": len(latencies), "latencies": latencies, "elapsed": elapsed,
            "wrong": sum(kind == "wrong" for kind, _, _ in records), "status": status,
            "transport": sum(kind == "transport" for kind, _, _ in records)}


def _metrics(url):
    return httpx.get(f"{url}/v1/metrics", timeout=REQUEST_TIMEOUT_S).json()["batching"]


def load_phase(args, pairs, log_dir):
    """Phases 1 and 2 on a server with `--threads` threads (and `--server-cpus`)."""
    server = ServerProcess(args.model_dir, log_dir / "server_load.log", "--threads", str(args.threads),
                           "--max-batch-size", str(args.max_batch_size), "--max-wait-ms", str(args.max_wait_ms),
                           "--max-queue", str(max(64, 2 * args.clients)), cpus=args.server_cpus)
    try:
        expected = reference_answers(server.url, pairs, args.route)
        if args.warmup_seconds:
            drive(server.url, pairs, expected, args.clients, args.warmup_seconds, args.max_requests, args.route)
        before = _metrics(server.url)
        result = drive(server.url, pairs, expected, args.clients, args.seconds, args.max_requests, args.route)
        after = _metrics(server.url)
    finally:
        status = server.stop()
    batches = after["batches"] - before["batches"]
    answered = after["answered"] - before["answered"]
    result.update(batches=batches, mean_batch=answered / batches if batches else float("nan"),
                  largest_batch=after["largest_batch"], exit_status=status)
    return result, expected


def single_phase(args, pairs, expected, log_dir):
    """Phase 3: one client against a server on one core and one thread, no batching wait."""
    server = ServerProcess(args.model_dir, log_dir / "server_single.log", "--threads", "1", "--max-wait-ms", "0",
                           cpus=args.single_cpus, env={"OMP_NUM_THREADS": "1"})
    try:
        result = drive(server.url, pairs, expected, 1, args.single_seconds, args.max_requests, args.route)
    finally:
        result["exit_status"] = server.stop()
    return result


def _timed_calls(predictor, batches, seconds, max_calls, call=SQUAD.direct):
    """Seconds of each `call(predictor, batch)` (e.g. predictor.answer(batch)), round-robin over `batches`,
    for `seconds`."""
    for batch in batches:  # warm-up: the first run of each padded shape builds its oneDNN kernels
        call(predictor, batch)
    latencies, deadline = [], time.monotonic() + seconds
    for index in itertools.count():
        if time.monotonic() >= deadline or index >= max_calls:
            break
        began = time.perf_counter()
        call(predictor, batches[index % len(batches)])
        latencies.append(time.perf_counter() - began)
    return latencies


def direct_phase(args, pairs):
    """Phase 4 (baselines, in this process, after the servers stopped): QAPredictor.answer (GLUE:
    ClassifierPredictor.classify)
      - on batches of --max-batch-size questions with --threads threads (on --server-cpus): questions/s, the
        ceiling of the load phase's requests/s;
      - on one question at a time, one thread, on the one-core budget of phase 3: the latency the single
        phase would have without HTTP.
    Returns {"batched_questions_per_second", "batch_calls", "latencies" (single, s)}."""
    from inference.predictor import load_predictor

    os.sched_setaffinity(0, args.server_cpus or os.sched_getaffinity(0))
    batched = load_predictor(args.model_dir, threads=args.threads)
    size = args.max_batch_size
    batches = [pairs[i:i + size] for i in range(0, len(pairs) - size + 1, size)] or [pairs]
    calls = _timed_calls(batched, batches, args.seconds, args.max_requests, args.route.direct)
    rate = sum(len(batches[i % len(batches)]) for i in range(len(calls))) / max(sum(calls), 1e-9)
    del batched
    os.sched_setaffinity(0, args.single_cpus)
    single = load_predictor(args.model_dir, threads=1)
    latencies = _timed_calls(single, [[pair] for pair in pairs], args.single_seconds, args.max_requests,
                             args.route.direct)
    return {"batched_questions_per_second": rate, "batch_calls": len(calls), "latencies": latencies}


def _cpus(text, flag):
    try:
        cpus = {int(part) for part in text.split(",") if part.strip()}
    except ValueError:
        raise argparse.ArgumentTypeError(f"{flag}: expected CPU ids like 0 or 0,1, got {text!r}") from None
    allowed = os.sched_getaffinity(0)
    if not cpus or not cpus <= allowed:
        raise argparse.ArgumentTypeError(f"{flag}: CPUs {sorted(cpus)} are not all usable here "
                                         f"(usable: {sorted(allowed)})")
    return cpus


def parse_args(argv):
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", required=True, help="export directory (python -m inference.export)")
    p.add_argument("--squad-file", default=str(DEFAULT_SQUAD), help="SQuAD JSON the questions come from "
                                                                    "(default: the repo's sample dev file)")
    p.add_argument("--glue-file", default=None, help="GLUE export: the TSV file (of its task, e.g. MRPC "
                                                     "dev.tsv) whose rows are the texts classified")
    p.add_argument("--questions", type=int, default=64, help="distinct questions (GLUE: rows) used, 0 = all "
                                                             "(default 64)")
    p.add_argument("--clients", type=int, default=8, help="concurrent clients of the load phase (default 8)")
    p.add_argument("--seconds", type=float, default=20.0, help="timed load phase (default 20)")
    p.add_argument("--warmup-seconds", type=float, default=3.0, help="untimed load first (default 3)")
    p.add_argument("--threads", type=int, default=2, help="server math threads in the load phase (default 2)")
    p.add_argument("--server-cpus", type=lambda t: _cpus(t, "--server-cpus"), default=None,
                   help="CPU ids the load-phase server may use, e.g. 0,1 (default: all)")
    p.add_argument("--max-batch-size", type=int, default=8, help="server --max-batch-size (default 8)")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="server --max-wait-ms (default 5)")
    p.add_argument("--single-seconds", type=float, default=10.0, help="timed single-question phase (default 10)")
    p.add_argument("--single-cpus", type=lambda t: _cpus(t, "--single-cpus"), default=None,
                   help="the one-core budget of phases 3 and 4 (default: the first usable CPU)")
    p.add_argument("--max-requests", type=int, default=100000, help="bound on requests per phase")
    p.add_argument("--skip-direct", action="store_true", help="leave out the in-process predictor baseline")
    p.add_argument("--log-dir", default=None, help="where the servers' logs go (default: a temporary dir)")
    p.add_argument("--report-file", default=None, help="also write the figures as JSON here")
    args = p.parse_args(argv)
    if not os.path.isdir(args.model_dir):
        raise ValueError(f"--model-dir {args.model_dir} does not exist or is not a directory")
    for name in ("questions", "max_requests"):
        if getattr(args, name) < (0 if name == "questions" else 1):
            raise ValueError(f"--{name.replace('_', '-')} must be >= {0 if name == 'questions' else 1}")
    for name in ("clients", "threads", "max_batch_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("seconds", "single_seconds", "warmup_seconds", "max_wait_ms"):
        if not getattr(args, name) >= (0 if name in ("warmup_seconds", "max_wait_ms") else 0.1):
            raise ValueError(f"--{name.replace('_', '-')} is out of range: {getattr(args, name)}")
    if args.single_cpus is None:
        args.single_cpus = {min(os.sched_getaffinity(0))}
    args.route = CLASSIFY if args.glue_file else SQUAD
    return args


def summarize(args, load, single, direct):
    """The figures as one JSON-able dict (latencies in ms)."""
    lost = load["sent"] - load["answered"]
    out = {"route": args.route.path, "clients": args.clients, "seconds": args.seconds, "threads": args.threads,
           "max_batch_size": args.max_batch_size, "max_wait_ms": args.max_wait_ms,
           "load": {"sent": load["sent"], "answered": load["answered"], "lost": lost, "wrong": load["wrong"],
                    "refused_or_failed": load["status"], "transport_failures": load["transport"],
                    "requests_per_second": load["answered"] / load["elapsed"], "batches": load["batches"],
                    "mean_batch": load["mean_batch"], "largest_batch": load["largest_batch"],
                    "server_exit_status": load["exit_status"], "latency_ms": percentiles_ms(load["latencies"])},
           "single": {"cpus": sorted(args.single_cpus), "sent": single["sent"], "answered": single["answered"],
                      "lost": single["sent"] - single["answered"], "server_exit_status": single["exit_status"],
                      "latency_ms": percentiles_ms(single["latencies"])}}
    if direct is not None:
        out["direct"] = {"cpus": sorted(args.single_cpus), "calls": len(direct["latencies"]),
                         "latency_ms": percentiles_ms(direct["latencies"]),
                         "batched_questions_per_second": direct["batched_questions_per_second"],
                         "batch_calls": direct["batch_calls"]}
    return out


def report(summary, questions):
    """Print the figures (stdout, as the other benchmarks)."""
    load, single, cfg = summary["load"], summary["single"], summary
    lat, one = load["latency_ms"], single["latency_ms"]
    print(f"load: {cfg['clients']} clients x {cfg['seconds']:g} s, {questions} distinct questions, server "
          f"{cfg['threads']} threads, batches <= {cfg['max_batch_size']}, wait <= {cfg['max_wait_ms']:g} ms")
    print(f"  {load['requests_per_second']:.2f} requests/s; latency p50 {lat['p50']:.1f} ms, p90 {lat['p90']:.1f} "
          f"ms, p99 {lat['p99']:.1f} ms; {load['batches']} batches, mean {load['mean_batch']:.2f} questions "
          f"(largest {load['largest_batch']})")
    print(f"  sent {load['sent']}, answered correctly {load['answered']}, LOST {load['lost']} (wrong answers "
          f"{load['wrong']}, refused/failed {load['refused_or_failed'] or 0}, transport {load['transport_failures']})")
    print(f"single question, server on CPU {single['cpus']} with 1 thread: p50 {one['p50']:.1f} ms, p90 "
          f"{one['p90']:.1f} ms, p99 {one['p99']:.1f} ms over {single['answered']} requests (lost {single['lost']})")
    if "direct" not in summary:
        return
    direct = summary["direct"]
    rate, d = direct["batched_questions_per_second"], direct["latency_ms"]
    squad = summary.get("route", SQUAD.path) == SQUAD.path
    name = "QAPredictor.answer" if squad else "ClassifierPredictor.classify"
    print(f"baseline, {name} in-process, batches of {cfg['max_batch_size']}, {cfg['threads']} threads: "
          f"{rate:.2f} questions/s (the load phase reached {load['requests_per_second'] / rate:.0%} of it)")
    print(f"baseline, {name} in-process, one question, same core and thread: p50 {d['p50']:.1f} ms, "
          f"p90 {d['p90']:.1f} ms, p99 {d['p99']:.1f} ms over {direct['calls']} calls (the server adds "
          f"{one['p50'] - d['p50']:.1f} ms at p50)")


def main(argv=None):
    """Run the phases; returns the summary dict. Raises ValueError for bad flags or files."""
    args = parse_args(argv)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request would cost under load
    pairs = (load_texts(args.glue_file, args.model_dir, args.questions) if args.glue_file
             else load_questions(args.squad_file, args.questions))
    with tempfile.TemporaryDirectory(prefix="bench_server_") as tmp:
        log_dir = Path(args.log_dir or tmp)
        log_dir.mkdir(parents=True, exist_ok=True)
        logger.info("load phase: %d clients for %g s (+%g s warm-up)", args.clients, args.seconds,
                    args.warmup_seconds)
        load, expected = load_phase(args, pairs, log_dir)
        logger.info("single-question phase: %g s on CPU %s", args.single_seconds, sorted(args.single_cpus))
        single = single_phase(args, pairs, expected, log_dir)
    direct = None if args.skip_direct else direct_phase(args, pairs)
    summary = summarize(args, load, single, direct)
    report(summary, len(pairs))
    if args.report_file:
        atomic_write_json(args.report_file, summary)
    return summary


if __name__ == "__main__":
    sys.exit(run_cli(main))
