"""Native generation ends each sequence at its stop strings and batches prompts by length, and still returns
exactly the text of the reference decoding (prompts batched in their order, every batch decoded until all rows
emitted EOS or ``max_new_tokens``, stop strings cut afterwards), over whole suites, greedy and beam search."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict
from transformers import AutoModelForCausalLM, AutoTokenizer, StoppingCriteriaList, StopStringCriteria

from conftest import compose
from loralab.synthetic.arithmetic import ALPHABET
from loralab.evaluation.evaluator import evaluate_suite, load_suite_records
from loralab.evaluation.extraction import truncate_at_stop
from loralab.evaluation.generation import (
    StopAtStrings,
    encode_prompt,
    final_stop_cut,
    generate_greedy,
    left_padded_batch,
    length_batches,
)
from loralab.evaluation.tasks.generative import build_prompt
from loralab.models.embedded_lm import char_tokenizer, pretrained_tiny_lm
from loralab.models.tiny import tiny_llama

DATA = Path(__file__).parent / "fixtures" / "data"
COMMONSENSE = ["boolq", "piqa", "siqa", "hellaswag", "winogrande", "arc_e", "arc_c", "obqa"]


@torch.no_grad()
def reference_generations(model, tokenizer, prompts, max_new_tokens, batch_size, num_beams=1, stop=(),
                          criteria=None) -> list[str]:
    """The decoding before per-sequence stopping, kept verbatim: prompts batched in their order, no stopping
    criteria but EOS and ``max_new_tokens``, the text cut at the stop strings afterwards. ``criteria(width)``
    adds a stopping criterion (to show what stopping inside beam search would do)."""
    model.eval()
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    outputs = []
    for start in range(0, len(prompts), batch_size):
        input_ids, attention_mask = left_padded_batch(prompts[start:start + batch_size], tokenizer)
        extra = {"stopping_criteria": StoppingCriteriaList([criteria(input_ids.shape[1])])} if criteria else {}
        generated = model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                                   max_new_tokens=max_new_tokens, do_sample=False, num_beams=num_beams,
                                   pad_token_id=pad, eos_token_id=tokenizer.eos_token_id, **extra)
        outputs.extend(tokenizer.batch_decode(generated[:, input_ids.shape[1]:], skip_special_tokens=True))
    return [truncate_at_stop(g, list(stop)) for g in outputs]


class ForwardCounter:
    """Forward calls of a model (one per decoding step, the prompt's pass included) and the positions its
    prompt passes fill (rows × padded width)."""

    def __init__(self, model) -> None:
        self.calls = self.prompt_positions = 0
        model.register_forward_hook(self._count, with_kwargs=True)

    def _count(self, module, args, kwargs, output) -> None:
        self.calls += 1
        ids = kwargs["input_ids"]
        if ids.shape[1] > 1:  # the prompt's pass; later steps feed one token per row
            self.prompt_positions += ids.numel()

    def take(self) -> tuple[int, int]:
        taken = self.calls, self.prompt_positions
        self.calls = self.prompt_positions = 0
        return taken


@pytest.fixture(scope="module")
def embedded():
    path = pretrained_tiny_lm()
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def _tiny(positions: int = 1024, eos_like: str = " "):
    """A random tiny Llama whose EOS wins wherever ``eos_like`` would (generations of varied length)."""
    tokenizer = char_tokenizer(ALPHABET)
    model = tiny_llama(vocab_size=len(tokenizer), seed=3, max_position_embeddings=positions)
    with torch.no_grad():
        head = model.lm_head.weight
        head[tokenizer.eos_token_id] = 1.1 * head[tokenizer.convert_tokens_to_ids(eos_like)]
    return model.eval(), tokenizer


def _samples(out_dir: Path, tasks) -> dict[str, list[dict]]:
    return {t.name: [json.loads(line) for line in (out_dir / "samples" / f"{t.name}.jsonl").read_text().splitlines()]
            for t in tasks}


def _suite_against_reference(model, tokenizer, cfg, out_dir: Path) -> dict[str, int]:
    """Run the suite natively; every task's generations must equal the reference decoding's. Returns the forward
    calls (decoding steps) of the suite and of the reference, and how many generations the stop strings cut."""
    records = load_suite_records(cfg.eval)
    counter = ForwardCounter(model)
    evaluate_suite(model, tokenizer, cfg.eval, out_dir, progress=False, records=records)
    steps, positions = counter.take()
    out = {"steps": steps, "prompt_positions": positions, "reference_steps": 0, "reference_prompt_positions": 0,
           "cut": 0}
    for task, samples in _samples(out_dir, cfg.eval.tasks).items():
        t = next(x for x in cfg.eval.tasks if x.name == task)
        prompts = [build_prompt(t, r) for r in records[task]]
        settings = (int(t.max_new_tokens), int(t.batch_size), int(t.get("num_beams") or 1))
        want = reference_generations(model, tokenizer, prompts, *settings, [str(s) for s in t.get("stop") or []])
        steps, positions = counter.take()
        out["reference_steps"] += steps
        out["reference_prompt_positions"] += positions
        assert [s["generation"] for s in samples] == want, task
        if t.get("stop"):
            uncut = reference_generations(model, tokenizer, prompts, *settings)
            out["cut"] += sum(a != b for a, b in zip(want, uncut))
            counter.take()
    return out


# ------------------------------------------------------------------------------------------------ pieces
def test_final_stop_cut_waits_for_a_longer_stop_that_could_start_earlier() -> None:
    assert final_stop_cut("no stop here", ["Response"]) is None
    metamath = ["Instruction:", "Instruction", "Response:", "Response"]
    text = "x=2. The answer is: 2\n\n### Instruction"
    assert final_stop_cut(text, metamath) == text.index("Instruction")  # "Instruction:" would start there too
    assert final_stop_cut("abcd", ["cd", "abcde"]) is None            # "abcde" may still begin at 0
    assert final_stop_cut("abcde", ["cd", "abcde"]) == 0
    assert final_stop_cut("abcdx", ["cd", "abcde"]) == 2
    for text in ("abcd", "abcde", "abcdx", "x=2. The answer is: 2\n\n### Instruction"):
        cut = final_stop_cut(text, ["cd", "abcde", *metamath])
        assert cut is None or text[:cut] == truncate_at_stop(text, ["cd", "abcde", *metamath])


def test_stop_criterion_is_per_row_and_reads_only_the_generated_tokens() -> None:
    tokenizer = char_tokenizer(ALPHABET)
    prompts = ["Q: 1+1=", "Q: 9.", "Q: 3+3=", "Q:"]
    generated = [tokenizer(g, add_special_tokens=False)["input_ids"] for g in (". T", " 33", "666", "44")]
    generated[3].append(tokenizer.eos_token_id)
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    width = max(len(ids) for ids in encoded)
    rows = [[tokenizer.pad_token_id] * (width - len(ids)) + ids + new[:3] for ids, new in zip(encoded, generated)]
    done = StopAtStrings(tokenizer, [". ", "The answer"], width)(torch.tensor(rows), None)
    # row 0 holds ". " in its generated text; in row 1 "." + " 33" straddles the prompt's end, which the text cut
    # would not find either; row 2 holds no stop string; row 3 ended with EOS
    assert done.tolist() == [True, False, False, True]


def test_length_batches_sort_longest_first_and_keep_ties_in_order() -> None:
    assert length_batches([3, 9, 3, 7, 9], 2) == [[1, 4], [3, 0], [2]]
    assert length_batches([3, 9, 3, 7, 9], 2, by_length=False) == [[0, 1], [2, 3], [4]]


# --------------------------------------------------------------------------------------- whole suites
@pytest.mark.usefixtures("one_compute_thread")
def test_embedded_suite_stops_early_and_generates_the_same_text(embedded, tmp_path: Path) -> None:
    """arith_shift (200 prompts, batch 100) on the embedded model: as configured (no stop strings: EOS ends the
    rows), and with stop strings its generations hit at varied positions. Same text; fewer pads in the batches
    (prompts batched by length) and fewer decoding steps once the rows stop at their stop strings."""
    model, tokenizer = embedded
    configured = _suite_against_reference(model, tokenizer, compose(), tmp_path / "as_configured")
    assert configured["cut"] == 0 and configured["steps"] <= configured["reference_steps"] + 4  # other batches
    # batched by length, the prompts carry fewer pads
    assert configured["prompt_positions"] < 0.95 * configured["reference_prompt_positions"]
    stops = _suite_against_reference(model, tokenizer, compose("+eval.tasks.0.stop=['. ','+']"), tmp_path / "stops")
    assert stops["cut"] > 100 and stops["steps"] < 0.7 * stops["reference_steps"]


METAMATH = [f"eval.tasks.0.data.path={DATA / 'gsm8k.jsonl'}", f"eval.tasks.1.data.path={DATA / 'math.jsonl'}",
            "eval.tasks.0.max_new_tokens=24", "eval.tasks.1.max_new_tokens=24"]
PAPER_SUITES = {  # name: (data set, character EOS stands in for, overrides, stop strings the generations hold)
    "metamathqa": ("metamathqa", " ", METAMATH, False),   # MetaMath's ten stop strings, as configured
    "metamathqa_stops_hit": ("metamathqa", " ", [*METAMATH, "eval.tasks.0.batch_size=2", "eval.tasks.1.batch_size=3"],
                             True),
    "code_feedback": ("code_feedback", " ", [f"eval.tasks.0.data.path={DATA / 'humaneval.jsonl'}",
                                             f"eval.tasks.1.data.path={DATA / 'mbpp.jsonl'}",
                                             "eval.tasks.0.max_new_tokens=24", "eval.tasks.1.max_new_tokens=24",
                                             "eval.tasks.1.batch_size=2", "eval.allow_code_execution=true"], False),
    "commonsense170k_beams_stops": ("commonsense170k", "e", [  # 4 beams as configured
        "eval.max_new_tokens=12", "eval.batch_size=3",
        *[f"eval.tasks.{i}.data.path={DATA / t}.jsonl" for i, t in enumerate(COMMONSENSE)]], True),
}


def _add_occurring_stops(model, tokenizer, cfg) -> None:
    """Give every task, in place, stop strings its own generations hold: two-character pieces from inside the
    reference generations (a random model writes none of a protocol's own stop strings)."""
    records = load_suite_records(cfg.eval)
    for task in cfg.eval.tasks:
        prompts = [build_prompt(task, r) for r in records[task.name]]
        texts = reference_generations(model, tokenizer, prompts, int(task.max_new_tokens), int(task.batch_size),
                                      int(task.get("num_beams") or 1))
        pieces = sorted({t[i:i + 2] for t in texts for i in (1, 3) if len(t) >= i + 3})
        with open_dict(task):
            task.stop = pieces[:2]


@pytest.mark.usefixtures("one_compute_thread")
@pytest.mark.parametrize("case", list(PAPER_SUITES))
def test_paper_suites_generate_the_reference_text(case: str, tmp_path: Path) -> None:
    """The paper suites with ``eval.engine=native`` on a tiny model with room for their prompts: MetaMath's stop
    list as configured and stop strings the generations hold; HumanEval/MBPP greedy; the commonsense suite's beam
    search with stop strings (cut after decoding)."""
    dataset, eos_like, overrides, stops_hit = PAPER_SUITES[case]
    model, tokenizer = _tiny(eos_like=eos_like)
    cfg = compose(f"dataset={dataset}", "eval.engine=native", *overrides)
    beams = {int(t.get("num_beams") or 1) for t in cfg.eval.tasks}
    assert beams == ({4} if dataset == "commonsense170k" else {1})
    if stops_hit:
        _add_occurring_stops(model, tokenizer, cfg)
    result = _suite_against_reference(model, tokenizer, cfg, tmp_path)
    assert (result["cut"] > 0) == stops_hit
    if stops_hit and beams == {1}:
        assert result["steps"] < 0.7 * result["reference_steps"]


@pytest.mark.usefixtures("one_compute_thread")
def test_stop_strings_inside_beam_search_would_change_the_beams(embedded) -> None:
    """Why beam search is cut after decoding, not stopped: a stopping criterion finishes a beam as EOS does,
    so the surviving beams, and the winner's cut text, change (Transformers' own StopStringCriteria here)."""
    model, tokenizer = embedded
    from loralab.data.arithmetic import word_problems

    prompts = [f"Q: {r['question']}\nA:" for r in word_problems(20, "eval")]
    stop = ["="]
    after = reference_generations(model, tokenizer, prompts, 32, 20, num_beams=4, stop=stop)
    inside = reference_generations(model, tokenizer, prompts, 32, 20, num_beams=4, stop=stop,
                                   criteria=lambda _: StopStringCriteria(tokenizer, stop))
    assert after != inside
    assert generate_greedy(model, tokenizer, prompts, 32, 8, progress=False, num_beams=4, stop=stop) == after


# ------------------------------------------------------------------------------------------- the harness
@pytest.mark.usefixtures("one_compute_thread")
def test_harness_ends_each_row_at_its_stop_strings(embedded, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """lm-eval's own stop criteria end a batch only once every row has shown one and the same stop string (one
    per-batch flag per stop string); loralab's HFLM ends each row at its own. Same text, fewer steps."""
    from lm_eval.models.huggingface import HFLM

    from loralab.evaluation import lm_eval_generate
    from loralab.evaluation.lm_eval_generate import GenerationJob, generate_tasks

    model, tokenizer = embedded
    from loralab.data.arithmetic import word_problems

    prompts = [f"Q: {r['question']}\nA:" for r in word_problems(96, "eval")]
    job = GenerationJob("arith", prompts, [""] * len(prompts), 32, [". ", "+"])
    counter = ForwardCounter(model)
    ours = generate_tasks(model, tokenizer, [job], tmp_path / "ours", batch_size=16)["arith"].generations
    steps, _ = counter.take()
    monkeypatch.setattr(lm_eval_generate, "_hflm_class", lambda: HFLM)
    harness = generate_tasks(model, tokenizer, [job], tmp_path / "harness", batch_size=16)["arith"].generations
    harness_steps, _ = counter.take()
    assert ours == harness == generate_greedy(model, tokenizer, prompts, 32, 16, progress=False, stop=job.stop)
    uncut = generate_greedy(model, tokenizer, prompts, 32, 16, progress=False)
    assert sum(a != b for a, b in zip(ours, uncut)) > len(prompts) // 2  # the stop strings do cut
    assert steps < 0.8 * harness_steps
