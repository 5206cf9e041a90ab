"""utils.fs: atomic files and directories leave either the old state or the complete new one."""
import json
import os

import pytest

from utils.fs import atomic_output_dir, atomic_write_json, atomic_write_text


def test_atomic_dir_success_and_failure(tmp_path):
    out = tmp_path / "out"
    with atomic_output_dir(out) as tmp:
        open(os.path.join(tmp, "a.txt"), "w").write("x")
        assert not out.exists()            # invisible until the block succeeds
    assert (out / "a.txt").read_text() == "x"

    with pytest.raises(FileExistsError):
        with atomic_output_dir(out):
            pass
    with pytest.raises(RuntimeError):
        with atomic_output_dir(out, overwrite=True) as tmp:
            open(os.path.join(tmp, "b.txt"), "w").write("y")
            raise RuntimeError("boom")
    assert sorted(os.listdir(out)) == ["a.txt"]          # old content intact
    assert sorted(os.listdir(tmp_path)) == ["out"]       # no temp debris

    with atomic_output_dir(out, overwrite=True) as tmp:
        open(os.path.join(tmp, "c.txt"), "w").write("z")
    assert sorted(os.listdir(out)) == ["c.txt"]
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_atomic_files(tmp_path):
    p = tmp_path / "sub" / "f.json"
    atomic_write_json(p, {"b": 1, "a": [1, 2]})
    assert json.loads(p.read_text()) == {"a": [1, 2], "b": 1}
    atomic_write_text(p, "new")
    assert p.read_text() == "new"
    assert os.listdir(p.parent) == ["f.json"]
