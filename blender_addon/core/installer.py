"""Install, update and remove the engine's own Python environment. Standard library only.

One implementation for every platform and every front end: the add-on's preferences run it on a
worker thread (blender/install.py), `python scripts/install.py` runs it from a terminal, and
scripts/setup.sh calls that script for the developer checkout.

    <folder>/venv/              the engine's virtual environment (torch, transformers, the engine)
    <folder>/install.log        everything pip said, newest run last
    <folder>/zimage-engine.json written last, only when every step succeeded: the one thing that
                                says "an engine is installed here" (Remove deletes it first)

The environment's Python is the one running this code: in Blender, Blender's bundled Python
(3.11 in 4.2-5.0, 3.13 in 5.1+; always there, no system Python needed); in a terminal, the
Python that runs scripts/install.py. The venv refers to that Python's installation, so after
deleting that Blender version "Update Engine" recreates the venv.
"""

from __future__ import annotations

import json
import os
import platform
import queue
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

MARKER = "zimage-engine.json"
LOG_NAME = "install.log"
VENV_DIR = "venv"
TORCH_VERSION = "2.13.0"         # pinned: a managed install is the same everywhere
TORCH_RANGE = ((2, 13), (2, 15))  # an existing torch in [2.13, 2.15) is kept (README)
CUDA_INDEX = "https://download.pytorch.org/whl/cu128"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
# free space the environment needs (torch with its CUDA libraries is the bulk)
NEED_BYTES = {"cuda": 8 << 30, "mps": 3 << 30, "cpu": 3 << 30}

INSTALL, UPDATE, REMOVE = "install", "update", "remove"


# ---- which torch -------------------------------------------------------------------------

@dataclass(frozen=True)
class TorchChoice:
    device: str                 # "cuda" | "mps" | "cpu"
    index_url: str | None       # None: PyPI (or the index pip is configured with)
    confirm: str | None = None  # a question the user must say yes to before installing
    note: str = ""
    supported: bool = True


def choose_torch(system: str, machine: str, gpu: str) -> TorchChoice:
    """The torch build for a machine. system: platform.system() ("Linux", "Windows",
    "Darwin"); machine: platform.machine(); gpu: "nvidia", "apple" or "none"."""
    arch = machine.lower()
    x64 = arch in ("x86_64", "amd64", "x64")
    if system == "Darwin":
        if arch == "arm64":
            return TorchChoice("mps", None, note="PyPI's macOS torch runs on Apple silicon "
                               "(MPS).")
        return TorchChoice("cpu", None, supported=False,
                           note="PyTorch ships no builds for Intel Macs after 2.2; the engine "
                           "needs torch 2.13. Use an Apple silicon Mac, or serve the engine "
                           "from another machine (Preferences > Engine Address).")
    if system == "Windows":
        if gpu == "nvidia" and x64:
            return TorchChoice(
                "cuda", CUDA_INDEX,
                confirm=f"PyPI's torch for Windows runs on the CPU only. Install the CUDA "
                f"build from {CUDA_INDEX} (PyTorch's own index, about 3 GB) for the NVIDIA GPU?",
                note="CUDA build from PyTorch's index.")
        return TorchChoice("cpu", None, note="PyPI's Windows torch (CPU).")
    if system == "Linux":
        if gpu == "nvidia":
            if x64:
                return TorchChoice("cuda", None, note="PyPI's Linux x86-64 torch is a CUDA "
                                   "build.")
            return TorchChoice("cuda", CUDA_INDEX, note="CUDA build from PyTorch's index.")
        if x64:     # PyPI's Linux wheel would pull ~3 GB of CUDA libraries for nothing
            return TorchChoice("cpu", CPU_INDEX, note="CPU build from PyTorch's index.")
        return TorchChoice("cpu", None, note="PyPI's torch (CPU).")
    return TorchChoice("cpu", None, supported=False,
                       note=f"No PyTorch builds for {system or 'this system'}.")


def detect_gpu(system: str | None = None) -> tuple[str, bool]:
    """("nvidia" | "apple" | "none", an NVIDIA GPU is present but its driver is not)."""
    system = system or platform.system()
    if system == "Darwin":
        return ("apple" if platform.machine().lower() == "arm64" else "none"), False
    smi = shutil.which("nvidia-smi")
    if smi is None and system == "Windows":
        cand = Path(os.environ.get("SystemRoot", r"C:\Windows")) / "System32" / "nvidia-smi.exe"
        smi = str(cand) if cand.is_file() else None
    if smi:
        try:
            out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10,
                                 **_no_window())
            if out.returncode == 0 and "GPU" in out.stdout:
                return "nvidia", False
        except (OSError, subprocess.SubprocessError):
            pass
    if system == "Linux":
        if Path("/proc/driver/nvidia/version").exists():
            return "nvidia", False
        return "none", _linux_nvidia_pci()
    return "none", False


