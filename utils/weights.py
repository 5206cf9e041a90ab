"""Pretrained-weight I/O: the one public place that reads and writes the parameters of a model (not a
training run's full state).

Owns: resolving an init path (`resolve_init_path`: a phase directory means its latest complete step),
reading a checkpoint's parameter names and shapes (`parameter_shapes`: ours or Hugging Face's), loading
parameters by name into an initialised program (`load_pretrained` for our `.pdparams`,
`load_hf_pretrained` for HF safetensors, `load_weights` for either), logging where every parameter came
from, initialising a fine-tuning program whose task head must (or may not) come from the checkpoint
(`init_parameters`, naming what a checkpoint without that head really is), and saving a fine-tuned model (`save_params` + `saved_config_next_to`: `<prefix>.pdparams` and the
`bert_config.json` beside it). Used by pretraining (phase 2 from phase 1, `--from-pretrained-params`),
fine-tuning (`tasks.finetune`) and `inference.export`.

Does not own: a training run's checkpoints (step directories, optimizer state, progress records, exact resume:
`utils.checkpoint`), the HF name and layout mapping (`utils.hf_import`), or the heads themselves
(`modeling.TASK_HEADS`).
"""
import logging
import os
import pickle
import re

import numpy as np
import paddle

from modeling import TASK_HEADS
from utils import checkpoint_io
from utils.checkpoint_io import CONFIG_FILE_NAME  # the architecture, beside saved parameters
from utils.amp_state import MASTER_SUFFIX
from utils.checkpoint import INIT_FROM_CKPT, CheckpointManager, assign_to_scope, log_parameter_sources
from utils.checks import preview as _preview
from utils.fs import atomic_write_bytes, atomic_write_json
from utils.hf_import import (NEWLY_INITIALIZED, convert_hf_state, hf_checkpoint_files, hf_parameter_shapes,
                             is_hf_checkpoint, read_safetensors)

logger = logging.getLogger(__name__)



def _prefixes(value, flag):
    if isinstance(value, str) or not all(isinstance(p, str) and p for p in value):
        raise ValueError(f"{flag} must be a list/tuple of non-empty name prefixes, got {value!r}")
    return tuple(value)


def latest_step_dir(path, model_prefix="bert_paddle"):
    """The newest complete `<step>/` directory when `path` is a phase directory (`phase_dir`), else None.

    Lets users pass `results/<model>/phase2` where a parameters path is expected.
    """
    if not os.path.isdir(path) or any(n.endswith(".pdparams") for n in os.listdir(path)):
        return None
    manager = CheckpointManager(path, model_prefix=model_prefix)
    step = manager.latest_complete_step()
    return None if step is None else manager.step_dir(step)


def resolve_init_path(path, model_prefix="bert_paddle"):
    """A pre-training phase directory (`<model>/phase<N>/` holding step directories) -> its latest complete
    step directory; any other path unchanged (the loaders check it). What `--from-pretrained-params` of
    run_pretraining.py and run_squad.py, and run_pretraining_inference.py's `--init-checkpoint`, accept."""
    step_dir = latest_step_dir(path, model_prefix)  # None for a file, a .pdparams dir or an HF checkpoint dir
    if step_dir is None:
        return path
    logger.info("'%s' is a checkpoint directory: using its latest complete step %s", path,
                os.path.basename(step_dir))
    return step_dir


MODEL_FILE_SUFFIXES = (".pdparams", ".pdopt", ".pdmodel", ".pdiparams", ".safetensors")


def model_files(path):
    """The model files at a weights path given to a command: the file itself, or the parameter, optimizer,
    program and safetensors files in the directory and its step directories (a phase directory holds
    `<step>/`). Outputs are checked against them: a report or other file written into a checkpoint
    directory must never be one of them.

    Returns:
      list[str] (empty for None or a path that does not exist).
    """
    if not path:
        return []
    if not os.path.isdir(path):
        return [path]
    found = []
    for root, dirs, names in os.walk(path):
        if os.path.relpath(root, path).count(os.sep) >= 1:
            dirs[:] = []  # the directory and its step directories: model files sit no deeper
        found += [os.path.join(root, n) for n in sorted(names) if n.endswith(MODEL_FILE_SUFFIXES)]
    return found


