"""Rollouts over the chat-template matrix: every tool-capable template TRL ships (Qwen3's, which renders the last
assistant message differently from earlier ones, included, unprepared), rlagent's ChatML tool template and the tiny
default, with the tiny and the real SmolLM2 tokenizers, and scripted tool calls written in the template's own
(canonical) form and in compact JSON. What must hold on each: no crash; the policy tokens are exactly the scripted
ones; the environment's replies join them at the end-of-turn boundary, so the episode reads as a fresh render of its
conversation except the policy's own text; render_mismatch is set exactly when that text differs from the render."""

import json

import pytest

from envs.experts import ScriptedExpert
from envs.parsing import parse_assistant
from rlagent.common.chat import SENTINEL, encode
from rlagent.common.chat_templates import end_of_turn_token, prepare_tokenizer, read_template
from rlagent.common.tiny import build_tiny_tokenizer
from rlagent.rollout.engine import make_envs, run_episodes
from rlagent.rollout.policies import TextPolicy
from tests.rlagent.smollm2 import require_smollm2, smollm2_tokenizer
from tests.rlagent.test_chat_templates import TOOL_TEMPLATES, trl_template

TEMPLATES = ["tiny-default", "chatml_tools", *TOOL_TEMPLATES]
SEEDS = [0, 1]


def make_tokenizer(which: str, template: str):
    """The tokenizer with its fix-ups (eos, pad), then the template under test put back as is (prepare_tokenizer
    would swap Qwen3's for its prefix-stable training twin; the engine must cope without that)."""
    if which == "smollm2":
        require_smollm2()
    tokenizer = build_tiny_tokenizer() if which == "tiny" else smollm2_tokenizer()
    if template == "tiny-default":
        tokenizer.chat_template = build_tiny_tokenizer().chat_template
    else:
        tokenizer.chat_template = (
            read_template("chatml_tools") if template == "chatml_tools" else trl_template(template)
        )
    chosen = tokenizer.chat_template
    prepare_tokenizer(tokenizer, verbose=False)
    tokenizer.chat_template = chosen
    return tokenizer


def render_not_last(tokenizer, messages, tools, generation_prompt=False) -> str:
    return tokenizer.apply_chat_template(
        messages, tools=tools, tokenize=False, add_generation_prompt=generation_prompt
    )


def canonical_text(tokenizer, history: list[dict], tools, text: str) -> str:
    """What the template itself renders for the assistant message `text` parses to, between the generation prompt
    and the end-of-turn token (a closing user message keeps it from being the last, as in the engine)."""
    parsed = parse_assistant(text)
    message = {"role": "assistant", "content": parsed.content}
    if parsed.tool_calls:
        message["tool_calls"] = [{"type": "function", "function": call} for call in parsed.tool_calls]
    before = render_not_last(tokenizer, history, tools, generation_prompt=True)
    after = render_not_last(tokenizer, history + [message, {"role": "user", "content": SENTINEL}], tools)
    assert after.startswith(before)
    rest = after[len(before) :]
    return rest[: rest.index(tokenizer.eos_token)]


def compact(text: str) -> str:
    """The expert's tool call as JSON without spaces (a form no template renders)."""
    parsed = parse_assistant(text)
    if not parsed.tool_calls:
        return text
    return "".join(f"<tool_call>{json.dumps(call, separators=(',', ':'))}</tool_call>" for call in parsed.tool_calls)


def speaks_hermes(tokenizer) -> bool:
    """Does the template render a tool call as Hermes JSON that the environments parse back, right after its
    generation prompt? Others (XML <function=...> calls, Python-style calls, a think block in the generation prompt
    that later renders drop) are outside the project's tool-call format: rollouts on them must still not crash."""
    history = [{"role": "user", "content": "Compute 1 + 2."}]
    call = {"name": "calculator", "arguments": {"expression": "1+2"}}
    try:
        text = canonical_text(tokenizer, history, None, compact(f"<tool_call>{json.dumps(call)}</tool_call>"))
    except (AssertionError, ValueError):
        return False
    return parse_assistant(text).tool_calls == [call]


