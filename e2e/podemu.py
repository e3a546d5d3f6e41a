#!/usr/bin/env python3
"""Pod emulation: runs a Deployment's pod as a local process, because this machine has no
kubelet and no container runtime.

What it takes from the Deployment's pod template, as a kubelet would:
  - the first container's `command`, `args` and `env` (literal values);
  - every Secret volume, written out the way the kubelet's atomic writer does it:
    `<mount>/..<timestamp>/<files>`, a `..data` symlink to that directory, and one symlink per
    key (`config.yaml -> ..data/config.yaml`); an update writes a new timestamped directory
    and swaps `..data` with one rename, so readers see the old set or the new set, never a mix;
  - `defaultMode` for the files, `fsGroup` as their group, and `runAsUser`/`runAsGroup` for the
    process (the emulator runs as root and drops to them);
  - every `emptyDir` volume: a local directory owned by the pod's user and `fsGroup`, bind
    mounted at its `mountPath` in a private mount namespace of the process (so that paths in
    the config, such as the audit file's, resolve as in the pod). `sizeLimit` is not enforced.

  - the readiness probe (`httpGet`) of the emulated process, reported as a kubelet reports it:
    the status of one of the Deployment's pods (phase Running, `Ready` and `ContainersReady`
    conditions, the container's `ready`), so that the ReplicaSet and Deployment controllers
    count it and the operator's Ready condition can be tested against pods that are ready.

What it maps, because there is no image: `command[0]` is looked up in the binary directory
(the workspace's target/release), and a mount path that appears in `args` is replaced by the
local directory that stands in for it. Listeners bind on the host, so a test picks free ports.
What it does not emulate: the image, readOnlyRootFilesystem, seccomp, capabilities,
liveness probes, resource limits and pod networking. Those are checked on the built object
instead.

Usage: podemu.py --namespace NS --deployment NAME [--dir DIR] [--bin DIR] (KUBECONFIG from env)
"""

