"""Model folders and archives: both families load from either; unsafe or broken ones fail with one clear error."""

from __future__ import annotations

import io
import json
import shutil
import tarfile

import numpy as np
import pytest

from serving import ModelLoadError, load_classifier
from serving.artifacts import detect_family, resolve_model_dir

TEXTS = ["you are a stupid idiot", "thanks, great write up", "i will find you", ""]


@pytest.mark.parametrize("family", ["roberta", "rnn"])
def test_folder_and_tarball_give_the_same_scores(demo_dir, family):
    from_folder = load_classifier(demo_dir / family)
    from_tarball = load_classifier(demo_dir / f"{family}.model.tar.gz")
    assert from_folder.family == from_tarball.family == family
    assert from_folder.labels == from_tarball.labels
    np.testing.assert_array_equal(from_folder.predict(TEXTS), from_tarball.predict(TEXTS))


@pytest.mark.parametrize("family", ["roberta", "rnn"])
def test_a_text_scores_the_same_alone_and_in_a_padded_batch(demo_dir, family):
    classifier = load_classifier(demo_dir / family)
    short = "u r an idoit"
    longer = ["this is a much longer comment that goes on and on about the patch notes " * 3,
              "another long one, with punctuation!!! and m1sspellings everywhere, you cl0wn " * 2]
    alone = classifier.predict_encoded(classifier.encode([short]))
    batched = classifier.predict_encoded(classifier.encode([longer[0], short, longer[1]]))
    np.testing.assert_allclose(batched[1], alone[0], atol=1e-5)


def archive_with(tmp_path, member: tarfile.TarInfo, data: bytes = b"x"):
    path = tmp_path / "model.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        tar.addfile(member, io.BytesIO(data) if member.isfile() else None)
    return path


def file_member(name: str) -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.size = 1
    return member


def link_member(name: str, target: str, kind=tarfile.SYMTYPE) -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.type, member.linkname = kind, target
    return member


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (file_member("../evil.txt"), "'..'"),
        (file_member("code/../../evil.txt"), "'..'"),
        (file_member("/etc/evil.txt"), "absolute"),
        (link_member("config.json", "/etc/passwd"), "link"),
        (link_member("code/config.json", "../../outside"), "link"),
        (link_member("config.json", "../outside", tarfile.LNKTYPE), "link"),
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "abs-symlink", "symlink-out", "hardlink-out"],
)
def test_unsafe_archives_are_refused(tmp_path, member, message):
    archive = archive_with(tmp_path, member)
    with pytest.raises(ModelLoadError, match=message):
        resolve_model_dir(archive, extract_root=tmp_path)
    assert not (tmp_path.parent / "evil.txt").exists()


def test_a_link_inside_the_folder_is_fine(tmp_path):
    archive = tmp_path / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.addfile(file_member("real.json"), io.BytesIO(b"x"))
        tar.addfile(link_member("code/alias.json", "../real.json"))
    folder = resolve_model_dir(archive, extract_root=tmp_path)
    assert (folder / "code" / "alias.json").read_text() == "x"


@pytest.fixture(params=["roberta", "rnn"])
def copied(request, demo_dir, tmp_path):
    folder = tmp_path / request.param
    shutil.copytree(demo_dir / request.param, folder)
    return folder


def edit_config(folder, **changes):
    path = folder / "config.json"
    config = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    path.write_text(json.dumps(config))


def test_corrupt_weights_name_the_file(copied):
    (copied / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ModelLoadError, match=r"model\.safetensors: corrupt"):
        load_classifier(copied)


def test_missing_weights_name_what_was_looked_for(copied):
    (copied / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="no weights file"):
        load_classifier(copied)


def test_a_config_without_labels_is_refused(copied):
    key = "labels" if detect_family(copied) == "rnn" else "id2label"
    edit_config(copied, **{key: None})
    with pytest.raises(ModelLoadError, match="no labels"):
        load_classifier(copied)


def test_an_unknown_architecture_is_refused(copied):
    edit_config(copied, architectures=["BertForMaskedLM"], architecture=None)
    with pytest.raises(ModelLoadError, match="unknown architecture"):
        load_classifier(copied)


