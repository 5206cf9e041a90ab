"""Typed run-config sections shared by the tasks, and the one place a `program.TrainConfig` is made.

Owns: `OptimConfig` (optimizer and schedule flags) and `PrecisionConfig` (AMP flags), each built from the
parsed flags by field name and frozen; `train_config`, which turns them plus what the run decided (the
number of updates, device, data-parallel world) into a `program.TrainConfig`; and `in_flag_terms`, which
rewrites the knob names in a builder's error message into the flags a user typed. Also the rules every
entry point shares, each checked in one place: the warm-up range (`OptimConfig`, by
`lr_scheduler.check_warmup_proportion`), a sequence length the model can hold (`check_fits_model`), and
the vocab read once per validation (`VocabInfo`: size, SHA-256, casing, the checkpoint's recorded vocab).
Then the pretraining-kind configs: `PretrainConfig` (run_pretraining.py) and `PretrainInferenceConfig`
(run_pretraining_inference.py). Does not own flag definitions (`tasks.flags`).

Why one place: a TrainConfig built from flags in three places was validated three ways; here the entry
points call `train_config` once with `total_steps=1` while validating, before any runtime is initialised
(so a bad beta or `--amp` on a CPU is reported before `fleet.init` or a loader starts), and once more
with the real numbers. Adding an optimizer flag means: the flag in `tasks.flags`, its field here (named
as the flag and as the TrainConfig knob), and the knob in `program.TrainConfig`.
"""
import dataclasses
import re
from typing import Optional

from lr_scheduler import check_warmup_proportion, warmup_steps_from_proportion
from program import TrainConfig
from tasks import flags
from tokenizer import check_vocab_case, load_vocab, special_token_ids
from utils.checkpoint import recorded_vocab_sha256, vocab_sha256


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """The optimizer and LR-schedule flags (same names as the flags and as `program.TrainConfig`'s knobs,
    except `warmup_proportion`, which becomes TrainConfig's `warmup_steps`)."""
    optimizer: str
    learning_rate: float
    warmup_start_lr: float
    warmup_proportion: float
    beta1: float
    beta2: float
    epsilon: float
    weight_decay: float
    gradient_merge_steps: int

    def __post_init__(self):
        """Raises ValueError "--warmup-proportion must be in [0, 1], got X": the warm-up range, checked
        here for every entry point that trains (the schedule's own rule, worded in flags)."""
        try:
            check_warmup_proportion(self.warmup_proportion)
        except ValueError as err:
            raise ValueError(in_flag_terms(str(err))) from None

    @classmethod
    def from_args(cls, args):
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


@dataclasses.dataclass(frozen=True)
class PrecisionConfig:
    """AMP and fused-op flags, resolved: `amp` holds TrainConfig's AMP fields (see `tasks.flags.amp_fields`),
    `fusions` its fused-path fields (`tasks.flags.fusion_fields`; none when empty)."""
    amp: dict
    fuse_mha: bool
    fusions: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def from_args(cls, args, training=True):
        """Raises ValueError for contradictory AMP flags. Without training, no AMP is built."""
        return cls(amp=flags.amp_fields(args) if training else {"amp": "off"}, fuse_mha=args.fuse_mha,
                   fusions=flags.fusion_fields(args))


# TrainConfig / optimizer knob names -> the flags that set them (the builders' errors name knobs).
_KNOB_FLAGS = {name: "--" + name.replace("_", "-") for name in (
    "learning_rate", "warmup_start_lr", "weight_decay", "beta1", "beta2", "epsilon", "gradient_merge_steps",
    "scale_loss", "use_dynamic_loss_scaling", "use_pure_fp16", "max_seq_length", "doc_stride",
    "max_query_length")}
_KNOB_FLAGS["gradient_accumulation_steps"] = "--gradient-merge-steps"
_KNOB_FLAGS["warmup proportion"] = "--warmup-proportion"
_KNOB_FLAGS["base_lr"] = "--learning-rate"  # the LR schedule's name for the peak rate


def in_flag_terms(message):
    """`message` with the knob names it mentions (e.g. `beta1`) replaced by their flags (`--beta1`)."""
    return re.sub(r"(?<![-\w])(" + "|".join(_KNOB_FLAGS) + r")\b", lambda m: _KNOB_FLAGS[m.group(1)], message)


