"""Every command's --help: one line of help for every option, its default shown once (issue 14)."""
import argparse
import importlib

import pytest

# (module, function that builds and parses the flags, argv that gets past required options)
COMMANDS = [
    ("run_pretraining", "build_parser", None),
    ("run_squad", "build_parser", None),
    ("run_glue", "build_parser", None),
    ("run_pretraining_inference", "build_parser", None),
    ("benchmarks.stability", "main", []),
    ("inference.export", "build_parser", None),
    ("inference.server", "main", []),
    ("benchmarks.bench_inference", "main", []),
    ("benchmarks.bench_server", "main", []),
    ("benchmarks.bench_squad_e2e", "main", []),
    ("data.prep.preprocess_bert_pretrain", "_parser", None),
    ("data.prep.balance_dask_output", "_parse_args", []),
    ("data.prep.build_vocab", "_parse_args", []),
    ("data.prep.corpus", "_parse_args", []),
    ("data.prep.sample_corpus", "_parse_args", []),
    ("data.prep.wikipedia", "_parse_args", []),
    ("data.prep.inspect_shards", "_parse_args", []),
    ("data.prep.download", "_parse_args", ["squad"]),
    ("utils.plot_report", "_parse_args", []),
    ("benchmarks.bench_gemm", "main", []),
    ("benchmarks.bench_loader", "main", []),
    ("benchmarks.bench_preprocess", "main", []),
    ("benchmarks.bench_squad", "main", []),
    ("benchmarks.bench_squad_model", "main", []),
    ("benchmarks.bench_train", "main", []),
]


class _Captured(Exception):
    pass


def _parser_of(module_name, function, argv, monkeypatch):
    """The ArgumentParser a command builds: returned by the builder, or caught when it parses."""
    module = importlib.import_module(module_name)
    if argv is None:
        return getattr(module, function)()
    seen = []

    def capture(self, *args, **kwargs):
        seen.append(self)
        raise _Captured

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", capture)
    with pytest.raises(_Captured):
        getattr(module, function)(argv)
    return seen[0]


def _options(parser):
    return [a for a in parser._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]


@pytest.mark.parametrize("module_name, function, argv", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_every_option_has_help_and_its_default_once(module_name, function, argv, monkeypatch):
    parser = _parser_of(module_name, function, argv, monkeypatch)
    undocumented = [a.option_strings[0] for a in _options(parser) if not (a.help or "").strip()]
    assert undocumented == [], f"{module_name}: options without help: {undocumented}"
    text = parser.format_help()
    assert "(default: None)" not in text
    for action in _options(parser):
        shown = parser._get_formatter()._expand_help(action) if action.help else ""
        assert shown.lower().count("default") <= 1, (module_name, action.option_strings, shown)
        if action.default not in (None, False, argparse.SUPPRESS) and action.nargs != 0:
            assert "default" in shown.lower(), (module_name, action.option_strings, shown)


def test_the_formatter_appends_a_default_only_where_none_is_said():
    from utils.cli import ArgumentParser
    parser = ArgumentParser(prog="x")
    parser.add_argument("--a", type=int, default=3, help="an option")
    parser.add_argument("--b", type=int, default=4, help="said already (default 4)")
    parser.add_argument("--c", default=None, help="nothing to say")
    parser.add_argument("--d", action="store_true", help="a flag")
    text = " ".join(parser.format_help().split())
    assert "an option (default: 3)" in text and "said already (default 4)" in text
    assert "said already (default 4) (default" not in text and "(default: None)" not in text
    assert "a flag (default" not in text


@pytest.mark.parametrize("module_name, function, argv", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_the_description_is_whole_sentences(module_name, function, argv, monkeypatch):
    """Issue 24 item 9: a docstring's first line as the description cut it mid-sentence ("... as the seeds'")."""
    description = (_parser_of(module_name, function, argv, monkeypatch).description or "").strip()
    assert not description or description.endswith((".", ")", "`")), (module_name, description[-60:])
