"""Ids, names and the 256-byte header: parse and format only."""

from __future__ import annotations

import re

import pytest
from dropr import message as m
from hypothesis import given
from hypothesis import strategies as st

HEX24 = re.compile(r"[0-9a-f]{24}")
NAME_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-"

BAD_NAMES = [
    "",
    "../x",
    "..",
    ".",
    ".hidden",
    "-dash",
    "a/b",
    "/abs",
    "a,b",
    "a b",
    "tab\t",
    "new\nline",
    "nul\0",
    "caf\u00e9",
    "\u0661\u0662",  # Arabic-Indic digits: isalnum() but not ASCII
    "x" * 41,
]


# -- ids ----------------------------------------------------------------------


def test_generated_ids_are_24_hex_unique_and_time_sortable() -> None:
    maker = m.IdMaker()
    made = [maker.new() for _ in range(5000)]
    ids = [i for i, _ in made]
    assert all(HEX24.fullmatch(i) for i in ids)
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids), "ids of one process must sort in creation order"
    times = [t for _, t in made]
    assert times == sorted(times) and len(set(times)) == len(times)
    for ident, t in made[:50]:
        assert m.generated_time(ident) == t


def test_ids_of_two_makers_differ_even_in_the_same_microsecond(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(m, "now_us", lambda: 1_700_000_000_000_000)
    a, b = m.IdMaker(), m.IdMaker()
    ids_a = {a.new()[0] for _ in range(100)}
    ids_b = {b.new()[0] for _ in range(100)}
    assert len(ids_a) == 100 and len(ids_b) == 100
    assert not ids_a & ids_b


def test_id_time_prefix_tracks_the_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    maker = m.IdMaker()
    monkeypatch.setattr(m, "now_us", lambda: 0x1234567890ABC)
    ident, t = maker.new()
    assert ident.startswith("1234567890abc") and t == 0x1234567890ABC
    # the clock stepping back never makes a smaller id in one process
    monkeypatch.setattr(m, "now_us", lambda: 0x1000000000000)
    ident2, t2 = maker.new()
    assert ident2 > ident and t2 == t + 1


@pytest.mark.parametrize("ident", ["order-4711", "x", "A.b_c-d", "0" * 25, "f" * 23, "g" * 24])
def test_generated_time_is_none_for_caller_ids(ident: str) -> None:
    assert m.generated_time(ident) is None


# -- names --------------------------------------------------------------------


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_check_name_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        m.check_name(bad, "a channel")


@pytest.mark.parametrize("bad", [b for b in BAD_NAMES if b != "x" * 41] + ["y" * 65])
def test_check_id_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        m.check_id(bad)


@pytest.mark.parametrize("good", ["default", "db1", "a", "A.b_c-d", "x" * 40, "web1.example"])
def test_check_name_accepts(good: str) -> None:
    assert m.check_name(good) == good


def test_check_id_allows_up_to_64_and_names_up_to_40() -> None:
    assert m.check_id("i" * 64) == "i" * 64
    with pytest.raises(ValueError):
        m.check_id("i" * 65)
    with pytest.raises(ValueError):
        m.check_name("n" * 41)


names = st.text(alphabet=NAME_ALPHABET, min_size=1, max_size=40).filter(lambda s: s[0] not in ".-")
ids = st.text(alphabet=NAME_ALPHABET, min_size=1, max_size=64).filter(lambda s: s[0] not in ".-")
arrivals = st.integers(min_value=0, max_value=16**13 - 1)


@given(st.integers(0, 9), arrivals, ids)
def test_out_name_round_trips(p: int, arrival: int, ident: str) -> None:
    name = m.out_name(p, arrival, ident)
    assert m.parse_out_name(name) == (p, arrival, ident)


@given(st.integers(0, 9), arrivals, names, ids)
def test_in_name_round_trips(p: int, arrival: int, origin: str, ident: str) -> None:
    name = m.in_name(p, arrival, origin, ident)
    assert m.parse_in_name(name) == (p, arrival, origin, ident)


@given(st.lists(st.tuples(st.integers(0, 9), arrivals), min_size=2, max_size=20))
def test_names_sort_by_priority_then_arrival(keys: list[tuple[int, int]]) -> None:
    named = sorted(keys, key=lambda k: m.out_name(k[0], k[1], "x"))
    assert named == sorted(keys)


@pytest.mark.parametrize(
    "bad",
    ["", "5,x", "51234567890ab,x", "x1234567890abc,id", "51234567890abc", "51234567890abc,a,b"],
)
def test_parse_out_name_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        m.parse_out_name(bad)


@pytest.mark.parametrize("bad", ["", "51234567890abc,id", "51234567890abc,o,i,x", "z1234567890abc,o,i"])
def test_parse_in_name_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        m.parse_in_name(bad)


# -- header -------------------------------------------------------------------

headers = st.builds(
    m.Header,
    ids,
    names,
    st.integers(0, 9),
    arrivals,  # created: 13 hex digits, as in inbox names
    st.integers(0, 2**53),
    st.integers(0, 2**62),
    st.integers(0, 2**32 - 1),
)


@given(headers)
def test_header_pack_and_parse_are_exact_inverses(h: m.Header) -> None:
    raw = h.pack()
    assert len(raw) == m.HEADER_SIZE and raw.endswith(b"\n") and raw.startswith(b"DROPR1 ")
    back = m.Header.parse(raw)
    for field in m.Header.__slots__:
        assert getattr(back, field) == getattr(h, field), field
    assert back.pack() == raw


def test_header_has_the_documented_shape() -> None:
    h = m.Header("0190f3c2a1b4c5d6e7f8a9b0", "default", 5, 1000, 0, 3, 0xABC)
    raw = h.pack()
    assert raw.rstrip() == b"DROPR1 id=0190f3c2a1b4c5d6e7f8a9b0 ch=default p=5 c=1000 d=0 s=3 k=00000abc"


def _raw(**fields: str) -> bytes:
    base = {"id": "abc", "ch": "default", "p": "5", "c": "1", "d": "0", "s": "0", "k": "00000000"}
    base.update(fields)
    line = "DROPR1 " + " ".join(f"{k}={v}" for k, v in base.items() if v is not None)
    return line.encode().ljust(m.HEADER_SIZE - 1) + b"\n"


def _without(key: str) -> bytes:
    raw = _raw().decode()
    field = next(f for f in raw.split() if f.startswith(key + "="))
    return raw.replace(" " + field, "").rstrip().encode().ljust(m.HEADER_SIZE - 1) + b"\n"


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"DROPR1 id=abc",
        _raw()[:-1] + b" ",  # no newline at byte 255
        _raw() + b"x",  # too long
        b"DROPR2" + _raw()[6:],  # wrong magic
        b"DROPR1x" + _raw()[7:],
        _raw(id="../x"),
        _raw(id=".hidden"),
        _raw(ch="a/b"),
        _raw(ch=".."),
        _raw(p="10"),
        _raw(p="-1"),
        _raw(p="x"),
        _raw(s="-5"),
        _raw(c="-1"),
        _raw(d="-1"),
        _raw(k="zz"),
        _without("id"),
        _without("ch"),
        _without("p"),
        _without("c"),
        _without("d"),
        _without("s"),
        _without("k"),
        _raw().replace(b"ch=default", b"chdefault "),  # field without '='
        _raw().replace(b"ch=default", "ch=d\u00e9f".encode()),  # not ASCII
        b"\0" * m.HEADER_SIZE,
    ],
)
def test_header_parse_rejects_malformed(raw: bytes) -> None:
    with pytest.raises(ValueError):
        m.Header.parse(raw)


