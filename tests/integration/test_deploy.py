"""deploy / undeploy / transform against moto: the parameters each API call received, and nothing left behind."""
# moto validates instance types against an older list than SageMaker's, hence g4dn and c5 below.

from __future__ import annotations

import json
import re

import boto3
import pytest
from click.testing import CliRunner
from moto import mock_aws

from serving.cli import main
from serving.tools.deploy import GPU_AMI, AwsCalls, Deployment, deploy, invocations_target, undeploy

REGION = "us-east-1"
ROLE = "arn:aws:iam::123456789012:role/sagemaker"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/toxicity-serving:abc-gpu"


@pytest.fixture
def aws(monkeypatch):
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": REGION}.items():
        monkeypatch.setenv(key, value)
    with mock_aws():
        boto3.client("s3", region_name=REGION).create_bucket(Bucket="models")
        yield


def test_deploy_creates_everything_with_the_right_parameters(aws, demo_dir):
    calls = AwsCalls(region=REGION, log=lambda m: None)
    deployment = Deployment(name="tox", image_uri=IMAGE, role_arn=ROLE, bucket="models",
                            model_data=str(demo_dir / "rnn.model.tar.gz"), instance_type="ml.g4dn.xlarge",
                            instance_count=2, env={"SERVING_BACKEND": "onnx"}, capacity_rps=50, max_instances=6)
    deploy(deployment, calls, poll_s=0)
    sm = boto3.client("sagemaker", region_name=REGION)
    model = sm.describe_model(ModelName="tox")
    assert model["PrimaryContainer"]["ModelDataUrl"] == "s3://models/tox/model.tar.gz"
    assert model["PrimaryContainer"]["Environment"] == {"SERVING_BACKEND": "onnx"}
    body = boto3.client("s3", region_name=REGION).get_object(Bucket="models", Key="tox/model.tar.gz")["Body"].read()
    assert body == (demo_dir / "rnn.model.tar.gz").read_bytes()
    (variant,) = [params for service, op, params in calls.made if op == "create_endpoint_config"][0][
        "ProductionVariants"]
    assert variant["InstanceType"] == "ml.g4dn.xlarge" and variant["InitialInstanceCount"] == 2
    assert variant["InferenceAmiVersion"] == GPU_AMI
    assert variant["ContainerStartupHealthCheckTimeoutInSeconds"] == 600
    assert variant["ModelDataDownloadTimeoutInSeconds"] == 600
    assert sm.describe_endpoint(EndpointName="tox")["EndpointStatus"] == "InService"
    scaling = boto3.client("application-autoscaling", region_name=REGION)
    (target,) = scaling.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"]
    assert (target["MinCapacity"], target["MaxCapacity"]) == (2, 6)
    (policy,) = scaling.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"]
    config = policy["TargetTrackingScalingPolicyConfiguration"]
    assert config["TargetValue"] == invocations_target(50, 0.7) == 2100.0
    assert config["PredefinedMetricSpecification"]["PredefinedMetricType"] == "SageMakerVariantInvocationsPerInstance"

    undeploy("tox", AwsCalls(region=REGION, log=lambda m: None), bucket="models")
    assert sm.list_endpoints()["Endpoints"] == [] and sm.list_endpoint_configs()["EndpointConfigs"] == []
    assert sm.list_models()["Models"] == []
    assert scaling.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"] == []
    assert boto3.client("s3", region_name=REGION).list_objects_v2(Bucket="models").get("KeyCount", 0) == 0


def test_cpu_instances_get_no_gpu_ami_and_dry_run_makes_nothing(aws):
    result = CliRunner().invoke(main, ["deploy", "--name", "cpu", "--image", IMAGE, "--role", ROLE, "--model-data",
                                       "s3://models/x/model.tar.gz", "--instance-type", "ml.c7g.large", "--dry-run",
                                       "--region", REGION])
    assert result.exit_code == 0, result.output
    assert "sagemaker.create_endpoint_config" in result.output and "InferenceAmiVersion" not in result.output
    assert boto3.client("sagemaker", region_name=REGION).list_models()["Models"] == []


