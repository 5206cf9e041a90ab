"""`python -m data.prep.download glue` against the local HTTP server of tests/test_download.py: archives are
checksummed and unpacked into the layout run_glue.py reads, MRPC is built from Microsoft's files with GLUE's
dev split, nothing is fetched twice, and an unreachable host is one error line."""
import hashlib
import io
import zipfile

import pytest

from data.features.glue import TASKS, read_examples
from data.prep import download as dl
from test_download import _closed_port, server  # noqa: F401 -- `server` is a fixture used below

RTE_FILES = {
    "RTE/train.tsv": "index\tsentence1\tsentence2\tlabel\n0\tA dog ran.\tAn animal ran.\tentailment\n",
    "RTE/dev.tsv": "index\tsentence1\tsentence2\tlabel\n0\tA cat sat.\tNo cat sat.\tnot_entailment\n",
    "RTE/test.tsv": "index\tsentence1\tsentence2\n0\tIt rains.\tIt is wet.\n",
}
MSR_HEADER = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\r\n"
MSR_TRAIN = MSR_HEADER + "1\t11\t12\tHe said \"yes.\tHe agreed.\r\n0\t21\t22\tA b.\tC d.\r\n1\t31\t32\tE f.\tE f g.\r\n"
MSR_TEST = MSR_HEADER + "1\t41\t42\tX y.\tX y z.\r\n0\t51\t52\tP.\tQ.\r\n"
DEV_IDS = "21\t22\n"


def _zip(files):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    return buffer.getvalue()


def _sha(data):
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def glue_server(server, monkeypatch):  # noqa: F811 -- the imported fixture
    base, handler = server
    rte = _zip(RTE_FILES)
    handler.files.update({"/glue/RTE.zip": rte, "/glue/mrpc_dev_ids.tsv": DEV_IDS.encode(),
                          "/senteval/msr_paraphrase_train.txt": MSR_TRAIN.encode("utf-8"),
                          "/senteval/msr_paraphrase_test.txt": MSR_TEST.encode("utf-8")})
    monkeypatch.setitem(dl.GLUE_ARCHIVES, "RTE", ("RTE.zip", _sha(rte)))
    monkeypatch.setattr(dl, "MRPC_SOURCES", {
        "msr_paraphrase_train.txt": ("senteval", _sha(MSR_TRAIN.encode("utf-8"))),
        "msr_paraphrase_test.txt": ("senteval", _sha(MSR_TEST.encode("utf-8"))),
        "mrpc_dev_ids.tsv": ("glue", _sha(DEV_IDS.encode()))})
    return base, handler


def _argv(base, out, tasks="RTE,MRPC"):
    return ["glue", "--output-dir", str(out), "--glue-tasks", tasks, "--glue-base-url", base + "/glue/",
            "--senteval-base-url", base + "/senteval"]


def test_tasks_land_in_the_layout_run_glue_reads(glue_server, tmp_path):
    base, handler = glue_server
    paths = dl.main(_argv(base, tmp_path))
    assert paths == [str(tmp_path / "glue" / "RTE"), str(tmp_path / "glue" / "MRPC")]
    rte = read_examples(str(tmp_path / "glue" / "RTE" / "train.tsv"), TASKS["RTE"], "train")
    assert rte[0].label == "entailment"
    mrpc = tmp_path / "glue" / "MRPC"
    train = read_examples(str(mrpc / "train.tsv"), TASKS["MRPC"], "train")
    dev = read_examples(str(mrpc / "dev.tsv"), TASKS["MRPC"], "dev")
    test = read_examples(str(mrpc / "test.tsv"), TASKS["MRPC"], "test")
    assert [e.text_a for e in train] == ['He said "yes.', "E f."] and [e.text_a for e in dev] == ["A b."]
    assert [(e.index, e.text_b) for e in test] == [("0", "X y z."), ("1", "Q.")]
    # GLUE's files: the source's header (BOM kept) on train/dev, LF line ends, an index header on test
    dev_bytes = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n0\t21\t22\tA b.\tC d.\n".encode()
    assert (mrpc / "dev.tsv").read_bytes() == dev_bytes
    assert (mrpc / "test.tsv").read_text().splitlines()[0] == "index\t#1 ID\t#2 ID\t#1 String\t#2 String"
    requests = len(handler.log)
    dl.main(_argv(base, tmp_path))  # complete: nothing fetched again
    assert len(handler.log) == requests


def test_a_corrupt_archive_is_refused(glue_server, tmp_path):
    base, handler = glue_server
    handler.files["/glue/RTE.zip"] = b"not the archive"
    with pytest.raises(dl.DownloadError, match="checksum mismatch"):
        dl.main(_argv(base, tmp_path, "RTE"))
    assert not (tmp_path / "glue" / "RTE").exists()


def test_offline_is_one_error_line_and_unknown_task_is_refused(tmp_path, capsys):
    base = f"http://127.0.0.1:{_closed_port()}"
    assert dl.cli(_argv(base, tmp_path, "RTE")) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len([line for line in err if line.startswith("error:")]) == 1 and "cannot reach 127.0.0.1" in err[-1]
    with pytest.raises(ValueError, match="unknown task"):
        dl.main(_argv(base, tmp_path, "SQuAD"))


def test_the_registry_covers_every_task_with_a_sha256():
    assert set(dl.GLUE_ARCHIVES) | {"MRPC"} == set(dl.GLUE_TASKS) == set(TASKS)
    for name, sha in list(dl.GLUE_ARCHIVES.values()) + [(n, s) for n, (_, s) in dl.MRPC_SOURCES.items()]:
        assert len(sha) == 64 and int(sha, 16) >= 0, name
