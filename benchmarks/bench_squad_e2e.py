"""Benchmark: end-to-end SQuAD prediction of a fine-tuned model, the executor path of before vs the predictor.

Owns: timing, on the same windows and interleaved chunk by chunk (the machine is shared: a load change
hits both routes alike), (1) the training-time eval program in `paddle.static.Executor` with per-batch
trimming in feature order (`tasks.squad.predict_logits`, what run_squad did before `inference.predictor`)
and (2) `QAPredictor` with length bucketing in each precision given (fp32, int8 when the export has an
int8 copy, bf16 where the CPU runs it); then post-processing and EM/F1 of each route over the same
questions. Features are built once and shared (their cost is the same for every route and is printed).
Does not own: any of the pieces it times.

Usage (from the repo root):
  OMP_NUM_THREADS=2 python -m benchmarks.bench_squad_e2e --checkpoint results/custom/squad \
      --export-dir export/squad --predict-file dev-v1.1.json --vocab-file vocab.txt --do-lower-case \
      [--questions 2000] [--chunks 4] [--precisions fp32,int8] [--batch-size 8] [--output report.json]
"""
import zlib  # noqa: F401  -- before paddle: libpaddle's own zlib symbols crash later zlib users
import utils.preflight  # noqa: F401  -- OMP threads default, MKL path; must stay before paddle

import logging
import os
import sys
import time

import numpy as np
from utils.cli import ArgumentParser

logger = logging.getLogger("bench_squad_e2e")


def _subset(features, rows):
    """SquadFeatures restricted to `rows` (keeps example_index, so post-processing sees all windows)."""
    import dataclasses

    return dataclasses.replace(features, **{f.name: getattr(features, f.name)[rows]
                                            for f in dataclasses.fields(features) if f.name != "id_to_token"})


def main(argv=None):
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="fine-tuned .pdparams dir (the executor route)")
    parser.add_argument("--export-dir", required=True, help="its export (python -m inference.export)")
    parser.add_argument("--predict-file", required=True, help="SQuAD JSON with answers to predict and score")
    parser.add_argument("--vocab-file", required=True, help="the model's vocab.txt")
    parser.add_argument("--do-lower-case", action="store_true", help="uncased vocab")
    parser.add_argument("--questions", type=int, default=0, help="first N questions (0 = all)")
    parser.add_argument("--chunks", type=int, default=4, help="interleave the routes over this many chunks")
    parser.add_argument("--precisions", default="fp32,int8", help="predictor precisions to time, comma-separated")
    parser.add_argument("--batch-size", type=int, default=8, help="windows per batch")
    parser.add_argument("--output", default=None, help="JSON file for the results")
    args = parser.parse_args(argv)

    import paddle

    import program
    from data.features.squad import FeatureParams, load_or_build_features
    from inference import model_dir as layout
    from inference.predictor import QAPredictor
    from inference.quantize import first_questions
    from tasks import finetune_config as finetune
    from tasks import squad_metrics
    from tasks.squad import predict_logits
    from tasks.squad_postprocess import postprocess_predictions
    from utils.weights import init_parameters
    from utils.logger import init_logging

    init_logging()
    path = first_questions(args.predict_file, args.questions) if args.questions else args.predict_file
    s = layout.read_settings(args.export_dir)
    begin = time.perf_counter()
    examples, features = load_or_build_features(path, args.vocab_file, args.do_lower_case,
                                                FeatureParams(s.max_seq_length, s.doc_stride, s.max_query_length),
                                                is_training=False)
    feature_time = time.perf_counter() - begin
    logger.info("%d questions, %d windows (features %.1f s)", len(examples), len(features), feature_time)

    cfg = finetune.model_config("custom", None, args.vocab_file, args.checkpoint)
    paddle.enable_static()
    exe, scope = paddle.static.Executor(paddle.CPUPlace()), paddle.static.Scope()
    bundle = program.build_squad(cfg, program.TrainConfig(), is_training=False)
    with paddle.static.scope_guard(scope):
        exe.run(bundle.startup_program)
        init_parameters(exe, bundle.main_program, args.checkpoint, require_head=True, vocab_size=cfg.vocab_size)
    routes = {"executor": None}
    for precision in [p for p in args.precisions.split(",") if p]:
        try:
            routes[precision] = QAPredictor.load(args.export_dir, precision=precision, batch_size=args.batch_size)
        except ValueError as err:
            logger.warning("%s skipped: %s", precision, err)
    n, length = len(features), features.max_seq_length
    logits = {r: (np.zeros((n, length), np.float32), np.zeros((n, length), np.float32)) for r in routes}
    seconds = dict.fromkeys(routes, 0.0)
    # chunk boundaries fall between examples, so each chunk holds whole examples
    bounds = np.searchsorted(features.example_index, np.linspace(0, len(examples), args.chunks + 1).astype(int))
    for c in range(args.chunks):
        rows = np.arange(bounds[c], bounds[c + 1])
        if not len(rows):
            continue
        part = _subset(features, rows)
        for route, predictor in routes.items():
            t = time.perf_counter()
            if predictor is None:
                with paddle.static.scope_guard(scope):
                    start, end, _ = predict_logits(exe, bundle.eval_program, bundle.eval_fetches, part, args.batch_size)
            else:
                start, end, _ = predictor.predict_logits(part)
            seconds[route] += time.perf_counter() - t
            logits[route][0][rows], logits[route][1][rows] = start, end
        logger.info("chunk %d/%d: %s", c + 1, args.chunks, ", ".join(f"{r} {v:.1f} s" for r, v in seconds.items()))
    results = {"questions": len(examples), "windows": n, "feature_seconds": feature_time, "routes": {}}
    for route in routes:
        t = time.perf_counter()
        preds, _, _ = postprocess_predictions(examples, features, *logits[route], do_lower_case=args.do_lower_case)
        post = time.perf_counter() - t
        scores = squad_metrics.evaluate_v1(path, preds)
        results["routes"][route] = {"inference_seconds": seconds[route], "postprocess_seconds": post,
                                    "sequences_per_second": n / seconds[route],
                                    "end_to_end_seconds": feature_time + seconds[route] + post,
                                    "exact_match": scores["exact_match"], "F1": scores["f1"]}
    base = results["routes"]["executor"]
    for route, r in results["routes"].items():
        r["speedup_inference"] = base["inference_seconds"] / r["inference_seconds"]
        r["speedup_end_to_end"] = base["end_to_end_seconds"] / r["end_to_end_seconds"]
        print(f"{route:9s} inference {r['inference_seconds']:8.1f} s ({r['sequences_per_second']:6.1f} seq/s, "
              f"x{r['speedup_inference']:.2f})  end-to-end {r['end_to_end_seconds']:8.1f} s "
              f"(x{r['speedup_end_to_end']:.2f})  EM {r['exact_match']:.2f}  F1 {r['F1']:.2f}")
    if path != args.predict_file:
        os.unlink(path)
    if args.output:
        from utils.fs import atomic_write_json
        atomic_write_json(args.output, results)
    return results


if __name__ == "__main__":
    main()
    sys.exit(0)
