"""Extractive question answering (`question-answering`) over any `…ForQuestionAnswering`, as
transformers 4.x's pipeline answers (transformers 5 removed it).

A context too long for `max_seq_len` tokens is cut into windows overlapping by `doc_stride`
tokens, each paired with the question (question first when the tokenizer pads on the right,
context first otherwise). In each window, start and end probabilities are the softmax of the
logits over the context tokens (and the CLS token); a span's score is start × end probability
for spans of at most `max_answer_len` tokens. Answers are character spans of the context,
widened to whole words with `align_to_words`.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import InputError
from .base import Pipeline, check_unknown

# the masked logit value transformers uses for tokens that cannot be part of an answer
MASKED = -10000.0


class QuestionAnsweringPipeline(Pipeline):
    """`pipe(question=…, context=…, top_k=1, doc_stride=128, max_answer_len=15, max_seq_len=384,
    handle_impossible_answer=False, align_to_words=True)`.

    Questions and contexts are strings or equal-length lists (or one context for several
    questions), or `{"question", "context"}` dicts given positionally. Each example answers
    `{"score", "start", "end", "answer"}`, or a list of `top_k` of them; several examples, a list.
    """

    task = "question-answering"

    def __call__(self, *args: Any, question: Any = None, context: Any = None, **call: Any) -> Any:
        examples = _examples(args, question, context)
        options, batch_size = self._options(call)
        results = self.run(examples, options, batch_size)
        return results[0] if len(results) == 1 else results

    def parameters(
        self,
        top_k: int = 1,
        doc_stride: int | None = None,
        max_answer_len: int = 15,
        max_seq_len: int | None = None,
        max_question_len: int = 64,
        handle_impossible_answer: bool = False,
        align_to_words: bool = True,
        padding: bool | str = "do_not_pad",
        **unknown: Any,
    ) -> dict[str, Any]:
        check_unknown(self.task, unknown)
        if top_k < 1:
            raise InputError(f"top_k: expected at least 1, found {top_k}")
        if max_answer_len < 1:
            raise InputError(f"max_answer_len: expected at least 1, found {max_answer_len}")
        if max_seq_len is None:
            max_seq_len = min(self.tokenizer.model_max_length, 384)
        if doc_stride is None:
            doc_stride = min(max_seq_len // 2, 128)
        if doc_stride > max_seq_len:
            raise InputError(f"doc_stride: {doc_stride} is larger than max_seq_len {max_seq_len}")
        return {
            "top_k": top_k, "doc_stride": doc_stride, "max_answer_len": max_answer_len, "max_seq_len": max_seq_len,
            "handle_impossible_answer": handle_impossible_answer, "align_to_words": align_to_words, "padding": padding,
        }  # fmt: skip

    def preprocess(self, item: dict[str, str], params: dict[str, Any]) -> list[dict[str, Any]]:
        question_first = self.tokenizer.padding_side == "right"
        first, second = (item["question"], item["context"]) if question_first else (item["context"], item["question"])
        encoded = self.tokenizer(
            first,
            second,
            padding=params["padding"],
            truncation="only_second" if question_first else "only_first",
            max_length=params["max_seq_len"],
            stride=params["doc_stride"],
            return_token_type_ids=True,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
            return_special_tokens_mask=True,
        )
        context_index = 1 if question_first else 0
        cls_id = self.tokenizer.cls_token_id
        chunks = []
        for window, input_ids in enumerate(encoded["input_ids"]):
            # p_mask: 1 where a token cannot be part of the answer (outside the context; CLS may,
            # where it stands for "no answer")
            p_mask = [int(sequence != context_index) if question_first else 0 for sequence in encoded.sequence_ids(window)]
            p_mask = [0 if token == cls_id else mask for token, mask in zip(input_ids, p_mask)]
            tensors = {key: torch.tensor([encoded[key][window]]) for key in ("input_ids", "attention_mask", "token_type_ids") if key in encoded}
            tensors["p_mask"] = torch.tensor([p_mask])
            chunks.append({"tensors": tensors, "example": item, "encoding": encoded, "window": window})
        return chunks

    def postprocess(self, chunks: list[dict[str, Any]], params: dict[str, Any]) -> Any:
        null_score = 1000000.0  # the best "no answer" score seen, when impossible answers are allowed
        answers = []
        context_index = 1 if self.tokenizer.padding_side == "right" else 0
        for chunk in chunks:
            tensors, outputs = chunk["tensors"], chunk["outputs"]
            allowed = (1 - tensors["p_mask"][0]) & tensors["attention_mask"][0] if "attention_mask" in tensors else 1 - tensors["p_mask"][0]
            start = _probabilities(outputs["start_logits"][0], allowed)
            end = _probabilities(outputs["end_logits"][0], allowed)
            if params["handle_impossible_answer"]:
                null_score = min(null_score, (start[0] * end[0]).item())
            start[0] = end[0] = 0.0
            # tokens before the row's own ones are left padding of its batch
            shift = int((tensors["input_ids"][0] == self.tokenizer.pad_token_id).sum()) if self.tokenizer.padding_side == "left" else 0
            for first, last, score in best_spans(start, end, params["top_k"], params["max_answer_len"], allowed):
                begin, finish = self._characters(chunk, first - shift, last - shift, context_index, params["align_to_words"])
                answers.append({"score": score, "start": begin, "end": finish, "answer": chunk["example"]["context"][begin:finish]})
        if params["handle_impossible_answer"]:
            answers.append({"score": null_score, "start": 0, "end": 0, "answer": ""})
        answers = sorted(answers, key=lambda answer: answer["score"], reverse=True)[: params["top_k"]]
        return answers[0] if len(answers) == 1 else answers

    def _characters(self, chunk: dict[str, Any], first: int, last: int, context_index: int, align: bool) -> tuple[int, int]:
        """The context characters of tokens `first … last` of a window, widened to whole words when `align`."""
        encoding, window = chunk["encoding"], chunk["window"]
        words = (encoding.token_to_word(window, first), encoding.token_to_word(window, last))
        if align and None not in words:
            start_chars = encoding.word_to_chars(window, words[0], context_index)
            end_chars = encoding.word_to_chars(window, words[1], context_index)
            if start_chars is not None and end_chars is not None:
                return start_chars.start, end_chars.end
        offsets = encoding.encodings[window].offsets
        return offsets[first][0], offsets[last][1]


def _probabilities(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Softmax of `logits (seq,)` with the tokens not `allowed` masked (float32)."""
    logits = torch.where(allowed.bool(), logits.float(), torch.tensor(MASKED))
    exp = (logits - logits.max()).exp()
    return exp / exp.sum()


