"""A front end's model set (serving.frontend.models): text sides built once per load of a name, dropped once the
catalog no longer lists that load, and 404 before any work for a name not loaded."""

from __future__ import annotations

import os

import pytest

from serving.board import Board
from serving.catalog import LOADING, READY, Catalog, Entry
from serving.config import Settings
from serving.errors import ModelNotFound
from serving.frontend.engines import EngineClient
from serving.frontend.models import ModelSet


def test_text_sides_follow_the_catalog(demo_dir, tmp_path):
    Board.create(tmp_path, 1)
    catalog = Catalog(tmp_path)
    models = ModelSet(tmp_path, Settings(multi_model=True, models_root=str(demo_dir)), EngineClient(tmp_path, 64, 8))
    with catalog.editing() as entries:
        entries["a"] = Entry("a", str(demo_dir / "rnn"), "rnn", READY, generation="1")
        entries["b"] = Entry("b", str(demo_dir / "roberta"), "roberta", LOADING, generation="2")
    first = models.handler("a")
    assert models.handler("a") is first  # built once
    with pytest.raises(ModelNotFound, match="loading"):
        models.handler("b")
    with catalog.editing() as entries:  # unloaded and loaded again under the same name: a new model
        entries["a"].generation = "3"
    assert models.handler("a") is not first
    with catalog.editing() as entries:
        del entries["a"]
        entries["b"].state = READY
    with pytest.raises(ModelNotFound):
        models.handler("a")
    assert "a" not in models._handlers  # its text side let go on the first request after the catalog changed
    assert models.handler("b").model.classifier.family == "roberta"
    assert sorted(models._handlers) == ["b"]


def test_loads_are_checked_before_any_engine_is_asked(demo_dir, tmp_path):
    """Folders that hold no model, or point outside the root, and names held by a front end that died."""
    import json
    import shutil
    import subprocess
    import sys

    from serving.errors import BadRequest, ModelExists

    run_dir, root = tmp_path / "run", tmp_path / "models"
    run_dir.mkdir()
    Board.create(run_dir, 1)  # no engine ever serves: reaching one would answer 503
    models = ModelSet(run_dir, Settings(multi_model=True, models_root=str(root)), EngineClient(run_dir, 64, 8))
    shutil.copytree(demo_dir / "rnn", root / "escapes")
    config = json.loads((root / "escapes" / "config.json").read_text())
    (root / "escapes" / "config.json").write_text(json.dumps({**config, "embeddings_file": str(demo_dir / "rnn" /
                                                                                                "vectors.bin")}))
    (root / "list").mkdir()
    (root / "list" / "config.json").write_text("[1, 2]")
    with pytest.raises(BadRequest, match="embeddings_file"):
        models.load({"model_name": "x", "url": "escapes"})
    with pytest.raises(ModelNotFound, match="no model there"):
        models.load({"model_name": "x", "url": "list"})
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    with models.catalog.editing() as entries:
        entries["held"] = Entry("held", str(root / "list"), "rnn", LOADING, owner=gone.pid)
        entries["busy"] = Entry("busy", str(root / "list"), "rnn", LOADING, owner=os.getpid())
    with pytest.raises(ModelExists):
        models._reserve("busy", root / "list", "rnn", {})
    models._reserve("held", root / "list", "rnn", {})  # the dead front end's claim is let go
    assert models.catalog.get("held").owner == os.getpid()
    with models.catalog.editing() as entries:  # a dead front end's claim on another name, holding budget
        entries["stale"] = Entry("stale", str(root / "list"), "rnn", LOADING, {"host_bytes": 2**40}, owner=gone.pid)
    models._reserve("third", root / "list", "rnn", {})
    assert models.catalog.get("stale") is None
