"""The OpenAI-compatible FastAPI app of `rlagent serve` (routes below; the CLI is rlagent/cli/serve.py).

    POST /v1/chat/completions  messages, tools, tool_choice (auto|none), temperature (0 = greedy), max_tokens, n,
                               stream (server-sent events), user (sticky A/B arm)
    GET  /v1/models            the served arms and their versions
    GET  /health               {"status": "ok", "arms": {arm: version}}
    POST /v1/feedback          {"id": RESPONSE_ID, "success": true|false}: the outcome of a served response
    POST /admin/reload         {"arm": "a", "path": FOLDER} (path optional with --watch: the newest complete one)

Every completion says what served it: `system_fingerprint` is the version, and the extra field `rlagent` holds
{"arm", "version"} (also in the headers x-rlagent-arm and x-rlagent-version).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import threading
import time
import uuid
from collections import OrderedDict

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from rlagent.serving.openai_format import RequestError, assistant_message, logged_message, parse_request, stream_chunks
from rlagent.serving.policy_slots import Arm, Job, load_slot, newest_candidate
from rlagent.serving.request_log import RequestLog

REMEMBERED_RESPONSES = 100_000  # response ids kept for /v1/feedback (oldest forgotten first)


def sticky_fraction(user: str) -> float:
    """A user's fixed point in [0, 1): the first 60 bits of SHA-256 of the name (same on every server and restart)."""
    return int(hashlib.sha256(user.encode("utf-8")).hexdigest()[:15], 16) / 16**15


class ServerState:
    """The arms, the A/B split, the request log and the reload machinery of one server."""

    def __init__(
        self,
        arms: dict[str, Arm],
        split: float = 0.5,
        log: RequestLog | None = None,
        watch: str | None = None,
        dtype: str = "auto",
        max_tokens: int = 256,
        seed: int | None = None,
    ):
        self.arms, self.split, self.log, self.watch, self.dtype = arms, split, log, watch, dtype
        self.max_tokens = max_tokens
        self.random = random.Random(seed)
        self.responses: OrderedDict[str, tuple[str, str]] = OrderedDict()  # id -> (arm, version)
        self._watched: tuple[str, float] | None = None
        self._stop = threading.Event()

    def assign(self, user: str | None) -> str:
        """Arm "b" for a fraction `split` of users (sticky by user name; random per request without one)."""
        if "b" not in self.arms:
            return "a"
        point = sticky_fraction(user) if user else self.random.random()
        return "b" if point < self.split else "a"

    def reload(self, arm: str = "a", path: str | None = None) -> dict:
        """Load `path` (default: the newest complete checkpoint or final/ under --watch) into `arm`, then swap."""
        if arm not in self.arms:
            raise RequestError(f"arm: unknown arm {arm!r} (serving {', '.join(self.arms)})")
        target = self.arms[arm]
        if path is None:
            if not self.watch:
                raise RequestError("path: required when the server has no --watch folder")
            path = newest_candidate(self.watch)
            if path is None:
                return {"arm": arm, "changed": False, "version": target.slot.version}
        if not os.path.exists(path):
            raise RequestError(f"path: {path} does not exist")
        with target.reload_lock:
            version = f"v{target.loads + 1}:{os.path.basename(os.path.normpath(path))}"
            slot = load_slot(path, version, self.dtype, tokenizer=target.slot.tokenizer)
            target.loads += 1
            previous = target.swap(slot)
        return {"arm": arm, "changed": True, "version": version, "previous": previous.version, "path": path}

    def watch_loop(self, interval: float) -> None:
        """Poll --watch; reload arm "a" when a newer complete checkpoint or final/ appears (never the one at start)."""
        self._watched = self._candidate()
        while not self._stop.wait(interval):
            found = self._candidate()
            if found is not None and found != self._watched:
                self._watched = found
                try:
                    result = self.reload("a", found[0])
                    print(f"rlagent serve: reloaded {result['version']} (was {result['previous']})", flush=True)
                except Exception as error:  # a bad checkpoint must not stop the server: keep serving the old one
                    print(f"rlagent serve: reload of {found[0]} failed, still serving: {error}", flush=True)

    def _candidate(self) -> tuple[str, float] | None:
        path = newest_candidate(self.watch) if self.watch else None
        return (path, os.path.getmtime(path)) if path else None

    def remember(self, response_id: str, arm: str, version: str) -> None:
        self.responses[response_id] = (arm, version)
        while len(self.responses) > REMEMBERED_RESPONSES:
            self.responses.popitem(last=False)

    def close(self) -> None:
        self._stop.set()
        for arm in self.arms.values():
            arm.close()


