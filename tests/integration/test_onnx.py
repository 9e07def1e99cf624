"""ONNX export of both demo models: parity with torch, int8 quality on the held-out split, refusals."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from serving import ModelLoadError, load_classifier
from serving.artifacts import choose_backend
from serving.cli import main
from serving.corpus import read_labelled
from serving.models.onnx_runtime import weights_digest
from serving.tools.evaluation import roc_auc
from tests.conftest import CORPUS

TEXTS, Y = read_labelled(CORPUS, split="test")


@pytest.fixture(scope="module", params=["roberta", "rnn"])
def exported(request, demo_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx") / request.param
    shutil.copytree(demo_dir / request.param, folder, ignore=shutil.ignore_patterns("onnx"))
    result = CliRunner().invoke(main, ["export", "--model-dir", str(folder), "--variants", "fp32,int8,fp16"])
    assert result.exit_code == 0, result.output
    return folder


def test_export_writes_each_variant_and_a_parity_report(exported):
    report = json.loads((exported / "onnx" / "export.json").read_text())
    source = report.pop("source")
    assert set(report) == {"fp32", "int8", "fp16"} and all(r["passed"] for r in report.values())
    assert source == weights_digest(exported) and source["file"] == "model.safetensors"
    for variant in ("fp32", "int8", "fp16"):
        assert (exported / "onnx" / f"model.{variant}.onnx").stat().st_size > 0


def test_fp32_equals_torch_within_1e4(exported):
    torch_scores = load_classifier(exported).predict(TEXTS)
    onnx_scores = load_classifier(exported, backend="onnx", variant="fp32").predict(TEXTS)
    np.testing.assert_allclose(onnx_scores, torch_scores, atol=1e-4)


def test_int8_keeps_decisions_and_auc(exported):
    fp32 = load_classifier(exported, backend="onnx", variant="fp32").predict(TEXTS)
    int8 = load_classifier(exported, backend="onnx", variant="int8").predict(TEXTS)
    agree = ((fp32 >= 0.5) == (int8 >= 0.5)).mean()
    auc_fp32, auc_int8 = roc_auc(Y[:, 0] >= 0.5, fp32[:, 0]), roc_auc(Y[:, 0] >= 0.5, int8[:, 0])
    print(f"{exported.name}: int8 decisions agree {agree:.2%}, toxicity AUC fp32 {auc_fp32:.4f} int8 {auc_int8:.4f}")
    assert agree >= 0.99 and abs(auc_fp32 - auc_int8) <= 0.01


def test_a_variant_missing_its_tolerance_is_not_written_unless_forced(exported, monkeypatch, tmp_path):
    from serving.tools import export as export_module

    folder = tmp_path / "model"
    shutil.copytree(exported, folder, ignore=shutil.ignore_patterns("onnx"))
    monkeypatch.setitem(export_module.TOLERANCES, "int8", (1e-9, 1.0))
    refused = CliRunner().invoke(main, ["export", "--model-dir", str(folder), "--variants", "fp32,int8"])
    assert refused.exit_code != 0 and "int8: max |score diff|" in refused.output and "not written" in refused.output
    assert (folder / "onnx" / "model.fp32.onnx").exists() and not (folder / "onnx" / "model.int8.onnx").exists()
    forced = CliRunner().invoke(main, ["export", "--model-dir", str(folder), "--variants", "int8", "--force"])
    assert forced.exit_code == 0 and (folder / "onnx" / "model.int8.onnx").exists()


def test_missing_variant_or_folder_is_a_clear_error(exported, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(exported, folder, ignore=shutil.ignore_patterns("onnx"))
    with pytest.raises(ModelLoadError, match=r"model\.int8\.onnx: ONNX variant missing; run `toxserve export"):
        load_classifier(folder, backend="onnx", variant="int8")
    with pytest.raises(ModelLoadError, match="asked for CUDAExecutionProvider, but this onnxruntime build has only"):
        load_classifier(exported, backend="onnx", device="cuda")


def test_predict_command_with_the_onnx_backend(exported):
    result = CliRunner().invoke(main, ["predict", "--model-dir", str(exported), "--backend", "onnx", "--variant",
                                       "int8"], input="you are an idiot\nlovely day\n")
    assert result.exit_code == 0, result.output
    assert len([line for line in result.stdout.splitlines() if line.startswith("{")]) == 2


def test_auto_backend_serves_a_current_fp32_export_on_cpu_and_torch_otherwise(exported, tmp_path):
    assert choose_backend(exported, "cpu")[:2] == ("onnx", "fp32")
    auto = load_classifier(exported)
    assert type(auto).__name__.startswith("Onnx") and auto.variant == "fp32"
    np.testing.assert_allclose(auto.predict(TEXTS), load_classifier(exported, backend="torch").predict(TEXTS),
                               atol=1e-4)
    backend, _, why = choose_backend(exported, "cuda")
    assert backend == "torch" and "--backend onnx" in why


def test_auto_backend_refuses_an_export_of_other_weights_or_one_that_failed_parity(exported, tmp_path, caplog):
    from safetensors.torch import load_file, save_file

    retrained = tmp_path / "retrained"
    shutil.copytree(exported, retrained)
    weights = load_file(str(retrained / "model.safetensors"))
    name = next(iter(weights))
    weights[name] = weights[name] + 1.0  # new weights, old onnx/: the export no longer speaks for them
    save_file(weights, str(retrained / "model.safetensors"))
    backend, _, why = choose_backend(retrained, "cpu")
    assert backend == "torch" and "current weights" in why
    assert not type(load_classifier(retrained)).__name__.startswith("Onnx")
    with caplog.at_level(logging.WARNING, logger="serving.artifacts"):
        load_classifier(retrained, backend="onnx")  # asked for explicitly: served, with a warning
    assert "not made from this folder's current weights" in caplog.text

    reconfigured = tmp_path / "reconfigured"
    shutil.copytree(exported, reconfigured)
    config = json.loads((reconfigured / "config.json").read_text())
    (reconfigured / "config.json").write_text(json.dumps({**config, "note": "edited after export"}))
    assert choose_backend(reconfigured, "cpu")[0] == "torch"

    failed = tmp_path / "failed"
    shutil.copytree(exported, failed)
    report = json.loads((failed / "onnx" / "export.json").read_text())
    report["fp32"]["passed"] = False
    (failed / "onnx" / "export.json").write_text(json.dumps(report))
    assert choose_backend(failed, "cpu")[0] == "torch" and "parity" in choose_backend(failed, "cpu")[2]
    (failed / "onnx" / "export.json").unlink()
    assert choose_backend(failed, "cpu")[0] == "torch"
    shutil.rmtree(failed / "onnx")
    assert choose_backend(failed, "cpu") == ("torch", "fp32", "no onnx/model.fp32.onnx")


def test_re_exporting_after_new_weights_drops_the_old_variants_report(exported, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "model"
    shutil.copytree(exported, folder)
    weights = load_file(str(folder / "model.safetensors"))
    name = next(iter(weights))
    weights[name] = weights[name] * 0.5
    save_file(weights, str(folder / "model.safetensors"))
    result = CliRunner().invoke(main, ["export", "--model-dir", str(folder), "--variants", "fp32"])
    assert result.exit_code == 0, result.output
    report = json.loads((folder / "onnx" / "export.json").read_text())
    assert set(report) == {"fp32", "source"} and report["source"] == weights_digest(folder)
    assert choose_backend(folder, "cpu")[0] == "onnx"