import argparse
import base64
import ctypes
import datetime
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class PodEmulator:
    def __init__(self, namespace: str, deployment: str, dir: Path, env: dict | None = None,
                 bin_dir: Path = ROOT / "target" / "release", kubectl: str = "kubectl",
                 sync_interval: float = 0.5):
        self.namespace = namespace
        self.deployment = deployment
        self.dir = dir
        self.env = env or dict(os.environ)
        self.bin_dir = bin_dir
        self.kubectl_bin = kubectl
        self.sync_interval = sync_interval
        self.proc = None
        self.mounts = {}  # volume name -> (mount dir, secret name, mode)
        self.versions = {}  # secret name -> resourceVersion written
        self.stop_event = threading.Event()
        self.syncs = 0
        self.pod_name = None  # the Deployment's pod whose status this process reports
        self.reported = None  # the readiness last reported
        dir.mkdir(parents=True, exist_ok=True)

    def _kubectl(self, *args) -> dict:
        r = subprocess.run([self.kubectl_bin, "-n", self.namespace, *args, "-o", "json"],
                           capture_output=True, text=True, env=self.env)
        if r.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {r.stderr}")
        return json.loads(r.stdout)

    def start(self) -> None:
        d = self._kubectl("get", "deployment", self.deployment)
        pod = d["spec"]["template"]["spec"]
        self.template = d["spec"]["template"]
        container = pod["containers"][0]
        sc = pod.get("securityContext") or {}
        self.uid = sc.get("runAsUser")
        self.gid = sc.get("runAsGroup")
        self.fs_group = sc.get("fsGroup")
        self.grace = pod.get("terminationGracePeriodSeconds", 30)
        self.selector = d["spec"]["selector"]["matchLabels"]
        self.container_name = container["name"]
        probe = (container.get("readinessProbe") or {}).get("httpGet")
        if probe:
            port = probe["port"]
            if isinstance(port, str):
                port = next(p["containerPort"] for p in container.get("ports", []) if p.get("name") == port)
            self.probe_url = f"http://127.0.0.1:{port}{probe.get('path', '/')}"
        else:
            self.probe_url = None
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        path_map = {}
        self.binds = []  # (local dir, mount path) of emptyDir volumes
        for m in container.get("volumeMounts", []):
            v = volumes[m["name"]]
            if "emptyDir" in v:
                local = self.dir / "volumes" / m["name"]
                local.mkdir(parents=True, exist_ok=True)
                os.chown(local, self.uid if self.uid is not None else -1,
                         self.fs_group if self.fs_group is not None else -1)
                os.chmod(local, 0o2770)
                self.binds.append((str(local), m["mountPath"]))
                continue
            if "secret" not in v:
                raise RuntimeError(f"volume {m['name']}: only Secret and emptyDir volumes are emulated")
            local = self.dir / "volumes" / m["name"]
            local.mkdir(parents=True, exist_ok=True)
            os.chmod(local, 0o755)
            mode = v["secret"].get("defaultMode", 0o644)
            self.mounts[m["name"]] = (local, v["secret"]["secretName"], mode)
            path_map[m["mountPath"]] = str(local)
        self.sync()

        def mapped(a: str) -> str:
            for mount, local in path_map.items():
                if a == mount or a.startswith(mount + "/"):
                    return local + a[len(mount):]
            return a

        command = container.get("command") or []
        if not command:
            raise RuntimeError("the container has no command; the emulator needs one")
        exe = self.bin_dir / Path(command[0]).name
        argv = [str(exe)] + [mapped(a) for a in command[1:] + container.get("args", [])]
        env = {"PATH": "/usr/bin:/bin"}
        for e in container.get("env", []):
            if "value" not in e:
                raise RuntimeError(f"env {e['name']}: only literal values are emulated")
            env[e["name"]] = e["value"]
        self.argv = argv
        self.stdout = open(self.dir / "stdout.log", "ab")
        self.stderr = open(self.dir / "stderr.log", "ab")

        binds = self.binds

        def drop_privileges():
            if binds:
                libc = ctypes.CDLL(None, use_errno=True)
                clone_newns, ms_bind, ms_rec, ms_private = 0x20000, 4096, 16384, 1 << 18
                if libc.unshare(clone_newns) != 0:
                    raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
                if libc.mount(b"none", b"/", None, ms_rec | ms_private, None) != 0:
                    raise OSError(ctypes.get_errno(), "mount --make-rprivate /")
                for local, target in binds:
                    os.makedirs(target, exist_ok=True)
                    if libc.mount(local.encode(), target.encode(), None, ms_bind, None) != 0:
                        raise OSError(ctypes.get_errno(), f"bind mount {local} on {target}")
            if os.getuid() == 0 and self.uid is not None:
                gid = self.gid if self.gid is not None else self.uid
                groups = [g for g in (gid, self.fs_group) if g is not None]
                os.setgroups(groups)
                os.setgid(gid)
                os.setuid(self.uid)

        self.proc = subprocess.Popen(argv, env=env, stdout=self.stdout, stderr=self.stderr,
                                     preexec_fn=drop_privileges, cwd="/")
        self.thread = threading.Thread(target=self._sync_loop, daemon=True)
        self.thread.start()

    def _sync_loop(self) -> None:
        while not self.stop_event.wait(self.sync_interval):
            try:
                self.sync()
                self.report_readiness()
            except Exception as e:  # a transient API error; the next round retries
                print(f"podemu: sync failed: {e}", file=sys.stderr)

    def probe(self) -> bool:
        if self.probe_url is None or self.proc is None or self.proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(self.probe_url, timeout=1) as r:
                return 200 <= r.status < 400
        except OSError:
            return False

    def report_readiness(self, ready: bool | None = None) -> None:
        """Writes the probe's answer into the status of the pod this process stands for (the
        newest of the Deployment's live pods, chosen once), when it changed."""
        ready = self.probe() if ready is None else ready
        if ready == self.reported:
            return
        if self.pod_name is None:
            labels = ",".join(f"{k}={v}" for k, v in self.selector.items())
            pods = [p for p in self._kubectl("get", "pods", "-l", labels)["items"]
                    if not p["metadata"].get("deletionTimestamp")]
            if not pods:
                return
            self.pod_name = max(pods, key=lambda p: p["metadata"]["creationTimestamp"])["metadata"]["name"]
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        flag = "True" if ready else "False"
        status = {"status": {
            # The process listens on this host's loopback; the operator asks its admin port.
            "phase": "Running", "startTime": now, "podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}],
            "conditions": [{"type": t, "status": v, "lastTransitionTime": now} for t, v in
                           [("PodScheduled", "True"), ("Initialized", "True"),
                            ("ContainersReady", flag), ("Ready", flag)]],
            "containerStatuses": [{"name": self.container_name, "ready": ready, "started": True,
                                   "restartCount": 0, "image": self.template["spec"]["containers"][0]["image"],
                                   "imageID": "", "state": {"running": {"startedAt": now}}}],
        }}
        self._kubectl("patch", "pod", self.pod_name, "--subresource=status", "--type=merge",
                      "-p", json.dumps(status))
        self.reported = ready

    def sync(self) -> bool:
        """Writes every Secret volume whose Secret changed. Returns whether anything changed."""
        changed = False
        for name, (local, secret_name, mode) in self.mounts.items():
            s = self._kubectl("get", "secret", secret_name)
            rv = s["metadata"]["resourceVersion"]
            if self.versions.get(secret_name) == rv:
                continue
            files = {k: base64.b64decode(v) for k, v in (s.get("data") or {}).items()}
            self._atomic_write(local, files, mode)
            self.versions[secret_name] = rv
            self.syncs += 1
            changed = True
        return changed

    def _atomic_write(self, target: Path, files: dict, mode: int) -> None:
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("..%Y_%m_%d_%H_%M_%S.%f")
        new = target / stamp
        new.mkdir()
        for k, v in files.items():
            p = new / k
            p.write_bytes(v)
            os.chmod(p, mode)
            if self.fs_group is not None:
                os.chown(p, 0, self.fs_group)
        os.chmod(new, 0o755)
        old = None
        data = target / "..data"
        if data.is_symlink():
            old = target / os.readlink(data)
        tmp = target / "..data_tmp"
        if tmp.is_symlink():
            tmp.unlink()
        os.symlink(stamp, tmp)
        os.rename(tmp, data)
        for k in files:
            link = target / k
            if not link.is_symlink():
                os.symlink(f"..data/{k}", link)
        for entry in target.iterdir():
            if entry.is_symlink() and not entry.name.startswith("..") and entry.name not in files:
                entry.unlink()
        if old is not None and old.exists():
            for f in old.iterdir():
                f.unlink()
            old.rmdir()

    def stop(self) -> int | None:
        self.stop_event.set()
        if getattr(self, "thread", None):
            self.thread.join(10)
        if self.reported:
            try:
                self.report_readiness(False)
            except Exception as e:
                print(f"podemu: could not report the pod unready: {e}", file=sys.stderr)
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(self.grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode if self.proc else None

    def audit(self, kind: str | None = None) -> list[dict]:
        out = []
        # The last line may still be being written: only complete lines count.
        for line in (self.dir / "stdout.log").read_text().split("\n")[:-1]:
            if line.startswith("{"):
                rec = json.loads(line)
                if kind is None or rec.get("event") == kind:
                    out.append(rec)
        return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--namespace", default="default")
    ap.add_argument("--deployment", required=True)
    ap.add_argument("--dir", type=Path, default=None)
    ap.add_argument("--bin", type=Path, default=ROOT / "target" / "release")
    a = ap.parse_args()
    dir = a.dir or ROOT / "e2e" / ".work" / "pods" / f"{a.namespace}-{a.deployment}"
    emu = PodEmulator(a.namespace, a.deployment, dir, bin_dir=a.bin)
    emu.start()
    print(f"podemu: running {' '.join(emu.argv)} as uid {emu.uid}; stdout/stderr in {dir}; Ctrl-C stops",
          file=sys.stderr)
    signal.signal(signal.SIGTERM, lambda *_: emu.stop_event.set())
    try:
        while emu.proc.poll() is None and not emu.stop_event.is_set():
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    return emu.stop() or 0


if __name__ == "__main__":
    sys.exit(main())