def _linux_nvidia_pci() -> bool:
    """An NVIDIA display controller on the PCI bus (vendor 0x10de, class 0x03xxxx)."""
    for dev in Path("/sys/bus/pci/devices").glob("*"):
        try:
            if (dev / "vendor").read_text().strip() == "0x10de" and \
                    (dev / "class").read_text().strip().startswith("0x03"):
                return True
        except OSError:
            continue
    return False


# ---- where -------------------------------------------------------------------------------

def default_folder(system: str | None = None, env: dict | None = None,
                   home: str | None = None) -> Path:
    """The user's data folder (survives Blender updates and the add-on's removal)."""
    system = system or platform.system()
    env = os.environ if env is None else env
    home_dir = Path(home or os.path.expanduser("~"))
    if system == "Windows":
        base = Path(env.get("LOCALAPPDATA") or home_dir / "AppData" / "Local")
        return base / "ZImageStudio" / "engine"
    if system == "Darwin":
        return home_dir / "Library" / "Application Support" / "ZImageStudio" / "engine"
    return Path(env.get("XDG_DATA_HOME") or home_dir / ".local" / "share") / "zimage-studio" \
        / "engine"


def venv_python(venv: Path, system: str | None = None) -> Path:
    if (system or platform.system()) == "Windows":
        return venv / "Scripts" / "python.exe"
    return venv / "bin" / "python"


def base_python() -> str:
    """The Python to build the venv from: the running one (in Blender: its bundled Python;
    sys.executable is that binary since Blender 2.91)."""
    exe = Path(sys.executable)
    if "python" in exe.name.lower():
        return str(exe)
    ver = f"{sys.version_info[0]}.{sys.version_info[1]}"
    for cand in (Path(sys.prefix) / "bin" / f"python{ver}", Path(sys.prefix) / "bin" / "python.exe",
                 Path(sys.prefix) / "python.exe"):
        if cand.is_file():
            return str(cand)
    return str(exe)


def system_pythons() -> list[list[str]]:
    """Other Pythons 3.11+ on this machine, best first (the Windows launcher `py` included)."""
    out = []
    for name in ("python3.12", "python3.11", "python3.13", "python3"):
        path = shutil.which(name)
        if path:
            out.append([path])
    if shutil.which("py"):
        out += [[shutil.which("py"), f"-3.{m}"] for m in (12, 11, 13)]
    return out