def _resolve_params_file(path):
    """A `.pdparams` file from a file path, a prefix, or a directory holding exactly one."""
    if os.path.isfile(path):
        return path
    if os.path.isfile(path + ".pdparams"):
        return path + ".pdparams"
    if os.path.isdir(path):
        names = os.listdir(path)
        found = sorted(n for n in names if n.endswith(".pdparams"))
        if len(found) == 1:
            return os.path.join(path, found[0])
        inference_files = sorted(n for n in names if n.endswith(".pdiparams"))
        if not found and inference_files:  # an `inference.export` directory is recognised by its manifest
            raise ValueError(f"'{path}' holds Paddle Inference files ({', '.join(inference_files)}) but no "
                             "manifest.json: an export directory that is damaged or incomplete (or not ours); "
                             "export the model again with python -m inference.export")
        raise ValueError(f"pretrained directory '{path}' must hold exactly one .pdparams file, "
                         f"found {found if found else 'none'}")
    raise ValueError(f"pretrained checkpoint '{path}' does not exist; refusing to fall back to random "
                     "initialisation")


def parameter_shapes(path):
    """{parameter name (ours): shape tuple} of a checkpoint: one of our `.pdparams` (a file, its prefix, or a
    directory holding exactly one) or a Hugging Face safetensors checkpoint (read from its header), e.g. to
    tell which task head it carries.

    Raises:
      ValueError: `path` does not exist, holds no or several `.pdparams`, or cannot be read.
    """
    if is_hf_checkpoint(path):
        return hf_parameter_shapes(path)
    return {k: tuple(np.shape(v)) for k, v in _read_params(_resolve_params_file(path)).items()}


def _read_params(path):
    try:
        state = paddle.load(path, return_numpy=True)
    except Exception as err:  # paddle raises assorted types for a foreign or truncated file
        raise ValueError(f"cannot read parameters from '{path}': {err}") from err
    if not isinstance(state, dict) or not all(isinstance(v, np.ndarray) for v in state.values()):
        raise ValueError(f"'{path}' does not hold a dict of name -> array")
    return state


def _master_weights(params_file, names):
    """fp32 master weights `<name>_fp32_master_0` saved beside `params_file` (in its .pdopt), by name."""
    opt_file = params_file[:-len(checkpoint_io.PARAMS_SUFFIX)] + checkpoint_io.OPT_SUFFIX
    if not params_file.endswith(checkpoint_io.PARAMS_SUFFIX) or not os.path.isfile(opt_file):
        return {}
    opt_state = _read_params(opt_file)
    return {n: opt_state[n + MASTER_SUFFIX] for n in names if n + MASTER_SUFFIX in opt_state}


def _as_fp32_training_values(arrays, params_file):
    """The values to load into an fp32 program: pure-fp16 (O2) checkpoints hold fp16 parameters.

    Their fp32 master weights (in the .pdopt beside the .pdparams) are what the optimizer was updating,
    so they are the exact values; without them the fp16 values are upcast (exact, but rounded once).
    Parameters of an fp32 program are fp32 before `amp_init` casts them for O2, so this covers both a
    phase 1 -> phase 2 hand-off and fine-tuning from an O2 run.
    """
    half = [n for n, v in arrays.items() if np.asarray(v).dtype == np.float16]
    if not half:
        return arrays
    masters = _master_weights(params_file, half)
    out = dict(arrays)
    for name in half:
        out[name] = masters[name] if name in masters else np.asarray(arrays[name]).astype(np.float32)
    logger.info("%s holds %d fp16 parameters (pure fp16 run): loaded %d from their fp32 master weights, "
                "upcast %d", params_file, len(half), len(masters), len(half) - len(masters))
    return out


def load_pretrained(exe, program, path, *, ignore_prefixes=(), allow_missing_prefixes=()):
    """Initialise the parameters of `program` by name from a `.pdparams` file (no optimizer state).

    Args:
      exe: executor whose place receives the tensors; the startup program must have run.
      program: the program to initialise (e.g. the SQuAD program from a pretraining checkpoint).
      path: a `.pdparams` file, its prefix, or a directory holding exactly one (e.g. a step directory).
      ignore_prefixes: parameters whose names start with one of these keep their startup values even
        when the file has them.
      allow_missing_prefixes: parameters with these prefixes may be absent from the file (new heads,
        e.g. the QA head); any other absent parameter is an error.

    Returns:
      dict parameter name -> INIT_FROM_CKPT or NEWLY_INITIALIZED, for every parameter of `program`.
      The same is logged one line per parameter.

    Raises:
      ValueError: `path` does not exist or is unreadable, a required parameter is absent, a shape or dtype
        differs (naming the parameter and both shapes), nothing at all was loaded, or a prefix argument
        is a bare string.
    """
    ignore = _prefixes(ignore_prefixes, "ignore_prefixes")
    allow = _prefixes(allow_missing_prefixes, "allow_missing_prefixes")
    params_file = _resolve_params_file(path)
    state = _read_params(params_file)
    sources, arrays, missing = {}, {}, []
    for param in program.all_parameters():
        name = param.name
        if name.startswith(ignore) or (name not in state and name.startswith(allow)):
            sources[name] = NEWLY_INITIALIZED
        elif name in state:
            sources[name], arrays[name] = INIT_FROM_CKPT, state[name]
        else:
            missing.append(name)
    if missing:
        raise ValueError(f"'{params_file}' lacks parameter(s) {_preview(missing)}: it was saved from another "
                         "model than the one --bert-model/--config-file describe")
    if not arrays:
        raise ValueError(f"no parameter of the program was loaded from '{params_file}' (names do not match: "
                         "is it a checkpoint of this project?)")
    assign_to_scope(exe, _as_fp32_training_values(arrays, params_file), params_file)
    log_parameter_sources(program, sources, params_file)
    unused = sorted(set(state) - set(arrays))
    if unused:
        logger.info("not used from %s: %s", params_file, _preview(unused))
    return sources


