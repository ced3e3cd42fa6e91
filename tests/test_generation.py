"""Batched greedy generation must not depend on the batch: left padding and the attention mask are real."""
import torch

from loralab.synthetic.arithmetic import ALPHABET
from loralab.evaluation.generation import generate_greedy, left_padded_batch
from loralab.models.embedded_lm import char_tokenizer
from loralab.models.tiny import tiny_llama


def _model_and_tokenizer():
    tokenizer = char_tokenizer(ALPHABET)
    model = tiny_llama(vocab_size=len(tokenizer), seed=3)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def test_left_padding_and_mask() -> None:
    _, tokenizer = _model_and_tokenizer()
    ids, mask = left_padded_batch(["1+2=", "10+20="], tokenizer)
    assert ids.shape == mask.shape == (2, 7)  # bos + 6 characters
    assert mask[0].tolist() == [0, 0, 1, 1, 1, 1, 1] and mask[1].tolist() == [1] * 7
    assert ids[0, :2].tolist() == [tokenizer.pad_token_id] * 2 and ids[0, 2].item() == tokenizer.bos_token_id


def test_batch_size_invariance() -> None:
    model, tokenizer = _model_and_tokenizer()
    prompts = ["Q: Ann has 3 pens.", "1+1=", "Q: Leo has 12 keys. Leo finds 7. How many keys now?\nA:", "9-4=",
               "Ben", "Eve has 19 cups. Eve uses 2.", "0+0=", "Kim has 5 rocks."]
    alone = generate_greedy(model, tokenizer, prompts, max_new_tokens=8, batch_size=1, progress=False)
    batched = generate_greedy(model, tokenizer, prompts, max_new_tokens=8, batch_size=8, progress=False)
    assert alone == batched
    assert len(set(alone)) > 1  # a random model still continues different prompts differently


def test_ignoring_the_mask_would_change_outputs() -> None:
    """Guards the invariance test: pads that are attended to do change what the model generates."""
    model, tokenizer = _model_and_tokenizer()
    ids, mask = left_padded_batch(["1+2=", "Q: Leo has 12 keys. Leo finds 7."], tokenizer)
    with torch.no_grad():
        masked = model(input_ids=ids, attention_mask=mask).logits[0, -1]
        unmasked = model(input_ids=ids, attention_mask=torch.ones_like(mask)).logits[0, -1]
    assert not torch.allclose(masked, unmasked)
