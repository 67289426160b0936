"""The batched multi-turn engine: policy masks by hand, batched == sequential under greedy decoding, chat-template
render checks, malformed calls, missing EOS and the token budget. Model-driven tests use a rigged tiny Llama whose
next token is scripted (scripted_models.py), so what they check never depends on float noise or training luck."""

import copy

import pytest
import torch

from envs.experts import ScriptedExpert
from rlagent.common.chat import cut_at_eos, encode, encode_many, render_env_reply
from rlagent.common.data import tokenize_conversation
from rlagent.common.tiny import build_tiny_model, build_tiny_tokenizer
from rlagent.rollout.decoding import ModelPolicy, PreallocatedCacheLayer, sample_categorical
from rlagent.rollout.engine import make_envs, run_episodes
from rlagent.rollout.policies import TextPolicy
from tests.rlagent.scripted_models import SMALL, CountdownScript, RiggedModel, rigged_tiny

CALC, KB = "rlagent/Calculator-v0", "rlagent/KBSearch-v0"
MAX_NEW = 8  # < the longest scripted turn (<tool_call> + 10 digits + <|im_end|>): some turns are cut off


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
def rigged(tok):
    """The real tiny Llama with its next token scripted (see scripted_models): varied multi-turn episodes by
    construction, the same on every machine, with the engine's real KV-cache and `generate` paths underneath."""
    return rigged_tiny(tok, CountdownScript(tok, longest=9, answer_every=3))


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


def scripted_turn(script, ids: list[int], max_new_tokens: int) -> list[int]:
    """What the rigged model must generate after `ids`: each token is script(previous token, its position)."""
    turn = []
    while len(turn) < max_new_tokens and (not turn or turn[-1] != script.eos):
        context = ids + turn
        turn.append(script(context[-1], len(context) - 1))
    return turn


def test_model_policy_episode_mask_by_hand(rigged, tok):
    """Every ModelPolicy episode of a batch, rebuilt by hand: prompt + each scripted turn + (forced <|im_end|> if the
    turn was cut off) + the hand-written error reply; the mask is 1 exactly on the generated turns."""
    envs = make_envs(CALC, 16)
    traj = run_episodes(
        ModelPolicy(rigged.model, tok, max_new_tokens=MAX_NEW, greedy=True), envs, list(range(16)), tok
    )
    assert set(traj.turns.tolist()) > {1.0, 2.0} and 0 < traj.missing_eos.sum() < 16  # the cases below occur
    for i in range(16):
        expected_ids, expected_mask = segments_to_ids(tok, prompt_segments(envs[i], traj.tasks[i]))
        for turn in range(int(traj.turns[i])):
            sampled = scripted_turn(rigged.script, expected_ids, MAX_NEW)
            expected_ids, expected_mask = expected_ids + sampled, expected_mask + [1] * len(sampled)
            if turn == traj.turns[i] - 1:
                break  # a final answer or the turn limit: nothing is appended after the last turn
            text = ("" if sampled[-1] == tok.eos_token_id else "<|im_end|>") + "\n<|im_start|>user\n<tool_response>"
            text += "Error: unclosed <tool_call> tag</tool_response><|im_end|>\n<|im_start|>assistant\n"
            reply_ids, reply_mask = segments_to_ids(tok, [(text, 0)])
            expected_ids, expected_mask = expected_ids + reply_ids, expected_mask + reply_mask
        assert episode(traj, i) == (expected_ids, expected_mask), f"episode {i}"
    assert traj.render_mismatch == [False] * 16


# ---------------------------------------------------------------------------------------------------------------------
# Batched == sequential, cache reuse == plain generate


