"""Command-line flags shared by run_pretraining.py, run_squad.py and run_glue.py, and their validation helpers.

Owns: the flag groups both programs have (model, runtime, AMP, optimizer, benchmark), with the NVIDIA
reference's names, defaults and meanings plus our additions (`--device`, `--amp-dtype`); the one definition
of `--max-seq-length` (`add_max_seq_length`; each program gives its own default and help); `str2bool`;
resolving `--bert-model` / `--config-file` / `--vocab-file` into a `modeling.BertConfig`; turning the AMP
flags into `program.TrainConfig` fields. Does not own: task-specific flags or cross-flag rules of one
program (each run script validates its own in one function), building or running anything.

Errors are `ValueError`s naming the flag; the run scripts print them as one line and exit 2.
"""
import argparse
import json
import math
import os
import sys

from modeling import BertConfig
from optimizer import OPTIMIZERS, REMOVED_OPTIMIZERS
from tokenizer import load_vocab
from utils.cli import ArgumentParser

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(REPO_ROOT, "bert_configs")


class Parser(ArgumentParser):
    """utils.cli.ArgumentParser (every default in --help) that also accepts the underscore spellings of its long options (`--do_train` for
    `--do-train`), as the NVIDIA reference's and Hugging Face's scripts spell them: their users type them."""

    def _long_option(self, token):
        name, sep, value = token.partition("=")
        if not name.startswith("--") or "_" not in name:
            return token
        dashed = "--" + name[2:].replace("_", "-")
        return dashed + sep + value if dashed in self._option_string_actions else token

    def parse_known_args(self, args=None, namespace=None):
        args = list(sys.argv[1:] if args is None else args)
        if "--" in args:  # nothing after a bare "--" is an option
            cut = args.index("--")
            args = [self._long_option(a) for a in args[:cut]] + args[cut:]
        else:
            args = [self._long_option(a) for a in args]
        return super().parse_known_args(args, namespace)


def _positive_int(value):
    """argparse type of a count that must be >= 1."""
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value!r}")
    return number


