"""Text generation (`text-generation`): continue texts, or answer chats through the tokenizer's
chat template, with a causal LM's `generate`, as transformers' pipeline does.

Generation options are `generate`'s (`max_new_tokens`, `do_sample`, `temperature`, `streamer`,
…); like transformers' pipeline, it samples up to 256 new tokens unless the call or the model's
generation config says otherwise, and pads with the tokenizer's pad token.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import InputError
from .base import Pipeline

# what the pipeline asks of `generate` when neither the call nor the model's generation config sets it
GENERATION_DEFAULTS = {"max_new_tokens": 256, "do_sample": True}
RETURN_TYPES = ("full_text", "new_text", "tensors")


class TextGenerationPipeline(Pipeline):
    """`pipe(text_or_chat, return_full_text=True, return_tensors=False, prefix=None,
    stop_sequence=None, continue_final_message=None, skip_special_tokens=True, tools=None,
    **generate_kwargs)`.

    A text gives `[{"generated_text": prompt + continuation}]` (only the continuation with
    `return_full_text=False`; `{"generated_token_ids": …}` with `return_tensors=True`), one
    record per returned sequence. A chat (a list of `{"role", "content"}` messages) gives the
    messages followed by the assistant's reply (or its final message continued). A list of
    texts or chats gives one such list per input.
    """

    task = "text-generation"

    def __call__(self, text_inputs: Any, **call: Any) -> Any:
        options, batch_size = self._options(call)
        if _is_chat(text_inputs):
            return self.run([("chat", list(text_inputs))], options, batch_size)[0]
        if isinstance(text_inputs, list):
            items = [("chat", list(item)) if _is_chat(item) else ("text", item) for item in text_inputs]
            return self.run(items, options, batch_size)
        return self.run([("text", text_inputs)], options, batch_size)[0]

    def parameters(
        self,
        return_full_text: bool | None = None,
        return_tensors: bool | None = None,
        return_text: bool | None = None,
        clean_up_tokenization_spaces: bool | None = None,
        prefix: str | None = None,
        stop_sequence: str | list[str] | None = None,
        continue_final_message: bool | None = None,
        skip_special_tokens: bool | None = None,
        tokenizer_encode_kwargs: dict[str, Any] | None = None,
        tools: list[dict[str, Any]] | None = None,
        documents: list[dict[str, Any]] | None = None,
        add_special_tokens: bool | None = None,
        truncation: bool | str | None = None,
        padding: bool | str | None = None,
        max_length: int | None = None,
        **generate_kwargs: Any,
    ) -> dict[str, Any]:
        if return_full_text is not None and (return_text is not None or return_tensors is not None):
            raise InputError("text-generation: return_full_text excludes return_text and return_tensors")
        if return_tensors is not None and return_text is not None:
            raise InputError("text-generation: return_text excludes return_tensors")
        return_type = "full_text"
        if return_full_text is not None:
            return_type = "full_text" if return_full_text else "new_text"
        elif return_tensors:
            return_type = "tensors"
        encode = {"add_special_tokens": add_special_tokens, "truncation": truncation, "padding": padding, "max_length": max_length}
        encode = {key: value for key, value in encode.items() if value is not None}
        encode.update(tokenizer_encode_kwargs or {})
        if max_length is not None:
            generate_kwargs["max_length"] = max_length
        if stop_sequence is not None:
            generate_kwargs["stop_strings"] = [stop_sequence] if isinstance(stop_sequence, str) else list(stop_sequence)
            generate_kwargs["tokenizer"] = self.tokenizer
        if prefix:
            # a total length counts the prefix the prompt gains
            prefix_length = len(self.tokenizer(prefix, add_special_tokens=bool(add_special_tokens))["input_ids"])
            for total, new in (("max_length", "max_new_tokens"), ("min_length", "min_new_tokens")):
                if total in generate_kwargs and new not in generate_kwargs:
                    generate_kwargs[total] += prefix_length
        return {
            "return_type": return_type, "clean_up": clean_up_tokenization_spaces, "prefix": prefix or "",
            "continue_final_message": continue_final_message, "skip_special_tokens": True if skip_special_tokens is None else skip_special_tokens,
            "encode": encode, "tools": tools, "documents": documents, "generate": self._generate_options(generate_kwargs),
        }  # fmt: skip

    def _generate_options(self, generate_kwargs: dict[str, Any]) -> dict[str, Any]:
        """The call's generation options over the pipeline's defaults, which apply only where
        neither the call nor the model's generation config sets them."""
        model_config = getattr(self.model, "generation_config", None)
        chosen = {**(model_config.to_diff_dict() if model_config is not None else {}), **generate_kwargs}
        added = {key: value for key, value in GENERATION_DEFAULTS.items() if key not in chosen}
        if "max_length" in chosen:
            added.pop("max_new_tokens", None)
        if self.tokenizer.pad_token_id is not None and "pad_token_id" not in chosen:
            added["pad_token_id"] = self.tokenizer.pad_token_id
        return {**generate_kwargs, **added}

    def preprocess(self, item: tuple[str, Any], params: dict[str, Any]) -> list[dict[str, Any]]:
        kind, prompt = item
        if kind == "chat":
            continue_final = params["continue_final_message"]
            if continue_final is None:
                continue_final = prompt[-1].get("role") == "assistant"
            encoded = self.tokenizer.apply_chat_template(
                prompt, add_generation_prompt=not continue_final, continue_final_message=continue_final,
                return_dict=True, return_tensors="pt", tools=params["tools"], documents=params["documents"], **params["encode"],
            )  # fmt: skip
        elif isinstance(prompt, str):
            encoded = self.tokenizer(params["prefix"] + prompt, return_tensors="pt", **params["encode"])
        else:
            raise InputError(f"text-generation: expected a text or a chat (a list of messages), found {type(prompt).__name__}")
        tensors = {key: encoded[key] for key in ("input_ids", "attention_mask") if key in encoded}
        return [{"tensors": tensors, "prompt": item}]

    def model_inputs(self) -> set[str]:
        return {"input_ids", "attention_mask"}

    def forward(self, inputs: dict[str, torch.Tensor], params: dict[str, Any]) -> dict[str, torch.Tensor]:
        sequences = self.model.generate(**inputs, **params["generate"])
        batch = inputs["input_ids"].shape[0]
        return {"sequences": sequences.reshape(batch, -1, sequences.shape[-1])}  # (batch, returned, total)

    def postprocess(self, chunks: list[dict[str, Any]], params: dict[str, Any]) -> list[dict[str, Any]]:
        chunk = chunks[0]
        kind, prompt = chunk["prompt"]
        prompt_length = chunk["tensors"]["input_ids"].shape[-1]
        records = []
        for sequence in chunk["outputs"]["sequences"][0].tolist():
            if params["return_type"] == "tensors":
                records.append({"generated_token_ids": sequence})
                continue
            text = self.tokenizer.decode(
                sequence[prompt_length:], skip_special_tokens=params["skip_special_tokens"],
                clean_up_tokenization_spaces=params["clean_up"],
            )  # fmt: skip
            if params["return_type"] == "full_text":
                text = _full(kind, prompt, text, params["continue_final_message"])
            records.append({"generated_text": text})
        return records


def _full(kind: str, prompt: Any, text: str, continue_final: bool | None) -> Any:
    """The prompt with its continuation: a text followed by it, or the chat with the reply."""
    if kind == "text":
        return prompt + text
    if continue_final is None:
        continue_final = prompt[-1].get("role") == "assistant"
    if continue_final:
        return [*prompt[:-1], {"role": prompt[-1]["role"], "content": prompt[-1]["content"] + text}]
    return [*prompt, {"role": "assistant", "content": text}]


def _is_chat(value: Any) -> bool:
    """A chat: a non-empty list of message dicts."""
    return isinstance(value, (list, tuple)) and bool(value) and all(isinstance(m, dict) and "role" in m for m in value)
