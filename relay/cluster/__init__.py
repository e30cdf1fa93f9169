"""A team relay: several relay processes on one Redis that behave as one (``team-relay.md``).

Imported only when ``redis_url`` is set; it needs the ``redis`` extra.
"""

from .link import ClusterLink
from .source import ClusterSource

__all__ = ["ClusterLink", "ClusterSource"]
