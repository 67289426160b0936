"""`rlagent serve`: the official `openai` client against a server on 127.0.0.1 (tool-call round trip, streaming,
n, A/B stickiness, feedback into the log), the log as training data, and hot reload under a bounded load test."""

import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch
import uvicorn
from openai import BadRequestError, OpenAI

from envs.parsing import format_tool_call
from reward_models.pairs import read_pairs
from rlagent.cli.ab_report import ab_report, preference_pairs
from rlagent.cli.serve import build_state, parse
from rlagent.common.chat import encode
from rlagent.common.data import read_conversations
from rlagent.common.tiny import build_tiny_tokenizer
from rlagent.rollout.backends import GenerationOutput
from rlagent.serving.app import ServerState, create_app, sticky_fraction
from rlagent.serving.policy_slots import Arm, Job, Slot, decode_batch, load_slot, newest_candidate
from rlagent.serving.request_log import RequestLog
from tests.conftest import CALCULATOR_SCHEMA, free_port

pytestmark = pytest.mark.filterwarnings("ignore")


class Server:
    """An in-process uvicorn server of `state` on a free 127.0.0.1 port, stopped on exit."""

    def __init__(self, state: ServerState):
        self.state, self.port = state, int(free_port())
        config = uvicorn.Config(create_app(state), host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.state.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self) -> OpenAI:
        return OpenAI(base_url=self.url + "/v1", api_key="unused", max_retries=0, timeout=60)


class ScriptedBackend:
    """A generation backend that answers by the rendered prompt: `script(prompt_text) -> reply text`. Records every
    prompt it saw, so a test checks what the chat template rendered from the client's messages."""

    def __init__(self, tokenizer, script):
        self.tokenizer, self.script, self.prompts = tokenizer, script, []

    def generate(self, requests, params):
        outputs = []
        for request in requests:
            prompt = self.tokenizer.decode(request.token_ids, skip_special_tokens=False)
            self.prompts.append(prompt)
            ids = encode(self.tokenizer, self.script(prompt)) + [self.tokenizer.eos_token_id]
            outputs.append(GenerationOutput(ids, [0.0] * len(ids)))
        return outputs


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


def scripted_state(tokenizer, script, log=None, arms=("a",), split=0.5) -> ServerState:
    backend = ScriptedBackend(tokenizer, script)
    slot = Slot("v1:scripted", "scripted", backend, tokenizer)
    return ServerState({name: Arm(name, slot) for name in arms}, split, RequestLog(log) if log else None, seed=0)


def calculator_script(prompt: str) -> str:
    """First turn: a calculator call; after the tool's response: the final answer it carried."""
    if "<tool_response>" in prompt:
        result = prompt.rsplit("<tool_response>", 1)[1].split("</tool_response>", 1)[0]
        return f"The answer is {result}."
    return "Let me compute. " + format_tool_call("calculator", {"expression": "17 * 3"})


def test_tool_call_round_trip_with_the_openai_client(tokenizer, tmp_path):
    state = scripted_state(tokenizer, calculator_script, log=str(tmp_path / "log"))
    with Server(state) as server:
        client = server.client()
        messages = [{"role": "user", "content": "What is 17 times 3?"}]
        first = client.chat.completions.create(model="rlagent-a", messages=messages, tools=[CALCULATOR_SCHEMA])
        choice = first.choices[0]
        assert choice.finish_reason == "tool_calls"
        assert choice.message.content == "Let me compute."
        (call,) = choice.message.tool_calls
        assert call.function.name == "calculator" and json.loads(call.function.arguments) == {"expression": "17 * 3"}
        assert first.system_fingerprint == "v1:scripted" and first.model_extra["rlagent"]["arm"] == "a"
        messages += [choice.message.model_dump(exclude_none=True),
                     {"role": "tool", "tool_call_id": call.id, "content": "51"}]  # fmt: skip
        second = client.chat.completions.create(model="rlagent-a", messages=messages, tools=[CALCULATOR_SCHEMA])
        assert second.choices[0].message.content == "The answer is 51."
        assert second.choices[0].finish_reason == "stop" and not second.choices[0].message.tool_calls
        # the client's assistant tool call was rendered back exactly as the policy wrote it (the template's format)
        assert format_tool_call("calculator", {"expression": "17 * 3"}) in state.arms["a"].slot.backend.prompts[-1]
        # tool_choice "none": tools are not rendered and the text is not parsed into calls
        plain = client.chat.completions.create(model="rlagent-a", messages=messages[:1], tools=[CALCULATOR_SCHEMA],
                                               tool_choice="none")  # fmt: skip
        assert plain.choices[0].message.tool_calls is None and "<tool_call>" in plain.choices[0].message.content
        assert "calculator(" not in state.arms["a"].slot.backend.prompts[-1]
    # --log: the conversations are SFT data as `rlagent sft` reads them
    rows = read_conversations(str(tmp_path / "log" / "requests.jsonl"))
    assert len(rows) == 3 and rows[1]["messages"][-1] == {"role": "assistant", "content": "The answer is 51."}
    assert rows[0]["messages"][-1]["tool_calls"][0]["function"]["arguments"] == {"expression": "17 * 3"}