@pytest.mark.parametrize("field", ["id", "ch", "p", "c", "d", "s", "k"])
def test_a_missing_header_field_is_named(field: str) -> None:
    """The refusal a sender sees said only "bad message header: 'd'"."""
    with pytest.raises(ValueError, match=f"no {field}= field"):
        m.Header.parse(_without(field))


def test_crc32_continues() -> None:
    assert m.crc32(b"world", m.crc32(b"hello ")) == m.crc32(b"hello world")


def test_header_created_beyond_13_hex_digits_is_refused() -> None:
    h = m.Header("a", "default", 5, 16**13, 0, 0, 0)
    with pytest.raises(ValueError, match="out of range"):
        m.Header.parse(h.pack())


def test_network_fields_round_trip_and_fit_the_longest_header() -> None:
    hdr = m.Header("i" * 64, "c" * 40, 9, 16**13 - 1, 16**13 - 1, 2**63 - 1, 0xFFFFFFFF,
                   key=m.key_hash("user-42"), origin="o" * 40, hops=m.MAX_HOPS)  # fmt: skip
    raw = hdr.pack()
    assert len(raw) == m.HEADER_SIZE and raw.endswith(b"\n") and b"  \n" in raw
    back = m.Header.parse(raw)
    assert (back.key, back.origin, back.hops) == (m.key_hash("user-42"), "o" * 40, 8)
    plain = m.Header("x", "d", 1, 2, 3, 4, 5)
    assert b" y=" not in plain.pack() and b" o=" not in plain.pack()  # unchanged for old receivers
    assert m.Header.parse(plain.pack()).origin is None


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (" y=XYZ", "field y"),
        (" o=a", "o and h go together"),
        (" h=1", "o and h go together"),
        (" o=-a h=1", "an origin"),
        (" o=a h=x", "field h"),
        (" o=a h=100", "field h"),
    ],
)
def test_bad_network_fields_are_refused_in_words(extra: str, says: str) -> None:
    line = f"DROPR1 id=x ch=d p=1 c=2 d=3 s=4 k=00000005{extra}".encode()
    with pytest.raises(ValueError, match=says):
        m.Header.parse(line.ljust(m.HEADER_SIZE - 1) + b"\n")
