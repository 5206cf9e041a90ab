"""The fine-tuning configuration: one frozen `FinetuneConfig` of validated sections, and the checks every
fine-tuning entry point (run_squad.py, run_glue.py, and `inference.export` for the model and vocab) makes on
its flags, each written once.

`FinetuneConfig` is built by an entry point's `validate_args` from the same sections as pretraining's
(`tasks.config.OptimConfig`, `PrecisionConfig`, `RunSettings`) plus the model (`ModelInit`), the text
(`TextSettings`), the schedule (`Schedule`), the outputs (`Outputs`) and the task's own frozen section
(`tasks.squad.SquadSettings`, `tasks.glue.GlueSettings`). Nothing below validation reads the parsed flags
again: `flags` keeps them only for the report's PARAMETER record.

Owns also: `read_vocab` (a usable BERT vocab whose casing matches --do-lower-case, read once), `model_config` (the
architecture from --config-file, the init checkpoint's own config, or bert_configs/<--bert-model>.json; an
old step directory's by its parameter shapes; also what run_pretraining.py and run_pretraining_inference.py use),
`check_writable` (an output location that can be written, probed before any work), `init_path` (the
--from-checkpoint / --from-pretrained-params choice, never a random initialisation) and the rule that a
training run never replaces a fine-tuned model silently (`check_model_output`, `make_room_for_model`).
Does not own: a task's own flags or rules (each entry point's `validate_args`), loading weights
(`utils.weights`), running anything (`tasks.finetune`).

Errors are ValueErrors in the flags' words; the entry points print them as one `error:` line (exit 2).
"""
import dataclasses
import logging
import os
from typing import Optional

from inference import model_dir as export_layout
from modeling import BertConfig
from tasks import flags as common
from tasks.config import VocabInfo, check_fits_model
from utils.fs import move_aside, probe_writable, refuse_output_over_inputs
from utils.hf_import import bert_config_from_hf, hf_checkpoint_files, is_hf_checkpoint
from utils.weights import CONFIG_FILE_NAME, model_files, parameter_shapes, resolve_init_path, saved_config_next_to

logger = logging.getLogger(__name__)


def read_vocab(vocab_file, do_lower_case):
    """The --vocab-file, read once for the whole validation: a readable BERT vocab (special tokens present)
    whose casing matches --do-lower-case.

    Returns:
      tasks.config.VocabInfo (size, SHA-256, tokens), which the later checks use instead of the file.

    Raises:
      ValueError: missing / empty / unreadable vocab, a missing special token, or the casing mismatch with its
        fix.
    """
    vocab = VocabInfo.read(vocab_file)  # its errors (missing, empty, not UTF-8, ...) name the file
    vocab.special_ids()
    try:
        vocab.check_case(do_lower_case)
    except ValueError:  # reworded: check_vocab_case speaks in keyword arguments, a user in flags
        state, fix = ("uncased", "add --do-lower-case") if not do_lower_case else ("cased", "drop --do-lower-case")
        raise ValueError(f"--vocab-file '{vocab_file}' is {state} but --do-lower-case is "
                         f"{'set' if do_lower_case else 'not set'}: {fix}") from None
    return vocab


def _vocab_info(vocab):
    """`vocab` as a VocabInfo (callers that have not read it pass its path)."""
    return vocab if isinstance(vocab, VocabInfo) else VocabInfo.read(vocab)


DEFAULT_BERT_MODEL = "bert-large-uncased"  # the reference's --bert-model default
# --help text of a --bert-model whose default is resolved by `model_name`.
BERT_MODEL_DEFAULT_HELP = (f"the architecture's name when it comes from the checkpoint's bert_config.json or "
                           f"--config-file, else {DEFAULT_BERT_MODEL}")


def model_name(bert_model, config_file, vocab, model_cfg):
    """The name outputs go under (<output-dir>/<name>/...) and the report records.

    --bert-model when given; else, when the architecture came from a file (the checkpoint's own config
    or --config-file), the bert_configs/ name whose JSON it equals ("custom" when none does); else the
    reference's default. Why: a fine-tuned custom model evaluated without --bert-model was filed under
    bert-large-uncased although its own config had been read.
    """
    if bert_model:
        return bert_model
    vocab = _vocab_info(vocab)
    default = common.resolve_bert_config(DEFAULT_BERT_MODEL, None, vocab.path, vocab_size=vocab.size)[0]
    if config_file is None and model_cfg == default:
        return DEFAULT_BERT_MODEL
    return common.known_model_name(model_cfg.to_dict())


