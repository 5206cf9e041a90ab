"""BERT layers and task heads for Paddle's legacy static graph, plus the architecture config.

Owns: `BertConfig` (strict JSON loading), the encoder (`BertModel`), the pre-training heads
(`BertForPretraining`: masked-LM + next-sentence), the SQuAD span head (`BertForQuestionAnswering`), the
GLUE sentence(-pair) head (`BertForSequenceClassification`, `classifier.*`), `select_attention_impl`,
which picks the attention kernel for `--fuse-mha`, and `Fusions` / `select_fusions`, the other fused paths
(`--fuse-qkv`, `--fuse-ffn`, `--fuse-residual-ln`). Every path keeps the same parameters and names.
Does not own: losses (`loss.py`), optimizers and LR (`optimizer.py`, `lr_scheduler.py`), feeds,
programs or AMP (`program.py`), or checkpoint I/O. Importing this module has no side effects; callers
build the layers inside `paddle.static.program_guard` after `paddle.enable_static()`.

Architecture follows Google's original BERT: post-LayerNorm encoder layers, erf-GELU, pooler =
dense + tanh on [CLS], MLM decoder tied to the word embeddings with its own bias.

Parameter names are fixed with `ParamAttr(name=...)` and follow Hugging Face's BERT names
(`bert.encoder.layer.3.attention.self.query.weight`, `cls.predictions.bias`, `qa_outputs.weight`), so
checkpoints never depend on Paddle's auto-generated `linear_12.w_0` names and an HF checkpoint maps
1:1. Two layout differences remain for an importer: Paddle `Linear` weights are [in, out] (HF stores
[out, in]), and `bert.embeddings.word_embeddings.weight` / `cls.predictions.bias` have
`padded_vocab_size` rows (HF has `vocab_size`): pad with zeros.

Vocabulary size. Every JSON in `bert_configs/` states `vocab_size` explicitly (the small `bert-tiny` /
`bert-mini` configs say 30522, the uncased vocab). A run that brings its own vocab file overrides it
with `config.with_vocab_size(n)` and logs the change; the config never silently follows a file.
Embedding rows are padded up to a multiple of 8 (`padded_vocab_size`) so the MLM decoder GEMM has
tensor-core friendly shapes; ids >= vocab_size never occur in the input, and the MLM logits of the
padded rows get -10000 added so a padded id can never win the argmax nor take probability mass.
"""
import dataclasses
import hashlib
import json
import logging
import re

import paddle
import paddle.nn as nn
import paddle.nn.functional as F
from paddle.incubate.nn import functional as incubate_F

from utils.checks import is_int, is_number

logger = logging.getLogger(__name__)

ATTENTION_IMPLS = ("plain", "fused", "flash", "cudnn_fused")
# The Paddle op each kernel-backed fusion emits (`Fusions` field -> op type).
FUSED_OP_TYPES = {"ffn": "fused_feedforward", "residual_ln": "fused_bias_dropout_residual_layer_norm"}
# Kernel data type each training precision needs.
_AMP_KERNEL_DTYPES = {"off": "float32", "fp16": "float16", "bf16": "bfloat16"}
_SUPPORTED_ACTS = ("gelu", "relu")
_REQUIRED_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                  "intermediate_size", "hidden_act", "hidden_dropout_prob",
                  "attention_probs_dropout_prob", "max_position_embeddings", "type_vocab_size",
                  "initializer_range")
