"""Constraints, stopping criteria, beam search and assisted decoding against transformers' `generate`
on a tiny random Mistral (sliding window shorter than the run) with a left-padded batch."""

from __future__ import annotations

import time

import pytest
import torch

import lamina
from lamina.errors import InputError, UnsupportedError
from lamina.generation.step import decode_steps
from lamina.generation.stopping import StoppingCriteria

transformers = pytest.importorskip("transformers")

TINY = dict(
    vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
    num_key_value_heads=2, head_dim=8, max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    sliding_window=6,
)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    torch.manual_seed(0)
    reference = transformers.MistralForCausalLM(transformers.MistralConfig(**TINY)).eval()
    path = tmp_path_factory.mktemp("mistral")
    reference.save_pretrained(path)
    return reference, lamina.AutoModelForCausalLM.from_pretrained(path)


@pytest.fixture(scope="module")
def batch():
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(3, TINY["vocab_size"], (3, 9), generator=generator)
    mask = torch.ones_like(ids)
    for row, padding in enumerate((4, 2, 0)):
        ids[row, :padding] = 0
        mask[row, :padding] = 0
    return ids, mask


def _both(pair, ids, mask, **kwargs):
    reference, ours = pair
    settings = dict(input_ids=ids, attention_mask=mask, max_new_tokens=10, do_sample=False, pad_token_id=0, **kwargs)
    return reference.generate(**settings), ours.generate(**settings)


def _stacked(steps):
    return torch.stack(tuple(steps))