def play(tokenizer, form: str, hermes: bool = True):
    """One calculator episode per seed; returns (trajectory, [(written, canonical) per policy turn] per episode)."""
    written: dict[int, list[tuple[str, str]]] = {seed: [] for seed in SEEDS}

    def make(seed):
        expert = ScriptedExpert(0.0, seed)

        def act(messages, task):
            text = expert.act(messages, task)
            canonical = canonical_text(tokenizer, messages, tools_of[seed], text) if hermes else text
            out = canonical if form == "canonical" else compact(text)
            written[seed].append((out, canonical))
            return out

        return act

    envs = make_envs("rlagent/Calculator-v0", len(SEEDS))
    tools_of = {seed: env.reset(seed=seed)[1]["tools"] for seed, env in zip(SEEDS, envs)}
    # room for the longest system prompts (tools described at length) in the byte-level tiny vocabulary
    traj = run_episodes(TextPolicy(make, tokenizer, per_episode=True), envs, SEEDS, tokenizer, max_total_tokens=4096)
    return traj, [written[seed] for seed in SEEDS]


def policy_runs(ids: list[int], mask: list[int]) -> list[list[int]]:
    runs, current = [], []
    for token, marked in zip(ids, mask):
        if marked:
            current.append(token)
        elif current:
            runs, current = runs + [current], []
    return runs + ([current] if current else [])


@pytest.mark.parametrize("form", ["canonical", "compact"])
@pytest.mark.parametrize("template", TEMPLATES)
@pytest.mark.parametrize("which", ["tiny", "smollm2"])
def test_rollout_on_every_template(which, template, form):
    tokenizer = make_tokenizer(which, template)
    # A template whose end-of-turn marker is not a token of this vocabulary (Llama's <|eot_id|> here) is held only to
    # "no crash, policy tokens kept", like one with another tool-call format.
    hermes = end_of_turn_token(tokenizer) == tokenizer.eos_token and speaks_hermes(tokenizer)
    traj, written = play(tokenizer, form, hermes)
    for i, turns in enumerate(written):
        n = int(traj.attention_mask[i].sum())
        ids, mask = traj.input_ids[i, :n].tolist(), traj.policy_mask[i, :n].int().tolist()
        # 1. the policy tokens are the scripted text's tokens + eos, turn by turn, never re-tokenised
        assert policy_runs(ids, mask) == [encode(tokenizer, out) + [tokenizer.eos_token_id] for out, _ in turns]
        if not hermes:
            continue  # another tool-call format: the episode ran without crashing, which is what is owed here
        assert traj.success[i] == 1.0
        # 2. everything else is the template's render: swap the written text for the canonical one and compare
        decoded = tokenizer.decode(ids, skip_special_tokens=False)
        for out, canonical in turns:
            decoded = decoded.replace(out, canonical)
        fresh = render_not_last(tokenizer, traj.messages[i] + [{"role": "user", "content": SENTINEL}], traj.tools[i])
        assert fresh.startswith(decoded), (decoded, fresh)
        # 3. a mismatch is reported exactly when the policy's text is not what the template renders
        assert traj.render_mismatch[i] == any(out != canonical for out, canonical in turns)


def test_matrix_covers_a_template_that_is_not_prefix_stable_and_both_forms_differ():
    """Guards the matrix: Qwen3's template is in it, and the compact form really differs from its canonical one."""
    from rlagent.common.chat_templates import is_prefix_stable

    tokenizer = make_tokenizer("tiny", "qwen3.jinja")
    assert "qwen3.jinja" in TEMPLATES and not is_prefix_stable(tokenizer) and speaks_hermes(tokenizer)
    assert sum(speaks_hermes(make_tokenizer("tiny", name)) for name in TEMPLATES) >= 5
    traj, written = play(tokenizer, "compact")
    assert all(turns[0][0] != turns[0][1] for turns in written)
    assert traj.render_mismatch == [True] * len(SEEDS)