def load_hf_pretrained(exe, program, path, *, allow_missing_prefixes=(), vocab_size=None):
    """Initialise `program`'s parameters from an HF BERT checkpoint and log each parameter's source.

    Args:
      exe: executor whose place receives the tensors; the startup program must have run.
      program: the program to initialise (e.g. the SQuAD training program).
      path: `.safetensors` file or a directory with `model.safetensors`.
      allow_missing_prefixes: tuple of str; parameters the checkpoint may lack (they keep their startup
        values), e.g. ("qa_outputs",) when fine-tuning an encoder-only checkpoint.
      vocab_size: int or None, the vocab file's size (see `convert_hf_state`).

    Returns:
      dict parameter name -> source description or NEWLY_INITIALIZED.

    Raises:
      ValueError: see `hf_checkpoint_files`, `read_safetensors`, `convert_hf_state`, or a shape/dtype that
        differs from the scope's tensor.
    """
    weights, _ = hf_checkpoint_files(path)
    params = {p.name: tuple(p.shape) for p in program.all_parameters()}
    state = read_safetensors(weights)  # its errors name the file already
    try:
        arrays, sources, ignored = convert_hf_state(state, params, allow_missing_prefixes, vocab_size)
    except ValueError as err:  # the messages above say what; this says which file
        raise ValueError(f"Hugging Face checkpoint '{weights}': {err}") from None
    assign_to_scope(exe, arrays, weights)
    log_parameter_sources(program, sources, weights)
    if ignored:
        logger.info("not used from %s: %s", weights, ", ".join(ignored))
    return sources


def load_weights(exe, program, path, *, allow_missing_prefixes=(), vocab_size=None):
    """Initialise `program` by name from our `.pdparams` (file, prefix, step or phase directory already
    resolved) or a Hugging Face checkpoint, whichever `path` is.

    Args:
      exe, program: as `load_pretrained`.
      path: str, the resolved init path.
      allow_missing_prefixes: parameters that may be absent (a new task head).
      vocab_size: int, the vocab file's size (HF word embeddings must match it).

    Returns:
      dict parameter name -> INIT_FROM_CKPT / NEWLY_INITIALIZED (or an HF source description).

    Raises:
      ValueError: as `load_pretrained` / `load_hf_pretrained`.
    """
    if is_hf_checkpoint(path):
        return load_hf_pretrained(exe, program, path, allow_missing_prefixes=allow_missing_prefixes,
                                  vocab_size=vocab_size)
    return load_pretrained(exe, program, path, allow_missing_prefixes=allow_missing_prefixes)


_AUTO_NAME = re.compile(r"^(linear|embedding|layer_norm|create_parameter)_\d+\.(w|b)_\d+$")


def _reference_checkpoint_hint(path):
    """A hint when a .pdparams that failed to load has Paddle's auto-generated names (NVIDIA's NGC files)."""
    try:
        names = list(paddle.load(path if os.path.isfile(path) else path + ".pdparams", return_numpy=True))
    except Exception:  # noqa: BLE001 -- only a hint: the original error is what matters
        return ""
    if names and sum(bool(_AUTO_NAME.match(n)) for n in names) > len(names) // 2:
        return ("; its parameters have auto-generated names (linear_12.w_0, ...): an NVIDIA reference / NGC "
                "Paddle checkpoint, whose layout cannot be mapped by name and is not supported")
    return ""


