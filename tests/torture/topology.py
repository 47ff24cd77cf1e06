"""Who sends what to whom: the three nodes' configs and the destinations of their puts.

    a: peers b (url), c (via b: the relay path a -> b -> c), group bc (urls of b and c,
       spread, puts with --key)
    b: peers a, c (urls); relays for a (serve.relay)
    c: peers a, b (urls), group ab (urls of a and b, failover); trusts b's relaying
Every node serves with tokens (one per client node; a group's members all know the
origin's token) and send.failover_after far longer than the run, so a group message is
stored at exactly one member.
"""

from __future__ import annotations

from .net import Mesh

PORT = 8080
# each node's put destinations: every tuple is one put's --to names
KINDS: dict[str, list[tuple[str, ...]]] = {
    "a": [("b",), ("c",), ("b", "c"), ("bc",)],
    "b": [("a",), ("c",), ("a", "c")],
    "c": [("a",), ("b",), ("a", "b"), ("ab",)],
}
GROUPS: dict[str, set[str]] = {"a": {"bc"}, "b": set(), "c": {"ab"}}
SEND = """[send]
backoff_min = "200ms"
backoff_max = "5s"
connect_timeout = "2s"
timeout = "30s"
failover_after = "30d"
"""


def token(seed: int, node: str) -> str:
    return f"torture-{seed}-token-of-{node}"


def url(mesh: Mesh, of: str, seen_from: str) -> str:
    return f"http://{mesh.addr(of, seen_from)}:{PORT}/"


def config(mesh: Mesh, seed: int, node: str) -> str:
    others = [n for n in mesh.names if n != node]
    tokens = "".join(f'"{token(seed, o)}" = "{o}"\n' for o in others)
    serve = f'[serve]\nlisten = ["0.0.0.0:{PORT}"]\nmin_free = "2MiB"\n'
    mine = token(seed, node)
    peers = ""
    if node == "a":
        peers += f'[peers.b]\nurl = "{url(mesh, "b", "a")}"\ntoken = "{mine}"\n'
        peers += '[peers.c]\nvia = "b"\n'
        peers += f'[peers.bc]\nurls = ["{url(mesh, "b", "a")}", "{url(mesh, "c", "a")}"]\nmode = "spread"\n'
        peers += f'token = "{mine}"\n'
    elif node == "b":
        serve += 'relay = ["a"]\n'
        for o in others:
            peers += f'[peers.{o}]\nurl = "{url(mesh, o, "b")}"\ntoken = "{mine}"\n'
    else:
        serve += 'trust_relays = ["b"]\n'
        for o in others:
            peers += f'[peers.{o}]\nurl = "{url(mesh, o, "c")}"\ntoken = "{mine}"\n'
        peers += f'[peers.ab]\nurls = ["{url(mesh, "a", "c")}", "{url(mesh, "b", "c")}"]\nmode = "failover"\n'
        peers += f'token = "{mine}"\n'
    limits = '[limits]\nretention = "30d"\n'
    return f'node = "{node}"\n' + serve + f"[serve.tokens]\n{tokens}" + limits + SEND + peers


def node_of_url(mesh: Mesh) -> dict[str, str]:
    """Every url a node is reached at -> that node."""
    return {url(mesh, n, o): n for n in mesh.names for o in mesh.names if o != n}
