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
@click.option("--backend", type=click.Choice(["auto", "torch", "onnx"]), default="auto", show_default=True,
              help="auto: ONNX Runtime fp32 on CPU when the folder has a current export, else torch (as `serve`)")
@click.option("--variant", type=click.Choice(["fp32", "fp16", "int8"]), default="fp32", show_default=True,
              help="ONNX variant, with --backend onnx")
def predict(model_dir, input_path, output_path, output_format, batch_size, device, backend, variant) -> None:
    """Score texts offline with the same inference code the server uses."""
    from tqdm import tqdm

    from serving.artifacts import load_classifier
    from serving.corpus import read_records, text_of
    from serving.engine.device import pick_device
    from serving.results import text_results

    records = read_records(sys.stdin) if input_path == "-" else read_records(Path(input_path))
    texts = [text_of(r) for r in records]
    import torch

    classifier = load_classifier(model_dir, device=pick_device(device), backend=backend, variant=variant,
                                 threads=torch.get_num_threads())
    encoded = classifier.encode(texts)
    progress = None if input_path == "-" else (lambda it: tqdm(it, desc="batches", unit="batch", file=sys.stderr))
    scores = classifier.predict_batches(encoded, batch_size, progress)
    results = text_results(classifier.labels, scores, [e.truncated for e in encoded])
    output_format = output_format or ("csv" if output_path.endswith(".csv") else "jsonl")
    with click.open_file(output_path, "w") as out:
        write_results(out, results, classifier.labels, output_format)


