"""Pure fp16 (AMP O2) start-up: parameters to fp16, fp32 master weights equal to the *loaded* values.

Why this exists: under O2 the startup program creates each fp32 master weight (`<param>_fp32_master_0`)
as a copy of the parameter's *initializer* output. Loading pretrained or phase-1 parameters afterwards
changes the parameters but not their master copies, and the optimizer then updates from the masters:
the loaded values are silently lost (the NVIDIA reference does exactly this). `init_pure_fp16` runs
after loading: it remembers the fp32 values, lets Paddle's `amp_init` cast the parameters to fp16, and
writes the remembered values into the master weights.

Owns only that step; building the O2 program is `program.py`'s, loading is `utils.checkpoint`'s.
"""
import numpy as np
import paddle

MASTER_SUFFIX = "_fp32_master_0"


def init_pure_fp16(bundle, place, scope=None):
    """Cast the parameters of an O2 program to fp16 and set its master weights from their fp32 values.

    Call after the startup program and after any parameter loading, before the first step. Not for a
    resumed checkpoint: that already holds fp16 parameters and their master weights.

    Args:
      bundle: program.ProgramBundle built with use_pure_fp16=True (its `amp_optimizer` runs `amp_init`).
      place: the executor's place.
      scope: the scope holding the parameters (default: the global scope).

    Returns:
      int, the number of master weights set.
    """
    scope = scope or paddle.static.global_scope()
    values = {}
    for param in bundle.main_program.all_parameters():
        var = scope.find_var(param.name)
        if var is not None and var.get_tensor()._is_initialized():
            values[param.name] = np.array(var.get_tensor())
    # The AMP decorator (or fleet), not `bundle.optimizer`: an outer gradient-merge wrapper has no amp_init.
    bundle.amp_optimizer.amp_init(place, scope=scope)
    count = 0
    for name, value in values.items():
        master = scope.find_var(name + MASTER_SUFFIX)
        if master is not None and value.dtype == np.float32:
            master.get_tensor().set(value, place)
            count += 1
    return count