# Additive attention bias for masked keys. -1e4 (Google's value) fits fp16 exactly (bf16 rounds it
# to -9984) and exp(-1e4) underflows to 0, whereas -inf would turn fully-masked rows into NaN.
MASK_NEG = -10000.0
# The heads fine-tuning adds to the encoder, by the task that trains them: the parameter-name prefix of the
# layer (`BertForQuestionAnswering.qa_outputs`, `BertForSequenceClassification.classifier`, HF's names too)
# and what a message calls it.
TASK_HEADS = {"SQuAD": ("qa_outputs", "SQuAD answer head"), "GLUE": ("classifier", "classification head")}


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """BERT architecture hyper-parameters (Google `bert_config.json` keys + `layer_norm_eps`).

    Raises:
      ValueError: at construction, for any out-of-range or wrongly-typed value.
    """
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "max_position_embeddings", "type_vocab_size"):
            value = getattr(self, name)
            if not is_int(value) or value < 1:
                raise ValueError(f"BertConfig.{name} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"BertConfig.hidden_size ({self.hidden_size}) must be a multiple of "
                             f"num_attention_heads ({self.num_attention_heads})")
        if self.hidden_act not in _SUPPORTED_ACTS:
            raise ValueError(f"BertConfig.hidden_act {self.hidden_act!r} is not supported; "
                             f"use one of {_SUPPORTED_ACTS}")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            value = getattr(self, name)
            if not is_number(value) or not 0 <= value < 1:
                raise ValueError(f"BertConfig.{name} must be a number in [0, 1), got {value!r}")
        value = self.initializer_range
        if not is_number(value) or not value > 0:
            raise ValueError(f"BertConfig.initializer_range must be a positive number, got {value!r}")
        value = self.layer_norm_eps
        # Paddle's layer_norm op accepts epsilon in [0, 1e-3] only.
        if not is_number(value) or not 0 < value <= 1e-3:
            raise ValueError(f"BertConfig.layer_norm_eps must be in (0, 0.001] (Paddle's LayerNorm "
                             f"limit), got {value!r}")

    @property
    def head_size(self):
        """int, hidden_size // num_attention_heads."""
        return self.hidden_size // self.num_attention_heads

    @property
    def padded_vocab_size(self):
        """int, vocab_size rounded up to a multiple of 8: rows of the word embedding and MLM bias."""
        return -(-self.vocab_size // 8) * 8

    @classmethod
    def from_dict(cls, values, source="<dict>"):
        """Build a config from a dict, rejecting unknown and missing keys.

        Args:
          values: dict with all Google `bert_config.json` keys; `layer_norm_eps` is optional (1e-12).
          source: str naming where the dict came from, used in error messages.

        Raises:
          ValueError: unknown key, missing key, or invalid value (message names `source`).
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{source}: unknown BERT config key(s) {unknown}; known keys are "
                             f"{sorted(known)}")
        missing = [k for k in _REQUIRED_KEYS if k not in values]
        if missing:
            raise ValueError(f"{source}: missing BERT config key(s) {missing}")
        try:
            return cls(**values)
        except ValueError as err:
            raise ValueError(f"{source}: {err}") from None

    @classmethod
    def from_json_file(cls, path):
        """Load a config from a JSON file (strict, see `from_dict`).

        Raises:
          ValueError: the file is not a JSON object, or `from_dict` rejects it.
        """
        with open(path, "r", encoding="utf-8") as f:
            try:
                values = json.load(f)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}: not valid JSON ({err})") from None
        if not isinstance(values, dict):
            raise ValueError(f"{path}: expected a JSON object of BERT config keys")
        return cls.from_dict(values, source=str(path))

    def with_vocab_size(self, vocab_size):
        """A copy with a new vocab_size (used when the vocab file decides it); logs the change."""
        if vocab_size != self.vocab_size:
            logger.info("BERT vocab_size %d -> %d (from the vocab file)", self.vocab_size, vocab_size)
        return dataclasses.replace(self, vocab_size=vocab_size)

    def to_dict(self):
        """dict of all fields (JSON-serialisable; round-trips through `from_dict`)."""
        return dataclasses.asdict(self)


def select_attention_impl(requested_fused, place, amp="off"):
    """Choose the attention implementation for `--fuse-mha`, and log the choice.

    Args:
      requested_fused: bool, the user asked for fused multi-head attention.
      place: a paddle Place, or a string starting with "cpu" / "gpu".
      amp: "off" | "fp16" | "bf16"; flash attention only has fp16/bf16 kernels.

    Returns:
      str, one of `ATTENTION_IMPLS`:
        "cudnn_fused" - NGC Paddle builds whose BuildStrategy has `fuse_dot_product_attention`: the
                        program keeps plain attention ops and that build pass fuses them;
        "flash"       - GPU with AMP: `F.scaled_dot_product_attention` (`flash_attn` op);
        "fused"       - GPU fp32: `fused_attention` op (QKV GEMM, softmax, out-projection, dropout,
                        residual and LayerNorm in one kernel);
        "plain"       - not requested, or CPU (those kernels are GPU-only).
    """
    on_gpu = _is_gpu_place(place)
    if not requested_fused:
        impl = "plain"
    elif not on_gpu:
        impl = "plain"
        logger.info("--fuse-mha requested on CPU: fused attention kernels are GPU-only, using plain")
    elif hasattr(paddle.static.BuildStrategy(), "fuse_dot_product_attention"):
        impl = "cudnn_fused"
    elif amp in ("fp16", "bf16"):
        impl = "flash"
    else:
        impl = "fused"
    logger.info("attention implementation: %s", impl)
    return impl


def _is_gpu_place(place):
    if isinstance(place, str):
        return place.lower().startswith("gpu")
    return bool(getattr(place, "is_gpu_place", lambda: False)())


@dataclasses.dataclass(frozen=True)
class Fusions:
    """The encoder's fused paths beside attention. Parameters, names and shapes are the same on every path.

    Fields:
      qkv: Q, K and V as one [H, 3H] GEMM over the concatenated (still separately named) weights; plain
        matmul, so every device runs it.
      ffn: dense, activation, dense, dropout, residual add and LayerNorm of the FFN as one `fused_feedforward`.
      residual_ln: bias, dropout, residual add and LayerNorm after a projection as one
        `fused_bias_dropout_residual_layer_norm` (attention output, and the FFN output unless `ffn`).
    """
    qkv: bool = False
    ffn: bool = False
    residual_ln: bool = False

    def names(self):
        """tuple of the fields that are on, e.g. ("qkv", "ffn")."""
        return tuple(f.name for f in dataclasses.fields(self) if getattr(self, f.name))


def fused_kernel_dtypes(op_type, place):
    """Data types the installed Paddle has a kernel of `op_type` for on `place`'s device.

    Args:
      op_type: str, e.g. "fused_feedforward".
      place: a paddle Place, or a string starting with "cpu" / "gpu".

    Returns:
      set of str ("float32", "float16", "bfloat16", "float64"); empty when there is none (CPU wheels have
      no fused transformer kernels, nor even the op).
    """
    try:
        keys = paddle.base.core._get_all_register_op_kernels("all").get(op_type) or ()
    except AttributeError:  # a build without the registry query: only CUDA builds have these kernels
        keys = ()
    device = "gpu" if _is_gpu_place(place) else "cpu"
    dtypes = set()
    for key in keys:
        match = re.search(r"data_type\[([^\]]+)\].*place\[Place\(([a-z_]+)", key)
        if match and match.group(2).startswith(device):
            name = match.group(1).split("::")[-1]
            dtypes.add({"float": "float32", "double": "float64"}.get(name, name))
    return dtypes


def select_fusions(requested, place, amp="off", attention_impl="plain"):
    """Keep the requested fusions this device and Paddle build can run; one log line for each one dropped.

    Args:
      requested: Fusions asked for by the flags.
      place: a paddle Place, or a string starting with "cpu" / "gpu".
      amp: "off" | "fp16" | "bf16": the kernel must exist in the training precision.
      attention_impl: the built attention (one of ATTENTION_IMPLS); "fused" already computes Q, K, V
        with one GEMM, and NGC's "cudnn_fused" pass matches the three separate projections.

    Returns:
      Fusions: `requested` without the fusions that would fail at run time (unfused layers instead).
    """
    kept = dataclasses.asdict(requested)
    if requested.qkv and attention_impl in ("fused", "cudnn_fused"):
        kept["qkv"] = False
        logger.info("--fuse-qkv: attention %r already projects Q, K and V itself; keeping its ops",
                    attention_impl)
    dtype = _AMP_KERNEL_DTYPES[amp]
    for field, op_type in FUSED_OP_TYPES.items():
        if kept[field] and dtype not in fused_kernel_dtypes(op_type, place):
            kept[field] = False
            device = "GPU" if _is_gpu_place(place) else "CPU"
            logger.info("--fuse-%s requested but this Paddle build has no %s %s kernel of %s: using the "
                        "unfused layers", field.replace("_", "-"), device, dtype, op_type)
    return Fusions(**kept)


def _short_error(err):
    """The informative line of a Paddle error (its message is a long user-code + C++ trace)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    for line in lines:
        if "not registered" in line:
            return line
    return lines[-1] if lines else type(err).__name__


def _init_seed(name):
    """Seed of one parameter's init op: a hash of the startup program's random_seed and the name.

    Paddle's initializers otherwise give every init op the same seed (program.random_seed), which
    makes all same-shaped weights identical (Q = K = V, every layer alike). Hashing the name keeps
    init reproducible, independent of build order and identical on every rank.
    """
    base = paddle.static.default_startup_program().random_seed
    digest = hashlib.sha256(f"{base}:{name}".encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "little") % (2 ** 31 - 1) + 1  # 0 would mean "unseeded"


def _weight_attr(name, cfg):
    # Truncated normal cut at 2 std (Paddle's truncated_gaussian_random), as Google's
    # create_initializer. The public TruncatedNormal has no seed argument in Paddle 2.6; the class
    # behind it takes one.
    from paddle.nn.initializer.normal import TruncatedNormalInitializer
    initializer = TruncatedNormalInitializer(loc=0.0, scale=cfg.initializer_range,
                                             seed=_init_seed(name))
    return paddle.ParamAttr(name=name, initializer=initializer)


def _bias_attr(name):
    return paddle.ParamAttr(name=name, initializer=nn.initializer.Constant(0.0))


def _linear(in_features, out_features, name, cfg):
    return nn.Linear(in_features, out_features, weight_attr=_weight_attr(name + ".weight", cfg),
                     bias_attr=_bias_attr(name + ".bias"))


def _layer_norm(name, cfg):
    return nn.LayerNorm(cfg.hidden_size, epsilon=cfg.layer_norm_eps,
                        weight_attr=paddle.ParamAttr(name=name + ".weight",
                                                     initializer=nn.initializer.Constant(1.0)),
                        bias_attr=_bias_attr(name + ".bias"))


def _activation(x, name):
    if name == "gelu":
        return F.gelu(x, approximate=False)  # erf form, as Google's BERT
    return F.relu(x)


def attention_mask_bias(attention_mask, dtype="float32"):
    """Additive attention bias from the keep-mask feed.

    Args:
      attention_mask: int64 Tensor [B, 1, 1, L], 1 = attend to this key, 0 = padding.
      dtype: float dtype of the result.

    Returns:
      Tensor [B, 1, 1, L] of `dtype`: 0 where kept, MASK_NEG (-10000) where masked.
    """
    return (1.0 - attention_mask.astype(dtype)) * MASK_NEG


class BertEmbeddings(nn.Layer):
    """Word + position + token-type embeddings, then LayerNorm and dropout."""

    def __init__(self, cfg, prefix="bert.embeddings"):
        super().__init__()
        self.word_embeddings = nn.Embedding(
            cfg.padded_vocab_size, cfg.hidden_size,
            weight_attr=_weight_attr(f"{prefix}.word_embeddings.weight", cfg))
        self.position_embeddings = nn.Embedding(
            cfg.max_position_embeddings, cfg.hidden_size,
            weight_attr=_weight_attr(f"{prefix}.position_embeddings.weight", cfg))
        self.token_type_embeddings = nn.Embedding(
            cfg.type_vocab_size, cfg.hidden_size,
            weight_attr=_weight_attr(f"{prefix}.token_type_embeddings.weight", cfg))
        self.layer_norm = _layer_norm(f"{prefix}.LayerNorm", cfg)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, input_ids, token_type_ids):
        """int64 [B, L] ids and segment ids -> float32 [B, L, H]."""
        # Positions are 0..L-1 for every row; one [L, H] lookup broadcasts over the batch.
        seq_len = paddle.shape(input_ids)[1]
        position_ids = paddle.arange(0, seq_len, dtype="int64")
        embeddings = paddle.add(paddle.add(self.word_embeddings(input_ids),
                                           self.token_type_embeddings(token_type_ids)),
                                self.position_embeddings(position_ids))
        return self.dropout(self.layer_norm(embeddings))


