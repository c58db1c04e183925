"""The project's helm is a release build, and the README's Helm command renders with it.

`scripts/container-engine.sh helm` builds helm with `go install`; without the ldflags of
helm's own Makefile such a build reports a truncated version and defaults to Kubernetes 1.20,
below the chart's `kubeVersion`, so the README's command failed ("chart requires kubeVersion
>=1.25.0-0 which is incompatible with Kubernetes v1.20.0"). Here the README's `helm install`
command, read from the README itself, is rendered with `helm template` and exactly its flags,
with no `--kube-version`.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.containers.conftest import ROOT, SCRIPT, SETUP_TIMEOUT_S

pytestmark = [pytest.mark.containers, pytest.mark.timeout(SETUP_TIMEOUT_S + 120)]


def readme_helm_installs() -> list[list[str]]:
    """The README's `helm install ...` commands (continuation lines joined), as argv."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = [
        shlex.split(line, comments=True)
        for block in re.findall(r"^```sh\n(.*?)^```", readme, flags=re.MULTILINE | re.DOTALL)
        for line in block.replace("\\\n", " ").splitlines()
        if line.lstrip().startswith("helm install ")
    ]
    assert commands, "the README has no `helm install` command"
    return commands


def script_helm_version() -> str:
    """HELM_VERSION of scripts/container-engine.sh: the helm the project builds."""
    match = re.search(r"^HELM_VERSION=(v\d+\.\d+\.\d+)$", SCRIPT.read_text(), re.MULTILINE)
    assert match, "no HELM_VERSION=vX.Y.Z in the script"
    return match[1]


@pytest.mark.parametrize("index", range(len(readme_helm_installs())))
def test_readme_helm_command_renders_with_the_projects_helm(helm: str, index: int) -> None:
    argv = readme_helm_installs()[index]
    assert argv[:2] == ["helm", "install"], argv
    flags = argv[2:]
    assert "--kube-version" not in flags
    result = subprocess.run(
        [helm, "template", *flags],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    objects: list[dict[str, Any]] = [d for d in yaml.safe_load_all(result.stdout) if d]
    # The flags took effect: the image repository and a Secret of the user's, where set.
    sets = dict(f.split("=", 1) for f in flags if "=" in f and not f.startswith("-"))
    assert sets, f"no --set flags in {argv}"
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    if "image.repository" in sets:
        assert container["image"].startswith(f"{sets['image.repository']}:"), container["image"]
    if "secrets.existingSecret" in sets:
        assert not [o for o in objects if o["kind"] == "Secret"], "the user's Secret is named"


def test_projects_helm_reports_its_release_version_and_kubernetes(
    helm: str, tmp_path: Path
) -> None:
    version = subprocess.run(
        [helm, "version", "--template", "{{.Version}}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert version.stdout == script_helm_version()
    # The default Kubernetes version is the one helm was built against (not 1.20), within the
    # chart's kubeVersion range.
    (tmp_path / "templates").mkdir()
    (tmp_path / "Chart.yaml").write_text("apiVersion: v2\nname: probe\nversion: 0.1.0\n")
    (tmp_path / "templates" / "kube.yaml").write_text(
        "kube: '{{ .Capabilities.KubeVersion.Version }}'\n"
    )
    rendered = subprocess.run(
        [helm, "template", "probe", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    kube = re.fullmatch(r"v(\d+)\.(\d+)\.0", yaml.safe_load(rendered.stdout)["kube"])
    assert kube, rendered.stdout
    chart = yaml.safe_load((ROOT / "deploy/helm/signal-worker/Chart.yaml").read_text())
    floor = re.match(r">=\s*(\d+)\.(\d+)", chart["kubeVersion"])
    assert floor, chart["kubeVersion"]
    assert (int(kube[1]), int(kube[2])) >= (int(floor[1]), int(floor[2])), kube[0]
