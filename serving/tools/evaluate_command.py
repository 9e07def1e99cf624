"""`toxserve evaluate`: score a labelled file with model folders or a live endpoint, then report and pick thresholds."""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from serving.corpus import label_matrix, read_split, text_of
from serving.service import THRESHOLDS_FILE, read_thresholds
from serving.tools import eval_report
from serving.tools.evaluation import POSITIVE_AT, evaluate_scores, pick_threshold


def _progress(iterable):
    from tqdm import tqdm

    return tqdm(iterable, desc="scoring", unit="batch", file=sys.stderr)


def score_sources(data: Path, split: str | None, models, endpoint_url, endpoint_name, region, runtime_url):
    """{name: (labels, y, scores, model_dir or None)} for every model folder and endpoint asked for."""
    from serving.artifacts import load_classifier, resolve_model_dir
    from serving.client import EndpointScorer

    records = read_split(data, split)
    texts = [text_of(r) for r in records]
    sources: dict[str, tuple[list[str], np.ndarray, np.ndarray, Path | None]] = {}
    for name, folder, backend, variant in models:
        model_dir = resolve_model_dir(folder)
        classifier = load_classifier(model_dir, backend=backend, variant=variant)
        labels = list(classifier.labels)
        y = label_matrix(records, labels, data)
        scores = classifier.predict_batches(classifier.encode(texts), 32, _progress)
        sources[name] = (labels, y, scores, model_dir)
    if endpoint_url or endpoint_name:
        scorer = EndpointScorer(url=endpoint_url, endpoint_name=endpoint_name, region=region,
                                endpoint_url=runtime_url)
        scores = scorer.predict(texts, _progress)
        sources[endpoint_name or "endpoint"] = (scorer.labels, label_matrix(records, scorer.labels, data), scores, None)
    if not sources:
        raise ValueError("nothing to evaluate: give --model and/or --endpoint-url / --endpoint-name")
    return sources


def run_evaluation(data: Path, split: str | None, models, endpoint_url, endpoint_name, region, runtime_url,
                   target: str | None, write_thresholds: bool, out_dir: Path,
                   log: Callable[[str], None] = print) -> dict:
    started = time.perf_counter()
    # thresholds.json names the data by file name and digest, not path: the folder ships to other machines, and
    # the digest (of the file as read now, streamed) still says which file and version they were picked on.
    digest = ""
    if write_thresholds:
        with data.open("rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()[:16]
    sources = score_sources(data, split, models, endpoint_url, endpoint_name, region, runtime_url)
    out_dir.mkdir(parents=True, exist_ok=True)
    reports, figures, picked = {}, {}, {}
    for name, (labels, y, scores, model_dir) in sources.items():
        thresholds = read_thresholds(model_dir, labels)
        if target:
            thresholds = {label: pick_threshold(y[:, j] >= POSITIVE_AT, scores[:, j], target)
                          for j, label in enumerate(labels)}
            picked[name] = (thresholds, model_dir)
        reports[name] = evaluate_scores(labels, y, scores, thresholds)
        figures[name] = eval_report.plot(out_dir, name, labels, y, scores)
    labels = sources[next(iter(sources))][0]
    conditions = {"data": str(data), "split": split or "all rows", "texts": len(sources[next(iter(sources))][1]),
                  "positive": f"label >= {POSITIVE_AT}", "thresholds": target or "from thresholds.json, else 0.5",
                  "seconds": round(time.perf_counter() - started, 1)}
    eval_report.write(out_dir, reports, labels, conditions, figures)
    if write_thresholds:
        _write_thresholds(picked, target, data, digest, split, log)
    for name, report in reports.items():
        log(f"{name}: toxicity AP {report[labels[0]]['ap']:.3f}, AUC {report[labels[0]]['auc']:.3f}; "
            f"warnings: {sum(len(r['warnings']) for r in report.values())}")
    log(f"wrote {out_dir / 'report.md'}, report.json and {sum(len(f) for f in figures.values())} plots")
    return reports


def _write_thresholds(picked: dict, target: str | None, data: Path, digest: str, split: str | None, log) -> None:
    folders = [(name, t, d) for name, (t, d) in picked.items() if d is not None]
    if not target or not folders:
        raise ValueError("--write-thresholds needs --pick-thresholds and a --model folder")
    name, thresholds, model_dir = folders[0]
    document = {"thresholds": thresholds, "target": target,
                "picked_on": f"{data.name} sha256:{digest} ({split or 'all rows'})", "model": name}
    (model_dir / THRESHOLDS_FILE).write_text(json.dumps(document, indent=2))
    log(f"wrote {model_dir / THRESHOLDS_FILE}")