class BertAttention(nn.Layer):
    """Self-attention block: Q/K/V projections, attention, output projection, dropout, residual, LN.

    All implementations and `Fusions` share the same parameters (HF names), so a checkpoint trained with
    one can be loaded by another; they differ only in the ops they emit.
    """

    def __init__(self, cfg, prefix, impl, fusions=Fusions()):
        super().__init__()
        if impl not in ATTENTION_IMPLS:
            raise ValueError(f"attention impl {impl!r} is not one of {ATTENTION_IMPLS}")
        self.cfg, self.impl = cfg, impl
        # "fused" (fused_attention) already does both; NGC's pass for "cudnn_fused" matches the plain ops.
        self.fuse_qkv = fusions.qkv and impl in ("plain", "flash")
        self.fuse_residual_ln = fusions.residual_ln and impl in ("plain", "flash")
        h = cfg.hidden_size
        self.query = _linear(h, h, f"{prefix}.self.query", cfg)
        self.key = _linear(h, h, f"{prefix}.self.key", cfg)
        self.value = _linear(h, h, f"{prefix}.self.value", cfg)
        self.output_dense = _linear(h, h, f"{prefix}.output.dense", cfg)
        self.output_layer_norm = _layer_norm(f"{prefix}.output.LayerNorm", cfg)
        self.attn_dropout = nn.Dropout(cfg.attention_probs_dropout_prob)
        self.hidden_dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, hidden, mask_bias):
        """hidden float [B, L, H], mask_bias float -> float [B, L, H].

        mask_bias is `BertModel.attention_bias`'s: [B, 1, 1, L], or the dense [B, 1, L, L] for "flash".

        Raises:
          RuntimeError: "fused" / "flash" on a Paddle build without those GPU ops (e.g. CPU wheels).
        """
        if self.impl in ("fused", "flash"):
            try:
                if self.impl == "fused":
                    return self._fused(hidden, mask_bias)
                context = self._flash_context(hidden, mask_bias)
            except (ValueError, RuntimeError) as err:
                raise RuntimeError(f"attention impl {self.impl!r} (--fuse-mha) cannot be built with "
                                   f"this Paddle build ({_short_error(err)}); it needs "
                                   f"paddlepaddle-gpu, or run without --fuse-mha") from err
        else:  # "plain" and "cudnn_fused" (fused later by NGC's build pass)
            context = self._plain_context(hidden, mask_bias)
        if self.fuse_residual_ln:
            return _bias_dropout_residual_ln(context, hidden, self.output_dense, self.output_layer_norm,
                                             self.cfg)
        out = self.hidden_dropout(self.output_dense(context))
        return self.output_layer_norm(paddle.add(out, hidden))

    def _projections(self, hidden):
        """(q, k, v), each float [B, L, heads, head_size]: three GEMMs, or one under `--fuse-qkv`."""
        if not self.fuse_qkv:
            return tuple(self._heads(layer(hidden)) for layer in (self.query, self.key, self.value))
        # The separately named parameters are concatenated in the graph (column blocks q | k | v), so
        # checkpoints and HF names stay as they are; backward splits the [H, 3H] gradient again.
        weight = paddle.concat([self.query.weight, self.key.weight, self.value.weight], axis=1)
        bias = paddle.concat([self.query.bias, self.key.bias, self.value.bias], axis=0)
        qkv = paddle.add(paddle.matmul(hidden, weight), bias)                # [B, L, 3H]
        qkv = paddle.reshape(qkv, [0, 0, 3, self.cfg.num_attention_heads, self.cfg.head_size])
        return tuple(paddle.unbind(qkv, axis=2))

    def _heads(self, x):
        # [B, L, H] -> [B, L, heads, head_size]; 0 copies the (dynamic) batch and length dims.
        return paddle.reshape(x, [0, 0, self.cfg.num_attention_heads, self.cfg.head_size])

    def _plain_context(self, hidden, mask_bias):
        perm = [0, 2, 1, 3]
        q, k, v = (paddle.transpose(x, perm) for x in self._projections(hidden))
        # Scaling q (B*L*H values) is cheaper than scaling the scores (B*heads*L*L values).
        q = q * (self.cfg.head_size ** -0.5)
        scores = paddle.add(paddle.matmul(q, k, transpose_y=True), mask_bias)  # [B, heads, L, L]
        probs = self.attn_dropout(F.softmax(scores, axis=-1))
        context = paddle.transpose(paddle.matmul(probs, v), perm)        # [B, L, heads, hd]
        return paddle.reshape(context, [0, 0, self.cfg.hidden_size])

    def _flash_context(self, hidden, mask_bias):
        q, k, v = self._projections(hidden)
        # mask_bias is already the dense [B, 1, L, L] mask flash_attn takes (BertModel builds it once);
        # AMP casts it to the activation dtype once, for all layers.
        context = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask_bias, dropout_p=self.cfg.attention_probs_dropout_prob,
            training=True)
        return paddle.reshape(context, [0, 0, self.cfg.hidden_size])

    def _fused(self, hidden, mask_bias):
        from paddle.incubate.nn.functional import fused_multi_head_attention
        # Concatenating the separately named Q/K/V weights keeps HF names and checkpoint layout;
        # with transpose_qkv_wb the op takes [H, 3H] / [3H], column blocks q | k | v.
        qkv_weight = paddle.concat([self.query.weight, self.key.weight, self.value.weight], axis=1)
        qkv_bias = paddle.concat([self.query.bias, self.key.bias, self.value.bias], axis=0)
        return fused_multi_head_attention(
            hidden, qkv_weight, self.output_dense.weight, pre_layer_norm=False,
            ln_scale=self.output_layer_norm.weight, ln_bias=self.output_layer_norm.bias,
            ln_epsilon=self.cfg.layer_norm_eps, qkv_bias=qkv_bias,
            linear_bias=self.output_dense.bias, attn_mask=mask_bias,
            dropout_rate=self.cfg.hidden_dropout_prob,
            attn_dropout_rate=self.cfg.attention_probs_dropout_prob, training=True,
            num_heads=self.cfg.num_attention_heads, transpose_qkv_wb=True)


