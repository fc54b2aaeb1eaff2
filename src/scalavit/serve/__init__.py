"""Serving one slimmable model at whichever width the load allows: ``scalavit serve``.

``policy`` decides (width, batch size) from a latency profile and the earliest deadline's slack; ``queue`` holds
the requests in deadline order, ``estimators`` what the server learns as it runs (the offered rate, the machine's
speed against the profile), ``planner`` the next batch, and ``batcher`` admission and the model thread;
``simulator`` runs the same batcher on a simulated clock; ``runner`` is the model on its device; ``service`` is one request's
way through them; ``app`` and ``v2`` are the HTTP routes, ``server`` the HTTP server with its limits, ``metrics`` the
Prometheus metrics, and ``ray`` the Ray Serve deployment that scales the same app out.
"""
from .batcher import Answer, Batcher, BatchFailed, Missed, Refused
from .policy import Choice, Fixed, MaxAccuracy, Profile, SlackFit, parse_policy
