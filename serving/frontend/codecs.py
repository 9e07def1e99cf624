"""Media types <-> texts and results: a decoder per Content-Type and an encoder per Accept, as tables."""

from __future__ import annotations

import csv
import functools
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field

from sagemaker_inference import content_types
from werkzeug.datastructures import MIMEAccept
from werkzeug.http import parse_accept_header, parse_options_header

from serving.errors import BadRequest, NotAcceptable, UnprocessableInput, UnsupportedMediaType
from serving.results import dumps

JSON = content_types.JSON
JSONLINES = "application/jsonlines"
CSV = content_types.CSV
TEXT = "text/plain"
TEXT_KEYS = ("inputs", "text", "comment_text")
# Charsets a body may name: any Python codec would do otherwise, some of them quadratic in pure Python (punycode).
CHARSETS = {"utf-8": "utf-8", "utf8": "utf-8", "utf-16": "utf-16", "utf-16le": "utf-16-le", "utf-16be": "utf-16-be",
            "iso-8859-1": "latin-1", "latin-1": "latin-1", "latin1": "latin-1", "us-ascii": "ascii", "ascii": "ascii"}


@dataclass(frozen=True)
class DecodedRequest:
    """The texts of one request and its JSON `parameters` (empty for other media types)."""

    texts: list[str]
    parameters: dict = field(default_factory=dict)
    single: bool = False  # a bare string was sent: Hugging Face's schema answers it without a list


def decode(body: bytes, content_type: str | None) -> DecodedRequest:
    """Bytes + Content-Type -> texts; 415 for unknown types, 422 for bad UTF-8, 400 for wrong shapes."""
    media_type, options = parse_options_header(content_type or JSON)
    decoder = DECODERS.get(media_type.lower())
    if decoder is None:
        raise UnsupportedMediaType(
            f"Content-Type {media_type!r} is not supported; use one of {', '.join(DECODERS)}"
        )
    charset = options.get("charset", "utf-8")
    codec = CHARSETS.get(charset.strip().lower())
    if codec is None:
        raise UnsupportedMediaType(f"charset {charset!r} is not supported; use one of {', '.join(sorted(CHARSETS))}")
    try:
        text = body.decode(codec)
    except (UnicodeDecodeError, LookupError) as exc:
        raise UnprocessableInput(f"request body is not valid {charset}: {exc}") from exc
    request = decoder(text)
    if not request.texts:
        raise BadRequest("no texts in the request")
    empty = [i for i, t in enumerate(request.texts) if not t.strip()]
    if empty:
        raise BadRequest(f"text {empty[0]} is empty ({len(empty)} empty texts in the request)")
    return request


