"""Bad input: one clear error that names the value and what is valid, and no results written."""
import json
from pathlib import Path

import pytest

from conftest import compose
from loralab.errors import ConfigError, DatasetUnavailableError, LoralabError, ModelUnavailableError
from loralab.runner import run


def _bad_rows_file(tmp_path: Path) -> str:
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"query": "2+2?", "response": "4"}) + "\n" + json.dumps({"question": "x"}) + "\n")
    return str(path)


CASES = [
    (["rank=0"], ConfigError, ["rank=0", "positive integer"]),
    (["alpha=-1"], ConfigError, ["alpha=-1", "positive"]),
    (["rank=1000"], ConfigError, ["rank=1000", "valid ranks are 1..128"]),
    (["method.target_modules=[not_a_layer]"], ConfigError, ["not_a_layer", "q_proj", "down_proj"]),
    (["model.path=/nonexistent/weights"], ModelUnavailableError, ["/nonexistent/weights", "model.path"]),
    (["dataset=metamathqa"], DatasetUnavailableError, ["meta-math/MetaMathQA", "dataset.train.path="]),
    (["dataset=metamathqa", "dataset.train.path=/nonexistent/metamath.json"], DatasetUnavailableError,
     ["/nonexistent/metamath.json"]),
    (["trainer.bf16=true"], ConfigError, ["trainer.bf16=true", "CUDA"]),
    (["method=sds_lora", "method.k=0"], ConfigError, ["k"]),
    (["method=lora_plus", "method.loraplus_lr_ratio=0"], ConfigError, ["loraplus_lr_ratio"]),
    (["method=sds_lora", "+method.use_dora=true"], ConfigError, ["dora"]),
    (["eval.tasks.0.type=ranking"], ConfigError, ["ranking", "generate", "classify"]),
    (["eval.tasks.0.normalizer=fuzzy"], ConfigError, ["fuzzy", "number"]),
    # needs the model (128 positions): caught after loading it, still before anything is trained or written
    (["eval.engine=lm_eval", "eval.tasks.0.max_new_tokens=200"], ConfigError, ["max_new_tokens=200", "128 positions"]),
]


@pytest.mark.parametrize(("overrides", "error", "phrases"), CASES, ids=lambda v: str(v)[:40])
def test_bad_value_is_named(overrides, error, phrases, results_dir: Path) -> None:
    cfg = compose(*overrides, "trainer.max_steps=1", runs_dir=results_dir)
    with pytest.raises(error) as info:
        run(cfg)
    message = str(info.value)
    for phrase in phrases:
        assert phrase.lower() in message.lower(), f"{phrase!r} missing from: {message}"
    assert not (results_dir / "runs").exists(), "a failed check must not leave a run directory"


def test_malformed_dataset_rows_name_the_row_and_field(tmp_path: Path, results_dir: Path) -> None:
    cfg = compose("dataset=metamathqa", f"dataset.train.path={_bad_rows_file(tmp_path)}", runs_dir=results_dir)
    with pytest.raises(ConfigError, match=r"row 1 lacks field\(s\) \['query', 'response'\]"):
        run(cfg)
    assert not (results_dir / "runs").exists()


def test_all_user_errors_share_one_base_class() -> None:
    for error in (ConfigError, DatasetUnavailableError, ModelUnavailableError):
        assert issubclass(error, LoralabError)


def test_missing_eval_data_fails_before_training(tmp_path: Path, results_dir: Path) -> None:
    rows = tmp_path / "train.jsonl"
    rows.write_text(json.dumps({"query": "2+2?", "response": "The answer is: 4"}) + "\n")
    cfg = compose("dataset=metamathqa", f"dataset.train.path={rows}", runs_dir=results_dir)
    with pytest.raises(DatasetUnavailableError, match=r"openai/gsm8k.*eval\.tasks\[0\]\.data\.path="):
        run(cfg)
    assert not (results_dir / "runs").exists()
