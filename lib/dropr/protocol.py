"""The wire: every word, route and header of dropr's HTTP protocol, in one place.

Documented for users in dropr.7 (WIRE PROTOCOL); server, transport and sender use
these names and spell none of them. Plain strings, not an Enum: they are compared
and written on the hot path, and this module must cost nothing to import.

  POST {url}v1/messages   multipart/form-data, one part per message, field "m",
                          filename = id, content = the outbox file (header + payload)
                          headers: X-Dropr-Origin, Authorization: Bearer TOKEN
                          200 {"results": [{"id", "status", "reason"}]}
                          status: stored | duplicate | retry | refused
  POST {url}v1/status     {"ids": [...], "prefixes": [...]} -> {"results": {id: {"state", "reason"}}}
                          (prefixes, optional: each id's "{p}{created:013x}", a lookup hint)
                          state: processed | dead | pending | unknown
  GET  {url}v1/health     {"ok": true, "node": NAME}
"""

from __future__ import annotations

# Routes, relative to a peer's base URL (which ends in "/").
MESSAGES = "v1/messages"
STATUS = "v1/status"
HEALTH = "v1/health"

# Headers. The WSGI environ spells a request header HTTP_<NAME>, upper case, "_" for "-".
ORIGIN_HEADER = "X-Dropr-Origin"
ORIGIN_ENVIRON = "HTTP_X_DROPR_ORIGIN"
AUTH_HEADER = "Authorization"
AUTH_ENVIRON = "HTTP_AUTHORIZATION"
BEARER = "Bearer"
PART_FIELD = "m"  # the multipart field name of every message part

# Per-message answers to an upload ("status" of each result).
STORED = "stored"  # durable in the inbox now
DUPLICATE = "duplicate"  # already received (any state): not stored twice
RETRY = "retry"  # not stored; try again later (the sender's own word for a temporary failure)
REFUSED = "refused"  # not stored, for good: the "reason" says why

# Answers to a status poll ("state" of each id).
PROCESSED = "processed"  # acked by a consumer
DEAD = "dead"  # given up at the receiver; "reason" says why
PENDING = "pending"  # stored, not yet processed
UNKNOWN = "unknown"  # never received, or purged after the receiver's retention

# JSON keys of the bodies.
RESULTS = "results"
IDS = "ids"
PREFIXES = "prefixes"
