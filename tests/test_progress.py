"""tasks.progress and its use by tasks.engine.run_updates: the ETA, sequences/s and tokens/s people plan with,
and their log formatting (utils.report)."""
import numpy as np

from tasks.engine import run_updates
from tasks.progress import UpdateProgress, count_tokens
from utils.report import format_duration, format_value


class _Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def _feed(rows, real, length=8):
    """rows sequences of `length` positions, the first `real` of each not padding."""
    mask = np.zeros((rows, 1, 1, length), np.int64)
    mask[..., :real] = 1
    return {"input_ids": np.zeros((rows, length), np.int64), "attention_mask": mask}


def test_count_tokens_counts_non_padding():
    assert count_tokens(_feed(3, 5)) == 15
    assert count_tokens({"input_ids": np.zeros((2, 7))}) == 14  # no mask: every position


def test_eta_and_rates_of_a_resumed_invocation():
    clock = _Clock()
    progress = UpdateProgress(total_steps=10, start_step=4, disable=True, clock=clock)
    assert progress.eta_seconds() is None                 # nothing measured yet
    clock.now += 6.0
    progress.record(5, sequences=8, tokens=400)
    progress.record(6, sequences=8, tokens=200)
    # 2 updates in 6 s -> 3 s per update, 4 updates left.
    assert progress.eta_seconds() == 12.0
    assert progress.rates() == (16 / 6.0, 600 / 6.0)
    assert (progress.last_sequences, progress.last_tokens) == (8, 200)
    progress.close()


class _Exe:
    def run(self, program, feed, fetch_list):
        return []


class _LR:
    def __init__(self):
        self.steps = 0

    def get_lr(self):
        return 0.1

    def step(self):
        self.steps += 1


def test_run_updates_advances_the_progress_once_per_update_with_all_ranks_tokens():
    seen = []
    progress = UpdateProgress(total_steps=3, disable=True)
    feeds = [_feed(2, 3), _feed(2, 5), _feed(2, 1), _feed(2, 2), _feed(2, 4)]
    result = run_updates(_Exe(), None, feeds, start_step=0, total_steps=3, merge_steps=2, lr_scheduler=_LR(),
                         world_size=2, progress=progress,
                         after_update=lambda step, fetched, lr: seen.append((step, progress.last_tokens)))
    # Updates are micro-batches (1, 2) and (3, 4); the fifth starts a third update that never completes.
    assert seen == [(1, (6 + 10) * 2), (2, (2 + 4) * 2)]
    assert result.step == 2 and result.tokens == (6 + 10 + 2 + 4 + 8) * 2 and result.sequences == 20
    assert progress.step == 2 and progress.tokens == 44


def test_run_updates_keeps_its_old_signature_and_draws_its_own_bar():
    """Callers written before the progress bar (GLUE, SQuAD) pass nothing new and still run."""
    result = run_updates(_Exe(), None, [_feed(1, 2)] * 4, start_step=1, total_steps=3, merge_steps=1,
                         lr_scheduler=_LR())
    assert result.step == 3 and result.micro_batches == 2 and result.tokens == 4


def test_log_line_formats():
    assert format_duration(3725.2) == "1:02:05" and format_duration(-3) == "0:00:00"
    assert format_value("eta_seconds", 61.0) == "ETA 0:01:01"
    assert format_value("tokens_per_sec", 40012.4) == "40012 tok/s"
    assert format_value("seqs_per_sec", 312.44) == "312.4 seq/s"