def best_spans(
    start: torch.Tensor, end: torch.Tensor, top_k: int, max_answer_len: int, allowed: torch.Tensor
) -> list[tuple[int, int, float]]:
    """The `top_k` best (first token, last token, score) spans of at most `max_answer_len` tokens
    whose ends both lie on `allowed` tokens, best first.

    Beyond the best span, spans of probability 0 (underflow, or too long, or ending before they
    start) are left out: transformers takes arbitrary ones of them when fewer than `top_k` spans
    have any.
    """
    candidates = (start[:, None] * end[None, :]).triu().tril(max_answer_len - 1)  # (seq, seq)
    flat = candidates.flatten()
    order = [int(flat.argmax())] if top_k == 1 else flat.argsort(descending=True, stable=True)[:top_k].tolist()
    size = candidates.shape[1]
    spans = []
    for index in order:
        first, last = divmod(index, size)
        if allowed[first] and allowed[last] and (top_k == 1 or candidates[first, last] > 0):
            spans.append((first, last, candidates[first, last].item()))
    return spans


def _examples(args: tuple[Any, ...], question: Any, context: Any) -> list[dict[str, str]]:
    """The call's (question, context) examples, as transformers' QA argument handler reads them."""
    if args:
        if len(args) == 2 and all(isinstance(arg, str) for arg in args):
            items: Any = [{"question": args[0], "context": args[1]}]
        elif len(args) == 1:
            items = args[0] if isinstance(args[0], (list, tuple)) else [args[0]]
        else:
            items = list(args)
    elif question is not None and context is not None:
        questions = question if isinstance(question, list) else [question]
        contexts = context if isinstance(context, list) else [context] * len(questions)
        if len(questions) != len(contexts):
            raise InputError(f"question-answering: {len(questions)} questions but {len(contexts)} contexts")
        items = [{"question": q, "context": c} for q, c in zip(questions, contexts)]
    else:
        raise InputError("question-answering: pass question= and context= (or {'question', 'context'} dicts)")
    for item in items:
        if not isinstance(item, dict) or not {"question", "context"} <= set(item):
            raise InputError(f"question-answering: expected {{'question', 'context'}} dicts, found {item!r:.80}")
        for key in ("question", "context"):
            if not isinstance(item[key], str) or not item[key]:
                raise InputError(f"question-answering: {key} must be a non-empty text, found {item[key]!r:.60}")
    return [{"question": item["question"], "context": item["context"]} for item in items]
