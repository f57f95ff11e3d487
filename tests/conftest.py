"""Shared test setup. rxnsq's own fixtures (nsqd, nsq_cluster, ...) come from the installed
``rxnsq.testing.plugin`` entry point; pytester runs inner pytest sessions to test that plugin.

Hypothesis runs a bounded budget by default (CI); ``HYPOTHESIS_PROFILE=long`` (see
``scripts/fuzz``) runs the same properties far longer."""

import os

from hypothesis import settings

pytest_plugins = ["pytester"]

settings.register_profile("ci", deadline=None, max_examples=300)
settings.register_profile("long", deadline=None, max_examples=50_000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
