"""Prediction batches group rows of similar length (less padding); the logits come back in the rows' order and
equal one row at a time."""

import numpy as np
import pytest

from elora_ray.config import ModelConfig
from elora_ray.models.build import build_classifier
from elora_ray.models.classifier import TaskSpec
from elora_ray.tasks.schema import Example, TaskData
from elora_ray.train.predict import predict_logits


@pytest.mark.parametrize("model_name", ["tiny-bert", "tiny-llama"])
def test_length_sorted_batches_give_each_row_its_own_logits_in_order(model_name, monkeypatch):
    rng = np.random.default_rng(0)
    words = ["good", "bad", "film", "plot", "long", "very", "the", "a"]
    tasks = {
        "sent": TaskData("sent", ["negative", "positive"], {"test": [
            Example(f"sent/{i}", " ".join(rng.choice(words, size=int(rng.integers(1, 14)))), ["negative", "positive"][i % 2])
            for i in range(11)]}),
        "pair": TaskData("pair", ["no", "yes", "maybe"], {"test": [
            Example(f"pair/{i}", " ".join(rng.choice(words, size=int(rng.integers(1, 6)))), ["no", "yes", "maybe"][i % 3],
                    text_pair=" ".join(rng.choice(words, size=int(rng.integers(1, 9))))) for i in range(7)]}),
    }
    model = build_classifier(ModelConfig(name_or_path=model_name, max_length=32),
                             [TaskSpec("sent", ("negative", "positive")), TaskSpec("pair", ("no", "yes", "maybe"))])
    rows = [(t, e) for t in ("sent", "pair") for e in tasks[t].splits["test"]]
    rows = [rows[i] for i in rng.permutation(len(rows))]  # tasks and lengths interleaved
    import elora_ray.train.predict as predict

    batches = []
    real_batch = predict._batch

    def spy(model, tasks, batch_rows, device):
        batches.append([len(e.text) + len(e.text_pair or "") for _, e in batch_rows])
        return real_batch(model, tasks, batch_rows, device)

    monkeypatch.setattr(predict, "_batch", spy)
    logits, gold = predict_logits(model, model, tasks, rows, batch_size=4)
    flat = [n for b in batches for n in b]
    assert flat == sorted(flat) and len(flat) == len(rows)  # each batch holds the next-shortest rows
    monkeypatch.setattr(predict, "_batch", real_batch)
    one = [predict_logits(model, model, tasks, [r], batch_size=1) for r in rows]
    np.testing.assert_allclose(logits, np.concatenate([o[0] for o in one]), rtol=1e-4, atol=1e-5)
    assert gold.tolist() == [tasks[t].label_id(e.label) for t, e in rows]
    assert predict_logits(model, model, tasks, [], batch_size=4)[0].shape == (0, model.max_labels)
