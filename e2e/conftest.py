import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from harness import WORK, GATEWAY_BIN, Sshd, fresh_dir, hash_password  # noqa: E402
from kube import OPERATOR_BIN  # noqa: E402

FIGURES = WORK / "figures.json"


def pytest_sessionstart(session):
    if not GATEWAY_BIN.exists():
        raise pytest.UsageError(f"{GATEWAY_BIN} is missing: build it with `cargo build --release` first")
    if not OPERATOR_BIN.exists():
        raise pytest.UsageError(f"{OPERATOR_BIN} is missing: build it with `cargo build --release` first")
    WORK.mkdir(parents=True, exist_ok=True)
    FIGURES.write_text("{}")


@pytest.fixture(scope="session")
def sshd():
    s = Sshd(fresh_dir("sshd"))
    yield s
    s.stop()


@pytest.fixture(scope="session")
def passwords():
    """PHC hashes made by the gateway itself (`hash-password`)."""
    return {pw: hash_password(pw) for pw in ["alice-pw", "bob-pw", "carol-pw"]}


@pytest.fixture
def figure():
    """Records a measured figure into e2e/.work/figures.json (printed at the end of CI)."""

    def record(name, value):
        data = json.loads(FIGURES.read_text())
        data[name] = value
        FIGURES.write_text(json.dumps(data, indent=2))
        print(f"FIGURE {name} = {value}")

    return record
