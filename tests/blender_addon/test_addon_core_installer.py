"""core/installer.py without Blender: the torch-build choice (pure), the default folder, the
failure classes, and real runs that fail or are cancelled (a real venv, real pip against a local
package index that refuses or stalls) and leave nothing that claims to be an engine."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from blender_harness import ROOT

from blender_addon.core import installer as ins


# ---- the torch build: Linux / Windows / macOS x NVIDIA / Apple / none ----------------------

@pytest.mark.parametrize("system,machine,gpu,device,index,confirm,supported", [
    # Linux: PyPI's x86-64 torch is the CUDA build; without a GPU, PyTorch's CPU index
    ("Linux", "x86_64", "nvidia", "cuda", None, False, True),
    ("Linux", "x86_64", "apple", "cpu", ins.CPU_INDEX, False, True),
    ("Linux", "x86_64", "none", "cpu", ins.CPU_INDEX, False, True),
    ("Linux", "aarch64", "nvidia", "cuda", ins.CUDA_INDEX, False, True),
    ("Linux", "aarch64", "none", "cpu", None, False, True),
    # Windows: PyPI's torch is CPU-only; CUDA comes from PyTorch's index, after a yes
    ("Windows", "AMD64", "nvidia", "cuda", ins.CUDA_INDEX, True, True),
    ("Windows", "AMD64", "apple", "cpu", None, False, True),
    ("Windows", "AMD64", "none", "cpu", None, False, True),
    ("Windows", "ARM64", "nvidia", "cpu", None, False, True),
    # macOS: MPS on Apple silicon; Intel Macs have no torch 2.13
    ("Darwin", "arm64", "apple", "mps", None, False, True),
    ("Darwin", "arm64", "none", "mps", None, False, True),
    ("Darwin", "arm64", "nvidia", "mps", None, False, True),
    ("Darwin", "x86_64", "none", "cpu", None, False, False),
    ("Darwin", "x86_64", "nvidia", "cpu", None, False, False),
    ("Darwin", "x86_64", "apple", "cpu", None, False, False),
    ("FreeBSD", "amd64", "none", "cpu", None, False, False),
])
def test_choose_torch(system, machine, gpu, device, index, confirm, supported):
    c = ins.choose_torch(system, machine, gpu)
    assert (c.device, c.index_url, bool(c.confirm), c.supported) == \
        (device, index, confirm, supported)
    assert c.note
    if confirm:          # the question names the index the user agrees to
        assert ins.CUDA_INDEX in c.confirm and "CPU only" in c.confirm


def test_default_folder_is_the_users_data_folder():
    assert ins.default_folder("Windows", {"LOCALAPPDATA": r"C:\Users\a\AppData\Local"},
                              "C:/Users/a") == Path(r"C:\Users\a\AppData\Local") \
        / "ZImageStudio" / "engine"
    assert ins.default_folder("Darwin", {}, "/Users/a") == \
        Path("/Users/a/Library/Application Support/ZImageStudio/engine")
    assert ins.default_folder("Linux", {}, "/home/a") == \
        Path("/home/a/.local/share/zimage-studio/engine")
    assert ins.default_folder("Linux", {"XDG_DATA_HOME": "/data"}, "/home/a") == \
        Path("/data/zimage-studio/engine")
    assert ins.venv_python(Path("e/venv"), "Windows") == Path("e/venv/Scripts/python.exe")
    assert ins.venv_python(Path("e/venv"), "Linux") == Path("e/venv/bin/python")


@pytest.mark.parametrize("output,code", [
    ("ERROR: Could not install packages due to an OSError: [Errno 28] No space left on device",
     "disk_space"),
    ("WARNING: Retrying ... ProxyError('Cannot connect to proxy.', OSError('Tunnel connection "
     "failed: 407 Proxy Authentication Required'))", "proxy"),
    ("ERROR: Could not install packages due to an OSError: [Errno 13] Permission denied: "
     "'/opt/x'", "folder_not_writable"),
    ("WARNING: Retrying ... NewConnectionError('<...>: Failed to establish a new connection: "
     "[Errno -3] Temporary failure in name resolution')\nERROR: Could not find a version that "
     "satisfies the requirement torch==2.13.0 (from versions: none)", "index_unreachable"),
    ("ERROR: HTTP error 403 while getting https://mirror/torch.whl", "index_unreachable"),
    ("RuntimeError: Found no NVIDIA driver on your system.", "no_nvidia_driver"),
    ("ERROR: Could not find a version that satisfies the requirement torch==2.13.0 (from "
     "versions: 2.5.0)\nERROR: No matching distribution found for torch==2.13.0", "no_build"),
    ("something else went wrong", "install_failed"),
])
def test_classify_names_the_cause_and_what_to_try(output, code):
    f = ins.classify(output, "torch")
    assert f.code == code
    assert f.text.startswith("The engine install failed while installing pytorch.")
    assert f.hint and not f.hint.endswith(" ")


def test_installed_needs_the_marker_and_its_python(tmp_path):
    assert ins.installed(tmp_path) is None
    (tmp_path / ins.MARKER).write_text('{"python": "%s"}' % sys.executable.replace("\\", "/"))
    assert ins.installed(tmp_path)["python"]
    (tmp_path / ins.MARKER).write_text('{"python": "/nowhere/python"}')
    assert ins.installed(tmp_path) is None
    (tmp_path / ins.MARKER).write_text("{half")
    assert ins.installed(tmp_path) is None


# ---- real runs that must not leave an engine behind ----------------------------------------

class _Index(http.server.BaseHTTPRequestHandler):
    mode = "refuse"

    def do_GET(self):
        if self.mode == "stall":
            time.sleep(30)
        self.send_error(403, "Forbidden")

    def log_message(self, *args):
        pass


@pytest.fixture
def local_index(monkeypatch):
    """A package index on loopback; pip sees only it (no pip.conf, no find-links)."""
    servers = []

    def make(mode: str) -> str:
        handler = type("H", (_Index,), {"mode": mode})
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        srv.daemon_threads = True
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return f"http://127.0.0.1:{srv.server_address[1]}/simple"

    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    monkeypatch.delenv("PIP_EXTRA_INDEX_URL", raising=False)
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_DEFAULT_TIMEOUT", "5")
    yield make
    for srv in servers:
        srv.shutdown()


def _wheel(tmp_path) -> str:
    out = tmp_path / "dist"
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import build_addon
    finally:
        sys.path.pop(0)
    return str(build_addon.build_engine_wheel(out))


def test_a_refusing_index_fails_with_what_to_try_and_leaves_no_engine(tmp_path, local_index):
    folder = tmp_path / "engine"
    events = []
    run = ins.Installer(ins.Options(folder=folder, source=_wheel(tmp_path), gpu="none",
                                    torch="pypi", index_url=local_index("refuse")),
                        on_event=events.append)
    result = run.run()
    assert result.kind == "failed", result.message
    assert result.failure.code == "index_unreachable", result.message
    assert "installing pytorch" in result.message.lower()
    assert "pypi.org" in result.failure.hint
    # progress moved before the failure; the venv this run made is gone; no marker
    fractions = [e.fraction for e in events if e.kind == "progress"]
    assert fractions == sorted(fractions) and fractions[-1] > 0.05
    assert not (folder / ins.VENV_DIR).exists()
    assert not (folder / ins.MARKER).exists() and ins.installed(folder) is None
    log = (folder / ins.LOG_NAME).read_text()
    assert "from versions: none" in log and "== failed" in log
    assert "removing the half-made environment" in log


def test_cancel_stops_pip_and_removes_the_new_environment(tmp_path, local_index):
    folder = tmp_path / "engine"
    run = ins.Installer(ins.Options(folder=folder, source=_wheel(tmp_path), gpu="none",
                                    torch="pypi", index_url=local_index("stall")))
    run.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any(
            e.step == "torch" for e in run.events() if e.kind == "progress"):
        time.sleep(0.1)
    time.sleep(1.0)             # pip is waiting for the index now
    t0 = time.monotonic()
    run.cancel()
    run.join(30)
    assert not run.running and time.monotonic() - t0 < 20
    assert run.result.kind == "cancelled"
    assert not (folder / ins.VENV_DIR).exists() and not (folder / ins.MARKER).exists()


def test_an_intel_mac_or_a_missing_confirmation_stops_before_anything_is_made(tmp_path,
                                                                             monkeypatch):
    monkeypatch.setattr(ins.platform, "system", lambda: "Windows")
    monkeypatch.setattr(ins.platform, "machine", lambda: "AMD64")
    run = ins.Installer(ins.Options(folder=tmp_path / "e", source="x.whl", gpu="nvidia"))
    result = run.run()
    assert result.failure.code == "needs_confirmation"
    assert ins.CUDA_INDEX in result.message
    assert not (tmp_path / "e" / ins.VENV_DIR).exists()
    monkeypatch.setattr(ins.platform, "system", lambda: "Darwin")
    monkeypatch.setattr(ins.platform, "machine", lambda: "x86_64")
    result = ins.Installer(ins.Options(folder=tmp_path / "e", source="x.whl")).run()
    assert result.failure.code == "unsupported" and "Intel Macs" in result.message


def test_not_enough_disk_space_is_said_before_anything_is_made(tmp_path, monkeypatch):
    monkeypatch.setattr(ins.shutil, "disk_usage",
                        lambda p: type("U", (), {"free": 1 << 30})())
    result = ins.Installer(ins.Options(folder=tmp_path / "e", source="x.whl",
                                       gpu="none")).run()
    assert result.failure.code == "disk_space" and "1.0 GB free" in result.message
    assert not (tmp_path / "e" / ins.VENV_DIR).exists()


def test_remove_deletes_the_environment_and_refuses_other_folders(tmp_path):
    folder = tmp_path / "engine"
    res = ins.Installer(ins.Options(folder=folder, action=ins.REMOVE)).run()
    assert res.kind == "failed" and res.failure.code == "not_installed"
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    res = ins.Installer(ins.Options(folder=mine, action=ins.REMOVE)).run()
    assert res.failure.code == "not_installed" and (mine / "notes.txt").exists()
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder / "venv")],
                   check=True)
    py = ins.venv_python(folder / "venv")
    (folder / ins.MARKER).write_text('{"python": "%s"}' % str(py).replace("\\", "/"))
    assert ins.installed(folder) is not None
    res = ins.Installer(ins.Options(folder=folder, action=ins.REMOVE)).run()
    assert res.kind == "done", res.message
    assert not folder.exists()


def test_the_engine_wheel_carries_the_packages_and_pyprojects_requirements(tmp_path):
    import base64
    import hashlib
    import tomllib
    import zipfile
    whl = Path(_wheel(tmp_path))
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert whl.name == f"zimage_studio-{project['version']}-py3-none-any.whl"
    with zipfile.ZipFile(whl) as zf:
        names = set(zf.namelist())
        for want in ("engine/__main__.py", "engine/server/loop.py", "protocol/client.py",
                     "protocol/PROTOCOL.md"):
            assert want in names
        assert any(n.startswith("engine/configs/") and n.endswith(".json") for n in names)
        assert not any("__pycache__" in n for n in names)
        info = f"zimage_studio-{project['version']}.dist-info"
        meta = zf.read(f"{info}/METADATA").decode()
        for dep in project["optional-dependencies"]["engine"]:
            assert f'Requires-Dist: {dep}; extra == "engine"' in meta
        for row in zf.read(f"{info}/RECORD").decode().splitlines():
            name, digest, size = row.split(",")
            if digest:
                data = zf.read(name)
                assert digest == "sha256=" + base64.urlsafe_b64encode(
                    hashlib.sha256(data).digest()).rstrip(b"=").decode() and int(size) == len(data)


def test_a_python_that_cannot_make_a_venv_falls_back_to_a_system_python(tmp_path, local_index):
    if not any(ins._python_ok(p) for p in ins.system_pythons()):
        pytest.skip("no system Python 3.11+ here")
    folder = tmp_path / "engine"
    broken = tmp_path / "python-without-venv"
    broken.write_text("#!/bin/sh\necho 'No module named venv' >&2\nexit 1\n")
    broken.chmod(0o755)
    result = ins.Installer(ins.Options(folder=folder, source=_wheel(tmp_path), gpu="none",
                                       torch="pypi", python=str(broken),
                                       index_url=local_index("refuse"))).run()
    # the venv step passed with the fallback; the refusing index stops it at PyTorch
    assert result.failure.code == "index_unreachable", result.message
    log = (folder / ins.LOG_NAME).read_text()
    assert "No module named venv" in log and "instead" in log


def test_update_keeps_an_installed_torch_without_asking_again(tmp_path, monkeypatch):
    """Windows + NVIDIA: Install asks about the CUDA index; Update of an environment that
    already has torch does not (it keeps that torch). The commands are recorded, not run
    (a stand-in for pip: this machine has no Windows and no CUDA torch)."""
    monkeypatch.setattr(ins.platform, "system", lambda: "Windows")
    monkeypatch.setattr(ins.platform, "machine", lambda: "AMD64")
    run = ins.Installer(ins.Options(folder=tmp_path / "e", source="x.whl", gpu="nvidia",
                                    action=ins.UPDATE))
    monkeypatch.setattr(run, "_torch_version", lambda: "2.13.0+cu128")
    monkeypatch.setattr(run, "_check_space", lambda device: None)
    calls = []
    monkeypatch.setattr(run, "_run", lambda step, cmd: calls.append((step, cmd)) or
                        'ZIMAGE-VERIFY {"torch": "2.13.0+cu128", "cuda": true, "mps": false}')
    monkeypatch.setattr(run, "_make_venv", lambda: (tmp_path / "e" / "venv").mkdir())
    result = run.run()
    assert result.kind == "done", result.message
    assert [s for s, _ in calls] == ["engine", "engine", "verify"]     # no torch step
    assert (tmp_path / "e" / ins.MARKER).is_file()
    assert "runs on CUDA" in result.message


def test_the_terminal_installer_says_what_failed_and_where_the_log_is(tmp_path):
    """scripts/install.py (no bash): the same installer, its outcome and hint on stderr."""
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "install.py"), "--remove",
                          "--dir", str(tmp_path / "nothing")], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 1
    assert "No engine is installed in" in res.stderr and "What to try:" in res.stderr
    assert "Log:" in res.stderr and not (tmp_path / "nothing" / ins.MARKER).exists()


def test_an_nvidia_gpu_without_its_driver_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(ins.platform, "system", lambda: "Linux")
    monkeypatch.setattr(ins.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(ins, "detect_gpu", lambda system=None: ("none", True))
    result = ins.Installer(ins.Options(folder=tmp_path / "e", source="x.whl")).run()
    assert result.failure.code == "no_nvidia_driver" and "no NVIDIA driver" in result.message
    assert "CPU build" in result.failure.hint
    assert not (tmp_path / "e" / ins.VENV_DIR).exists()
    # choosing the CPU build goes past that check (to the disk-space check here)
    monkeypatch.setattr(ins.shutil, "disk_usage", lambda p: type("U", (), {"free": 0})())
    result = ins.Installer(ins.Options(folder=tmp_path / "e", source="x.whl",
                                       torch="cpu")).run()
    assert result.failure.code == "disk_space"
