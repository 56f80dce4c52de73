"""ManagementService in-process with an injected clock: expiry-driven behaviour."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from mgmt_stub.keys import KeyDirectory
from mgmt_stub.rollout import IMMEDIATE, Selector
from mgmt_stub.service import BUNDLE_DAYS, RENEW_DAYS, ManagementService, Problem
from tests.conftest import NOW, PROFILES, FakeClock
from tests.stub_process import profile_body


@pytest.fixture
def service(tmp_path: Path) -> ManagementService:
    KeyDirectory(tmp_path / "keys").init(now=NOW - dt.timedelta(days=1), expires_days=365)
    clock = FakeClock()
    svc = ManagementService(tmp_path / "data", tmp_path / "keys", clock=clock)
    svc.put_profile("ops", "hello-web", profile_body(PROFILES / "hello-web"))
    svc.put_assignment(
        "ops",
        "eu",
        profile="hello-web",
        selector=Selector(labels={"region": "eu"}),
        priority=0,
        strategy=IMMEDIATE,
    )
    yield svc
    svc.close()


def test_stable_bundles_are_renewed_before_they_expire(service: ManagementService) -> None:
    clock = service.clock
    assert isinstance(clock, FakeClock)
    service.register_cluster("ops", "site-1", {"region": "eu"}, None)
    assert service.renew_bundles() == []
    clock.advance(days=BUNDLE_DAYS - RENEW_DAYS - 1)
    assert service.renew_bundles() == []
    clock.advance(days=2)
    assert service.renew_bundles() == [2]
    assert service.cluster("site-1")["desired"] == 2
    bundle = service.bundles()[-1]
    assert bundle["profile_version"] == 1 and "renewal of revision 1" in bundle["reason"]
    assert service.renew_bundles() == []  # the new one has its full validity


def test_expired_bootstrap_token_is_refused(service: ManagementService) -> None:
    clock = service.clock
    assert isinstance(clock, FakeClock)
    token, _ = service.create_token(
        "ops", ttl_s=3600, uses=5, cluster_id=None, labels={}, description=""
    )
    clock.advance(seconds=3599)
    service.enroll(token, "site-a", {}, None)
    clock.advance(seconds=2)
    with pytest.raises(Problem) as caught:
        service.enroll(token, "site-b", {}, None)
    assert caught.value.status == 401 and caught.value.kind == "token-expired"
