"""dropr.7's WIRE PROTOCOL is enough on its own: a message built with printf and
delivered with curl, from the page's own Example, is stored by a real dropr-serve.

The shell run here is not written in this file: it is read from the Example
subsection of man/dropr.7 (every .EX block there is shell), so the page and the
test cannot drift apart. Where mandoc is installed, every line is also checked
against the page as a reader sees it, so what the test runs is what a reader
copies. Only the first line's variables (the receiver's URL, the id) are set
to this test's values.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import zlib
from pathlib import Path
from typing import Any

import pytest
from dropr.message import HEADER_SIZE, Header
from helpers import Node, Nodes

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "man" / "dropr.7"
PAYLOAD = b"hello, world\n"  # what the Example's printf writes
TOKEN = "tok-of-web1"
NOTHING_READY = 1

pytestmark = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("sh", "curl", "gzip", "od", "awk")),
    reason="needs sh, curl, gzip, od and awk (make sysdeps installs curl)",
)

# -- the page's Example, as shell -----------------------------------------------------------------

_ESCAPES = {"\\(aq": "'", "\\(dq": '"', "\\-": "-", "\\&": "", "\\e": "\\"}
_ESCAPE = re.compile(r"\\\(aq|\\\(dq|\\-|\\&|\\e")


def unroff(line: str) -> str:
    """Return an .EX line as a reader sees it: the escapes the Example uses undone, no others."""
    rest = _ESCAPE.sub("", line)
    assert "\\" not in rest, f"dropr.7 Example: an escape this test does not know: {line!r}"
    # groff may show a bare - as a hyphen and ' as a curly quote: not what a shell wants
    assert not set("-'`") & set(rest), f"dropr.7 Example: write \\- and \\(aq, not - or ': {line!r}"
    return _ESCAPE.sub(lambda m: _ESCAPES[m.group(0)], line)


def subsection(page: str, section: str, sub: str) -> list[str]:
    """Return the source lines of one .SS of one .SH of a man page."""
    lines = page.splitlines()
    start = lines.index(f".SH {section}") + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith(".SH ")), len(lines))
    body = lines[start:end]
    first = body.index(f".SS {sub}") + 1
    last = next((i for i in range(first, len(body)) if body[i].startswith((".SS ", ".SH "))), len(body))
    return body[first:last]


def example_blocks() -> list[str]:
    """Return the .EX blocks of WIRE PROTOCOL's Example, as shell text."""
    blocks: list[str] = []
    current: list[str] | None = None
    for line in subsection(PAGE.read_text(encoding="utf-8"), "WIRE PROTOCOL", "Example"):
        if line == ".EX":
            current = []
        elif line == ".EE":
            assert current is not None
            blocks.append("\n".join(current) + "\n")
            current = None
        elif current is not None:
            current.append(unroff(line))
    return blocks


BLOCKS = example_blocks()


def block(start: str) -> str:
    """Return the one Example block whose first line starts with start."""
    found = [b for b in BLOCKS if b.startswith(start)]
    assert len(found) == 1, f"dropr.7 Example: {len(found)} blocks start with {start!r}: {BLOCKS}"
    return found[0]


PAYLOAD_BLOCK = block("url=")  # the variables and the payload
BUILD = block("s=$(")  # size, CRC, time, header, message
DELIVER = block('curl -sS -H "X-Dropr-Origin: $origin" \\\n    -F')
POLL = block('curl -sS -H "X-Dropr-Origin: $origin" \\\n    -H')
DELIVER_TOKEN = block("printf 'Authorization: Bearer")


def answer(shell: str) -> Any:
    """Return the answer a block shows in its last line, a comment: # {...}."""
    last = shell.rstrip("\n").splitlines()[-1]
    assert last.startswith("# {"), f"dropr.7 Example: no answer shown after {shell!r}"
    return json.loads(last[2:])


