"""Write the GitHub job summary of a `launch submit -o json` result (train.yml, chart.yml).

    python .github/scripts/job_summary.py RESULT.json

Appends a table (job, namespace, status, MLflow run, registered model) to $GITHUB_STEP_SUMMARY,
one per job for a matrix spec (whose result is a list of those objects).
An empty or missing RESULT means `launch submit` stopped before it printed one (its own step
failed and says why): the summary says so and this step succeeds. A RESULT that is not the
`launch submit -o json` object fails, naming what is wrong. Standard library only.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

KEYS = ("name", "namespace", "status", "mlflow_run_id", "registered_model")


def cell(value: Any) -> str:
    if value is None or value == "":
        return "—"
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return "`" + text.replace("|", "\\|").replace("`", "'") + "`"


def markdown(result: dict[str, Any]) -> str:
    rows = [("Job", result["name"]), ("Namespace", result["namespace"]), ("Status", result["status"]),
            ("MLflow run", result["mlflow_run_id"]), ("Registered model", result["registered_model"])]
    lines = ["### kubetune job", "", "| | |", "| --- | --- |", *(f"| {k} | {cell(v)} |" for k, v in rows)]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: job_summary.py RESULT.json", file=sys.stderr)
        return 2
    target = os.environ.get("GITHUB_STEP_SUMMARY")
    if not target:
        print("error: GITHUB_STEP_SUMMARY is not set (GitHub Actions sets it for every step)", file=sys.stderr)
        return 2
    path = Path(argv[1])
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    if not text.strip():
        summary = ("### kubetune job\n\n`launch submit` printed no result: it stopped before creating or "
                   "following the job. Its step's log says why.\n")
        code = 0
    else:
        try:
            result = json.loads(text)
        except json.JSONDecodeError as e:
            print(f"error: {path} is not the JSON `launch submit -o json` prints ({e})", file=sys.stderr)
            return 1
        results = result if isinstance(result, list) else [result]  # a matrix spec: one object per job
        for one in results:
            missing = [k for k in KEYS if not isinstance(one, dict) or k not in one]
            if missing:
                print(f"error: {path}: the `launch submit -o json` result lacks {', '.join(missing)}", file=sys.stderr)
                return 1
        summary, code = "".join(markdown(one) for one in results), 0
    with open(target, "a", encoding="utf-8") as f:
        f.write(summary)
    print(summary, end="")
    return code


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
