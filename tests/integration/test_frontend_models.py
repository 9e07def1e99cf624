"""A front end's model set (serving.frontend.models): text sides built once per load of a name, dropped once the
catalog no longer lists that load, and 404 before any work for a name not loaded."""

from __future__ import annotations

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