def str2bool(value):
    """argparse type for the reference's `--flag true|false` options."""
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "y", "on"):
        return True
    if text in ("0", "false", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def _optimizer_name(value):
    """argparse type of --optimizer: a removed optimizer is refused with its reason (not 'invalid choice')."""
    if value in REMOVED_OPTIMIZERS:
        raise argparse.ArgumentTypeError(REMOVED_OPTIMIZERS[value])
    return value


def bert_model_choices():
    """Model names with a config in bert_configs/ (e.g. bert-large-uncased, bert-tiny), plus custom."""
    names = sorted(n[:-len(".json")] for n in os.listdir(CONFIG_DIR) if n.endswith(".json"))
    return names + ["custom"]


def known_model_name(config_dict):
    """The bert_configs/ name whose JSON equals `config_dict`; with another vocab_size, the one config of
    that architecture; else "custom".

    Why: a checkpoint records its architecture (bert_config.json), not the name it was trained under;
    outputs go to <output-dir>/<bert-model>/, so a run that reads the architecture from the checkpoint
    must not file it under a default name that describes another model.
    """
    exact, same_architecture = [], []
    for name in bert_model_choices()[:-1]:
        with open(os.path.join(CONFIG_DIR, f"{name}.json"), encoding="utf-8") as f:
            known = json.load(f)
        if all(config_dict.get(k) == v for k, v in known.items() if k != "vocab_size"):
            same_architecture.append(name)
            if config_dict.get("vocab_size") == known.get("vocab_size"):
                exact.append(name)
    if exact:
        return exact[0]
    # Another vocab on a known architecture (e.g. bert-tiny with a corpus's own 8192-token vocab) keeps the
    # architecture's name when only one config has it (bert-base-cased/uncased differ only in their vocab).
    return same_architecture[0] if len(same_architecture) == 1 else "custom"


# BertConfig fields the parameter shapes fix (vocab_size comes from --vocab-file); num_attention_heads is not
# among them, so a match by shapes is trusted only when one bert_configs/ architecture fits.
_SHAPE_FIELDS = ("hidden_size", "num_hidden_layers", "intermediate_size", "max_position_embeddings",
                 "type_vocab_size")


def dims_from_shapes(shapes):
    """The `_SHAPE_FIELDS` of a BERT from its parameter shapes ({our name: shape}), or None if it is not one.

    Our layout: Linear weights are [in, out], so `intermediate.dense.weight` is [hidden, intermediate].
    """
    try:
        layers = {int(n.split(".")[3]) for n in shapes if n.startswith("bert.encoder.layer.")}
        return {"hidden_size": shapes["bert.embeddings.word_embeddings.weight"][1],
                "num_hidden_layers": len(layers),
                "intermediate_size": shapes["bert.encoder.layer.0.intermediate.dense.weight"][1],
                "max_position_embeddings": shapes["bert.embeddings.position_embeddings.weight"][0],
                "type_vocab_size": shapes["bert.embeddings.token_type_embeddings.weight"][0]}
    except (KeyError, IndexError, ValueError):
        return None


def model_names_with_shapes(shapes):
    """The bert_configs/ names whose architecture has these parameter shapes; several names can share one
    architecture (bert-base-cased and -uncased differ only in their vocab), hence a list.

    Why: a step directory written before checkpoints carried bert_config.json says nothing else about its
    model, and "lacks parameter(s) [...]" from the default bert-large-uncased helps nobody.
    """
    dims = dims_from_shapes(shapes)
    if dims is None:
        return []
    names = []
    for name in bert_model_choices()[:-1]:
        with open(os.path.join(CONFIG_DIR, f"{name}.json"), encoding="utf-8") as f:
            known = json.load(f)
        if all(known.get(k) == v for k, v in dims.items()):
            names.append(name)
    return names


def architecture_differences(a, b):
    """"" if two config dicts describe the same network, else what differs ("parameter shapes differ:
    hidden_size 256 vs 128, ..."). Dropout and init range may differ: they change neither which parameters
    exist nor what the attention computes."""
    shapes = [f"{k} {a.get(k)} vs {b.get(k)}" for k in (*_SHAPE_FIELDS, "vocab_size") if a.get(k) != b.get(k)]
    others = [f"{k} {a.get(k)} vs {b.get(k)}" for k in ("num_attention_heads", "hidden_act") if a.get(k) != b.get(k)]
    return ", ".join(([f"parameter shapes differ: {shapes[0]}"] + shapes[1:] if shapes else []) + others)


def add_model_args(parser, default_model="bert-large-uncased", default_help=None):
    """--bert-model, --config-file, --vocab-file, --model-prefix.

    `default_model=None` lets the caller tell "not given" from the default; `default_help` then says in
    --help what the default is.
    """
    group = parser.add_argument_group("Model")
    group.add_argument("--bert-model", default=default_model, choices=bert_model_choices(),
                       help="BERT architecture; 'custom' needs --config-file (default: "
                            f"{default_help or '%(default)s'})")
    group.add_argument("--config-file", default=None,
                       help="BERT config JSON; default bert_configs/<--bert-model>.json")
    group.add_argument("--vocab-file", default=None, required=True,
                       help="WordPiece vocab the data was tokenised with; its size sets vocab_size")
    group.add_argument("--model-prefix", default="bert_paddle",
                       help="file name prefix of saved parameters (default: %(default)s)")
    return group


def add_runtime_args(parser, benchmark_steps=20, benchmark_warmup=20, report_default=None):
    """--device, --seed, --num-threads, --report-file, --show-config, --enable-cpu-affinity, --benchmark*.

    `report_default` says in --help where the report goes without --report-file, for an entry point without
    an --output-dir (the default text names the training ones' places).
    """
    group = parser.add_argument_group("Runtime")
    group.add_argument("--device", default="auto", choices=("auto", "gpu", "cpu"),
                       help="where to run; auto = GPU when usable, else CPU (default: %(default)s)")
    group.add_argument("--seed", type=int, default=42, help="random seed (default: %(default)s)")
    group.add_argument("--num-threads", type=_positive_int, default=None,
                       help="CPU threads per process (OpenMP/MKL; default: OMP_NUM_THREADS when set, else the "
                            "usable cores shared among this node's processes). Read at start-up, before "
                            "Paddle loads (utils.preflight): a run started in-process keeps its threads")
    group.add_argument("--report-file", default=None,
                       help="DLLogger JSON-lines report, written by rank 0 (default: " + (report_default or
                            "report.json beside the run's outputs: <output-dir>/<bert-model>/phase<N>/ when "
                            "pretraining, <output-dir>/<bert-model>/squad/ for SQuAD, "
                            "<output-dir>/<bert-model>/glue/<Task>/ for GLUE") + ")")
    group.add_argument("--show-config", type=str2bool, default=True,
                       help="log every argument at start (default: %(default)s)")
    group.add_argument("--enable-cpu-affinity", type=str2bool, default=True,
                       help="pin each GPU process to the CPU cores near its GPU (default: %(default)s)")
    group.add_argument("--benchmark", action="store_true",
                       help="measure throughput: warm up, time, write no checkpoint")
    group.add_argument("--benchmark-steps", type=int, default=benchmark_steps,
                       help="measured steps with --benchmark (default: %(default)s)")
    group.add_argument("--benchmark-warmup-steps", type=int, default=benchmark_warmup,
                       help="unmeasured steps first with --benchmark (default: %(default)s)")
    return group


def add_optimizer_args(parser, optimizer="Lamb", learning_rate=1e-4, warmup_proportion=0.01,
                       weight_decay=0.01):
    """--optimizer, --gradient-merge-steps, --learning-rate, --warmup-*, --beta1/2, --epsilon, --weight-decay."""
    group = parser.add_argument_group("Training")
    group.add_argument("--optimizer", default=optimizer, type=_optimizer_name, choices=OPTIMIZERS,
                       help="optimizer (default: %(default)s)")
    group.add_argument("--gradient-merge-steps", type=int, default=1,
                       help="micro-batches accumulated per update (default: %(default)s)")
    group.add_argument("--learning-rate", type=float, default=learning_rate,
                       help="peak learning rate (default: %(default)s)")
    group.add_argument("--warmup-start-lr", type=float, default=0.0,
                       help="learning rate of the first warm-up step (default: %(default)s)")
    group.add_argument("--warmup-proportion", type=float, default=warmup_proportion,
                       help="fraction of the updates spent warming up (default: %(default)s)")
    group.add_argument("--beta1", type=float, default=0.9, help="(default: %(default)s)")
    group.add_argument("--beta2", type=float, default=0.999, help="(default: %(default)s)")
    group.add_argument("--epsilon", type=float, default=1e-6, help="(default: %(default)s)")
    group.add_argument("--weight-decay", type=float, default=weight_decay,
                       help="decoupled weight decay; none on biases and LayerNorm (default: %(default)s)")
    return group


def add_max_seq_length(group, default, help_text):
    """--max-seq-length (int; each program its own default and help: 512 for pretraining, 384 for SQuAD windows,
    128 for GLUE). Its range is checked after parsing: > 0 by `require_positive`, and within the model's
    position embeddings by `tasks.config.check_fits_model`."""
    return group.add_argument("--max-seq-length", type=int, default=default, help=help_text)


def add_amp_args(parser):
    """--amp, --amp-dtype, --scale-loss, --use-dynamic-loss-scaling, --use-pure-fp16, --fuse-mha and the
    other fused paths (--fuse-qkv, --fuse-ffn, --fuse-residual-ln, --fuse-gemm-epilogue; all off by default)."""
    group = parser.add_argument_group("Advanced Training")
    group.add_argument("--amp", action="store_true", help="automatic mixed precision (GPU)")
    group.add_argument("--amp-dtype", default="float16", choices=("float16", "bfloat16"),
                       help="low-precision type under --amp (default: %(default)s)")
    group.add_argument("--scale-loss", type=float, default=None,
                       help="loss scale under --amp float16: the initial one with dynamic scaling, else the "
                            "fixed one (default: 2^15, dynamic)")
    group.add_argument("--use-dynamic-loss-scaling", type=str2bool, nargs="?", const=True, default=None,
                       help="grow/shrink the loss scale under --amp float16 (default: on, unless --scale-loss "
                            "alone asks for a fixed scale); overflowing steps are skipped either way")
    group.add_argument("--use-pure-fp16", action="store_true",
                       help="O2: fp16 parameters with fp32 master weights (needs --amp)")
    group.add_argument("--fuse-mha", action="store_true",
                       help="fastest fused attention this Paddle build offers (GPU)")
    group.add_argument("--fuse-qkv", action="store_true",
                       help="Q, K and V projections as one [H, 3H] GEMM (any device; same parameters)")
    group.add_argument("--fuse-ffn", action="store_true",
                       help="feed-forward block as one fused_feedforward op where its kernel exists (GPU)")
    group.add_argument("--fuse-residual-ln", action="store_true",
                       help="bias + dropout + residual add + LayerNorm as one fused_bias_dropout_residual_layer_norm "
                            "op where its kernel exists (GPU)")
    group.add_argument("--fuse-gemm-epilogue", action="store_true",
                       help="BuildStrategy.fuse_gemm_epilogue: matmul + bias (+ activation) as one cuBLASLt call "
                            "(GPU, CUDA builds)")
    return group


def fusion_fields(args):
    """`program.TrainConfig` fused-path fields (`program.FUSION_FLAGS`) from the parsed flags."""
    return {name: bool(getattr(args, name)) for name in ("fuse_qkv", "fuse_ffn", "fuse_residual_ln",
                                                         "fuse_gemm_epilogue")}


def amp_fields(args):
    """`program.TrainConfig` AMP fields from the parsed AMP flags.

    fp16 loss scaling: dynamic from 2^15 by default (as the NVIDIA reference always runs it; a scale of 1 would
    leave small fp16 gradients to underflow and skip the inf/NaN check). `--scale-loss X` alone is a fixed
    scale X, as in the reference; `--use-dynamic-loss-scaling` with it starts the dynamic scale at X;
    `--use-dynamic-loss-scaling false` fixes the scale at `--scale-loss` (default 2^15).

    A pure mapping: contradictions (e.g. --use-pure-fp16 without --amp float16) are refused by
    `program.TrainConfig`, the one place the AMP rules live, in the flags' words.
    """
    if not args.amp:
        return {"amp": "off", "use_pure_fp16": args.use_pure_fp16}
    if args.amp_dtype == "bfloat16":
        return {"amp": "bf16", "use_pure_fp16": args.use_pure_fp16}
    dynamic = args.use_dynamic_loss_scaling
    if dynamic is None:
        dynamic = args.scale_loss is None
    return {"amp": "fp16", "use_pure_fp16": args.use_pure_fp16, "scale_loss": args.scale_loss,
            "use_dynamic_loss_scaling": dynamic}


def require_existing(flag, path, kind="path"):
    """Raise ValueError naming `flag` unless `path` exists (kind "file" / "dir" / "path")."""
    check = {"file": os.path.isfile, "dir": os.path.isdir, "path": os.path.exists}[kind]
    if not check(path):
        raise ValueError(f"{flag} '{path}' does not exist" + ("" if kind == "path" else f" or is not a {kind}"))


def require_positive(args, *names, allow_zero=()):
    """Raise ValueError for the first `--name` that is not a finite positive (or, if allowed, zero) number."""
    for name in names:
        value = getattr(args, name)
        flag = "--" + name.replace("_", "-")
        if value is None or not (value >= 0 if name in allow_zero else value > 0):
            raise ValueError(f"{flag} must be {'>= 0' if name in allow_zero else '> 0'}, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"{flag} must be a finite number, got {value!r}")


def resolve_bert_config(bert_model, config_file, vocab_file, vocab_size=None):
    """The model config for `--bert-model` / `--config-file`, with vocab_size from `--vocab-file`.

    Args:
      vocab_size: the vocab's size when the caller has read it already (`tasks.config.VocabInfo.size`,
        so one validation reads the file once); None reads `vocab_file` here.

    Returns:
      (modeling.BertConfig, config path used, vocab size).

    Raises:
      ValueError: custom without --config-file, a missing or invalid config/vocab file.
    """
    if config_file is None:
        if bert_model == "custom":
            raise ValueError("--bert-model custom needs --config-file")
        config_file = os.path.join(CONFIG_DIR, f"{bert_model}.json")
    require_existing("--config-file", config_file, "file")
    require_existing("--vocab-file", vocab_file, "file")
    if vocab_size is None:
        vocab_size = len(load_vocab(vocab_file))
    if vocab_size == 0:
        raise ValueError(f"--vocab-file '{vocab_file}' is empty")
    return BertConfig.from_json_file(config_file).with_vocab_size(vocab_size), config_file, vocab_size