def _bias_dropout_residual_ln(x, residual, dense, layer_norm, cfg):
    """layer_norm(residual + dropout(dense(x))) as `matmul` + one `fused_bias_dropout_residual_layer_norm`
    (the projection's bias joins the fused op). Same parameters and dropout rule (upscale in training) as
    the unfused ops; only `select_fusions` turns this on, where the kernel exists."""
    return incubate_F.fused_bias_dropout_residual_layer_norm(
        paddle.matmul(x, dense.weight), residual, bias=dense.bias, ln_scale=layer_norm.weight,
        ln_bias=layer_norm.bias, dropout_rate=cfg.hidden_dropout_prob, ln_epsilon=cfg.layer_norm_eps,
        training=True)


class BertLayer(nn.Layer):
    """One post-LN encoder layer: attention block, then FFN (dense, act, dense, dropout, residual,
    LayerNorm); `fusions` (see `Fusions`) picks the ops, never the parameters."""

    def __init__(self, cfg, index, impl, fusions=Fusions()):
        super().__init__()
        prefix = f"bert.encoder.layer.{index}"
        self.cfg, self.fusions = cfg, fusions
        self.attention = BertAttention(cfg, f"{prefix}.attention", impl, fusions)
        self.intermediate = _linear(cfg.hidden_size, cfg.intermediate_size,
                                    f"{prefix}.intermediate.dense", cfg)
        self.output_dense = _linear(cfg.intermediate_size, cfg.hidden_size,
                                    f"{prefix}.output.dense", cfg)
        self.output_layer_norm = _layer_norm(f"{prefix}.output.LayerNorm", cfg)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, hidden, mask_bias):
        """hidden float [B, L, H], mask_bias from `BertModel.attention_bias` -> float [B, L, H]."""
        attn = self.attention(hidden, mask_bias)
        if self.fusions.ffn:
            return self._fused_ffn(attn)
        inner = _activation(self.intermediate(attn), self.cfg.hidden_act)
        if self.fusions.residual_ln:
            return _bias_dropout_residual_ln(inner, attn, self.output_dense, self.output_layer_norm, self.cfg)
        return self.output_layer_norm(paddle.add(self.dropout(self.output_dense(inner)), attn))

    def _fused_ffn(self, attn):
        # Post-LN with the residual, as the unfused FFN; BERT has no dropout after the activation
        # (dropout1), only after the second dense (dropout2). The kernel's gelu is the erf form.
        return incubate_F.fused_feedforward(
            attn, self.intermediate.weight, self.output_dense.weight, linear1_bias=self.intermediate.bias,
            linear2_bias=self.output_dense.bias, ln2_scale=self.output_layer_norm.weight,
            ln2_bias=self.output_layer_norm.bias, dropout1_rate=0.0,
            dropout2_rate=self.cfg.hidden_dropout_prob, activation=self.cfg.hidden_act,
            ln2_epsilon=self.cfg.layer_norm_eps, pre_layer_norm=False, training=True, add_residual=True)


