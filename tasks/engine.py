"""The one training-step loop of every task: micro-batches, gradient merge, LR stepping, the benchmark
window, throughput and the progress bar over updates (with ETA, seq/s and tok/s: `tasks.progress`).

Owns: `run_updates`, which feeds micro-batches to a training program until a number of optimizer updates
is done, steps the LR scheduler once per update, calls the task's hooks, and measures throughput (overall,
and over the benchmark window the reference defines: updates warmup+1 .. end). Does not own where batches
come from, what is fetched or logged, or when to checkpoint: each task passes those in (pretraining seeds
dropout per micro-batch and saves checkpoints; SQuAD fetches its loss and logs it).

Why one loop: the gradient-merge counting (an update every `merge_steps` micro-batches), the LR stepping
on update boundaries and the benchmark window are easy to get subtly different in two copies, and a
resumed pretraining run is only exact if the step arithmetic is the same everywhere.
"""
import dataclasses
import time
from typing import Callable, Iterable, Optional, Sequence

from tasks.progress import UpdateProgress, count_tokens


@dataclasses.dataclass(frozen=True)
class LoopResult:
    """What `run_updates` did.

    Fields:
      step: global step (optimizer updates) reached.
      micro_batches: micro-batches run by this call.
      sequences: sequences trained by this call, summed over all ranks.
      elapsed: seconds of this call.
      sequences_per_second: over the whole call, or over the benchmark window when one was asked for
        and reached.
      tokens, tokens_per_second: the same for non-padding tokens (`tasks.progress.count_tokens`).
    """
    step: int
    micro_batches: int
    sequences: int
    elapsed: float
    sequences_per_second: float
    tokens: int = 0
    tokens_per_second: float = 0.0


def run_updates(exe, program, batches: Iterable[dict], *, start_step: int, total_steps: int, merge_steps: int,
                lr_scheduler, world_size: int = 1, fetch_list: Sequence = (),
                before_micro_batch: Optional[Callable[[int], None]] = None,
                after_update: Optional[Callable[[int, list, float], None]] = None,
                benchmark_warmup_steps: Optional[int] = None, progress: Optional[UpdateProgress] = None,
                progress_desc: str = "train") -> LoopResult:
    """Run micro-batches of `batches` until `total_steps` updates are done or the batches end.

    Args:
      exe: executor; program: what to run (a Program or CompiledProgram).
      batches: iterable of feed dicts (an "input_ids" array gives the batch size); an end before
        `total_steps` ends the loop (e.g. SQuAD's last epoch).
      start_step: updates already done (a resumed run); micro-batch indices continue from
        `start_step * merge_steps`.
      total_steps: stop after this global step.
      merge_steps: micro-batches per optimizer update (gradient merge); >= 1.
      lr_scheduler: stepped once per update (after the update's last micro-batch).
      world_size: ranks training in parallel (throughput counts all of them).
      fetch_list: what each micro-batch fetches (empty: nothing, no host synchronisation per step).
      before_micro_batch: called with the global micro-batch index before it runs.
      after_update: called with (step, [fetched values of each micro-batch of the update], the LR the
        update used) after the scheduler stepped.
      benchmark_warmup_steps: when set, throughput is measured from that step on.
      progress: a `tasks.progress.UpdateProgress` the caller made (to read its ETA and rates in its own
        log lines; the caller closes it); None = a bar labelled `progress_desc` over `total_steps`, shown
        on a terminal and closed here. Either way it is advanced once per update, before `after_update`.

    Returns:
      LoopResult.
    """
    step, micro = start_step, start_step * merge_steps
    sequences, bench_sequences, tokens, bench_tokens, pending = 0, 0, 0, 0, []
    own_progress = progress is None
    if own_progress:
        progress = UpdateProgress(total_steps, start_step, desc=progress_desc)
    update_sequences = update_tokens = 0
    start = bench_start = time.time()
    try:
        if step < total_steps:
            for feed in batches:
                if before_micro_batch is not None:
                    before_micro_batch(micro)
                pending.append(exe.run(program, feed=feed, fetch_list=list(fetch_list)))
                micro += 1
                sequences += len(feed["input_ids"]) * world_size
                update_sequences += len(feed["input_ids"]) * world_size
                feed_tokens = count_tokens(feed) * world_size
                tokens += feed_tokens
                update_tokens += feed_tokens
                if micro % merge_steps:
                    continue
                step += 1
                lr = lr_scheduler.get_lr()
                lr_scheduler.step()
                progress.record(step, update_sequences, update_tokens)
                update_sequences = update_tokens = 0
                if after_update is not None:
                    after_update(step, pending, lr)
                pending = []
                if benchmark_warmup_steps is not None and step == benchmark_warmup_steps:
                    bench_start, bench_sequences, bench_tokens = time.time(), sequences, tokens
                if step >= total_steps:
                    break
    finally:
        if own_progress:
            progress.close()
    now = time.time()
    elapsed = now - start
    if benchmark_warmup_steps:
        seconds, counted = max(now - bench_start, 1e-9), (sequences - bench_sequences, tokens - bench_tokens)
    else:
        seconds, counted = max(elapsed, 1e-9), (sequences, tokens)
    return LoopResult(step=step, micro_batches=micro - start_step * merge_steps, sequences=sequences,
                      elapsed=elapsed, sequences_per_second=counted[0] / seconds, tokens=tokens,
                      tokens_per_second=counted[1] / seconds)
