"""Numbers a manifest may hold: what Kubernetes and JSON can represent, nothing more."""

from __future__ import annotations

import pytest

from edge_agent.bundle.manifests import YamlLimits, load_manifests
from edge_agent.errors import BundleError, BundleErrorCode

HEAD = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: n}\n"


@pytest.mark.parametrize(
    "value",
    [
        "0x" + "f" * 40,
        "0b" + "1" * 80,
        "0" + "7" * 40,
        "1:2:3:4:5:6:7:8:9:10:11:12:13:14",
        ".inf",
        "-.inf",
        ".nan",
    ],
)
def test_out_of_range_numbers_are_refused(value: str) -> None:
    with pytest.raises(BundleError) as caught:
        load_manifests(f"{HEAD}n: {value}\n".encode(), path="m.yaml", limits=YamlLimits())
    assert caught.value.code is BundleErrorCode.YAML_INVALID


@pytest.mark.parametrize(
    "value", ["9223372036854775807", "-9223372036854775808", "0x7f", "1.5e3", "0.0"]
)
def test_numbers_kubernetes_can_hold_are_kept(value: str) -> None:
    (obj,) = load_manifests(f"{HEAD}n: {value}\n".encode(), path="m.yaml", limits=YamlLimits())
    assert "n" in obj
