"""From an OpenAI request body to the sizes a router sees in :class:`~rlserve.workload.request.Request`.

The proxy has no tokenizer (loading one per model would tie it to a model hub and cost milliseconds per request),
so text is measured in characters and divided by ``chars_per_token`` (about 4 for English with Llama-style BPE).
Token-id prompts (``"prompt": [1, 2, 3]``) are counted exactly. The output size is ``max_tokens`` (or
``max_completion_tokens``) times ``n``, an upper bound, which is also what the simulator's policies would see if
they were told only what a client asks for; without ``max_tokens`` the configured default stands in.

Bodies whose prompt or messages have a shape no OpenAI server accepts (a ``text`` part that is a number, a prompt
nested three lists deep) are rejected here with :class:`~rlserve.errors.InputError` (the proxy answers 400)
rather than measured by guesswork or crashing the handler.
"""

from __future__ import annotations

import math
from typing import Any

from rlserve.errors import InputError


def _text_chars(content: Any) -> int:
    """Characters of a chat message ``content``: a string, ``null``, or a list of parts (only text parts count)."""
    if content is None:
        return 0
    if isinstance(content, str):
        return len(content)
    if not isinstance(content, list):
        raise InputError("a message's 'content' must be a string or a list of content parts")
    chars = 0
    for part in content:
        if not isinstance(part, dict):
            raise InputError("each content part must be an object with a 'type'")
        if part.get("type") == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise InputError("a 'text' content part needs a string 'text'")
            chars += len(text)
    return chars


def _prompt_size(prompt: Any, chars_per_token: float) -> int:
    """Tokens of a completions ``prompt``: a string, token ids, or a batch (list) of either."""
    if prompt is None:
        return 0
    if isinstance(prompt, str):
        return math.ceil(len(prompt) / chars_per_token)
    if not isinstance(prompt, list):
        raise InputError("'prompt' must be a string, a list of token ids, or a list of those")
    if all(_is_token(t) for t in prompt):
        return len(prompt)
    total = 0
    for p in prompt:
        if isinstance(p, str):
            total += math.ceil(len(p) / chars_per_token)
        elif isinstance(p, list) and all(_is_token(t) for t in p):
            total += len(p)
        else:
            raise InputError("'prompt' must be a string, a list of token ids, or a list of those")
    return total


def _is_token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def request_sizes(body: dict[str, Any], chars_per_token: float, default_max_tokens: int) -> tuple[int, int, bool]:
    """``(prompt_tokens, output_tokens, output_exact)`` from a completions or chat-completions body.

    Both sizes are >= 1; ``output_exact`` says the output size is the client's own ``max_tokens`` for a single
    choice, so an answer that stops for ``"length"`` has exactly that many tokens.

    Raises:
        InputError: the prompt or messages have a shape no OpenAI server accepts.
    """
    messages = body.get("messages")
    if messages is not None:
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise InputError("'messages' must be a list of message objects")
        chars = sum(_text_chars(m.get("content")) for m in messages)
        prompt_tokens = math.ceil(chars / chars_per_token)
    else:
        prompt_tokens = _prompt_size(body.get("prompt"), chars_per_token)
    asked = body.get("max_completion_tokens") or body.get("max_tokens")
    if isinstance(asked, int) and not isinstance(asked, bool) and asked >= 1:
        output_tokens, exact = asked, True
    else:
        output_tokens, exact = default_max_tokens, False
    n = body.get("n")
    if isinstance(n, int) and not isinstance(n, bool) and n > 1:
        output_tokens *= n
        exact = False
    return max(prompt_tokens, 1), output_tokens, exact


def rendered_prompt(body: dict[str, Any]) -> str | list[int]:
    """The prompt as the prefix index hashes it: token ids as they are, text as is, chat messages as their roles and
    text parts in order (so conversations that share their first messages share a prefix). A batch of prompts gives
    its first one (the batch shares one routing decision)."""
    messages = body.get("messages")
    if isinstance(messages, list):
        parts = []
        for m in messages:
            if isinstance(m, dict):
                content = m.get("content")
                if isinstance(content, list):
                    content = "".join(p.get("text") or "" for p in content
                                      if isinstance(p, dict) and p.get("type") == "text")
                parts.append(f"<{m.get('role')}>{content if isinstance(content, str) else ''}")
        return "".join(parts)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
        return prompt
    return ""
