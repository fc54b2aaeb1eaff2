"""Serving one slimmable model at whichever width the load allows: ``scalavit serve``.

``policy`` decides (width, batch size) from a latency profile and the earliest deadline's slack; ``batcher`` holds
the deadline-ordered queue and the model thread; ``runner`` is the model on its device; ``service`` is one request's
way through them; ``app`` and ``v2`` are the HTTP routes, ``server`` the HTTP server with its limits, ``metrics`` the
Prometheus metrics, and ``ray`` the Ray Serve deployment that scales the same app out.
"""
from .batcher import Answer, Batcher, BatchFailed, Missed, Refused
from .policy import Choice, Fixed, MaxAccuracy, Profile, SlackFit, parse_policy
