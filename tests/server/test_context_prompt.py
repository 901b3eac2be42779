"""Prompt assembly for answers with context (server/context.py) and the parse of `"context"`: pure
functions, no server. The end-to-end behaviour is in test_context.py."""

from __future__ import annotations

import pytest

from visionrag.server.context import (
    CHARS_PER_TOKEN,
    CLOSE_FENCE,
    CUT_MARK,
    MIN_FIELD_CHARS,
    OPEN_FENCE,
    Note,
    estimate_tokens,
    fit,
    render,
    with_notes,
)
from visionrag.server.errors import InvalidInput
from visionrag.server.inputs import ContextOptions, parse_context


def note(n: int, answer: str, query: str = "q", day: int = 1) -> Note:
    return Note(
        id=f"id-{n}",
        score=1 - n / 10,
        query=query,
        answer=answer,
        created_at=f"2026-11-{day:02d}T10:00:00+00:00",
        stored_query=query,
    )


def test_notes_are_fenced_labelled_and_go_before_the_question() -> None:
    notes = [note(1, "the gateway calls orders", query="what calls orders?"), note(2, "a caption", query="")]
    notes[0].same_image = True
    block = render(notes)
    assert block.index(OPEN_FENCE) < block.index("[note 1 · 2026-11-01 10:00 UTC · same image]")
    assert "Question: what calls orders?\nAnswer: the gateway calls orders" in block
    assert "[note 2 · 2026-11-01 10:00 UTC]\nDescription: a caption" in block  # an imported document
    assert block.endswith(CLOSE_FENCE)
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "be brief"}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "which database?"}]},
    ]
    out = with_notes(messages, block)
    assert out[1]["content"][1]["text"] == block + "\n\nwhich database?"
    assert out[1]["content"][0] == {"type": "image"}  # still one image, the request's own
    assert out[0] == messages[0]
    assert messages[1]["content"][1]["text"] == "which database?"  # the request's messages are not changed
    assert with_notes(messages, "") is messages


def test_fit_keeps_everything_that_fits() -> None:
    notes = [note(1, "short"), note(2, "also short")]
    assert fit(notes, 1000) == notes


def test_fit_cuts_the_longest_note_first_then_drops_the_oldest() -> None:
    long = note(1, "x" * 3000, day=5)
    old = note(2, "an old short answer", day=1)
    newer = note(3, "a newer short answer", day=9)
    budget = estimate_tokens(render([note(1, "x" * 400, day=5), old, newer]))
    kept = fit([long, old, newer], budget)
    assert [n.id for n in kept] == ["id-1", "id-2", "id-3"]
    assert estimate_tokens(render(kept)) <= budget
    assert kept[0].answer.endswith("[...]") and len(kept[0].answer) < 3000
    assert long.answer == "x" * 3000  # the caller's notes are not changed
    # a budget too small for three notes cut to the minimum: the oldest go first
    tight = estimate_tokens(
        render([note(1, "x" * MIN_FIELD_CHARS + CUT_MARK, day=5), note(3, "y" * 20, day=9)])
    )
    kept = fit([long, old, newer], tight)
    assert [n.id for n in kept] == ["id-1", "id-3"]
    assert estimate_tokens(render(kept)) <= tight
    assert fit([long, old, newer], 1) == []  # nothing fits: no notes at all, never a broken block


def test_the_estimate_is_conservative_for_llama_text() -> None:
    # Llama 3 averages ~4 characters a token on English; the estimate counts a token per 3 characters.
    assert CHARS_PER_TOKEN == 3
    assert estimate_tokens("abc" * 10) == 10 and estimate_tokens("abcd") == 2


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, None),
        (False, None),
        (True, ContextOptions()),
        (5, ContextOptions(k=5)),
        (
            {"k": 2, "against": "images", "min_score": 0.5},
            ContextOptions(k=2, against="images", min_score=0.5),
        ),
        ({"user": "ann", "tags": ["a"]}, ContextOptions(user="ann", tags=["a"])),
        ("true", ContextOptions()),  # multipart form fields are text
        ("false", None),
        ("4", ContextOptions(k=4)),
        ("1", ContextOptions(k=1)),  # a number is k, even 1
        ('{"k": 1}', ContextOptions(k=1)),
    ],
)
def test_parse_context(raw, expected) -> None:
    assert parse_context(raw) == expected
    assert ContextOptions().k == 3 and ContextOptions().against == "both"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"k": 0}, "context.k"),
        ({"k": 21}, "context.k"),
        (0, "context.k"),
        ({"against": "pixels"}, "context.against"),
        ({"bogus": 1}, "context.bogus"),
        ({"tags": "a"}, "context.tags"),
        ("maybe", "context"),
        ([1], "context must be"),
        (1.5, "context must be"),
    ],
)
def test_bad_context_is_a_clear_422(raw, message) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_context(raw)
    assert message in str(caught.value)
