"""`serve` and `keys` commands. engine/__main__.py wires them in:

    from engine.serve_cli import add_keys_parser, add_serve_parser
    add_serve_parser(subparsers); add_keys_parser(subparsers)
    args = parser.parse_args(); sys.exit(args.func(args))

Until then: `python -m engine.serve_cli serve --standin --bind tcp://127.0.0.1:5555`.

serve prints exactly one line on stdout when the model is loaded and jobs are accepted:
    ready tcp://127.0.0.1:5555 model=<id> device=<dev> epoch=<hex>
Logs go to stderr. hello/ping/status are answered while the model loads; submit gets
`model_loading` (retryable) until then.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
import threading

CURVE_LAYOUT = """\
DIR/server.key          engine public key (give this to clients)
DIR/server.key_secret   engine secret key (keep on the engine machine)
DIR/authorized_clients/ public keys (*.key) of the clients allowed to connect
DIR/clients/NAME.key, NAME.key_secret   a client key pair (copy to that client)"""


def add_serve_parser(subparsers, name: str = "serve",
                     help: str = "run the engine: answer jobs over ZeroMQ",
                     description: str = "Run the engine server (protocol v1 over ZeroMQ)."
                     ) -> argparse.ArgumentParser:
    p = subparsers.add_parser(name, help=help, description=description)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="model folder or Hugging Face repo id")
    src.add_argument("--standin", action="store_true",
                     help="serve the stand-in pipeline (protocol tests and benchmarks only)")
    p.add_argument("--bind", default="tcp://127.0.0.1:5555",
                   help="endpoint (default tcp://127.0.0.1:5555; port 0 picks a free one); "
                   "non-loopback addresses need --curve-dir")
    p.add_argument("--device", default=None, help="auto | cuda | mps | cpu (default: auto)")
    p.add_argument("--dtype", default=None, help="auto | bfloat16 | float32 (default: auto)")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder, for ComfyUI files")
    p.add_argument("--controlnet", default=None, metavar="PATH",
                   help="Z-Image-Turbo-Fun-Controlnet-Union .safetensors (control.* modes)")
    p.add_argument("--lora-dir", default=None, metavar="DIR",
                   help="LoRA .safetensors files clients may pick by name (rescanned while "
                   "serving: new files show up without a restart)")
    p.add_argument("--curve-dir", default=None,
                   help="CurveZMQ key directory made by `keys --dir` (enables CURVE)")
    p.add_argument("--connection-file", default=None, metavar="PATH",
                   help="where a loopback engine writes its secret token (mode 0600); "
                   "default: <runtime dir>/engine-<host>-<port>.json, found by clients of "
                   "the same user from the endpoint alone (see protocol/PROTOCOL.md §8)")
    p.add_argument("--no-token", action="store_true",
                   help="loopback without a token: any local process may drive the engine")
    p.add_argument("--step-seconds", type=float, default=0.0,
                   help="stand-in only: seconds per denoising step")
    p.add_argument("--min-side", type=int, default=64)
    p.add_argument("--max-side", type=int, default=2048)
    p.add_argument("--max-queue-per-session", type=int, default=32)
    p.add_argument("--max-queue", type=int, default=256)
    p.add_argument("--result-ttl", type=float, default=600.0, help="seconds results are kept")
    p.add_argument("--result-budget-mb", type=int, default=1024)
    p.add_argument("--heartbeat-ivl-ms", type=int, default=2000)
    p.add_argument("--heartbeat-timeout-ms", type=int, default=6000)
    p.add_argument("--session-timeout", type=float, default=15.0,
                   help="seconds of client silence before its session counts as detached")
    p.add_argument("--detach-grace", type=float, default=30.0,
                   help="seconds a detached client's jobs are kept before they are dropped")
    p.add_argument("-v", "--verbose", action="store_true", help="log sessions and jobs")
    try:
        from engine.memory_args import add_memory_args
    except ImportError:
        pass
    else:
        add_memory_args(p)
    p.set_defaults(func=run_serve)
    return p


def add_cluster_parser(subparsers) -> argparse.ArgumentParser:
    """`cluster`: the options of `serve` (the same gateway) plus where the replicas run."""
    p = add_serve_parser(
        subparsers, "cluster", help="one engine address for a farm of GPUs (Ray Serve)",
        description="Run the engine gateway (protocol v1 over ZeroMQ, exactly as `serve`) with "
        "the pipelines as a Ray Serve deployment: one replica per GPU, autoscaled on the "
        "queue. Needs the `cluster` extra (pip install '.[cluster]').")
    p.add_argument("--ray-address", default=None,
                   help="join this Ray cluster (e.g. 10.0.0.5:6379 or auto); default: start "
                   "a local one")
    p.add_argument("--min-replicas", type=int, default=1)
    p.add_argument("--max-replicas", type=int, default=1,
                   help="at most this many replicas (one per GPU)")
    p.add_argument("--replica-gpus", type=float, default=None,
                   help="GPUs per replica (default: 1 with --model, 0 with --standin)")
    p.add_argument("--replica-cpus", type=float, default=1.0, help="CPUs per replica")
    p.add_argument("--upscale-delay", type=float, default=5.0,
                   help="seconds of a longer queue before a replica is added")
    p.add_argument("--downscale-delay", type=float, default=120.0,
                   help="seconds of a shorter queue before a replica is removed")
    p.set_defaults(func=run_serve, cluster=True)
    return p


def add_keys_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("keys", help="create CurveZMQ key pairs for LAN mode",
                              description="Create CurveZMQ keys.\n" + CURVE_LAYOUT,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", required=True, help="key directory")
    p.add_argument("--client", action="append", default=None, metavar="NAME",
                   help="client key pair(s) to create and allow (default: one named 'client')")
    p.set_defaults(func=run_keys)
    return p


def run_keys(args) -> int:
    import zmq.auth
    base = os.path.abspath(args.dir)
    auth_dir = os.path.join(base, "authorized_clients")
    cli_dir = os.path.join(base, "clients")
    for d in (base, auth_dir, cli_dir):
        os.makedirs(d, exist_ok=True)
    os.chmod(base, 0o700)
    if not os.path.exists(os.path.join(base, "server.key_secret")):
        zmq.auth.create_certificates(base, "server")
        print(f"created {os.path.join(base, 'server.key')}")
    for name in args.client or ["client"]:
        if not name.replace("-", "").replace("_", "").isalnum():
            print(f"error: bad client name {name!r}", file=sys.stderr)
            return 2
        if not os.path.exists(os.path.join(cli_dir, name + ".key_secret")):
            zmq.auth.create_certificates(cli_dir, name)
            print(f"created {os.path.join(cli_dir, name + '.key')}")
        shutil.copyfile(os.path.join(cli_dir, name + ".key"),
                        os.path.join(auth_dir, name + ".key"))
    for root, _, files in os.walk(base):
        for f in files:
            if f.endswith(".key_secret"):
                os.chmod(os.path.join(root, f), 0o600)
    return 0


def _fail(msg: str, code: int = 1) -> int:
    print(f"error: {msg}", file=sys.stderr, flush=True)
    return code


def run_serve(args) -> int:
    from engine.server import EngineServer, InsecureBindError, is_loopback_endpoint
    from protocol.messages import Limits

    level = logging.INFO if args.verbose else logging.WARNING
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger().setLevel(level)   # also when engine/__main__ configured logging first
    if args.lora_dir and not os.path.isdir(args.lora_dir):
        return _fail(f"--lora-dir {args.lora_dir}: no such folder [invalid_params]", 2)
    bind = args.bind
    curve = {}
    if args.curve_dir:
        secret = os.path.join(args.curve_dir, "server.key_secret")
        authorized = os.path.join(args.curve_dir, "authorized_clients")
        if not os.path.isfile(secret) or not os.path.isdir(authorized):
            return _fail(f"{args.curve_dir} is not a key directory; create one with "
                         f"`python -m engine keys --dir {args.curve_dir}`", 2)
        curve = {"curve_secret_file": secret, "curve_authorized_dir": authorized}
    elif not is_loopback_endpoint(bind):
        return _fail(f"refusing to bind {args.bind} without CURVE keys; use --curve-dir "
                     "(see `python -m engine keys --help`) or a 127.0.0.1 address", 2)
    limits = Limits(min_side=args.min_side, max_side=args.max_side,
                    max_pixels=args.max_side * args.max_side,
                    max_queue_per_session=args.max_queue_per_session,
                    max_queue=args.max_queue, result_ttl_s=args.result_ttl,
                    result_budget_bytes=args.result_budget_mb * 1024 * 1024)
    pipeline = loader = None
    server_cls, extra = EngineServer, {}
    if getattr(args, "cluster", False):
        try:
            from engine.server.cluster import ClusterServer, PipelineFactory
            import ray  # noqa: F401
        except ImportError:
            return _fail("`cluster` needs Ray Serve: pip install '.[cluster]'", 2)
        if args.standin:
            factory = PipelineFactory("standin", kwargs={"step_seconds": args.step_seconds})
        else:
            kw = {k: getattr(args, k) for k in ("device", "dtype", "tokenizer", "controlnet")
                  if getattr(args, k, None) is not None}
            if hasattr(args, "memory"):
                from engine.memory_args import memory_kwargs
                kw.update(memory_kwargs(args))
            if args.lora_dir:
                kw["lora_dir"] = os.path.abspath(args.lora_dir)
            factory = PipelineFactory("model", args.model, kw)
        gpus = args.replica_gpus if args.replica_gpus is not None else (
            0.0 if args.standin else 1.0)
        server_cls = ClusterServer
        extra = dict(factory=factory, ray_address=args.ray_address,
                     min_replicas=args.min_replicas, max_replicas=args.max_replicas,
                     replica_gpus=gpus, replica_cpus=args.replica_cpus,
                     autoscaling={"upscale_delay_s": args.upscale_delay,
                                  "downscale_delay_s": args.downscale_delay})
    elif args.standin:
        from engine.standin import StandInPipeline
        pipeline = StandInPipeline(args.step_seconds)
    else:
        model = args.model
        kw = {k: getattr(args, k) for k in ("device", "dtype", "tokenizer", "controlnet")
              if getattr(args, k, None) is not None}
        if hasattr(args, "memory"):
            from engine.memory_args import memory_kwargs
            kw.update(memory_kwargs(args))

        lora_dir = args.lora_dir

        def loader():
            from engine.loading import load_pipeline
            from engine.lora import LoraLibrary
            return load_pipeline(model, loras=LoraLibrary(lora_dir), **kw)
    from protocol import connection
    token = None if (curve or args.no_token) else connection.new_token()
    try:
        common = dict(bind=bind, limits=limits, token=token,
                      heartbeat_ivl_ms=args.heartbeat_ivl_ms,
                      heartbeat_timeout_ms=args.heartbeat_timeout_ms,
                      session_timeout_s=args.session_timeout,
                      detach_grace_s=args.detach_grace, **curve)
        if server_cls is EngineServer:
            server = EngineServer(pipeline, loader=loader, **common)
        else:                             # the farm: its replicas load the pipeline
            server = server_cls(**extra, **common)
        server.start()
    except InsecureBindError as exc:
        return _fail(str(exc), 2)
    except Exception as exc:  # bind errors (address in use), bad keys
        return _fail(f"cannot start the engine on {args.bind}: {exc}", 1)
    conn_file = None
    if token is not None:
        conn_file = args.connection_file or connection.path_for(server.endpoint)
        try:
            connection.write(conn_file, server.endpoint, token)
        except OSError as exc:
            server.stop()
            return _fail(f"cannot write the connection file {conn_file}: {exc}", 1)
        logging.getLogger("engine").info("connection file %s", conn_file)

    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    from engine.download_progress import listening, print_line
    with listening(print_line):     # the first start's download, on this terminal too
        while server.model_state == "loading" and not stop.is_set():
            stop.wait(0.05)
    if server.model_state == "failed":
        server.stop()
        if conn_file is not None:
            connection.remove(conn_file, token)
        return _fail(f"model failed to load: {server.model_error}", connection.EXIT_MODEL_FAILED)
    if not stop.is_set():
        info = server._pipe_info()
        print(f"ready {server.endpoint} model={info.get('model')} device={info.get('device')} "
              f"epoch={server.epoch}", flush=True)
    while not stop.is_set() and not server.wait(0.2):
        pass
    server.stop()
    if conn_file is not None:
        connection.remove(conn_file, token)
    if server.failed:
        return _fail("the engine stopped after an internal error (see the log above)", 70)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.serve_cli")
    sub = parser.add_subparsers(dest="command", required=True)
    add_serve_parser(sub)
    add_cluster_parser(sub)
    add_keys_parser(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
