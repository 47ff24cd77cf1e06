"""Three network namespaces joined pairwise by veth pairs, with link cuts, loss, delay and
reordering (nftables and tc).

Namespace torture-<seed>-<node> per node; the pair (x, y) is veth v<x><y> in x's namespace
and v<y><x> in y's, on 10.213.<i>.0/30 (x .1, y .2). The addresses exist only inside the
namespaces. ``delete`` removes the namespaces, and with them the veth pairs.
"""

from __future__ import annotations

import subprocess
from itertools import combinations

NET = "10.213"


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and p.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {p.stderr.strip()}")
    return p


class Mesh:
    """Nodes in namespaces, every two joined by a veth pair."""

    def __init__(self, seed: int, names: tuple[str, ...] = ("a", "b", "c")) -> None:
        self.names = names
        self.ns = {n: f"torture-{seed}-{n}" for n in names}
        self.pairs = list(combinations(names, 2))
        self.made: list[str] = []

    def addr(self, of: str, seen_from: str) -> str:
        """The address of node `of` on its link to node `seen_from`."""
        pair = tuple(sorted((of, seen_from)))
        i = self.pairs.index(pair) + 1  # type: ignore[arg-type]
        return f"{NET}.{i}.{1 if of == pair[0] else 2}"

    def up(self) -> None:
        for n in self.names:
            if self.ns[n] in ip("netns", "list").stdout.split():
                ip("netns", "del", self.ns[n])  # left by a run of this seed that was killed
            ip("netns", "add", self.ns[n])
            self.made.append(self.ns[n])
            self.sh(n, "ip", "link", "set", "lo", "up")
        for x, y in self.pairs:
            ip(
                "link",
                "add",
                f"v{x}{y}",
                "netns",
                self.ns[x],
                "type",
                "veth",
                "peer",
                "name",
                f"v{y}{x}",
                "netns",
                self.ns[y],
            )
            for me, other in ((x, y), (y, x)):
                self.sh(me, "ip", "addr", "add", f"{self.addr(me, other)}/30", "dev", f"v{me}{other}")
                self.sh(me, "ip", "link", "set", f"v{me}{other}", "up")

    def sh(self, node: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        p = subprocess.run(
            ["ip", "netns", "exec", self.ns[node], *argv], capture_output=True, text=True, timeout=30
        )
        if check and p.returncode != 0:
            raise RuntimeError(f"{node}: {' '.join(argv)}: {p.stderr.strip()}")
        return p

    def exec_argv(self, node: str, argv: list[str]) -> list[str]:
        """argv run inside node's namespace (ip netns exec execs it: the pid is the command's)."""
        return ["ip", "netns", "exec", self.ns[node], *argv]

    def link(self, x: str, y: str, up: bool) -> None:
        """Cut (up False) or heal the link between x and y (both ends)."""
        for me, other in ((x, y), (y, x)):
            self.sh(me, "ip", "link", "set", f"v{me}{other}", "up" if up else "down", check=False)

    def impair(self, x: str, y: str, kind: str, level: int) -> str:
        """Degrade the x-y link both ways; return what was done, in words.

        This kernel may lack netem (CONFIG_NET_SCH_NETEM), so: loss is nftables dropping
        incoming packets at random (numgen), delay is a tbf rate limit (packets queue, and
        those over its latency are dropped), reordering is nftables sending a random
        quarter of the packets into a slow HTB class, which the others overtake."""
        for me, other in ((x, y), (y, x)):
            dev, table = f"v{me}{other}", f"t_{me}{other}"
            rules = []
            if kind in ("loss", "mixed"):
                rules.append(
                    f"chain in {{ type filter hook input priority 0; iifname {dev} "
                    f"numgen random mod 100 < {level} drop; }}"
                )
            if kind in ("reorder", "mixed"):
                rules.append(
                    f"chain out {{ type filter hook output priority 0; oifname {dev} meta priority "
                    "set numgen random mod 4 map { 0 : 1:2, 1 : 1:1, 2 : 1:1, 3 : 1:1 }; }"
                )
                self.sh(me, *f"tc qdisc replace dev {dev} root handle 1: htb default 1 r2q 100".split())
                for cls, rate, quantum in (("1:1", "1000mbit", 60000), ("1:2", "300kbit", 1500)):
                    tc = f"tc class add dev {dev} parent 1: classid {cls} htb rate {rate} quantum {quantum}"
                    self.sh(me, *tc.split())
            if kind == "delay":
                tbf = f"tc qdisc replace dev {dev} root tbf rate {level}kbit burst 16kb latency 500ms"
                self.sh(me, *tbf.split())
            if rules:
                self.sh(me, "nft", f"table inet {table} {{ {'; '.join(rules)}; }}")
        return {
            "loss": f"{level}% loss",
            "delay": f"{level} kbit/s, 500 ms queue",
            "reorder": "1/4 slowed",
            "mixed": f"{level}% loss, 1/4 slowed",
        }[kind]

    def restore(self, x: str, y: str) -> None:
        """Take every impairment off the x-y link."""
        for me, other in ((x, y), (y, x)):
            self.sh(me, "tc", "qdisc", "del", "dev", f"v{me}{other}", "root", check=False)
            self.sh(me, "nft", "delete", "table", "inet", f"t_{me}{other}", check=False)

    def delete(self) -> None:
        for ns in self.made:
            ip("netns", "del", ns, check=False)
        self.made.clear()
