"""Messages that say what is really wrong (issue 20, items 20 and 22).

An uncased vocab exported without --do-lower-case is refused before anything is written (run_squad and the
server refused such an export only later); an export directory without its manifest, a GLUE model given to
SQuAD, a pretraining checkpoint given to the exporter, `--learning-rate inf` and an unreadable `.lock` file
each get a line in the user's terms (the flag, the file, what it really is) instead of an internal one.
"""
import pickle
import shutil

import numpy as np
import pytest

from test_inference import export_args, model  # noqa: F401  -- the tiny fine-tuned SQuAD checkpoint fixture


def _params(root):
    return pickle.loads((root / "ckpt" / "bert_paddle.pdparams").read_bytes())


def _checkpoint(tmp_path, root, name, state):
    directory = tmp_path / name
    directory.mkdir()
    (directory / "bert_paddle.pdparams").write_bytes(pickle.dumps(state))
    shutil.copy(root / "ckpt" / "bert_config.json", directory / "bert_config.json")
    return directory


def test_export_refuses_an_uncased_vocab_without_do_lower_case(model, tmp_path):  # noqa: F811
    from inference import export

    root, _ = model
    argv = export_args(root, tmp_path / "out")
    argv.remove("--do-lower-case")
    with pytest.raises(ValueError) as err:
        export.main(argv)
    assert str(err.value) == (f"--vocab-file '{root / 'vocab.txt'}' is uncased but --do-lower-case is not set: "
                              "add --do-lower-case")
    assert not (tmp_path / "out").exists()


def test_an_export_without_its_manifest_is_named_as_such(model, tmp_path):  # noqa: F811
    import run_squad
    from inference import export

    root, _ = model
    export.main(export_args(root, tmp_path / "exp"))
    (tmp_path / "exp" / "manifest.json").unlink()
    with pytest.raises(ValueError) as err:
        run_squad.main(["--vocab-file", str(root / "vocab.txt"), "--do-lower-case", "--bert-model", "custom",
                        "--device", "cpu", "--output-dir", str(tmp_path / "o"), "--from-checkpoint",
                        str(tmp_path / "exp"), "--question", "who ?", "--context", "tom has a car .",
                        "--max-seq-length", "32", "--doc-stride", "16", "--max-query-length", "12"])
    assert str(err.value).startswith(f"'{tmp_path / 'exp'}' holds Paddle Inference files (model.pdiparams) but no "
                                     "manifest.json: an export directory that is damaged or incomplete")
    assert "exactly one" not in str(err.value)


def test_a_glue_model_given_to_squad_is_called_a_glue_model(model, tmp_path):  # noqa: F811
    import run_squad

    root, cfg = model
    state = {k: v for k, v in _params(root).items() if not k.startswith("qa_outputs")}
    state["classifier.weight"] = np.zeros((cfg.hidden_size, 2), np.float32)
    state["classifier.bias"] = np.zeros((2,), np.float32)
    glue = _checkpoint(tmp_path, root, "glue", state)
    with pytest.raises(ValueError) as err:
        run_squad.main(["--vocab-file", str(root / "vocab.txt"), "--do-lower-case", "--bert-model", "custom",
                        "--device", "cpu", "--output-dir", str(tmp_path / "o"), "--from-checkpoint", str(glue),
                        "--question", "who ?", "--context", "tom has a car .", "--max-seq-length", "32",
                        "--doc-stride", "16", "--max-query-length", "12"])
    assert "it is a model fine-tuned for GLUE, not a fine-tuned SQuAD model" in str(err.value)
    assert "pretrained BERT" not in str(err.value)


def test_exporting_a_pretraining_checkpoint_says_so_in_short_lines(model, tmp_path, capsys):  # noqa: F811
    from inference import export

    root, cfg = model
    state = {k: v for k, v in _params(root).items() if not k.startswith("qa_outputs")}
    for i in range(30):  # a pretraining checkpoint's heads: many names the SQuAD program does not use
        state[f"cls.predictions.transform.layer_{i:02d}.weight"] = np.zeros((2,), np.float32)
    pretrained = _checkpoint(tmp_path, root, "phase1-step", state)
    argv = export_args(root, tmp_path / "out")
    argv[1] = str(pretrained)
    assert export.cli(argv) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "has no SQuAD answer head" in errors[0] and "a pretrained BERT" in errors[0]
    unused = [line for line in err.splitlines() if "not used from" in line]
    assert len(unused) == 1 and "30: cls.predictions.transform.layer_00.weight," in unused[0]
    assert unused[0].endswith("... and 25 more") and unused[0].count("cls.predictions") == 5
    assert not (tmp_path / "out").exists()


def test_a_non_finite_learning_rate_is_named_by_its_flag(model, tmp_path):  # noqa: F811
    import run_squad
    from tasks.config import in_flag_terms

    assert in_flag_terms("base_lr must be finite, got inf") == "--learning-rate must be finite, got inf"
    root, _ = model
    with pytest.raises(ValueError, match=r"^--learning-rate must be a finite number, got inf$"):
        run_squad.main(["--vocab-file", str(root / "vocab.txt"), "--do-lower-case", "--bert-model", "custom",
                        "--device", "cpu", "--output-dir", str(tmp_path / "o"), "--mode", "train",
                        "--train-file", str(root / "dev.json"), "--from-checkpoint", str(root / "ckpt"),
                        "--learning-rate", "inf", "--max-seq-length", "32", "--doc-stride", "16",
                        "--max-query-length", "12"])
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("content", [b"", b"\x00garbage{", b'{"pid": "x"}'])
def test_an_unreadable_lock_file_is_called_unreadable(tmp_path, content):
    import os

    from utils.run_lock import LockedError, RunLock

    (tmp_path / ".lock").write_bytes(content)  # fresh: its age alone cannot say its writer is gone
    with pytest.raises(LockedError) as err:
        RunLock(tmp_path).acquire()
    message = str(err.value)
    assert "pid ?" not in message and "host ?" not in message
    assert "the lock file is unreadable: empty or not a lock record" in message
    assert message.endswith(f"delete {tmp_path / '.lock'}")
    assert os.path.exists(tmp_path / ".lock")  # refused, nothing taken over or removed