@pytest.mark.parametrize("constraint", [
    dict(no_repeat_ngram_size=2),
    dict(no_repeat_ngram_size=1),
    dict(bad_words_ids=[[5], [7, 8], [2]], eos_token_id=2),
    dict(sequence_bias={(5,): 3.0, (7, 8): -2.0, (10, 11, 12): 5.0}),
    dict(sequence_bias=[[[40], 4.0], [[41, 42], 9.0]]),
    dict(suppress_tokens=[3, 4, 5], begin_suppress_tokens=[6, 7]),
], ids=["ngram2", "ngram1", "bad_words", "bias_dict", "bias_list", "suppress"])
@pytest.mark.parametrize("step", ["native", "eager"])
def test_constraints_equal_reference_with_scores(pair, batch, constraint, step):
    _, ours = pair
    ours.native_decode = step == "native"
    try:
        expected, found = _both(pair, *batch, return_dict_in_generate=True, output_scores=True, output_logits=True,
                                **constraint)
    finally:
        ours.native_decode = True
    assert torch.equal(found.sequences, expected.sequences)
    torch.testing.assert_close(_stacked(found.scores), _stacked(expected.scores), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(_stacked(found.logits), _stacked(expected.logits), rtol=1e-4, atol=1e-4)


class _StopAfter(StoppingCriteria):
    """Ends a row once it holds `token` anywhere after the prompt."""

    def __init__(self, token, prompt_length):
        self.token, self.prompt_length = token, prompt_length

    def __call__(self, input_ids, scores, **kwargs):
        return (input_ids[:, self.prompt_length:] == self.token).any(dim=1)


@pytest.mark.parametrize("eos", [None, 2])
def test_stopping_criteria_end_rows_as_in_transformers(pair, batch, eos):
    """Rows a criterion ends are padded only when there are end tokens (transformers' rule)."""
    ids, mask = batch
    reference, ours = pair
    free = ours.generate(ids, attention_mask=mask, max_new_tokens=10, eos_token_id=None)
    token = int(free[0, ids.shape[1] + 2])  # a token the first row makes on its third step

    class Theirs(transformers.StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return _StopAfter(token, ids.shape[1])(input_ids, scores)

    settings = dict(attention_mask=mask, max_new_tokens=10, eos_token_id=eos, pad_token_id=0)
    expected = reference.generate(ids, stopping_criteria=transformers.StoppingCriteriaList([Theirs()]), **settings)
    found = ours.generate(ids, stopping_criteria=[_StopAfter(token, ids.shape[1])], **settings)
    assert torch.equal(found, expected)
    assert found.shape[1] > ids.shape[1] + 3
    assert (found[0, ids.shape[1] + 3:] == 0).all() == (eos is not None)


def test_max_time_stops_every_row(pair, batch):
    _, ours = pair

    class Slow(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            time.sleep(0.05)
            return torch.zeros(input_ids.shape[0], dtype=torch.bool)

    out = ours.generate(batch[0], attention_mask=batch[1], max_new_tokens=50, eos_token_id=None, max_time=0.12,
                        stopping_criteria=[Slow()])
    assert batch[0].shape[1] + 1 <= out.shape[1] <= batch[0].shape[1] + 4


def test_stop_strings_with_the_tokenizer(tmp_path):
    """A GPT-2 byte-level tokenizer over a tiny GPT-2: the stop string may end inside a token and
    begin in an earlier one."""
    tokenizers = pytest.importorskip("tokenizers")
    words = ["Ġthe", "Ġcat", "Ġsat", "Ġon", "Ġmat", "Ġstop", "ping", "Ġend", "."]
    alphabet = sorted({c for w in words for c in w})
    vocab = {"<|endoftext|>": 0, **{c: i + 1 for i, c in enumerate(alphabet)}}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tok = tokenizers.Tokenizer(tokenizers.models.BPE(vocab, [], fuse_unk=False))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    tok.save(str(tmp_path / "tokenizer.json"))
    torch.manual_seed(3)
    reference = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=len(vocab), n_embd=32, n_layer=2, n_head=4, n_positions=64, eos_token_id=0, bos_token_id=0)).eval()
    reference.save_pretrained(tmp_path)
    theirs_tok = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"), eos_token="<|endoftext|>")
    theirs_tok.save_pretrained(tmp_path)
    ours_tok = lamina.AutoTokenizer.from_pretrained(tmp_path)
    ours = lamina.AutoModelForCausalLM.from_pretrained(tmp_path)
    prompt = torch.tensor([[vocab["Ġthe"], vocab["Ġcat"]]])
    free = ours.generate(prompt, max_new_tokens=12, eos_token_id=None, pad_token_id=0)[0].tolist()
    text = ours_tok.decode(free[2:])
    found_any = False
    for stop in {text[1:3], text[-4:-1], text[len(text) // 2:len(text) // 2 + 3]}:
        settings = dict(max_new_tokens=12, eos_token_id=None, pad_token_id=0, stop_strings=stop)
        expected = reference.generate(prompt, tokenizer=theirs_tok, **settings)
        found = ours.generate(prompt, tokenizer=ours_tok, **settings)
        assert torch.equal(found, expected), stop
        found_any |= found.shape[1] < 14
    assert found_any
    with pytest.raises(InputError, match="tokenizer"):
        ours.generate(prompt, max_new_tokens=3, stop_strings="x")


@pytest.mark.parametrize("settings", [
    dict(num_beams=3, eos_token_id=None),
    dict(num_beams=3, eos_token_id=2),
    dict(num_beams=4, num_return_sequences=2, eos_token_id=[2, 5], length_penalty=0.5, early_stopping=True),
    dict(num_beams=4, num_return_sequences=3, eos_token_id=[2, 5, 9, 11], length_penalty=2.0, early_stopping="never"),
    dict(num_beams=4, eos_token_id=[2, 5, 9, 11], early_stopping=False, length_penalty=-1.0),
    dict(num_beams=3, eos_token_id=[2, 5, 9], no_repeat_ngram_size=2, repetition_penalty=1.3),
], ids=["plain", "eos", "early_true", "never", "false_negative_penalty", "with_processors"])
def test_beam_search_equals_reference(pair, batch, settings):
    expected, found = _both(pair, *batch, return_dict_in_generate=True, output_scores=True, output_logits=True,
                            **settings)
    assert type(found).__name__ == type(expected).__name__ == "GenerateBeamDecoderOnlyOutput"
    assert torch.equal(found.sequences, expected.sequences)
    torch.testing.assert_close(found.sequences_scores, expected.sequences_scores, rtol=1e-5, atol=1e-5)
    assert torch.equal(found.beam_indices, expected.beam_indices.long())
    torch.testing.assert_close(_stacked(found.scores), _stacked(expected.scores), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(_stacked(found.logits), _stacked(expected.logits), rtol=1e-4, atol=1e-4)
    plain_expected, plain_found = _both(pair, *batch, **settings)
    assert torch.equal(plain_found, plain_expected)


@pytest.mark.parametrize("warpers", [dict(top_k=20), dict(top_p=0.9, temperature=0.7)])
def test_beam_sampling_draws_what_transformers_draws(pair, batch, warpers):
    reference, ours = pair
    settings = dict(input_ids=batch[0], attention_mask=batch[1], max_new_tokens=8, do_sample=True, num_beams=3,
                    num_return_sequences=2, eos_token_id=2, pad_token_id=0, **warpers)
    torch.manual_seed(9)
    expected = reference.generate(**settings)
    torch.manual_seed(9)
    assert torch.equal(ours.generate(**settings), expected)
    seeded = [ours.generate(**settings, generator=torch.Generator().manual_seed(seed)) for seed in (1, 1, 2)]
    assert torch.equal(seeded[0], seeded[1]) and not torch.equal(seeded[0], seeded[2])


def test_beam_search_refuses_what_it_cannot_do(pair, batch):
    _, ours = pair
    with pytest.raises(lamina.errors.ConfigError, match="num_return_sequences"):
        ours.generate(batch[0], num_beams=2, num_return_sequences=3)
    with pytest.raises(UnsupportedError, match="streamer"):
        ours.generate(batch[0], num_beams=2, streamer=object())


@pytest.fixture(scope="module")
def draft(tmp_path_factory):
    """A smaller model of the same vocabulary: its proposals are often wrong, which the test needs."""
    torch.manual_seed(5)
    config = transformers.MistralConfig(**{**TINY, "num_hidden_layers": 1})
    path = tmp_path_factory.mktemp("draft")
    transformers.MistralForCausalLM(config).save_pretrained(path)
    return lamina.AutoModelForCausalLM.from_pretrained(path)


@pytest.mark.parametrize("schedule", ["constant", "heuristic"])
@pytest.mark.parametrize("helper", ["draft", "itself"])
def test_assisted_decoding_gives_the_greedy_tokens(pair, draft, batch, schedule, helper):
    _, ours = pair
    assistant = draft if helper == "draft" else ours
    ids, mask = batch
    prompt = ids[2:]
    settings = dict(max_new_tokens=24, eos_token_id=None, return_dict_in_generate=True, output_scores=True,
                    repetition_penalty=1.2)
    greedy = ours.generate(prompt, **settings)
    assisted = ours.generate(prompt, assistant_model=assistant, num_assistant_tokens=5,
                             num_assistant_tokens_schedule=schedule, **settings)
    assert torch.equal(assisted.sequences, greedy.sequences)
    torch.testing.assert_close(_stacked(assisted.scores), _stacked(greedy.scores), rtol=1e-4, atol=1e-4)


def test_assisted_decoding_stops_at_the_end_token(pair, draft, batch):
    _, ours = pair
    prompt = batch[0][2:]
    free = ours.generate(prompt, max_new_tokens=12, eos_token_id=None)
    eos = int(free[0, prompt.shape[1] + 4])
    expected = ours.generate(prompt, max_new_tokens=12, eos_token_id=eos)
    found = ours.generate(prompt, max_new_tokens=12, eos_token_id=eos, assistant_model=draft)
    assert torch.equal(found, expected) and found.shape[1] <= prompt.shape[1] + 5


@pytest.mark.slow
def test_constraints_and_criteria_on_the_compiled_step(pair, batch):
    """The processors and criteria run outside the step, so the compiled step gives the same tokens."""
    reference, ours = pair
    settings = dict(no_repeat_ngram_size=2, sequence_bias={(5,): 3.0}, suppress_tokens=[3, 4])
    ours.native_decode = False
    try:
        common = dict(input_ids=batch[0], attention_mask=batch[1], max_new_tokens=10, do_sample=False, pad_token_id=0)
        expected = reference.generate(**common, **settings)
        found = ours.generate(**common, compile_config={}, **settings)
        kind = decode_steps(ours).last_kind
        token = int(found[0, batch[0].shape[1] + 2])
        criteria = [_StopAfter(token, batch[0].shape[1])]
        stopped = ours.generate(batch[0], attention_mask=batch[1], compile_config={}, max_new_tokens=10,
                                eos_token_id=2, pad_token_id=0, stopping_criteria=criteria, **settings)
        eager = ours.generate(batch[0], attention_mask=batch[1], disable_compile=True, max_new_tokens=10,
                              eos_token_id=2, pad_token_id=0, stopping_criteria=criteria, **settings)
    finally:
        ours.native_decode = True
    assert kind == "compiled" and not decode_steps(ours).compile_failed
    assert torch.equal(found, expected)
    assert torch.equal(stopped, eager)
