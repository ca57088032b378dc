from api.registry.services import adapter_model_card

JOB_METADATA = {
    "adapter": "sentiment", "job_id": 7, "task": "classification", "method": "lora",
    "base_model": {"id": "minilm-l6", "source": "sentence-transformers/all-MiniLM-L6-v2", "revision": None},
    "method_config": {"r": 8, "alpha": 16, "target_modules": ["query", "value"]},
    "hyperparameters": {"epochs": 2, "learning_rate": 0.001},
    "datasets": {"train": {"sha256": "ab" * 32, "rows": 1000, "filename": "train.jsonl"}},
    "metrics": {"eval_accuracy": 0.8125, "eval_loss": 0.41},
    "labels": ["negative", "positive"], "trainable_parameters": 74498,
}


def test_model_card_says_what_it_is_how_it_was_made_and_how_to_load_it() -> None:
    card = adapter_model_card(metadata=JOB_METADATA, adapter="sentiment", version=3)
    assert card.startswith("# sentiment v3\n")
    assert "`lora` adapter for `sentence-transformers/all-MiniLM-L6-v2`" in card and "job 7" in card
    assert '"target_modules": [' in card and '"learning_rate": 0.001' in card
    assert "ab" * 32 in card and "| eval_accuracy | 0.8125 |" in card
    assert "`negative`, `positive`" in card
    assert 'AutoModelForSequenceClassification.from_pretrained("sentence-transformers/all-MiniLM-L6-v2", ' \
           'num_labels=2)' in card
    assert 'PeftModel.from_pretrained(base, "sentiment-v3")' in card


def test_model_card_of_an_upload_says_where_it_came_from() -> None:
    metadata = {"source": "upload", "uploaded_by": "alice", "task": "sft", "method": "lora",
                "base_model": {"id": "tiny-llama", "source": "tiny:llama"}, "method_config": {"r": 4}}
    card = adapter_model_card(metadata=metadata, adapter="chat", version=1)
    assert "uploaded by alice" in card and "Not recorded" in card and "None recorded." in card
    assert "AutoModelForCausalLM" in card