def init_parameters(exe, program, path, *, require_head, vocab_size, task="SQuAD"):
    """Initialise a fine-tuning program from our `.pdparams` (file, prefix or step dir) or an HF checkpoint.

    Args:
      exe: executor; the startup program has run.
      program: the task's program (SQuAD's or GLUE's).
      path: str, the resolved --from-pretrained-params / --from-checkpoint (see `resolve_init_path`).
      require_head: bool; False lets the task head start from its random init (fine-tuning an encoder).
      vocab_size: int, the vocab file's size (HF word embeddings must match it).
      task: a key of `modeling.TASK_HEADS` ("SQuAD" | "GLUE"): which head the program has.

    Returns:
      dict parameter name -> where it came from (summarised in the log, per parameter at DEBUG).

    Raises:
      ValueError: missing path, unreadable file, a missing parameter, a shape mismatch, or no task head
        where `require_head` (the message says what the checkpoint is: a pretrained BERT, or a model
        fine-tuned for another task).
    """
    head_prefix, head_name = TASK_HEADS[task]
    # The head may always be absent at load time, so that a missing head alone gets its own message below
    # (a pretrained encoder where a fine-tuned model was needed) instead of "another model".
    try:
        sources = load_weights(exe, program, path, allow_missing_prefixes=(head_prefix,), vocab_size=vocab_size)
    except ValueError as err:
        if is_hf_checkpoint(path):
            raise
        raise ValueError(f"{err}{_reference_checkpoint_hint(path)}") from None
    fresh = sorted(n for n, s in sources.items() if "NEWLY" in s)
    if require_head and fresh:
        other = [name for name, (prefix, _) in TASK_HEADS.items()
                 if name != task and any(k.startswith(prefix + ".") for k in head_parameters(path))]
        what = f"a model fine-tuned for {other[0]}" if other else "a pretrained BERT"
        raise ValueError(f"'{path}' has no {head_name} ({', '.join(fresh)}): it is {what}, not a fine-tuned "
                         f"{task} model; fine-tune it first (--mode train or train_eval with "
                         f"--from-pretrained-params) or give a fine-tuned {task} model to --from-checkpoint")
    return sources


def head_parameters(path):
    """{parameter name: shape} of the task-head parameters (`modeling.TASK_HEADS`) in a checkpoint: our
    .pdparams (file, prefix or directory) or a Hugging Face safetensors checkpoint.

    Raises:
      ValueError: the checkpoint cannot be read.
    """
    prefixes = tuple(prefix + "." for prefix, _ in TASK_HEADS.values())
    return {k: v for k, v in parameter_shapes(path).items() if k.startswith(prefixes)}


def fp32_parameters(program):
    """{name: float32 array} of `program`'s parameters in the current scope, as a predict-only fp32 program
    needs them: under pure fp16 (O2) a parameter is fp16 and its fp32 master weight (`<name>_fp32_master_0`)
    is the exact value the optimizer updated, so the master is taken; otherwise the parameter itself (fp32,
    or upcast exactly from fp16/bf16).
    """
    scope = paddle.static.global_scope()
    out = {}
    for param in program.all_parameters():
        master = scope.find_var(param.name + MASTER_SUFFIX)
        source = master if master is not None and master.get_tensor()._is_initialized() else scope.find_var(
            param.name)
        out[param.name] = np.array(source.get_tensor()).astype(np.float32)
    return out


def save_params(program, directory, model_prefix, model_cfg):
    """Write the program's parameters (no optimizer state) and the architecture, each atomically.

    Files: `<directory>/<model_prefix>.pdparams` (dict name -> float32 array, readable by `paddle.load` and
    `load_pretrained`) and `<directory>/bert_config.json`.

    Returns:
      str, the .pdparams path.
    """
    state = fp32_parameters(program)  # under O2, the fp32 masters: not the rounded fp16 copies
    path = os.path.join(directory, model_prefix + ".pdparams")
    os.makedirs(directory, exist_ok=True)
    # paddle.load reads a plain pickle of a dict of arrays; pickling here lets the write be atomic.
    atomic_write_bytes(path, pickle.dumps(state, protocol=4))
    atomic_write_json(os.path.join(directory, CONFIG_FILE_NAME), model_cfg.to_dict())
    logger.info("saved %d fine-tuned parameters to %s", len(state), path)
    return path


def saved_config_next_to(path):
    """The `bert_config.json` written by `save_params` beside a params file or in a directory, or None."""
    directory = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    candidate = os.path.join(directory, CONFIG_FILE_NAME)
    return candidate if os.path.isfile(candidate) else None
