"""lm-evaluation-harness as the generation engine (``engine: lm_eval``) against loralab's native decoding.

The harness must be a drop-in engine: on a deterministic tiny model, the same prompts, stop strings, beams and
``max_new_tokens`` give the same text as :func:`generate_greedy` (cut at the stops), and a whole suite gives the
same per-sample records and verdicts under both engines. Where the harness does differ (a prompt longer than
the model's positions minus ``max_new_tokens`` is left-truncated), the difference is reported, not hidden.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
import yaml

from conftest import compose
from loralab.synthetic.arithmetic import ALPHABET
from loralab.errors import ConfigError
from loralab.evaluation.checks import check_suite
from loralab.evaluation.evaluator import evaluate_suite
from loralab.evaluation.extraction import truncate_at_stop
from loralab.evaluation.generation import generate_greedy
from loralab.evaluation.lm_eval_generate import GenerationJob, generate_tasks
from loralab.models.embedded_lm import char_tokenizer
from loralab.models.tiny import tiny_llama

DATA = Path(__file__).parent / "fixtures" / "data"
COMMONSENSE = ["boolq", "piqa", "siqa", "hellaswag", "winogrande", "arc_e", "arc_c", "obqa"]
PROMPTS = ["Q: Ann has 3 pens.", "1+1=", "Q: Leo has 12 keys. Leo finds 7. How many keys now?\nA:", "9-4=",
           "Ben ", "Eve has 19 cups. Eve uses 2.\n", "0+0=", "Kim has 5 rocks."]  # trailing space/newline kept


def _model(positions: int = 128, seed: int = 3, eos_like: str | None = None):
    """A random tiny Llama; with ``eos_like``, EOS wins wherever that character would (generations of varied
    length, as a trained model's)."""
    tokenizer = char_tokenizer(ALPHABET)
    model = tiny_llama(vocab_size=len(tokenizer), seed=seed, max_position_embeddings=positions)
    if eos_like is not None:
        with torch.no_grad():
            head = model.lm_head.weight
            head[tokenizer.eos_token_id] = 1.1 * head[tokenizer.convert_tokens_to_ids(eos_like)]
    return model, tokenizer


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.usefixtures("one_compute_thread")
def test_harness_generations_equal_native_ones(tmp_path: Path) -> None:
    """Greedy and beam search, with stop strings and EOS, other batch sizes than native: the same text.

    Beam search at batch size 1 is where lm-eval's own stop criteria (on by default) end the beams early."""
    model, tokenizer = _model(eos_like=" ")
    raw = generate_greedy(model, tokenizer, PROMPTS, max_new_tokens=12, batch_size=8, progress=False)
    beams_raw = generate_greedy(model, tokenizer, PROMPTS, 12, batch_size=8, progress=False, num_beams=4)
    assert any(len(g) < 12 for g in raw) and any(len(g) < 12 for g in beams_raw)  # EOS ended some early
    stop, beam_stop = [raw[1][3:5], "\n"], [beams_raw[1][2:4]]  # stops that really occur
    native = {"greedy": [truncate_at_stop(g, stop) for g in raw],
              "beams": [truncate_at_stop(g, beam_stop) for g in beams_raw]}
    assert native["greedy"] != raw and native["beams"] != beams_raw  # the stops do cut something
    harness = {**generate_tasks(model, tokenizer, [GenerationJob("greedy", PROMPTS, [""] * 8, 12, stop)],
                                tmp_path, batch_size=3),
               **generate_tasks(model, tokenizer, [GenerationJob("beams", PROMPTS, [""] * 8, 12, beam_stop, 4)],
                                tmp_path, batch_size=1)}

    for name in ("greedy", "beams"):
        assert harness[name].generations == native[name], name
        assert harness[name].extras["truncated_prompts"] == 0 and harness[name].extras["context_mismatch"] == 0
        assert harness[name].extras["harness_max_length"] == 128 and harness[name].extras["engine"] == "lm_eval"
    assert len(set(native["greedy"])) > 1
    written = yaml.safe_load((tmp_path / "greedy" / "loralab_greedy.yaml").read_text())
    assert written["output_type"] == "generate_until"
    assert written["generation_kwargs"] == {"until": stop, "max_gen_toks": 12, "do_sample": False, "num_beams": 1,
                                            "eos_token_id": tokenizer.eos_token_id}
    beams = yaml.safe_load((tmp_path / "beams" / "loralab_beams.yaml").read_text())
    assert beams["generation_kwargs"]["until"] == []  # beams: loralab cuts at the stops, not the harness
    assert _lines(tmp_path / "greedy" / "docs.jsonl")[1]["lm_text"] == tokenizer.bos_token + "1+1="


@pytest.mark.usefixtures("one_compute_thread")
def test_prompts_the_harness_cuts_are_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model, tokenizer = _model(positions=24)
    native = generate_greedy(model, tokenizer, PROMPTS, max_new_tokens=4, batch_size=8, progress=False)
    with caplog.at_level(logging.WARNING, logger="loralab.evaluation.lm_eval_generate"):
        (result,) = generate_tasks(model, tokenizer, [GenerationJob("t", PROMPTS, [""] * 8, 4)], tmp_path, 4).values()
    long = [len(p) + 1 > 24 - 4 for p in PROMPTS]  # one token per character, plus BOS
    assert result.truncated == long and result.extras["truncated_prompts"] == sum(long) == 2
    assert result.extras["harness_max_length"] == 24  # the model's own positions, not the harness' default
    assert "2 of 8 prompts are longer than the 20 tokens" in caplog.text
    assert [g for g, cut in zip(result.generations, long) if not cut] == [g for g, cut in zip(native, long) if not cut]
    with pytest.raises(ConfigError, match=r"max_new_tokens=24 leaves no room for a prompt in the model's 24 positions"):
        generate_tasks(model, tokenizer, [GenerationJob("t", PROMPTS, [""] * 8, 24)], tmp_path, 4)


SUITES = {
    "arith_shift": ["eval.tasks.0.data.n=6", "eval.tasks.0.max_new_tokens=8"],
    "metamathqa": ["dataset=metamathqa", f"eval.tasks.0.data.path={DATA / 'gsm8k.jsonl'}",
                   f"eval.tasks.1.data.path={DATA / 'math.jsonl'}", "eval.tasks.0.max_new_tokens=8",
                   "eval.tasks.1.max_new_tokens=8"],
    "commonsense170k": ["dataset=commonsense170k", "eval.max_new_tokens=6", "eval.num_beams=4",  # beam search
                        *[f"eval.tasks.{i}.data.path={DATA / t}.jsonl" for i, t in enumerate(COMMONSENSE)]],
}


@pytest.mark.usefixtures("one_compute_thread")
@pytest.mark.parametrize("suite", list(SUITES))
def test_suite_through_the_harness_matches_the_native_engine(suite: str, tmp_path: Path) -> None:
    model, tokenizer = _model(positions=1024)  # room for the Alpaca prompts: nothing is truncated
    outputs = {}
    for engine in ("native", "lm_eval"):
        cfg = compose(*SUITES[suite], f"eval.engine={engine}")
        assert cfg.eval.protocol.endswith(f"+{engine}")
        scores = evaluate_suite(model, tokenizer, cfg.eval, tmp_path / engine, progress=False)
        outputs[engine] = scores, {t.name: _lines(tmp_path / engine / "samples" / f"{t.name}.jsonl")
                                   for t in cfg.eval.tasks}
    (native_scores, native_samples), (harness_scores, harness_samples) = outputs["native"], outputs["lm_eval"]
    for task, samples in harness_samples.items():
        assert all(s["engine"] == "lm_eval" and s["truncated"] is False for s in samples)
        assert {"prompt", "generation", "extracted", "gold", "correct"} <= set(samples[0])
        strip = [{k: v for k, v in s.items() if k not in ("engine", "truncated")} for s in samples]
        assert strip == [{k: v for k, v in s.items() if k != "engine"} for s in native_samples[task]]
        scores = harness_scores[task]
        assert scores["engine"] == "lm_eval" and scores["lm_eval_version"] and scores["truncated_prompts"] == 0
        assert native_scores[task]["engine"] == "native"
        metric = next(iter(scores))
        assert scores[metric] == native_scores[task][metric] and scores["n"] == len(samples)
        assert (tmp_path / "lm_eval" / "lm_eval" / task / f"loralab_{task}.yaml").is_file()


@pytest.mark.usefixtures("one_compute_thread")
def test_code_from_the_harness_runs_only_in_the_sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import loralab.evaluation.code_exec as code_exec

    model, tokenizer = _model(positions=1024)
    overrides = ["dataset=code_feedback", f"eval.tasks.0.data.path={DATA / 'humaneval.jsonl'}",
                 f"eval.tasks.1.data.path={DATA / 'mbpp.jsonl'}", "eval.tasks.0.max_new_tokens=6",
                 "eval.tasks.1.max_new_tokens=6"]
    cfg = compose(*overrides)
    assert cfg.eval.engine == "lm_eval"
    with pytest.raises(ConfigError, match=r"eval\.allow_code_execution=true"):
        evaluate_suite(model, tokenizer, cfg.eval, tmp_path / "refused", progress=False)
    assert not (tmp_path / "refused" / "lm_eval").exists()  # refused before the harness generated anything

    ran: list[str] = []  # every program the sandbox is given
    sandboxed = code_exec.run_programs
    monkeypatch.setattr(code_exec, "run_programs",
                        lambda sources, *a, **k: ran.extend(sources) or sandboxed(sources, *a, **k))
    cfg = compose(*overrides, "eval.allow_code_execution=true")
    scores = evaluate_suite(model, tokenizer, cfg.eval, tmp_path / "run", progress=False)
    for task in ("humaneval", "mbpp"):
        samples = _lines(tmp_path / "run" / "samples" / f"{task}.jsonl")
        assert all(s["engine"] == "lm_eval" and s["verdict"] in ("passed", "failed", "error", "timeout")
                   for s in samples)
        assert all(any(s["extracted"] in program for program in ran) for s in samples)
        assert scores[task]["allow_code_execution"] is True and scores[task]["isolation"]
        harness_task = yaml.safe_load((tmp_path / "run" / "lm_eval" / task / f"loralab_{task}.yaml").read_text())
        assert [m["metric"] for m in harness_task["metric_list"]] == ["exact_match"]  # the harness runs no code
        assert "unsafe_code" not in harness_task
    assert len(ran) == 2 + 3  # every generated program went through the sandbox, once


@pytest.mark.parametrize("override, phrase", [
    ("eval.engine=vllm", r"engine='vllm'; valid: \['lm_eval', 'native'\]"),
    ("+eval.tasks.0.engine=native", r"eval task gsm8k: engine is a suite setting"),
    ("eval.protocol=metamath-gsm8k-math/v3", r"does not name the engine 'lm_eval'"),
])
def test_bad_engine_settings_name_the_value(override: str, phrase: str) -> None:
    with pytest.raises(ConfigError, match=phrase):
        check_suite(compose("dataset=metamathqa", override).eval)
