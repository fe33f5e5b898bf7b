"""For the Prefect end-to-end tests: the plugin's entry point.

The plugin is found through its `prefect.plugins` entry point. So that these tests do
not depend on how the package was installed, they put a minimal distribution
(METADATA + entry_points.txt) on the PYTHONPATH of the processes they start.
"""

from __future__ import annotations

from pathlib import Path

Series = tuple[str, frozenset[tuple[str, str]]]
"""(service.instance.id, data point attributes)."""


def plugin_distribution(directory: Path) -> Path:
    """A directory to put on PYTHONPATH that registers the plugin's entry point."""
    info = directory / "otel_agents_prefect_plugin-0.0.0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: otel-agents-prefect-plugin\nVersion: 0.0.0\n"
    )
    (info / "entry_points.txt").write_text(
        "[prefect.plugins]\notel_agents = otel_agents.prefect.plugin\n"
    )
    return directory
