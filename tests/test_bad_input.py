"""Bad input: one clear error that names the value and what is valid, and no results written."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, compose
from loralab.errors import ConfigError, DataFileError, DatasetUnavailableError, LoralabError, ModelUnavailableError
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
    (["eval.tasks.0.filters.1.how=fuzzy"], ConfigError, ["fuzzy", "number"]),
    # needs the model (128 positions): caught after loading it, still before anything is trained or written
    (["eval.engine=lm_eval", "eval.tasks.0.max_new_tokens=200"], ConfigError, ["max_new_tokens=200", "128 positions"]),
    # the seed: an integer in numpy's seeding range
    (["seed=abc"], ConfigError, ["seed='abc'", "integer"]),
    (["seed=-1"], ConfigError, ["seed=-1", "0..4294967295"]),
    (["seed=1.5"], ConfigError, ["seed=1.5", "integer"]),
    (["seed=true"], ConfigError, ["seed=True", "integer"]),
    (["seed=4294967296"], ConfigError, ["seed=4294967296", "0..4294967295"]),
    # trainer values transformers accepts but that would train something else than asked, or crash later
    (["trainer.learning_rate=-1"], ConfigError, ["trainer.learning_rate=-1", "> 0"]),
    (["trainer.learning_rate=nan"], ConfigError, ["trainer.learning_rate=nan", "finite"]),
    (["trainer.learning_rate=inf"], ConfigError, ["trainer.learning_rate=inf", "finite"]),
    (["trainer.learning_rate=0"], ConfigError, ["trainer.learning_rate=0", "> 0"]),
    (["trainer.learning_rate=fast"], ConfigError, ["trainer.learning_rate='fast'", "a number"]),
    (["trainer.per_device_train_batch_size=0"], ConfigError, ["per_device_train_batch_size=0", ">= 1"]),
    (["trainer.per_device_train_batch_size=2.5"], ConfigError, ["per_device_train_batch_size=2.5", "an integer"]),
    (["trainer.gradient_accumulation_steps=0"], ConfigError, ["gradient_accumulation_steps=0", ">= 1"]),
    (["trainer.max_steps=-5"], ConfigError, ["trainer.max_steps=-5", "-1 to train for trainer.num_train_epochs"]),
    (["trainer.max_steps=0"], ConfigError, ["trainer.max_steps=0", ">= 1"]),
    (["trainer.max_steps=-1", "+trainer.num_train_epochs=0"], ConfigError, ["num_train_epochs=0", "> 0"]),
    (["trainer.save_steps=0"], ConfigError, ["trainer.save_steps=0", "resumes from"]),
    (["trainer.save_steps=-3"], ConfigError, ["trainer.save_steps=-3", ">= 1"]),
    (["trainer.logging_steps=0"], ConfigError, ["trainer.logging_steps=0", ">= 1"]),
    (["trainer.warmup_steps=-1"], ConfigError, ["trainer.warmup_steps=-1", ">= 0"]),
    (["trainer.weight_decay=-0.1"], ConfigError, ["trainer.weight_decay=-0.1", ">= 0"]),
    (["trainer.max_grad_norm=nan"], ConfigError, ["trainer.max_grad_norm=nan", "finite"]),
    (["trainer.save_total_limit=0"], ConfigError, ["trainer.save_total_limit=0", ">= 1"]),
    (["trainer.dataloader_num_workers=-1"], ConfigError, ["dataloader_num_workers=-1", ">= 0"]),
    (["+trainer.adam_beta1=1.5"], ConfigError, ["trainer.adam_beta1=1.5", "[0, 1)"]),
    (["trainer.gradient_checkpointing=maybe"], ConfigError, ["gradient_checkpointing='maybe'", "true or false"]),
    (["trainer.lr_scheduler_type=nope"], ConfigError, ["lr_scheduler_type='nope'", "cosine", "linear"]),
    (["+trainer.optim=nope"], ConfigError, ["trainer.optim='nope'", "adamw_torch"]),
    (["+trainer.eval_strategy=sometimes"], ConfigError, ["eval_strategy='sometimes'", "steps", "epoch"]),
    # trainer keys: TrainingArguments' own fields only, and none that loralab sets from other keys
    (["+trainer.bogus_option=1"], ConfigError, ["trainer.bogus_option", "TrainingArguments"]),
    (["+trainer.learning_rat=1e-3"], ConfigError, ["trainer.learning_rat", "did you mean learning_rate"]),
    (["+trainer.seed=1"], ConfigError, ["trainer.seed", "top-level seed="]),
    (["+trainer.output_dir=/tmp/elsewhere"], ConfigError, ["trainer.output_dir", "paths.results_dir"]),
    (["+trainer.report_to=[wandb]"], ConfigError, ["trainer.report_to", "logger="]),
    # combinations only TrainingArguments itself checks
    (["+trainer.load_best_model_at_end=true"], ConfigError, ["TrainingArguments rejects", "load_best_model_at_end"]),
    # templates: their syntax before anything loads, their fields against each task's first record after
    (["dataset.prompt_template='Q: {question'"], ConfigError, ["dataset.prompt_template", "not a valid template"]),
    (["dataset.response_template='{0}'"], ConfigError, ["dataset.response_template", "{0}"]),
    (["eval.tasks.0.prompt_template='Q: {query}'"], ConfigError, ["arith_word_problems", "'query'", "question"]),
    (["eval.tasks.0.answer_field=gold"], ConfigError, ["arith_word_problems", "'gold'", "answer_field"]),
]


@pytest.mark.parametrize(("overrides", "error", "phrases"), CASES, ids=lambda v: str(v)[:40])
def test_bad_value_is_named(overrides, error, phrases, results_dir: Path) -> None:
    if not any(o.startswith("trainer.max_steps=") for o in overrides):
        overrides = [*overrides, "trainer.max_steps=1"]
    cfg = compose(*overrides, runs_dir=results_dir)
    with pytest.raises(error) as info:
        run(cfg)
    message = str(info.value)
    for phrase in phrases:
        assert phrase.lower() in message.lower(), f"{phrase!r} missing from: {message}"
    assert "\n" not in message, "the error must be one line"
    assert not results_dir.exists(), "a failed check must not write anything"


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


# Data files that exist but cannot be read: the error names the file, the line and the problem, and does not
# tell the user to set the path they already set. Each case: file name, content, phrases of the message.
DATA_FILES = [
    ("bad.jsonl", '{"query": "1+1?", "response": "2"}\n{"query": "2+2?", "response": \n',
     ["bad.jsonl, line 2", "not valid JSON"]),
    ("empty.jsonl", "", ["empty.jsonl", "empty"]),
    ("scalars.jsonl", "1\n2\n", ["scalars.jsonl, line 1", "not an object"]),
    ("array.json", '[{"query": "1+1?", "response": "2"},\n {"query": ]', ["array.json, line 2", "not valid JSON"]),
    ("ragged.csv", "query,response\n1+1?,2\n2+2?,4,extra\n", ["ragged.csv, line 3", "3 fields", "header has 2"]),
    ("broken.parquet", "not parquet", ["broken.parquet", "not a readable Parquet file"]),
]


@pytest.mark.parametrize(("name", "content", "phrases"), DATA_FILES, ids=[c[0] for c in DATA_FILES])
@pytest.mark.parametrize("key", ["dataset.train.path", "eval.tasks.0.data.path"])
def test_unreadable_data_file_is_named_with_its_line(name: str, content: str, phrases: list[str], key: str,
                                                     tmp_path: Path, results_dir: Path) -> None:
    bad = tmp_path / name
    bad.write_text(content)
    train = tmp_path / "train.jsonl"
    train.write_text(json.dumps({"query": "2+2?", "response": "The answer is: 4"}) + "\n")
    paths = {"dataset.train.path": str(train), key: str(bad)}
    cfg = compose("dataset=metamathqa", *(f"{k}={v}" for k, v in paths.items()), "trainer.max_steps=1",
                  runs_dir=results_dir)
    with pytest.raises(DataFileError) as info:
        run(cfg)
    message = str(info.value)
    for phrase in [*phrases, key]:
        assert phrase in message, f"{phrase!r} missing from: {message}"
    assert "error occurred while generating" not in message and "StopIteration" not in message
    assert f"with {key}=" not in message  # no advice to set the path that is already set
    assert "\n" not in message and not results_dir.exists()


CLI_CASES = {  # what a user types → a phrase of the one-line error
    "+trainer.bogus_option=1": "trainer.bogus_option",
    "trainer.learning_rate=nan": "trainer.learning_rate=nan",
    "trainer.max_steps=-5": "trainer.max_steps=-5",
    "seed=abc": "seed='abc'",
    "eval.tasks.0.type=ranking": "type='ranking'; valid types: ['classify', 'code', 'generate'",
    "eval.tasks.0.filters.0.function=lowercase": "function='lowercase'; valid filters: ['normalize', 'regex']",
    "eval.tasks.0.prompt_template='Q: {query}'": "'query'",  # found after the model and data are loaded
}


def test_the_command_line_exits_2_with_one_line_and_writes_nothing(tmp_path: Path) -> None:
    """As typed: exit status 2, one line naming the bad value, no traceback, and nothing on disk (no run
    directory and no Hydra output directory either)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = {}
    for i, override in enumerate(CLI_CASES):  # side by side: each one is mostly interpreter start-up
        results = tmp_path / f"results{i}"
        procs[override] = (results, subprocess.Popen(
            [sys.executable, "run.py", override, "progress=false", f"paths.results_dir={results}"], cwd=ROOT, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    for override, (results, proc) in procs.items():
        output = proc.communicate(timeout=300)[0]
        assert proc.returncode == 2, (override, output[-2000:])
        assert "Traceback" not in output, output[-2000:]
        (line,) = [line for line in output.splitlines() if "Error: " in line]
        assert CLI_CASES[override] in line, line
        assert not results.exists(), f"{override}: wrote {sorted(results.rglob('*'))}"
