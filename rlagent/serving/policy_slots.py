"""What a server arm serves: a loaded policy version, its batching worker, and hot reload.

A `Slot` is one immutable (version, backend, tokenizer). An `Arm` owns a worker thread that takes queued requests,
groups those with the same sampling settings into one batch (up to `max_batch` rows, waiting `batch_wait_s` for more
to arrive) and decodes the batch with the slot it read when the batch started. Reloading builds the new slot first,
then swaps one reference: a batch in flight finishes on the old weights, every later batch uses the new ones, so no
request fails or mixes versions, and each answer names the version that produced it.
"""

from __future__ import annotations

import os
import queue
import re
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

from rlagent.common.chat import encode
from rlagent.rollout.backends import GenerationRequest, SamplingParams, build_backend
from rlagent.rollout.exported import export_info, needs_custom_loader
from rlagent.rollout.policies import load_eval_model, load_export_backend

STEP_RE = re.compile(r"step-(\d+)$")
MODEL_SUBFOLDERS = ("policy", "model")  # where PPO / SFT checkpoints keep the model inside step-N


@dataclass(frozen=True)
class Slot:
    """One loaded policy version."""

    version: str  # what responses are tagged with, e.g. "v2:step-40"
    path: str  # the folder (or spec) it was loaded from
    backend: object  # a generation backend (rlagent.rollout.backends)
    tokenizer: object


def model_folder(path: str) -> str:
    """The HF model inside a checkpoint folder (step-N/policy or step-N/model), or `path` itself."""
    for name in MODEL_SUBFOLDERS:
        if os.path.isfile(os.path.join(path, name, "config.json")) or os.path.isfile(
            os.path.join(path, name, "adapter_config.json")
        ):
            return os.path.join(path, name)
    return path


def load_slot(spec: str, version: str, dtype: str = "auto", tokenizer=None) -> Slot:
    """Load `spec` (any --policy spec, an export, or a checkpoint step-N folder) behind a generation backend.

    A checkpoint has no tokenizer of its own: `tokenizer` (the one being served) is reused for it."""
    from rlagent.common.config import ModelConfig
    from rlagent.common.modeling import load_causal_lm, load_tokenizer

    folder = model_folder(spec) if os.path.isdir(spec) else spec
    info = export_info(folder)
    if needs_custom_loader(info):
        tokenizer = load_tokenizer(folder, "--policy")
        backend = load_export_backend(folder, info, tokenizer)
        return Slot(version, spec, backend, tokenizer)
    has_tokenizer = os.path.isfile(os.path.join(folder, "tokenizer_config.json")) or not os.path.isdir(folder)
    if tokenizer is None or has_tokenizer:
        model, tokenizer = load_eval_model(folder)
    else:
        model = load_causal_lm(ModelConfig(name_or_path=folder), tokenizer, seed=0)
    return Slot(version, spec, build_backend("hf", model, tokenizer, dtype), tokenizer)


def newest_candidate(watch_dir: str) -> str | None:
    """The newest complete policy under a run's checkpoints folder (or the run folder itself): `final/` of the run
    or a `step-N` with its COMPLETE marker, whichever was finished last (a step-N.tmp being written never counts)."""
    checkpoints = (
        watch_dir
        if os.path.basename(os.path.normpath(watch_dir)) == "checkpoints"
        else os.path.join(watch_dir, "checkpoints")
    )
    found = []
    if os.path.isdir(checkpoints):
        for name in os.listdir(checkpoints):
            marker = os.path.join(checkpoints, name, "COMPLETE")
            if STEP_RE.search(name) and os.path.isfile(marker):
                found.append(
                    (os.path.getmtime(marker), int(STEP_RE.search(name).group(1)), os.path.join(checkpoints, name))
                )
    final = os.path.join(os.path.dirname(os.path.normpath(checkpoints)), "final")
    if os.path.isfile(os.path.join(final, "config.json")) or os.path.isfile(
        os.path.join(final, "adapter_config.json")
    ):
        found.append((os.path.getmtime(final), float("inf"), final))
    return max(found)[2] if found else None


