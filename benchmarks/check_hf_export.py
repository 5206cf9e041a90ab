"""Check an HF export against our predictor: `transformers` loads the directory `inference.export --format hf`
wrote, and its start/end logits on real SQuAD dev windows equal our Paddle Inference predictor's to 1e-4.

Owns: the comparison only: windows from our featurizer (the export's own settings), our logits from
`inference.predictor.QAPredictor`, HF's from `AutoModelForQuestionAnswering.from_pretrained` in a child process
(`benchmarks.torch_worker`: torch and paddle each bring an OpenMP runtime), max |delta| over every real
(non-padding) position, and the HF tokenizer's ids of the questions against ours. Exit 0 when both agree,
1 when not. Needs `torch` and `transformers` (installed, or apart with `--hf-path`); the test suite does not
run it (neither is in the project's environment).

Usage (from the repo root), for one fine-tuned SQuAD run:
  python -m inference.export --checkpoint results/bert-large-uncased/squad --output-dir export/squad \
      --vocab-file vocab/bert-large-uncased-vocab.txt --do-lower-case
  python -m inference.export --format hf --checkpoint results/bert-large-uncased/squad --output-dir hf/squad \
      --vocab-file vocab/bert-large-uncased-vocab.txt --do-lower-case
  python -m benchmarks.check_hf_export --export-dir export/squad --hf-dir hf/squad --predict-file dev-v1.1.json \
      [--questions 64] [--tolerance 1e-4] [--hf-path DIR]
"""
import zlib  # noqa: F401  -- before paddle: libpaddle's own zlib symbols crash later zlib users
import utils.preflight  # noqa: F401  -- OMP threads default, MKL path; must stay before paddle

import argparse
import json
import os
import sys
import tempfile

import numpy as np


def hf_worker(spec):
    """In the child: HF's start/end logits of the windows in spec["windows"] (npz), written to spec["out"],
    and its tokenizer's ids of spec["questions"]; prints one JSON line."""
    import torch
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    torch.set_num_threads(spec["threads"])
    model = AutoModelForQuestionAnswering.from_pretrained(spec["hf_dir"]).eval()
    tokenizer = AutoTokenizer.from_pretrained(spec["hf_dir"])
    windows = np.load(spec["windows"])
    starts, ends = [], []
    with torch.inference_mode():
        for begin in range(0, len(windows["input_ids"]), spec["batch_size"]):
            rows = slice(begin, begin + spec["batch_size"])
            out = model(**{k: torch.from_numpy(windows[k][rows]) for k in ("input_ids", "token_type_ids",
                                                                          "attention_mask")})
            starts.append(out.start_logits.numpy())
            ends.append(out.end_logits.numpy())
    np.savez(spec["out"], start=np.concatenate(starts), end=np.concatenate(ends))
    ids = [tokenizer(q, add_special_tokens=False)["input_ids"] for q in spec["questions"]]
    print(json.dumps({"question_ids": ids, "torch": torch.__version__}))


def build_parser():
    from utils.cli import ArgumentParser

    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export-dir", required=True, help="the SQuAD model exported by python -m inference.export")
    parser.add_argument("--hf-dir", required=True, help="the same model exported with --format hf")
    parser.add_argument("--predict-file", required=True, help="SQuAD dev JSON (e.g. dev-v1.1.json)")
    parser.add_argument("--questions", type=int, default=64, help="first questions of --predict-file used")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="largest |delta logit| accepted")
    parser.add_argument("--batch-size", type=int, default=8, help="windows per run")
    parser.add_argument("--threads", type=int, default=None, help="default: this process's share of the cores")
    parser.add_argument("--hf-path", default=None, help="directory holding torch + transformers (pip install "
                                                        "--target DIR), put on the worker's PYTHONPATH only")
    parser.add_argument("--hf-worker", default=None, help=argparse.SUPPRESS)
    return parser


def _hf_logits(args, windows, questions):
    """(start, end, question ids) from transformers in a child process; ValueError when it could not run."""
    from benchmarks.torch_worker import run_torch_worker

    with tempfile.TemporaryDirectory() as tmp:
        np.savez(os.path.join(tmp, "windows.npz"), **windows)
        spec = {"hf_dir": os.path.abspath(args.hf_dir), "windows": os.path.join(tmp, "windows.npz"),
                "out": os.path.join(tmp, "hf.npz"), "questions": questions, "threads": args.threads,
                "batch_size": args.batch_size}
        result = run_torch_worker("benchmarks.check_hf_export", spec, args.threads, args.hf_path)
        if result is None:
            raise ValueError("transformers could not load or run --hf-dir (the warning above says why)")
        out = np.load(spec["out"])
        return out["start"], out["end"], result["question_ids"]


def compare(args):
    """Our predictor's logits and HF's on the same windows. Returns the report dict (max deltas, counts)."""
    from data.features.squad import batch_of_rows, read_examples
    from inference.predictor import QAPredictor, default_threads

    args.threads = args.threads or default_threads()
    predictor = QAPredictor.load(args.export_dir, threads=args.threads, precision="fp32")  # parity is in fp32
    examples = read_examples(args.predict_file, is_training=False)[:args.questions]
    features = predictor.featurize(examples)
    start, end, _ = predictor.predict_logits(features, bucket=False)
    feed = batch_of_rows(features, np.arange(len(features)), is_training=False)
    windows = {"input_ids": feed["input_ids"], "token_type_ids": feed["token_type_ids"],
               "attention_mask": feed["attention_mask"][:, 0, 0, :]}
    questions = [e.question_text for e in examples]
    hf_start, hf_end, hf_ids = _hf_logits(args, windows, questions)
    real = windows["attention_mask"].astype(bool)
    ours_ids = [predictor.tokenizer.convert_tokens_to_ids(predictor.tokenizer.tokenize(q)) for q in questions]
    report = {"windows": len(features), "questions": len(examples),
              "max_abs_start_diff": float(np.abs(start - hf_start)[real].max()),
              "max_abs_end_diff": float(np.abs(end - hf_end)[real].max()),
              "questions_tokenized_differently": sum(list(a) != list(b) for a, b in zip(ours_ids, hf_ids))}
    report["ok"] = (max(report["max_abs_start_diff"], report["max_abs_end_diff"]) <= args.tolerance
                    and report["questions_tokenized_differently"] == 0)
    return report


def main(argv=None):
    """Print the comparison as one JSON line; exit status 1 (SystemExit) when the two disagree."""
    report = compare(build_parser().parse_args(argv))
    print(json.dumps(report))
    if not report["ok"]:
        raise SystemExit(1)
    return report


def cli(argv=None):
    """The command: 0 agree, 1 disagree, 2 with one `error:` line for bad input or no transformers."""
    from utils.cli import run_cli

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--hf-worker"]:  # the child: transformers only
        hf_worker(json.loads(argv[1]))
        return 0
    return run_cli(main, argv)


if __name__ == "__main__":
    sys.exit(cli())
