"""Token classification (`token-classification`, alias `ner`) over any `…ForTokenClassification`,
with transformers' aggregation strategies and character spans of the input text.

- `none`: one entity per token (`entity`, `score`, `index`, `word`, `start`, `end`);
- `simple`: adjacent tokens with the same entity (B-/I- prefixes read as in IOB) grouped into
  `entity_group`s whose score is their tokens' mean;
- `first` / `average` / `max`: tokens of one word first agree on one entity (the first token's,
  the mean scores', the most confident token's), then words are grouped as in `simple`.

A token continues a word when the tokenizer marks subwords (WordPiece's "##": its text is
shorter than its span) or, for other tokenizers, when no space borders it (transformers'
heuristic). With `stride`, a long text is cut into overlapping windows whose entities are merged.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import InputError
from .base import Pipeline, check_unknown, softmax

STRATEGIES = ("none", "simple", "first", "average", "max")


class TokenClassificationPipeline(Pipeline):
    """`pipe(text_or_texts, aggregation_strategy="none", ignore_labels=["O"], stride=None,
    is_split_into_words=False, delimiter=" ")`: a list of entities per text."""

    task = "token-classification"

    def __call__(self, inputs: str | list[Any], **call: Any) -> Any:
        options, batch_size = self._options(call)
        if isinstance(inputs, str):
            return self.run([inputs], options, batch_size)[0]
        if not isinstance(inputs, (list, tuple)) or not inputs:
            raise InputError(f"token-classification: expected a text or a non-empty list, found {inputs!r:.60}")
        if options.get("is_split_into_words") and not all(isinstance(item, list) for item in inputs):
            inputs = [inputs]  # one pre-split sentence; transformers answers it as a batch of one
        return self.run(list(inputs), options, batch_size)

    def parameters(
        self,
        aggregation_strategy: str | None = None,
        ignore_labels: list[str] | None = None,
        stride: int | None = None,
        is_split_into_words: bool = False,
        delimiter: str | None = None,
        **unknown: Any,
    ) -> dict[str, Any]:
        check_unknown(self.task, unknown)
        strategy = "none" if aggregation_strategy is None else str(aggregation_strategy).lower()
        if strategy not in STRATEGIES:
            raise InputError(f"aggregation_strategy: expected one of {STRATEGIES}, found {aggregation_strategy!r}")
        if stride is not None:
            if stride >= self.tokenizer.model_max_length:
                raise InputError(f"stride: expected less than the tokenizer's model_max_length {self.tokenizer.model_max_length}, found {stride}")
            if strategy == "none":
                raise InputError("stride: windows are merged by entity, which aggregation_strategy='none' does not make; pick another")
        return {
            "strategy": strategy,
            "ignore": ["O"] if ignore_labels is None else list(ignore_labels),
            "stride": stride,
            "split": is_split_into_words,
            "delimiter": " " if delimiter is None else delimiter,
        }

    def preprocess(self, item: Any, params: dict[str, Any]) -> list[dict[str, Any]]:
        options: dict[str, Any] = {}
        if params["stride"] is not None:
            options = {"return_overflowing_tokens": True, "padding": True, "stride": params["stride"]}
        word_starts = None
        if params["split"]:
            if not isinstance(item, list) or not all(isinstance(word, str) for word in item):
                raise InputError(f"token-classification: is_split_into_words=True needs lists of words, found {item!r:.60}")
            # the words joined by the delimiter are the text the spans refer to
            sentence = params["delimiter"].join(item)
            word_starts, position = [], 0
            for word in item:
                word_starts.append(position)
                position += len(word) + len(params["delimiter"])
            options["is_split_into_words"] = True
        elif isinstance(item, str):
            sentence = item
        else:
            raise InputError(f"token-classification: expected a text, found {type(item).__name__}")
        encoded = self.tokenizer(
            item, return_tensors="pt", truncation=True, return_special_tokens_mask=True, return_offsets_mapping=True, **options
        )
        encoded.pop("overflow_to_sample_mapping", None)
        chunks = []
        for window in range(len(encoded["input_ids"])):
            offsets = encoded["offset_mapping"][window].tolist()
            if word_starts is not None:
                words = encoded.word_ids(window)
                offsets = [(s + word_starts[w], e + word_starts[w]) if w is not None else (s, e) for (s, e), w in zip(offsets, words)]
            tensors = {key: value[window : window + 1] for key, value in encoded.items() if key != "offset_mapping"}
            tensors["offset_mapping"] = torch.tensor([offsets], dtype=torch.long)
            chunks.append({"tensors": tensors, "sentence": sentence})
        return chunks

    def postprocess(self, chunks: list[dict[str, Any]], params: dict[str, Any]) -> list[dict[str, Any]]:
        entities = []
        for chunk in chunks:
            pre_entities = self._pre_entities(chunk, params["strategy"])
            grouped = self._aggregate(pre_entities, params["strategy"])
            entities += [e for e in grouped if e.get("entity", e.get("entity_group")) not in params["ignore"]]
        return merge_overlapping(entities) if len(chunks) > 1 else entities

    def _pre_entities(self, chunk: dict[str, Any], strategy: str) -> list[dict[str, Any]]:
        """Every non-special token with its scores, span and whether it continues a word."""
        sentence = chunk["sentence"]
        tensors = chunk["tensors"]
        scores = softmax(chunk["outputs"]["logits"][0])
        input_ids = tensors["input_ids"][0].tolist()
        subword_prefix = getattr(self.tokenizer.engine, "continuing_subword_prefix", None)
        unk_id = self.tokenizer.unk_token_id
        pre_entities = []
        for index, (token_id, special, (start, end)) in enumerate(
            zip(input_ids, tensors["special_tokens_mask"][0].tolist(), tensors["offset_mapping"][0].tolist())
        ):
            if special:
                continue
            word = self.tokenizer.convert_ids_to_tokens(token_id)
            text = sentence[start:end]
            if subword_prefix:
                is_subword = len(word) != len(text)
            else:
                is_subword = start > 0 and " " not in sentence[start - 1 : start + 1]
            if token_id == unk_id:
                word, is_subword = text, False
            pre_entities.append(
                {"word": word, "scores": scores[index], "start": start, "end": end, "index": index, "is_subword": is_subword}
            )
        return pre_entities

    def _aggregate(self, pre_entities: list[dict[str, Any]], strategy: str) -> list[dict[str, Any]]:
        id2label = self.model.config.id2label
        if strategy in ("none", "simple"):
            entities = []
            for pre in pre_entities:
                best = int(pre["scores"].argmax())
                entities.append({
                    "entity": id2label[best], "score": pre["scores"][best].item(), "index": pre["index"],
                    "word": pre["word"], "start": pre["start"], "end": pre["end"],
                })  # fmt: skip
            if strategy == "none":
                return entities
        else:
            entities = [self._word_entity(word, strategy) for word in _words(pre_entities)]
        return self._group(entities)

    def _word_entity(self, tokens: list[dict[str, Any]], strategy: str) -> dict[str, Any]:
        """One word's entity from its tokens' scores, by `strategy` (first, average or max)."""
        if strategy == "first":
            scores = tokens[0]["scores"]
        elif strategy == "max":
            scores = max(tokens, key=lambda token: token["scores"].max().item())["scores"]
        else:
            scores = torch.stack([token["scores"] for token in tokens]).mean(dim=0)
        best = int(scores.argmax())
        return {
            "entity": self.model.config.id2label[best],
            "score": scores[best].item(),
            "word": self.tokenizer.convert_tokens_to_string([token["word"] for token in tokens]),
            "start": tokens[0]["start"],
            "end": tokens[-1]["end"],
        }

    def _group(self, entities: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Adjacent entities of one tag (a "B-" starting a new one) as entity groups."""
        groups: list[list[dict[str, Any]]] = []
        for entity in entities:
            bi, tag = _tag(entity["entity"])
            if groups and bi != "B" and _tag(groups[-1][-1]["entity"])[1] == tag:
                groups[-1].append(entity)
            else:
                groups.append([entity])
        return [
            {
                "entity_group": group[0]["entity"].split("-", 1)[-1],
                "score": sum(entity["score"] for entity in group) / len(group),
                "word": self.tokenizer.convert_tokens_to_string([entity["word"] for entity in group]),
                "start": group[0]["start"],
                "end": group[-1]["end"],
            }
            for group in groups
        ]


def _words(pre_entities: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Tokens gathered into words: a token that continues a word joins the one before."""
    words: list[list[dict[str, Any]]] = []
    for pre in pre_entities:
        if words and pre["is_subword"]:
            words[-1].append(pre)
        else:
            words.append([pre])
    return words


def _tag(entity: str) -> tuple[str, str]:
    """("B" or "I", tag) of an IOB label; a label without prefix reads as inside."""
    if entity.startswith(("B-", "I-")):
        return entity[0], entity[2:]
    return "I", entity


def merge_overlapping(entities: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Entities of overlapping windows, keeping of two that overlap the longer (then the surer)."""
    if not entities:
        return entities
    entities = sorted(entities, key=lambda entity: entity["start"])
    merged = []
    previous = entities[0]
    for entity in entities:
        if previous["start"] <= entity["start"] < previous["end"]:
            length, previous_length = entity["end"] - entity["start"], previous["end"] - previous["start"]
            if length > previous_length or (length == previous_length and entity["score"] > previous["score"]):
                previous = entity
        else:
            merged.append(previous)
            previous = entity
    merged.append(previous)
    return merged
