#!/usr/bin/env python3
"""Install, update or remove the Z-Image engine from a terminal, on Windows, macOS and Linux
(no bash). The same code as the add-on's "Install Engine" button: blender_addon/core/installer.py.

    python scripts/install.py                     # the engine into your user data folder
    python scripts/install.py --dir D:\\zimage     # ... or another folder
    python scripts/install.py --update            # new code from this checkout, same folder
    python scripts/install.py --remove
    python scripts/install.py --dev [--extras engine,test]   # developers: .venv in the checkout,
                                                  # editable (what scripts/setup.sh runs)

The environment's Python is the one running this script (3.11 or newer). The engine's Python is
printed at the end: put it into the add-on's preferences (Engine Python), or run
`<that python> -m engine generate ...`.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from blender_addon.core import installer as ins  # noqa: E402  (stdlib only, no bpy)


def dev_stamp(venv: Path, extras: str) -> Path:
    digest = hashlib.sha1((ROOT / "pyproject.toml").read_bytes()).hexdigest()[:12]
    return venv / f".installed-{extras}-{digest}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    act = ap.add_mutually_exclusive_group()
    act.add_argument("--update", action="store_true", help="update the engine in --dir")
    act.add_argument("--remove", action="store_true", help="remove the engine from --dir")
    ap.add_argument("--dir", type=Path, default=None,
                    help=f"install folder (default {ins.default_folder()})")
    ap.add_argument("--dev", action="store_true",
                    help="developer checkout: .venv here, editable install, no install folder")
    ap.add_argument("--extras", default="engine", help="extras of the package (engine,test)")
    ap.add_argument("--source", default=str(ROOT),
                    help="the engine package: a wheel or a project folder (default: this "
                    "checkout)")
    ap.add_argument("--torch", choices=["auto", "cpu", "pypi"], default="auto",
                    help="auto: the build for this machine (CUDA/MPS/CPU); cpu: the CPU build; "
                    "pypi: whatever pip's configured index has")
    ap.add_argument("--index-url", default=None, help="a package index mirror for everything")
    ap.add_argument("--yes", action="store_true",
                    help="answer yes to the CUDA-index question (Windows with an NVIDIA GPU)")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every pip line")
    ap.add_argument("-q", "--quiet", action="store_true", help="print only the outcome")
    args = ap.parse_args(argv)

    action = ins.REMOVE if args.remove else ins.UPDATE if args.update else ins.INSTALL
    if args.dev:
        venv = ROOT / ".venv"
        stamp = dev_stamp(venv, args.extras)
        if action == ins.INSTALL and stamp.is_file():
            return 0                # re-running is cheap, as before
        opts = ins.Options(folder=ROOT / ".cache" / "install", venv=venv, action=action,
                           source=str(ROOT), extras=args.extras, editable=True,
                           torch=args.torch, index_url=args.index_url, confirmed=args.yes)
    else:
        stamp = None
        opts = ins.Options(folder=args.dir or ins.default_folder(), action=action,
                           source=args.source, extras=args.extras, torch=args.torch,
                           index_url=args.index_url, confirmed=args.yes)

    last = [""]

    def show(ev: ins.Event) -> None:
        if args.quiet or ev.kind != "progress":
            return
        text = ev.message if args.verbose else ins.STEP_LABELS.get(ev.step, ev.step)
        if text != last[0]:
            last[0] = text
            print(f"[{ev.fraction * 100:3.0f}%] {text}", flush=True)

    run = ins.Installer(opts, on_event=show)
    try:
        result = run.run()
    except KeyboardInterrupt:
        run.cancel()
        return 130
    if result.kind == "failed" and result.failure and result.failure.code == \
            "needs_confirmation" and sys.stdin.isatty():
        if input(result.failure.text + " [y/N] ").strip().lower() in ("y", "yes"):
            opts.confirmed = True
            result = ins.Installer(opts, on_event=show).run()
    if result.kind == "done":
        if stamp is not None:
            stamp.touch()
        if not args.quiet or action != ins.INSTALL or not args.dev:
            print(result.message)
        if action != ins.REMOVE and not args.dev:
            print(f"Engine Python: {run.python}\nEngine Folder: {run.folder}")
        return 0
    print(result.message, file=sys.stderr)
    if result.failure and result.failure.code == "needs_confirmation":
        print("What to try: run again with --yes to use it, or with --torch cpu.",
              file=sys.stderr)
    elif result.failure:
        print(f"What to try: {result.failure.hint}", file=sys.stderr)
    print(f"Log: {run.log_path}", file=sys.stderr)
    return 1 if result.kind == "failed" else 130


if __name__ == "__main__":
    sys.exit(main())