class BertModel(nn.Layer):
    """Embeddings + encoder stack + pooler.

    Args:
      cfg: BertConfig.
      attention_impl: one of ATTENTION_IMPLS (see `select_attention_impl`); default "plain".
      fusions: Fusions (see `select_fusions`); default none.
    """

    def __init__(self, cfg, attention_impl="plain", fusions=Fusions()):
        super().__init__()
        self.cfg = cfg
        self.attention_impl = attention_impl
        self.embeddings = BertEmbeddings(cfg)
        self.encoder = nn.LayerList([BertLayer(cfg, i, attention_impl, fusions)
                                     for i in range(cfg.num_hidden_layers)])
        self.pooler = _linear(cfg.hidden_size, cfg.hidden_size, "bert.pooler.dense", cfg)

    def forward(self, input_ids, token_type_ids, attention_mask):
        """Encode a batch.

        Args:
          input_ids: int64 [B, L], ids < vocab_size.
          token_type_ids: int64 [B, L], 0 for segment A, 1 for segment B.
          attention_mask: int64 [B, 1, 1, L], 1 = real token, 0 = padding.

        Returns:
          (sequence_output float [B, L, H], pooled_output float [B, H]).
        """
        mask_bias = self.attention_bias(attention_mask, paddle.shape(input_ids)[1])
        hidden = self.embeddings(input_ids, token_type_ids)
        for layer in self.encoder:
            hidden = layer(hidden, mask_bias)
        pooled = paddle.tanh(self.pooler(hidden[:, 0]))
        return hidden, pooled

    def attention_bias(self, attention_mask, seq_len):
        """The additive mask every layer's attention takes, built once per forward.

        Args:
          attention_mask: int64 [B, 1, 1, L], 1 = real token, 0 = padding.
          seq_len: int or int Tensor, L.

        Returns:
          float32 [B, 1, 1, L] (broadcast over queries by the attention ops), or for "flash" the dense
          [B, 1, L, L] that flash_attn requires. Built here rather than in each layer, so a 24-layer model
          holds one [B, 1, L, L] copy (kept for backward) instead of 24.
        """
        bias = attention_mask_bias(attention_mask)
        if self.attention_impl == "flash":
            bias = paddle.expand(bias, [-1, -1, seq_len, -1])
        return bias