def model_config(bert_model, config_file, vocab, init_path):
    """BertConfig of the model to build on the weights at `init_path`; the one rule every consumer of a
    checkpoint (fine-tuning, `inference.export`, pretraining's phase 2, `run_pretraining_inference.py`) uses.

    --config-file, else the checkpoint's own config (an HF checkpoint's config.json, or the bert_config.json
    that pretraining step directories and fine-tuned runs carry), else bert_configs/<--bert-model>.json;
    with neither flag and no config file in the checkpoint (a step directory saved before checkpoints carried
    one), the one bert_configs/ architecture with the checkpoint's parameter shapes; else bert-large-uncased.

    Args:
      bert_model, config_file: the flags (None when not given; "custom" means "--config-file describes it").
      vocab: the --vocab-file's VocabInfo (`read_vocab`), or its path.
      init_path: the resolved weights path, or None (nothing to read the architecture from).

    Raises:
      ValueError: a bad config; a checkpoint config whose vocab_size differs from the vocab file; a
        pretraining checkpoint that recorded another vocab's SHA-256 (`VocabInfo.check_checkpoint`); a flag
        that describes another architecture than the checkpoint's bert_config.json (its parameters would not
        load: one line naming both); an old checkpoint whose shapes fit no single bert_configs/ model.
    """
    vocab = _vocab_info(vocab)
    if init_path is None:
        return _flag_config(bert_model, config_file, vocab)
    vocab.check_checkpoint(init_path, None)
    found, cfg = _checkpoint_config(init_path, use_hf=config_file is None)
    if found is None:
        if bert_model is None and config_file is None:
            return _config_from_shapes(init_path, vocab)
        return _flag_config(bert_model, config_file, vocab)
    if cfg.vocab_size != vocab.size:
        raise ValueError(f"{found} says vocab_size {cfg.vocab_size} but --vocab-file '{vocab.path}' "
                         f"has {vocab.size} tokens: use the vocab the checkpoint was trained with")
    if config_file is not None or bert_model not in (None, "custom"):
        flagged = _flag_config(bert_model, config_file, vocab)
        _check_agrees(flagged, bert_model, config_file, cfg, found)
        if config_file is not None:  # the user's file may change dropout etc. of the same network
            return flagged
    logger.info("model config from the checkpoint: %s", found)
    return cfg


def _flag_config(bert_model, config_file, vocab):
    """The config the flags name (bert-large-uncased when neither is given)."""
    return common.resolve_bert_config(bert_model or DEFAULT_BERT_MODEL, config_file, vocab.path,
                                      vocab_size=vocab.size)[0]


def _checkpoint_config(init_path, use_hf):
    """(path, BertConfig) of the config a checkpoint carries, or (None, None). An HF config.json only when
    `use_hf` (an explicit --config-file overrides it, as HF's own from_pretrained(config=...) does)."""
    if is_hf_checkpoint(init_path):
        found = hf_checkpoint_files(init_path)[1] if use_hf else None
        return (found, bert_config_from_hf(found)) if found else (None, None)
    found = saved_config_next_to(init_path)
    return (found, BertConfig.from_json_file(found)) if found else (None, None)


def _check_agrees(flagged, bert_model, config_file, cfg, found):
    """Refuse a --bert-model / --config-file that describes another network than the checkpoint's config."""
    differences = common.architecture_differences(flagged.to_dict(), cfg.to_dict())
    if not differences:
        return
    flag = f"--config-file {config_file}" if config_file is not None else f"--bert-model {bert_model}"
    theirs = common.known_model_name(cfg.to_dict())
    raise ValueError(f"{flag} describes another model than the checkpoint's {found} ({theirs}; {differences}): "
                     f"drop {flag.split()[0]} to use the checkpoint's config, or give a checkpoint of that model")


def _config_from_shapes(init_path, vocab):
    """An old checkpoint without its config: the one bert_configs/ architecture with its parameter shapes."""
    names = common.model_names_with_shapes(parameter_shapes(init_path))
    configs = {n: _flag_config(n, None, vocab) for n in names}
    distinct = {tuple(sorted(c.to_dict().items())) for c in configs.values()}
    if len(distinct) == 1:
        logger.info("'%s' carries no %s: its parameter shapes are those of bert_configs/%s.json, used",
                    init_path, CONFIG_FILE_NAME, names[0])
        return configs[names[0]]
    hint = (f"they fit {' and '.join(names)}: give --bert-model with the one it was trained as" if names else
            "they fit no bert_configs/ model: give the --config-file it was trained with")
    raise ValueError(f"'{init_path}' carries no {CONFIG_FILE_NAME} and {hint}")


