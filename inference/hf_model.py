"""The files of a Hugging Face model directory made from one of our checkpoints: what `transformers` loads
with `AutoModelFor... .from_pretrained(dir)` and `AutoTokenizer.from_pretrained(dir)`.

Owns: writing `model.safetensors` (HF names and layouts, `utils.hf_import.to_hf_state`), `config.json`
(`utils.hf_import.hf_config`), the tokenizer files (`vocab.txt`, `tokenizer_config.json`,
`special_tokens_map.json`) and a short `README.md` model card whose numbers come from the run's own records
(`training_record`: a pretraining step's progress.json, a fine-tuned run's results.json / eval_results.json).
Does not own: the command, its flag checks and the atomic output directory (`inference.export --format hf`),
reading and validating our checkpoint (`utils.weights`), or the name and layout rules (`utils.hf_import`).

A SQuAD model keeps `bert.pooler.*` although HF's `BertForQuestionAnswering` has no pooler: HF ignores it on
load (its `_keys_to_ignore_on_load_unexpected`), and our import then gets every parameter back.

Why a separate module from `inference.model_dir`: that is our Paddle Inference layout with a manifest and a
parity check; this is another project's schema, checked by its loader (see benchmarks/check_hf_export.py).
"""
import json
import os
import shutil

from utils.fs import atomic_write_json, atomic_write_text
from utils.hf_import import (CONFIG_NAME, HF_CLASSIFIER, HF_ENCODER, HF_PRETRAINING, HF_QA, WEIGHTS_NAME,
                             hf_config, to_hf_state)

SPECIAL_TOKENS = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
                  "mask_token": "[MASK]"}
PROGRESS_FILE, RESULTS_FILE, EVAL_RESULTS_FILE = "progress.json", "results.json", "eval_results.json"
_WHAT = {HF_PRETRAINING: "BERT pretrained with MLM + NSP heads", HF_QA: "BERT fine-tuned for SQuAD question answering",
         HF_CLASSIFIER: "BERT fine-tuned for GLUE {task}", HF_ENCODER: "BERT encoder (no task head)"}
_AUTO_CLASS = {HF_PRETRAINING: "BertForPreTraining", HF_QA: "AutoModelForQuestionAnswering",
               HF_CLASSIFIER: "AutoModelForSequenceClassification", HF_ENCODER: "AutoModel"}


def _read_json(path):
    """A JSON object from `path`, or {} when it is absent or unreadable (a record is optional context)."""
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def training_record(checkpoint_dir):
    """What the run that wrote `checkpoint_dir` recorded about its training, for the model card.

    Reads (each optional): progress.json of a pretraining step (phase, global_step, its last loss in
    extra.loss, the "--max-seq-length" setting), results.json of a fine-tuning run (final_loss, exact_match,
    F1) and eval_results.json of a GLUE run (task and its dev metrics).

    Returns:
      dict of str -> scalar, only the figures found (empty when the directory records nothing).
    """
    progress = _read_json(os.path.join(checkpoint_dir, PROGRESS_FILE))
    results = _read_json(os.path.join(checkpoint_dir, RESULTS_FILE))
    record = {}
    if progress:
        extra, settings = progress.get("extra") or {}, progress.get("settings") or {}
        record.update(phase=progress.get("phase"), steps=progress.get("global_step"), final_loss=extra.get("loss"),
                      max_seq_length=settings.get("--max-seq-length"))
    for key in ("final_loss", "exact_match", "F1", "max_seq_length"):
        if results.get(key) is not None:
            record[key] = results[key]
    glue = _read_json(os.path.join(checkpoint_dir, EVAL_RESULTS_FILE))
    record.update({f"dev {k}": v for k, v in glue.items() if k != "task" and isinstance(v, (int, float))})
    if isinstance(glue.get("task"), str):
        record["task"] = glue["task"]
    return {k: v for k, v in record.items() if v is not None and not isinstance(v, (dict, list))}