def test_malformed_tool_calls_stay_text_and_bad_requests_name_the_field(tokenizer):
    state = scripted_state(tokenizer, lambda prompt: "<tool_call>{not json</tool_call>")
    with Server(state) as server:
        client = server.client()
        out = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}],
                                             tools=[CALCULATOR_SCHEMA])  # fmt: skip
        assert out.choices[0].message.tool_calls is None and out.choices[0].finish_reason == "stop"
        assert out.choices[0].message.content == "<tool_call>{not json</tool_call>"
        with pytest.raises(BadRequestError, match="max_tokens"):
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], max_tokens=0)
        with pytest.raises(BadRequestError, match="messages"):
            client.chat.completions.create(model="m", messages=[])
        reply = httpx.post(server.url + "/v1/feedback", json={"id": "chatcmpl-unknown", "success": True})
        assert reply.status_code == 404 and "chatcmpl-unknown" in reply.json()["error"]["message"]


@pytest.fixture(scope="module")
def tiny_state_args():
    return ["--policy", "tiny", "--max-tokens", "6", "--dtype", "float32"]


def test_streaming_n_and_the_info_routes_on_the_tiny_default(tiny_state_args):
    with Server(build_state(parse(tiny_state_args))) as server:
        client = server.client()
        messages = [{"role": "user", "content": "What is 2 + 2?"}]
        whole = client.chat.completions.create(model="m", messages=messages, temperature=0)
        chunks = list(client.chat.completions.create(model="m", messages=messages, temperature=0, stream=True))
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
        assert streamed == whole.choices[0].message.content  # greedy: the same tokens, sent as events
        assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
        assert whole.usage.completion_tokens <= 6
        assert whole.choices[0].finish_reason == ("length" if whole.usage.completion_tokens == 6 else "stop")
        two = client.chat.completions.create(model="m", messages=messages, n=2, temperature=1.0, max_tokens=3)
        assert [c.index for c in two.choices] == [0, 1]
        assert [m.id for m in client.models.list().data] == ["rlagent-a"]
        assert httpx.get(server.url + "/health").json() == {"status": "ok", "arms": {"a": "v1:tiny"}}


def test_sticky_fraction_is_the_sha256_prefix():
    # sha256("alice") starts 2bd806c97f0e00af1a1fc3328fa763a9269723c8db8fac4f93af71db186d6e90
    assert sticky_fraction("alice") == int("2bd806c97f0e00a", 16) / 16**15


def test_ab_assignment_is_sticky_by_user_and_feedback_reaches_the_report(tokenizer, tmp_path):
    state = scripted_state(tokenizer, lambda prompt: "42", log=str(tmp_path), arms=("a", "b"), split=0.5)
    arms_of = {}
    with Server(state) as server:
        client = server.client()
        for _ in range(3):
            for user in [f"user-{i}" for i in range(12)]:
                out = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "q"}],
                                                     user=user, max_tokens=4)  # fmt: skip
                arm = out.model_extra["rlagent"]["arm"]
                assert arms_of.setdefault(user, arm) == arm  # the same arm on every request of a user
                assert arm == ("b" if sticky_fraction(user) < 0.5 else "a")
                # feedback: arm b succeeds on users 0-5 only, arm a on user 0 only
                success = int(user.split("-")[1]) < (6 if arm == "b" else 1)
                reply = httpx.post(server.url + "/v1/feedback", json={"id": out.id, "success": success})
                assert reply.status_code == 200 and reply.json()["arm"] == arm
    assert set(arms_of.values()) == {"a", "b"}
    report = ab_report(str(tmp_path))
    for name in ("a", "b"):
        users = [u for u, arm in arms_of.items() if arm == name]
        wins = 3 * sum(int(u.split("-")[1]) < (6 if name == "b" else 1) for u in users)
        arm = report["arms"][name]
        assert (arm["requests"], arm["feedback"], arm["successes"]) == (3 * len(users), 3 * len(users), wins)


