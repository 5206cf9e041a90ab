"""tasks.flags.Parser: the reference's and Hugging Face's underscore spellings of long options are accepted."""
import pytest

import run_pretraining
import run_squad


def test_underscore_spellings_parse_like_the_dashed_ones():
    parser = run_squad.build_parser()
    dashed = parser.parse_args(["--vocab-file", "v.txt", "--do-train", "--train-batch-size=4",
                                "--output-dir", "my_out_dir", "--bert-model", "bert-tiny"])
    underscored = parser.parse_args(["--vocab_file", "v.txt", "--do_train", "--train_batch_size=4",
                                     "--output_dir", "my_out_dir", "--bert_model", "bert-tiny"])
    assert vars(dashed) == vars(underscored)
    assert underscored.output_dir == "my_out_dir"  # values keep their underscores
    args = run_pretraining.build_parser().parse_args(
        ["--input_dir", "d", "--output_dir", "o", "--max_steps", "3", "--vocab_file", "v", "--phase1"])
    assert args.max_steps == 3 and args.input_dir == "d"


def test_unknown_options_are_still_errors(capsys):
    with pytest.raises(SystemExit) as err:
        run_squad.build_parser().parse_args(["--vocab-file", "v", "--output-dir", "o", "--no_such_flag"])
    assert err.value.code == 2 and "--no_such_flag" in capsys.readouterr().err