def settings(**override: str) -> str:
    """Return the payload block with its first line's variables overridden."""
    first, rest = PAYLOAD_BLOCK.split("\n", 1)
    values = dict(pair.split("=", 1) for pair in first.split())
    assert set(values) == {"url", "origin", "id", "ch"}, f"dropr.7 Example: first line {first!r}"
    assert set(override) <= set(values)
    values.update(override)
    return " ".join(f"{k}={v}" for k, v in values.items()) + "\n" + rest


class Hand:
    """A shell in its own folder, running the Example against one receiver."""

    def __init__(self, folder: Path, url: str) -> None:
        self.folder = folder
        self.url = url
        folder.mkdir(exist_ok=True)
        # no proxy between curl and 127.0.0.1, whatever the environment says
        self.env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}

    def sh(self, script: str, **override: str) -> str:
        """Run the payload block's variables (overridden) and then script in sh; return stdout."""
        text = settings(url=self.url, **override).split("\n", 1)[0] + "\n" + script
        p = subprocess.run(["sh", "-c", text], cwd=self.folder, env=self.env, capture_output=True, timeout=60)
        assert p.returncode == 0, f"sh exited {p.returncode}:\n{text}\nstderr: {p.stderr.decode()}"
        return p.stdout.decode()

    def build(self, **override: str) -> bytes:
        """Write the payload and the message as the Example does; return the message."""
        self.sh(settings(url=self.url, **override).split("\n", 1)[1] + BUILD, **override)
        return (self.folder / "msg").read_bytes()

    def deliver(self, shell: str = DELIVER, **override: str) -> Any:
        """Deliver msg with one of the Example's curl blocks; return the parsed answer."""
        return json.loads(self.sh(shell, **override))

    def edit_header(self, old: bytes, new: bytes) -> None:
        """Replace bytes in msg's header, keeping it 256 bytes (the padding takes up the difference)."""
        path = self.folder / "msg"
        raw = path.read_bytes()
        head, payload = raw[:HEADER_SIZE], raw[HEADER_SIZE:]
        assert head.count(old) == 1, head
        line = head.rstrip(b" \n").replace(old, new)
        path.write_bytes(line.ljust(HEADER_SIZE - 1) + b"\n" + payload)

    def status(self, body: str, *headers: str) -> tuple[int, Any]:
        """POST a status body with curl; return (HTTP code, parsed answer)."""
        args = ["curl", "-sS", "-w", "\n%{http_code}", "-d", body]
        for h in ("X-Dropr-Origin: web1", "Content-Type: application/json", *headers):
            args += ["-H", h]
        p = subprocess.run([*args, self.url + "v1/status"], env=self.env, capture_output=True, timeout=60)
        assert p.returncode == 0, p.stderr.decode()
        text, _, code = p.stdout.decode().rpartition("\n")
        return int(code), json.loads(text)


def receiver(nodes: Nodes, tmp_path: Path, config: str = "") -> tuple[Node, Hand]:
    """Node b serving on 127.0.0.1, and a hand-delivering shell aimed at it."""
    b = nodes("b")
    if config:
        b.config(config)
    url = b.serve()
    return b, Hand(tmp_path / "hand", url)


def claim(b: Node) -> dict[str, Any]:
    """Claim the one ready message at b; return dropr-recv's JSON record of it."""
    p = b.run("dropr-recv", "--format", "json", check=True)
    (line,) = p.stdout.decode().splitlines()
    record: dict[str, Any] = json.loads(line)
    return record


def nothing_ready(b: Node) -> bool:
    return int(b.run("dropr-recv").returncode) == NOTHING_READY


# -- the page ------------------------------------------------------------------------------------


