"""`python -m protocol generate ...`: a second host app (besides Blender) built on the client.

Exit status 0 on success; otherwise one line on stderr (`error: <code>: <message>`) and
1 (engine error), 2 (bad arguments), 130 (Ctrl-C: the job is cancelled on the engine first).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

from . import download
from .errors import ProtocolError


_BAR = {"open": False}   # a progress line is on the terminal without its newline


def _bar(frac: float, label: str, width: int = 30) -> str:
    _BAR["open"] = True
    n = int(round(max(0.0, min(1.0, frac)) * width))
    return f"\r[{'#' * n}{'.' * (width - n)}] {frac * 100:5.1f}% {label:<24}"


def _load_curve(args):
    if not args.curve_server_key:
        return {}
    import zmq.auth
    server_public, _ = zmq.auth.load_certificate(args.curve_server_key)
    public, secret = zmq.auth.load_certificate(args.curve_client_key)
    if not secret:
        raise ProtocolError("unauthorized", f"{args.curve_client_key} holds no secret key")
    return {"curve_server_key": server_public, "curve_client_keys": (public, secret)}


def _lora_arg(arg: str) -> dict:
    """'name:0.8' -> {name, weight}; a name without ':' has weight 1."""
    name, sep, weight = arg.rpartition(":")
    if not sep:
        return {"name": arg, "weight": 1.0}
    try:
        return {"name": name, "weight": float(weight)}
    except ValueError:
        return {"name": arg, "weight": 1.0}


def cmd_generate(args) -> int:
    from .client import EngineClient
    from .messages import Limits
    from .request import GenerateRequest

    raw = {"prompt": args.prompt, "width": args.width, "height": args.height,
           "steps": args.steps, "seed": args.seed, "num_images": 1}
    if args.lora:
        raw["loras"] = [_lora_arg(a) for a in args.lora]
    out = args.output
    if not out.lower().endswith(".png"):
        raise ProtocolError("invalid_params", "--output must be a .png file", field="output")
    client = EngineClient(args.engine, client_name="protocol-cli", client_version="1",
                          accept_timeout_s=args.connect_timeout,
                          give_up_s=args.reconnect_timeout,
                          connection_file=args.connection_file, **_load_curve(args))
    client.start()
    # the typed request, validated once against the engine's own limits (from its welcome)
    end = time.monotonic() + args.connect_timeout
    while client.welcome is None and time.monotonic() < end:
        client.poll(timeout=0.05)
    limits = (client.welcome or {}).get("limits") or {}
    known = {f.name for f in dataclasses.fields(Limits)}
    try:
        params = GenerateRequest.from_params(raw, [], Limits(**{
            k: v for k, v in limits.items() if k in known})).to_params()
    except BaseException:
        client.close()
        raise
    job_id = client.submit(params, result_format=args.format, preview_every=0,
                           deadline_ms=int(args.timeout * 1000), live=args.live)
    show = not args.quiet
    downloading = False         # the engine reports its model download: keep that line
    end = time.monotonic() + args.timeout
    try:
        while True:
            if time.monotonic() > end:
                client.cancel(job_id)
                time.sleep(0.2)
                raise ProtocolError("deadline_exceeded", f"no result within {args.timeout:g}s")
            for ev in client.poll(timeout=0.2):
                if ev.kind == "welcome" and show:     # the engine fetching its model
                    report = download.parse((ev.data or {}).get("engine"))
                    downloading = report is not None and not report["finished"]
                    if report is not None:
                        sys.stderr.write(_bar(download.fraction(report),
                                              download.describe(report)))
                        sys.stderr.flush()
                if ev.job_id != job_id:
                    if ev.kind == "disconnected" and show:
                        sys.stderr.write(("\n" if _BAR["open"] else "")
                                         + f"{ev.data.get('message', 'disconnected')}\n")
                        _BAR["open"] = False
                    continue
                if ev.kind == "progress" and show:
                    d = ev.data
                    label = f"{d.get('stage')} {d.get('step')}/{d.get('steps')}"
                    sys.stderr.write(_bar(float(d.get("fraction") or 0.0), label))
                    sys.stderr.flush()
                elif ev.kind == "queued" and show and not downloading:
                    pos = ev.data.get("position")
                    sys.stderr.write(_bar(0.0, "model loading" if pos is None else
                                          f"queued, position {pos}"))
                elif ev.kind == "result":
                    img = ev.images[0]
                    meta = dict(ev.data.get("params") or params)
                    meta["seed"] = img.seed
                    meta["engine"] = (client.welcome or {}).get("engine", {})
                    text = {"parameters": json.dumps(meta, ensure_ascii=False),
                            "Software": "zimage protocol CLI"}
                    data = img.to_png_bytes(text)
                    tmp = out + ".part"
                    with open(tmp, "wb") as f:
                        f.write(data)
                    os.replace(tmp, out)
                    if show:
                        sys.stderr.write(_bar(1.0, "done") + "\n")
                        _BAR["open"] = False
                        ms = ev.data.get("timings", {}).get("generate_ms")
                        sys.stderr.write(f"wrote {out} (seed {img.seed}"
                                         f"{f', {ms:.0f} ms' if ms else ''})\n")
                    return 0
                elif ev.kind == "cancelled":
                    raise ProtocolError("cancelled", f"job cancelled at step "
                                        f"{ev.data.get('at_step')}")
                elif ev.kind == "error":
                    raise ProtocolError(ev.data.get("code", "internal_error"),
                                        ev.data.get("message", ""), field=ev.data.get("field"))
    except KeyboardInterrupt:
        client.cancel(job_id)
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            if any(e.job_id == job_id and e.kind in ("cancelled", "result", "error")
                   for e in client.poll(timeout=0.1)):
                break
        if _BAR["open"]:
            sys.stderr.write("\n")
        sys.stderr.write("error: cancelled: interrupted; the job was cancelled\n")
        return 130
    finally:
        client.close()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m protocol")
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="generate one image with a running engine")
    g.add_argument("--engine", default="tcp://127.0.0.1:5555")
    g.add_argument("--prompt", required=True)
    g.add_argument("--width", type=int, default=1024)
    g.add_argument("--height", type=int, default=1024)
    g.add_argument("--steps", type=int, default=8)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--output", required=True, help="PNG file to write")
    g.add_argument("--lora", action="append", default=[], metavar="NAME[:WEIGHT]",
                   help="a LoRA the engine lists (its welcome's loras), weight 1.0 by default; "
                   "repeatable")
    g.add_argument("--format", choices=("raw", "png"), default="raw",
                   help="transfer format (raw is fastest on loopback; png for LAN)")
    g.add_argument("--timeout", type=float, default=600.0)
    g.add_argument("--connect-timeout", type=float, default=10.0,
                   help="seconds to reach the engine at all (default 10)")
    g.add_argument("--reconnect-timeout", type=float, default=10.0,
                   help="seconds to wait for an engine that went away mid-job (default 10)")
    g.add_argument("--connection-file", default=None,
                   help="the engine's connection file (token); default: found from --engine")
    g.add_argument("--curve-server-key", help="engine public key file (server.key)")
    g.add_argument("--curve-client-key", help="this client's secret key file (NAME.key_secret)")
    g.add_argument("--live", default=None, metavar="KEY",
                   help="live key: a later job of this client with the same key supersedes "
                   "this one (the engine's `live` capability)")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    g.set_defaults(func=cmd_generate)
    return parser




def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "generate" and bool(args.curve_server_key) != bool(args.curve_client_key):
        print("error: --curve-server-key and --curve-client-key go together", file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except ProtocolError as exc:
        hint = ""
        if exc.code == "engine_unreachable" and "did not come back" in exc.message:
            hint = " (wait longer with --reconnect-timeout SECONDS)"
        sys.stderr.write(("\n" if _BAR["open"] else "") + f"error: {exc}{hint}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        return 130
    except Exception as exc:  # never a traceback
        sys.stderr.write(f"error: {type(exc).__name__}: {exc}\n")
        return 1
