"""Fuzz the parsers in process with Hypothesis: message headers, spool names, the config.

    python tests/fuzz/parsers.py --inputs 30000 --seed 0 [--json PATH]

Each target runs its inputs (seeded, no example database) and checks:
  header  Header.parse of arbitrary and mutated headers raises only ValueError, its reason
          in words (no Python names); a parsed header packs back to one that parses the same;
          header_deadline raises only ValueError.
  names   the name parsers and checks raise only ValueError; a name the fast checks take
          (not_out_name / not_in_name false) parses and formats back to itself.
  config  Config of arbitrary parsed structures, and load of arbitrary TOML-ish text, raise
          only ConfigError, in words; a second load (from the spool's cache) agrees.
Prints one summary line per target; exits 1 on a finding.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import re
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dropr import config as c
from dropr import message as m
from dropr.errors import ConfigError
from hypothesis import HealthCheck, given, settings
from hypothesis import seed as hseed
from hypothesis import strategies as st

PYTHON_NAMES = re.compile(r"Traceback|\b[A-Z]\w*(Error|Exception)\b")

# -- strategies --------------------------------------------------------------------------------

_FIELD_VALUES = st.one_of(
    st.text("0123456789", max_size=22), st.text("0123456789abcdefABCDEF", max_size=10),
    st.sampled_from(["", "-1", "+5", "0x10", "1_0", "\u0661", "default", "a" * 65, "../x", "a/b", ".x"]),
    st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=20),
)  # fmt: skip
_FIELD_NAMES = st.sampled_from(["id", "ch", "p", "c", "d", "s", "k", "y", "o", "h", "zz", "", "ID"])


@st.composite
def header_bytes(draw: st.DrawFn) -> bytes:
    """A header: a good one mutated, one of fields drawn, or any bytes."""
    how = draw(st.sampled_from(["good", "fields", "bytes"]))
    if how == "bytes":
        raw = draw(st.binary(min_size=0, max_size=300))
        return raw if draw(st.booleans()) else raw[:255].ljust(255) + b"\n"
    if how == "good":
        hdr = m.Header(
            draw(st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}", fullmatch=True)),
            draw(st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,39}", fullmatch=True)),
            draw(st.integers(0, 9)), draw(st.integers(0, 16**13 - 1)), draw(st.integers(0, 2**64)),
            draw(st.integers(0, 2**63)), draw(st.integers(0, 2**32 - 1)),
        )  # fmt: skip
        if draw(st.booleans()):
            hdr.key = draw(st.integers(0, 2**32 - 1))
        if draw(st.booleans()):
            hdr.origin, hdr.hops = draw(st.sampled_from(["a", "web1", "x" * 40])), draw(st.integers(0, 99))
        try:
            raw = bytearray(hdr.pack())
        except UnicodeEncodeError:
            return b""
        for i, b in draw(st.lists(st.tuples(st.integers(0, 255), st.integers(0, 255)), max_size=3)):
            raw[i] = b
        return bytes(raw[:256])
    words = draw(
        st.lists(st.tuples(_FIELD_NAMES, st.sampled_from(["=", "", "=="]), _FIELD_VALUES), max_size=12)
    )
    line = "DROPR1 " + " ".join(f"{k}{eq}{v}" for k, eq, v in words)
    return line.encode("utf-8")[:255].ljust(255) + b"\n"


_NAME_CHARS = st.sampled_from(list("0123456789abcdefABCDEF,.-_xz/ \x00\u00e9"))
names = st.one_of(
    st.text(_NAME_CHARS, max_size=90),
    st.builds(
        lambda p, t, o, i, sep: f"{p}{t:013x}{sep}{o}{sep}{i}",
        st.integers(0, 12), st.integers(0, 16**14), st.text(_NAME_CHARS, max_size=8),
        st.text(_NAME_CHARS, max_size=8), st.sampled_from([",", ",,", ""]),
    ),
    st.builds(lambda p, t, i: f"{p}{t:013x},{i}", st.integers(0, 9), st.integers(0, 16**13 - 1),
              st.text(_NAME_CHARS, max_size=70)),  # fmt: skip
)  # fmt: skip

_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
    st.sampled_from(["", "1s", "5m", "-3s", "1e400s", "1GiB", "64KiB", "inf", "nan", "0", "http://127.0.0.1:9/",
                     "https://x/", "ftp://x", "a", "failover", "spread", "all", "ch1", "127.0.0.1:0", ".",
                     "..", "36501d", "9" * 400, "1.2.3s", "c", "g", "g/x"]),
    st.text(max_size=20),
)  # fmt: skip
_KEYS = sorted({k for ks in c._KNOWN.values() for k in ks} | {"a", "b", "c", "g", "x-y", ""})


def _structures() -> st.SearchStrategy[Any]:
    return st.recursive(
        _SCALARS,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4),
            st.dictionaries(st.one_of(st.sampled_from(_KEYS), st.text(max_size=6)), inner, max_size=5),
        ),
        max_leaves=25,
    )


configs = st.dictionaries(st.sampled_from(sorted(c._KNOWN[""] | {"x"})), _structures(), max_size=6)


def _toml_value(v: Any) -> str:
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml_value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return '""'
    return json.dumps(v) if not isinstance(v, float) else repr(v).replace("inf", "inf").replace("nan", "nan")


@st.composite
def toml_texts(draw: st.DrawFn) -> str:
    """TOML-ish text: a config rendered as TOML, then perhaps cut or spliced with junk."""
    data = draw(configs)
    text = "\n".join(f"{k} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, dict))
    for k, v in data.items():
        if isinstance(v, dict):
            text += f"\n[{k}]\n" + "\n".join(
                f"{json.dumps(str(kk))} = {_toml_value(x)}" for kk, x in v.items()
            )
    how = draw(st.sampled_from(["as is", "cut", "junk", "text"]))
    if how == "cut" and text:
        text = text[: draw(st.integers(0, len(text)))]
    elif how == "junk":
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.text(max_size=20)) + text[at:]
    elif how == "text":
        text = draw(st.text(max_size=200))
    return text


# -- targets -------------------------------------------------------------------------------------


def _words(exc: Exception, what: str) -> None:
    if PYTHON_NAMES.search(str(exc)) or not str(exc):
        raise AssertionError(f"{what}: the reason is not in words: {exc!r}")


def check_header(raw: bytes) -> str:
    try:
        m.header_deadline(raw)
    except ValueError:
        pass
    try:
        hdr = m.Header.parse(raw)
    except ValueError as exc:
        _words(exc, f"Header.parse({raw!r})")
        return "refused"
    again = m.Header.parse(hdr.pack())
    assert [getattr(again, f) for f in m.Header.__slots__] == [getattr(hdr, f) for f in m.Header.__slots__], (
        raw
    )
    return "parsed"


def check_name(name: str) -> str:
    outcome = []
    for kind, parse, fmt, fast in (
        ("out", m.parse_out_name, lambda t: m.out_name(*t), m.not_out_name),
        ("in", m.parse_in_name, lambda t: m.in_name(*t), m.not_in_name),
    ):
        try:
            parsed: Any = parse(name)
        except ValueError:
            parsed = None
        if not fast(name):
            assert parsed is not None and fmt(parsed) == name, (kind, name, parsed)
            outcome.append(kind)
    for check in (m.check_id, m.check_name):
        try:
            check(name)
        except ValueError as exc:
            _words(exc, f"{check.__name__}({name!r})")
    if name.count(",") >= 2:
        m.split_in_name(name)
    m.split_out_name(name)
    return "+".join(outcome) or "neither"


def check_config(data: dict[str, Any]) -> str:
    try:
        c.Config(data)
    except ConfigError as exc:
        _words(exc, f"Config({data!r})")
        return "refused"
    return "taken"


def check_load(text: str, spool: str) -> str:
    Path(spool, "dropr.toml").write_text(text, encoding="utf-8", errors="surrogatepass")
    Path(spool, c.CACHE_NAME).unlink(missing_ok=True)
    results = []
    for _ in range(2):  # the second from the cache the first kept
        try:
            with contextlib.redirect_stderr(io.StringIO()):  # its warning of unknown keys
                cfg = c.load(spool)
            results.append(("taken", repr(sorted((k, repr(v)) for k, v in vars(cfg).items()))))
        except ConfigError as exc:
            _words(exc, f"load of {text!r}")
            results.append(("refused", str(exc)))
    assert results[0] == results[1], (text, results)
    return results[0][0]


# -- running -------------------------------------------------------------------------------------


def fuzz(name: str, strategy: st.SearchStrategy[Any], check: Callable[[Any], str], inputs: int,
         seed: int) -> Counter[str]:  # fmt: skip
    """Run check on inputs examples of strategy; return the outcomes counted."""
    counts: Counter[str] = Counter()

    @hseed(seed)
    @settings(max_examples=inputs, database=None, deadline=None, derandomize=False,
              suppress_health_check=list(HealthCheck), report_multiple_bugs=False)  # fmt: skip
    @given(strategy)
    def target(x: Any) -> None:
        counts[check(x)] += 1

    target()
    return counts


def line(name: str, counts: Counter[str], seed: int, secs: float) -> str:
    outcomes = " ".join(f"{k}={v}" for k, v in sorted(counts.items()))
    return f"fuzz {name}: {sum(counts.values())} inputs ({outcomes}); 0 findings; seed {seed}, {secs:.0f} s"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inputs", type=int, default=30000, help="per target")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the counts to this file")
    args = ap.parse_args(argv)
    report = {}
    for name, strategy, check in TARGETS:
        start = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="dropr-fuzz-cfg-") as spool:
            fn = functools.partial(check, spool=spool) if name == "config-load" else check
            counts = fuzz(name, strategy, fn, args.inputs, args.seed)
        secs = time.monotonic() - start
        print(line(name, counts, args.seed, secs), flush=True)
        report[name] = {"target": name, "seed": args.seed, "seconds": round(secs, 1),
                        "inputs": sum(counts.values()), "outcomes": dict(counts), "findings": 0}  # fmt: skip
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return 0


TARGETS: list[tuple[str, st.SearchStrategy[Any], Callable[..., str]]] = [
    ("header", header_bytes(), check_header),
    ("names", names, check_name),
    ("config", configs, check_config),
    ("config-load", toml_texts(), check_load),
]

if __name__ == "__main__":
    sys.exit(main())
