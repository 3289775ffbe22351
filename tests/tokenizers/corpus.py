"""A deterministic corpus of varied strings for tokenizer comparisons (no randomness across runs)."""

from __future__ import annotations

import random

FRAGMENTS = [
    # English
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "It's a well-known fact: don't panic, we'll be fine!",
    "Mr. O'Neil paid $1,234.56 on 2024-03-23 at 10:45pm (approx.)",
    "UPPERCASE lowercase MiXeD CaSe",
    "a",
    "",
    "I",
    "supercalifragilisticexpialidocious",
    "e-mail: someone@example.com, url: https://example.org/path?q=1&r=2#frag",
    # code
    "def f(x):\n    return x ** 2  # square\n",
    "for (int i = 0; i < n; ++i) { sum += a[i]; }",
    "if __name__ == '__main__':\n\tmain()\n",
    "SELECT * FROM users WHERE id = 42;",
    '{"key": [1, 2.5, null, true], "nested": {"a": "b"}}',
    "<div class=\"x\">&nbsp;&lt;tag&gt;</div>",
    "x = lambda a, b: a if a > b else b",
    "```python\nprint('hi')\n```",
    # CJK and other scripts
    "中文分词测试，你好世界。",
    "日本語のテキスト、ひらがなとカタカナ。",
    "한국어 문장입니다.",
    "Привет, мир! Ёлка",
    "مرحبا بالعالم",
    "שלום עולם",
    "नमस्ते दुनिया",
    "தமிழ் மொழி",
    "ภาษาไทย",
    "Ελληνικά γράμματα",
    # emoji, with joiners and modifiers
    "😀",
    "👩‍👩‍👧‍👦 family",
    "🏳️‍🌈 flag",
    "👍🏽 thumbs",
    "❤️‍🔥 heart on fire",
    "🧑🏻‍💻 coder 🚀🚀",
    # accents, precomposed and combining
    "café naïve résumé",
    "cafe\u0301 nai\u0308ve",
    "Ångström Øresund Łódź",
    "Straße façade señor",
    # control characters and odd whitespace
    "tab\tseparated\tvalues",
    "line1\r\nline2\rline3",
    "bell\x07 escape\x1b[31mred\x1b[0m",
    "null\x00byte",
    "zero\u200bwidth\u200dspace",
    "non\u00a0breaking",
    "\u2028line\u2029para",
    # runs of spaces and newlines
    "   leading spaces",
    "trailing spaces   ",
    "many      spaces",
    "\n\n\nnewlines\n\n",
    " \t \n mixed \n\t ",
    "    ",
    "\n",
    # text that needs byte fallback
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕄𝕒𝕥𝕙",
    "ᚠᛇᚻ᛫ᛒᛦᚦ runes",
    "ꙮ Ꙭ archaic",
    "\ue000\uf8ff private use",
    "𓀀𓀁 hieroglyphs",
    "∮ E⋅da = Q, n → ∞, ∑ f(i) = ∏ g(i)",
    "♔♕♖♗♘♙ chess",
    "🀄🃏 tiles",
    # special-token look-alikes (ordinary text to mistral_common)
    "[INST] not a control token [/INST]",
    "<s> and </s> and <unk> as text",
    "<|endoftext|> <|im_start|>",
]

SEPARATORS = ["", " ", "  ", "\n", "\n\n", "\t", " - ", ". "]


def corpus(size: int = 240, seed: int = 0) -> list[str]:
    """The fragments, then random joins of 2–4 of them, `size` strings in all."""
    rng = random.Random(seed)
    texts = list(FRAGMENTS)
    while len(texts) < size:
        parts = rng.sample(FRAGMENTS, rng.randint(2, 4))
        texts.append("".join(part + rng.choice(SEPARATORS) for part in parts))
    return texts[:size]