def assert_logits_match_uncached(rigged: RiggedModel, traj, atol: float = 1e-4) -> None:
    """The real (pre-rigging) logits each decode step computed equal one uncached forward of the whole finished
    episode at that position. Rows are matched by (position, fed token); several rows can share that key, so the
    step must match one of them. Measured on this model (32 Calculator episodes): <= 1.2e-6 off as the engine is; with
    half the cached keys zeroed, 0.07 off at the first step it reaches; with positions shifted in batches, 0.36."""
    steps: dict[tuple[int, int], list[torch.Tensor]] = {}
    for positions, last, logits in rigged.records:
        for row, key in enumerate(zip(positions, last)):
            steps.setdefault(key, []).append(logits[row])
    with rigged.disabled() as model, torch.no_grad():
        for i in range(len(traj)):
            ids, mask = episode(traj, i)
            reference = model(torch.tensor([ids])).logits[0]
            for t in [t for t in range(1, len(ids)) if mask[t]]:
                distance = min((row - reference[t - 1]).abs().max() for row in steps[(t - 1, ids[t - 1])])
                assert distance <= atol, f"episode {i}, position {t}: decode logits off by {distance:.2e}"


def recorded_rollout(rigged: RiggedModel, policy, env_id: str, seeds: list[int], tok):
    rigged.records.clear()
    rigged.record = True
    try:
        return run_episodes(policy, make_envs(env_id, len(seeds)), seeds, tok)
    finally:
        rigged.record = False


def test_greedy_batched_equals_sequential(rigged, tok):
    """32 episodes in one batch (left-padded; 1 to 4 turns, turns cut at max_new_tokens, 5+ different lengths, all
    by construction) == 32 single-episode rollouts, token for token; and the batch's KV-cache decode computed the
    same logits as an uncached forward of each finished episode. Rows are placed by position_ids, which the script
    reads: a wrong position changes the tokens."""
    policy = ModelPolicy(rigged.model, tok, max_new_tokens=MAX_NEW, greedy=True)
    seeds = list(range(32))
    batched = recorded_rollout(rigged, policy, CALC, seeds, tok)
    assert set(batched.turns.tolist()) == {1.0, 2.0, 3.0, 4.0} and 0 < batched.missing_eos.sum() < 32
    assert len(set(batched.attention_mask.sum(1).tolist())) >= 5
    assert_logits_match_uncached(rigged, batched)
    env = make_envs(CALC, 1)
    for i, seed in enumerate(seeds):
        alone = run_episodes(policy, env, [seed], tok)
        assert episode(batched, i) == episode(alone, 0), f"episode {i} differs"
        assert batched.env_reward[i] == alone.env_reward[0] and batched.messages[i] == alone.messages[0]
        assert batched.spans[i] == alone.spans[0] and batched.missing_eos[i] == alone.missing_eos[0]


def test_cache_reuse_equals_plain_generate(rigged, tok):
    """Keys/values kept across turns + finished rows dropped == one `model.generate` from scratch per turn: same
    tokens and masks, and both computed the logits of an uncached forward."""
    seeds = list(range(16))
    assert ModelPolicy(rigged.model, tok).reuse_cache
    reused = recorded_rollout(rigged, ModelPolicy(rigged.model, tok, MAX_NEW, greedy=True), CALC, seeds, tok)
    assert (reused.turns > 1).any() and reused.missing_eos.any()
    assert_logits_match_uncached(rigged, reused)
    policy = ModelPolicy(rigged.model, tok, MAX_NEW, greedy=True, reuse_cache=False)
    plain = recorded_rollout(rigged, policy, CALC, seeds, tok)
    assert_logits_match_uncached(rigged, plain)
    assert torch.equal(reused.input_ids, plain.input_ids) and torch.equal(reused.policy_mask, plain.policy_mask)
    assert torch.equal(reused.attention_mask, plain.attention_mask) and reused.spans == plain.spans


def test_noisy_expert_is_the_same_in_a_batch_and_alone(tok):
    """Per-episode actors: a stateful (noisy) expert's episode does not depend on what else is in the batch."""
    seeds = list(range(16))
    batched = run_episodes(expert_policy(tok, noise=0.6), make_envs(KB, 16), seeds, tok)
    env = make_envs(KB, 1)
    for i, seed in enumerate(seeds):
        assert batched.messages[i] == run_episodes(expert_policy(tok, noise=0.6), env, [seed], tok).messages[0]
    assert 0 < batched.success.mean() < 1  # the seeded expert (Python's random) both fails and succeeds here


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