@dataclass
class Job:
    """One request: its conversation, how many choices, its sampling settings; the future gets (slot, texts).
    The prompt is rendered by the worker with the tokenizer of the slot that serves it."""

    messages: list[dict]
    tools: list | None
    n: int
    max_tokens: int
    temperature: float
    future: Future = field(default_factory=Future)

    def settings(self) -> tuple:
        return (self.max_tokens, self.temperature)


class Arm:
    """A served policy (one A/B arm): its current slot, a request queue and the worker thread that batches it."""

    def __init__(self, name: str, slot: Slot, max_batch: int = 16, batch_wait_s: float = 0.005):
        self.name, self.slot = name, slot
        self.max_batch, self.batch_wait_s = max_batch, batch_wait_s
        self.jobs: queue.Queue = queue.Queue()
        self.reload_lock = threading.Lock()
        self.loads = 1  # versions loaded so far (numbers the next version)
        self.batches = 0  # batches decoded (tests read it to see that requests were batched)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name=f"rlagent-arm-{name}", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> Future:
        self.jobs.put(job)
        return job.future

    def swap(self, slot: Slot) -> Slot:
        """Serve `slot` from the next batch on; returns the previous one."""
        previous, self.slot = self.slot, slot
        return previous

    def close(self) -> None:
        self._stop.set()
        self.jobs.put(None)
        self._thread.join(timeout=30)

    def _work(self) -> None:
        pending: list[Job] = []
        while not self._stop.is_set():
            batch, pending = self._next_batch(pending)
            if batch:
                self._run(batch)

    def _next_batch(self, pending: list[Job]) -> tuple[list[Job], list[Job]]:
        """Jobs sharing the first job's settings, up to max_batch rows (gathered for up to batch_wait_s after the
        first one arrives); the rest wait for a later batch in arrival order."""
        if not pending:
            job = self.jobs.get()
            if job is None:
                return [], []
            pending = [job]
        deadline = time.monotonic() + self.batch_wait_s
        while sum(job.n for job in pending) < self.max_batch:
            try:
                job = self.jobs.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if job is None:
                break
            pending.append(job)
        key, batch, rest, rows = pending[0].settings(), [], [], 0
        for job in pending:
            if job.settings() == key and (not batch or rows + job.n <= self.max_batch):
                batch.append(job)
                rows += job.n
            else:
                rest.append(job)
        return batch, rest

    def _run(self, batch: list[Job]) -> None:
        """Decode one batch with the slot current at its start; every job's future gets (slot, texts)."""
        slot = self.slot  # read ONCE: a reload during this batch affects only later batches
        try:
            texts = decode_batch(slot, batch)
        except Exception as error:  # a failing batch fails its requests, never the worker
            for job in batch:
                job.future.set_exception(error)
            return
        self.batches += 1
        start = 0
        for job in batch:
            job.future.set_result((slot, texts[start : start + job.n]))
            start += job.n


def decode_batch(slot: Slot, batch: list[Job]) -> list[tuple[str, int, int, bool]]:
    """Render each job's prompt with the slot's tokenizer and decode n rows per job in one backend call; per row
    (text, prompt tokens, completion tokens, ended with end-of-turn rather than at max_tokens)."""
    tokenizer = slot.tokenizer
    first = batch[0]
    params = SamplingParams(
        max_new_tokens=first.max_tokens,
        temperature=max(first.temperature, 1e-6),
        stop_ids=(tokenizer.eos_token_id,),
        greedy=first.temperature == 0,
    )
    requests = []
    for number, job in enumerate(batch):
        prompt = tokenizer.apply_chat_template(
            job.messages, tools=job.tools, tokenize=False, add_generation_prompt=True
        )
        ids = encode(tokenizer, prompt)
        requests += [GenerationRequest((number, copy), ids) for copy in range(job.n)]
    outputs = slot.backend.generate(requests, params)
    texts = []
    for request, out in zip(requests, outputs):
        ended = bool(out.token_ids) and out.token_ids[-1] == tokenizer.eos_token_id
        ids = out.token_ids[:-1] if ended else out.token_ids
        text = tokenizer.decode(ids, skip_special_tokens=False)
        texts.append((text, len(request.token_ids), len(out.token_ids), ended))
    return texts
