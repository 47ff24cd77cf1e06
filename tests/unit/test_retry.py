"""The one backoff formula: doubling, cap, jitter, and counts no float can hold."""

from __future__ import annotations

import pytest
from dropr.retry import DOUBLINGS, backoff


def test_it_doubles_from_the_base_up_to_the_cap() -> None:
    assert [backoff(n, 1.0, 60.0) for n in range(9)] == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert backoff(0, 0.5, 3.0) == 0.5


@pytest.mark.parametrize("n", [1023, 1024, 10**6, 10**400, DOUBLINGS, DOUBLINGS + 1])
def test_a_huge_count_stays_at_the_cap(n: int) -> None:
    # 2.0 ** 1024 overflows: a crash loop once left 1024 failures in peer.json
    assert backoff(n, 1.0, 300.0) == 300.0
    assert backoff(n, 1e-300, 1e300) == 1e-300 * 2.0**DOUBLINGS  # the doubling stops at DOUBLINGS


@pytest.mark.parametrize("n", [-1, -(10**400)])
def test_a_negative_count_reads_as_zero(n: int) -> None:
    assert backoff(n, 2.0, 60.0) == 2.0


def test_the_jitter_draws_from_a_fraction_below_the_delay() -> None:
    seen = [backoff(3, 1.0, 60.0, jitter=0.5) for _ in range(2000)]
    assert all(4.0 <= d <= 8.0 for d in seen)
    assert min(seen) < 4.5 and max(seen) > 7.5  # the whole range, not one end
    capped = [backoff(10, 1.0, 60.0, jitter=0.5) for _ in range(200)]
    assert all(30.0 <= d <= 60.0 for d in capped)  # the jitter applies to the capped delay


def test_without_jitter_it_is_exact() -> None:
    assert {backoff(5, 1.0, 300.0) for _ in range(50)} == {32.0}