def write_log(folder, arm_outcomes: dict) -> None:
    """A --log folder by hand: per arm, a list of feedback outcomes (None = no feedback)."""
    requests, feedback = [], []
    for arm, outcomes in arm_outcomes.items():
        for i, outcome in enumerate(outcomes):
            rid = f"{arm}-{i}"
            prompt = [{"role": "user", "content": f"q{i % 2}"}]
            completion = [{"role": "assistant", "content": f"{arm}{i}"}]
            requests.append({"id": rid, "choice": 0, "arm": arm, "version": f"v1:{arm}", "user": None,
                             "messages": prompt + completion, "tools": None, "prompt": prompt,
                             "completion": completion})  # fmt: skip
            if outcome is not None:
                feedback.append({"id": rid, "success": outcome})
    with open(os.path.join(folder, "requests.jsonl"), "w") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in requests)
    with open(os.path.join(folder, "feedback.jsonl"), "w") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in feedback)


def test_ab_report_numbers_by_hand(tmp_path):
    # a: 12 served, 10 rated, 3 successes; b: 10 served, 10 rated, 8 successes
    write_log(tmp_path, {"a": [True] * 3 + [False] * 7 + [None] * 2, "b": [True] * 8 + [False] * 2})
    report = ab_report(str(tmp_path))
    a, b = report["arms"]["a"], report["arms"]["b"]
    assert (a["requests"], a["feedback"], a["successes"]) == (12, 10, 3)
    # Wilson 3/10, z=1.96: center (0.3 + 0.19208) / 1.38416 = 0.355581; half 1.96*sqrt(0.021 + 0.00960400)/1.38416
    # = 0.247692  ->  [0.107789, 0.603227]
    assert a["success_ci95"] == pytest.approx([0.10778929, 0.60322678], abs=1e-7)
    # 8/10: center (0.8 + 0.19208) / 1.38416 = 0.716738; half 0.226583 -> [0.490157, 0.943319]
    assert b["success_ci95"] == pytest.approx([0.49015685, 0.94331905], abs=1e-7)
    # Fisher, margins 10/10 rows and 11 successes: P(k) = C(10,k) C(10,11-k) / C(20,11) with C(20,11) = 167960;
    # tables as or less likely than k=3 (5400): k=1,2,3 (10+450+5400) and k=8,9,10 (the same) -> 11720/167960
    assert b["p_value"] == pytest.approx(11720 / 167960, rel=1e-9)
    assert b["difference"] == pytest.approx(0.5)
    # pairs: same prompt (q0 / q1 alternate), one success and one failure, within an arm or across arms
    pairs = preference_pairs(str(tmp_path))
    assert pairs and all(p["chosen"] != p["rejected"] and p["prompt"][0]["content"] in ("q0", "q1") for p in pairs)
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    assert len(read_pairs(str(path))) == len(pairs)  # what `rlagent reward` reads


def test_newest_candidate_takes_complete_checkpoints_and_final(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    for step, complete in ((10, True), (20, True), (30, False)):
        folder = checkpoints / f"step-{step}" / "policy"
        folder.mkdir(parents=True)
        (folder / "config.json").write_text("{}")
        if complete:
            (checkpoints / f"step-{step}" / "COMPLETE").write_text("")
            os.utime(checkpoints / f"step-{step}" / "COMPLETE", (step, step))
    (checkpoints / "step-40.tmp").mkdir()
    assert newest_candidate(str(checkpoints)) == str(checkpoints / "step-20")  # step-30 lacks COMPLETE
    assert newest_candidate(str(tmp_path)) == str(checkpoints / "step-20")  # the run folder works too
    (tmp_path / "final").mkdir()
    (tmp_path / "final" / "config.json").write_text("{}")
    assert newest_candidate(str(checkpoints)) == str(tmp_path / "final")


def save_tiny(folder, seed: int) -> str:
    from rlagent.common.config import TinyModelConfig
    from rlagent.common.tiny import build_tiny_model

    tokenizer = build_tiny_tokenizer()
    cfg = TinyModelConfig(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128)
    model = build_tiny_model(cfg, tokenizer, seed)
    with torch.no_grad():  # sharpened (as tests/rlagent/scripted_models.rigged_tiny): varied greedy answers
        for weight in model.parameters():
            if weight.dim() == 2:
                weight.mul_(3.0)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def test_hot_reload_under_load_fails_no_request_and_tags_one_version(tmp_path):
    old, new = save_tiny(tmp_path / "old", 0), save_tiny(tmp_path / "new", 1)
    state = build_state(parse(["--policy", old, "--max-tokens", "4", "--dtype", "float32", "--log", str(tmp_path)]))
    results, reloaded_at = [], {}

    def one(i: int):
        if i == 100:  # half-way: reload while requests are queued and in flight
            reply = httpx.post(server.url + "/admin/reload", json={"path": new}, timeout=120).json()
            reloaded_at.update(reply, done=time.monotonic())
        started = time.monotonic()
        out = client.chat.completions.create(model="m", messages=[{"role": "user", "content": f"n{i % 7}"}],
                                             max_tokens=4, temperature=0)  # fmt: skip
        return started, out

    with Server(state) as server:
        client = server.client()
        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(one, range(200)))  # raises if any request failed
    assert reloaded_at["version"] == "v2:new" and reloaded_at["previous"] == "v1:old"
    versions = [out.system_fingerprint for _, out in results]
    assert len(results) == 200 and set(versions) == {"v1:old", "v2:new"}
    assert all(out.model_extra["rlagent"]["version"] == out.system_fingerprint for _, out in results)
    # a request sent after the reload returned is never served by the old weights
    assert all(out.system_fingerprint == "v2:new" for started, out in results if started > reloaded_at["done"])
    assert state.arms["a"].batches < 200  # concurrent requests were batched
    logged = [json.loads(line) for line in open(tmp_path / "requests.jsonl")]
    assert sorted(row["id"] for row in logged) == sorted(out.id for _, out in results)
    # every answer is its version's greedy answer to that prompt, decoded alone (no mixing of weights in a batch)
    expected = {}
    for version, path in (("v1:old", old), ("v2:new", new)):
        slot = load_slot(path, version, "float32")
        for k in range(7):
            job = Job([{"role": "user", "content": f"n{k}"}], None, 1, 4, 0.0)
            expected[version, f"n{k}"] = decode_batch(slot, [job])[0][0]
    # the two versions answer most prompts differently, so the check below can tell them apart
    assert sum(expected["v1:old", f"n{k}"] != expected["v2:new", f"n{k}"] for k in range(7)) >= 4
    for i, (_, out) in enumerate(results):
        assert out.choices[0].message.content == expected[out.system_fingerprint, f"n{i % 7}"]


