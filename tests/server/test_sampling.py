"""OpenAI's penalties and logprobs (server/sampling.py) checked against the model itself: an independent
decoding loop (full forward passes, no cache, no logits processors) on the tiny checkpoint."""

from __future__ import annotations

import io
from collections import Counter

import pytest
import torch
from PIL import Image

from tests.conftest import diagram_png
from visionrag.server.generation import GenerationRequest, Sampling, VisionModel
from visionrag.server.sampling import TokenDescriber, chosen, log_probs, penalize


@pytest.fixture(scope="module")
def model(tiny_model_dir) -> VisionModel:
    return VisionModel.load(str(tiny_model_dir))


def request(max_tokens: int, **sampling) -> GenerationRequest:
    image = Image.open(io.BytesIO(diagram_png(7)))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is it"}]}]
    return GenerationRequest(messages, image, Sampling(max_tokens=max_tokens, **sampling))


def run(model: VisionModel, req: GenerationRequest) -> tuple[str, list[dict]]:
    """The answer and every logprobs entry its deltas carried, in order."""
    text, entries = [], []
    for step in model.stream([req]):
        delta = step[0]
        if delta is not None:
            text.append(delta.text)
            entries.extend(delta.logprobs or [])
    return "".join(text), entries


def reference_decode(model: VisionModel, req: GenerationRequest, steps: int, frequency=0.0, presence=0.0):
    """Greedy decoding by hand: a full forward pass per token, OpenAI's penalty formula written out with
    a Counter. Returns the chosen ids and the log-softmax of the raw logits at each step."""
    inputs = model.prepare([req])
    ids, chosen_ids, rows = inputs["input_ids"], [], []
    mask, cross = inputs["attention_mask"], inputs["cross_attention_mask"]
    with torch.inference_mode():
        for _ in range(steps):
            out = model.model(
                input_ids=ids,
                attention_mask=mask,
                cross_attention_mask=cross,
                pixel_values=inputs["pixel_values"],
                aspect_ratio_ids=inputs["aspect_ratio_ids"],
                aspect_ratio_mask=inputs["aspect_ratio_mask"],
            )
            logits = out.logits[0, -1].float()
            rows.append(torch.log_softmax(logits, dim=-1))
            adjusted = logits.clone()
            for token, count in Counter(chosen_ids).items():
                adjusted[token] -= count * frequency + presence
            token = int(torch.argmax(adjusted))
            chosen_ids.append(token)
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            cross = torch.cat([cross, cross[:, -1:]], dim=1)
    return chosen_ids, rows


def test_penalize_is_openais_formula() -> None:
    logits = torch.tensor([1.0, 2.0, 3.0, 4.0])
    out = penalize(logits, [2, 2, 0, 2], frequency_penalty=0.5, presence_penalty=0.25)
    # token 2 generated 3 times, token 0 once, tokens 1 and 3 never
    assert out.tolist() == [1.0 - 0.5 - 0.25, 2.0, 3.0 - 1.5 - 0.25, 4.0]
    assert logits.tolist() == [1.0, 2.0, 3.0, 4.0]  # pure: the input is left alone
    assert penalize(logits, [], 1.0, 1.0).tolist() == logits.tolist()
    assert penalize(logits, [3], -1.0, 0.0).tolist() == [1.0, 2.0, 3.0, 5.0]  # negative: encourages


def test_chosen_gives_the_token_and_the_most_likely_first() -> None:
    lp = log_probs(torch.tensor([0.0, 3.0, 1.0, 2.0]))
    value, top = chosen(lp, 2, 3)
    assert value == pytest.approx(float(lp[2]))
    assert [t for t, _ in top] == [1, 3, 2]
    assert chosen(lp, 0, 0)[1] == []


def test_logprobs_are_the_models_log_softmax(model) -> None:
    req = request(8, logprobs=True, top_logprobs=5)
    text, entries = run(model, req)
    ids, rows = reference_decode(model, req, 8)
    assert len(entries) == 8
    for entry, token, row in zip(entries, ids, rows, strict=True):
        assert entry["logprob"] == pytest.approx(float(row[token]), abs=1e-4)
        top_values, top_ids = torch.topk(row, 5)
        assert [t["logprob"] for t in entry["top_logprobs"]] == pytest.approx(top_values.tolist(), abs=1e-4)
        assert entry["top_logprobs"][0]["token"] == entry["token"]  # greedy: the argmax
        assert entry["bytes"] == list(entry["token"].encode("utf-8"))
        described = TokenDescriber(model.tokenizer)(top_ids.tolist()[0])
        assert entry["top_logprobs"][0]["token"] == described.text
    assert model.tokenizer.decode(ids, skip_special_tokens=True) == text


def test_logprobs_do_not_change_the_answer_and_are_off_by_default(model) -> None:
    plain_text, plain_entries = run(model, request(6))
    text, entries = run(model, request(6, logprobs=True))
    assert text == plain_text and plain_entries == []
    assert len(entries) == 6 and all(e["top_logprobs"] == [] for e in entries)


@pytest.mark.parametrize(("frequency", "presence"), [(1.5, 0.0), (0.0, 2.0), (0.7, 0.9)])
def test_penalised_greedy_answer_equals_the_hand_written_loop(model, frequency, presence) -> None:
    req = request(24, frequency_penalty=frequency, presence_penalty=presence, logprobs=True)
    text, entries = run(model, req)
    ids, rows = reference_decode(model, req, 24, frequency, presence)
    assert text == model.tokenizer.decode(ids, skip_special_tokens=True)
    expected = [float(row[token]) for row, token in zip(rows, ids, strict=True)]
    assert [e["logprob"] for e in entries] == pytest.approx(expected, abs=1e-4)  # raw, before penalties
    plain_ids, _ = reference_decode(model, req, 24)
    assert ids != plain_ids  # the penalties did change this answer (the tiny model repeats itself)


def test_penalties_in_a_batch_leave_other_rows_alone(model) -> None:
    plain = request(24)
    both = model.generate([plain, request(24, presence_penalty=2.0)])
    assert both[0].text == model.generate([plain])[0].text
    assert both[1].text != both[0].text


def test_byte_level_tokens_give_their_exact_bytes() -> None:
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    raw = ByteLevelBPETokenizer()
    raw.train_from_iterator(["héllo wörld, 日本 diagram"] * 20, vocab_size=270, min_frequency=1)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw._tokenizer)
    text = "wörld 日本"
    ids = tokenizer.encode(text, add_special_tokens=False)
    describe = TokenDescriber(tokenizer)
    joined = b"".join(bytes(describe(i).bytes) for i in ids)
    assert joined == text.encode("utf-8")
    assert any("\ufffd" in describe(i).text for i in ids)  # some tokens hold part of a character