def test_example_is_what_a_reader_sees() -> None:
    """Every line the test runs appears, as is, in the page mandoc renders (ASCII, copyable)."""
    if shutil.which("mandoc") is None:
        pytest.skip("mandoc is not installed (package mandoc)")
    out = subprocess.run(["mandoc", "-Tutf8", str(PAGE)], capture_output=True, timeout=60, check=True).stdout
    shown = {ln.strip() for ln in re.sub(".\x08", "", out.decode("utf-8")).splitlines()}  # no overstrikes
    for b in BLOCKS:
        for line in b.splitlines():
            assert line.isascii(), line
            assert line.strip() in shown, f"not on the rendered page as is: {line!r}"


# -- delivering by hand --------------------------------------------------------------------------


def test_built_by_hand_is_the_header_dropr_writes(nodes: Nodes, tmp_path: Path) -> None:
    """The Example's printf makes, byte for byte, the header dropr-put would write."""
    _, hand = receiver(nodes, tmp_path)
    raw = hand.build()
    head, payload = raw[:HEADER_SIZE], raw[HEADER_SIZE:]
    assert payload == PAYLOAD
    assert head[-1:] == b"\n" and len(head) == 256
    hdr = Header.parse(head)
    assert (hdr.ident, hdr.channel, hdr.priority, hdr.deadline) == ("hello-1", "default", 5, 0)
    assert (hdr.size, hdr.crc) == (len(PAYLOAD), zlib.crc32(PAYLOAD))
    assert hdr.pack() == head


def test_deliver_resend_poll_and_ack_by_hand(nodes: Nodes, tmp_path: Path) -> None:
    b, hand = receiver(nodes, tmp_path)
    raw = hand.build()
    assert hand.deliver() == answer(DELIVER)  # stored
    assert hand.deliver() == {"results": [{"id": "hello-1", "status": "duplicate"}]}
    assert json.loads(hand.sh(POLL)) == answer(POLL)  # pending

    rec = claim(b)
    assert (rec["id"], rec["origin"], rec["channel"], rec["priority"]) == ("hello-1", "web1", "default", 5)
    assert rec["created"] == Header.parse(raw[:HEADER_SIZE]).created / 1e6
    assert Path(rec["path"]).read_bytes() == PAYLOAD  # the payload alone, header stripped
    b.run("dropr-ack", "hello-1", check=True)
    assert json.loads(hand.sh(POLL)) == {"results": {"hello-1": {"state": "processed"}}}
    assert hand.deliver() == {"results": [{"id": "hello-1", "status": "duplicate"}]}
    assert nothing_ready(b)


def test_deliver_by_hand_with_a_token_and_no_origin(nodes: Nodes, tmp_path: Path) -> None:
    """With a bearer token, X-Dropr-Origin may be left out: the token names the client."""
    b, hand = receiver(nodes, tmp_path, f'[serve.tokens]\n"{TOKEN}" = "web1"\n')
    (hand.folder / "web1.token").write_text(TOKEN + "\n")
    hand.build()
    assert "X-Dropr-Origin" not in DELIVER_TOKEN
    assert "error" in hand.deliver(DELIVER)  # the origin alone: a 401, nothing stored
    assert nothing_ready(b)
    assert hand.deliver(DELIVER_TOKEN) == answer(DELIVER)
    assert hand.deliver(DELIVER_TOKEN) == {"results": [{"id": "hello-1", "status": "duplicate"}]}
    rec = claim(b)
    assert (rec["id"], rec["origin"]) == ("hello-1", "web1")
    assert Path(rec["path"]).read_bytes() == PAYLOAD
    code, body = hand.status('{"ids": ["hello-1"]}', f"Authorization: Bearer {TOKEN}")
    assert (code, body) == (200, {"results": {"hello-1": {"state": "pending"}}})


def test_a_large_payload_by_hand(nodes: Nodes, tmp_path: Path) -> None:
    """The gzip-trailer CRC and curl's streaming hold for megabytes of arbitrary bytes."""
    b, hand = receiver(nodes, tmp_path)
    data = os.urandom(3 << 20)
    hand.sh(settings(url=hand.url).split("\n", 1)[1])  # the payload block, then a bigger payload
    (hand.folder / "payload").write_bytes(data)
    hand.sh(BUILD)
    assert hand.deliver() == answer(DELIVER)
    assert Path(claim(b)["path"]).read_bytes() == data


