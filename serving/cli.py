"""The `toxserve` command line: predict offline now; serve, export, deploy as they land."""

from __future__ import annotations

import csv
import dataclasses
import json
import sys
from pathlib import Path

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Serve RoBERTox and subword-LSTM toxicity classifiers (SageMaker container contract)."""


@main.command()
@click.option("--model-dir", envvar="SERVING_MODEL_DIR", help="model folder or model.tar.gz [default: "
              "/opt/ml/model if present, else the bundled demo model]")
@click.option("--input", "input_path", default="-", show_default=True,
              help="CSV (comment_text/text column), JSONL or plain lines; - for stdin")
@click.option("--output", "output_path", default="-", show_default=True, help="file or - for stdout")
@click.option("--format", "output_format", type=click.Choice(["jsonl", "csv"]),
              help="output format [default: from --output's suffix, else jsonl]")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1, 4096))
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N")
def predict(model_dir, input_path, output_path, output_format, batch_size, device) -> None:
    """Score texts offline with the same inference code the server uses."""
    from tqdm import tqdm

    from serving.artifacts import load_classifier
    from serving.corpus import read_records, text_of
    from serving.device import pick_device
    from serving.results import text_results

    records = read_records(sys.stdin) if input_path == "-" else read_records(Path(input_path))
    texts = [text_of(r) for r in records]
    classifier = load_classifier(model_dir, device=pick_device(device))
    encoded = classifier.encode(texts)
    progress = None if input_path == "-" else (lambda it: tqdm(it, desc="batches", unit="batch", file=sys.stderr))
    scores = classifier.predict_batches(encoded, batch_size, progress)
    results = text_results(classifier.labels, scores, [e.truncated for e in encoded])
    output_format = output_format or ("csv" if output_path.endswith(".csv") else "jsonl")
    with click.open_file(output_path, "w") as out:
        write_results(out, results, classifier.labels, output_format)


def write_results(out, results: list[dict], labels, output_format: str) -> None:
    if output_format == "jsonl":
        for result in results:
            out.write(json.dumps(result) + "\n")
        return
    writer = csv.writer(out)
    writer.writerow([*labels, "labels", "truncated"])
    for r in results:
        writer.writerow([*(r["scores"][label] for label in labels), ";".join(r["labels"]), r["truncated"]])


def settings_options(command):
    """One `--flag` per Settings field; unset flags fall back to the environment, then the default."""
    from serving.config import Settings

    for f in reversed(dataclasses.fields(Settings)):
        kind = {"int": int, "float": float}.get(str(f.type).split(" ")[0], str)
        flag = "--" + f.name.replace("_", "-")
        command = click.option(flag, f.name, type=kind, default=None,
                               help=f"{f.metadata.get('help', '')} [env SERVING_{f.name.upper()}; "
                                    f"default {f.default}]")(command)
    return command


@main.command()
@settings_options
def serve(**flags) -> None:
    """Start the SageMaker-compatible server (gunicorn + Flask) on the model folder."""
    from serving.config import Settings
    from serving.errors import ModelLoadError
    from serving.server import run

    try:
        settings = Settings.from_env(**flags)
        run(settings)
    except (ValueError, ModelLoadError) as exc:
        raise click.ClickException(str(exc)) from exc


def serve_entrypoint() -> None:
    """The `serve` executable SageMaker runs (`docker run IMAGE serve`): `toxserve serve` by another name."""
    args = sys.argv[1:]
    if args[:1] == ["serve"]:
        args = args[1:]
    serve.main(args=args, prog_name="serve")


if __name__ == "__main__":
    main()
