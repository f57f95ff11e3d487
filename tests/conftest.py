"""Shared test setup. rxnsq's own fixtures (nsqd, nsq_cluster, ...) come from the installed
``rxnsq.testing.plugin`` entry point; pytester runs inner pytest sessions to test that plugin."""

pytest_plugins = ["pytester"]