def test_wrong_checksum_is_refused_and_nothing_stored(nodes: Nodes, tmp_path: Path) -> None:
    b, hand = receiver(nodes, tmp_path)
    raw = hand.build()
    good = f"k={zlib.crc32(PAYLOAD):08x}".encode()
    assert good in raw[:HEADER_SIZE]
    hand.edit_header(good, f"k={zlib.crc32(PAYLOAD) ^ 1:08x}".encode())
    (result,) = hand.deliver()["results"]
    assert (result["id"], result["status"]) == ("hello-1", "refused")
    assert "checksum" in result["reason"], result
    assert nothing_ready(b)
    hand.build()  # the same message with its right checksum: stored, not a duplicate
    assert hand.deliver() == answer(DELIVER)


def test_an_expired_deadline_is_stored(nodes: Nodes, tmp_path: Path) -> None:
    """d is the sender's deadline on the sender's clock: the receiver stores what reaches it."""
    b, hand = receiver(nodes, tmp_path)
    hand.build()
    hand.edit_header(b" d=0 ", b" d=1 ")  # 1 µs after the epoch: past on every clock
    assert hand.deliver() == answer(DELIVER)
    rec = claim(b)
    assert rec["id"] == "hello-1"
    assert Path(rec["path"]).read_bytes() == PAYLOAD


def test_unknown_header_fields_are_ignored(nodes: Nodes, tmp_path: Path) -> None:
    """dropr.7: a receiver reads the fields by name and ignores names it does not know."""
    b, hand = receiver(nodes, tmp_path)
    raw = hand.build()
    k = re.search(rb" k=[0-9a-f]{8}", raw[:HEADER_SIZE])
    assert k is not None
    hand.edit_header(k.group(0), k.group(0) + b" hops=1")
    assert hand.deliver() == answer(DELIVER)
    assert claim(b)["id"] == "hello-1"


# -- the status body's rules ---------------------------------------------------------------------


def test_status_prefixes_as_long_as_ids(nodes: Nodes, tmp_path: Path) -> None:
    """prefixes is optional; given, one entry per id, "" where the prefix is not known."""
    _, hand = receiver(nodes, tmp_path)
    raw = hand.build()
    hdr = Header.parse(raw[:HEADER_SIZE])
    assert hand.deliver() == answer(DELIVER)
    pending = {"state": "pending"}
    prefix = f"{hdr.priority}{hdr.created:013x}"  # dropr.7: printf '%d%013x' P C
    for body in (
        {"ids": ["hello-1"]},
        {"ids": ["hello-1"], "prefixes": [""]},
        {"ids": ["hello-1"], "prefixes": [prefix]},
        {"ids": ["hello-1", "never-sent"], "prefixes": [prefix, ""]},
    ):
        code, answer_ = hand.status(json.dumps(body))
        assert code == 200, answer_
        assert answer_["results"]["hello-1"] == pending
        if "never-sent" in body["ids"]:
            assert answer_["results"]["never-sent"] == {"state": "unknown"}


@pytest.mark.parametrize("prefixes", [[], ["", ""], "50190f3c2a1b4c", {"hello-1": ""}], ids=str)
def test_status_prefixes_of_another_length_are_refused(nodes: Nodes, tmp_path: Path, prefixes: Any) -> None:
    """dropr.7: a prefixes that is not a list as long as ids is refused (400), not ignored."""
    _, hand = receiver(nodes, tmp_path)
    code, body = hand.status(json.dumps({"ids": ["hello-1"], "prefixes": prefixes}))
    assert code == 400, body
    assert "prefixes" in body["error"], body