def test_model_malformed_calls_do_not_stop_the_batch(rigged, tok):
    """Sampled (not greedy) decoding of a batch where some rows answer at once and others keep sending malformed
    calls: the batch runs to the end, cut-off turns are closed with a forced <|im_end|>. The rigged logits put all
    mass on one token, so sampling gives exactly the greedy episodes, unseeded, in any test order."""
    seeds = list(range(16))
    sampled = run_episodes(ModelPolicy(rigged.model, tok, max_new_tokens=MAX_NEW), make_envs(CALC, 16), seeds, tok)
    greedy = run_episodes(ModelPolicy(rigged.model, tok, MAX_NEW, greedy=True), make_envs(CALC, 16), seeds, tok)
    assert sampled.invalid_tool_calls.sum() > 0 and (sampled.turns > 1).any() and (sampled.turns == 1).any()
    assert sampled.missing_eos.any() and sampled.render_mismatch == [False] * 16
    assert torch.equal(sampled.input_ids, greedy.input_ids) and sampled.messages == greedy.messages


def test_missing_eos_is_flagged_and_closed_with_a_forced_eos(tok):
    """Every turn hits max_new_tokens=6: 6 policy tokens, no EOS, then a forced <|im_end|> with policy_mask 0."""
    tool_call, seven = tok.convert_tokens_to_ids("<tool_call>"), tok.convert_tokens_to_ids("7")
    never_ends = rigged_tiny(tok, lambda token, position: seven if token in (tool_call, seven) else tool_call)
    policy = ModelPolicy(never_ends.model, tok, max_new_tokens=6, greedy=True)
    traj = run_episodes(policy, make_envs(CALC, 4), [0, 1, 2, 3], tok)
    assert traj.missing_eos.tolist() == [1.0] * 4 and traj.turns.tolist() == [4.0] * 4  # malformed calls to the limit
    for i in range(4):
        ids, mask = episode(traj, i)
        policy_spans = [(start, end) for start, end, kind in traj.spans[i] if kind == "policy"]
        assert [tok.decode(ids[start:end]) for start, end in policy_spans] == ["<tool_call>77777"] * 4
        for _, end in policy_spans[:-1]:
            assert ids[end] == tok.eos_token_id and mask[end] == 0
        assert len(ids) == policy_spans[-1][1]  # the last turn ended the episode: nothing forced after it
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


def test_model_sequences_stay_within_max_total_tokens(rigged, tok):
    """A limit that the free-running batch exceeds: every sequence stays within it, and more episodes are truncated."""
    policy, envs, seeds = (
        ModelPolicy(rigged.model, tok, max_new_tokens=MAX_NEW, greedy=True),
        make_envs(CALC, 8),
        [*range(8)],
    )
    free = run_episodes(policy, envs, seeds, tok)
    limit = max(start_end[1] for spans in free.spans for start_end in spans[:1]) + MAX_NEW + 30  # room for 1-2 turns
    assert free.attention_mask.sum(1).max() > limit  # by construction: the limit binds
    traj = run_episodes(policy, envs, seeds, tok, max_total_tokens=limit)
    assert traj.attention_mask.sum(1).max() <= limit and traj.truncated.sum() > free.truncated.sum()


def test_prompt_that_cannot_fit_raises(tok):
    model, envs = build_tiny_model(SMALL, tok, seed=0), make_envs(CALC, 1)
    prompt = run_episodes(expert_policy(tok), envs, [0], tok).spans[0][0][1]
    limit = prompt + 40 - 1  # one token short of the prompt plus a full turn
    with pytest.raises(ValueError, match=f"max_total_tokens={limit}"):
        run_episodes(ModelPolicy(model, tok, max_new_tokens=40), envs, [0], tok, max_total_tokens=limit)


def test_checkpoint_sampling_knobs_are_neutralised(tok):
    """A checkpoint's generation_config (Qwen: top_k=20, top_p=0.8, repetition_penalty=1.05) must not leak into
    rollouts: PPO needs samples from the true policy (docs/ppo.md B.6)."""
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
