"""Serving one slimmable model at whichever width the load allows: ``scalavit serve``.

``policy`` decides (width, batch size) from a latency profile and the earliest deadline's slack; ``batcher`` holds
the deadline-ordered queue and the model thread; ``runner`` is the model on its device; ``app`` is the HTTP layer.
"""
from .batcher import Answer, Batcher, BatchFailed, Missed, Refused
from .policy import Choice, Fixed, MaxAccuracy, Profile, SlackFit, parse_policy
