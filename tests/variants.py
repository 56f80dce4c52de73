"""Variants of the example profiles and sites, for tests of when a policy applies.

``profile_variant`` copies an example profile (``bundles/NAME``) with extra settings (and
optionally one artifact); ``berlin_site`` gives a test site the Europe/Berlin time zone and
a manifest-folder target in ``<site>/m``; ``daemon_site`` lays out a site for ``edge-agent
run`` (a drop folder, a manifest folder, no management server).
"""

from __future__ import annotations

import datetime as dt
import shutil
import zoneinfo
from pathlib import Path

import yaml

from edge_agent.clock import UTC
from edge_agent.config import load_config
from mgmt_stub.keys import KeyDirectory
from tests.conftest import PROFILES, Site

BERLIN = zoneinfo.ZoneInfo("Europe/Berlin")
WEDNESDAY_NOON = dt.datetime(2026, 11, 25, 12, 0, tzinfo=BERLIN).astimezone(UTC)


def profile_variant(
    tmp_path: Path, name: str, *, artifact: bytes | None = None, **settings: object
) -> Path:
    """A copy of an example profile with extra settings (and optionally one artifact)."""
    folder = tmp_path / f"profile-{name}-{len(list(tmp_path.glob('profile-*')))}"
    shutil.copytree(PROFILES / name, folder)
    spec = yaml.safe_load((folder / "profile.yaml").read_text())
    spec["settings"] = {**spec.get("settings", {}), **settings}
    if artifact is not None:
        (folder / "artifacts").mkdir(exist_ok=True)
        (folder / "artifacts" / "images.tar").write_bytes(artifact)
        spec["artifacts"] = [{"path": "artifacts/images.tar", "kind": "image-archive"}]
    (folder / "profile.yaml").write_text(yaml.safe_dump(spec))
    return folder


def berlin_site(site: Site) -> Site:
    """``site`` in Europe/Berlin time, enforcing onto the manifest folder ``<site>/m``."""
    site.config_path.write_text(
        site.config_path.read_text()
        + f"timezone: Europe/Berlin\ntarget: {{kind: manifest-dir, folder: {site.root / 'm'}}}\n"
    )
    (site.root / "m").mkdir()
    site.config = load_config(site.config_path)
    return site


def daemon_site(tmp_path: Path, keys: KeyDirectory, extra: str = "") -> tuple[Path, Path, Path]:
    """(config, drop folder, manifest folder) of a site with no management server."""
    site = tmp_path / "site"
    drop, manifests = tmp_path / "drop", tmp_path / "manifests"
    for folder in (site, drop, manifests):
        folder.mkdir()
    shutil.copy(keys.path / "roots" / "1.json", site / "root.json")
    config = site / "config.yaml"
    config.write_text(
        "cluster_id: site-1\n"
        "labels: {region: eu, tier: edge}\n"
        f"paths: {{state_dir: {site / 'state'}, initial_root: {site / 'root.json'}}}\n"
        f"drop_folders: ['{drop}']\n"
        f"target: {{kind: manifest-dir, folder: {manifests}}}\n" + extra,
        encoding="utf-8",
    )
    return config, drop, manifests