def check_writable(flag, value, directory):
    """Refuse an output `directory` that could not be created or written, before any work
    (`utils.fs.probe_writable`: nothing is created). `value` is what the user gave for `flag`.

    Raises:
      ValueError: naming the flag, its value and what blocks it (a file in the way, or no write
        permission / a read-only file system).
    """
    try:
        probe_writable(directory)
    except NotADirectoryError as err:
        raise ValueError(f"{flag} '{value}' cannot be written: '{err.filename}' is a file, "
                         "not a directory") from None
    except OSError as err:
        raise ValueError(f"{flag} '{value}' cannot be written: no write permission in '{err.filename}' (or a "
                         f"read-only file system); give a {flag} you can write to") from None


def init_path(from_checkpoint, from_pretrained_params, model_prefix, do_train, task):
    """(path, require_head) of the weights to start from; never None (no silent random init).

    Args:
      from_checkpoint, from_pretrained_params: the flags (at most one given).
      model_prefix: --model-prefix (a phase directory resolves to its latest step's file).
      do_train: bool; only fine-tuning from a pretrained encoder may start the task head from random values.
      task: "SQuAD" | "GLUE", for the messages.

    Raises:
      ValueError: both or neither flag, or a path that does not exist.
    """
    if from_checkpoint and from_pretrained_params:
        raise ValueError("--from-checkpoint and --from-pretrained-params are exclusive: give the fine-tuned "
                         "model OR the pretrained BERT to fine-tune")
    flag = "--from-checkpoint" if from_checkpoint else "--from-pretrained-params"
    path = from_checkpoint or from_pretrained_params
    if path is None:
        raise ValueError(f"give --from-pretrained-params (a pretrained BERT to fine-tune) or --from-checkpoint "
                         f"(a fine-tuned {task} model); random initialisation is not supported")
    if not (os.path.exists(path) or os.path.isfile(path + ".pdparams")):
        raise ValueError(f"{flag} '{path}' does not exist")
    return resolve_init_path(path, model_prefix), not (do_train and from_pretrained_params)


REPLACE_MODEL_FLAG = "--replace-model"


def add_replace_model_flag(group):
    """The flag that lets a training run take an output directory holding a fine-tuned model."""
    group.add_argument(REPLACE_MODEL_FLAG, action="store_true",
                       help="train even though the output directory already holds a fine-tuned model: the old "
                            "directory (model, predictions, reports) is moved aside to "
                            "<dir>.superseded-<time>, never deleted")


def fine_tuned_models(out_dir):
    """Names of the fine-tuned weight files (`*.pdparams`) directly in `out_dir`, sorted; [] when none."""
    if not os.path.isdir(out_dir):
        return []
    return sorted(n for n in os.listdir(out_dir) if n.endswith(".pdparams"))


def check_model_output(out_dir, init_path, *, will_save, replace):
    """Refuse a training run whose output directory already holds a fine-tuned model, unless `replace`.

    Why: saving would silently overwrite that model and leave its predictions and reports beside the new
    one, as if they described it. As pretraining does with checkpoints, the run is refused, naming what is
    there and the way out; `--replace-model` moves the old directory aside whole (`make_room_for_model`).

    Args:
      out_dir: str, <output-dir>/<bert-model>/<task dir>.
      init_path: str, the weights this run starts from (they must not be moved away before loading).
      will_save: bool, the run writes a model (training, not --benchmark).
      replace: bool, --replace-model.

    Raises:
      ValueError: a model is there and `replace` is not set; or `replace` would move the run's own
        starting weights.
    """
    found = fine_tuned_models(out_dir) if will_save else []
    if not found:
        return
    if not replace:
        raise ValueError(f"--output-dir: {out_dir} already holds a fine-tuned model ({', '.join(found)}); "
                         f"use another --output-dir, or pass {REPLACE_MODEL_FLAG} to move that directory aside "
                         f"(kept as {os.path.basename(out_dir)}.superseded-<time>) and train anew")
    if os.path.commonpath([os.path.realpath(out_dir), os.path.realpath(init_path)]) == os.path.realpath(out_dir):
        raise ValueError(f"{REPLACE_MODEL_FLAG} would move aside {out_dir}, which holds the weights this run "
                         f"starts from ('{init_path}'); give another --output-dir")


def make_room_for_model(out_dir, replace):
    """With --replace-model on a run that saves a model (`replace`), move a directory holding a fine-tuned
    model aside before the run writes into it (its reports and predictions included, so nothing old sits
    beside the new model). Call it on the process that writes, after `check_model_output`.

    Returns:
      str, where the old directory went, or None when nothing was moved.
    """
    if not (replace and fine_tuned_models(out_dir)):
        return None
    return move_aside(out_dir, f"{REPLACE_MODEL_FLAG}: this run writes a new fine-tuned model there")



