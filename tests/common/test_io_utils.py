"""common.io_utils: whole-or-absent writes on the local disk and on tf.io.gfile filesystems (ram:// here)."""

import os
import uuid

import pytest

from common import io_utils


def test_local_atomic_output_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    with pytest.raises(RuntimeError):
        with io_utils.atomic_output(target) as handle:
            handle.write("half")
            raise RuntimeError("writer failed")
    assert not target.exists() and os.listdir(target.parent) == []
    io_utils.atomic_write_json(target, {"a": 1})
    assert io_utils.read_json(target) == {"a": 1} and os.listdir(target.parent) == ["out.txt"]
    assert not io_utils.is_remote(str(target)) and io_utils.is_remote("gs://bucket/x")
    assert io_utils.normpath("gs://bucket//a/./b") == "gs://bucket/a/b"


def test_ram_filesystem_round_trip():
    root = f"ram://io_utils_{uuid.uuid4().hex}"
    path = io_utils.join(root, "deep", "values.json")
    with pytest.raises(RuntimeError):
        with io_utils.atomic_output(path) as handle:
            handle.write("{")
            raise RuntimeError("writer failed")
    assert not io_utils.exists(path)
    assert io_utils.listdir(io_utils.join(root, "deep")) == []  # the temp object is gone too
    io_utils.atomic_write_json(path, {"text": "弹幕"})
    assert io_utils.read_json(path) == {"text": "弹幕"} and io_utils.isfile(path)
    assert io_utils.isdir(io_utils.join(root, "deep")) and not io_utils.isfile(io_utils.join(root, "deep"))
    with io_utils.atomic_path(io_utils.join(root, "blob.bin")) as local_temp:
        assert not io_utils.is_remote(local_temp)
        with open(local_temp, "wb") as handle:
            handle.write(b"\x00\x01")
    with io_utils.open_file(io_utils.join(root, "blob.bin"), "rb") as handle:
        assert handle.read() == b"\x00\x01"
    assert io_utils.glob(io_utils.join(root, "*")) == [io_utils.join(root, "blob.bin"), io_utils.join(root, "deep")]
    io_utils.copy(io_utils.join(root, "blob.bin"), io_utils.join(root, "copy.bin"))
    assert io_utils.read_text(io_utils.join(root, "copy.bin")) == "\x00\x01"
    with pytest.raises(ValueError, match="no such file"):
        io_utils.read_json(io_utils.join(root, "absent.json"))
