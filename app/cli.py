"""`parastream` command line: serve, make-model, build, demo, transcribe (a client of a running service).

`make-model` needs torch and funasr, so it imports them only when run; `serve` never does in this process.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

log = logging.getLogger("parastream")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="parastream", description="Streaming speech-to-text for FunASR Paraformer")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the HTTP service (settings from PARASTREAM_* / .env)")
    serve.add_argument("--host", help="overrides PARASTREAM_HOST")
    serve.add_argument("--port", type=int, help="overrides PARASTREAM_PORT")
    serve.add_argument("--model", help="overrides PARASTREAM_MODEL")
    serve.add_argument("--workers", type=int, help="overrides PARASTREAM_WORKERS")

    make = sub.add_parser("make-model", help="build a deterministic random-weight model dir")
    make.add_argument(
        "kind",
        choices=[
            "tiny-random",
            "large-random",
            "vad",
            "offline-tiny-random",
            "offline-large-random",
            "punc-tiny-random",
            "punc-large-random",
        ],
    )
    make.add_argument("dir", type=Path)
    make.add_argument("--seed", type=int, default=0)

    demo = sub.add_parser("demo", help="serve the trained demo model, stream clips through it at real-time pace")
    what = demo.add_mutually_exclusive_group()
    what.add_argument("--say", help="digits to synthesise with espeak-ng and transcribe (e.g. '3 1 4' or 三一四)")
    what.add_argument("--wav", type=Path, help="an audio file (WAV, FLAC, OGG) to stream instead of the committed clips")
    demo.add_argument("--model", help="model dir or name (default: the committed models/digits)")
    demo.add_argument("--speed", type=float, default=1.0, help="pace relative to real time (1.0 = real time)")

    demo.add_argument("--log", type=Path, help="write the service's own log here (default: a temporary file, named only on failure)")

    build = sub.add_parser("build", help="build the optimised encoder for PARASTREAM_BACKEND=onnx (else at first start)")
    build.add_argument("model", help="model dir or name")

    transcribe = sub.add_parser(
        "transcribe",
        help="stream a file (or raw PCM on stdin) to a running service and print the transcript",
        description="Stream FILE, or raw 16-bit LE mono PCM from stdin (-), to a running service; print the "
        "transcript as text, JSON Lines or SRT (docs/sdk.md).",
    )
    from app.transcribe import configure

    configure(transcribe)

    args = parser.parse_args(argv)
    if args.command == "transcribe":
        # A client: only warnings, and never httpx's line per request.
        logging.basicConfig(level=logging.WARNING, format="%(name)s %(levelname)s %(message)s")
        from app.transcribe import run

        return run(args)
    if args.command == "demo":
        from app.demo import run_demo

        # The demo sends the service's logs (and its libraries' notices) to a file and prints only the transcripts.
        return asyncio.run(run_demo(args.wav, args.model, args.speed, args.say, log_path=args.log))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # no line per request
    if args.command == "make-model":
        return _make_model(args.kind, args.dir, args.seed)
    if args.command == "build":
        return _build(args.model)
    if args.command == "serve":
        overrides = {k: v for k, v in vars(args).items() if k in ("host", "port", "model", "workers") and v is not None}
        return asyncio.run(_serve(overrides))
    raise AssertionError(args.command)


def _make_model(kind: str, out: Path, seed: int) -> int:
    from engine.model.factory import build_random_model

    path = build_random_model(kind, out, seed=seed)
    print(f"built {kind} (seed {seed}) in {path}")
    return 0


def _build(model: str) -> int:
    import time

    from engine.model.adapter import StreamingModel

    started = time.perf_counter()
    streaming = StreamingModel.load(model, backend="onnx")
    print(f"encoder artefact {streaming.encoder_artefact} ready in {time.perf_counter() - started:.1f} s")
    return 0


async def _serve(overrides: dict[str, object]) -> int:
    import uvicorn
    from pydantic import ValidationError

    from app.auth import AccessConfigError
    from app.main import create_app
    from engine import logs
    from engine.errors import EngineBootError
    from engine.service import Engine
    from engine.settings import Settings

    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        for error in exc.errors():
            name = "PARASTREAM_" + "_".join(str(part) for part in error["loc"]).upper()
            log.error("cannot start: %s=%r: %s", name, error.get("input"), error["msg"])
        return 2
    logs.configure(settings.log_format)  # PARASTREAM_LOG_FORMAT: text, or json lines (engine/logs.py)
    engine = Engine(settings)
    try:
        app = create_app(settings, engine)  # reads the API key files: a bad one is reported before the model loads
    except AccessConfigError as exc:
        log.error("cannot start: %s", exc)
        return 2
    try:
        await engine.start()  # load the model before opening the port; a failure is reported, not served
    except EngineBootError as exc:
        log.error("cannot start: %s", exc)
        await engine.stop()
        return 2
    from app.server import DrainingServer, listening_socket

    # The drain takes most of the grace; uvicorn gets a second for connections still open after it.
    drain_s = max(0.0, settings.shutdown_grace_s - 1.0)
    # ws_max_size: a WebSocket message over PARASTREAM_MAX_WS_MESSAGE_BYTES closes the connection with 1009 and a
    # reason naming the size and the limit (uvicorn's default would be 16 MiB).
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        timeout_graceful_shutdown=1,
        log_level="info",
        ws_max_size=settings.max_ws_message_bytes,
    )
    logs.adopt_uvicorn_loggers(settings.log_format)  # after uvicorn.Config has set its loggers up
    sock = listening_socket(settings.host, settings.port, settings.send_buffer_bytes)
    if sock is not None:  # uvicorn announces only the sockets it binds itself
        log.info("listening on %s:%d, send buffer %d bytes", settings.host, settings.port, settings.send_buffer_bytes)
    server = DrainingServer(config, engine, drain_s)
    app.state.request_drain = server.request_drain  # POST /v1/admin/drain (app/routes/admin.py)
    await server.serve(sockets=None if sock is None else [sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
