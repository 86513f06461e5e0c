"""Prompt templates: how a task's text and question become the model's input.

``raw`` is plain completion (base models); ``chat`` uses the tokenizer's own chat template;
``llama2`` and ``vicuna`` are the paper's templates for LLaMA2-Chat and Vicuna. ``answer_prefix``
(e.g. "The pass key is") is appended after the template, so the answer starts right away.
"""

from __future__ import annotations

from harness.constants import PROMPT_TEMPLATES


def format_prompt(template: str, tokenizer, text: str, question: str, answer_prefix: str = "") -> str:
    if template == "raw":
        prompt = f"{text}\n{question}"
    elif template == "llama2":
        prompt = f"[INST] {text}\n{question} [/INST]"
    elif template == "vicuna":
        prompt = f"USER: {text}\n{question} ASSISTANT:"
    elif template == "chat":
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError("prompt_template 'chat' needs a tokenizer with a chat template; use 'raw'")
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": f"{text}\n{question}"}], tokenize=False, add_generation_prompt=True
        )
    else:
        raise ValueError(f"unknown prompt template {template!r}; choose one of {', '.join(PROMPT_TEMPLATES)}")
    if not answer_prefix:
        return prompt
    return prompt + ("" if prompt.endswith((" ", "\n")) else " ") + answer_prefix
