"""Initialising our BERT programs from Hugging Face BERT checkpoints (`model.safetensors` + `config.json`).

Owns: recognising an HF checkpoint path, reading its `config.json` into a `modeling.BertConfig`, mapping HF
tensor names and layouts onto our parameter names (`convert_hf_state`, pure numpy), reading a checkpoint's
parameter shapes from its header (`hf_parameter_shapes`), and the way back (`to_hf_state`: our parameters,
e.g. a fine-tuned GLUE classifier, in HF's layout; `hf_config`: the `config.json` for them;
`hf_architecture`: which HF class a checkpoint's parameters make; `python -m inference.export --format hf`
writes the directory).
Does not own: writing tensors into a program (`utils.weights.load_weights` does, for HF and our own
checkpoints), building programs, or downloading anything.

Name and layout mapping (our names are HF's, see modeling.py):
  * an optional missing `bert.` prefix is added (sentence-transformers' MiniLM stores `encoder.layer.0...`);
  * TF-ported checkpoints name LayerNorm parameters `gamma` / `beta`: they become `weight` / `bias`;
  * `nn.Linear` weights are [out, in] in HF and [in, out] in Paddle: transposed;
  * `bert.embeddings.word_embeddings.weight` [vocab, H] and `cls.predictions.bias` [vocab] get zero rows up
    to `padded_vocab_size` (those ids never occur in the input);
  * ignored, and logged: the `embeddings.position_ids` buffer, the tied MLM decoder
    (`cls.predictions.decoder.*`, the same tensors as the word embeddings and `cls.predictions.bias`), and task
    heads the program does not have (`cls.*` pre-training heads, a `classifier.*` head);
  * any other tensor that does not map to a parameter of the program is an error, and so is a parameter
    of the program that the checkpoint lacks, except prefixes the caller allows (the QA head when
    fine-tuning an encoder-only checkpoint).
NVIDIA's NGC Paddle checkpoints are not handled here: their parameters carry Paddle's auto-generated names
(`linear_12.w_0`), which only map by creation order of the reference's model code.
"""
import json
import logging
import os
import re

import numpy as np

from modeling import BertConfig

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
NEWLY_INITIALIZED = "NEWLY INITIALIZED"

_BERT_SUBMODULES = ("embeddings.", "encoder.", "pooler.")
_IGNORED_BUFFERS = ("bert.embeddings.position_ids",)
_TIED_DECODER = ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias")
_OPTIONAL_HEADS = ("cls.", "classifier.")
_PADDED_ROWS = ("bert.embeddings.word_embeddings.weight", "cls.predictions.bias")
_EMBEDDING = re.compile(r"_embeddings\.weight$")
# HF config keys that describe training or tooling, not the architecture; everything else must be a
# BertConfig field or one of the checked keys below.
_HF_TOOLING_KEYS = frozenset((
    "_name_or_path", "architectures", "model_type", "gradient_checkpointing", "pad_token_id",
    "transformers_version", "use_cache", "torch_dtype", "classifier_dropout", "bos_token_id",
    "eos_token_id", "output_past", "directionality", "id2label", "label2id", "finetuning_task",
    "problem_type", "tokenizer_class", "pooler_fc_size", "pooler_num_attention_heads",
    "pooler_num_fc_layers", "pooler_size_per_head", "pooler_type", "return_dict", "chunk_size_feed_forward",
    "position_embedding_type", "is_decoder", "add_cross_attention"))


def is_hf_checkpoint(path):
    """True if `path` is a `.safetensors` file or a directory holding `model.safetensors`."""
    path = os.fspath(path)
    if os.path.isfile(path):
        return path.endswith(".safetensors")
    return os.path.isfile(os.path.join(path, WEIGHTS_NAME))