def train_config(optim: Optional[OptimConfig], precision: PrecisionConfig, *, total_steps, seed, device,
                 dist_kwargs=None):
    """The `program.TrainConfig` of a run.

    Args:
      optim: OptimConfig, or None for a predict-only build (TrainConfig's defaults, never used).
      precision: PrecisionConfig.
      total_steps: optimizer updates the LR schedule spans (1 while only validating).
      seed: startup program seed (parameter init).
      device: "cpu" | "gpu", resolved.
      dist_kwargs: the data-parallel fields from `utils.runtime.Runtime.train_config_kwargs()`, or None.

    Raises:
      ValueError: an inconsistent or out-of-range value, worded in flags.
    """
    try:
        knobs = {}
        if optim is not None:
            knobs = {k: v for k, v in dataclasses.asdict(optim).items() if k != "warmup_proportion"}
            knobs["warmup_steps"] = warmup_steps_from_proportion(total_steps, optim.warmup_proportion)
        return TrainConfig(total_steps=total_steps, seed=seed, device=device, fuse_mha=precision.fuse_mha,
                           **knobs, **precision.amp, **precision.fusions, **(dist_kwargs or {}))
    except ValueError as err:
        raise ValueError(in_flag_terms(str(err))) from None


def check_fits_model(max_seq_length, model_cfg, source):
    """Refuse a sequence length the model has no position embedding for (every entry point's one rule).

    Args:
      max_seq_length: int, the --max-seq-length asked for.
      model_cfg: modeling.BertConfig of the model that will run.
      source: str naming where `model_cfg` came from, for the message (e.g. the config file's path).

    Raises:
      ValueError: "--max-seq-length N exceeds max_position_embeddings M of <source>".
    """
    if max_seq_length > model_cfg.max_position_embeddings:
        raise ValueError(f"--max-seq-length {max_seq_length} exceeds max_position_embeddings "
                         f"{model_cfg.max_position_embeddings} of {source}")


@dataclasses.dataclass(frozen=True)
class VocabInfo:
    """The --vocab-file, read once per validation and passed down: every later question about it (its size
    for the model config, its SHA-256 for a checkpoint's record, its casing, its special tokens) is answered
    from here instead of reading the file again.

    Fields: path (as given); size (tokens); sha256 (hex, of the file's bytes: what checkpoints record);
    tokens (tuple of str, id = position; left out of repr and comparisons).
    """
    path: str
    size: int
    sha256: str
    tokens: tuple = dataclasses.field(repr=False, compare=False)

    @classmethod
    def read(cls, vocab_file, flag="--vocab-file"):
        """Raises ValueError: the file is missing (naming `flag`), unreadable, empty, or has a blank or
        repeated line (`tokenizer.load_vocab`)."""
        flags.require_existing(flag, vocab_file, "file")
        tokens = tuple(load_vocab(vocab_file))
        return cls(path=vocab_file, size=len(tokens), sha256=vocab_sha256(vocab_file), tokens=tokens)

    def special_ids(self):
        """Ids of [PAD] [UNK] [CLS] [SEP] [MASK] (`tokenizer.special_token_ids`); ValueError names the missing."""
        return special_token_ids({token: i for i, token in enumerate(self.tokens)}, self.path)

    def check_case(self, do_lower_case):
        """Refuse a vocab whose casing contradicts `do_lower_case` (`tokenizer.check_vocab_case`)."""
        check_vocab_case(self.tokens, do_lower_case, self.path)

    def check_checkpoint(self, init_path, flag):
        """Refuse to initialise from a pretraining checkpoint trained with another vocab.

        Same size is not enough: two swapped lines give every row of the embedding the wrong word.

        Args:
          init_path: the resolved weights path (`utils.checkpoint.recorded_vocab_sha256`: a checkpoint
            written before vocabs were recorded, an HF or a fine-tuned model records none: accepted).
          flag: the flag `init_path` came from, for the message (None: "the checkpoint").

        Raises:
          ValueError: naming both hashes.
        """
        recorded = recorded_vocab_sha256(init_path)
        if recorded is not None and recorded != self.sha256:
            raise ValueError(f"--vocab-file '{self.path}' has SHA-256 {self.sha256}, but {flag or 'the checkpoint'} "
                             f"'{init_path}' was trained with a vocab of SHA-256 {recorded}: give the vocab the "
                             f"checkpoint was trained with")


def section(cls, args, **resolved):
    """A section dataclass from the parsed flags, by field name; `resolved` overrides normalised values."""
    return cls(**{f.name: resolved[f.name] if f.name in resolved else getattr(args, f.name)
                  for f in dataclasses.fields(cls)})


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """Where and how a run runs and reports: `--device` (as given: auto/cpu/gpu), `--seed`,
    `--enable-cpu-affinity`, `--report-file`, `--show-config`, `--log-freq` (None for a command that logs no
    steps: run_pretraining_inference.py) and the benchmark flags."""
    device: str
    seed: int
    enable_cpu_affinity: bool
    report_file: Optional[str]
    show_config: bool
    log_freq: Optional[int]
    benchmark: bool
    benchmark_steps: int
    benchmark_warmup_steps: int


@dataclasses.dataclass(frozen=True)
class PretrainData:
    """What the pretraining loader reads and how it batches (its flags, validated)."""
    input_dir: str
    vocab_file: str
    batch_size: int
    max_seq_length: int
    max_predictions_per_seq: int
    num_workers: int
    sequence_length_alignment: int


