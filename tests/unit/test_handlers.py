"""Loading user code: found, absent, misnamed, or broken, each with a clear outcome."""

from __future__ import annotations

import pytest

from serving.errors import ModelLoadError
from serving.frontend.handlers import Handler, default_input_fn, load_user_module


def test_no_code_folder_means_defaults(tmp_path):
    assert load_user_module(tmp_path) is None
    assert Handler(model=None).input_fn is default_input_fn


def test_a_named_program_that_is_missing_is_an_error(tmp_path):
    with pytest.raises(ModelLoadError, match="SAGEMAKER_PROGRAM"):
        load_user_module(tmp_path, "other.py")


def test_user_code_that_fails_to_import_names_the_file(tmp_path):
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "inference.py").write_text("def input_fn(:\n")
    with pytest.raises(ModelLoadError, match=r"inference\.py: failed to import \(SyntaxError"):
        load_user_module(tmp_path)


def test_defined_hooks_replace_defaults_and_the_rest_stay(tmp_path):
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "helper.py").write_text("SUFFIX = '!'\n")
    (tmp_path / "code" / "inference.py").write_text(
        "from helper import SUFFIX\n\ndef output_fn(prediction, accept):\n    return str(prediction) + SUFFIX\n")
    handler = Handler(model=lambda texts: [len(t) for t in texts], user_module=load_user_module(tmp_path))
    reply = handler.invoke(b'["ab", "abc"]', "application/json", "application/json", None)
    assert reply.body == b"[2, 3]!" and reply.content_type == "application/json"