def hf_checkpoint_files(path):
    """The weights file and the config file (or None) of an HF checkpoint.

    Args:
      path: a `.safetensors` file (its directory's `config.json` is used when present) or a directory
        holding `model.safetensors`.

    Returns:
      (weights path str, config.json path str or None).

    Raises:
      ValueError: `path` is neither.
    """
    path = os.fspath(path)
    if os.path.isfile(path) and path.endswith(".safetensors"):
        weights = path
    elif os.path.isfile(os.path.join(path, WEIGHTS_NAME)):
        weights = os.path.join(path, WEIGHTS_NAME)
    else:
        raise ValueError(f"'{path}' is not a Hugging Face checkpoint (a .safetensors file or a directory "
                         f"with {WEIGHTS_NAME})")
    config = os.path.join(os.path.dirname(os.path.abspath(weights)), CONFIG_NAME)
    return weights, (config if os.path.isfile(config) else None)


def bert_config_from_hf(config_path):
    """Our BertConfig from an HF BERT `config.json`.

    Args:
      config_path: path of the HF config.

    Returns:
      modeling.BertConfig (vocab_size as in the file; callers compare it with their vocab file).

    Raises:
      ValueError: not JSON, not a BERT config (model_type, absolute positions, encoder only), an unknown
        key, or an architecture value our model does not implement (e.g. hidden_act "gelu_new").
    """
    try:
        with open(config_path, encoding="utf-8") as f:
            values = json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"{config_path}: not valid JSON ({err})") from None
    if not isinstance(values, dict):
        raise ValueError(f"{config_path}: expected a JSON object")
    if values.get("model_type", "bert") != "bert":
        raise ValueError(f"{config_path}: model_type {values['model_type']!r} is not 'bert'; only BERT "
                         "checkpoints can be imported")
    if values.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"{config_path}: position_embedding_type {values['position_embedding_type']!r} "
                         "is not supported (only 'absolute')")
    if values.get("is_decoder") or values.get("add_cross_attention"):
        raise ValueError(f"{config_path}: decoder / cross-attention BERT models are not supported")
    known = {k for k in values if k not in _HF_TOOLING_KEYS}
    return BertConfig.from_dict({k: values[k] for k in known}, source=str(config_path))


def read_safetensors(path):
    """name -> numpy array of a `.safetensors` file (float16 tensors become float32).

    Raises:
      ValueError: the file cannot be read (not safetensors, truncated, or a dtype numpy lacks, e.g. bf16).
    """
    from safetensors.numpy import load_file

    try:
        state = load_file(os.fspath(path))
    except Exception as err:  # safetensors raises its own error types for foreign or truncated files
        raise ValueError(f"cannot read '{path}' as safetensors: {err}") from err
    return {k: (v.astype(np.float32) if v.dtype == np.float16 else v) for k, v in state.items()}


def our_name(hf_name):
    """Our parameter name for an HF tensor name (prefix and gamma/beta rules in the module docstring)."""
    name = "bert." + hf_name if hf_name.startswith(_BERT_SUBMODULES) else hf_name
    return re.sub(r"\.LayerNorm\.gamma$", ".LayerNorm.weight",
                  re.sub(r"\.LayerNorm\.beta$", ".LayerNorm.bias", name))


