"""Serve a registered model over HTTP, offline, refusing malformed requests cleanly.

    python -m tasks.serve -m "models:/text-classifier@champion" --port 5001     # 127.0.0.1 by default
    curl -s 127.0.0.1:5001/invocations -H 'Content-Type: application/json' \\
         -d '{"inputs": ["what a great flight", "lost my bag again"]}'

The same endpoints and answers as `mlflow models serve` (POST /invocations, GET /ping,
/health, /version; MLflow's own scoring code does the prediction), with a check in front:
MLflow's server casts numbers and nulls to strings before the model sees them, and its
error bodies carry stack traces. Here a request must be JSON holding one list of strings,
in any of MLflow's layouts (`inputs`, `instances`, `dataframe_records`, `dataframe_split`,
with the column named `text`), each text non-empty (the rule training applies); anything else
(invalid UTF-8, nesting too deep, numbers too long included) gets a 4xx whose message says what
was wrong, with no traceback or path. A connection that stops sending mid-request is closed
after `--read-timeout` seconds. The process never dies of a bad request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys

from fastapi import Request  # module level: FastAPI resolves the handler's annotations here

from models.requests import text_problem

TEXT = "text"
LAYOUTS = ("inputs", "instances", "dataframe_records", "dataframe_split")
log = logging.getLogger("tasks.serve")


class RequestError(ValueError):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def parse_texts(payload) -> list[str]:
    """The texts of a request body, or a RequestError saying exactly what is wrong with it."""
    if not isinstance(payload, dict):
        raise RequestError(400, f"the body must be a JSON object with one of {list(LAYOUTS)}")
    keys = [k for k in payload if k in LAYOUTS]
    extra = sorted(set(payload) - set(LAYOUTS) - {"params"})
    if len(keys) != 1 or extra:
        raise RequestError(400, f"the body must hold exactly one of {list(LAYOUTS)}; got {sorted(payload)}")
    layout, value = keys[0], payload[keys[0]]
    if layout in ("inputs", "instances"):
        if isinstance(value, dict):
            value = _column(value, list(value))
        elif not isinstance(value, list):
            raise RequestError(400, f"'{layout}' must be a list of strings")
        # instances may be records: [{"text": "..."}]
        if value and all(isinstance(v, dict) for v in value):
            value = _records(value)
    elif layout == "dataframe_records":
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise RequestError(400, '\'dataframe_records\' must be a list of objects like {"text": "..."}')
        value = _records(value)
    else:
        if not isinstance(value, dict) or not isinstance(value.get("columns"), list) or "data" not in value:
            raise RequestError(400, "'dataframe_split' must be an object with 'columns' and 'data'")
        columns = value["columns"]
        if columns != [TEXT]:
            raise RequestError(400, f"the only input column is '{TEXT}'; got columns {columns}")
        rows = value["data"]
        if not isinstance(rows, list) or not all(isinstance(r, list) and len(r) == 1 for r in rows):
            raise RequestError(400, "'dataframe_split.data' must be a list of one-item rows")
        value = [r[0] for r in rows]
    return _strings(value)


def _column(mapping: dict, keys: list) -> list:
    if keys != [TEXT]:
        raise RequestError(400, f"the only input column is '{TEXT}'; got {keys}")
    return mapping[TEXT] if isinstance(mapping[TEXT], list) else [mapping[TEXT]]


def _records(records: list[dict]) -> list:
    bad = next((i for i, r in enumerate(records) if list(r) != [TEXT]), None)
    if bad is not None:
        raise RequestError(400, f"record {bad} has fields {list(records[bad])}; the only input column is '{TEXT}'")
    return [r[TEXT] for r in records]


def _strings(values: list) -> list[str]:
    if not values:
        raise RequestError(400, "no texts: send at least one string")
    for i, v in enumerate(values):
        if not isinstance(v, str):
            kind = "null" if v is None else type(v).__name__
            raise RequestError(400, f"item {i} is {kind}: every text must be a string")
    if problem := text_problem(values):
        raise RequestError(400, problem)
    return values


def decode_body(body: bytes):
    """The JSON value of a request body, or a RequestError: invalid UTF-8, nesting deeper
    than Python's parser goes, and numbers too long to convert are bad requests, not 500s."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise RequestError(400, f"the body is not valid UTF-8 (byte {err.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise RequestError(
            400, f"the body is not valid JSON ({err.msg} at line {err.lineno} column {err.colno})"
        ) from None
    except RecursionError:
        raise RequestError(400, "the body is nested too deeply: send a flat list of strings") from None
    except ValueError as err:  # e.g. an integer of more digits than Python converts
        raise RequestError(400, f"the body holds a value that cannot be read ({str(err)[:80]})") from None


