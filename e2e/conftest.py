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


def _remove_large_files(root: Path, at_least: int, skip: tuple[Path, ...] = ()) -> None:
    for path in root.rglob("*"):
        try:
            if any(path.is_relative_to(s) for s in skip):
                continue
            if path.is_file() and not path.is_symlink() and path.stat().st_size >= at_least:
                path.unlink()
        except OSError:
            pass  # gone already, or a server's socket: nothing to reclaim


@pytest.fixture(autouse=True)
def _tmp_path_keeps_no_payloads(request):
    """A test's payloads (files of 4 MiB and more in its tmp_path) are removed when it ends:
    pytest keeps every tmp_path of its last three runs, and the 1 GiB tests alone would leave
    gigabytes each run. Small files (configs, logs) stay for a failure's post-mortem."""
    yield
    tmp = request.node.funcargs.get("tmp_path")
    if isinstance(tmp, Path):
        _remove_large_files(tmp, 4 << 20)


@pytest.fixture(scope="module", autouse=True)
def _work_keeps_no_payloads():
    """The same for e2e/.work when a module ends (its servers are stopped by then): backends'
    copies of large uploads, the 1 GiB source files. A CI run once failed with a full disk.
    Kept: `failed/` (post-mortems) and `images/`, the image builder's cache, whose layers hold
    the binaries: a removed layer left an image without its binary when the cached archive
    let e2e/images/build.sh skip the build."""
    yield
    _remove_large_files(WORK, 16 << 20, skip=(WORK / "failed", WORK / "images"))


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
            for name, (telling, count) in LOG_TAILS.items():
                path = server.dir / name
                if not path.exists():
                    continue
                try:
                    dest.mkdir(parents=True, exist_ok=True)
                    shutil.copy(path, dest / name)
                except OSError as e:  # a full disk must not end the whole run (it once did)
                    report.sections.append((f"{server.dir.name}/{name}", f"not kept: {e}"))
                lines = [line for line in path.read_text(errors="replace").splitlines() if telling.search(line)]
                if lines:
                    report.sections.append((f"{server.dir.name}/{name} (last {count} telling lines)",
                                            "\n".join(line[:400] for line in lines[-count:])))
    return report
