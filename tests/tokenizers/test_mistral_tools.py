"""Tools, tool calls and tool results in Mistral's instruct formats (v3, v7, tekken) against
mistral_common's `encode_chat_completion` on its real tokenizer files; and chat templates given
`tools=` against transformers' `apply_chat_template`."""

from __future__ import annotations

import json

import pytest

from lamina.errors import InputError, UnsupportedError

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city, in °C.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
CLOCK = {"type": "function", "function": {"name": "time_now", "parameters": {"type": "object", "properties": {}}}}


def call(call_id: str, name: str, arguments) -> dict:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


CONVERSATIONS = [
    # tools only
    [{"role": "user", "content": "Weather in Paris?"}],
    # a call with JSON arguments (text and dict), its result as JSON and as plain text
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris and the time?"},
        {"role": "assistant", "content": None, "tool_calls": [
            call("abcDEF123", "get_weather", '{"city": "Paris"}'), call("xyzXYZ789", "time_now", {})]},
        {"role": "tool", "tool_call_id": "abcDEF123", "name": "get_weather", "content": '{"temperature": 21, "sky": "clear"}'},
        {"role": "tool", "tool_call_id": "xyzXYZ789", "name": "time_now", "content": "10:45 — morning"},
    ],
    # history: an answered call before a later user turn, then a final answer
    [
        {"role": "user", "content": "Weather in Zürich?"},
        {"role": "assistant", "tool_calls": [call("q1w2e3r4t", "get_weather", '{"city": "Zürich"}')]},
        {"role": "tool", "tool_call_id": "q1w2e3r4t", "content": "[1, 2, 3]"},
        {"role": "assistant", "content": "It is mild.  "},
        {"role": "user", "content": "Thanks! 日本は?"},
    ],
]  # fmt: skip


def reference_ids(reference, conversation, tools):
    from mistral_common.protocol.instruct.request import ChatCompletionRequest

    request = ChatCompletionRequest(messages=conversation, tools=tools)
    return reference.encode_chat_completion(request).tokens


@pytest.mark.parametrize("version", ["v3", "v7", "tekken"])
@pytest.mark.parametrize("index", range(len(CONVERSATIONS)))
def test_tools_equal_mistral_common(version, index, lamina_mistral, reference_mistral):
    conversation = CONVERSATIONS[index]
    for tools in ([WEATHER, CLOCK], None):
        expected = reference_ids(reference_mistral[version], conversation, tools)
        assert lamina_mistral[version].encode_instruct(conversation, tools=tools) == expected, tools
    if "mistral_instruct_version" in lamina_mistral[version].extra_config:
        # a Mistral file that states its format and has no template encodes through apply_chat_template too
        ids = lamina_mistral[version].apply_chat_template(conversation, tools=[WEATHER], return_dict=False)
        assert ids == reference_ids(reference_mistral[version], conversation, [WEATHER])


def test_tool_errors(lamina_mistral):
    with pytest.raises(UnsupportedError, match="v1"):
        lamina_mistral["v1"].encode_instruct(CONVERSATIONS[0], tools=[WEATHER])
    with pytest.raises(InputError, match="tool_call_id"):
        lamina_mistral["v3"].encode_instruct([*CONVERSATIONS[0], {"role": "tool", "content": "x"}])
    with pytest.raises(InputError, match="tools\\[0\\]"):
        lamina_mistral["v3"].encode_instruct(CONVERSATIONS[0], tools=[{"name": "f"}])
    both = [CONVERSATIONS[0][0], {"role": "assistant", "content": "x", "tool_calls": [call("abcDEF123", "f", "{}")]}]
    with pytest.raises(InputError, match="both text and tool calls"):
        lamina_mistral["v3"].encode_instruct(both)


# a template in the style of Mistral's tool-use templates: tools before the last user turn, calls
# and results as JSON
TOOL_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}"
    "{% if tools is not none and loop.last %}[AVAILABLE_TOOLS] {{ tools | tojson }}[/AVAILABLE_TOOLS]{% endif %}"
    "[INST] {{ message['content'] }}[/INST]"
    "{% elif message['role'] == 'assistant' and message['tool_calls'] is defined %}"
    "[TOOL_CALLS] [{% for c in message['tool_calls'] %}{\"name\": \"{{ c['function']['name'] }}\", "
    "\"arguments\": {{ c['function']['arguments'] | tojson }}, \"id\": \"{{ c['id'] }}\"}"
    "{% if not loop.last %}, {% endif %}{% endfor %}]{{ eos_token }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] }}{{ eos_token }}"
    "{% elif message['role'] == 'tool' %}[TOOL_RESULTS] {\"content\": {{ message['content'] | tojson }}, "
    "\"call_id\": \"{{ message['tool_call_id'] }}\"}[/TOOL_RESULTS]"
    "{% endif %}{% endfor %}"
)


def test_chat_template_tools_equal_transformers(lamina_mistral, mistral_dirs):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("google.protobuf")
    theirs = transformers.LlamaTokenizerFast.from_pretrained(str(mistral_dirs["v3"]))
    ours = lamina_mistral["v3"]
    for conversation in (CONVERSATIONS[0], CONVERSATIONS[1][1:]):
        for tools in ([WEATHER, CLOCK], None):
            options = dict(tools=tools, chat_template=TOOL_TEMPLATE)
            text = ours.apply_chat_template(conversation, tokenize=False, **options)
            assert text == theirs.apply_chat_template(conversation, tokenize=False, **options)
            if conversation[-1]["role"] == "user":
                assert (tools is not None) == ("[AVAILABLE_TOOLS]" in text)
            ids = ours.apply_chat_template(conversation, return_dict=False, **options)
            assert ids == theirs.apply_chat_template(conversation, return_dict=False, **options)
    assert json.dumps(WEATHER["function"]["name"]) in ours.apply_chat_template(
        CONVERSATIONS[0], tokenize=False, tools=[WEATHER], chat_template=TOOL_TEMPLATE
    )


def test_tool_use_template_is_chosen_with_tools(lamina_mistral):
    tokenizer = lamina_mistral["v3"]
    saved = tokenizer.chat_template
    tokenizer.chat_template = {"default": "{{ 'plain' }}", "tool_use": "{{ tools | length }} tools"}
    try:
        assert tokenizer.apply_chat_template(CONVERSATIONS[0], tokenize=False) == "plain"
        assert tokenizer.apply_chat_template(CONVERSATIONS[0], tokenize=False, tools=[WEATHER, CLOCK]) == "2 tools"
    finally:
        tokenizer.chat_template = saved
