"""Static-program builders for BERT pre-training, SQuAD and GLUE: config in, named bundle out.

Owns: the feed specification (`FEED_SPECS` / `create_feeds`, the single source of feed names, shapes
and dtypes that the data loaders must yield), `TrainConfig` (the training knobs the builders need),
`build_pretraining`, `build_squad`, `build_glue`, `build_dist_strategy` (fleet: AMP, gradient merge, build
strategy) and `to_bf16_inference`, and which program rewrites a build runs, in which order. Does not
own: running anything (never calls `exe.run`), files, fleet initialisation (`fleet.init` happens in
`utils.runtime` before building with use_fleet=True), stepping the LR scheduler, checkpoints, or the
rewrites themselves (`program_rewrites`: the non-finite update guard and counters, the CPU LAMB kernel).

Mixed precision routes (Paddle 2.6.2 legacy static):
  * amp="fp16" + use_fleet: fleet's AMP meta-optimizer (`strategy.amp`), as the NVIDIA reference.
  * amp="bf16", or AMP without fleet: `paddle.static.amp.decorate(dtype=...)`; with fleet the
    decorated optimizer is then handed to `fleet.distributed_optimizer` (fleet 2.6's AMP is fp16-only).
  * Mixed-precision *training* is a GPU path: on a CPU build Paddle's AMP pass keeps every op fp32
    (fp16) and bf16 training crashes in oneDNN (`MatmulGradKernel<bfloat16>`, measured on Paddle 2.6.2). So `TrainConfig` rejects amp on device "cpu",
    and the builders raise if the AMP pass left no low-precision matmul instead of training in fp32
    while the logs say fp16.
  * bf16 *inference* works on CPU: `to_bf16_inference(eval_program)`.

Gradient merge: the training loop still calls `exe.run` once per micro-batch; parameters (and the
LR scheduler, which the loop steps) advance once every `gradient_merge_steps` runs.
"""
import contextlib
import dataclasses
import logging
from typing import Dict, Optional, Tuple

import paddle

import loss as loss_lib
import modeling
import optimizer as optimizer_lib
import program_rewrites
from gloo_data_parallel import AllReduceGradients
from lr_scheduler import build_lr_scheduler, lr_at
from utils.checks import is_int

logger = logging.getLogger(__name__)

AMP_MODES = ("off", "fp16", "bf16")
DEVICES = ("cpu", "gpu")
# The NVIDIA reference's lists: these ops are safe and fast in half precision on GPU...
AMP_CUSTOM_WHITE_LIST = ("softmax", "layer_norm", "gelu")
# ...and pure fp16 keeps embedding lookups in fp32.
PURE_FP16_BLACK_LIST = ("lookup_table", "lookup_table_v2")
# The loss stays fp32 at every AMP level. O1's default black list has these ops already, but O2 drops
# Paddle's default black list: cross-entropy and its mean would run in fp16, and the loss-scale
# gradient at the loss would overflow for any scale above 65504. A custom black list survives O2.
LOSS_FP32_OPS = ("softmax_with_cross_entropy", "reduce_mean", "mean")
# Ops that only combine losses (sums, averages); `_loss_var_names` keeps their outputs fp32 too.
_LOSS_COMBINING_OPS = ("elementwise_add", "sum", "scale", "elementwise_div", "elementwise_mul")
LOW_PRECISION_DTYPES = (paddle.float16, paddle.bfloat16)
# The TrainConfig switches of the fused paths besides attention (`--fuse-qkv` ...), each off by default.
FUSION_FLAGS = ("fuse_qkv", "fuse_ffn", "fuse_residual_ln", "fuse_gemm_epilogue")


@dataclasses.dataclass(frozen=True)
class FeedSpec:
    """One feed: name, static shape (-1 = any size), dtype. All BERT feeds are int64."""
    name: str
    shape: Tuple[int, ...]
    dtype: str = "int64"


_COMMON_FEEDS = (
    FeedSpec("input_ids", (-1, -1)),              # [B, L] token ids
    FeedSpec("token_type_ids", (-1, -1)),         # [B, L] 0 = segment A, 1 = segment B
    FeedSpec("attention_mask", (-1, 1, 1, -1)),   # [B, 1, 1, L] 1 = real token, 0 = padding
)
FEED_SPECS = {
    "pretraining": _COMMON_FEEDS + (
        FeedSpec("next_sentence_labels", (-1, 1)),  # [B, 1] 1 = B is a random sentence
        FeedSpec("masked_lm_labels", (-1, -1)),     # [B, L] original id where predicted, else -1
    ),
    "squad": _COMMON_FEEDS + (
        FeedSpec("start_positions", (-1, 1)),       # [B, 1] answer start token index
        FeedSpec("end_positions", (-1, 1)),         # [B, 1] answer end token index
    ),
    "squad_predict": _COMMON_FEEDS,
    "glue": _COMMON_FEEDS + (
        FeedSpec("labels", (-1, 1)),                # [B, 1] class id
    ),
    "glue_regression": _COMMON_FEEDS + (
        FeedSpec("labels", (-1, 1), "float32"),     # [B, 1] target score (STS-B)
    ),
    "glue_predict": _COMMON_FEEDS,
}