def _load_json(text: str, where: str = "request body"):
    try:
        return json.loads(text)
    except ValueError as exc:
        raise BadRequest(f"{where} is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise BadRequest(f"{where} nests JSON too deeply") from exc


def _text_from(value, where: str) -> str:
    if isinstance(value, dict):
        key = next((k for k in TEXT_KEYS if k in value), None)
        if key is None:
            raise BadRequest(f"{where}: an object needs one of the keys {TEXT_KEYS}")
        value = value[key]
    if not isinstance(value, str):
        raise BadRequest(f"{where}: expected a string, got {type(value).__name__}")
    return value


def _texts_from(value, where: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise BadRequest(f"{where}: expected a string or a list of strings, got {type(value).__name__}")
    return [_text_from(item, f"{where}[{i}]") for i, item in enumerate(value)]


def decode_json(text: str) -> DecodedRequest:
    payload = _load_json(text)
    if isinstance(payload, dict):
        if "inputs" in payload:
            parameters = payload.get("parameters", {})
            if parameters is None:
                parameters = {}
            if not isinstance(parameters, dict):
                raise BadRequest("`parameters` must be an object")
            texts = _texts_from(payload["inputs"], "inputs")
            return DecodedRequest(texts, parameters, single=isinstance(payload["inputs"], str))
        if "instances" in payload:
            return DecodedRequest(_texts_from(payload["instances"], "instances"))
        raise BadRequest("a JSON object needs `inputs` or `instances`")
    return DecodedRequest(_texts_from(payload, "body"), single=isinstance(payload, str))


def decode_jsonlines(text: str) -> DecodedRequest:
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    texts = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            raise BadRequest(f"line {number} is empty; every line must hold one record")
        texts.append(_text_from(_load_json(line, f"line {number}"), f"line {number}"))
    return DecodedRequest(texts)


def decode_csv(text: str) -> DecodedRequest:
    try:
        rows = list(csv.reader(io.StringIO(text, newline=""), strict=True))
    except csv.Error as exc:
        raise BadRequest(f"malformed CSV: {exc}") from exc
    texts = []
    for number, row in enumerate(rows, start=1):
        if len(row) != 1:
            raise BadRequest(f"CSV row {number} has {len(row)} columns; send one text per row (quote commas)")
        texts.append(row[0])
    return DecodedRequest(texts)


def decode_text(text: str) -> DecodedRequest:
    return DecodedRequest([text] if text.strip() else [], single=True)


DECODERS: dict[str, Callable[[str], DecodedRequest]] = {
    JSON: decode_json,
    JSONLINES: decode_jsonlines,
    "application/x-jsonlines": decode_jsonlines,
    "application/jsonl": decode_jsonlines,
    CSV: decode_csv,
    TEXT: decode_text,
}


@functools.lru_cache(maxsize=256)  # clients send the same few headers, and parsing one costs as much as decoding a body
def choose_accept(accept_header: str | None, default: str = JSON) -> str:
    """The response media type for an Accept header; 406 when none of ours is acceptable."""
    if not accept_header or not accept_header.strip():
        return default
    accepted = parse_accept_header(accept_header, MIMEAccept)
    if accepted.best in ("*/*", None) and accepted.quality(default):
        return default
    match = accepted.best_match(list(ENCODERS))
    if match is None:
        raise NotAcceptable(f"cannot answer with {accept_header!r}; use one of {', '.join(ENCODERS)}")
    return match


def encode_json(results: list[dict], labels: list[str]) -> bytes:
    truncated = sum(r["truncated"] for r in results)
    return dumps({"predictions": results, "truncated_texts": truncated})


def encode_jsonlines(results: list[dict], labels: list[str]) -> bytes:
    return b"".join(dumps(r) + b"\n" for r in results)


def encode_csv(results: list[dict], labels: list[str]) -> bytes:
    """One row per text, no header: each label's score in model order (float32's shortest form), then matched labels
    joined by ';', then 1 if the text was truncated."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for r in results:
        writer.writerow([*(r["scores"][label] for label in labels), ";".join(r["labels"]), int(r["truncated"])])
    return out.getvalue().encode()


ENCODERS: dict[str, Callable[[list[dict], list[str]], bytes]] = {
    JSON: encode_json,
    JSONLINES: encode_jsonlines,
    CSV: encode_csv,
}


def huggingface_output(results: list[dict], single: bool, top_k: int | None, all_scores: bool) -> list:
    """What the SageMaker Hugging Face text-classification container returns for the same request.

    Default: one {"label", "score"} (the top label) per text; `top_k` or `return_all_scores`
    give each text a list of them, best first.
    """
    answers: list = []
    for r in results:
        ranked = sorted(r["scores"].items(), key=lambda kv: kv[1], reverse=True)
        pairs = [{"label": label, "score": score} for label, score in ranked]
        if all_scores or top_k is not None:
            answers.append(pairs if all_scores else pairs[:top_k])
        else:
            answers.append(pairs[0])
    if single and isinstance(answers[0], list):
        return answers[0]  # the pipeline does not nest a single text's ranked list
    return answers
