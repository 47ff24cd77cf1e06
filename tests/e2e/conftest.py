"""Shared e2e fixtures: nodes with their own spool, real dropr-serve and dropr-send processes.

The Node class and the other plain helpers live in tests/helpers.py (`from helpers import
Node`), so test files can name the type; this file only hands them out as fixtures.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import Node, Nodes, Pair


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[Nodes]:
    """Make nodes on demand: nodes("a"), nodes("b"); all their processes end with the test."""
    made: list[Node] = []

    def make(name: str) -> Node:
        n = Node(tmp_path, name)
        made.append(n)
        return n

    yield make
    for n in made:
        n.stop_all()


@pytest.fixture
def pair(nodes: Nodes) -> Pair:
    """Node a and node b, b serving: a Pair."""
    a, b = nodes("a"), nodes("b")
    return Pair(a, b, b.serve())
