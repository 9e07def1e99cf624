"""Builds the demo models from data/comments.csv: a small RoBERTox and a subword-LSTM, as SageMaker folders.

Writes model_artifacts/demo/{roberta,rnn}/ and {roberta,rnn}.model.tar.gz, plus metrics.json
(held-out AP/AUC per label). Seeded and deterministic on one machine; about 80 s on 2 cores.

    python model_artifacts/build_demo.py [--out DIR] [--force]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import tarfile
import time
from pathlib import Path

import numpy as np
import torch

from serving.corpus import JIGSAW_LABELS, read_labelled
from serving.models.rnn import RNNClassifier, RNNConfig, SubwordLSTMClassifier
from serving.models.roberta import RobertaClassifier, RoBERToxForSequenceClassification

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "data" / "comments.csv"
DEFAULT_OUT = HERE / "demo"
SEED = 1234
SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # RoBERTa's ids 0..4
BATCH_SIZE = 32
VOCAB_SIZE = 4000
TOKEN_NOISE = 0.2
WORD_VECTOR_DIM = 100
EMBED_INIT_NORM = 1.5
THRESHOLD_TARGET = "f1"
ROBERTA_EPOCHS, ROBERTA_LR = 8, 1e-3
RNN_EPOCHS, RNN_LR = 15, 5e-3
RNN_WORD_NOISE = 0.1
UNSEEN_WORD_SHARE = 0.5
MADE_UP_SHARE = 0.02


def seed_everything(seed: int = SEED) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train_tokenizer(texts: list[str], out: Path, max_length: int) -> int:
    """Byte-level BPE as RoBERTa uses, saved as tokenizer.json (+ the files transformers reads)."""
    from tokenizers import ByteLevelBPETokenizer
    from tokenizers.processors import RobertaProcessing
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=VOCAB_SIZE, min_frequency=2, special_tokens=SPECIAL_TOKENS)
    bpe.post_processor = RobertaProcessing(("</s>", 2), ("<s>", 0))
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>", sep_token="</s>",
        cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>", model_max_length=max_length,
    )
    wrapped.save_pretrained(out)
    return len(wrapped)  # at most VOCAB_SIZE: BPE stops when no pair occurs twice


def batches(lengths: list[int], size: int, rng: np.random.Generator):
    """Shuffled batches of texts of similar length (little padding to compute), in shuffled order."""
    order = rng.permutation(len(lengths))
    chunks = []
    for start in range(0, len(order), size * 16):  # sort within pools of 16 batches, as bucketing samplers do
        pool = sorted(order[start : start + size * 16], key=lambda i: lengths[i])
        chunks += [pool[k : k + size] for k in range(0, len(pool), size)]
    for k in rng.permutation(len(chunks)):
        yield np.asarray(chunks[k])


def corrupt_tokens(ids: torch.Tensor, mask: torch.Tensor, share: float, vocab_size: int,
                   rng: np.random.Generator) -> torch.Tensor:
    """Replace a share of the real tokens (not <s>, </s> or padding) by random ones, as BERT's pre-training
    does: the model learns not to hang a decision on one token, and an unfamiliar word in a benign comment
    (split into rare pieces) stops looking like evidence."""
    special = torch.tensor([0, 1, 2])
    replace = torch.from_numpy(rng.random(tuple(ids.shape)) < share) & mask.bool() & ~torch.isin(ids, special)
    noise = torch.from_numpy(rng.integers(len(SPECIAL_TOKENS), vocab_size, tuple(ids.shape)))
    return torch.where(replace, noise, ids)


ONSETS = "b c d f g h j k l m n p r s t v w y z ch sh th st pl br tr cr gr sp".split()
VOWELS = "a e i o u a e i o ea oo ai ou".split()
CODAS = ["", "", "", "n", "s", "t", "r", "l", "ck", "ng", "ke", "m", "nd", "st"]
# A made-up word must not spell abuse by chance ("kike", "cosdickwu"): it would be taught as no evidence.
NOT_IN_MADE_UP = ("fuck", "shit", "dick", "cock", "cum", "tit", "kike", "spic", "rape", "negr", "nig", "homo", "nude",
                  "slut", "whore", "cunt", "porn", "sex", "fag", "puss", "bitch", "kill", "die", "hate", "dumb",
                  "moron", "loser", "crap", "damn", "hell", "ass", "gay", "suck", "choke", "shoot", "stab", "gun",
                  "hang", "jew", "hoe", "bimbo")
MADE_UP_MIN_LETTERS = 5


def made_up_word(rng: np.random.Generator, known: set[str]) -> str:
    """One to three syllables of English-like spelling ("plonkest", "mairu"), split into the same kind of
    common pieces as a real word the tokenizer never saw; never a word of the corpus (`known`), never short
    enough to be a common word, never holding a piece of abuse."""
    while True:
        word = "".join(rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS) for _ in range(rng.integers(1, 4)))
        if len(word) >= MADE_UP_MIN_LETTERS and word not in known and not any(bad in word for bad in NOT_IN_MADE_UP):
            return word


def corpus_words(texts: list[str]) -> set[str]:
    return set(re.findall(r"[a-z]+", " ".join(texts).lower()))


def with_unseen_words(texts: list[str], share: float, rng: np.random.Generator, known: set[str]) -> list[str]:
    """A share of the comments, each with one made-up word put in at a random place, labels unchanged. A word
    the corpus never had (a user's "pancakes") reaches RoBERTox as a run of short pieces, and in this corpus
    such runs came mostly from obfuscated abuse ("f***", "$h1t"); seeing them in benign and toxic comments
    alike teaches that an unfamiliar word is no evidence either way. `known`: the corpus's words, never made up."""
    out = []
    for text in texts:
        if rng.random() < share:
            words = text.split()
            words.insert(int(rng.integers(0, len(words) + 1)), made_up_word(rng, known))
            text = " ".join(words)
        out.append(text)
    return out


def made_up_comments(count: int, labels: int, rng: np.random.Generator,
                     known: set[str]) -> tuple[list[str], np.ndarray]:
    """`count` comments of one to four made-up words, labelled benign: text that says nothing the model knows is
    no evidence of abuse, so it should score near zero, not near the share of toxic comments in training."""
    texts = [" ".join(made_up_word(rng, known) for _ in range(rng.integers(1, 5))) for _ in range(count)]
    return texts, np.zeros((count, labels), dtype=np.float32)


def corrupt_words(embeddings: torch.Tensor, lengths: torch.Tensor, share: float,
                  rng: np.random.Generator) -> torch.Tensor:
    """The LSTM's counterpart of `corrupt_tokens`: a share of the words (not padding) get the vector of another
    word in the batch, so no single word decides and an unfamiliar one is not taken for evidence."""
    batch, width, _ = embeddings.shape
    real = torch.arange(width)[None, :] < lengths[:, None]
    replace = torch.from_numpy(rng.random((batch, width)) < share) & real
    if not replace.any():
        return embeddings
    pool = embeddings[real]  # every real word vector in the batch
    picks = torch.from_numpy(rng.integers(0, len(pool), int(replace.sum())))
    embeddings = embeddings.clone()
    embeddings[replace] = pool[picks]
    return embeddings


def one_cycle(optimizer: torch.optim.Optimizer, peak_lr: float, steps: int):
    """Warm up over the first 10% of steps, then anneal: lets a short run use a high peak rate."""
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=peak_lr, total_steps=steps, pct_start=0.1)


