"""The evaluation decoding benchmark: its measures on their own, and a tiny run through the script (structure and
invariants only; no timing assertions)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import script
from loralab.benchmarking.decoding import Replay, StepMeter, needed_length, trimmed
from loralab.synthetic.arithmetic import ALPHABET
from loralab.evaluation.generation import encode_prompt, generate_greedy
from loralab.models.embedded_lm import char_tokenizer
from loralab.models.tiny import tiny_llama



def test_needed_length_ends_at_eos_or_at_a_final_stop_cut() -> None:
    tokenizer = char_tokenizer(ALPHABET)
    ids = tokenizer("2. The answer", add_special_tokens=False)["input_ids"]
    assert needed_length(ids, tokenizer, [". "], 32) == 3            # "2. " holds the stop
    assert needed_length(ids, tokenizer, ["answer"], 32) == len(ids)
    assert needed_length(ids, tokenizer, ["nothing"], len(ids)) == len(ids)
    eos = tokenizer.eos_token_id
    assert needed_length(ids[:2] + [eos, 0, 0], tokenizer, [], 32) == 3
    assert trimmed(ids[:2] + [eos, 0, 0], eos, 0) == ids[:2] + [eos] and trimmed(ids[:2] + [0, 0], eos, 0) == ids[:2]


@pytest.mark.usefixtures("one_compute_thread")
def test_replay_makes_a_random_model_write_the_scripts_and_the_meter_counts_its_steps() -> None:
    tokenizer = char_tokenizer(ALPHABET)
    model = tiny_llama(vocab_size=len(tokenizer) + 7, seed=1).eval()   # wider vocabulary than the tokenizer
    prompts = ["Q: 1+1=", "Q: Ann has 12 pens.", "9-4="]
    scripts = {p: tokenizer(s, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
               for p, s in zip(prompts, ["2. The end", " 1", "5+5=10 and more"])}
    replay = Replay(model, {tuple(encode_prompt(tokenizer, p)): s for p, s in scripts.items()},
                    tokenizer.eos_token_id)
    meter = StepMeter(model)
    out = generate_greedy(model, tokenizer, prompts, 12, batch_size=3, progress=False, stop=[". "],
                          stop_in_decoding=False, by_length=False)
    assert out == ["2", " 1", "5+5=10 and m"]
    assert meter.take() == {"decode_steps": 12, "row_steps": 36}  # "5+5=10 and m…" runs to max_new_tokens
    generate_greedy(model, tokenizer, prompts[:2], 12, batch_size=2, progress=False, stop=[". "])
    assert meter.take()["decode_steps"] == 3  # " 1" + EOS, and "2. " ends its row at the stop: 3 passes
    replay.handle.remove()
    meter.handle.remove()


def test_tiny_decoding_benchmark_through_the_script(tmp_path: Path) -> None:
    bench_decoding = script("bench_decoding")
    torch_threads = torch.get_num_threads()
    try:
        assert bench_decoding.main(["--preset", "tiny", "--out-dir", str(tmp_path)]) == 0
    finally:
        torch.set_num_threads(torch_threads)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["decoding-cpu.json", "decoding-cpu.md"]
    report = json.loads((tmp_path / "decoding-cpu.json").read_text())
    configured, stops = report["workloads"]
    assert configured["stop"] == [] and stops["stop"] == [". ", "+"] and stops["batch_size"] == 16
    for entry in report["workloads"]:
        embedded, wide = entry["models"]["embedded"], entry["models"]["llama_shaped"]
        for r in (embedded, wide):
            assert r["identical_text"] is True
            for path in ("reference", "per_row"):
                assert r[path]["decode_steps_needed"] <= r[path]["decode_steps"]
                assert r[path]["tokens_per_s"] > 0 and r[path]["time_s"]["n"] == 1
        # the replaying model takes exactly the embedded LM's steps: same rows, same stops, same batches
        for path in ("reference", "per_row"):
            assert wide[path]["decode_steps"] == embedded[path]["decode_steps"]
        assert wide["tokens_needed"] == embedded["tokens_needed"]
    per_row, reference = stops["models"]["embedded"]["per_row"], stops["models"]["embedded"]["reference"]
    assert per_row["decode_steps"] == per_row["decode_steps_needed"] < reference["decode_steps"]
    md = (tmp_path / "decoding-cpu.md").read_text()
    assert "| llama_shaped | yes |" in md and "tokens needed" in md


def test_bad_rounds_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bench_decoding = script("bench_decoding")
    assert bench_decoding.main(["--preset", "tiny", "--rounds", "0", "--out-dir", str(tmp_path)]) == 2
    assert "--rounds=0" in capsys.readouterr().err and not list(tmp_path.iterdir())


@pytest.mark.usefixtures("one_compute_thread")
def test_replay_of_a_batch_without_pads() -> None:
    """Prompts of one length: the prompt's pass comes without an attention mask."""
    tokenizer = char_tokenizer(ALPHABET)
    model = tiny_llama(vocab_size=len(tokenizer), seed=1).eval()
    prompts = ["1+1=", "2+2="]
    scripts = {tuple(encode_prompt(tokenizer, p)): tokenizer(s, add_special_tokens=False)["input_ids"]
               for p, s in zip(prompts, ["2", "4"])}
    replay = Replay(model, scripts, tokenizer.eos_token_id)
    assert generate_greedy(model, tokenizer, prompts, 4, batch_size=2, progress=False) == ["2", "4"]
    replay.handle.remove()