def exported_model(init_path, *, do_train, benchmark, benchmark_hint):
    """(manifest, ExportSettings) when --from-checkpoint is an `inference.export` directory, else None.

    An export predicts by itself (no program is built), so it cannot be trained or benchmarked: the executor
    program is what --benchmark times.

    Args:
      init_path: the resolved --from-checkpoint.
      do_train, benchmark: what the run asks for.
      benchmark_hint: the fix a --benchmark run is told (the task's own way to time an export).

    Raises:
      ValueError: training or benchmarking an export, or a damaged or changed one (its manifest says which).
    """
    if not export_layout.is_export_dir(init_path):
        return None
    if do_train:
        raise ValueError(f"--from-checkpoint '{init_path}' is an exported inference model, which cannot be "
                         "trained further; give the fine-tuned .pdparams it was exported from")
    if benchmark:
        raise ValueError(f"--benchmark times the training-time program; {benchmark_hint}")
    manifest, _ = export_layout.read_manifest(init_path)  # a damaged or changed export fails here
    return manifest, export_layout.read_settings(init_path)

# ------------------------------------------------------------------------------------------ the config


@dataclasses.dataclass(frozen=True)
class Modes:
    """What a run does: train (and save), evaluate (score labelled data), predict (write predictions)."""
    do_train: bool
    do_eval: bool
    do_predict: bool


@dataclasses.dataclass(frozen=True)
class ModelInit:
    """The model and where its weights come from, resolved.

    Fields: config (modeling.BertConfig); name (outputs go under <output-dir>/<name>/); init_path (the weights:
    a `.pdparams` file or directory, a step directory, an HF checkpoint, or an `inference.export` directory);
    require_head (False only when fine-tuning a pretrained encoder: the task head then starts random);
    export_dir (init_path when it is an export, which predicts by itself: no program is built; else None);
    model_prefix (file prefix of saved parameters).
    """
    config: BertConfig
    name: str
    init_path: str
    require_head: bool
    export_dir: Optional[str]
    model_prefix: str


@dataclasses.dataclass(frozen=True)
class TextSettings:
    """How text becomes model input: the vocab, its casing (checked against the vocab once, by
    `check_vocab`) and the window length in WordPieces."""
    vocab_file: str
    do_lower_case: bool
    max_seq_length: int


@dataclasses.dataclass(frozen=True)
class Schedule:
    """How much to train and in what batches: --epochs, --max-steps (None: the epochs decide), sequences per
    micro-batch per process for training and per batch for prediction."""
    epochs: int
    max_steps: Optional[int]
    train_batch_size: int
    predict_batch_size: int


@dataclasses.dataclass(frozen=True)
class Outputs:
    """Where results go: out_dir (<output-dir>/<model>/<task dir>), report_file (DLLogger), save_model (a
    training run writes the fine-tuned parameters: not with --benchmark or GLUE's --skip-checkpoint),
    replace_model (--replace-model on a run that saves: an old model directory is moved aside first)."""
    out_dir: str
    report_file: str
    save_model: bool
    replace_model: bool


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """One fine-tuning run, validated (an entry point's `validate_args` builds it; nothing reads the flags
    again).

    Fields: task ("SQuAD" | "GLUE": which head, `modeling.TASK_HEADS`); modes; model (ModelInit); text
    (TextSettings); schedule; optim (tasks.config.OptimConfig, None without training); precision
    (tasks.config.PrecisionConfig); run (tasks.config.RunSettings); device ("cpu" | "gpu", resolved);
    outputs; settings (the task's own frozen section: `tasks.squad.SquadSettings` or
    `tasks.glue.GlueSettings`); flags (every parsed flag as given, for the report's PARAMETER record).

    Raises (at construction):
      ValueError: a window longer than the model's position embeddings.
    """
    task: str
    modes: Modes
    model: ModelInit
    text: TextSettings
    schedule: Schedule
    optim: Optional[object]
    precision: object
    run: object
    device: str
    outputs: Outputs
    settings: object
    flags: dict

    def __post_init__(self):
        check_fits_model(self.text.max_seq_length, self.model.config, f"the model ({self.model.name})")
        # The report is opened for writing (truncated) at start: it must not be one of the files read.
        refuse_output_over_inputs("--report-file", self.outputs.report_file, self.inputs(), inside_allowed=True)

    def inputs(self):
        """(flag, path) of everything the run reads: the vocab, the init weights, the task's own files."""
        weights = [("the init checkpoint", f) for f in model_files(self.model.init_path)]
        return [("--vocab-file", self.text.vocab_file), ("the init checkpoint", self.model.init_path), *weights,
                *self.settings.inputs()]

    @property
    def amp(self):
        """`program.TrainConfig`'s AMP fields of this run."""
        return self.precision.amp

    @property
    def do_train(self):
        return self.modes.do_train

    @property
    def do_eval(self):
        return self.modes.do_eval

    @property
    def do_predict(self):
        return self.modes.do_predict