def train_roberta(texts: list[str], y: np.ndarray, out: Path, epochs: int = ROBERTA_EPOCHS,
                  peak_lr: float = ROBERTA_LR, batch_size: int = BATCH_SIZE, word_vectors=None) -> None:
    """`word_vectors` (a gensim FastText model) starts the token embeddings; None leaves them random."""
    from transformers import RobertaConfig

    max_length = 128
    vocab_size = train_tokenizer(texts, out, max_length)
    config = RobertaConfig(
        vocab_size=vocab_size, hidden_size=128, num_hidden_layers=3, num_attention_heads=4, intermediate_size=256,
        max_position_embeddings=max_length + 2, pad_token_id=1, bos_token_id=0, eos_token_id=2,
        type_vocab_size=1, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
        id2label=dict(enumerate(JIGSAW_LABELS)), label2id={n: i for i, n in enumerate(JIGSAW_LABELS)},
        problem_type="multi_label_classification", architectures=["RoBERToxForSequenceClassification"],
    )
    config.mode = "MULTI_LABEL"
    seed_everything()
    model = RoBERToxForSequenceClassification(config)
    if word_vectors is not None:
        start_from_word_vectors(model, out, word_vectors.wv)
    model.save_pretrained(out)  # untrained, so the serving loader can encode with the saved tokenizer
    serving = RobertaClassifier(out)
    augment = np.random.default_rng([SEED, 1])  # its own stream: changing it leaves batches and noise as they were
    known = corpus_words(texts)
    extra_texts, extra_y = made_up_comments(round(len(texts) * MADE_UP_SHARE), y.shape[1], augment, known)
    texts, y = with_unseen_words(texts, UNSEEN_WORD_SHARE, augment, known) + extra_texts, np.concatenate([y, extra_y])
    rng = np.random.default_rng(SEED)
    encoded = serving.encode(texts)
    lengths = [e.length for e in encoded]
    optimizer = torch.optim.AdamW(model.parameters(), lr=peak_lr, weight_decay=0.01)
    scheduler = one_cycle(optimizer, peak_lr, epochs * -(-len(texts) // batch_size) + 16)
    model.train()
    for _ in range(epochs):
        for idx in batches(lengths, batch_size, rng):
            width = max(encoded[i].length for i in idx)
            ids = torch.full((len(idx), width), 1, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                ids[row, : encoded[i].length] = torch.from_numpy(encoded[i].features)
                mask[row, : encoded[i].length] = 1
            ids = corrupt_tokens(ids, mask, TOKEN_NOISE, vocab_size, rng)
            loss = model(input_ids=ids, attention_mask=mask, labels=torch.from_numpy(y[idx])).loss
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # a from-scratch transformer diverges without
            optimizer.step()
            scheduler.step()
    model.eval()
    model.save_pretrained(out)


def start_from_word_vectors(model, tokenizer_dir: Path, word_vectors) -> None:
    """Token embeddings from fastText vectors of each token's text (n-grams cover any piece), scaled to the
    initialiser's size: with no pre-trained checkpoint offline, this is the pre-training the demo can afford."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    table = model.roberta.embeddings.word_embeddings.weight
    with torch.no_grad():
        for token_id in range(len(SPECIAL_TOKENS), table.shape[0]):
            piece = tokenizer.decode([token_id]).strip().lower()
            try:
                vector = torch.from_numpy(np.array(word_vectors.get_vector(piece), dtype=np.float32))
            except KeyError:  # a piece with no known word or n-gram keeps its random start
                continue
            if vector.norm() > 0:
                table[token_id, : vector.shape[0]] = vector / vector.norm() * EMBED_INIT_NORM


def train_word_vectors(texts: list[str], dim: int = WORD_VECTOR_DIM):
    """Skip-gram fastText vectors of the training comments' words (lowercased, split as the LSTM splits them):
    the LSTM's embeddings file, and the start of RoBERTox's token embeddings."""
    from gensim.models import FastText

    words = re.compile(RNNConfig(labels=list(JIGSAW_LABELS)).word_pattern)
    sentences = [words.findall(t.lower()) for t in texts]
    model = FastText(
        vector_size=dim, sg=1, window=5, min_count=2, min_n=3, max_n=6, bucket=20000, epochs=40, seed=SEED, workers=1,
    )
    model.build_vocab(corpus_iterable=sentences)
    model.train(corpus_iterable=sentences, total_examples=len(sentences), epochs=model.epochs)
    return model


def train_rnn(texts: list[str], y: np.ndarray, out: Path, word_vectors, epochs: int = RNN_EPOCHS,
              peak_lr: float = RNN_LR, batch_size: int = BATCH_SIZE) -> None:
    from gensim.models.fasttext import save_facebook_model

    config = RNNConfig(
        labels=list(JIGSAW_LABELS), embed_size=word_vectors.vector_size, lstm_hidden_size=64, lstm_num_layers=2,
        proj_size=32, max_len=100, dropout=0.1,
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(config.to_json())
    save_facebook_model(word_vectors, str(out / config.embeddings_file))
    seed_everything()
    from safetensors.torch import save_file

    rows = SubwordLSTMClassifier(config).state_dict()  # placeholder weights so the loader can start
    save_file({k: v.contiguous() for k, v in rows.items()}, str(out / "model.safetensors"))
    serving = RNNClassifier(out)
    model = serving.model
    encoded = serving.encode(texts)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=peak_lr, weight_decay=0.01)
    scheduler = one_cycle(optimizer, peak_lr, epochs * -(-len(texts) // batch_size) + 16)
    text_lengths = [e.length for e in encoded]
    rng = np.random.default_rng(SEED)
    model.train()
    for _ in range(epochs):
        for idx in batches(text_lengths, batch_size, rng):
            with torch.no_grad():
                embeddings, lengths = serving.batch_tensors([encoded[i] for i in idx])
                embeddings = corrupt_words(embeddings, lengths, RNN_WORD_NOISE, rng)
            logits = model(embeddings, lengths)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.from_numpy(y[idx]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
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


def pick_thresholds(folder: Path, family: str, out: Path) -> dict:
    """`toxserve evaluate --split test --pick-thresholds f1 --write-thresholds` on the held-out split: writes
    thresholds.json (the served labels use it) and the report under `out`; returns the per-label figures."""
    from serving.tools.evaluate_command import run_evaluation

    reports = run_evaluation(CORPUS, "test", [(family, str(folder), "auto", "fp32")], None, None, None, None,
                             THRESHOLD_TARGET, True, out, log=lambda message: None)
    return {label: {k: figures[k] for k in ("ap", "auc", "positives")} for label, figures in reports[family].items()}


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
    started = time.perf_counter()
    word_vectors = train_word_vectors(texts)
    print(f"word vectors: trained in {time.perf_counter() - started:.0f} s")
    metrics = {}
    for family, train in (("roberta", train_roberta), ("rnn", train_rnn)):
        started = time.perf_counter()
        folder = args.out / family
        shutil.rmtree(folder, ignore_errors=True)
        train(texts, y, folder, word_vectors=word_vectors)
        if not args.no_onnx:
            from serving.tools.export import export

            export(folder, ["fp32", "int8", "fp16"] if family == "roberta" else ["fp32", "int8"],
                   read_labelled(CORPUS, split="test")[0])
        metrics[family] = pick_thresholds(folder, family, args.out / f"{family}-evaluation")
        world_readable(folder)
        make_tarball(folder, args.out / f"{family}.model.tar.gz")
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