def test_watch_serves_a_new_complete_checkpoint_and_skips_a_broken_one(tmp_path, capsys):
    run = tmp_path / "run"
    state = build_state(parse(["--policy", save_tiny(tmp_path / "start", 0), "--max-tokens", "2",
                               "--dtype", "float32", "--watch", str(run / "checkpoints")]))  # fmt: skip
    watcher = threading.Thread(target=state.watch_loop, args=(0.05,), daemon=True)
    with Server(state) as server:
        watcher.start()
        time.sleep(0.2)
        broken = run / "checkpoints" / "step-5"
        (broken / "policy").mkdir(parents=True)
        (broken / "policy" / "config.json").write_text("{not json")
        (broken / "COMPLETE").write_text("")
        deadline = time.monotonic() + 30
        while "reload of" not in capsys.readouterr().out:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert httpx.get(server.url + "/health").json()["arms"]["a"] == "v1:start"  # still serving
        step = run / "checkpoints" / "step-10"
        save_tiny(step / "policy.tmp", 1)  # a checkpoint's model folder has no tokenizer: the served one is kept
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
            if (step / "policy.tmp" / name).exists():
                (step / "policy.tmp" / name).unlink()
        (step / "policy.tmp").rename(step / "policy")
        (step / "COMPLETE").write_text("")
        while httpx.get(server.url + "/health").json()["arms"]["a"] != "v2:step-10":
            assert time.monotonic() < deadline + 30
            time.sleep(0.05)
        out = server.client().chat.completions.create(model="m", messages=[{"role": "user", "content": "q"}])
        assert out.system_fingerprint == "v2:step-10"


@pytest.mark.slow
def test_serve_and_ab_report_as_real_commands(tmp_path):
    """`rlagent serve` as a subprocess (two arms of the tiny default), the openai client, feedback, then
    `rlagent ab-report` on its log and the one-line error of a log folder that does not exist."""
    import subprocess

    from tests.conftest import BIN, ROOT, run_cli

    port, log = free_port(), str(tmp_path / "log")
    cmd = [os.path.join(BIN, "rlagent"), "serve", "--policy", "tiny", "--policy-b", "tiny", "--port", port,
           "--log", log, "--max-tokens", "4"]  # fmt: skip
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.poll() else ""
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        for user in ("ann", "bob", "cy", "dee"):
            out = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], user=user)
            httpx.post(f"http://127.0.0.1:{port}/v1/feedback", json={"id": out.id, "success": user != "bob"})
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    report = run_cli("rlagent", "ab-report", log, "--out", str(tmp_path / "ab.json"))
    arms = json.loads((tmp_path / "ab.json").read_text())["arms"]
    assert sum(arm["requests"] for arm in arms.values()) == 4 and sum(a["successes"] for a in arms.values()) == 3
    assert "requests" in report.stdout
    missing = run_cli("rlagent", "ab-report", str(tmp_path / "nowhere"), check=False)
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1


def test_serve_bad_policy_is_a_one_line_error(capsys):
    from rlagent.cli.serve import main as serve
    from rlagent.common.config import run_main

    with pytest.raises(SystemExit) as exit_info:
        run_main(serve, ["--policy", "no/such/folder", "--port", free_port()], prog="rlagent serve")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no/such/folder" in err[0]
