"""HF transformers + PEFT LoRA SFT on chat rows, the way the seed's trainer ran it: every
micro-batch padded to its longest row (rounded up to a multiple of 8), the loss on the last
assistant turn only, micro-batch 4 x accumulation 4, AdamW lr 1e-4, weight decay 0.01, clipping
at 1.0, LoRA r=32 alpha=64 dropout 0.05 on the 7 projections, no gradient checkpointing (as
pspace's run trains), bf16, sdpa, on Qwen2.5-7B-shaped random weights. One epoch over the file
in its own order. bench/scale.sh runs it beside `pspace train --model random:qwen2.5-7b` on the
same file in the same call; the ratio of their tokens/s is the training comparison on the dry
run's length distribution. Prints and writes one JSON object.

Usage: python bench/hf_train_rows.py --data ROWS.jsonl --tokenizer engine/tests/fixtures/tiny-qwen2
       [--max-len 2048] [--out FILE]
"""
import argparse
import json
import math
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

p = argparse.ArgumentParser()
p.add_argument("--data", required=True)
p.add_argument("--tokenizer", required=True)
p.add_argument("--max-len", type=int, default=2048)
p.add_argument("--out")
a = p.parse_args()

dev = "cuda"
tok = AutoTokenizer.from_pretrained(a.tokenizer)
rows = [json.loads(line)["messages"] for line in open(a.data) if line.strip()]
examples = []
for messages in rows:
    ids = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=False)
    if not isinstance(ids, list):
        ids = ids["input_ids"]
    prefix = tok.apply_chat_template(messages[:-1], tokenize=True, add_generation_prompt=True)
    if not isinstance(prefix, list):
        prefix = prefix["input_ids"]
    ids = ids[: a.max_len]
    labels = [-100] * min(len(prefix), len(ids)) + ids[len(prefix):]
    examples.append((ids, labels))

torch.manual_seed(0)
cfg = Qwen2Config(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                  num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768,
                  rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=False)
cfg._attn_implementation = "sdpa"
with torch.device(dev):
    model = Qwen2ForCausalLM(cfg).to(torch.bfloat16)
lcfg = LoraConfig(r=32, lora_alpha=64, lora_dropout=0.05, task_type="CAUSAL_LM",
                  target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
pm = get_peft_model(model, lcfg)
pm.train()
params = [p for p in pm.parameters() if p.requires_grad]
opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)


def batch(chunk):
    longest = max(len(ids) for ids, _ in chunk)
    width = int(math.ceil(longest / 8) * 8)
    ids = torch.full((len(chunk), width), tok.pad_token_id or 0, dtype=torch.long)
    labels = torch.full((len(chunk), width), -100, dtype=torch.long)
    mask = torch.zeros((len(chunk), width), dtype=torch.long)
    for i, (x, y) in enumerate(chunk):
        ids[i, : len(x)] = torch.tensor(x)
        labels[i, : len(y)] = torch.tensor(y)
        mask[i, : len(x)] = 1
    return ids.to(dev), labels.to(dev), mask.to(dev), sum(len(x) for x, _ in chunk), len(chunk) * width


micro, accum = 4, 4
micro_batches = [examples[i : i + micro] for i in range(0, len(examples), micro)]
steps = [micro_batches[i : i + accum] for i in range(0, len(micro_batches), accum)]
log = []
torch.cuda.synchronize()
for step in steps:
    t = time.time()
    real = padded = 0
    for mb in step:
        ids, labels, mask, r, pd = batch(mb)
        out = pm(input_ids=ids, attention_mask=mask, labels=labels)
        (out.loss / len(step)).backward()
        real += r
        padded += pd
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    log.append({"seconds": time.time() - t, "tokens": real, "padded_tokens": padded})

timed = log[2:] if len(log) > 4 else log
sec = sum(s["seconds"] for s in timed)
res = {
    "gpu": torch.cuda.get_device_name(0),
    "rows": len(examples),
    "steps": len(log),
    "tokens_per_s_after_2": round(sum(s["tokens"] for s in timed) / sec) if sec else None,
    "step_s_mean_after_2": round(sec / len(timed), 4) if timed else None,
    "padding_share": round(1 - sum(s["tokens"] for s in log) / max(1, sum(s["padded_tokens"] for s in log)), 3),
    "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1),
    "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__,
                 "peft": __import__("peft").__version__},
}
print(json.dumps(res), flush=True)
if a.out:
    json.dump(res, open(a.out, "w"), indent=1)
