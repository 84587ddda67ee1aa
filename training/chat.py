"""A user message as the prompt string a model answers: its chat template, or one plain fallback.

Every stage (training, evaluation, analysis) builds prompts here, so training and analysis see the same tokens.
Footgun: only a tokenizer with NO chat template gets the fallback ``"User: ...\\nAssistant:"``; the last token of
the result is the *final prompt token* that probes read.
"""

from __future__ import annotations


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def chat_prompt(tokenizer, user_text: str) -> str:
    """``user_text`` as a single user turn followed by the assistant's generation prompt."""
    if has_chat_template(tokenizer):
        return tokenizer.apply_chat_template([{"role": "user", "content": user_text}], add_generation_prompt=True,
                                             tokenize=False)
    return f"User: {user_text}\nAssistant:"
