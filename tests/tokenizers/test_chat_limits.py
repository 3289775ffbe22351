"""Chat templates are untrusted code: every memory or time bomb is a SecurityError naming the
template's file, raised before the process allocates more than a little; the limits can be
raised or lowered per call."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import lamina
from lamina.errors import InputError, SecurityError

BOMBS = {
    "huge range": "{% for i in range(10**12) %}{% endfor %}",
    "string times a huge number": "{{ 'a' * 10**10 }}",
    "list times a huge number": "{{ ['a'] * 10**10 }}",
    "list of a range repeated": "{{ (range(100000)|list) * 1000 }}",
    "join of a repeated range": "{{ (range(100000)|list * 100)|join(',') }}",
    "str.join of huge pieces": "{% set s = 'a' * 3000000 %}{{ ','.join([s, s, s]) }}",
    "doubling with ~": "{% set ns = namespace(s='a') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}"
                       "{% endfor %}",
    "doubling with +": "{% set ns = namespace(s='a') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}"
                       "{% endfor %}",
    "doubling nested lists": "{% set ns = namespace(s=['a']) %}{% for i in range(64) %}{% set ns.s = [ns.s, ns.s] %}"
                             "{% endfor %}{{ ns.s }}",
    "repeated replace": "{% set ns = namespace(s='ab') %}{% for i in range(64) %}"
                        "{% set ns.s = ns.s|replace('a', 'aaaaaaaaaa') %}{% endfor %}",
    "center filter": "{{ 'a'|center(10**10) }}",
    "str.ljust": "{{ 'a'.ljust(10**10) }}",
    "percent width": "{{ '%10000000000s' % 'a' }}",
    "percent star width": "{{ '%*s' % (10**10, 'a') }}",
    "format width": "{{ '{:>10000000000}'.format('a') }}",
    "format nested width": "{{ '{:>{w}}'.format('a', w=10**10) }}",
    "format filter": "{{ '%s%s'|format('a' * 3000000, 'b' * 3000000) }}",
    "integer power": "{{ 2 ** 10000000000 }}",
    "indent of many lines": "{{ ('x\n' * 1000000)|indent(10) }}",
    "tojson indent": "{{ messages|tojson(indent=10**9) }}",
    "expandtabs": "{{ ('\t' * 1000000).expandtabs(100) }}",
    "wordwrap width": "{{ 'a b'|wordwrap(10**10) }}",
    "batch fill": "{{ [1, 2]|batch(10**9, 'x')|list }}",
    "unbounded macro recursion": "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    "exponential macro recursion": "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% else %}aaaaaaaa"
                                   "{% endif %}{% endmacro %}{{ f(40) }}",
    "nested empty loops": "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
    "loops over a string": "{% set s = 'a' * 100000 %}{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}",
    "buffered block": "{% set x %}{% for i in range(100000) %}{{ 'a' * 1000 }}{% endfor %}{% endset %}",
    "long output": "{% for i in range(100000) %}{{ 'a' * 1000 }}{% endfor %}",
    "float overflow": "{{ 1.5 ** 100000 }}",
}
MAX_CHARS, TIMEOUT, HEADROOM = 4_000_000, 1.0, 768 << 20

# a child process: a hard address-space limit (its size now plus HEADROOM), then every bomb;
# prints each outcome as one JSON line
CHILD = textwrap.dedent(f"""
    import json, resource, sys, time
    from lamina.errors import LaminaError
    from lamina.tokenizers.chat import render_chat

    render_chat("{{{{ 'warm' }}}}", "warm-up")
    with open("/proc/self/statm") as statm:
        size = int(statm.read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (size + {HEADROOM}, size + {HEADROOM}))
    for name, source in json.loads(sys.stdin.read()).items():
        start = time.monotonic()
        try:
            render_chat(source, "bomb.jinja", {MAX_CHARS}, {TIMEOUT}, messages=[{{"role": "user", "content": "hi"}}])
            outcome = "rendered"
        except LaminaError as err:
            outcome = type(err).__name__ + ": " + str(err)
        except BaseException as err:
            outcome = "foreign " + type(err).__name__ + ": " + str(err)
        print(json.dumps([name, outcome, time.monotonic() - start]), flush=True)
""")


@pytest.fixture(scope="module")
def bomb_outcomes() -> dict[str, tuple[str, float]]:
    done = subprocess.run([sys.executable, "-c", CHILD], input=json.dumps(BOMBS), capture_output=True, text=True,
                          timeout=300, cwd=Path(__file__).parents[2])  # fmt: skip
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("[")]
    assert done.returncode == 0, done.stderr[-2000:]
    return {name: (outcome, seconds) for name, outcome, seconds in lines}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BOMBS))
def test_template_bombs_are_refused_within_a_memory_limit(bomb_outcomes, name):
    outcome, seconds = bomb_outcomes[name]
    assert outcome.startswith("SecurityError: bomb.jinja: refused"), outcome
    assert seconds < TIMEOUT + 2.5, f"{name} took {seconds:.1f} s"


TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"


def test_the_limits_are_arguments(lamina_mistral):
    tok = lamina_mistral["v3"]
    chat = [{"role": "user", "content": "x" * 2000}]
    assert len(tok.apply_chat_template(chat, chat_template=TEMPLATE, tokenize=False)) == 2000
    with pytest.raises(SecurityError, match=r"the chat_template argument: refused: .*1,000 characters"):
        tok.apply_chat_template(chat, chat_template=TEMPLATE, tokenize=False, max_rendered_chars=1000)
    slow = "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}"
    with pytest.raises(SecurityError, match=r"ran longer than 0.2 s \(render_timeout\)"):
        tok.apply_chat_template(chat, chat_template=slow, tokenize=False, render_timeout=0.2)


@pytest.mark.parametrize("where", ["chat_template.jinja", "tokenizer_config.json"])
def test_a_refusal_names_the_template_file(tmp_path, where):
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab))
    bomb = "{{ 'a' * 10**10 }}"
    if where == "chat_template.jinja":
        (tmp_path / where).write_text(bomb)
    else:
        (tmp_path / where).write_text(json.dumps({"chat_template": bomb}))
    tok = lamina.AutoTokenizer.from_pretrained(tmp_path)
    with pytest.raises(SecurityError, match=rf"chat template of .*{where}: refused: a '\*' repetition"):
        tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)


@pytest.mark.parametrize("source", ["{{ 1 / 0 }}", "{{ 'a' + 1 }}", "{{ messages[5]['x'] }}"])
def test_template_mistakes_are_input_errors(lamina_mistral, source):
    with pytest.raises(InputError, match="the chat_template argument"):
        lamina_mistral["v3"].apply_chat_template([{"role": "user", "content": "hi"}], chat_template=source,
                                                 tokenize=False)  # fmt: skip


def test_everyday_template_features_still_render(lamina_mistral):
    source = ("{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}"
              "{{ '%s:%d|' % (m['role'], ns.n) }}{{ '{:>6}'.format(m['content']) }}{{ m['content'] * 2 }}"
              "{{ (m['content'] ~ '\n')|indent(2, first=True) }}{{ [m['role'], 'x']|join('/') }}{% endfor %}"
              "{{ tools|tojson(indent=2) }}")  # fmt: skip
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    tools = [{"name": "f", "parameters": {}}]
    reference = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    reference.filters["tojson"] = lambda value, indent=None: json.dumps(value, indent=indent)
    expected = reference.from_string(source).render(messages=chat, tools=tools)
    assert lamina_mistral["v3"].apply_chat_template(chat, chat_template=source, tools=tools, tokenize=False) == expected
