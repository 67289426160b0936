"""The batched multi-turn engine: policy masks by hand, batched == sequential under greedy decoding, chat-template
render checks, malformed calls, missing EOS and the token budget."""

import copy

import pytest
import torch

from envs.experts import ScriptedExpert
from rlagent import train_sft
from rlagent.config import TinyModelConfig
from rlagent.data import tokenize_conversation
from rlagent.rollout import (
    ModelPolicy,
    PreallocatedCacheLayer,
    TextPolicy,
    cut_at_eos,
    encode,
    encode_many,
    make_envs,
    render_env_reply,
    run_episodes,
    sample_categorical,
)
from rlagent.tiny import build_tiny_model, build_tiny_tokenizer
from tests.conftest import SMALL_MODEL

CALC, KB = "rlagent/Calculator-v0", "rlagent/KBSearch-v0"
SMALL = TinyModelConfig(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # A 64-wide model gains nothing from intra-op threads, and on a busy machine OpenMP spinning makes it ~30x slower.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_thread):
    """A small model after 80 SFT steps (the real stage-1 code): peaked outputs, tool-call attempts, often malformed
    or cut off — multi-turn episodes of varied length, which is what the engine tests need."""
    out = tmp_path_factory.mktemp("sft")
    train_sft.main(
        [
            f"output_dir={out}",
            "max_steps=80",
            "data.episodes=100",
            "data.noise=0.2",
            "optim.lr=1e-2",
            "optim.batch_size=8",
            "optim.micro_batch_size=8",
            "optim.warmup_ratio=0",
            "optim.schedule=constant",
            "data.eval_fraction=0",
            "eval_every=0",
            "save_every=0",
            "progress=false",
            "report_to=[]",
            *SMALL_MODEL,
        ]
    )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(out / "final"), AutoTokenizer.from_pretrained(out / "final")


def expert_policy(tokenizer, noise: float = 0.0) -> TextPolicy:
    return TextPolicy(lambda seed: ScriptedExpert(noise, seed).act, tokenizer, per_episode=True)


def segments_to_ids(tokenizer, segments: list[tuple[str, int]]) -> tuple[list[int], list[int]]:
    ids, mask = [], []
    for text, is_policy in segments:
        piece = tokenizer(text, add_special_tokens=False).input_ids
        ids, mask = ids + piece, mask + [is_policy] * len(piece)
    return ids, mask


def episode(traj, i: int) -> tuple[list[int], list[int]]:
    length = int(traj.attention_mask[i].sum())
    return traj.input_ids[i, :length].tolist(), [int(m) for m in traj.policy_mask[i, :length].tolist()]


def prompt_segments(env, task: dict) -> list[tuple[str, int]]:
    return [
        (f"<|im_start|>system\n{env.unwrapped.system_prompt}\nTools: calculator(expression)<|im_end|>\n", 0),
        (f"<|im_start|>user\n{task['prompt']}<|im_end|>\n", 0),
        ("<|im_start|>assistant\n", 0),
    ]


# ---------------------------------------------------------------------------------------------------------------------
# policy_mask by hand


def test_expert_two_turn_episode_tokens_and_mask_by_hand(tok):
    """Tool call -> tool response -> answer: the mask is 1 exactly on the two assistant turns (with <|im_end|>)."""
    envs = make_envs(CALC, 1)
    traj = run_episodes(expert_policy(tok), envs, [0], tok)
    task = traj.tasks[0]
    call = '{"name": "calculator", "arguments": {"expression": "' + task["expression"] + '"}}'
    segments = prompt_segments(envs[0], task) + [
        (f"<tool_call>{call}</tool_call><|im_end|>", 1),
        (f"\n<|im_start|>user\n<tool_response>{task['answer']}</tool_response><|im_end|>\n<|im_start|>assistant\n", 0),
        (f"The answer is {task['answer']}.<|im_end|>", 1),
    ]
    expected_ids, expected_mask = segments_to_ids(tok, segments)
    assert episode(traj, 0) == (expected_ids, expected_mask)
    kinds = [kind for _, _, kind in traj.spans[0]]
    assert kinds == ["prompt", "policy", "env", "policy"]
    assert traj.success.tolist() == [1.0] and traj.env_reward.tolist() == [1.0] and traj.turns.tolist() == [2.0]
    assert traj.tool_calls.tolist() == [1.0] and traj.invalid_tool_calls.tolist() == [0.0]
    assert traj.render_mismatch == [False] and traj.missing_eos.tolist() == [0.0]


def test_model_policy_episode_mask_by_hand(trained):
    """A ModelPolicy episode of several turns: tokens = prompt + each sampled turn + (forced <|im_end|> if the turn
    was cut off) + the hand-written tool response; the mask is 1 exactly on the sampled turns, and every masked token
    is the model's own greedy choice."""
    model, tok = trained
    envs = make_envs(CALC, 4)
    traj = run_episodes(ModelPolicy(model, tok, max_new_tokens=40, greedy=True), envs, [0, 1, 2, 3], tok)
    i = int(traj.turns.argmax())
    assert traj.turns[i] >= 2
    ids, mask = episode(traj, i)
    policy_turns = [ids[start:end] for start, end, kind in traj.spans[i] if kind == "policy"]
    assistant = [m for m in traj.messages[i] if m["role"] == "assistant"]
    replies = [m for m in traj.messages[i] if m["role"] == "tool"]
    expected_ids, expected_mask = segments_to_ids(tok, prompt_segments(envs[i], traj.tasks[i]))
    for turn, sampled in enumerate(policy_turns):
        expected_ids, expected_mask = expected_ids + sampled, expected_mask + [1] * len(sampled)
        has_eos = sampled[-1] == tok.eos_token_id
        if not assistant[turn].get("tool_calls"):  # raw text kept as the message: it is exactly what was sampled
            assert tok.decode(sampled[:-1] if has_eos else sampled) == assistant[turn]["content"]
        if turn < len(replies) and turn < len(policy_turns) - 1:
            text = ("" if has_eos else "<|im_end|>") + "\n<|im_start|>user\n<tool_response>"
            text += replies[turn]["content"] + "</tool_response><|im_end|>\n<|im_start|>assistant\n"
            reply_ids, reply_mask = segments_to_ids(tok, [(text, 0)])
            expected_ids, expected_mask = expected_ids + reply_ids, expected_mask + reply_mask
    assert (ids, mask) == (expected_ids, expected_mask)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    positions = [p for p in range(len(ids)) if mask[p]]
    chosen = logits[[p - 1 for p in positions], [ids[p] for p in positions]]
    best = logits[[p - 1 for p in positions]].max(-1).values
    assert torch.all(chosen >= best - 1e-4)


def test_greedy_batched_equals_sequential(trained):
    """32 episodes in one batch (left-padded, different lengths and turn counts) == 32 single-episode rollouts."""
    model, tok = trained
    policy = ModelPolicy(model, tok, max_new_tokens=40, greedy=True)
    seeds = list(range(32))
    batched = run_episodes(policy, make_envs(CALC, 32), seeds, tok)
    assert len(set(batched.turns.tolist())) > 1 and len(set(batched.attention_mask.sum(1).tolist())) > 8
    env = make_envs(CALC, 1)
    for i, seed in enumerate(seeds):
        alone = run_episodes(policy, env, [seed], tok)
        assert episode(batched, i) == episode(alone, 0), f"episode {i} differs"
        assert batched.env_reward[i] == alone.env_reward[0] and batched.messages[i] == alone.messages[0]


def test_cache_reuse_equals_plain_generate(trained):
    """Keys/values kept across turns + finished rows dropped == one `model.generate` from scratch per turn."""
    model, tok = trained
    seeds = list(range(16))
    reused = run_episodes(ModelPolicy(model, tok, 40, greedy=True), make_envs(CALC, 16), seeds, tok)
    plain = run_episodes(ModelPolicy(model, tok, 40, greedy=True, reuse_cache=False), make_envs(CALC, 16), seeds, tok)
    assert ModelPolicy(model, tok).reuse_cache and (reused.turns > 1).any()
    assert torch.equal(reused.input_ids, plain.input_ids) and torch.equal(reused.policy_mask, plain.policy_mask)


def test_noisy_expert_is_the_same_in_a_batch_and_alone(tok):
    """Per-episode actors: a stateful (noisy) expert's episode does not depend on what else is in the batch."""
    seeds = list(range(16))
    batched = run_episodes(expert_policy(tok, noise=0.6), make_envs(KB, 16), seeds, tok)
    env = make_envs(KB, 1)
    for i, seed in enumerate(seeds):
        assert batched.messages[i] == run_episodes(expert_policy(tok, noise=0.6), env, [seed], tok).messages[0]
    assert 0 < batched.success.mean() < 1


# ---------------------------------------------------------------------------------------------------------------------
# Render checks


@pytest.mark.parametrize("env_id", [CALC, KB])
def test_expert_episodes_match_a_full_render(tok, env_id):
    """Expert episodes (noisy: malformed calls, loops, guesses) never drift from a fresh render of the conversation,
    and their policy_mask equals the SFT assistant mask of the same conversation."""
    traj = run_episodes(expert_policy(tok, noise=0.7), make_envs(env_id, 24), list(range(24)), tok)
    assert traj.render_mismatch == [False] * 24
    assert traj.invalid_tool_calls.sum() > 0 and traj.truncated.sum() > 0  # the noise modes were exercised
    for i in range(24):
        ids, mask = episode(traj, i)
        sft = tokenize_conversation(tok, traj.messages[i], traj.tools[i], max_length=10_000)
        assert sft.input_ids[: len(ids)] == ids and sft.assistant_mask[: len(ids)] == mask


def test_encode_equals_the_tokenizer_call(tok):
    texts = ["<|im_start|>tool\n<tool_response>42</tool_response><|im_end|>\n<|im_start|>assistant\n",
             "héllo  wörld 12345 <tool_call>{}", "", " leading space\n\n"]  # fmt: skip
    assert tok.is_fast
    for text in texts:
        assert encode(tok, text) == tok(text, add_special_tokens=False).input_ids


def test_encode_ignores_truncation_and_padding_stored_in_the_backend(tok):
    """v4-era tokenizer.json files can carry truncation/padding; the tokenizer call switches them off, so must we."""
    stored = copy.deepcopy(tok)
    stored.backend_tokenizer.enable_truncation(max_length=4)
    stored.backend_tokenizer.enable_padding(pad_id=tok.pad_token_id, pad_token=tok.pad_token)
    texts = ["What is 12 plus 34?", "Hi"]
    expected = [tok(text, add_special_tokens=False).input_ids for text in texts]
    assert len(expected[0]) > 4
    assert encode_many(stored, texts) == expected and encode(stored, texts[1]) == expected[1]


def test_env_reply_fast_path_equals_the_two_render_delta(tok, monkeypatch):
    """With the context given, one render is used when the context decodes to a prefix of it; either way the reply
    tokens are the same, and a context the template would not produce falls back to the two-render delta."""
    call = {"type": "function", "function": {"name": "calculator", "arguments": {"expression": "2+3"}}}
    history = [{"role": "user", "content": "What is 2 plus 3?"}, {"role": "assistant", "tool_calls": [call]}]
    env = [{"role": "tool", "name": "calculator", "content": "5"}]
    tools = make_envs(CALC, 1)[0].reset(seed=0)[1]["tools"]
    rendered = tok.apply_chat_template(history, tools=tools, tokenize=False)
    context = tok(rendered[: rendered.rindex(tok.eos_token)], add_special_tokens=False).input_ids + [tok.eos_token_id]
    full = tok.apply_chat_template(history + env, tools=tools, tokenize=False, add_generation_prompt=True)
    renders = []
    render = tok.apply_chat_template
    monkeypatch.setattr(tok, "apply_chat_template", lambda *a, **k: renders.append(1) or render(*a, **k))
    slow = render_env_reply(tok, history, env, tools)
    assert len(renders) == 2
    assert render_env_reply(tok, history, env, tools, context=context) == slow and len(renders) == 3
    assert tok.decode(context + slow) == full
    odd = tok(rendered.replace('"2+3"', '"2+3" '), add_special_tokens=False).input_ids  # not what the template writes
    assert render_env_reply(tok, history, env, tools, context=odd) == slow and len(renders) == 5


def test_oddly_spaced_tool_call_is_reported_but_the_episode_continues(tok):
    """The template would render `{"name": ...}` with spaces; the policy's compact JSON is kept token for token."""
    odd = '<tool_call>{"name":"calculator","arguments":{"expression":"2+3"}}</tool_call>'

    def act(messages, task):
        return odd if len(messages) == 2 else "The answer is 5."

    traj = run_episodes(TextPolicy(act, tok), make_envs(CALC, 1), [0], tok)
    assert traj.render_mismatch == [True]
    assert traj.turns.tolist() == [2.0] and traj.tool_calls.tolist() == [1.0] and traj.invalid_tool_calls.sum() == 0
    ids, _ = episode(traj, 0)
    assert tok(odd, add_special_tokens=False).input_ids + [tok.eos_token_id] == ids[slice(*traj.spans[0][1][:2])]
    assert traj.messages[0][-2] == {"role": "tool", "name": "calculator", "content": "5"}


# ---------------------------------------------------------------------------------------------------------------------
# Malformed calls, missing EOS, token budget


MALFORMED = [
    '<tool_call>{"name": "calculator", "arguments": {"expression": "1+1"}</tool_call>',  # bad JSON
    '<tool_call>{"name": "calculator"',  # unclosed tag
    "</tool_call>",  # stray closing tag
    '<tool_call>{"name": "CALC", "arguments": {}}</tool_call>',  # unknown tool
    '<tool_call>{"name": "calculator", "arguments": "1+1"}</tool_call>',  # arguments not an object
]


@pytest.mark.parametrize("bad", MALFORMED)
def test_malformed_tool_call_gets_an_error_turn_and_continues(tok, bad):
    def act(messages, task):
        return bad if len(messages) == 2 else "The answer is 5."

    traj = run_episodes(TextPolicy(act, tok), make_envs(CALC, 1), [0], tok)
    assert traj.turns.tolist() == [2.0] and traj.invalid_tool_calls.tolist() == [1.0]
    assert traj.tool_call_turns.tolist() == [1.0] and traj.tool_calls.tolist() == [0.0]
    assert traj.reward_components[0]["invalid_call"] == pytest.approx(-0.1)
    ids, mask = episode(traj, 0)
    start, end, kind = traj.spans[0][2]
    assert kind == "env" and "<tool_response>Error:" in tok.decode(ids[start:end]) and sum(mask[start:end]) == 0
    assert traj.render_mismatch == [False]


def test_model_malformed_calls_do_not_stop_the_batch(trained):
    model, tok = trained
    traj = run_episodes(ModelPolicy(model, tok, max_new_tokens=40), make_envs(CALC, 16), list(range(16)), tok)
    assert traj.invalid_tool_calls.sum() > 0 and (traj.turns > 1).any()
    assert traj.render_mismatch == [False] * 16  # cut-off turns are closed with a forced <|im_end|>


def test_missing_eos_is_flagged_and_closed_with_a_forced_eos(trained):
    """Every turn hits max_new_tokens=6: 6 policy tokens, no EOS, then a forced <|im_end|> with policy_mask 0."""
    model, tok = trained
    traj = run_episodes(ModelPolicy(model, tok, max_new_tokens=6, greedy=True), make_envs(CALC, 4), [0, 1, 2, 3], tok)
    assert traj.missing_eos.tolist() == [1.0] * 4
    for i in range(4):
        ids, mask = episode(traj, i)
        for (start, end, kind), following in zip(traj.spans[i], traj.spans[i][1:] + [None]):
            if kind == "policy":
                assert end - start == 6 and tok.eos_token_id not in ids[start:end]
                if following is not None:
                    assert ids[end] == tok.eos_token_id and mask[end] == 0
    assert traj.render_mismatch == [False] * 4


def test_token_budget_ends_the_episode_as_truncated(tok):
    """No room for the tool response plus another full turn: truncated, with the turn-limit penalty."""
    envs = make_envs(CALC, 1)
    full = run_episodes(expert_policy(tok), envs, [0], tok)
    after_call = full.spans[0][1][1]
    traj = run_episodes(expert_policy(tok), envs, [0], tok, max_total_tokens=after_call + 10)
    assert traj.truncated.tolist() == [1.0] and traj.success.tolist() == [0.0] and traj.turns.tolist() == [1.0]
    assert traj.env_reward.tolist() == [-0.5] and traj.reward_components[0]["truncated"] == -0.5
    assert int(traj.attention_mask.sum()) == after_call  # the env reply was not appended


def test_model_sequences_stay_within_max_total_tokens(trained):
    model, tok = trained
    policy, envs = ModelPolicy(model, tok, max_new_tokens=40, greedy=True), make_envs(CALC, 8)
    free = run_episodes(policy, envs, list(range(8)), tok)
    limit = int(free.attention_mask.sum(1).float().median())
    traj = run_episodes(policy, envs, list(range(8)), tok, max_total_tokens=limit)
    assert traj.attention_mask.sum(1).max() <= limit and traj.truncated.sum() > free.truncated.sum()


def test_prompt_that_cannot_fit_raises(tok):
    model, envs = build_tiny_model(SMALL, tok, seed=0), make_envs(CALC, 1)
    prompt = run_episodes(expert_policy(tok), envs, [0], tok).spans[0][0][1]
    limit = prompt + 40 - 1  # one token short of the prompt plus a full turn
    with pytest.raises(ValueError, match=f"max_total_tokens={limit}"):
        run_episodes(ModelPolicy(model, tok, max_new_tokens=40), envs, [0], tok, max_total_tokens=limit)


def test_checkpoint_sampling_knobs_are_neutralised(tok):
    """A checkpoint's generation_config (Qwen: top_k=20, top_p=0.8, repetition_penalty=1.05) must not leak into
    rollouts: PPO needs samples from the true policy (PPO_CHECKLIST B.6)."""
    model = build_tiny_model(SMALL, tok, seed=0)
    model.generation_config.top_k, model.generation_config.top_p = 20, 0.8
    model.generation_config.repetition_penalty = 1.05
    policy = ModelPolicy(model, tok, temperature=0.7)
    merged, _ = model._prepare_generation_config(policy.generation_config)
    assert (merged.top_k, merged.top_p, merged.repetition_penalty, merged.temperature) == (0, 1.0, 1.0, 0.7)


def test_cut_at_eos():
    assert cut_at_eos([5, 9, 1, 1], eos_id=9) == [5, 9]
    assert cut_at_eos([5, 1, 7, 1], eos_id=9) == [5, 1, 7, 1]  # no eos: every token was sampled, keep them all


def test_sample_categorical_matches_the_probabilities_and_skips_zeros():
    torch.manual_seed(0)
    probs = torch.tensor([[0.0, 0.25, 0.0, 0.75], [0.5, 0.0, 0.5, 0.0], [0.0, 0.0, 0.0, 1.0]])
    n = 40_000
    draws = sample_categorical(probs.repeat(n, 1)).view(n, 3)
    for row in range(3):
        frequency = torch.bincount(draws[:, row], minlength=4).float() / n
        assert torch.allclose(frequency, probs[row], atol=0.01)  # 4 standard errors at p = 0.5
        assert (frequency[probs[row] == 0] == 0).all()
    with pytest.raises(ValueError, match="inf or nan"):
        sample_categorical(torch.tensor([[0.5, float("nan")]]))


def test_preallocated_cache_layer_equals_concatenation():
    """Writes into a buffer (growing past its capacity when it must) give what DynamicLayer's torch.cat gives."""
    torch.manual_seed(0)
    chunks = [torch.randn(3, 2, t, 4) for t in (3, 1, 1, 2)]
    layer = PreallocatedCacheLayer(capacity=5)
    for i, chunk in enumerate(chunks):
        keys, values = layer.update(chunk, -chunk)
        expected = torch.cat(chunks[: i + 1], dim=-2)
        assert torch.equal(keys, expected) and torch.equal(values, -expected)
    assert layer.get_seq_length() == 7 and layer.key_buffer.shape[-2] >= 7  # grew past capacity 5
    layer.batch_select_indices(torch.tensor([2, 0]))
    assert torch.equal(layer.keys, torch.cat(chunks, dim=-2)[[2, 0]])
    assert torch.equal(layer.values, -torch.cat(chunks, dim=-2)[[2, 0]])
    keys, values = layer.update(chunks[1][:2], 2 * chunks[1][:2])
    assert keys.shape == (2, 2, 8, 4) and torch.equal(keys[:, :, -1:], chunks[1][:2])
    assert torch.equal(values[:, :, :-1], -torch.cat(chunks, dim=-2)[[2, 0]])
    assert torch.equal(values[:, :, -1:], 2 * chunks[1][:2])
    with pytest.raises(NotImplementedError):
        layer.crop(-1)
    layer.reset()
    assert layer.get_seq_length() == 0
