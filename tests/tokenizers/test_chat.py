"""Chat templates: rendered like transformers (a Mistral instruct template on the real v3 and
tekken files), and sandboxed: templates that reach for Python internals raise SecurityError."""

from __future__ import annotations

from datetime import datetime

import pytest

from lamina.errors import InputError, SecurityError, TokenizerError

transformers = pytest.importorskip("transformers")

# the chat template of Mistral-7B-Instruct (v0.1 / v0.2): alternating turns, [INST] around user text
MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)
# the v3 layout without spaces around the control tokens, as tekken models use it
TEKKEN_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ '[INST]' + message['content'] + '[/INST]' }}{% else %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}"
)

CHAT = [
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Japan? 日本"},
]


@pytest.fixture(scope="module")
def transformers_v3(mistral_dirs):
    pytest.importorskip("google.protobuf")
    tok = transformers.LlamaTokenizerFast.from_pretrained(str(mistral_dirs["v3"]))
    tok.chat_template = MISTRAL_TEMPLATE
    return tok


def test_mistral_template_equals_transformers(lamina_mistral, transformers_v3):
    ours = lamina_mistral["v3"]
    text = ours.apply_chat_template(CHAT, chat_template=MISTRAL_TEMPLATE, tokenize=False)
    assert text == transformers_v3.apply_chat_template(CHAT, tokenize=False)
    assert text == "<s>[INST] What is the capital of France? [/INST]Paris.</s>[INST] And of Japan? 日本 [/INST]"
    ids = ours.apply_chat_template(CHAT, chat_template=MISTRAL_TEMPLATE, return_dict=False)
    assert ids == transformers_v3.apply_chat_template(CHAT, return_dict=False)
    encoding = ours.apply_chat_template(CHAT, chat_template=MISTRAL_TEMPLATE, return_tensors="pt")
    assert encoding.input_ids.tolist() == [ids]
    with pytest.raises(InputError, match="must alternate"):
        ours.apply_chat_template(CHAT[:1] * 2, chat_template=MISTRAL_TEMPLATE)


def test_templates_tokenize_to_mistral_common_instruct_ids(lamina_mistral):
    # text after a control token takes no dummy prefix, so writing the space sentencepiece would
    # add ("[INST] text[/INST] answer</s>") gives what mistral_common builds message by message
    v3_template = MISTRAL_TEMPLATE.replace("' [/INST]'", "'[/INST]'").replace(
        "{{ message['content'] + eos_token }}", "{{ ' ' + message['content'] + eos_token }}"
    )
    for version, template in (("v3", v3_template), ("tekken", TEKKEN_TEMPLATE)):
        tok = lamina_mistral[version]
        ids = tok.apply_chat_template(CHAT, chat_template=template, return_dict=False)
        assert ids == tok.encode_instruct(CHAT), version


def test_generation_prompt_continue_and_batches(lamina_mistral, transformers_v3):
    ours = lamina_mistral["v3"]
    template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
    transformers_v3.chat_template = template
    try:
        for kwargs in ({"add_generation_prompt": True}, {"continue_final_message": True}, {}):
            assert ours.apply_chat_template(CHAT, chat_template=template, tokenize=False, **kwargs) == (
                transformers_v3.apply_chat_template(CHAT, tokenize=False, **kwargs)
            )
        batch = [CHAT, CHAT[:1]]
        assert ours.apply_chat_template(batch, chat_template=template, tokenize=False) == (
            transformers_v3.apply_chat_template(batch, tokenize=False)
        )
    finally:
        transformers_v3.chat_template = MISTRAL_TEMPLATE


def test_template_helpers(lamina_mistral):
    tok = lamina_mistral["v3"]
    render = lambda template, **kw: tok.apply_chat_template(CHAT, chat_template=template, tokenize=False, **kw)  # noqa: E731
    assert render("{{ strftime_now('%Y') }}") == str(datetime.now().year)
    assert render("{{ {'a': 'é<&>'} | tojson }}") == '{"a": "é<&>"}'
    assert render("{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{% endfor %}{{ ns.n }}") == "3"
    assert render("{{ greeting }} {{ eos_token }}", greeting="hi") == "hi </s>"
    assert render("{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}{{ m.role }}{% endfor %}") == "user"
    named = tok.__class__.__new__(tok.__class__)
    named.__dict__.update(tok.__dict__)
    named.chat_template = {"default": "D", "tool_use": "T"}
    assert named.apply_chat_template(CHAT, tokenize=False) == "D"
    assert named.apply_chat_template(CHAT, tokenize=False, tools=[{"name": "f"}]) == "T"
    assert named.apply_chat_template(CHAT, tokenize=False, chat_template="tool_use") == "T"


ESCAPES = [
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ messages.__class__ }}",
    "{{ raise_exception.__globals__ }}",
    "{{ cycler.__init__.__globals__.os }}",
    "{{ namespace.__init__ }}",
    "{% set ns = namespace(__class__=1) %}",
    "{% set x = messages.append({'role': 'user'}) %}",
    "{{ messages[0].update({'content': 'x'}) }}",
    "{% if ''.__class__ %}yes{% endif %}",
]


@pytest.mark.parametrize("template", ESCAPES)
def test_sandbox_escapes_raise_security_error(lamina_mistral, template):
    tok = lamina_mistral["v3"]
    with pytest.raises(SecurityError):
        tok.apply_chat_template(CHAT, chat_template=template, tokenize=False)


def test_missing_or_broken_templates(lamina_mistral):
    tok = lamina_mistral["v3"]
    with pytest.raises(TokenizerError, match="no chat template"):
        tok.apply_chat_template(CHAT)
    with pytest.raises(TokenizerError, match="syntax error"):
        tok.apply_chat_template(CHAT, chat_template="{% for %}")
    with pytest.raises(InputError, match="empty"):
        tok.apply_chat_template([], chat_template="x")


def test_mistral_files_without_template_use_the_instruct_format(lamina_mistral, reference_mistral):
    from mistral_common.protocol.instruct.messages import AssistantMessage, UserMessage
    from mistral_common.protocol.instruct.request import ChatCompletionRequest

    tok = lamina_mistral["tekken"]
    assert tok.chat_template is None
    request = ChatCompletionRequest(
        messages=[UserMessage(content=CHAT[0]["content"]), AssistantMessage(content="Paris."), UserMessage(content=CHAT[2]["content"])]
    )
    expected = reference_mistral["tekken"].encode_chat_completion(request)
    assert tok.apply_chat_template(CHAT, return_dict=False) == expected.tokens
    assert tok.apply_chat_template(CHAT, tokenize=False) == tok.decode(expected.tokens)
    tok.pad_token = "<pad>"
    batch = tok.apply_chat_template([CHAT, CHAT[:1]], padding=True, return_tensors="pt")
    assert batch.input_ids.shape == (2, len(expected.tokens)) and batch.attention_mask[1, 0] == 0  # left padding