def test_deploy_takes_the_load_test_recommendation(aws, tmp_path):
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"recommendation": {"instance_type": "ml.g5.2xlarge", "count": 3,
                                                     "capacity_rps": 120.0}}))
    result = CliRunner().invoke(main, ["deploy", "--name", "rec", "--image", IMAGE, "--role", ROLE, "--model-data",
                                       "s3://models/x/model.tar.gz", "--from-report", str(report), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert '"InstanceType": "ml.g5.2xlarge"' in result.output and '"InitialInstanceCount": 3' in result.output
    assert '"TargetValue": 5040.0' in result.output  # 120 req/s x 60 x 0.7


def test_transform_job_uses_json_lines(aws):
    calls = AwsCalls(region=REGION, log=lambda m: None)
    boto3.client("sagemaker", region_name=REGION).create_model(
        ModelName="tox", ExecutionRoleArn=ROLE, PrimaryContainer={"Image": IMAGE})
    from serving.tools.deploy import transform

    transform(calls, "job1", "tox", "s3://models/in/", "s3://models/out/", "ml.c5.xlarge")
    job = boto3.client("sagemaker", region_name=REGION).describe_transform_job(TransformJobName="job1")
    assert job["TransformInput"]["ContentType"] == "application/jsonlines"
    assert job["TransformInput"]["SplitType"] == "Line"
    assert job["TransformOutput"]["AssembleWith"] == "Line" and job["BatchStrategy"] == "MultiRecord"
    assert job["MaxPayloadInMB"] == 6 and job["ModelClientConfig"]["InvocationsTimeoutInSeconds"] == 600
    assert job["Environment"] == {"SAGEMAKER_MAX_PAYLOAD_IN_MB": "6", "SAGEMAKER_MODEL_SERVER_TIMEOUT": "595"}


def test_multi_model_deploy_points_the_model_at_an_s3_prefix(aws):
    calls = AwsCalls(region=REGION, log=lambda m: None)
    deployment = Deployment(name="mme", image_uri=IMAGE, role_arn=ROLE, model_data="s3://models/tox-models",
                            instance_type="ml.g4dn.xlarge", env={"SERVING_BACKEND": "onnx"}, capacity_rps=50,
                            multi_model=True)
    deploy(deployment, calls, poll_s=0)
    (params,) = [params for service, op, params in calls.made if op == "create_model"]
    assert params["PrimaryContainer"] == {
        "Image": IMAGE, "Mode": "MultiModel", "ModelDataUrl": "s3://models/tox-models/",
        "Environment": {"SERVING_BACKEND": "onnx", "SAGEMAKER_MULTI_MODEL": "true"}}
    assert [op for service, op, params in calls.made if service == "s3"] == []  # nothing uploaded
    assert deployment.env == {"SERVING_BACKEND": "onnx"}  # the caller's dict is left alone
    sm = boto3.client("sagemaker", region_name=REGION)
    assert sm.describe_model(ModelName="mme")["PrimaryContainer"]["Mode"] == "MultiModel"
    (variant,) = [params for service, op, params in calls.made if op == "create_endpoint_config"][0][
        "ProductionVariants"]
    assert variant["InferenceAmiVersion"] == GPU_AMI and variant["ModelName"] == "mme"
    assert sm.describe_endpoint(EndpointName="mme")["EndpointStatus"] == "InService"
    scaling = boto3.client("application-autoscaling", region_name=REGION)
    assert len(scaling.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"]) == 1
    undeploy("mme", AwsCalls(region=REGION, log=lambda m: None))
    assert sm.list_models()["Models"] == [] and sm.list_endpoints()["Endpoints"] == []


@pytest.mark.parametrize("model_data, bucket, message", [
    ("model_artifacts/demo", None, "needs --model-data s3://BUCKET/PREFIX/"),
    ("s3://", None, "needs --model-data s3://BUCKET/PREFIX/"),
    ("s3://models/tox-models/", "models", "--bucket uploads a single local model.tar.gz"),
])
def test_multi_model_refuses_what_is_not_an_s3_prefix_before_any_call(aws, model_data, bucket, message):
    calls = AwsCalls(region=REGION, log=lambda m: None)
    deployment = Deployment(name="mme", image_uri=IMAGE, role_arn=ROLE, model_data=model_data, bucket=bucket,
                            instance_type="ml.c5.xlarge", multi_model=True)
    with pytest.raises(ValueError, match=re.escape(message)):
        deploy(deployment, calls)
    assert calls.made == []


def test_multi_model_flag_through_the_cli(aws):
    base = ["deploy", "--name", "mme", "--image", IMAGE, "--role", ROLE, "--instance-type", "ml.c7g.large",
            "--multi-model", "--dry-run", "--region", REGION]
    result = CliRunner().invoke(main, [*base, "--model-data", "s3://models/tox-models/", "--env", "A=b"])
    assert result.exit_code == 0, result.output
    (line,) = [line for line in result.output.splitlines() if line.startswith("sagemaker.create_model(")]
    container = json.loads(line.removeprefix("sagemaker.create_model(").removesuffix(")"))["PrimaryContainer"]
    assert container["Mode"] == "MultiModel" and container["ModelDataUrl"] == "s3://models/tox-models/"
    assert container["Environment"] == {"A": "b", "SAGEMAKER_MULTI_MODEL": "true"}
    assert "sagemaker.create_endpoint(" in result.output
    refused = CliRunner().invoke(main, [*base, "--model-data", "/tmp/models"])
    assert refused.exit_code == 1 and "Error: --multi-model needs --model-data s3://" in refused.output
    assert "Traceback" not in refused.output and "sagemaker." not in refused.output
