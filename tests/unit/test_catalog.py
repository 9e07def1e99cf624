"""The multi-model catalog: names, folders inside the root, the shared file, and footprint estimates."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from serving.catalog import LOADING, READY, Catalog, Entry, check_name, estimate_footprint, resolve_model_url
from serving.errors import BadRequest, ModelNotFound


@pytest.mark.parametrize("name", ["rob-a", "lstm_b.v2", "A", "0", "x" * 128])
def test_safe_names_pass(name):
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["", "../x", "a/b", "..", "a..b", ".hidden", "-x", "x" * 129, "sp ace", "ü", None, 3])
def test_unsafe_names_are_refused(name):
    with pytest.raises(BadRequest):
        check_name(name)


def test_a_url_must_resolve_inside_the_root(tmp_path, demo_dir):
    root = tmp_path / "models"
    shutil.copytree(demo_dir / "rnn", root / "rnn")
    outside = tmp_path / "outside"
    shutil.copytree(demo_dir / "rnn", outside)
    (root / "link").symlink_to(outside)
    (root / "inner-link").symlink_to(root / "rnn")
    assert resolve_model_url(str(root / "rnn"), root) == (root / "rnn").resolve()
    assert resolve_model_url("rnn", root) == (root / "rnn").resolve()
    assert resolve_model_url(f"file://{root / 'rnn'}", root) == (root / "rnn").resolve()
    assert resolve_model_url("inner-link", root) == (root / "rnn").resolve()  # a link that stays inside
    for url in (str(outside), "../outside", "link", "rnn/../../outside", "/etc"):
        with pytest.raises(BadRequest, match="outside"):
            resolve_model_url(url, root)
    for url in ("missing", str(root)):
        with pytest.raises(ModelNotFound):
            resolve_model_url(url, root)
    for url in ("", None, 5):
        with pytest.raises(BadRequest):
            resolve_model_url(url, root)


def test_the_catalog_is_shared_through_its_file_and_reread_only_when_replaced(tmp_path):
    writer, reader = Catalog(tmp_path), Catalog(tmp_path)
    assert reader.entries() == {}
    with writer.editing() as entries:
        entries["a"] = Entry("a", "/m/a", "rnn", LOADING, {"host_bytes": 10, "device_bytes": 5})
    assert reader.get("a").state == LOADING and reader.get("a").estimated_bytes == 15
    seen = reader.entries()
    assert reader.entries() is seen  # unchanged file: no read
    with writer.editing() as entries:
        entries["a"].state = READY
    assert reader.get("a").state == READY
    with pytest.raises(RuntimeError), writer.editing() as entries:  # an edit that fails is not written
        entries.clear()
        raise RuntimeError("boom")
    assert "a" in reader.entries()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".models.json")]  # no temporary left behind


def test_footprints_grow_with_the_batch_and_put_weights_on_the_gpu(demo_dir):
    small = estimate_footprint(demo_dir / "roberta", "roberta", 512, 8, on_gpu=False)
    large = estimate_footprint(demo_dir / "roberta", "roberta", 8192, 64, on_gpu=False)
    assert large["activation_bytes"] > small["activation_bytes"] > 0
    assert small["weights_bytes"] == (demo_dir / "roberta" / "model.safetensors").stat().st_size
    assert small["device_bytes"] == 0 and small["host_bytes"] == small["weights_bytes"] + small["activation_bytes"]
    gpu = estimate_footprint(demo_dir / "roberta", "roberta", 512, 8, on_gpu=True)
    assert gpu["device_bytes"] == small["host_bytes"] and gpu["host_bytes"] == 0
    lstm = estimate_footprint(demo_dir / "rnn", "rnn", 4096, 32, on_gpu=True)
    assert lstm["host_bytes"] == Path(demo_dir / "rnn" / "vectors.bin").stat().st_size  # the vectors stay on the host
    assert lstm["device_bytes"] > lstm["weights_bytes"] > 0


def test_urls_that_cannot_name_a_folder_and_links_out_of_the_folder_are_refused(tmp_path, demo_dir):
    root = tmp_path / "models"
    shutil.copytree(demo_dir / "rnn", root / "rnn")
    for url in ("rnn\0x", "x" * 5000, "a/" * 3000, "x" * 300, "/".join(["y" * 250] * 17)):
        with pytest.raises(BadRequest):
            resolve_model_url(url, root)
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"not yours")
    (root / "rnn" / "vectors.bin").unlink()
    (root / "rnn" / "vectors.bin").symlink_to(secret)  # the folder is inside, one of its files is not
    with pytest.raises(BadRequest, match="links outside"):
        resolve_model_url("rnn", root)


def test_an_entry_whose_front_end_died_mid_load_is_abandoned(tmp_path):
    import subprocess
    import sys

    from serving.catalog import UNLOADING, abandoned

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert abandoned(Entry("a", "/m", "rnn", LOADING, owner=gone.pid))
    assert abandoned(Entry("a", "/m", "rnn", UNLOADING, owner=gone.pid))
    assert not abandoned(Entry("a", "/m", "rnn", READY, owner=gone.pid))  # a loaded model belongs to nobody
    assert not abandoned(Entry("a", "/m", "rnn", LOADING, owner=os.getpid()))
