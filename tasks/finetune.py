"""Checks every fine-tuning entry point (run_squad.py, run_glue.py) makes on its flags, written once.

Owns: `check_vocab` (a usable BERT vocab whose casing matches --do-lower-case), `model_config` (the
architecture from --config-file, the init checkpoint's own config, or bert_configs/<--bert-model>.json),
`check_writable` (an output location that can be written, probed before any work) and `init_path` (the
--from-checkpoint / --from-pretrained-params choice, never a random initialisation). Does not own: a task's own
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
from utils.fs import probe_writable
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
