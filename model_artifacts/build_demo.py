"""Builds the demo models from data/comments.csv: a small RoBERTox and a subword-LSTM, as SageMaker folders.

Writes model_artifacts/demo/{roberta,rnn}/ and {roberta,rnn}.model.tar.gz, plus metrics.json
(held-out AP/AUC per label). Seeded and deterministic on one machine; about a minute on 2 cores.

    python model_artifacts/build_demo.py [--out DIR] [--force]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import tarfile
import time
from pathlib import Path

import numpy as np
import torch

from serving.corpus import JIGSAW_LABELS, read_labelled
from serving.evaluation import per_label_report
from serving.models.rnn import RNNClassifier, RNNConfig, SubwordLSTMClassifier
from serving.models.roberta import RobertaClassifier, RoBERToxForSequenceClassification

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "data" / "comments.csv"
DEFAULT_OUT = HERE / "demo"
SEED = 1234
SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # RoBERTa's ids 0..4


def seed_everything(seed: int = SEED) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train_tokenizer(texts: list[str], out: Path, max_length: int) -> None:
    """Byte-level BPE as RoBERTa uses, saved as tokenizer.json (+ the files transformers reads)."""
    from tokenizers import ByteLevelBPETokenizer
    from tokenizers.processors import RobertaProcessing
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=2000, min_frequency=2, special_tokens=SPECIAL_TOKENS)
    bpe.post_processor = RobertaProcessing(("</s>", 2), ("<s>", 0))
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>", sep_token="</s>",
        cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>", model_max_length=max_length,
    )
    wrapped.save_pretrained(out)


def batches(n: int, size: int, rng: np.random.Generator):
    order = rng.permutation(n)
    for start in range(0, n, size):
        yield order[start : start + size]


def train_roberta(texts: list[str], y: np.ndarray, out: Path, epochs: int = 40) -> None:
    from transformers import RobertaConfig

    max_length = 128
    train_tokenizer(texts, out, max_length)
    config = RobertaConfig(
        vocab_size=2000, hidden_size=128, num_hidden_layers=3, num_attention_heads=4, intermediate_size=256,
        max_position_embeddings=max_length + 2, pad_token_id=1, bos_token_id=0, eos_token_id=2,
        type_vocab_size=1, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
        id2label=dict(enumerate(JIGSAW_LABELS)), label2id={n: i for i, n in enumerate(JIGSAW_LABELS)},
        problem_type="multi_label_classification", architectures=["RoBERToxForSequenceClassification"],
    )
    config.mode = "MULTI_LABEL"
    seed_everything()
    model = RoBERToxForSequenceClassification(config)
    model.save_pretrained(out)  # untrained, so the serving loader can encode with the saved tokenizer
    serving = RobertaClassifier(out)
    encoded = serving.encode(texts)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    rng = np.random.default_rng(SEED)
    model.train()
    for _ in range(epochs):
        for idx in batches(len(texts), 32, rng):
            width = max(encoded[i].length for i in idx)
            ids = torch.full((len(idx), width), 1, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                ids[row, : encoded[i].length] = torch.from_numpy(encoded[i].features)
                mask[row, : encoded[i].length] = 1
            loss = model(input_ids=ids, attention_mask=mask, labels=torch.from_numpy(y[idx])).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    model.save_pretrained(out)


def train_fasttext(sentences: list[list[str]], path: Path, dim: int) -> None:
    from gensim.models import FastText
    from gensim.models.fasttext import save_facebook_model

    model = FastText(
        vector_size=dim, sg=1, window=5, min_count=2, min_n=3, max_n=6, bucket=20000, epochs=40, seed=SEED, workers=1,
    )
    model.build_vocab(corpus_iterable=sentences)
    model.train(corpus_iterable=sentences, total_examples=len(sentences), epochs=model.epochs)
    save_facebook_model(model, str(path))


def train_rnn(texts: list[str], y: np.ndarray, out: Path, epochs: int = 40) -> None:
    config = RNNConfig(
        labels=list(JIGSAW_LABELS), embed_size=100, lstm_hidden_size=64, lstm_num_layers=2, proj_size=32,
        max_len=100, dropout=0.1,
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(config.to_json())
    import re

    words = re.compile(config.word_pattern)
    train_fasttext([words.findall(t.lower()) for t in texts], out / config.embeddings_file, config.embed_size)
    seed_everything()
    from safetensors.torch import save_file

    rows = SubwordLSTMClassifier(config).state_dict()  # placeholder weights so the loader can start
    save_file({k: v.contiguous() for k, v in rows.items()}, str(out / "model.safetensors"))
    serving = RNNClassifier(out)
    model = serving.model
    encoded = serving.encode(texts)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=3e-3, weight_decay=0.01)
    rng = np.random.default_rng(SEED)
    model.train()
    for _ in range(epochs):
        for idx in batches(len(texts), 32, rng):
            with torch.no_grad():
                embeddings, lengths = serving.batch_tensors([encoded[i] for i in idx])
            logits = model(embeddings, lengths)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.from_numpy(y[idx]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"))


def world_readable(folder: Path) -> None:
    """Files 0644, folders 0755 (safetensors writes 0600): the images serve as a non-root user, and SageMaker
    extracts model.tar.gz with the modes it holds."""
    folder.chmod(0o755)
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def make_tarball(folder: Path, archive: Path) -> None:
    """Files at the archive's root, as SageMaker expects in model.tar.gz."""
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(folder.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(folder)), recursive=False)


def held_out_metrics(folder: Path) -> dict:
    from serving.artifacts import load_classifier

    texts, y = read_labelled(CORPUS, split="test")
    classifier = load_classifier(folder)
    return per_label_report(classifier.labels, y, classifier.predict(texts))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--force", action="store_true", help="rebuild even if the demo models exist")
    parser.add_argument("--no-onnx", action="store_true", help="skip the ONNX variants (onnx/ in each folder)")
    args = parser.parse_args(argv)
    if (args.out / "metrics.json").exists() and not args.force:
        print(f"demo models already built in {args.out} (use --force to rebuild)")
        return
    torch.set_num_threads(2)
    texts, y = read_labelled(CORPUS, split="train")
    metrics = {}
    for family, train in (("roberta", train_roberta), ("rnn", train_rnn)):
        started = time.perf_counter()
        folder = args.out / family
        shutil.rmtree(folder, ignore_errors=True)
        train(texts, y, folder)
        if not args.no_onnx:
            from serving.export import export

            export(folder, ["fp32", "int8", "fp16"] if family == "roberta" else ["fp32", "int8"],
                   read_labelled(CORPUS, split="test")[0])
        world_readable(folder)
        make_tarball(folder, args.out / f"{family}.model.tar.gz")
        metrics[family] = held_out_metrics(folder)
        seconds = time.perf_counter() - started
        auc = metrics[family]["toxicity"]["auc"]
        print(f"{family}: built in {seconds:.0f} s, held-out toxicity AUC {auc:.3f}")
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(metrics_table(metrics))


def metrics_table(metrics: dict) -> str:
    families = list(metrics)
    lines = ["| label | positives | " + " | ".join(families) + " |", "|---|---|" + "---|" * len(families)]
    for label in JIGSAW_LABELS:
        cells = [f"AP={metrics[f][label]['ap']:.3f}, AUC={metrics[f][label]['auc']:.3f}" for f in families]
        lines.append(f"| {label} | {metrics[families[0]][label]['positives']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