def hf_parameter_shapes(path):
    """{our parameter name: shape tuple} of an HF safetensors checkpoint (file or directory), read from its
    header only (no tensor is loaded).

    Raises:
      ValueError: the file cannot be read as safetensors.
    """
    from safetensors import safe_open

    weights, _ = hf_checkpoint_files(path)
    try:
        with safe_open(weights, "np") as f:
            return {our_name(k): tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as err:  # safetensors raises its own error types for foreign or truncated files
        raise ValueError(f"cannot read '{weights}' as safetensors: {err}") from err


def _to_our_layout(name, value, want_shape, vocab_size):
    """(array in our layout, note) for one tensor; raises ValueError when the shapes cannot match."""
    value, note = np.asarray(value), []
    if name in _PADDED_ROWS:
        if vocab_size is not None and value.shape[0] != vocab_size:
            raise ValueError(f"tensor {name} has {value.shape[0]} rows but --vocab-file has {vocab_size} "
                             f"tokens: the checkpoint was trained with another vocabulary (use the "
                             f"checkpoint's vocab.txt)")
        extra = want_shape[0] - value.shape[0]
        if extra > 0 and value.shape[1:] == tuple(want_shape[1:]):
            value = np.pad(value, [(0, extra)] + [(0, 0)] * (value.ndim - 1))
            note = [f"+{extra} zero rows"]
    elif value.ndim == 2 and name.endswith(".weight") and not _EMBEDDING.search(name):
        value, note = np.ascontiguousarray(value.T), ["transposed"]
    if value.shape != tuple(want_shape):
        raise ValueError(f"tensor {name} has shape {list(value.shape)} (in our layout) but the model "
                         f"configuration expects {list(want_shape)}: the checkpoint is another BERT size than "
                         f"--config-file / --bert-model describe (leave out --config-file to use the "
                         f"checkpoint's config.json)")
    return value.astype(np.float32), note


def convert_hf_state(hf_state, param_shapes, allow_missing_prefixes=(), vocab_size=None):
    """Map an HF state dict onto a program's parameters (pure numpy).

    Args:
      hf_state: dict HF name -> ndarray (e.g. from `read_safetensors`).
      param_shapes: dict our parameter name -> shape tuple, every parameter of the target program.
      allow_missing_prefixes: tuple of str; program parameters with these prefixes may be absent.
      vocab_size: int or None; if given, the word embedding must have exactly this many rows (the
        padded rows of our layout cannot tell a smaller vocabulary apart).

    Returns:
      (arrays {our name: float32 ndarray in our layout}, sources {our name: description of where it came
      from, or NEWLY_INITIALIZED}, ignored [HF names not used, with the reason]).

    Raises:
      ValueError: an HF tensor that is not a known BERT tensor of the program, a required parameter
        the checkpoint lacks, a shape that cannot match, or nothing mapped at all.
    """
    arrays, sources, ignored, unexpected = {}, {}, [], []
    for hf_name in sorted(hf_state):
        name = our_name(hf_name)
        if name in param_shapes:
            arrays[name], note = _to_our_layout(name, hf_state[hf_name], param_shapes[name],
                                                 vocab_size)
            sources[name] = " ".join([f"<- {hf_name}"] + (["(" + ", ".join(note) + ")"] if note else []))
        elif name in _IGNORED_BUFFERS:
            ignored.append(f"{hf_name} (buffer)")
        elif name in _TIED_DECODER:
            ignored.append(f"{hf_name} (tied MLM decoder)")
        elif name.startswith(_OPTIONAL_HEADS):
            ignored.append(f"{hf_name} (head not in this program)")
        else:
            unexpected.append(hf_name)
    if unexpected:
        raise ValueError(f"it has tensors that are not parameters of this BERT model: "
                         f"{unexpected[:10]}{' ...' if len(unexpected) > 10 else ''} (not a BERT checkpoint, "
                         f"or a variant this project does not implement)")
    missing = [n for n in param_shapes if n not in arrays and not n.startswith(tuple(allow_missing_prefixes))]
    if missing:
        raise ValueError(f"it lacks parameter(s) {missing[:10]}{' ...' if len(missing) > 10 else ''} that the "
                         f"model configured by --config-file / --bert-model has")
    if not arrays:
        raise ValueError("it holds none of this BERT model's parameters")
    for name in param_shapes:
        sources.setdefault(name, NEWLY_INITIALIZED)
    return arrays, sources, ignored


# HF model classes an export can name, by what the checkpoint holds (`hf_architecture` decides).
HF_PRETRAINING, HF_QA, HF_CLASSIFIER, HF_ENCODER = (
    "BertForPreTraining", "BertForQuestionAnswering", "BertForSequenceClassification", "BertModel")
_BASE_PREFIX = "bert."


def hf_architecture(parameter_names, encoder_only=False):
    """The HF model class whose state dict a checkpoint's parameters make.

    Args:
      parameter_names: iterable of our parameter names (e.g. `utils.weights.parameter_shapes(path)`).
      encoder_only: bool; True exports only the encoder (`BertModel`) whatever heads the checkpoint has.

    Returns:
      one of HF_PRETRAINING (`cls.*` MLM + NSP heads), HF_QA (`qa_outputs.*`), HF_CLASSIFIER (`classifier.*`),
      HF_ENCODER (asked for, or no head at all).
    """
    names = set(parameter_names)
    if encoder_only:
        return HF_ENCODER
    for arch, prefix in ((HF_QA, "qa_outputs."), (HF_CLASSIFIER, "classifier."), (HF_PRETRAINING, "cls.")):
        if any(n.startswith(prefix) for n in names):
            return arch
    return HF_ENCODER


def to_hf_state(state, vocab_size, base_model=False):
    """Our parameters in Hugging Face's layout (pure numpy): the inverse of `convert_hf_state`'s mapping.

    Names are kept (ours are HF's, `bert.` prefix included; a GLUE model's `classifier.*` is what HF's
    `BertForSequenceClassification` loads, `cls.*` what `BertForPreTraining` loads, LayerNorm parameters
    are `weight` / `bias` as current transformers names them); `nn.Linear` weights are transposed back to
    [out, in]; the padded rows of the word embeddings and `cls.predictions.bias` are cut to `vocab_size`
    (those ids never occur in the input, and the MLM head masks their logits). The tied MLM decoder is not
    written: HF ties `cls.predictions.decoder.*` to the word embeddings and `cls.predictions.bias` on load,
    as its own `save_pretrained` leaves them out.

    Args:
      state: dict our name -> ndarray (e.g. a fine-tuned `.pdparams`).
      vocab_size: int, the true vocabulary size (BertConfig.vocab_size).
      base_model: bool; True writes a `BertModel` (encoder only): only `bert.*` parameters, without the
        prefix, as HF's `BertModel.save_pretrained` names them (our import adds it back, see `our_name`).

    Returns:
      dict HF name -> float32 ndarray, ready for `safetensors.numpy.save_file`.
    """
    out = {}
    for name, value in state.items():
        if base_model and not name.startswith(_BASE_PREFIX):
            continue
        value = np.asarray(value, np.float32)
        if name in _PADDED_ROWS:
            value = value[:vocab_size]
        elif value.ndim == 2 and name.endswith(".weight") and not _EMBEDDING.search(name):
            value = value.T
        out[name[len(_BASE_PREFIX):] if base_model else name] = np.ascontiguousarray(value)
    return out


def hf_config(model_cfg, architecture, *, pad_token_id, labels=None, regression=False):
    """An HF BERT `config.json` dict for `model_cfg` (the inverse of `bert_config_from_hf`).

    Every BertConfig field is carried as is: `vocab_size` is the true vocabulary (our embedding's padded
    rows are cut by `to_hf_state`), `hidden_act` "gelu" is the erf form in both projects (HF's
    "gelu_new" would be the tanh one), `layer_norm_eps` and `type_vocab_size` are the model's own.

    Args:
      model_cfg: modeling.BertConfig.
      architecture: one of the HF_* classes.
      pad_token_id: int, the vocab's [PAD] id.
      labels: sequence of str or None; a classifier's class names in logit order (None for a regression).
      regression: bool; a one-output classifier that predicts a score (STS-B).

    Returns:
      dict, JSON-serialisable.
    """
    values = dict(model_cfg.to_dict(), architectures=[architecture], model_type="bert", pad_token_id=pad_token_id,
                  position_embedding_type="absolute", classifier_dropout=None, torch_dtype="float32")
    if architecture == HF_CLASSIFIER:
        names = list(labels) if labels else ["LABEL_0"]
        values.update(id2label={str(i): n for i, n in enumerate(names)},
                      label2id={n: i for i, n in enumerate(names)},
                      problem_type="regression" if regression else "single_label_classification")
    return values
