"""docs/STATUS.md describes exactly the status schema: every field, state,
phase and metric the code has is in a table there, and nothing else is."""

import os
import re

from blockmirror.engine import PrimaryPhase, SecondaryPhase
from blockmirror.runtime.http import metrics_text
from blockmirror.status import (
    PrimaryStatus, ResyncProgress, SecondaryStatus, State, Status, LinkStatus, PairStatus, SnapshotStatus,
    VolumeStatus, schema_fields,
)

DOC = os.path.join(os.path.dirname(__file__), "..", "docs", "STATUS.md")
SECTIONS = {"common": "## Common fields", "primary": "## Primary fields", "secondary": "## Secondary fields",
            "last_resync": "### `last_resync`", "resync_progress": "### `resync_progress`",
            "snapshots": "### `snapshots` (each)", "volumes": "### `volumes` (each)", "link": "### `link`",
            "split_brain": "### `split_brain`", "totals": "### `totals`", "verify": "### `verify`",
            "last_verify": "### `last_verify`"}


def _section(text: str, title: str) -> str:
    start = text.index(title + "\n")
    nxt = re.search(r"\n#{2,3} ", text[start + len(title):])
    return text[start:start + len(title) + (nxt.start() if nxt else len(text))]


def _first_column(section: str) -> list[str]:
    return re.findall(r"^\| `([^`]+)`", section, flags=re.M)


def test_every_field_is_documented_in_its_section_and_nothing_more():
    text = open(DOC).read()
    fields = schema_fields()
    for part, title in SECTIONS.items():
        documented = _first_column(_section(text, title))
        assert documented == fields[part], f"{title}: docs list {documented}, the schema has {fields[part]}"


def test_every_state_and_phase_is_documented():
    text = open(DOC).read()
    states = _first_column(_section(text, "## States"))
    for value in [s.value for s in State] + [p.value for p in PrimaryPhase] + [p.value for p in SecondaryPhase]:
        assert value in states, f"{value!r} is not described in docs/STATUS.md"


def test_every_metric_is_documented():
    text = open(DOC).read()
    documented = {m.split("{")[0] for m in _first_column(_section(text, "## Metrics (`GET /metrics`)"))}
    for own in (dict(primary=PrimaryStatus(mode="sync")), dict(secondary=SecondaryStatus())):
        role = "primary" if "primary" in own else "secondary"
        st = Status(role=role, state=State.MIRRORING, phase="mirroring", peer_connected=True, generation=None,
                    seq=3, snapshots=[SnapshotStatus(1, "x", 10, 1)], volumes=[VolumeStatus("v", 1, "u")],
                    pair=PairStatus("p", "u"), link=LinkStatus("a", True, None, 1, 2), **own)
        emitted = set(re.findall(r"^# TYPE (\S+)", metrics_text(st), flags=re.M))
        assert emitted <= documented, f"undocumented metrics: {sorted(emitted - documented)}"


def test_the_json_form_reads_back_as_the_same_status():
    prog = ResyncProgress(4, "incremental", 10, bytes_done=5, bytes_total=9, chunks_total=20, bytes_queued=1)
    for own in (dict(primary=PrimaryStatus(mode="async", peer="h:1")), dict(secondary=SecondaryStatus(tls=True))):
        role = "primary" if "primary" in own else "secondary"
        st = Status(role=role, state=State.RESYNCING, phase="sending", peer_connected=True, generation="g", seq=7,
                    resync_progress=prog, **own)
        assert Status.from_dict(st.as_dict()) == st
        assert ("consistent" in st.as_dict()) == (role == "secondary"), "a role's fields only on that role"