class BertPretrainingHeads(nn.Layer):
    """MLM head (dense, act, LN, decoder tied to word embeddings, bias) and NSP head (dense to 2)."""

    def __init__(self, cfg, word_embeddings):
        super().__init__()
        self.cfg = cfg
        self.transform = _linear(cfg.hidden_size, cfg.hidden_size, "cls.predictions.transform.dense",
                                 cfg)
        self.transform_layer_norm = _layer_norm("cls.predictions.transform.LayerNorm", cfg)
        self.decoder_weight = word_embeddings  # [padded_vocab, H], shared with the input embedding
        self.decoder_bias = self.create_parameter(
            [cfg.padded_vocab_size], attr=_bias_attr("cls.predictions.bias"), is_bias=True)
        self.seq_relationship = _linear(cfg.hidden_size, 2, "cls.seq_relationship", cfg)

    def forward(self, sequence_output, pooled_output, masked_lm_labels):
        """Score only the positions that are predicted.

        Args:
          sequence_output: float [B, L, H].
          pooled_output: float [B, H].
          masked_lm_labels: int64 [B, L], -1 where a position is not predicted.

        Returns:
          (mlm_logits float [N, padded_vocab], nsp_logits float [B, 2]) where N is the number of
          labels != -1, in row-major order of `masked_lm_labels`. N must be >= 1 (Paddle's matmul
          rejects empty inputs); the masking in `data.masking` predicts at least one token per row.
        """
        hidden = paddle.reshape(sequence_output, [-1, self.cfg.hidden_size])
        # [N, 1] flat indices; gather_nd keeps [N, H] even when N == 1 (a squeeze would not).
        positions = paddle.nonzero(paddle.reshape(masked_lm_labels, [-1]) != -1)
        hidden = paddle.gather_nd(hidden, positions)
        hidden = self.transform_layer_norm(_activation(self.transform(hidden), self.cfg.hidden_act))
        logits = paddle.add(paddle.matmul(hidden, self.decoder_weight, transpose_y=True),
                            self.decoder_bias)
        padding = self.cfg.padded_vocab_size - self.cfg.vocab_size
        if padding:
            logits = paddle.add(logits, paddle.concat([
                paddle.zeros([self.cfg.vocab_size], logits.dtype),
                paddle.full([padding], MASK_NEG, logits.dtype)]))
        return logits, self.seq_relationship(pooled_output)


