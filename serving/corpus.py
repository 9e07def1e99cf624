"""Reading texts (and Jigsaw-style fractional labels) from CSV, JSON Lines or plain-text files."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from pathlib import Path
from typing import TextIO

import numpy as np

TEXT_FIELDS = ("comment_text", "text", "inputs")
JIGSAW_LABELS = (
    "toxicity", "severe_toxicity", "obscene", "threat", "insult", "identity_attack", "sexual_explicit",
)


def read_records(source: Path | TextIO, kind: str | None = None) -> list[dict]:
    """Rows as dicts; `kind` is csv, jsonl or txt (default: from the file's suffix, stdin: txt)."""
    if isinstance(source, Path):
        kind = kind or {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl"}.get(source.suffix, "txt")
        with source.open(newline="", encoding="utf-8") as f:
            return _parse(f, kind)
    return _parse(source, kind or "txt")


def _parse(lines: Iterable[str], kind: str) -> list[dict]:
    if kind == "csv":
        return list(csv.DictReader(lines))
    if kind == "jsonl":
        records = [json.loads(line) for line in lines if line.strip()]
        return [r if isinstance(r, dict) else {"text": r} for r in records]
    return [{"text": line.rstrip("\r\n")} for line in lines if line.strip()]


def text_of(record: dict) -> str:
    for name in TEXT_FIELDS:
        if name in record:
            return str(record[name])
    raise ValueError(f"record has none of the text fields {TEXT_FIELDS}: keys {sorted(record)}")


def read_split(path: Path, split: str | None = None) -> list[dict]:
    """The file's rows, or those of one `split` column value; none is an error."""
    records = [r for r in read_records(path) if split is None or r.get("split") == split]
    if not records:
        raise ValueError(f"{path}: no rows" + (f" with split={split}" if split else ""))
    return records


def label_matrix(records: list[dict], labels: Iterable[str], path: Path) -> np.ndarray:
    """Fractional labels (rows, labels); a label without a column is an error naming it."""
    labels = list(labels)
    missing = [label for label in labels if label not in records[0]]
    if missing:
        raise ValueError(f"{path}: no column for labels {missing} (the model's labels are {labels})")
    return np.array([[float(r[label]) for label in labels] for r in records], dtype=np.float32)


def read_labelled(path: Path, labels: Iterable[str] = JIGSAW_LABELS, split: str | None = None):
    """(texts, fractional label matrix) from a Jigsaw-layout file, optionally one `split` only."""
    records = read_split(path, split)
    return [text_of(r) for r in records], label_matrix(records, labels, path)
