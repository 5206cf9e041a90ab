"""Checks every fine-tuning entry point (run_squad.py, run_glue.py) makes on its flags, written once.

Owns: `check_vocab` (a usable BERT vocab whose casing matches --do-lower-case), `model_config` (the
architecture from --config-file, the init checkpoint's own config, or bert_configs/<--bert-model>.json),
`check_writable` (an output location that can be written, probed before any work), `init_path` (the
--from-checkpoint / --from-pretrained-params choice, never a random initialisation) and the rule that a
training run never replaces a fine-tuned model silently (`check_model_output`, `make_room_for_model`). Does not own: a task's own
flags or rules (each entry point's `validate_args`), loading weights (`tasks.squad.init_parameters`).

Errors are ValueErrors in the flags' words; the entry points print them as one `error:` line (exit 2).
"""
import logging
import os

from modeling import BertConfig
from tasks import flags as common
from tasks.squad import resolve_init_path, saved_config_next_to
from tokenizer import check_vocab_case, load_vocab, special_token_ids
from utils.checkpoint import check_init_vocab
from utils.fs import move_aside, probe_writable
from utils.hf_import import bert_config_from_hf, hf_checkpoint_files, is_hf_checkpoint

logger = logging.getLogger(__name__)


def check_vocab(vocab_file, do_lower_case):
    """A readable BERT vocab (special tokens present) whose casing matches --do-lower-case.

    Raises:
      ValueError: empty / unreadable vocab, a missing special token, or the casing mismatch with its fix.
    """
    vocab = load_vocab(vocab_file)  # its errors (empty, not UTF-8, ...) name the file
    special_token_ids(vocab, vocab_file)
    try:
        check_vocab_case(vocab, do_lower_case, vocab_file)
    except ValueError:  # reworded: check_vocab_case speaks in keyword arguments, a user in flags
        state, fix = ("uncased", "add --do-lower-case") if not do_lower_case else ("cased", "drop --do-lower-case")
        raise ValueError(f"--vocab-file '{vocab_file}' is {state} but --do-lower-case is "
                         f"{'set' if do_lower_case else 'not set'}: {fix}") from None


DEFAULT_BERT_MODEL = "bert-large-uncased"  # the reference's --bert-model default
# --help text of a --bert-model whose default is resolved by `model_name`.
BERT_MODEL_DEFAULT_HELP = (f"the architecture's name when it comes from the checkpoint's bert_config.json or "
                           f"--config-file, else {DEFAULT_BERT_MODEL}")


def model_name(bert_model, config_file, vocab_file, model_cfg):
    """The name outputs go under (<output-dir>/<name>/...) and the report records.

    --bert-model when given; else, when the architecture came from a file (the checkpoint's own config
    or --config-file), the bert_configs/ name whose JSON it equals ("custom" when none does); else the
    reference's default. Why: a fine-tuned custom model evaluated without --bert-model was filed under
    bert-large-uncased although its own config had been read.
    """
    if bert_model:
        return bert_model
    if config_file is None and model_cfg == common.resolve_bert_config(DEFAULT_BERT_MODEL, None, vocab_file)[0]:
        return DEFAULT_BERT_MODEL
    return common.known_model_name(model_cfg.to_dict())


def model_config(bert_model, config_file, vocab_file, init_path):
    """BertConfig: --config-file, else the checkpoint's own config, else bert_configs/<--bert-model>.json
    (bert-large-uncased when --bert-model is None).

    Args:
      bert_model, config_file, vocab_file: the flags.
      init_path: the resolved weights path (an HF checkpoint's config.json, or the bert_config.json a
        fine-tuned run saved beside its parameters, is used when --config-file is not given).

    Raises:
      ValueError: a bad config, a checkpoint config whose vocab_size differs from the vocab file, or a
        pretraining checkpoint that recorded another vocab's SHA-256 (`utils.checkpoint.check_init_vocab`).
    """
    vocab_size = len(load_vocab(vocab_file))
    check_init_vocab(init_path, vocab_file, None)
    found = None
    if config_file is None and is_hf_checkpoint(init_path):
        found = hf_checkpoint_files(init_path)[1]
        cfg = bert_config_from_hf(found) if found else None
    elif config_file is None and saved_config_next_to(init_path):
        found = saved_config_next_to(init_path)
        cfg = BertConfig.from_json_file(found)
    if found is None:
        return common.resolve_bert_config(bert_model or DEFAULT_BERT_MODEL, config_file, vocab_file)[0]
    if cfg.vocab_size != vocab_size:
        raise ValueError(f"{found} says vocab_size {cfg.vocab_size} but --vocab-file '{vocab_file}' "
                         f"has {vocab_size} tokens: use the vocab the checkpoint was trained with")
    logger.info("model config from the checkpoint: %s", found)
    return cfg


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