class BertForPretraining(nn.Layer):
    """BertModel + pre-training heads. Args as `BertModel` (attention_impl, fusions)."""

    def __init__(self, cfg, attention_impl="plain", fusions=Fusions()):
        super().__init__()
        self.bert = BertModel(cfg, attention_impl, fusions)
        self.cls = BertPretrainingHeads(cfg, self.bert.embeddings.word_embeddings.weight)

    def forward(self, input_ids, token_type_ids, attention_mask, masked_lm_labels):
        """Feeds as `BertModel.forward` plus masked_lm_labels int64 [B, L] (-1 = not predicted).

        Returns:
          (mlm_logits float [N, padded_vocab], nsp_logits float [B, 2]); see BertPretrainingHeads.
        """
        sequence_output, pooled = self.bert(input_ids, token_type_ids, attention_mask)
        return self.cls(sequence_output, pooled, masked_lm_labels)


class BertForQuestionAnswering(nn.Layer):
    """BertModel + span head (dense to 2 per token). Args as `BertModel` (attention_impl, fusions)."""

    def __init__(self, cfg, attention_impl="plain", fusions=Fusions()):
        super().__init__()
        self.bert = BertModel(cfg, attention_impl, fusions)
        self.qa_outputs = _linear(cfg.hidden_size, 2, TASK_HEADS["SQuAD"][0], cfg)

    def forward(self, input_ids, token_type_ids, attention_mask):
        """Feeds as `BertModel.forward`.

        Returns:
          (start_logits float [B, L], end_logits float [B, L]).
        """
        sequence_output, _ = self.bert(input_ids, token_type_ids, attention_mask)
        start, end = paddle.unbind(self.qa_outputs(sequence_output), axis=-1)
        return start, end