@main.command("export")
@click.option("--model-dir", envvar="SERVING_MODEL_DIR", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--variants", default="fp32,int8", show_default=True, help="comma-separated: fp32, int8, fp16")
@click.option("--texts", "texts_path", type=click.Path(exists=True, dir_okay=False),
              help="texts for the parity check [default: the demo corpus's held-out split]")
@click.option("--force", is_flag=True, help="write variants that miss the parity tolerance too")
def export_command(model_dir, variants, texts_path, force) -> None:
    """Export a model folder to ONNX (onnx/model.<variant>.onnx), checking each variant against torch."""
    from serving.corpus import read_records, text_of
    from serving.tools.export import TOLERANCES, export

    chosen = [v.strip() for v in variants.split(",") if v.strip()]
    unknown = set(chosen) - set(TOLERANCES)
    if unknown:
        raise click.BadParameter(f"unknown variants {sorted(unknown)}", param_hint="--variants")
    texts = [text_of(r) for r in read_records(Path(texts_path))] if texts_path else default_parity_texts()
    results = export(Path(model_dir), chosen, texts, force=force, log=lambda m: click.echo(m, err=True))
    if not all(r.passed for r in results) and not force:
        raise click.ClickException("some variants missed the parity tolerance and were not written")


def default_parity_texts() -> list[str]:
    from serving.corpus import read_labelled

    corpus = Path(__file__).resolve().parent.parent / "model_artifacts" / "data" / "comments.csv"
    if corpus.exists():
        return read_labelled(corpus, split="test")[0]
    return ["you are an idiot", "thanks for the great write up", "i will find where you live", "nice photo"]


def parse_model_spec(spec: str) -> tuple[str, str, str, str]:
    """'[NAME=]DIR[,backend=onnx][,variant=int8]' -> (name, dir, backend, variant); the backend defaults to
    auto, as in `serve`, so thresholds picked here are picked on the scores the server will return."""
    head, *options = spec.split(",")
    name, _, folder = head.rpartition("=")
    settings = dict(option.split("=", 1) for option in options if "=" in option)
    backend, variant = settings.get("backend", "auto"), settings.get("variant", "fp32")
    default_name = Path(folder).name + ("" if backend in ("auto", "torch") else f"-{backend}-{variant}")
    return name or default_name, folder, backend, variant


@main.command()
@click.option("--data", "data_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="labelled texts: Jigsaw CSV layout (comment_text + fractional label columns) or JSONL")
@click.option("--split", help="keep only rows whose `split` column has this value (e.g. test)")
@click.option("--model", "models", multiple=True,
              help="[NAME=]DIR[,backend=onnx][,variant=int8]; repeat to compare models side by side")
@click.option("--endpoint-url", help="a running server, e.g. http://127.0.0.1:8080")
@click.option("--endpoint-name", help="a SageMaker endpoint (boto3 sagemaker-runtime)")
@click.option("--region", help="AWS region for --endpoint-name")
@click.option("--runtime-url", help="override the sagemaker-runtime URL (local tests)", hidden=True)
@click.option("--pick-thresholds", "target", help="pick per-label thresholds: min_recall=R, max_fpr=F or f1")
@click.option("--write-thresholds", is_flag=True, help="write the picked thresholds to the first model's "
              "folder as thresholds.json (the server applies them)")
@click.option("--out", "out_dir", default="evaluation", show_default=True, type=click.Path(file_okay=False))
def evaluate(data_path, split, models, endpoint_url, endpoint_name, region, runtime_url, target, write_thresholds,
             out_dir) -> None:
    """Per-label AP/AUC, score distributions, confusion at thresholds, warnings; Markdown + JSON + PNG."""
    from serving.tools.evaluate_command import run_evaluation

    try:
        run_evaluation(Path(data_path), split, [parse_model_spec(m) for m in models], endpoint_url, endpoint_name,
                       region, runtime_url, target, write_thresholds, Path(out_dir), log=lambda m: click.echo(m))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc


@main.command()
@click.option("--name", required=True, help="model, endpoint config and endpoint name")
@click.option("--image", "image_uri", required=True, help="ECR image URI (docker/build_push.sh prints it)")
@click.option("--role", "role_arn", required=True, help="SageMaker execution role ARN")
@click.option("--model-data", required=True, help="s3://.../model.tar.gz, or a local one to upload to --bucket; "
              "with --multi-model the s3://BUCKET/PREFIX/ holding one .tar.gz per model")
@click.option("--multi-model", is_flag=True, help="a multi-model endpoint: clients name the archive under "
              "--model-data with TargetModel, SageMaker loads it on first use")
@click.option("--bucket", help="S3 bucket for a local --model-data")
@click.option("--instance-type", help="e.g. ml.g5.xlarge [default: the load-test report's recommendation]")
@click.option("--instance-count", type=int, help="initial instances [default: the report's, else 1]")
@click.option("--from-report", type=click.Path(exists=True, dir_okay=False),
              help="loadtest runner report.json: instance type, count and measured capacity")
@click.option("--capacity-rps", type=float, help="measured req/s per instance within the latency target "
              "(turns on autoscaling)")
@click.option("--utilisation", type=float, default=0.7, show_default=True, help="autoscaling target share")
@click.option("--max-instances", type=int, default=4, show_default=True)
@click.option("--env", "env_pairs", multiple=True, help="container environment KEY=VALUE (e.g. SERVING_BACKEND=onnx)")
@click.option("--region")
@click.option("--dry-run", is_flag=True, help="print every API call instead of making it")
@click.option("--no-wait", is_flag=True, help="return without waiting for InService")
def deploy(name, image_uri, role_arn, model_data, multi_model, bucket, instance_type, instance_count, from_report,
           capacity_rps, utilisation, max_instances, env_pairs, region, dry_run, no_wait) -> None:
    """Create a SageMaker model, endpoint config and endpoint (and autoscaling from measured capacity)."""
    from serving.tools.deploy import AwsCalls, Deployment
    from serving.tools.deploy import deploy as run_deploy

    chosen = json.loads(Path(from_report).read_text()).get("recommendation") or {} if from_report else {}
    instance_type = instance_type or chosen.get("instance_type")
    if not instance_type:
        raise click.UsageError("give --instance-type, or --from-report with a recommendation")
    deployment = Deployment(
        name=name, image_uri=image_uri, role_arn=role_arn, model_data=model_data, bucket=bucket,
        instance_type=instance_type, instance_count=instance_count or chosen.get("count", 1),
        env=dict(pair.split("=", 1) for pair in env_pairs), capacity_rps=capacity_rps or chosen.get("capacity_rps"),
        utilisation=utilisation, max_instances=max_instances, multi_model=multi_model,
    )
    try:
        run_deploy(deployment, AwsCalls(region=region, dry_run=dry_run, log=click.echo), wait=not no_wait)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc


@main.command()
@click.option("--name", required=True)
@click.option("--bucket", help="also delete s3://BUCKET/NAME/model.tar.gz that deploy uploaded")
@click.option("--region")
@click.option("--dry-run", is_flag=True)
def undeploy(name, bucket, region, dry_run) -> None:
    """Remove the endpoint, its config, model, autoscaling (and uploaded archive) that deploy made."""
    from serving.tools.deploy import AwsCalls
    from serving.tools.deploy import undeploy as run_undeploy

    run_undeploy(name, AwsCalls(region=region, dry_run=dry_run, log=click.echo), bucket)


@main.command()
@click.option("--job", required=True, help="transform job name")
@click.option("--model-name", required=True, help="a model created by deploy")
@click.option("--input", "input_s3", required=True, help="s3:// prefix of JSON Lines files")
@click.option("--output", "output_s3", required=True, help="s3:// prefix for the results")
@click.option("--instance-type", required=True)
@click.option("--instance-count", type=int, default=1, show_default=True)
@click.option("--max-payload-mb", type=click.IntRange(1, 100), default=6, show_default=True,
              help="mini-batch size; the container's body limit is set to match")
@click.option("--invocation-timeout-s", type=click.IntRange(6, 3600), default=600, show_default=True,
              help="per mini-batch; the container's deadline is set 5 s shorter")
@click.option("--region")
@click.option("--dry-run", is_flag=True)
def transform(job, model_name, input_s3, output_s3, instance_type, instance_count, max_payload_mb,
              invocation_timeout_s, region, dry_run) -> None:
    """Batch transform over JSON Lines (a record per line in, a result per line out)."""
    from serving.tools.deploy import AwsCalls
    from serving.tools.deploy import transform as run_transform

    run_transform(AwsCalls(region=region, dry_run=dry_run, log=click.echo), job, model_name, input_s3, output_s3,
                  instance_type, instance_count, max_payload_mb, invocation_timeout_s)


def write_results(out, results: list[dict], labels, output_format: str) -> None:
    from serving.results import dumps

    if output_format == "jsonl":
        for result in results:
            out.write(dumps(result).decode() + "\n")
        return
    writer = csv.writer(out)
    writer.writerow([*labels, "labels", "truncated"])
    for r in results:
        writer.writerow([*(r["scores"][label] for label in labels), ";".join(r["labels"]), r["truncated"]])


def settings_options(command):
    """One `--flag` per Settings field; unset flags fall back to the environment, then the default."""
    from serving.config import Settings

    for f in reversed(dataclasses.fields(Settings)):
        kind = {"int": int, "float": float, "bool": click.BOOL}.get(str(f.type).split(" ")[0], str)
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