@pytest.mark.parametrize(("changes", "message"), [
    ({"num_labels": 1}, "num_labels is 1 but id2label names 7"),
    ({"id2label": {"0": "toxicity", "2": "insult"}}, r"id2label must map 0\.\.n-1"),
    ({"id2label": ["toxicity"]}, r"id2label must map 0\.\.n-1"),
    ({"pad_token_id": "1"}, "pad_token_id must be a whole number"),
    ({"pad_token_id": True}, "pad_token_id must be a whole number"),
    ({"max_position_embeddings": 130.0}, "max_position_embeddings must be a whole number"),
    ({"max_position_embeddings": 2}, "leaves no room"),
])
def test_a_roberta_config_with_bad_fields_is_refused_by_the_text_side_too(demo_dir, tmp_path, changes, message):
    """The front end reads config.json without transformers: what transformers would refuse, or read otherwise,
    is refused there too, by name, not left for the engine to trip over."""
    from serving.frontend.asgi import RobertaTextSide

    folder = tmp_path / "roberta"
    shutil.copytree(demo_dir / "roberta", folder)
    edit_config(folder, **changes)
    with pytest.raises(ModelLoadError, match=message):
        RobertaTextSide(folder)
    with pytest.raises(ModelLoadError, match=message):
        load_classifier(folder)


def test_the_roberta_text_side_reads_what_transformers_reads(demo_dir, tmp_path):
    from transformers import RobertaConfig

    from serving.frontend.asgi import RobertaTextSide

    folder = tmp_path / "roberta"
    shutil.copytree(demo_dir / "roberta", folder)
    edit_config(folder, pad_token_id=None, max_position_embeddings=None, mode=None, problem_type=None)
    text = RobertaTextSide(folder)
    config = RobertaConfig.from_json_file(folder / "config.json")
    assert text.pad_id == config.pad_token_id
    assert text.max_length == config.max_position_embeddings - config.pad_token_id - 1
    assert text.labels == tuple(config.id2label[i] for i in range(config.num_labels))
    assert text.problem_type == "multi_class"  # the text-classification pipeline's rule for several labels


@pytest.mark.parametrize("parallelism", ["true", "false"])
@pytest.mark.parametrize("count", [1, 20])
def test_roberta_tokenises_as_transformers_does_with_and_without_the_librarys_threads(demo_dir, monkeypatch,
                                                                                        parallelism, count):
    """Each path (in place, the thread pool, without offsets) gives the ids, lengths and truncation flags of
    transformers' own tokenizer."""
    from transformers import AutoTokenizer

    from serving.frontend.asgi import RobertaTextSide

    monkeypatch.setenv("TOKENIZERS_PARALLELISM", parallelism)
    text = RobertaTextSide(demo_dir / "roberta", max_length=24)
    reference = AutoTokenizer.from_pretrained(str(demo_dir / "roberta"))
    texts = [f"{i} " + " ".join(["you are a stupid idiot, thanks"] * (i % 7)) for i in range(count)]
    encoded = text.encode(texts)
    for one, expected in zip(encoded, reference(texts, truncation=True, max_length=24)["input_ids"], strict=True):
        assert list(one.features) == expected and one.length == len(expected)
    assert [e.truncated for e in encoded] == [len(reference(t)["input_ids"]) > 24 for t in texts]
    assert any(e.truncated for e in encoded) == (count > 1)


def test_missing_config_and_folder(tmp_path):
    with pytest.raises(ModelLoadError, match="config.json is missing"):
        load_classifier(tmp_path)
    with pytest.raises(ModelLoadError, match="no such model folder"):
        load_classifier(tmp_path / "absent")


def test_rnn_without_or_with_a_wrong_fasttext_file(demo_dir, tmp_path):
    folder = tmp_path / "rnn"
    shutil.copytree(demo_dir / "rnn", folder)
    (folder / "vectors.bin").write_bytes(b"not a fasttext model")
    with pytest.raises(ModelLoadError, match=r"vectors\.bin: missing or corrupt fastText"):
        load_classifier(folder)
    edit_config(folder, embed_size=300)
    shutil.copy(demo_dir / "rnn" / "vectors.bin", folder / "vectors.bin")
    with pytest.raises(ModelLoadError, match="embed_size 300"):
        load_classifier(folder)


def test_roberta_without_tokenizer(demo_dir, tmp_path):
    folder = tmp_path / "roberta"
    shutil.copytree(demo_dir / "roberta", folder)
    (folder / "tokenizer.json").unlink()
    with pytest.raises(ModelLoadError, match=r"tokenizer\.json"):
        load_classifier(folder)


def test_weights_that_do_not_fit_the_config(demo_dir, tmp_path):
    folder = tmp_path / "roberta"
    shutil.copytree(demo_dir / "roberta", folder)
    edit_config(folder, hidden_size=64, intermediate_size=128)
    with pytest.raises(ModelLoadError, match="do not fit"):
        load_classifier(folder)
