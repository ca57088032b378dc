from api.datasets.examples import Example
from workers.base_models import base_model_get, tokenizer_load
from workers.training.data import IGNORE, sft_encode


def test_prompt_tokens_are_masked_and_answer_tokens_are_labelled() -> None:
    tokenizer = tokenizer_load(base_model_get("tiny-llama"))
    example = Example(messages=(("system", "be kind"), ("user", "what is two plus two"), ("assistant", "four")))
    row = sft_encode(tokenizer, example, max_length=512)
    labelled = [t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label != IGNORE]
    answer = tokenizer.encode("four\n", add_special_tokens=False)
    assert labelled[: len(answer)] == answer
    assert len(labelled) == len(answer) + 1  # the answer, then the end-of-sequence token
    prompt_ids = set(tokenizer.encode("what is two plus two", add_special_tokens=False))
    masked = [t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label == IGNORE]
    assert prompt_ids <= set(masked)


def test_truncation_keeps_ids_and_labels_aligned() -> None:
    tokenizer = tokenizer_load(base_model_get("tiny-llama"))
    example = Example(messages=(("user", "word " * 100), ("assistant", "reply")))
    row = sft_encode(tokenizer, example, max_length=16)
    assert len(row["input_ids"]) == len(row["labels"]) == len(row["attention_mask"]) == 16
