"""Power loss: the crash states of recorded spool operations, recovered and checked.

The explorer and its persistence model are in tests/crash_explorer.py; `make torture`
runs it long. Each regression test below is one crash state that once lost or
duplicated a message."""

from __future__ import annotations

from pathlib import Path

import crash_explorer as ce
import pytest
from dropr.spool._trace import TracingFS

pytestmark = pytest.mark.usefixtures("clean_dropr_env")


def recover(rec: ce.Recording, st: ce.State, tmp_path: Path) -> list[str]:
    dest = tmp_path / "state"
    dest.mkdir()
    return ce.check(rec, ce.materialise(rec, st, str(dest)), st.k)


@pytest.mark.parametrize("name", list(ce.SCENARIOS))
def test_a_seeded_sample_of_crash_states_loses_and_duplicates_nothing(name: str, tmp_path: Path) -> None:
    # 20 scenarios at up to 24 states each: about 450 states, 8 s; make torture runs 30,000
    report = ce.explore([name], 24, tmp_path, seed=16, stop_after=1)
    assert report.states[name] >= 4
    assert not report.violations, report.violations[0]


def test_the_explorer_catches_a_put_that_never_syncs_its_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(TracingFS, "fsync_dir", lambda self, path: None)  # not done, not recorded
    report = ce.explore(["put"], 50, tmp_path, stop_after=1)
    assert report.violations and "is lost for peer a" in report.violations[0]


def test_the_first_put_makes_the_spool_root_durable_before_it_prints(tmp_path: Path) -> None:
    # The start: the root's own mkdir, whose parent was never fsynced. FS.mkdirs
    # now fsyncs the parent of every folder it makes, the root's and its parents' too.
    rec = ce.record("first_put", tmp_path / "world")
    [promise] = rec.promises
    root_made = ce.point(rec, "mkdir", "/spool/dropr")
    assert rec.events[root_made + 1].name == "fsync_dir"
    assert rec.events[root_made + 1].paths == (str(tmp_path / "world" / "var" / "spool"),)
    st = ce.state_at(rec, promise.at)
    assert rec.root in st.entries
    assert recover(rec, st, tmp_path) == []


def test_a_spool_whose_last_top_folder_was_not_made_is_completed(tmp_path: Path) -> None:
    # A crash after wake/ was made durable and before lock/ was made: the spool was
    # taken for whole (wake/ was the test), and every purge then failed on lock/.
    rec = ce.record("first_put", tmp_path / "world")
    st = ce.state_at(rec, ce.point(rec, "mkdir", "/lock"))
    assert rec.root + "/wake" in st.entries and rec.root + "/lock" not in st.entries
    assert recover(rec, st, tmp_path) == []


@pytest.mark.parametrize("name", ["sender", "receipts"])
def test_an_outbox_move_makes_its_new_name_durable_before_the_old_one_goes(name: str, tmp_path: Path) -> None:
    # A move was link, unlink, and an fsync of the new folder after both: a power loss
    # could keep the unlink (its folder's other writes) and lose the link, and the
    # printed id was in no state at all. Now the unlink follows that fsync.
    rec = ce.record(name, tmp_path / "world")
    k = ce.point(rec, "unlink", "") + 1
    st = ce.state_at(rec, k, keep=lambda op: op.kind == "unlink")
    assert recover(rec, st, tmp_path) == []


def test_a_purge_drops_an_index_entry_only_once_its_message_is_gone_for_good(tmp_path: Path) -> None:
    # Purge unlinked done/N, its record and rcv/O/ID with no fsync between: a power loss
    # could keep the index unlink alone, and done/N then had no index entry.
    rec = ce.record("purge", tmp_path / "world")
    k = ce.point(rec, "unlink", "", nth=-1) + 1  # the rcv/ entry's, the last
    assert "/rcv/" in rec.events[k - 1].paths[0]
    st = ce.state_at(rec, k, keep=lambda op: op.kind == "unlink" and "/rcv/" in op.path)
    assert recover(rec, st, tmp_path) == []


def test_an_ack_that_reaches_the_disk_before_its_claim_leaves_one_state(tmp_path: Path) -> None:
    # Found by the explorer (#16): the claim's rename was never synced, so an ack's rename
    # into done/ could reach the disk without it: ready/N and done/N at once. Claims now
    # sync claimed/ and ready/ before they are handed out.
    rec = ce.record("claim_ack", tmp_path / "world")
    assert [e.name for e in rec.events if e.name == "fsync_dir"], "the claim syncs its folders"
    k = len(rec.events)  # claims (synced), then the ack's rename -> done
    st = ce.state_at(rec, k, keep=lambda op: op.kind == "rename" and "/done/" in op.path)
    assert recover(rec, st, tmp_path) == []