def _number(value):
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def model_card(architecture, model_cfg, record, *, source, task=None, trimmed_rows=0):
    """README.md text: what the model is, how to load it, what its run recorded, what was left out.

    Args:
      architecture: one of the HF_* classes; model_cfg: modeling.BertConfig.
      record: `training_record`'s dict; source: str, the checkpoint path exported.
      task: str or None, the GLUE task; trimmed_rows: int, padded vocabulary rows cut from the embeddings.
    """
    what = _WHAT[architecture].format(task=task or record.get("task", "(task not recorded)"))
    lines = [f"# {what}", "",
             f"Exported from `{source}` by `python -m inference.export --format hf` (PaddlePaddle static-graph BERT).",
             "", "```python", f"from transformers import {_AUTO_CLASS[architecture]}, AutoTokenizer",
             f"model = {_AUTO_CLASS[architecture]}.from_pretrained(\"<this directory>\")",
             "tokenizer = AutoTokenizer.from_pretrained(\"<this directory>\")", "```", "",
             f"Architecture: {model_cfg.num_hidden_layers} layers, hidden {model_cfg.hidden_size}, "
             f"{model_cfg.num_attention_heads} heads, intermediate {model_cfg.intermediate_size}, "
             f"vocab {model_cfg.vocab_size}, {model_cfg.max_position_embeddings} positions.", "",
             "## Training record", ""]
    lines += [f"- {k}: {_number(v)}" for k, v in record.items()] or ["- none recorded next to the checkpoint"]
    lines += ["", "## Not carried", "", "- optimizer state, LR schedule, data-loader position (this is a model, "
              "not a resumable checkpoint)"]
    if trimmed_rows:
        lines.append(f"- {trimmed_rows} padded vocabulary rows of the word embeddings"
                     f"{' and the MLM bias' if architecture == HF_PRETRAINING else ''} (ids >= {model_cfg.vocab_size} "
                     "never occur; the rows only aligned the embedding to a multiple of 8)")
    return "\n".join(lines) + "\n"


def tokenizer_files(do_lower_case, model_max_length):
    """{file name: dict} of `tokenizer_config.json` and `special_tokens_map.json` for a WordPiece vocab.

    `strip_accents` is left null: HF then strips accents exactly when lower-casing, as our tokenizer does.
    """
    config = dict(SPECIAL_TOKENS, tokenizer_class="BertTokenizer", do_lower_case=bool(do_lower_case),
                  tokenize_chinese_chars=True, strip_accents=None, model_max_length=model_max_length,
                  clean_up_tokenization_spaces=True)
    return {"tokenizer_config.json": config, "special_tokens_map.json": dict(SPECIAL_TOKENS)}


def write_hf_model(directory, state, model_cfg, architecture, *, vocab_file, do_lower_case, pad_token_id,
                   card, labels=None, regression=False):
    """Write every file of the HF model directory into `directory` (which exists and is empty: the caller
    makes it atomic).

    Args:
      state: dict our parameter name -> float32 ndarray in our layout (every parameter of the checkpoint).
      model_cfg: modeling.BertConfig; architecture: one of the HF_* classes.
      vocab_file: str, copied as vocab.txt; do_lower_case: bool; pad_token_id: int, the vocab's [PAD] id.
      card: str, README.md text (`model_card`); labels, regression: see `utils.hf_import.hf_config`.

    Returns:
      dict HF tensor name -> shape tuple of what model.safetensors holds.
    """
    from safetensors.numpy import save_file

    tensors = to_hf_state(state, model_cfg.vocab_size, base_model=architecture == HF_ENCODER)
    save_file(tensors, os.path.join(directory, WEIGHTS_NAME), metadata={"format": "pt"})
    atomic_write_json(os.path.join(directory, CONFIG_NAME),
                      hf_config(model_cfg, architecture, pad_token_id=pad_token_id, labels=labels,
                                regression=regression))
    shutil.copyfile(vocab_file, os.path.join(directory, "vocab.txt"))
    for name, values in tokenizer_files(do_lower_case, model_cfg.max_position_embeddings).items():
        atomic_write_json(os.path.join(directory, name), values)
    atomic_write_text(os.path.join(directory, "README.md"), card)
    return {k: v.shape for k, v in tensors.items()}
