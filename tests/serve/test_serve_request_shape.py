"""Request sizes the router sees, estimated from OpenAI bodies."""

from __future__ import annotations

import pytest

from rlserve.errors import InputError
from rlserve.serve.request_shape import request_sizes


def test_text_prompt_is_characters_over_chars_per_token() -> None:
    assert request_sizes({"prompt": "x" * 41, "max_tokens": 7}, 4.0, 256) == (11, 7, True)


def test_token_id_prompts_are_counted_exactly_and_batches_summed() -> None:
    assert request_sizes({"prompt": [5, 6, 7]}, 4.0, 256) == (3, 256, False)
    assert request_sizes({"prompt": [[1, 2], [3, 4, 5]]}, 4.0, 9) == (5, 9, False)
    assert request_sizes({"prompt": ["abcd", "efgh"]}, 4.0, 9) == (2, 9, False)


def test_chat_counts_text_content_and_text_parts_only() -> None:
    body = {"messages": [{"role": "system", "content": "a" * 8},
                         {"role": "user", "content": [{"type": "text", "text": "b" * 8},
                                                      {"type": "image_url", "image_url": {"url": "data:..."}}]}],
            "max_completion_tokens": 30, "max_tokens": 99}
    assert request_sizes(body, 4.0, 256) == (4, 30, True)


def test_n_choices_multiply_the_output_and_nonsense_falls_back_to_defaults() -> None:
    assert request_sizes({"prompt": "", "max_tokens": 10, "n": 3}, 4.0, 256) == (1, 30, False)
    assert request_sizes({"prompt": "x", "max_tokens": "many", "n": True}, 4.0, 64) == (1, 64, False)
    assert request_sizes({"prompt": "x", "max_tokens": 0}, 4.0, 64) == (1, 64, False)


@pytest.mark.parametrize("body", [
    {"prompt": 12},
    {"prompt": [[[1, 2]]]},
    {"prompt": [1, "a"]},
    {"messages": "hi"},
    {"messages": [3]},
    {"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]},
    {"messages": [{"role": "user", "content": [7]}]},
    {"messages": [{"role": "user", "content": {"text": "x"}}]},
])
def test_bodies_no_openai_server_accepts_are_rejected_not_guessed(body: dict) -> None:
    with pytest.raises(InputError):
        request_sizes(body, 4.0, 64)
