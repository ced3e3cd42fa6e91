"""Batched deterministic generation (greedy, or beam search where a protocol uses it) with explicit left padding.

Left padding keeps every prompt's last token at the same position, so a batch generates what each prompt
would generate alone; the attention mask hides the pads (tests check batch-size invariance).

What a generation is: the decoded new tokens, cut before the earliest of the task's stop strings
(:func:`loralab.evaluation.extraction.truncate_at_stop`, where MetaMath's stopping decoder would have ended).
How little decoding that takes:

* **Stop strings end a sequence during decoding** (greedy). :class:`StopAtStrings` marks a row finished as
  soon as its generated text holds a stop string *whose cut no later token can move* (a longer stop string that
  could still begin earlier keeps it running), and Transformers ends the batch once every row has finished by
  a stop string or EOS; finished rows are fed the pad token meanwhile, as after EOS. The criterion reads only
  the generated tokens, never the prompt, so a stop string that would straddle the prompt's end does not stop
  anything (the cut would not find it either), and it decodes the whole row only when a short window of its
  last tokens holds a stop string. The text is cut exactly as before, so the result is the text the batch
  would give if it decoded to ``max_new_tokens``, as long as decoding a prefix of the tokens yields a prefix
  of the text (true of byte-level and character tokenizers up to an incomplete UTF-8 character at the end).
* **Beam search keeps decoding past stop strings** and is cut afterwards. A stopping criterion in Transformers'
  beam search finishes a beam the way EOS does: the beam is scored at that length and leaves the running set,
  so other beams take its place and a different beam can win. The cut text of the winning beam then differs from
  what beam search over the full length (LLM-Adapters' script, which has no stop strings) returns; this was
  seen on the embedded model (``tests/test_generation_stopping.py`` keeps the case). Beams still end at EOS as
  Transformers decides (all beams finished, or no running beam can beat the finished ones).
* **Prompts are batched by length**, longest first, so a batch pads its prompts to similar lengths; the results
  come back in the prompts' order. Greedy continuations do not depend on the batch (left padding, attention
  mask, positions from the mask) up to floating-point rounding, which is not bitwise the same: more pads make
  the attention's sums longer (masked keys add exact zeros, but the summation is blocked differently), and
  another batch shape makes the matrix products block differently. On the embedded model in fp32 a prompt's
  last logits moved by up to 5e-6 with 1–20 extra pads and by up to 1e-4 between decoding it alone and in a
  batch of 100; only a near-tie between two tokens could flip, and none did over the suites the tests compare
  (they compare the cut strings, not logits).
"""
from __future__ import annotations

from typing import Sequence

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase, StoppingCriteria, StoppingCriteriaList

from loralab.evaluation.extraction import truncate_at_stop


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str, add_bos: bool = True) -> list[int]:
    """The ids the model sees for a prompt: BOS (where the tokenizer has one), then the prompt's own tokens."""
    bos = [tokenizer.bos_token_id] if add_bos and tokenizer.bos_token_id is not None else []
    return bos + tokenizer(prompt, add_special_tokens=False)["input_ids"]


def pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def pad_left(encoded: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` of token-id lists, padded on the left to the longest."""
    width = max(len(ids) for ids in encoded)
    input_ids = torch.full((len(encoded), width), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for i, ids in enumerate(encoded):
        input_ids[i, width - len(ids):] = torch.tensor(list(ids), dtype=torch.long)
        attention_mask[i, width - len(ids):] = 1
    return input_ids, attention_mask


def left_padded_batch(
    prompts: list[str], tokenizer: PreTrainedTokenizerBase, add_bos: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    return pad_left([encode_prompt(tokenizer, p, add_bos) for p in prompts], pad_id(tokenizer))


def length_batches(lengths: Sequence[int], batch_size: int, by_length: bool = True) -> list[list[int]]:
    """Indices of the prompts per batch: longest first (ties in input order), or in input order."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i]) if by_length else list(range(len(lengths)))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def final_stop_cut(text: str, stops: Sequence[str]) -> int | None:
    """Where :func:`truncate_at_stop` cuts ``text`` if no continuation of it can move the cut, else None.

    A continuation can only move the earliest stop string's position earlier through a stop string that starts
    before it and runs past the end of ``text``: one of whose prefixes ``text`` ends with."""
    if not any(stop in text for stop in stops):
        return None
    cut = len(truncate_at_stop(text, list(stops)))
    for stop in stops:
        for start in range(max(0, len(text) - len(stop) + 1), cut):
            if stop.startswith(text[start:]):
                return None
    return cut


class StopAtStrings(StoppingCriteria):
    """Per-row stopping at stop strings in the generated text (the prompt's ``prompt_width`` tokens excluded).

    A row is finished once :func:`final_stop_cut` finds its cut, or once it emitted EOS. Each call decodes a
    window of each running row's last tokens (long enough for the longest stop string even at a few tokens per
    character); only a row whose window holds a stop string, or whose cut was not yet final, is decoded in full.
    Missing a stop string in the window could only cost decoding steps, never change the cut text. The state
    is per row, so it serves greedy decoding only (beam search reorders its rows every step). Each call copies
    the window to the host: on CUDA one small synchronising copy per step.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stops: Sequence[str], prompt_width: int) -> None:
        self.tokenizer = tokenizer
        self.stops = list(stops)
        self.prompt_width = prompt_width
        self.window = 4 * max((len(s) for s in self.stops), default=0) + 8
        self.eos = tokenizer.eos_token_id
        self.finished: list[bool] | None = None
        self.pending: set[int] = set()   # rows holding a stop string whose cut a longer one may still move

    def _text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _holds_stop(self, text: str) -> bool:
        return any(s in text for s in self.stops)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor | None = None,
                 **kwargs: object) -> torch.BoolTensor:
        new = input_ids[:, self.prompt_width:]
        if self.finished is None:
            self.finished = [False] * new.shape[0]
        running = [i for i, done in enumerate(self.finished) if not done]
        if running and new.shape[1]:
            tails = new[running, -self.window:].tolist()  # one device-to-host copy per step
            for row, tail in zip(running, tails):
                if self.eos is not None and tail[-1] == self.eos:
                    self.finished[row] = True
                    continue
                if row not in self.pending and not self._holds_stop(self._text(tail)):
                    continue
                text = self._text(new[row].tolist())
                if final_stop_cut(text, self.stops) is not None:
                    self.finished[row] = True
                    self.pending.discard(row)
                elif self._holds_stop(text):
                    self.pending.add(row)
        return torch.tensor(self.finished, dtype=torch.bool, device=input_ids.device)


def decode_batch(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, encoded: Sequence[Sequence[int]],
                 max_new_tokens: int, num_beams: int = 1, stop: Sequence[str] = (),
                 stop_in_decoding: bool = True) -> torch.Tensor:
    """The new token ids (rows × generated length, on the CPU) of one left-padded batch of encoded prompts.

    ``stop_in_decoding`` (greedy only, see the module docstring) ends rows at their stop strings; the caller
    cuts the text either way."""
    device = next(model.parameters()).device
    input_ids, attention_mask = pad_left(encoded, pad_id(tokenizer))
    criteria = StoppingCriteriaList()
    if stop and stop_in_decoding and num_beams == 1:
        criteria.append(StopAtStrings(tokenizer, stop, input_ids.shape[1]))
    generated = model.generate(
        input_ids=input_ids.to(device),
        attention_mask=attention_mask.to(device),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=num_beams,
        pad_token_id=pad_id(tokenizer),
        eos_token_id=tokenizer.eos_token_id,
        stopping_criteria=criteria,
    )
    return generated[:, input_ids.shape[1]:].cpu()


@torch.no_grad()
def generate_greedy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    max_new_tokens: int,
    batch_size: int = 16,
    progress: bool = True,
    num_beams: int = 1,
    stop: Sequence[str] = (),
    *,
    stop_in_decoding: bool = True,
    by_length: bool = True,
) -> list[str]:
    """Greedy continuations of ``prompts`` (``num_beams > 1``: beam search, still without sampling), each cut
    before its earliest ``stop`` string, in the prompts' order.

    ``stop_in_decoding=False, by_length=False`` is the reference decoding (prompts batched in their order, every
    batch decoded until all rows emitted EOS or ``max_new_tokens``, stop strings applied afterwards): same
    text, more decoding steps; the evaluation benchmark compares the two."""
    if not isinstance(num_beams, int) or num_beams < 1:
        raise ValueError(f"num_beams={num_beams!r}: it must be an integer >= 1")
    model.eval()
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    outputs: list[str] = [""] * len(prompts)
    batches = length_batches([len(ids) for ids in encoded], batch_size, by_length)
    for rows in tqdm(batches, desc="generating", disable=not progress, leave=False):
        new_tokens = decode_batch(model, tokenizer, [encoded[i] for i in rows], max_new_tokens, num_beams, stop,
                                  stop_in_decoding)
        for i, text in zip(rows, tokenizer.batch_decode(new_tokens, skip_special_tokens=True)):
            outputs[i] = truncate_at_stop(text, list(stop))
    return outputs
