"""The container images as a kubelet gets them (e2e/images/build.sh): FROM scratch, uid 65532,
no shell, and self-contained: each binary runs from its image's root alone, as 65532, with
nothing of the host on its path. Their names are the ones the chart and the operator default
to, so `helm install` and a TransferGateway without `image` name what the script builds."""

import json
import re
import signal
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / ".work" / "images"
BUILDAH = ["buildah", "--storage-driver", "vfs", "--root", str(OUT / "storage"),
           "--runroot", str(OUT / "run")]
VERSION = re.search(r'\[workspace\.package\][^\[]*?version = "([^"]+)"', (ROOT / "Cargo.toml").read_text()).group(1)
GATEWAY = f"ghcr.io/portcullis-dev/portcullis-gateway:{VERSION}"
OPERATOR = f"ghcr.io/portcullis-dev/portcullis-operator:{VERSION}"
PAUSE = f"localhost/portcullis/pause:{VERSION}"


@pytest.fixture(scope="module")
def images() -> dict[str, Path]:
    out = subprocess.run(["bash", str(HERE / "images" / "build.sh")], check=True,
                         stdout=subprocess.PIPE, cwd=ROOT).stdout.decode()
    return {name: Path(archive) for name, archive in (line.split() for line in out.splitlines())}


def config(image: str) -> dict:
    out = subprocess.run([*BUILDAH, "inspect", "--type", "image", image], check=True,
                         capture_output=True).stdout
    return json.loads(out)["OCIv1"]["config"]


@contextmanager
def rootfs(image: str):
    """The image's file system, mounted read-write from a throwaway container."""
    c = subprocess.run([*BUILDAH, "from", image], check=True, capture_output=True, text=True).stdout.strip()
    try:
        yield Path(subprocess.run([*BUILDAH, "mount", c], check=True, capture_output=True,
                                  text=True).stdout.strip())
    finally:
        subprocess.run([*BUILDAH, "rm", c], capture_output=True)


def run_in(root: Path, uid: str, env_path: str, *argv: str, stdin: bytes = b"") -> str:
    """ARGV inside ROOT as UID, with only the image's PATH: the image's files alone."""
    r = subprocess.run(["/usr/sbin/chroot", f"--userspec={uid}", str(root), *argv], input=stdin,
                       capture_output=True, env={"PATH": env_path}, timeout=60)
    assert r.returncode == 0, (argv, r.stderr.decode())
    return r.stdout.decode()


def test_names_are_the_ones_the_chart_and_the_operator_default_to(images):
    assert set(images) == {GATEWAY, OPERATOR, PAUSE}
    values = (ROOT / "charts/portcullis/values.yaml").read_text()
    repo = re.search(r"^image:\n  repository: (\S+)", values, re.M).group(1)
    app = re.search(r'^appVersion: "([^"]+)"', (ROOT / "charts/portcullis/Chart.yaml").read_text(), re.M).group(1)
    assert f"{repo}:{app}" == OPERATOR
    crd = (ROOT / "crds/transfergateway.yaml").read_text()
    assert f"default: {GATEWAY}\n" in crd


@pytest.mark.parametrize("image,binary", [(GATEWAY, "portcullis-gateway"), (OPERATOR, "portcullis-operator")])
def test_images_are_scratch_non_root_and_have_no_shell(images, image, binary, figure):
    c = config(image)
    assert c["User"] == "65532:65532"
    assert c["Entrypoint"] == [binary]
    with rootfs(image) as root:
        files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir())
        # The binary, its loader and libraries, and the account files: nothing else.
        assert f"usr/local/bin/{binary}" in files
        extra = [f for f in files if not (f.startswith(("lib/", "lib64/")) or f in (
            f"usr/local/bin/{binary}", "etc/passwd", "etc/group"))]
        assert extra == [], extra
        assert not any(f.endswith(("/sh", "/bash", "/busybox")) for f in files)
        # Nothing in it is writable by the user the container runs as.
        assert all(p.stat().st_uid == 0 and not p.stat().st_mode & 0o022 for p in root.rglob("*")
                   if not p.is_symlink()), "a file 65532 could change"
        size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    figure(f"image_{binary}_MB", round(size / 1e6, 1))
    figure(f"image_{binary}_archive_MB", round(images[image].stat().st_size / 1e6, 1))


def test_each_binary_runs_from_its_image_alone_as_65532(images):
    with rootfs(GATEWAY) as root:
        assert run_in(root, "65532:65532", "/usr/local/bin", "portcullis-gateway", "--version").strip() \
            == f"portcullis-gateway {VERSION}"
        phc = run_in(root, "65532:65532", "/usr/local/bin", "portcullis-gateway", "hash-password",
                     stdin=b"image-pw\n")
        assert phc.startswith("$argon2id$"), phc
    with rootfs(OPERATOR) as root:
        crds = run_in(root, "65532:65532", "/usr/local/bin", "portcullis-operator", "crd")
        assert crds.count("kind: CustomResourceDefinition") == 6
    with rootfs(PAUSE) as root:
        p = subprocess.Popen(["/usr/sbin/chroot", "--userspec=65535:65535", str(root), "/pause"], env={})
        time.sleep(0.3)
        assert p.poll() is None, "pause exited by itself"
        p.send_signal(signal.SIGTERM)
        assert p.wait(5) == 0