class BertForSequenceClassification(nn.Layer):
    """BertModel + sentence(-pair) head: pooled output -> dropout -> dense to `num_labels`.

    Named as Hugging Face's `BertForSequenceClassification` (`classifier.weight` / `classifier.bias`), so its
    fine-tuned checkpoints load and ours export. Dropout is `hidden_dropout_prob`, as HF's default.

    Args:
      cfg: BertConfig.
      num_labels: int >= 1 (1 = a regression score, e.g. STS-B).
      attention_impl, fusions: as `BertModel`.
    """

    def __init__(self, cfg, num_labels, attention_impl="plain", fusions=Fusions()):
        super().__init__()
        if not is_int(num_labels) or num_labels < 1:
            raise ValueError(f"num_labels must be a positive integer, got {num_labels!r}")
        self.bert = BertModel(cfg, attention_impl, fusions)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)
        self.classifier = _linear(cfg.hidden_size, num_labels, TASK_HEADS["GLUE"][0], cfg)

    def forward(self, input_ids, token_type_ids, attention_mask):
        """Feeds as `BertModel.forward`.

        Returns:
          logits float [B, num_labels] (for num_labels 1: the predicted score in column 0).
        """
        _, pooled = self.bert(input_ids, token_type_ids, attention_mask)
        return self.classifier(self.dropout(pooled))
