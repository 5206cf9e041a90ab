"""Optimizers for BERT: LAMB (pre-training) and AdamW (fine-tuning).

Owns: `build_optimizer`, the weight-decay exclusion rule (`exclude_from_weight_decay`) and gradient
clipping by global norm (in fp32 under pure fp16: `Fp32NormClip`). Does not own: the LR schedule (`lr_scheduler.py`), AMP / gradient merge /
fleet wrapping (`program.py`), nor any edit of the program after `minimize` -- the non-finite update
guard and the CPU LAMB kernel swap are `program_rewrites`.

Weight decay is not applied to biases and LayerNorm parameters (Google's `exclude_from_weight_decay`
= ["LayerNorm", "layer_norm", "bias"]). The rule is decided on our stable Hugging Face style names
(`modeling.py`), not on Paddle's auto-generated `b_0` / `norm` fragments the NVIDIA reference matched.

DistributedFusedLamb (the reference's option) is removed, not silently replaced: see `REMOVED_OPTIMIZERS`.
"""
import hashlib
import logging

import paddle

logger = logging.getLogger(__name__)

OPTIMIZERS = ("Lamb", "AdamW")
# Optimizers this project refuses, with the reason the user sees.
REMOVED_OPTIMIZERS = {
    "DistributedFusedLamb": (
        "DistributedFusedLamb is not supported: run inside fleet's meta-optimizers (as the reference did) it "
        "re-initialises the communicator, all-reduces every gradient on top of its own reduce-scatter and "
        "ignores the gradient scale strategy, and its optimizer state is sharded per rank while checkpoints "
        "are written by rank 0 only, so a resume would give every rank rank 0's shards; use --optimizer Lamb "
        "(the same LAMB update with fleet's all-reduce)"),
}


def exclude_from_weight_decay(name):
    """True if the parameter called `name` gets no weight decay (biases and LayerNorm gamma/beta).

    Args:
      name: str, a parameter name from `modeling.py`,
        e.g. "bert.encoder.layer.0.output.LayerNorm.weight".
    """
    return name.endswith(".bias") or ".LayerNorm." in name


def decay_exclusion_summary(names):
    """"<n> of <m> parameters, sha256 <16 hex>" for the parameters of `names` that get no weight decay.

    A checkpoint records it, so a resume under a changed exclusion rule is refused rather than decaying
    other parameters than the run did so far.
    """
    excluded = sorted(n for n in names if exclude_from_weight_decay(n))
    digest = hashlib.sha256("\n".join(excluded).encode("utf-8")).hexdigest()[:16]
    return f"{len(excluded)} of {len(names)} parameters, sha256 {digest}"


class Fp32NormClip(paddle.nn.ClipGradByGlobalNorm):
    """Clipping by global norm whose squares of fp16 gradients are cast to fp32 first (pure fp16, O2).

    Why: Paddle 2.6 squares an fp16 gradient into an fp16 sum and adds those sums in fp16, so a global
    norm above 256 (a square above fp16's 65504) becomes inf; the clip scale is then 0 and the step
    turns into a LAMB update with zero gradients (the moments decay, weight decay still applies)
    instead of the skipped update a non-finite gradient gets. Paddle's own switch for hybrid parallel,
    `_clip_by_global_norm_using_mp_type`, casts each fp16 gradient to fp32 before squaring and applies
    the scale in fp32 (the gradient is cast back to fp16 in place); it is turned on only while this
    clip builds its ops, so other programs of the process are unaffected. fp32 gradients (O1, and the
    LayerNorm parameters O2 keeps in fp32) build exactly as with `ClipGradByGlobalNorm`.
    """

    def _static_clip(self, params_grads):
        from paddle.nn import clip as paddle_clip
        before = paddle_clip._clip_by_global_norm_using_mp_type(True)
        try:
            return super()._static_clip(params_grads)
        finally:
            paddle_clip._clip_by_global_norm_using_mp_type(before)


def check_hparams(name, weight_decay, beta1, beta2, epsilon, grad_clip_norm):
    """Validate `build_optimizer`'s arguments without building anything (configs call it early).

    Raises:
      ValueError: naming the first bad argument and its value (a removed optimizer: why, and what to use).
    """
    if name in REMOVED_OPTIMIZERS:
        raise ValueError(REMOVED_OPTIMIZERS[name])
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer {name!r} is not one of {OPTIMIZERS}")
    if not weight_decay >= 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
    for label, beta in (("beta1", beta1), ("beta2", beta2)):
        if not 0 <= beta < 1:
            raise ValueError(f"{label} must be in [0, 1), got {beta!r}")
    if not epsilon > 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon!r}")
    if grad_clip_norm is not None and not grad_clip_norm > 0:
        raise ValueError(f"grad_clip_norm must be > 0 or None (no clipping), got {grad_clip_norm!r}")


def build_optimizer(name, lr_scheduler, *, weight_decay, beta1, beta2, epsilon, grad_clip_norm=1.0,
                    multi_precision=False):
    """Build the optimizer (not yet wrapped for AMP, gradient merge or fleet).

    Args:
      name: "Lamb" | "AdamW".
      lr_scheduler: paddle LRScheduler (or float).
      weight_decay: float >= 0, decoupled weight decay (LAMB's lamb_weight_decay, AdamW's coeff).
      beta1, beta2: float in [0, 1).
      epsilon: float > 0.
      grad_clip_norm: float > 0, clip by global norm (Google uses 1.0); None disables clipping.
      multi_precision: bool, keep fp32 master weights for fp16/bf16 parameters (pure fp16); the global
        norm is then summed in fp32 (`Fp32NormClip`).

    Returns:
      A paddle optimizer.

    Raises:
      ValueError: unknown or removed name, or out-of-range hyper-parameter.
    """
    check_hparams(name, weight_decay, beta1, beta2, epsilon, grad_clip_norm)
    clip_type = Fp32NormClip if multi_precision else paddle.nn.ClipGradByGlobalNorm
    clip = clip_type(clip_norm=grad_clip_norm) if grad_clip_norm else None
    common = dict(learning_rate=lr_scheduler, beta1=beta1, beta2=beta2, epsilon=epsilon,
                  grad_clip=clip)
    if name == "AdamW":
        opt = paddle.optimizer.AdamW(
            weight_decay=weight_decay, multi_precision=multi_precision,
            apply_decay_param_fun=lambda param_name: not exclude_from_weight_decay(param_name),
            **common)
    else:
        opt = paddle.optimizer.Lamb(
            lamb_weight_decay=weight_decay, multi_precision=multi_precision,
            exclude_from_weight_decay_fn=lambda param: exclude_from_weight_decay(param.name),
            **common)
    logger.info("optimizer %s: weight_decay=%g beta1=%g beta2=%g epsilon=%g clip=%s "
                "multi_precision=%s", name, weight_decay, beta1, beta2, epsilon, grad_clip_norm,
                multi_precision)
    return opt
