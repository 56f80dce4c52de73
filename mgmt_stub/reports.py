"""Moved to ``edge_agent.report`` (agents write reports, the stub reads them)."""

from edge_agent.report import (  # noqa: F401
    STATUS_REPORT_PAYLOAD_TYPE,
    ReportError,
    public_key_raw,
    report_cluster,
    sign_report,
    verify_report,
)
