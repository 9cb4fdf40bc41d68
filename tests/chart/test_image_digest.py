"""Images pinned by digest: `image.digest` / `export.image.digest` make every container of the
chart run `repository:tag@digest` (what a release's packaged chart sets, docs/images.md); a digest
that is not `sha256:<64 hex>` is refused by values.schema.json."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.chart.scenarios import CHART, all_containers, pod_templates, render, render_error, values_file

pytestmark = pytest.mark.usefixtures("helm_binary")

APP_VERSION = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
TRAINER = "sha256:" + "0123456789abcdef" * 4
EXPORT = "sha256:" + "fedcba9876543210" * 4


def images(scenario: str, *extra: Path) -> dict[str, set[str]]:
    """Pod component (training, export) -> the images its containers (init containers too) run."""
    out: dict[str, set[str]] = {}
    for _, template in pod_templates(render(scenario, *extra)):
        component = template["metadata"]["labels"]["app.kubernetes.io/component"]
        out.setdefault(component, set()).update(c["image"] for c in all_containers(template["spec"]))
    return out


@pytest.mark.parametrize("scenario", ["cpu", "jobset"])  # a plain Indexed Job, a JobSet; both with the preflight
def test_digests_pin_every_container(scenario: str, tmp_path: Path) -> None:
    pinned = values_file(tmp_path, {"image": {"digest": TRAINER},
                                    "export": {"enabled": True, "image": {"digest": EXPORT}}})
    assert images(scenario, pinned) == {"training": {f"ghcr.io/kubetune/trainer:{APP_VERSION}@{TRAINER}"},
                                        "export": {f"ghcr.io/kubetune/export:{APP_VERSION}@{EXPORT}"}}
    training = [c["name"] for _, t in pod_templates(render(scenario, pinned)) for c in all_containers(t["spec"])
                if t["metadata"]["labels"]["app.kubernetes.io/component"] == "training"]
    assert {"preflight", "trainer"} <= set(training)


def test_without_a_digest_the_tag_alone(tmp_path: Path) -> None:
    export = values_file(tmp_path, {"export": {"enabled": True}})
    assert images("cpu", export) == {"training": {f"ghcr.io/kubetune/trainer:{APP_VERSION}"},
                                     "export": {f"ghcr.io/kubetune/export:{APP_VERSION}"}}
    own = values_file(tmp_path, {"image": {"repository": "registry.example.com/ml/trainer", "tag": "0.1.0-cuda13.0",
                                           "digest": TRAINER}}, name="own.yaml")
    assert images("cpu", own)["training"] == {f"registry.example.com/ml/trainer:0.1.0-cuda13.0@{TRAINER}"}


@pytest.mark.parametrize("digest", ["sha256:abc", "sha512:" + "a" * 64, "sha256:" + "A" * 64, "latest",
                                    TRAINER + "\n", "@" + TRAINER])
@pytest.mark.parametrize("where", ["image", "export.image"])
def test_a_bad_digest_is_refused_by_the_schema(digest: str, where: str, tmp_path: Path) -> None:
    values: dict = {"digest": digest}
    for key in reversed(where.split(".")):
        values = {key: values}
    message = render_error("cpu", values_file(tmp_path, values))
    assert f"at '/{where.replace('.', '/')}/digest'" in message and "does not match pattern" in message, message
