import pytest

from blockmirror.testing.pair import Pair


def _assert_stopped_cleanly(pair: Pair) -> None:
    for role, code in pair.close().items():
        assert code == 0, f"{role} exited {code}; log:\n{pair.daemon(role).log()}"


@pytest.fixture
def pair(tmp_path):
    """A running pair in async mode, through a fault proxy thread; both
    daemons must stop cleanly (exit 0)."""
    p = Pair(tmp_path)
    yield p
    _assert_stopped_cleanly(p)


@pytest.fixture
def new_pair(tmp_path):
    """Makes a Pair whose daemons the test starts; stopped (exit 0) at the end."""
    made = []

    def make(**kw):
        p = Pair(tmp_path, start=False, **kw)
        made.append(p)
        return p
    yield make
    for p in made:
        _assert_stopped_cleanly(p)