def _python_ok(cmd: list[str]) -> bool:
    try:
        return subprocess.run([*cmd, "-c", "import sys, venv; sys.exit(sys.version_info < "
                               "(3, 11))"], capture_output=True, timeout=30,
                              **_no_window()).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def installed(folder: str | os.PathLike) -> dict | None:
    """The marker's record when a complete engine is installed in folder, else None."""
    try:
        info = json.loads((Path(folder) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or not Path(str(info.get("python", ""))).is_file():
        return None
    return info


# ---- what went wrong ---------------------------------------------------------------------

@dataclass(frozen=True)
class Failure:
    code: str
    text: str
    hint: str


def classify(output: str, step: str) -> Failure:
    """What failed and what to try, from the tail of a step's output."""
    low = output.lower()
    what = f"The engine install failed while {STEP_LABELS.get(step, step).lower()}."
    if "no space left on device" in low or "errno 28" in low or "not enough space" in low:
        return Failure("disk_space", what + " The disk is full.",
                       "Free some space (the environment needs up to 8 GB; the model later "
                       "about 33 GB in the Hugging Face cache) or choose a folder on another "
                       "disk.")
    if "proxyerror" in low or "407 proxy" in low or "tunnel connection failed" in low:
        return Failure("proxy", what + " The proxy refused the connection.",
                       "Check the proxy settings (HTTPS_PROXY) or ask your network admin to "
                       "allow pypi.org, files.pythonhosted.org and download.pytorch.org.")
    if any(s in low for s in ("permission denied", "errno 13", "access is denied",
                              "read-only file system", "errno 30")):
        return Failure("folder_not_writable", what + " The folder is not writable.",
                       "Choose a folder you can write to (the default is in your user data "
                       "folder).")
    if any(s in low for s in ("failed to establish a new connection", "name resolution",
                              "name or service not known", "getaddrinfo failed",
                              "connection refused", "connectionerror", "read timed out",
                              "could not fetch url", "403 client error", "http error 403",
                              "forbidden", "connecttimeout", "certificate verify failed",
                              "network is unreachable", "(from versions: none)")):
        # pip hides an index's refusal (403) at normal verbosity: "from versions: none"
        return Failure("index_unreachable", what + " The package index could not be reached, "
                       "refused the download or offered nothing.",
                       "Check the internet connection, a proxy (HTTPS_PROXY) or firewall; "
                       "pypi.org, files.pythonhosted.org and download.pytorch.org must be "
                       "reachable. Then click Install again.")
    if "cuda driver" in low or "nvidia driver" in low or "found no nvidia driver" in low:
        return Failure("no_nvidia_driver", what + " The NVIDIA driver is missing or too old.",
                       "Install the current NVIDIA driver (nvidia.com/drivers), or choose the "
                       "CPU build.")
    if "no matching distribution" in low or "could not find a version" in low:
        return Failure("no_build", what + " No matching package for this Python or system.",
                       f"The engine needs Python 3.11 or newer and torch {TORCH_VERSION} for "
                       "this platform; see the log.")
    tail = [ln for ln in output.strip().splitlines() if ln.strip()][-1:] or ["(no output)"]
    return Failure("install_failed", what + f" {tail[0].strip()[:300]}",
                   "Open the log for details; Install again retries from the start.")


# ---- the plan ----------------------------------------------------------------------------

STEP_LABELS = {"check": "Checking the folder", "venv": "Creating the environment",
               "torch": "Installing PyTorch", "engine": "Installing the engine",
               "verify": "Checking the engine", "remove": "Removing the engine"}
STEP_WEIGHTS = {"check": 0.01, "venv": 0.07, "torch": 0.5, "engine": 0.37, "verify": 0.05,
                "remove": 1.0}

VERIFY = ("import json, sys, torch, engine, transformers, huggingface_hub, safetensors, zmq; "
          "print('ZIMAGE-VERIFY ' + json.dumps({'torch': torch.__version__, "
          "'cuda': torch.cuda.is_available(), "
          "'mps': bool(getattr(torch.backends, 'mps', None) and torch.backends.mps.is_available()),"
          " 'python_version': sys.version.split()[0]}))")


@dataclass
class Options:
    folder: Path
    action: str = INSTALL
    source: str = ""                # the engine: a wheel, or a project folder
    extras: str = "engine"
    editable: bool = False          # the developer checkout (scripts/setup.sh)
    venv: Path | None = None        # default <folder>/venv
    python: str = ""                # default base_python()
    torch: str = "auto"             # "auto" | "cpu" | "pypi" (pip's configured index only)
    gpu: str | None = None          # override detect_gpu() ("nvidia" | "apple" | "none")
    index_url: str | None = None    # a mirror for everything (pip --index-url)
    confirmed: bool = False         # the user said yes to TorchChoice.confirm
    pip_args: list[str] = field(default_factory=list)


@dataclass
class Event:
    kind: str                       # "progress" | "done" | "failed" | "cancelled"
    fraction: float = 0.0
    step: str = ""
    message: str = ""
    failure: Failure | None = None
    info: dict | None = None


class Cancelled(Exception):
    pass


class StepFailed(Exception):
    def __init__(self, failure: Failure):
        super().__init__(failure.text)
        self.failure = failure


def _no_window() -> dict:
    if sys.platform == "win32":
        return {"creationflags": getattr(subprocess, "CREATE_NO_WINDOW", 0)}
    return {}


def pip_env(base: dict | None = None) -> dict:
    """The host's Python paths must not leak into pip (Blender sets some)."""
    env = dict(os.environ if base is None else base)
    for key in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONNOUSERSITE",
                "PIP_USER", "PIP_TARGET", "PIP_PREFIX"):
        env.pop(key, None)
    env["PYTHONUNBUFFERED"] = "1"
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


class Installer:
    """Runs one action (install, update, remove) and reports Events. run() blocks; start()
    runs it on a daemon thread and events() drains what it reported. cancel() stops the
    running pip (the half-made environment of a fresh install is removed)."""

    def __init__(self, opts: Options, on_event=None):
        self.opts = opts
        self.folder = Path(opts.folder).expanduser()
        self.venv = Path(opts.venv) if opts.venv else self.folder / VENV_DIR
        self.python = venv_python(self.venv)
        self.log_path = self.folder / LOG_NAME
        self._queue: queue.Queue[Event] = queue.Queue()
        self._on_event = on_event
        self._cancel = threading.Event()
        self._proc: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None
        self._log = None
        self.fraction = 0.0
        self.result: Event | None = None
        self.choice: TorchChoice | None = None
        self._seen: dict[str, int] = {}

    # ---- control -----------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="zimage-install", daemon=True)
        self._thread.start()

    def cancel(self) -> None:
        self._cancel.set()
        proc = self._proc
        if proc is not None and proc.poll() is None:
            try:
                proc.terminate()
            except OSError:
                pass

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def events(self) -> list[Event]:
        out = []
        while True:
            try:
                out.append(self._queue.get_nowait())
            except queue.Empty:
                return out

    # ---- the run -----------------------------------------------------------------------
    def run(self) -> Event:
        fresh = not self.venv.exists()
        try:
            if self.opts.action == REMOVE:
                self._remove()
                result = Event("done", 1.0, "remove", "The engine was removed.")
            else:
                info = self._install()
                result = Event("done", 1.0, "verify", self._done_message(info), info=info)
        except Cancelled:
            result = Event("cancelled", self.fraction, "", "The install was cancelled.")
            self._cleanup(fresh)
        except StepFailed as exc:
            result = Event("failed", self.fraction, "", exc.failure.text, failure=exc.failure)
            self._cleanup(fresh)
        except Exception as exc:       # a bug here must still end as a message
            failure = Failure("install_failed", f"The engine install failed: {exc}.",
                              "Open the log for details.")
            result = Event("failed", self.fraction, "", failure.text, failure=failure)
            self._cleanup(fresh)
        self._write_log(f"== {result.kind}: {result.message}"
                        + (f"\n   try: {result.failure.hint}" if result.failure else ""))
        if self._log is not None:
            self._log.close()
            self._log = None
        self.result = result
        self._emit(result)
        return result

    def _done_message(self, info: dict) -> str:
        verb = "updated" if self.opts.action == UPDATE else "installed"
        dev = "CUDA" if info.get("cuda") else "Apple MPS" if info.get("mps") else "the CPU"
        msg = f"The engine is {verb} (torch {info.get('torch')}, runs on {dev})."
        if self.choice and self.choice.device == "cuda" and not info.get("cuda"):
            msg += (" The CUDA build cannot see the GPU: install the current NVIDIA driver "
                    "(nvidia.com/drivers).")
        return msg

    def _emit(self, ev: Event) -> None:
        self._queue.put(ev)
        if self._on_event is not None:
            try:
                self._on_event(ev)
            except Exception:
                pass

    def _progress(self, step: str, within: float, message: str = "") -> None:
        start = sum(STEP_WEIGHTS[s] for s in self._steps[:self._steps.index(step)])
        self.fraction = min(0.99, start + STEP_WEIGHTS[step] * max(0.0, min(1.0, within)))
        self._emit(Event("progress", self.fraction, step, message or STEP_LABELS[step]))

    def _open_log(self) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "a", encoding="utf-8", errors="replace")
        except OSError as exc:
            raise StepFailed(classify(str(exc), "check")) from None
        self._write_log(f"\n== {time.strftime('%Y-%m-%d %H:%M:%S')} {self.opts.action} "
                        f"{self.folder} ({platform.system()} {platform.machine()}, Python "
                        f"{sys.version.split()[0]})")

    def _write_log(self, line: str) -> None:
        if self._log is not None:
            self._log.write(line.rstrip("\n") + "\n")
            self._log.flush()

    def _check_cancel(self) -> None:
        if self._cancel.is_set():
            raise Cancelled()

    # ---- install / update --------------------------------------------------------------
    def _install(self) -> dict:
        self._steps = ["check", "venv", "torch", "engine", "verify"]
        self._open_log()
        self._progress("check", 0.0)
        gpu, driver_missing = (self.opts.gpu, False) if self.opts.gpu else detect_gpu()
        choice = choose_torch(platform.system(), platform.machine(), gpu)
        if self.opts.torch == "cpu":
            choice = choose_torch(platform.system(), platform.machine(), "none")
        self.choice = choice
        self._write_log(f"   torch: {choice.device} from {self._torch_index() or 'PyPI'} "
                        f"({choice.note})")
        if not choice.supported:
            raise StepFailed(Failure("unsupported", choice.note, "See the README for serving "
                                     "the engine from another machine."))
        if driver_missing and choice.device == "cpu" and self.opts.torch == "auto":
            raise StepFailed(Failure(
                "no_nvidia_driver", "This machine has an NVIDIA GPU but no NVIDIA driver.",
                "Install the current NVIDIA driver (nvidia.com/drivers) and click Install "
                "again, or choose the CPU build."))
        if choice.confirm and not self.opts.confirmed and self._torch_version() is None:
            raise StepFailed(Failure("needs_confirmation", choice.confirm,
                                     "Confirm to install the CUDA build, or choose the CPU "
                                     "build."))
        if not self.opts.source:
            raise StepFailed(Failure("install_failed", "No engine package to install.",
                                     "Rebuild the add-on with scripts/build_addon.py."))
        self._check_space(choice.device)
        # from here on nothing claims to be an engine until every step has passed
        (self.folder / MARKER).unlink(missing_ok=True)
        self._check_cancel()

        self._progress("venv", 0.0)
        if self.opts.action == UPDATE or self.venv.exists():
            if not self._venv_works():
                self._write_log("   the environment does not run; recreating it")
                shutil.rmtree(self.venv, ignore_errors=True)
        if not self.venv.exists():
            self._make_venv()
        self._progress("venv", 1.0)

        self._progress("torch", 0.0)
        have = self._torch_version()
        if have is None:
            cmd = self._pip("install", f"torch=={TORCH_VERSION}")
            if self._torch_index():
                cmd += ["--extra-index-url", self._torch_index()]
            self._run("torch", cmd)
        else:
            self._write_log(f"   keeping torch {have}")
        self._progress("torch", 1.0)

        self._progress("engine", 0.0)
        spec = f"{self.opts.source}[{self.opts.extras}]" if self.opts.extras else self.opts.source
        if self.opts.editable:
            self._run("engine", self._pip("install", "-e", spec))
        else:
            self._run("engine", self._pip("install", spec))
            # same version, new code (Update): put the package itself in again
            self._run("engine", self._pip("install", "--force-reinstall", "--no-deps",
                                          self.opts.source))
        self._progress("engine", 1.0)

        self._progress("verify", 0.0)
        out = self._run("verify", [str(self.python), "-c", VERIFY])
        line = next((ln for ln in out.splitlines() if ln.startswith("ZIMAGE-VERIFY ")), "")
        try:
            info = json.loads(line.split(" ", 1)[1])
        except (IndexError, ValueError):
            raise StepFailed(classify(out, "verify")) from None
        self._check_cancel()
        info.update(python=str(self.python), folder=str(self.folder),
                    device=choice.device, index=self._torch_index() or "PyPI",
                    installed=time.strftime("%Y-%m-%d %H:%M:%S"),
                    source=os.path.basename(self.opts.source.rstrip("/\\")))
        tmp = self.folder / (MARKER + ".tmp")
        tmp.write_text(json.dumps(info, indent=2), encoding="utf-8")
        tmp.replace(self.folder / MARKER)
        self._progress("verify", 1.0)
        return info

    def _make_venv(self) -> None:
        """From the chosen Python; if that one cannot make a venv (some bundled Pythons lack
        parts of `venv`), from a system Python 3.11+ when there is one."""
        first = self.opts.python or base_python()
        try:
            self._run("venv", [first, "-m", "venv", str(self.venv)])
            return
        except StepFailed as exc:
            failure = exc
        for alt in system_pythons():
            if alt[0] == first or not _python_ok(alt):
                continue
            shutil.rmtree(self.venv, ignore_errors=True)
            self._write_log(f"   trying {' '.join(alt)} instead")
            try:
                self._run("venv", [*alt, "-m", "venv", str(self.venv)])
                return
            except StepFailed:
                continue
        raise failure

    def _torch_index(self) -> str | None:
        if self.opts.torch == "pypi" or self.choice is None:
            return None
        return self.choice.index_url

    def _pip(self, *args: str) -> list[str]:
        cmd = [str(self.python), "-m", "pip", *args, "--progress-bar", "off"]
        if self.opts.index_url:
            cmd += ["--index-url", self.opts.index_url]
        return cmd + list(self.opts.pip_args)

    def _check_space(self, device: str) -> None:
        probe = self.folder
        while not probe.exists() and probe.parent != probe:
            probe = probe.parent
        try:
            free = shutil.disk_usage(probe).free
        except OSError:
            return
        need = NEED_BYTES.get(device, NEED_BYTES["cpu"])
        if self.venv.exists():
            need //= 4          # an update replaces little
        if free < need:
            raise StepFailed(Failure(
                "disk_space", f"Not enough disk space in {probe}: {free / 2**30:.1f} GB free, "
                f"the engine needs about {need / 2**30:.0f} GB.",
                "Free some space or choose a folder on another disk (the model later needs "
                "about 33 GB in the Hugging Face cache)."))

    def _venv_works(self) -> bool:
        if not self.python.is_file():
            return False
        try:
            return subprocess.run([str(self.python), "-c", "pass"], capture_output=True,
                                  timeout=60, env=pip_env(), **_no_window()).returncode == 0
        except (OSError, subprocess.SubprocessError):
            return False

    def _torch_version(self) -> str | None:
        if not self.python.is_file():
            return None
        code = "import torch; print(torch.__version__)"
        try:
            res = subprocess.run([str(self.python), "-c", code], capture_output=True, text=True,
                                 timeout=300, env=pip_env(), **_no_window())
        except (OSError, subprocess.SubprocessError):
            return None
        if res.returncode:
            return None
        ver = res.stdout.strip().split("+")[0]
        try:
            major_minor = tuple(int(x) for x in ver.split(".")[:2])
        except ValueError:
            return None
        lo, hi = TORCH_RANGE
        return res.stdout.strip() if lo <= major_minor < hi else None

    def _run(self, step: str, cmd: list[str]) -> str:
        """Run one command, its output into the log; progress moves with pip's lines."""
        self._check_cancel()
        self._write_log(f"-- {STEP_LABELS[step]}: {' '.join(cmd[:1] + cmd[1:12])}"
                        + (" ..." if len(cmd) > 12 else ""))
        lines: list[str] = []
        seen = self._seen.get(step, 0)      # a step of two commands keeps moving forward
        try:
            self._proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, env=pip_env(),
                                          cwd=str(self.folder), **_no_window())
        except OSError as exc:
            raise StepFailed(classify(str(exc), step)) from None
        proc = self._proc
        if self._cancel.is_set():       # cancel() came while the process was being made
            proc.terminate()
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip()
            self._write_log(line)
            lines.append(line)
            del lines[:-400]
            if line.startswith(("Collecting", "Downloading", "Using cached", "Installing",
                                "Processing", "Obtaining", "Building", "Successfully")):
                seen += 1
                # no total is known in advance: approach the step's end, never reach it
                self._progress(step, 1 - 0.85 ** seen, _short(line))
            if self._cancel.is_set():
                proc.terminate()
        code = proc.wait()
        self._proc = None
        self._seen[step] = seen
        self._check_cancel()
        out = "\n".join(lines)
        if code != 0:
            raise StepFailed(classify(out, step))
        return out

    def _cleanup(self, fresh: bool) -> None:
        """After a failure or cancel: no marker; a venv this run created goes too."""
        try:
            (self.folder / MARKER).unlink(missing_ok=True)
        except OSError:
            pass
        if fresh and self.opts.action != REMOVE and self.venv.exists():
            self._write_log("   removing the half-made environment")
            shutil.rmtree(self.venv, ignore_errors=True)

    # ---- remove ------------------------------------------------------------------------
    def _remove(self) -> None:
        self._steps = ["remove"]
        if not (self.folder / MARKER).exists() and not (self.venv / "pyvenv.cfg").exists():
            raise StepFailed(Failure("not_installed", f"No engine is installed in "
                                     f"{self.folder}.", "Choose the folder the engine was "
                                     "installed in."))
        self._progress("remove", 0.0)
        (self.folder / MARKER).unlink(missing_ok=True)       # first: it no longer claims
        shutil.rmtree(self.venv, ignore_errors=False, onerror=_force_remove)
        self._progress("remove", 0.9)
        self.log_path.unlink(missing_ok=True)
        try:
            self.folder.rmdir()             # only when nothing else of the user's is there
        except OSError:
            pass


def _force_remove(func, path, _exc):
    """Windows marks some files read-only; anything else that resists is left."""
    try:
        os.chmod(path, 0o700)
        func(path)
    except OSError:
        pass


def _short(line: str, limit: int = 80) -> str:
    line = " ".join(line.split())
    return line if len(line) <= limit else line[:limit - 3] + "..."
