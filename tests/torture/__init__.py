"""Torture across three hosts (#16): nodes a, b and c in network namespaces, real dropr
daemons on loop-mounted spools, messages flowing while processes are SIGKILLed, links cut
and degraded, disks filled and clocks stepped; then every printed id checked.

    python -m tests.torture --minutes 30 --seed 0 --json .torture/three-hosts.json

net.py (namespaces, links), disk.py (spool filesystems), procs.py (daemons restarted as
systemd would), load.py (producers and consumers), faults.py (the injectors), check.py
(the checker), run.py (one run, its JSON), readme.py (the README's Reliability section).
"""