def _error(status: int, message: str, code: str = "BAD_REQUEST"):
    from fastapi.responses import JSONResponse

    return JSONResponse({"error_code": code, "message": message}, status_code=status)


def read_timeout_protocol(seconds: float):
    """uvicorn's HTTP/1.1 protocol with a read timeout: uvicorn closes idle keep-alive
    connections but waits forever on a request whose headers or body stop arriving (one
    such client per connection slot starves the server). The timer is re-armed on every
    chunk while a request is still being received, and never runs while the model works."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class ReadTimeoutH11(H11Protocol):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            self._disarm()
            super().data_received(data)
            if self.conn.their_state in (h11.IDLE, h11.SEND_BODY) and not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._read_timer = self.loop.call_later(seconds, self._read_timed_out)

        def _disarm(self) -> None:
            if timer := getattr(self, "_read_timer", None):
                timer.cancel()
                self._read_timer = None

        def _read_timed_out(self) -> None:
            if not self.transport.is_closing():
                log.info("closed a connection that sent nothing for %.0f s", seconds)
                self.transport.close()

    return ReadTimeoutH11


def build_app(model, max_bytes: int, max_texts: int):
    """A FastAPI app answering like MLflow's scoring server, behind strict request checks."""
    import mlflow
    from fastapi import FastAPI
    from fastapi.responses import Response
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc.scoring_server import invocations
    from starlette.requests import ClientDisconnect

    app = FastAPI(title="text classifier", docs_url=None, redoc_url=None, openapi_url=None)
    schema = model.metadata.get_input_schema()

    @app.get("/ping")
    @app.get("/health")
    async def ping():
        return Response(content="\n", status_code=200, media_type="application/json")

    @app.get("/version")
    async def version():
        return Response(content=mlflow.__version__, status_code=200, media_type="application/json")

    @app.post("/invocations")
    async def invoke(request: Request):
        if (request.headers.get("content-type") or "").split(";")[0].strip() != "application/json":
            return _error(415, "send the body as JSON with 'Content-Type: application/json'", "UNSUPPORTED_MEDIA_TYPE")
        body = bytearray()
        try:
            async for chunk in request.stream():
                body += chunk
                if len(body) > max_bytes:
                    return _error(413, f"the body exceeds {max_bytes:,} bytes: split the request", "PAYLOAD_TOO_LARGE")
        except ClientDisconnect:  # the client left, or the read timeout closed it: nobody to answer
            return Response(status_code=400)
        try:
            texts = parse_texts(decode_body(bytes(body)))
        except RequestError as err:
            return _error(err.status, str(err))
        if len(texts) > max_texts:
            return _error(413, f"{len(texts):,} texts in one request; the limit is {max_texts:,}", "PAYLOAD_TOO_LARGE")
        clean = json.dumps({"inputs": texts})
        try:
            result = await asyncio.to_thread(invocations, clean, "application/json", model, schema)
        except MlflowException as err:
            return _error(400, err.message.rsplit("Error: ", 1)[-1].strip())
        except Exception:
            log.exception("scoring failed")  # the trace stays in the server's log
            return _error(500, "the model failed on this request; the server log has the details", "INTERNAL_ERROR")
        return Response(content=result.response, status_code=result.status, media_type=result.mimetype)

    return app


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Serve a registered model on /invocations.")
    ap.add_argument("-m", "--model-uri", required=True, help='e.g. "models:/text-classifier@champion"')
    ap.add_argument("--host", default="127.0.0.1", help="127.0.0.1 (default) serves this machine only")
    ap.add_argument("-p", "--port", type=int, default=5001)
    ap.add_argument("--max-bytes", type=int, default=1 << 20, help="largest request body (default 1 MiB)")
    ap.add_argument(
        "--read-timeout",
        type=float,
        default=30.0,
        help="seconds a connection may send nothing while a request is incomplete (default 30)",
    )
    ap.add_argument("--keep-alive", type=float, default=5.0, help="seconds an idle keep-alive connection stays open")
    args = ap.parse_args(argv)

    import mlflow
    import uvicorn

    from tasks.lib.common import apply_env_defaults
    from tasks.lib.registry import load_errors

    apply_env_defaults()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        model = mlflow.pyfunc.load_model(args.model_uri)
    except load_errors() as err:
        message = " ".join((getattr(err, "message", None) or str(err)).split())[:500]
        print(f"error: cannot load {args.model_uri}: {message}", file=sys.stderr)
        return 1
    max_texts = getattr(model.unwrap_python_model(), "max_texts", 1000)
    app = build_app(model, args.max_bytes, max_texts)
    print(f"serving {args.model_uri} on http://{args.host}:{args.port}/invocations", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", http=read_timeout_protocol(args.read_timeout),
                timeout_keep_alive=args.keep_alive)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
