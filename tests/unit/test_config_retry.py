"""``sync.retry_base_s`` and ``sync.retry_max_s``: the backoff after failed sync attempts."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.config import SyncConfig, load_config
from edge_agent.errors import ConfigError

BASE = "cluster_id: site-1\npaths: {initial_root: root.json, state_dir: state}\n"
SERVER = "server: 'https://mgmt.example.net'"


def load(tmp_path: Path, retry: str) -> SyncConfig:
    path = tmp_path / "config.yaml"
    path.write_text(BASE + f"sync: {{{SERVER}{retry}}}\n", encoding="utf-8")
    sync = load_config(path).sync
    assert sync is not None
    return sync


def refused(tmp_path: Path, retry: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, retry)
    message = str(caught.value)
    assert "\n" not in message and str(tmp_path / "config.yaml") in message
    return message


def test_defaults_are_five_seconds_and_five_minutes(tmp_path: Path) -> None:
    sync = load(tmp_path, "")
    assert (sync.retry_base_s, sync.retry_max_s) == (5.0, 300.0)
    assert SyncConfig(server="https://x.example").retry_base_s == 5.0


@pytest.mark.parametrize(
    ("retry", "expected"),
    [
        (", retry_base_s: 2, retry_max_s: 60", (2.0, 60.0)),
        (", retry_base_s: 0.5, retry_max_s: 1.5", (0.5, 1.5)),
        (", retry_base_s: 0.1, retry_max_s: 86400", (0.1, 86400.0)),  # both bounds
        (", retry_base_s: 30, retry_max_s: 30", (30.0, 30.0)),  # equal is fine
        (", retry_base_s: 1", (1.0, 300.0)),  # the other keeps its default
        (", retry_max_s: 600", (5.0, 600.0)),
    ],
)
def test_accepted_values(tmp_path: Path, retry: str, expected: tuple[float, float]) -> None:
    sync = load(tmp_path, retry)
    assert (sync.retry_base_s, sync.retry_max_s) == expected
    assert isinstance(sync.retry_base_s, float) and isinstance(sync.retry_max_s, float)


@pytest.mark.parametrize("key", ["retry_base_s", "retry_max_s"])
@pytest.mark.parametrize(
    "value", ["0.09", "0", "-5", "86400.5", "100000", "true", "'10'", ".nan", ".inf", "null", "[5]"]
)
def test_out_of_range_or_not_a_number_names_the_key(tmp_path: Path, key: str, value: str) -> None:
    # The other key is set so that only ``key`` can be at fault.
    other = "retry_max_s: 86400" if key == "retry_base_s" else "retry_base_s: 0.1"
    message = refused(tmp_path, f", {other}, {key}: {value}")
    assert f"sync.{key} must be a number of seconds in [0.1, 86400]" in message


def test_a_base_larger_than_the_max_is_refused(tmp_path: Path) -> None:
    message = refused(tmp_path, ", retry_base_s: 60, retry_max_s: 30")
    assert "sync.retry_base_s is larger than sync.retry_max_s" in message


def test_a_base_larger_than_the_default_max_is_refused(tmp_path: Path) -> None:
    message = refused(tmp_path, ", retry_base_s: 301")
    assert "sync.retry_base_s" in message and "sync.retry_max_s" in message


def test_a_max_smaller_than_the_default_base_is_refused(tmp_path: Path) -> None:
    message = refused(tmp_path, ", retry_max_s: 4")
    assert "sync.retry_base_s is larger than sync.retry_max_s" in message


def test_a_misspelt_retry_key_is_refused(tmp_path: Path) -> None:
    assert "unknown key sync.'retry_base'" in refused(tmp_path, ", retry_base: 5")
