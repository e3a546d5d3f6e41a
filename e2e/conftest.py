import json
import re
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from harness import SERVERS, WORK, GATEWAY_BIN, Sshd, fresh_dir, hash_password  # noqa: E402
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


# What a failing test shows of each running server's logs: the lines worth reading first.
LOG_TAILS = {
    "gateway.log": (re.compile(r"WARN|ERROR|panicked"), 40),
    "audit.jsonl": (re.compile(r'"(error|reason|detail)":"|"outcome":"(failed|denied)"|"confidence":"(Low|NoEOF)"'), 30),
    "vsftpd.log": (re.compile(r'FAIL|"[45]\d\d '), 40),
    "sshd.log": (re.compile(r"."), 20),
}


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """On a failure, keep the logs of every server still running (later modules recreate the
    same directories) under e2e/.work/failed/<test>/, and show their telling lines in the
    report, so that an intermittent failure in CI leaves its evidence in the CI output."""
    report = yield
    if report.failed and call.when in ("setup", "call"):
        keep = WORK / "failed" / re.sub(r"[^A-Za-z0-9_.-]+", "_", item.nodeid)
        for server in SERVERS:
            proc = getattr(server, "proc", None)
            if proc is None or proc.poll() is not None:
                continue
            dest = keep / server.dir.name
            dest.mkdir(parents=True, exist_ok=True)
            for name, (telling, count) in LOG_TAILS.items():
                path = server.dir / name
                if not path.exists():
                    continue
                shutil.copy(path, dest / name)
                lines = [line for line in path.read_text(errors="replace").splitlines() if telling.search(line)]
                if lines:
                    report.sections.append((f"{server.dir.name}/{name} (last {count} telling lines)",
                                            "\n".join(line[:400] for line in lines[-count:])))
    return report
