"""Deploy to SageMaker with boto3: S3 upload, model, endpoint config, endpoint, autoscaling; undeploy; transform.

A multi-model endpoint (MME) is the same deployment with a model in `Mode: MultiModel` whose ModelDataUrl is
the S3 prefix holding one .tar.gz per model; SageMaker fetches an archive on the first request naming it.

Every AWS call goes through `AwsCalls`, which records it (and with dry_run only prints it), so what a
deployment does is visible and testable. Autoscaling tracks SageMakerVariantInvocationsPerInstance
(invocations per instance per minute) with target = measured capacity (req/s) x 60 x utilisation.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DIMENSION = "sagemaker:variant:DesiredInstanceCount"
GPU_AMI = "al2-ami-sagemaker-inference-gpu-3-1"  # driver 550 / CUDA 12.4, what docker/Dockerfile needs
GPU_FAMILIES = ("ml.g4dn", "ml.g5", "ml.g6", "ml.p3", "ml.p4d", "ml.p5")


@dataclass
class AwsCalls:
    """boto3 calls, recorded; with `dry_run` printed instead of made."""

    region: str | None = None
    dry_run: bool = False
    log: Callable[[str], None] = print
    made: list[tuple[str, str, dict]] = field(default_factory=list)
    _clients: dict = field(default_factory=dict)

    def client(self, service: str):
        if service not in self._clients:
            import boto3

            self._clients[service] = boto3.client(service, region_name=self.region)
        return self._clients[service]

    def __call__(self, service: str, operation: str, **params) -> dict:
        self.made.append((service, operation, params))
        shown = {k: v for k, v in params.items() if k != "Body"}
        self.log(f"{service}.{operation}({json.dumps(shown, default=str)})")
        if self.dry_run:
            return {}
        return getattr(self.client(service), operation)(**params)


@dataclass(frozen=True)
class Deployment:
    name: str
    image_uri: str
    role_arn: str
    model_data: str  # s3:// URL or a local model.tar.gz to upload; with multi_model an s3:// prefix
    instance_type: str
    instance_count: int = 1
    bucket: str | None = None
    env: dict = field(default_factory=dict)
    capacity_rps: float | None = None
    utilisation: float = 0.7
    max_instances: int = 4
    startup_timeout_s: int = 600
    download_timeout_s: int = 600
    multi_model: bool = False


def invocations_target(capacity_rps: float, utilisation: float) -> float:
    """Target for SageMakerVariantInvocationsPerInstance: per-instance invocations per minute at `utilisation`."""
    return round(capacity_rps * 60 * utilisation, 1)


def upload(aws: AwsCalls, model_data: str, bucket: str | None, name: str) -> str:
    if model_data.startswith("s3://"):
        return model_data
    if not bucket:
        raise ValueError("a local model.tar.gz needs --bucket to upload it to")
    key = f"{name}/model.tar.gz"
    aws("s3", "put_object", Bucket=bucket, Key=key, Body=Path(model_data).read_bytes())
    return f"s3://{bucket}/{key}"


def multi_model_prefix(model_data: str, bucket: str | None) -> str:
    """The S3 prefix an MME loads its archives from; SageMaker joins it with TargetModel, hence the '/'.

    Local folders are refused rather than uploaded: the archives' names are the TargetModel values clients
    send, so putting them in S3 is left to the operator (`aws s3 sync`), not guessed here."""
    if bucket:
        raise ValueError("--bucket uploads a single local model.tar.gz; --multi-model takes an s3:// prefix "
                         "that already holds the archives")
    if not model_data.startswith("s3://") or not model_data.removeprefix("s3://").split("/", 1)[0]:
        raise ValueError(f"--multi-model needs --model-data s3://BUCKET/PREFIX/ holding one .tar.gz per model, "
                         f"not {model_data!r}: upload the archives first (aws s3 sync DIR s3://BUCKET/PREFIX/)")
    return model_data if model_data.endswith("/") else model_data + "/"


def deploy(d: Deployment, aws: AwsCalls, wait: bool = True, poll_s: float = 15) -> dict:
    container: dict[str, Any]
    if d.multi_model:
        model_url = multi_model_prefix(d.model_data, d.bucket)
        container = {"Image": d.image_uri, "Mode": "MultiModel", "ModelDataUrl": model_url,
                     "Environment": {**d.env, "SAGEMAKER_MULTI_MODEL": "true"}}
    else:
        model_url = upload(aws, d.model_data, d.bucket, d.name)
        container = {"Image": d.image_uri, "ModelDataUrl": model_url, "Environment": d.env}
    aws("sagemaker", "create_model", ModelName=d.name, ExecutionRoleArn=d.role_arn, PrimaryContainer=container)
    variant: dict[str, Any] = {
        "VariantName": "AllTraffic", "ModelName": d.name, "InstanceType": d.instance_type,
        "InitialInstanceCount": d.instance_count,
        "ContainerStartupHealthCheckTimeoutInSeconds": d.startup_timeout_s,
        "ModelDataDownloadTimeoutInSeconds": d.download_timeout_s,
    }
    if d.instance_type.startswith(GPU_FAMILIES):
        variant["InferenceAmiVersion"] = GPU_AMI
    aws("sagemaker", "create_endpoint_config", EndpointConfigName=d.name, ProductionVariants=[variant])
    aws("sagemaker", "create_endpoint", EndpointName=d.name, EndpointConfigName=d.name)
    if wait and not aws.dry_run:
        wait_in_service(aws, d.name, poll_s)
    if d.capacity_rps:
        autoscale(aws, d)
    return {"endpoint": d.name, "model_data": model_url, "variant": variant}


def wait_in_service(aws: AwsCalls, name: str, poll_s: float, timeout_s: float = 3600) -> None:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        status = aws.client("sagemaker").describe_endpoint(EndpointName=name)
        aws.log(f"{name}: {status['EndpointStatus']} after {time.monotonic() - started:.0f} s")
        if status["EndpointStatus"] == "InService":
            return
        if status["EndpointStatus"] == "Failed":
            raise RuntimeError(f"{name} failed: {status.get('FailureReason', 'no reason given')}")
        time.sleep(poll_s)
    raise TimeoutError(f"{name} not InService after {timeout_s:.0f} s")


def autoscale(aws: AwsCalls, d: Deployment) -> None:
    resource = f"endpoint/{d.name}/variant/AllTraffic"
    aws("application-autoscaling", "register_scalable_target", ServiceNamespace="sagemaker", ResourceId=resource,
        ScalableDimension=DIMENSION, MinCapacity=d.instance_count,
        MaxCapacity=max(d.max_instances, d.instance_count))
    aws("application-autoscaling", "put_scaling_policy", PolicyName=f"{d.name}-invocations",
        ServiceNamespace="sagemaker", ResourceId=resource, ScalableDimension=DIMENSION,
        PolicyType="TargetTrackingScaling", TargetTrackingScalingPolicyConfiguration={
            "TargetValue": invocations_target(d.capacity_rps or 0, d.utilisation),
            "PredefinedMetricSpecification": {"PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"},
            "ScaleInCooldown": 300, "ScaleOutCooldown": 60})


def undeploy(name: str, aws: AwsCalls, bucket: str | None = None) -> None:
    """Remove what deploy made: scaling, endpoint, endpoint config, model (and the uploaded archive)."""
    resource = f"endpoint/{name}/variant/AllTraffic"
    targets = {} if aws.dry_run else aws.client("application-autoscaling").describe_scalable_targets(
        ServiceNamespace="sagemaker", ResourceIds=[resource])
    if aws.dry_run or targets.get("ScalableTargets"):
        aws("application-autoscaling", "delete_scaling_policy", PolicyName=f"{name}-invocations",
            ServiceNamespace="sagemaker", ResourceId=resource, ScalableDimension=DIMENSION)
        aws("application-autoscaling", "deregister_scalable_target", ServiceNamespace="sagemaker", ResourceId=resource,
            ScalableDimension=DIMENSION)
    aws("sagemaker", "delete_endpoint", EndpointName=name)
    aws("sagemaker", "delete_endpoint_config", EndpointConfigName=name)
    aws("sagemaker", "delete_model", ModelName=name)
    if bucket:
        aws("s3", "delete_object", Bucket=bucket, Key=f"{name}/model.tar.gz")


def transform(aws: AwsCalls, job: str, model_name: str, input_s3: str, output_s3: str, instance_type: str,
              instance_count: int = 1, max_payload_mb: int = 6, invocation_timeout_s: int = 600) -> None:
    """A batch transform job over JSON Lines: one record per line in, one result per line out.

    Mini-batches of up to `max_payload_mb`, each answered within `invocation_timeout_s` (SageMaker's default,
    up to 3600): the container's own limits are set to match (its deadline 5 s shorter, so a slow mini-batch
    gets our 504 rather than SageMaker's cut). Concurrency comes from the container's /execution-parameters."""
    environment = {"SAGEMAKER_MAX_PAYLOAD_IN_MB": str(max_payload_mb),
                   "SAGEMAKER_MODEL_SERVER_TIMEOUT": str(max(1, invocation_timeout_s - 5))}
    aws("sagemaker", "create_transform_job", TransformJobName=job, ModelName=model_name,
        BatchStrategy="MultiRecord", MaxPayloadInMB=max_payload_mb, Environment=environment,
        ModelClientConfig={"InvocationsTimeoutInSeconds": invocation_timeout_s, "InvocationsMaxRetries": 1},
        TransformInput={"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": input_s3}},
                        "ContentType": "application/jsonlines", "SplitType": "Line"},
        TransformOutput={"S3OutputPath": output_s3, "Accept": "application/jsonlines", "AssembleWith": "Line"},
        TransformResources={"InstanceType": instance_type, "InstanceCount": instance_count})