def create_feeds(kind):
    """Create the `paddle.static.data` feed variables of one task in the current program.

    Args:
      kind: a key of FEED_SPECS (e.g. "pretraining", "squad", "glue"; see it for names, shapes, dtypes).

    Returns:
      dict name -> Variable, in FEED_SPECS order.

    Raises:
      ValueError: unknown kind.
    """
    if kind not in FEED_SPECS:
        raise ValueError(f"unknown feed kind {kind!r}; expected one of {sorted(FEED_SPECS)}")
    return {spec.name: paddle.static.data(spec.name, list(spec.shape), spec.dtype)
            for spec in FEED_SPECS[kind]}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The training knobs the builders need (run_* fill it from their parsed config).

    Fields:
      optimizer: "Lamb" | "AdamW" (see optimizer.REMOVED_OPTIMIZERS for DistributedFusedLamb).
      learning_rate, warmup_start_lr, warmup_steps, total_steps, lr_power, end_lr: LR schedule,
        see `lr_scheduler.lr_at`; total_steps counts optimizer updates, not micro-batches.
      weight_decay, beta1, beta2, epsilon, grad_clip_norm: optimizer hyper-parameters.
      amp: "off" | "fp16" | "bf16" mixed-precision training (GPU only).
      use_pure_fp16: O2 (fp16 parameters with fp32 master weights); needs amp="fp16".
      use_dynamic_loss_scaling: None = True for fp16; must stay None/False for bf16 (no scaling).
      scale_loss: initial loss scale; None = 2**15 for fp16, 1.0 for bf16.
      gradient_merge_steps: micro-batches per optimizer update (>= 1).
      fuse_mha: ask for fused attention (see `modeling.select_attention_impl`).
      fuse_qkv, fuse_ffn, fuse_residual_ln: ask for those fused paths (see `modeling.Fusions`; each is
        dropped, with one log line, where `modeling.select_fusions` finds no kernel).
      fuse_gemm_epilogue: `BuildStrategy.fuse_gemm_epilogue` (matmul + bias [+ act] as cuBLASLt epilogues);
        a CUDA-build pass, so only on device "gpu" of a CUDA build (else one log line, and off).
      attention_impl: force an implementation (one of modeling.ATTENTION_IMPLS); None = choose.
      use_fleet: wrap the optimizer with `fleet.distributed_optimizer` (fleet.init done by caller).
      allreduce_world_size: > 1 averages gradients over that many CPU ranks with
        `gloo_data_parallel.AllReduceGradients` (init_parallel_env done by caller); the CPU
        stand-in for Fleet, which has no CPU communicator in Paddle 2.6. Exclusive with use_fleet.
      seed: startup program random_seed: parameter init, identical on every rank. Dropout is not
        seeded here; it draws from Paddle's global generator (paddle.seed / get_rng_state).
      device: "cpu" | "gpu", where the program will run.
      cpu_lamb_kernel: on device "cpu", run LAMB with the fused multi-threaded kernel of `cpu_kernels` (built on
        first use; Paddle's own single-threaded `lamb` op when it cannot be built or this is False).
      cpu_dropout_kernel: on device "cpu", run training dropouts with the multi-threaded kernel of
        `cpu_kernels` (masks from a counter-based generator seeded from Paddle's global generator; Paddle's
        own `dropout` op when it cannot be built or this is False).
      cpu_training_kernels: on device "cpu", run the bias-add and LayerNorm gradients with the multi-threaded
        kernels of `cpu_kernels` (`program_rewrites.use_cpu_training_kernels`; Paddle's ops when they cannot
        be built, when `BERT_PADDLE_CPU_GRAD_KERNELS=0`, or when this is False).

    Raises:
      ValueError: at construction, for inconsistent or out-of-range values.
    """
    optimizer: str = "Lamb"
    learning_rate: float = 1e-4
    warmup_start_lr: float = 0.0
    warmup_steps: int = 0
    total_steps: int = 1
    lr_power: float = 1.0
    end_lr: float = 0.0
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.999
    epsilon: float = 1e-6
    grad_clip_norm: Optional[float] = 1.0
    amp: str = "off"
    use_pure_fp16: bool = False
    use_dynamic_loss_scaling: Optional[bool] = None
    scale_loss: Optional[float] = None
    gradient_merge_steps: int = 1
    fuse_mha: bool = False
    fuse_qkv: bool = False
    fuse_ffn: bool = False
    fuse_residual_ln: bool = False
    fuse_gemm_epilogue: bool = False
    attention_impl: Optional[str] = None
    use_fleet: bool = False
    allreduce_world_size: int = 1
    seed: int = 42
    device: str = "cpu"
    cpu_lamb_kernel: bool = True
    cpu_dropout_kernel: bool = True
    cpu_training_kernels: bool = True

    def __post_init__(self):
        # Users meet these messages through run_pretraining.py / run_squad.py: they name the flags.
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {AMP_MODES}, got {self.amp!r}")
        if self.device not in DEVICES:
            raise ValueError(f"--device must be one of {DEVICES}, got {self.device!r}")
        if self.amp != "off" and self.device == "cpu":
            raise ValueError(f"--amp ({self.amp_dtype}) training needs --device gpu: on CPU Paddle 2.6 "
                             f"keeps fp16 ops in fp32 and bf16 training crashes; run without --amp")
        if self.use_pure_fp16 and self.amp != "fp16":
            raise ValueError("--use-pure-fp16 needs --amp with --amp-dtype float16")
        if self.amp == "bf16" and self.use_dynamic_loss_scaling:
            raise ValueError("--amp-dtype bfloat16 needs no loss scaling: drop --use-dynamic-loss-scaling")
        if self.scale_loss is not None and not self.scale_loss > 0:
            raise ValueError(f"--scale-loss must be > 0, got {self.scale_loss!r}")
        if not is_int(self.gradient_merge_steps) or self.gradient_merge_steps < 1:
            raise ValueError(f"--gradient-merge-steps must be an integer >= 1, "
                             f"got {self.gradient_merge_steps!r}")
        if self.use_pure_fp16 and self.gradient_merge_steps > 1:
            # Paddle 2.6's GradientMergeOptimizer (alone and inside fleet) creates each merge buffer
            # with its parameter's dtype and has no option for another: under O2 it would sum k
            # loss-scaled fp16 gradients in fp16 (overflow, lost small terms).
            raise ValueError(f"--use-pure-fp16 with --gradient-merge-steps {self.gradient_merge_steps} "
                             f"is not supported: Paddle's gradient merge would accumulate the loss-scaled "
                             f"gradients in fp16; use --amp without --use-pure-fp16 (O1: fp32 parameters "
                             f"and merge buffers), or --gradient-merge-steps 1")
        for name in FUSION_FLAGS:
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.attention_impl is not None and self.attention_impl not in modeling.ATTENTION_IMPLS:
            raise ValueError(f"attention_impl must be None or one of {modeling.ATTENTION_IMPLS}, "
                             f"got {self.attention_impl!r}")
        if not is_int(self.allreduce_world_size) or self.allreduce_world_size < 1:
            raise ValueError(f"allreduce_world_size must be an integer >= 1, "
                             f"got {self.allreduce_world_size!r}")
        if self.allreduce_world_size > 1 and self.use_fleet:
            raise ValueError("allreduce_world_size > 1 is the CPU replacement for use_fleet; "
                             "set only one of them")
        if not is_int(self.seed) or self.seed < 0:
            raise ValueError(f"--seed must be a non-negative integer, got {self.seed!r}")
        # Schedule and optimizer values are checked by the functions that own them, now rather than
        # halfway through a build.
        self.lr_kwargs()
        optimizer_lib.check_hparams(self.optimizer, self.weight_decay, self.beta1, self.beta2,
                                    self.epsilon, self.grad_clip_norm)

    def lr_kwargs(self):
        """Keyword arguments of `lr_scheduler.lr_at` / `build_lr_scheduler` (validated)."""
        kwargs = dict(base_lr=self.learning_rate, warmup_start_lr=self.warmup_start_lr,
                      warmup_steps=self.warmup_steps, total_steps=self.total_steps,
                      power=self.lr_power, end_lr=self.end_lr)
        lr_at(0, **kwargs)
        return kwargs

    @property
    def amp_dtype(self):
        """"float16" | "bfloat16" | None."""
        return {"fp16": "float16", "bf16": "bfloat16"}.get(self.amp)

    @property
    def loss_scaling(self):
        """(initial scale, dynamic?) after applying the per-dtype defaults."""
        if self.amp == "bf16":
            return (self.scale_loss or 1.0), False
        dynamic = True if self.use_dynamic_loss_scaling is None else self.use_dynamic_loss_scaling
        return (self.scale_loss or 2.0 ** 15), dynamic


@dataclasses.dataclass(frozen=True)
class TrainMetrics:
    """The metrics a pretraining program keeps on the device, read only when the run logs.

    Why: fetching the losses after every micro-batch costs a host synchronisation each time (32 per
    update at the recipe's gradient merge), and averaging them over ranks an all-reduce each time. The
    program instead adds each micro-batch's values into a persistable window; `program` reads the window
    (averaged over ranks) when the run logs, and the runner then zeroes it.

    Fields:
      names: the metrics summed per micro-batch, in the order of the window (WINDOW_METRICS).
      sums_var: name of the persistable float32 [len(names) + 1] window: the sums, then the micro-batch
        count.
      program: a Program whose fetch `mean_sums` is the window averaged over the data-parallel ranks
        (the count stays the per-rank count).
      mean_sums: the Variable of `program` to fetch.
      nonfinite: (total, consecutive) names of the float32 [1] skipped-update counters
        (`program_rewrites.count_nonfinite_updates`), or None.
    """
    names: Tuple[str, ...]
    sums_var: str
    program: paddle.static.Program
    mean_sums: object
    nonfinite: Optional[Tuple[str, str]]


WINDOW_METRICS = ("loss", "mlm_loss", "nsp_loss", "mlm_acc", "nsp_acc")
METRICS_PREFIX = "train_metrics"


@dataclasses.dataclass(frozen=True)
class ProgramBundle:
    """Everything a run needs from a build.

    Fields:
      main_program: the training program (forward, backward, optimizer), or the forward-only
        program of a predict-only SQuAD bundle.
      startup_program: parameter (and optimizer state) initialisation.
      eval_program: `clone(for_test=True)` of the forward taken before `minimize` (dropout off), in
        the training precision under AMP (fp16/bf16 ops; O2: the fp16 parameters `amp_init` leaves).
      feed_names / eval_feed_names: feed variable names of main_program / eval_program.
      fetches / eval_fetches: name -> Variable of each program (e.g. "loss", "lr").
      lr_scheduler: PolyWarmupLR or None; the loop calls `step()` once per optimizer update.
      optimizer: the outermost optimizer object (fleet, AMP or gradient-merge wrapper) or None.
      amp_optimizer: the object with `amp_init` (Paddle's AMP decorator, or fleet when fleet applies
        AMP) or None without AMP; under pure fp16 `utils.amp_state.init_pure_fp16` calls its `amp_init`.
        Not always `optimizer`: a gradient-merge wrapper outside AMP has no `amp_init`.
      metrics: TrainMetrics of a pretraining program (what its loop logs without fetching), else None.
      attention_impl: the attention implementation that was built.
      fusions: modeling.Fusions that were built (the requested ones this device and build can run).
      build_strategy: paddle.static.BuildStrategy with the graph fusions for this build (NGC's
        fused attention pass, GEMM epilogue fusion under `fuse_gemm_epilogue`). Without fleet, a GPU runner applies
        it with `paddle.static.CompiledProgram(main_program, build_strategy=...)`; fleet applies the
        copy in `build_dist_strategy` itself. None for predict-only bundles.
    """
    main_program: paddle.static.Program
    startup_program: paddle.static.Program
    eval_program: paddle.static.Program
    feed_names: Tuple[str, ...]
    eval_feed_names: Tuple[str, ...]
    fetches: Dict[str, object]
    eval_fetches: Dict[str, object]
    lr_scheduler: Optional[object]
    optimizer: Optional[object]
    attention_impl: str
    build_strategy: Optional[object]
    amp_optimizer: Optional[object] = None
    metrics: Optional[TrainMetrics] = None
    fusions: modeling.Fusions = modeling.Fusions()


def build_dist_strategy(train_cfg, attention_impl="plain", fp32_var_names=(), fusions=modeling.Fusions()):
    """fleet.DistributedStrategy for collective training, after the NVIDIA reference.

    Args:
      train_cfg: TrainConfig.
      attention_impl: the built attention implementation ("cudnn_fused" turns on NGC's pass).
      fp32_var_names: variables AMP must keep fp32 (the losses, see `_loss_var_names`).
      fusions: the built modeling.Fusions (their fused ops join the AMP white list).

    Returns:
      fleet.DistributedStrategy with: fp16 AMP (white list softmax/layer_norm/gelu, embeddings kept
      fp32 under pure fp16, the loss ops and `fp32_var_names` fp32, loss scale x2 every 2000 good steps
      and x0.5 on every overflow);
      gradient merge (k steps, averaged); fused all-reduce; build-strategy fusions the installed
      Paddle has, without the in-place pass.
    """
    from paddle.distributed import fleet

    strategy = fleet.DistributedStrategy()
    build = _build_strategy(train_cfg, attention_impl)
    # Fleet's RawProgramOptimizer rewrites the program with these passes itself, and its in-place
    # pass protects only the feeds: `loss` then reuses `mlm_loss`'s buffer and the logged mlm_loss
    # equals the total loss. The executor re-applies in-place reuse to the rewritten (plain) program
    # with feeds and fetches skipped, so turning the pass off here costs no memory.
    build.enable_inplace = False
    strategy.build_strategy = build
    exec_strategy = paddle.static.ExecutionStrategy()
    exec_strategy.num_threads = 1
    exec_strategy.num_iteration_per_drop_scope = 10000
    strategy.execution_strategy = exec_strategy
    strategy.fuse_all_reduce_ops = True
    strategy.fuse_grad_size_in_MB = 0
    if train_cfg.amp == "fp16":
        init_scale, dynamic = train_cfg.loss_scaling
        white, black = _amp_op_lists(train_cfg, attention_impl, fusions)
        strategy.amp = True
        strategy.amp_configs = {
            "custom_white_list": sorted(white), "custom_black_list": sorted(black),
            "custom_black_varnames": sorted(fp32_var_names),
            "init_loss_scaling": init_scale, "use_dynamic_loss_scaling": dynamic,
            "incr_every_n_steps": 2000, "decr_every_n_nan_or_inf": 1,
            "incr_ratio": 2.0, "decr_ratio": 0.5,
            "use_pure_fp16": train_cfg.use_pure_fp16,
            # The reference set use_fp16_guard=use_pure_fp16, which casts only ops built inside
            # fp16_guard(); our model has none, so the whole model is converted instead.
            "use_fp16_guard": False,
        }
    if train_cfg.gradient_merge_steps > 1:
        strategy.gradient_merge = True
        strategy.gradient_merge_configs = {"k_steps": train_cfg.gradient_merge_steps, "avg": True}
    return strategy


def _build_strategy(train_cfg, attention_impl):
    build = paddle.static.BuildStrategy()
    if hasattr(build, "enable_addto"):
        build.enable_addto = True
    if _gemm_epilogue_reason(train_cfg) is None:
        build.fuse_gemm_epilogue = True
    if attention_impl == "cudnn_fused":
        build.fuse_dot_product_attention = True  # only NGC builds have it (select_attention_impl)
    build.fuse_all_reduce_ops = True
    build.reduce_strategy = paddle.static.BuildStrategy.ReduceStrategy.AllReduce
    return build


def _gemm_epilogue_reason(train_cfg):
    """None when `BuildStrategy.fuse_gemm_epilogue` is asked for and can run, else why not (str).

    AMP runs on a CUDA build have had it since the GPU recipe was first built (the reference's choice too:
    without it the performance model puts phase 1 about 14 % lower); `--fuse-gemm-epilogue` asks for it in
    fp32 / TF32 runs as well.
    """
    if not (train_cfg.fuse_gemm_epilogue or train_cfg.amp != "off"):
        return "not requested"
    # The attribute exists on every build but its pass is only registered in CUDA builds.
    if train_cfg.device != "gpu" or not paddle.is_compiled_with_cuda():
        return "its pass exists only in CUDA builds, for --device gpu"
    if not hasattr(paddle.static.BuildStrategy(), "fuse_gemm_epilogue"):
        return "this Paddle's BuildStrategy has no fuse_gemm_epilogue"
    return None


def _select_fusions(train_cfg, attention_impl):
    """The modeling.Fusions to build, logged once per build with the GEMM-epilogue choice (one line for
    each requested fusion that falls back)."""
    requested = modeling.Fusions(qkv=train_cfg.fuse_qkv, ffn=train_cfg.fuse_ffn,
                                 residual_ln=train_cfg.fuse_residual_ln)
    fusions = modeling.select_fusions(requested, train_cfg.device, train_cfg.amp, attention_impl)
    epilogue = _gemm_epilogue_reason(train_cfg)
    if train_cfg.fuse_gemm_epilogue and epilogue is not None:
        logger.info("--fuse-gemm-epilogue requested but %s: leaving it off", epilogue)
    names = [f"--fuse-{name.replace('_', '-')}" for name in fusions.names()]
    names += ["--fuse-gemm-epilogue"] if epilogue is None else []
    logger.info("fused paths: %s", ", ".join(names) or "none")
    return fusions


@contextlib.contextmanager
def _amp_keeps_fused_ln_params_fp32(fusions):
    """While AMP rewrites a program: keep the LayerNorm scale/bias inputs and mean/variance outputs of
    `fused_bias_dropout_residual_layer_norm` in fp32.

    Why: its fp16 kernel reads them as float (as `layer_norm`'s does), but Paddle 2.6's AMP pass knows that
    only for layer_norm, fused_attention and fused_feedforward (`fp16_utils._keep_fp32_input`); without
    this it would cast them to fp16 and the kernel would refuse them. Patched only for the duration of the
    rewrite, and only when the fused op is in the program.
    """
    if not fusions.residual_ln:
        yield
        return
    from paddle.static.amp import fp16_utils

    op_type = modeling.FUSED_OP_TYPES["residual_ln"]
    keep_in, keep_out = fp16_utils._keep_fp32_input, fp16_utils._keep_fp32_output
    fp16_utils._keep_fp32_input = lambda op, name: (
        name in ("LnScale", "LnBias") if op.type == op_type else keep_in(op, name))
    fp16_utils._keep_fp32_output = lambda op, name: (
        name in ("LnMean", "LnVariance") if op.type == op_type else keep_out(op, name))
    try:
        yield
    finally:
        fp16_utils._keep_fp32_input, fp16_utils._keep_fp32_output = keep_in, keep_out


def _amp_op_lists(train_cfg, attention_impl, fusions=modeling.Fusions()):
    """(custom white list, custom black list) of op types for AMP."""
    white = set(AMP_CUSTOM_WHITE_LIST)
    if attention_impl == "flash":
        white.add("flash_attn")  # not in Paddle's default lists; it has only fp16/bf16 kernels
    if fusions.residual_ln:
        # Paddle's lists omit it (so O1 would run it in fp32); it stands for the white-listed layer_norm.
        # fused_feedforward is on Paddle's gray list already.
        white.add(modeling.FUSED_OP_TYPES["residual_ln"])
    black = set(LOSS_FP32_OPS)
    if train_cfg.use_pure_fp16:
        black.update(PURE_FP16_BLACK_LIST)
    return white, black


def _loss_var_names(program, loss_vars):
    """Names of the loss variables and of the sums/averages that produce them from the per-loss means.

    Under O2 every op not black-listed runs in fp16, including the `elementwise_add` that sums the MLM and
    NSP losses (it cannot be black-listed by type: the model is made of them). AMP keeps ops that read or
    write one of these names in fp32.
    """
    block = program.global_block()
    producers = {name: op for op in block.ops for name in op.output_arg_names}
    names, todo = set(), [var.name for var in loss_vars]
    while todo:
        name = todo.pop()
        if name in names:
            continue
        names.add(name)
        op = producers.get(name)
        if op is not None and op.type in _LOSS_COMBINING_OPS:
            todo.extend(op.input_arg_names)
    return names


def _eval_in_training_precision(eval_program, train_cfg, attention_impl, fp32_var_names, fusions):
    """Rewrite a for_test clone (taken before `minimize`, so fp32) to the training program's AMP level.

    Why: under O2 the scope holds fp16 parameters after `amp_init`, which an fp32 eval program cannot
    read; and `flash_attn` (the `--fuse-mha` choice under AMP) has no fp32 GPU kernel at all. The same
    op lists as training, so the eval program expects exactly the parameter dtypes training leaves.
    Paddle's `amp_init(test_program=..., use_fp16_test=True)` does the same rewrite at run time.
    """
    from paddle.static.amp.fp16_utils import cast_model_to_fp16
    from paddle.static.amp.fp16_lists import get_low_precision_vartype

    white, black = _amp_op_lists(train_cfg, attention_impl, fusions)
    # A fresh lists object: cast_model_to_fp16 edits the black list of the one it is given at O2.
    lists = paddle.static.amp.AutoMixedPrecisionLists(white, black, set(fp32_var_names),
                                                      dtype=train_cfg.amp_dtype)
    cast_model_to_fp16(eval_program, lists, use_fp16_guard=False,
                       dest_type=get_low_precision_vartype(train_cfg.amp_dtype),
                       level="O2" if train_cfg.use_pure_fp16 else "O1")


def _wrap_optimizer(opt, train_cfg, attention_impl, fp32_var_names, fusions):
    """Apply AMP, fleet and gradient merge. Returns (outermost optimizer, AMP optimizer or None)."""
    amp_opt = None
    if train_cfg.allreduce_world_size > 1:
        opt = AllReduceGradients(opt, train_cfg.allreduce_world_size)
    if train_cfg.amp == "bf16" or (train_cfg.amp == "fp16" and not train_cfg.use_fleet):
        white, black = _amp_op_lists(train_cfg, attention_impl, fusions)
        init_scale, dynamic = train_cfg.loss_scaling
        opt = paddle.static.amp.decorate(
            opt, paddle.static.amp.AutoMixedPrecisionLists(white, black, set(fp32_var_names),
                                                           dtype=train_cfg.amp_dtype),
            level="O2" if train_cfg.use_pure_fp16 else "O1", dtype=train_cfg.amp_dtype,
            init_loss_scaling=init_scale, incr_every_n_steps=2000, decr_every_n_nan_or_inf=1,
            incr_ratio=2.0, decr_ratio=0.5, use_dynamic_loss_scaling=dynamic)
        amp_opt = opt
    if train_cfg.use_fleet:
        from paddle.distributed import fleet
        opt = fleet.distributed_optimizer(
            opt, strategy=build_dist_strategy(train_cfg, attention_impl, fp32_var_names, fusions))
        if train_cfg.amp == "fp16":
            amp_opt = opt
    elif train_cfg.gradient_merge_steps > 1:
        opt = paddle.incubate.optimizer.GradientMergeOptimizer(
            opt, k_steps=train_cfg.gradient_merge_steps, avg=True)
    return opt, amp_opt


def _minimize(loss, train_cfg, attention_impl, fusions, main, startup, fetched_losses=(), eval_program=None):
    """Add backward + optimizer ops. `fetched_losses`: more loss variables AMP keeps fp32 (the parts).
    Under AMP, `eval_program` (the for_test clone) is rewritten to the training precision. `fusions`: the
    built modeling.Fusions (AMP lists and rules for their ops).

    Returns:
      (lr_scheduler, outermost optimizer, AMP optimizer or None, extra fetches {"lr",
      ["loss_scaling"]}, BuildStrategy).
    """
    lr = build_lr_scheduler(**train_cfg.lr_kwargs())
    opt = optimizer_lib.build_optimizer(
        train_cfg.optimizer, lr, weight_decay=train_cfg.weight_decay, beta1=train_cfg.beta1,
        beta2=train_cfg.beta2, epsilon=train_cfg.epsilon, grad_clip_norm=train_cfg.grad_clip_norm,
        multi_precision=train_cfg.use_pure_fp16)
    fp32_names = _loss_var_names(main, [loss, *fetched_losses]) if train_cfg.amp != "off" else set()
    outer, amp_opt = _wrap_optimizer(opt, train_cfg, attention_impl, fp32_names, fusions)
    with _amp_keeps_fused_ln_params_fp32(fusions):
        outer.minimize(loss, startup_program=startup)
    # fp32 and bf16 have no loss scaler checking the gradients: skip non-finite updates in the program.
    program_rewrites.skip_nonfinite_updates(main)
    if train_cfg.device == "cpu" and train_cfg.cpu_lamb_kernel:
        program_rewrites.use_cpu_lamb_kernel(main)
    if train_cfg.device == "cpu" and train_cfg.cpu_dropout_kernel:
        program_rewrites.use_cpu_dropout_kernel(main)
    if train_cfg.device == "cpu" and train_cfg.cpu_training_kernels:
        program_rewrites.use_cpu_training_kernels(main)
    extra = {"lr": _learning_rate_var(main)}
    if amp_opt is not None:
        extra["loss_scaling"] = amp_opt.get_loss_scaling()
        _check_low_precision(main, train_cfg)
        if eval_program is not None:
            with _amp_keeps_fused_ln_params_fp32(fusions):
                _eval_in_training_precision(eval_program, train_cfg, attention_impl, fp32_names, fusions)
    return lr, outer, amp_opt, extra, _build_strategy(train_cfg, attention_impl)


def _data_parallel_world(train_cfg):
    if train_cfg.use_fleet:
        from paddle.distributed import fleet
        return fleet.worker_num()
    return train_cfg.allreduce_world_size


def _train_metrics(main, startup, values, world):
    """Accumulate `values` (dict name -> scalar Variable) per micro-batch; see TrainMetrics."""
    names = tuple(n for n in WINDOW_METRICS if n in values)
    sums_name, width = f"{METRICS_PREFIX}.window_sums", len(names) + 1
    with paddle.static.program_guard(main, startup):
        sums = main.global_block().create_var(name=sums_name, shape=[width], dtype="float32", persistable=True)
        startup.global_block().append_op(
            type="fill_constant", attrs={"shape": [width], "dtype": sums.dtype, "value": 0.0},
            outputs={"Out": [startup.global_block().create_var(name=sums_name, shape=[width],
                                                                 dtype="float32", persistable=True)]})
        row = paddle.concat([paddle.cast(paddle.reshape(values[n], [1]), "float32") for n in names]
                            + [paddle.ones([1], "float32")])
        paddle.assign(paddle.add(sums, row), output=sums)
    nonfinite = program_rewrites.count_nonfinite_updates(main, startup, prefix=METRICS_PREFIX)
    program, unused_startup = paddle.static.Program(), paddle.static.Program()
    with paddle.static.program_guard(program, unused_startup):
        window = program.global_block().create_var(name=sums_name, shape=[width], dtype="float32",
                                                   persistable=True)
        mean = paddle.assign(window)
        if world > 1:  # one all-reduce per log line, instead of one per micro-batch
            paddle.distributed.all_reduce(mean)
            mean = paddle.scale(mean, 1.0 / world)
    return TrainMetrics(names=names, sums_var=sums_name, program=program, mean_sums=mean,
                        nonfinite=nonfinite)


def _learning_rate_var(program):
    """The persistable learning-rate variable the optimizer ops read (fed from the LR scheduler)."""
    for block in program.blocks:
        for op in block.ops:
            if "LearningRate" in op.input_names and op.input("LearningRate"):
                return program.global_block().var(op.input("LearningRate")[0])
    raise RuntimeError("no optimizer op with a LearningRate input in the program")


def _check_low_precision(program, train_cfg):
    """Raise if the AMP pass left every matmul in fp32 (it does so silently on CPU builds)."""
    block = program.global_block()
    for op in block.ops:
        if op.type in ("matmul_v2", "matmul", "mul", "fused_gemm_epilogue") and any(
                block.var(name).dtype in LOW_PRECISION_DTYPES for name in op.output_arg_names):
            return
    raise RuntimeError(f"--amp ({train_cfg.amp_dtype}) was requested but Paddle's AMP pass kept every "
                       f"matmul in fp32: this Paddle build has no {train_cfg.amp_dtype} GPU kernels "
                       f"(CPU wheel?). Install paddlepaddle-gpu, or run without --amp")


def _new_programs(seed):
    main, startup = paddle.static.Program(), paddle.static.Program()
    # Parameter init is derived from the startup seed and each parameter's name (modeling), so
    # every rank starts identical. The main program stays unseeded on purpose: a seeded main
    # program gives each dropout op fix_seed=True, i.e. the same mask at every step. Dropout draws
    # from Paddle's global generator instead (the runner calls paddle.seed per rank).
    startup.random_seed = seed
    return main, startup


def _attention_impl(train_cfg):
    if train_cfg.attention_impl is not None:
        logger.info("attention implementation: %s (forced)", train_cfg.attention_impl)
        return train_cfg.attention_impl
    return modeling.select_attention_impl(train_cfg.fuse_mha, train_cfg.device, train_cfg.amp)


def _vars_of(program, variables):
    """name -> the variable with the same name in `program` (e.g. a for_test clone)."""
    block = program.global_block()
    return {key: block.var(var.name) for key, var in variables.items()}


def build_pretraining(model_cfg, train_cfg, is_training=True):
    """Build the BERT pre-training programs (MLM + NSP).

    Args:
      model_cfg: modeling.BertConfig.
      train_cfg: TrainConfig (optimizer fields unused when is_training is False).
      is_training: False builds an evaluation-only bundle (as `build_squad`): main_program is the for_test
        forward with the five losses as fetches; no optimizer, LR scheduler, CPU LAMB kernel or metric window.

    Returns:
      ProgramBundle. feed_names == eval_feed_names == FEED_SPECS["pretraining"] names. fetches:
      loss, mlm_loss, nsp_loss, mlm_acc, nsp_acc (float32 scalars, this rank's), lr (float32 [1]) and,
      with AMP, loss_scaling (float32 [1]); eval_fetches: the five loss/accuracy values; metrics: the
      on-device window of those values (TrainMetrics), what a training loop logs without fetching.

    Raises:
      RuntimeError: AMP requested but this Paddle build cannot produce low-precision ops, or a
        fused attention implementation that this build lacks.
    """
    main, startup = _new_programs(train_cfg.seed)
    impl = _attention_impl(train_cfg)
    fusions = _select_fusions(train_cfg, impl)
    with paddle.static.program_guard(main, startup), paddle.utils.unique_name.guard():
        feeds = create_feeds("pretraining")
        model = modeling.BertForPretraining(model_cfg, impl, fusions)
        mlm_logits, nsp_logits = model(feeds["input_ids"], feeds["token_type_ids"],
                                       feeds["attention_mask"], feeds["masked_lm_labels"])
        losses = loss_lib.BertPretrainingCriterion()(
            mlm_logits, nsp_logits, feeds["masked_lm_labels"], feeds["next_sentence_labels"])._asdict()
        eval_program = main.clone(for_test=True)
        if not is_training:
            return _predict_only_bundle(eval_program, startup, tuple(feeds), losses, impl, fusions)
        lr, opt, amp_opt, extra, build = _minimize(losses["loss"], train_cfg, impl, fusions, main, startup,
                                                   fetched_losses=list(losses.values()),
                                                   eval_program=eval_program)
        metrics = _train_metrics(main, startup, losses, _data_parallel_world(train_cfg))
    names = tuple(feeds)
    return ProgramBundle(main_program=main, startup_program=startup, eval_program=eval_program,
                         feed_names=names, eval_feed_names=names, fetches={**losses, **extra},
                         eval_fetches=_vars_of(eval_program, losses), lr_scheduler=lr,
                         optimizer=opt, attention_impl=impl, build_strategy=build,
                         amp_optimizer=amp_opt, metrics=metrics, fusions=fusions)


def build_squad(model_cfg, train_cfg, is_training=True):
    """Build the SQuAD span-extraction programs.

    Args:
      model_cfg: modeling.BertConfig.
      train_cfg: TrainConfig (optimizer fields unused when is_training is False).
      is_training: False builds a predict-only bundle: main_program is the for_test forward and
        there is no optimizer or LR scheduler.

    Returns:
      ProgramBundle. eval_program feeds input_ids, token_type_ids, attention_mask and fetches
      start_logits, end_logits (float32 [B, L]). When training, main_program also feeds
      start_positions, end_positions and fetches loss (float32 scalar), lr and, with AMP,
      loss_scaling.

    Raises:
      RuntimeError: as `build_pretraining`.
    """
    main, startup = _new_programs(train_cfg.seed)
    impl = _attention_impl(train_cfg)
    fusions = _select_fusions(train_cfg, impl)
    with paddle.static.program_guard(main, startup), paddle.utils.unique_name.guard():
        feeds = create_feeds("squad" if is_training else "squad_predict")
        model = modeling.BertForQuestionAnswering(model_cfg, impl, fusions)
        start, end = model(feeds["input_ids"], feeds["token_type_ids"], feeds["attention_mask"])
        logits = {"start_logits": start, "end_logits": end}
        # Cloned before the loss exists, so prediction needs no position feeds.
        eval_program = main.clone(for_test=True)
        eval_names = tuple(spec.name for spec in FEED_SPECS["squad_predict"])
        if not is_training:
            return _predict_only_bundle(eval_program, startup, eval_names, logits, impl, fusions)
        span_loss = loss_lib.squad_span_loss(start, end, feeds["start_positions"],
                                             feeds["end_positions"])
        return _fine_tuning_bundle(span_loss, logits, feeds, eval_names, eval_program, train_cfg,
                                   (impl, fusions), main, startup)


def build_glue(model_cfg, train_cfg, num_labels, is_training=True):
    """Build the GLUE sentence(-pair) classification / regression programs.

    Args:
      model_cfg: modeling.BertConfig.
      train_cfg: TrainConfig (optimizer fields unused when is_training is False).
      num_labels: int, classifier width; 1 = regression (STS-B: MSE loss, float32 labels).
      is_training: False builds a predict-only bundle (as `build_squad`).

    Returns:
      ProgramBundle. eval_program feeds input_ids, token_type_ids, attention_mask and fetches logits
      (float32 [B, num_labels]). When training, main_program also feeds labels ([B, 1]: int64 class ids,
      float32 for regression) and fetches loss (mean cross-entropy or MSE, float32 scalar), logits, lr
      and, with AMP, loss_scaling.

    Raises:
      RuntimeError: as `build_pretraining`. ValueError: num_labels < 1.
    """
    main, startup = _new_programs(train_cfg.seed)
    impl = _attention_impl(train_cfg)
    fusions = _select_fusions(train_cfg, impl)
    kind = "glue_regression" if num_labels == 1 else "glue"
    with paddle.static.program_guard(main, startup), paddle.utils.unique_name.guard():
        feeds = create_feeds(kind if is_training else "glue_predict")
        model = modeling.BertForSequenceClassification(model_cfg, num_labels, impl, fusions)
        logits = {"logits": model(feeds["input_ids"], feeds["token_type_ids"], feeds["attention_mask"])}
        # Cloned before the loss exists, so prediction needs no label feed.
        eval_program = main.clone(for_test=True)
        eval_names = tuple(spec.name for spec in FEED_SPECS["glue_predict"])
        if not is_training:
            return _predict_only_bundle(eval_program, startup, eval_names, logits, impl, fusions)
        loss = loss_lib.sequence_classification_loss(logits["logits"], feeds["labels"])
        return _fine_tuning_bundle(loss, logits, feeds, eval_names, eval_program, train_cfg, (impl, fusions),
                                   main, startup)


def _fine_tuning_bundle(loss, outputs, feeds, eval_names, eval_program, train_cfg, built, main, startup):
    """The training ProgramBundle of a fine-tuning head (SQuAD, GLUE): `loss` minimised in `main` (called
    inside the programs' guard), `outputs` fetched by both programs, the for_test `eval_program` cloned
    before the loss existed; `built` is (attention impl, modeling.Fusions) of the model."""
    impl, fusions = built
    lr, opt, amp_opt, extra, build = _minimize(loss, train_cfg, impl, fusions, main, startup,
                                               eval_program=eval_program)
    return ProgramBundle(main_program=main, startup_program=startup, eval_program=eval_program,
                         feed_names=tuple(feeds), eval_feed_names=eval_names,
                         fetches={"loss": loss, **outputs, **extra},
                         eval_fetches=_vars_of(eval_program, outputs), lr_scheduler=lr,
                         optimizer=opt, attention_impl=impl, build_strategy=build,
                         amp_optimizer=amp_opt, fusions=fusions)


def _predict_only_bundle(eval_program, startup, feed_names, outputs, impl, fusions):
    """A ProgramBundle whose main program is the for_test forward: no optimizer, no LR scheduler."""
    fetches = _vars_of(eval_program, outputs)
    return ProgramBundle(main_program=eval_program, startup_program=startup, eval_program=eval_program,
                         feed_names=feed_names, eval_feed_names=feed_names, fetches=fetches,
                         eval_fetches=fetches, lr_scheduler=None, optimizer=None, attention_impl=impl,
                         build_strategy=None, fusions=fusions)


def to_bf16_inference(eval_program):
    """A bf16 copy of an inference program for CPUs with bf16 support (oneDNN).

    LayerNorm stays fp32 (its mean/variance keep full precision; this is the setting measured to work,
    2.7x faster than fp32 on an AVX-512 bf16 CPU, 4-layer bert-base forward); matmuls and the other ops on Paddle's
    bf16 list run in bf16, with casts inserted at the boundaries. Parameters stay fp32 in the scope,
    so one checkpoint serves both programs.

    Args:
      eval_program: a for_test program, e.g. `ProgramBundle.eval_program`.

    Returns:
      A new Program; `eval_program` is not modified. Fetch variables keep their names.
    """
    from paddle.static.amp.bf16 import AutoMixedPrecisionListsBF16
    from paddle.static.amp.bf16.amp_utils import rewrite_program_bf16

    program = eval_program.clone(for_test=True)
    rewrite_program_bf16(program, AutoMixedPrecisionListsBF16(custom_fp32_list={"layer_norm"}))
    return program
