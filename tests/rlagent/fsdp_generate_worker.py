"""Greedy generation from a policy folder, sharded or not; run directly or under `accelerate launch` (fsdp.yaml).

usage: python fsdp_generate_worker.py POLICY_DIR OUT.pt
Every rank generates the same prompts for the same number of tokens (min_new_tokens = max_new_tokens), so the
ranks run the same number of sharded forwards; rank 0 saves the token ids.
"""

import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlagent.training.setup import make_accelerator


def main() -> None:
    policy_dir, out_path = sys.argv[1], sys.argv[2]
    accelerator = make_accelerator()
    tokenizer = AutoTokenizer.from_pretrained(policy_dir)
    model = accelerator.prepare(AutoModelForCausalLM.from_pretrained(policy_dir))
    chats = [[{"role": "user", "content": f"What is {a} plus {b}?"}] for a, b in ((12, 30), (7, 88))]
    tokenizer.padding_side = "left"
    batch = tokenizer.apply_chat_template(
        chats, add_generation_prompt=True, return_tensors="pt", return_dict=True, padding=True
    )
    with torch.no_grad():
        tokens = model.generate(**batch, max_new_tokens=12, min_new_tokens=12, do_sample=False)
    if accelerator.is_main_process:
        torch.save({"tokens": tokens, "sharded": accelerator.distributed_type == "FSDP"}, out_path)


if __name__ == "__main__":
    main()