@dataclasses.dataclass(frozen=True)
class PretrainEval:
    """Validation during pretraining (`--eval-dir` and its flags, validated): the first `num_eval_batches`
    batches (None: one whole pass) of `batch_size` sequences of `eval_dir`, every `eval_freq` updates."""
    eval_dir: str
    num_eval_batches: Optional[int]
    eval_freq: int
    batch_size: int


@dataclasses.dataclass(frozen=True)
class Checkpointing:
    """Where pretraining checkpoints go and where a run starts from.

    `last_step_of_checkpoint` is resolved: None, "auto" or an int step.
    """
    output_dir: str
    bert_model: str
    model_prefix: str
    keep_checkpoints: int
    num_steps_per_checkpoint: int
    from_checkpoint: Optional[str]
    last_step_of_checkpoint: object
    from_phase1_final_params: Optional[str]
    from_pretrained_params: Optional[str]
    replace_checkpoints: bool


# The flags a pretraining resume may change: how far and how long this invocation runs, where it writes and
# reports, how visibly, on which hardware and with how many loader workers -- none changes what an update
# computes. Paths whose CONTENTS matter are checked by content instead: --input-dir (the loader's dataset
# fingerprint), --vocab-file (its SHA-256), --bert-model/--config-file (the architecture fingerprint), and
# the phase by `tasks.pretraining`. --max-steps stretches the LR schedule: `lr_scheduler` warns when the
# resumed step's rate changes. EVERY other flag (optimizer, betas, epsilon, weight decay, LR and warm-up,
# batch, gradient merge, sequence and masking settings, seed, AMP) is recorded in each checkpoint and a
# resume that changes one is refused (`utils.checkpoint.check_compatible`); a flag added later is
# compared unless it is listed here.
RESUME_MAY_CHANGE = frozenset({
    "max_steps", "steps_this_run", "log_freq", "num_steps_per_checkpoint", "keep_checkpoints",
    "max_nonfinite_steps", "num_workers", "num_threads", "device", "enable_cpu_affinity",
    "output_dir", "report_file", "show_config", "model_prefix", "replace_checkpoints",
    "from_checkpoint", "last_step_of_checkpoint", "from_pretrained_params", "from_phase1_final_params",
    "benchmark", "benchmark_steps", "benchmark_warmup_steps",
    "eval_dir", "num_eval_batches", "eval_freq", "eval_batch_size",
    "input_dir", "vocab_file", "bert_model", "config_file", "phase", "phase1", "phase2"})


def resume_settings(flags):
    """{"--flag": value} of the parsed `flags` (a dict) that a resume must not change (see RESUME_MAY_CHANGE)."""
    return {"--" + name.replace("_", "-"): value for name, value in sorted(flags.items())
            if name not in RESUME_MAY_CHANGE}


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
    """One pretraining phase, validated (run_pretraining.validate_args builds it; nothing reads the flags
    again).

    Fields: phase (1 | 2); max_steps (updates of the phase); max_nonfinite_steps; model
    (modeling.BertConfig, vocab size from the vocab file); vocab (VocabInfo of --vocab-file: its SHA-256
    goes into every checkpoint); optim, precision, data, checkpointing, run (the sections); flags (every
    parsed flag as given, for the report's PARAMETER record); steps_this_run (None, or the most updates
    this invocation runs before it saves and exits); evaluation (PretrainEval or None).
    """
    phase: int
    max_steps: int
    max_nonfinite_steps: int
    model: object
    vocab: VocabInfo
    optim: OptimConfig
    precision: PrecisionConfig
    data: PretrainData
    checkpointing: Checkpointing
    run: RunSettings
    flags: dict
    steps_this_run: Optional[int] = None
    evaluation: Optional[PretrainEval] = None

    @property
    def total_steps(self):
        """Updates this run trains: --max-steps, or the benchmark's warm-up + measured steps."""
        if self.run.benchmark:
            return self.run.benchmark_warmup_steps + self.run.benchmark_steps
        return self.max_steps


@dataclasses.dataclass(frozen=True)
class PretrainInferenceConfig:
    """One evaluation of a pretraining checkpoint, validated (run_pretraining_inference.validate_args builds
    it; nothing reads the flags again).

    Fields: model (modeling.BertConfig, vocab size from the vocab file); vocab (VocabInfo); init_path (the
    resolved --init-checkpoint: a step directory, `.pdparams` file or prefix); data (PretrainData: the
    shards evaluated and how they are batched; `num_workers` 0, the evaluation set is read in-process);
    num_batches (batches taken: None for one whole pass; with --benchmark its warm-up + measured steps);
    run (RunSettings, `log_freq` None); flags (every parsed flag plus `init_checkpoint_resolved`, for the
    report's PARAMETER record).
    """
    model: object
    vocab: VocabInfo
    init_path: str
    data: PretrainData
    num_batches: Optional[int]
    run: RunSettings
    flags: dict
