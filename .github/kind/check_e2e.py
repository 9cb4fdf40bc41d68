"""Check what the kind e2e job produced (chart.yml), beyond `launch submit --wait` succeeding.

    python .github/kind/check_e2e.py RESULT.json SPEC [--namespace NS] --mlflow URL --s3 URL

RESULT is what `launch submit -o json` printed. Checks: the result names a job of SPEC in the
namespace NS (default: `default`) and an MLflow run; that run is FINISHED on the MLflow server and
named after the job; the job's `_SUCCESS` marker in SPEC's output.uri (on the runner's moto S3,
read with boto3 and the AWS_* credentials of the environment) names the same run; and, when SPEC
has an `export` section that registers, the result names the registered model
(`models:/NAME@ALIAS`) and that alias resolves to a version in the server's model registry.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import boto3
import yaml


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def registry_problems(result: dict, spec: dict, mlflow: str) -> list[str]:
    export = spec.get("export")
    register = (export or {}).get("register", {})
    if export is None or register is None:
        return []
    uri = result.get("registered_model") or ""
    match = re.fullmatch(r"models:/([^@]+)@(.+)", uri)
    if not match:
        return [f"result.registered_model is {uri!r}: the export registered nothing (expected models:/NAME@ALIAS)"]
    name, alias = match.groups()
    query = urllib.parse.urlencode({"name": name, "alias": alias})
    try:
        version = get_json(f"{mlflow}/api/2.0/mlflow/registered-models/alias?{query}")["model_version"]
    except urllib.error.HTTPError as e:
        return [f"{uri}: the model registry has no such alias ({e.code})"]
    if version.get("status") != "READY":
        return [f"{uri}: version {version.get('version')} is {version.get('status')}, expected READY"]
    return []


def problems(result: dict, spec: dict, mlflow: str, s3: str, namespace: str = "default") -> list[str]:
    found = []
    name, run_id = result.get("name") or "", result.get("mlflow_run_id")
    if not name.startswith(f"{spec['name']}-"):
        found.append(f"result.name {name!r} is not a submission of {spec['name']!r}")
    if result.get("namespace") != namespace:
        found.append(f"result.namespace {result.get('namespace')!r}, expected {namespace!r}")
    if not run_id:
        return [*found, "result.mlflow_run_id is empty: the job reported no MLflow run"]
    run = get_json(f"{mlflow}/api/2.0/mlflow/runs/get?run_id={urllib.parse.quote(run_id)}")["run"]
    if run["info"]["status"] != "FINISHED":
        found.append(f"MLflow run {run_id} is {run['info']['status']}, expected FINISHED")
    if run["info"].get("run_name") != name:
        found.append(f"MLflow run {run_id} is named {run['info'].get('run_name')!r}, expected the job name {name!r}")
    bucket, _, prefix = spec["output"]["uri"].removeprefix("s3://").partition("/")
    key = f"{prefix.rstrip('/')}/_SUCCESS".lstrip("/")
    body = boto3.client("s3", endpoint_url=s3).get_object(Bucket=bucket, Key=key)["Body"].read()
    marker = json.loads(body)
    if marker.get("run_id") != run_id:
        found.append(f"s3://{bucket}/{key} names run {marker.get('run_id')!r}, the result {run_id!r}")
    return found + registry_problems(result, spec, mlflow)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("result", type=Path)
    ap.add_argument("spec", type=Path)
    ap.add_argument("--namespace", default="default", help="the namespace the job was submitted to")
    ap.add_argument("--mlflow", required=True, help="MLflow server URL as the runner reaches it")
    ap.add_argument("--s3", required=True, help="moto S3 URL as the runner reaches it")
    args = ap.parse_args()
    result = json.loads(args.result.read_text(encoding="utf-8"))
    spec = yaml.safe_load(args.spec.read_text(encoding="utf-8"))
    found = problems(result, spec, args.mlflow.rstrip("/"), args.s3.rstrip("/"), args.namespace)
    for p in found:
        print(f"error: {p}", file=sys.stderr)
    if not found:
        registered = f", registered {result['registered_model']}" if result.get("registered_model") else ""
        print(f"ok: job {result['name']}, MLflow run {result['mlflow_run_id']} FINISHED, _SUCCESS in "
              f"{spec['output']['uri']}{registered}")
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
