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
  GET  {url}v1/health     {"ok": true, "node": NAME}   (HEAD too; and GET {url} itself)

Networks of hosts (dropr.7, RELAYS and FETCH); a server of an earlier release answers
these routes 404, so nothing meant for a relay lands in its inbox:
  POST {url}v1/relay          as v1/messages, with X-Dropr-To: DESTINATION; the relay
                              keeps each message in its outbox for DESTINATION
  POST {url}v1/relay/status   as v1/status, with X-Dropr-To: the relay's outbox state
  POST {url}v1/fetch          the client's own held messages (see FETCH below)
A status poll may carry "origins": each id's first origin ("" for the client itself),
as long as "ids"; a relay asks its destination so about what it relayed.

Operations (dropr-serve.8, METRICS), for a Prometheus scraper, not for peers:
  GET  {url}metrics       the Prometheus text format (HEAD too); loopback clients, or
                          Authorization: Bearer TOKEN from serve.metrics_tokens
"""

from __future__ import annotations

# Routes, relative to a peer's base URL (which ends in "/").
MESSAGES = "v1/messages"
STATUS = "v1/status"
HEALTH = "v1/health"
RELAY = "v1/relay"
RELAY_STATUS = "v1/relay/status"
FETCH = "v1/fetch"

# Headers. The WSGI environ spells a request header HTTP_<NAME>, upper case, "_" for "-".
ORIGIN_HEADER = "X-Dropr-Origin"
ORIGIN_ENVIRON = "HTTP_X_DROPR_ORIGIN"
TO_HEADER = "X-Dropr-To"  # the destination of a relayed upload or status poll
TO_ENVIRON = "HTTP_X_DROPR_TO"
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
ORIGINS = "origins"  # of a status poll, optional: each id's first origin, "" for the client
ID = "id"  # of each upload result
STATUS_KEY = "status"  # of each upload result: one of the four answers above
STATE = "state"  # of each polled id: one of the four states above
REASON = "reason"  # why refused, or dead; optional
ERROR = "error"  # the body of every answer but 200: {"error": REASON}
OK = "ok"  # health: {"ok": true, "node": NAME}
NODE = "node"

# Methods, content types and the HTTP headers dropr sets.
GET = "GET"
HEAD = "HEAD"
POST = "POST"
JSON = "application/json"  # status polls and every answer
FORM_DATA = "multipart/form-data"  # uploads; the boundary is a parameter
PART_TYPE = "application/octet-stream"  # each message part of an upload
PART_DISPOSITION = "Content-Disposition"  # of each part: form-data; name="m"; filename=ID
CONTENT_TYPE = "Content-Type"
CONTENT_LENGTH = "Content-Length"
EXPECT = "Expect"  # sent empty by the sender: no 100-continue round trip before a body
RETRY_AFTER = "Retry-After"
RETRY_AFTER_SECONDS = "5"  # sent with every 503 (low on disk, I/O error): try again then
ALLOW = "Allow"  # sent with every 405: the route's methods, "GET, HEAD" (RFC 9110 15.5.6)
WWW_AUTHENTICATE = "WWW-Authenticate"  # sent with every 401: the scheme to use (RFC 6750 3)
INVALID_TOKEN = f'{BEARER} error="invalid_token"'  # its value when a bearer token was not known

# The receiver's answers to a whole request (HTTP status lines). Only 200 carries
# per-message results; every other answer stores nothing and says why in "error".
HTTP_OK = "200 OK"
HTTP_BAD_REQUEST = "400 Bad Request"  # malformed: the same request will fail again
HTTP_UNAUTHORIZED = "401 Unauthorized"  # unknown or missing bearer token
HTTP_FORBIDDEN = "403 Forbidden"  # a token delivering as another node
HTTP_NOT_FOUND = "404 Not Found"  # no such route
HTTP_NOT_ALLOWED = "405 Method Not Allowed"  # a route, not with this method
HTTP_TIMEOUT = "408 Request Timeout"  # the body stalled
HTTP_TOO_LARGE = "413 Content Too Large"  # too many parts, or a status poll too large
HTTP_INTERNAL = "500 Internal Server Error"  # a bug in the receiver, logged there
HTTP_UNAVAILABLE = "503 Service Unavailable"  # low on disk or an I/O error: retry later

# Operations: GET /metrics, the Prometheus text format (its content type is prometheus_client's).
METRICS = "metrics"
# A request with any of these headers came through a proxy: its loopback address is the proxy's.
PROXY_ENVIRON = ("HTTP_FORWARDED", "HTTP_X_FORWARDED_FOR", "HTTP_X_REAL_IP")

# Fetch (dropr.7, FETCH): a host nobody can reach fetches what a holder keeps for it.
#   POST {url}v1/fetch  JSON {"wait": S, "max": N, "max_bytes": B, ["after": NAME,]
#                       "results": [{"name", "status", "reason"}], "receipts": [{"name",
#                       "state", "reason"}]} -> 200 multipart/form-data: first a part named
#                       "fetch" (JSON {"node", "more", ["last",] "ask": [{"name", "origin"}]}),
#                       then one part "m"
#                       per message, filename = the holder's outbox name, content = the
#                       outbox file as it is (header + payload)
FETCH_PART = "fetch"  # the field name of an answer's first part, its JSON control
WAIT = "wait"  # seconds the holder may hold a fetch while it has nothing (0 to FETCH_WAIT_MAX)
MAX = "max"  # most messages in the answer
MAX_BYTES = "max_bytes"  # most payload bytes in the answer (one larger message still goes alone)
AFTER = "after"  # optional: only names that sort after this one (a second fetch in flight)
LAST = "last"  # of an answer's control part: the last name it carries (absent if none)
RECEIPTS = "receipts"  # the fetcher's receipt states for the names the last answer asked about
NAME = "name"  # a message as the holder knows it: its outbox name "{p}{arrival:013x},{id}"
MORE = "more"  # the holder has more messages than this answer carries
ASK = "ask"  # the sent messages whose receipts the holder wants: {"name", "origin"}
ORIGIN = "origin"  # of each asked name: its first origin, "" for the holder itself
FETCH_WAIT_MAX = 30  # seconds: the longest a holder holds a fetch