def error_response(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "invalid_request_error"}}, status_code=status)


def completion(state: ServerState, request, arm: str, slot, rows: list[tuple]) -> dict:
    """The chat.completion object for one served request (and its log rows); rows: per choice (text, prompt
    tokens, completion tokens, ended at end-of-turn)."""
    response_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    choices = []
    for index, (text, _, _, ended) in enumerate(rows):
        message, finish = assistant_message(text, parse_tools=request.tools is not None)
        finish = finish if ended or finish == "tool_calls" else "length"
        choices.append({"index": index, "message": message, "finish_reason": finish, "logprobs": None})
    state.remember(response_id, arm, slot.version)
    if state.log is not None:
        state.log.served(
            [
                {
                    "id": response_id,
                    "choice": c["index"],
                    "created": created,
                    "arm": arm,
                    "version": slot.version,
                    "user": request.user,
                    "messages": request.messages + [logged_message(c["message"])],
                    "tools": request.tools,
                    "prompt": request.messages,
                    "completion": [logged_message(c["message"])],
                }
                for c in choices
            ]
        )
    return {
        "id": response_id,
        "object": "chat.completion",
        "created": created,
        "model": f"rlagent-{arm}",
        "system_fingerprint": slot.version,
        "choices": choices,
        "usage": usage(rows),
        "rlagent": {"arm": arm, "version": slot.version},
    }


def usage(rows: list[tuple]) -> dict:
    prompt, completion_tokens = rows[0][1], sum(row[2] for row in rows)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt + completion_tokens,
    }


def create_app(state: ServerState) -> FastAPI:
    """The FastAPI app serving `state` (routes in the module docstring)."""
    app = FastAPI(title="rlagent serve")

    @app.post("/v1/chat/completions")
    async def chat_completions(http: Request):
        try:
            request = parse_request(await _json(http), state.max_tokens)
        except RequestError as error:
            return error_response(400, str(error))
        arm = state.assign(request.user)
        job = Job(request.messages, request.tools, request.n, request.max_tokens, request.temperature)
        try:
            slot, rows = await asyncio.wrap_future(state.arms[arm].submit(job))
        except Exception as error:  # the batch failed (e.g. a prompt longer than the model's context)
            return error_response(500, f"generation failed: {error}")
        body = completion(state, request, arm, slot, rows)
        headers = {"x-rlagent-arm": arm, "x-rlagent-version": slot.version}
        if request.stream:
            return StreamingResponse(_sse(body), media_type="text/event-stream", headers=headers)
        return JSONResponse(body, headers=headers)

    @app.get("/v1/models")
    async def models():
        data = [
            {
                "id": f"rlagent-{name}",
                "object": "model",
                "created": 0,
                "owned_by": "rlagent",
                "rlagent": {"arm": name, "version": arm.slot.version, "path": arm.slot.path},
            }
            for name, arm in state.arms.items()
        ]
        return {"object": "list", "data": data}

    add_info_and_admin_routes(app, state)
    return app


def add_info_and_admin_routes(app: FastAPI, state: ServerState) -> None:
    """GET /health, POST /v1/feedback and POST /admin/reload."""

    @app.get("/health")
    async def health():
        return {"status": "ok", "arms": {name: arm.slot.version for name, arm in state.arms.items()}}

    @app.post("/v1/feedback")
    async def feedback(http: Request):
        body = await _json(http)
        response_id = body.get("id") if isinstance(body, dict) else None
        if response_id not in state.responses:
            return error_response(404, f"id: no served response {response_id!r} (unknown or forgotten)")
        if not isinstance(body.get("success"), bool):
            return error_response(400, "success: must be true or false")
        arm, version = state.responses[response_id]
        row = {
            "id": response_id,
            "success": body["success"],
            "created": int(time.time()),
            "arm": arm,
            "version": version,
        }
        if state.log is not None:
            state.log.feedback(row)
        return {"ok": True, **row}

    @app.post("/admin/reload")
    async def reload(http: Request):
        body = await _json(http)
        body = body if isinstance(body, dict) else {}
        try:  # loading takes seconds: off the event loop, so requests keep being served meanwhile
            return await asyncio.to_thread(state.reload, body.get("arm", "a"), body.get("path"))
        except RequestError as error:
            return error_response(400, str(error))
        except Exception as error:  # a checkpoint that does not load: the old version keeps serving
            return error_response(500, f"reload failed, still serving the previous version: {error}")


async def _json(http: Request):
    try:
        return await http.json()
    except ValueError:
        return None


async def _sse(body: dict):
    for chunk in stream_chunks(body):
        yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
    yield "data: [DONE]\n\n"
