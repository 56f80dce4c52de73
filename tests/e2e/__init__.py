"""End-to-end tests against a real cluster; opt-in through ``EDGE_AGENT_E2E_KUBECONFIG``."""
