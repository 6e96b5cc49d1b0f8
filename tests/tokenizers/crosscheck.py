"""Cross-checks `harness tokenize` against the reference tokenizer libraries from PyPI, exactly.

usage: .venv/bin/python tests/tokenizers/crosscheck.py HARNESS_BIN BUILD_DIR
       (ctest -L tokenizer runs it so, with HARNESS_PYTHON)

Meta's vocabularies are licensed data and npm is out of reach, so the test trains its own, from an
offline, deterministic corpus (Python's standard library sources and docs, the project's
experiments/data/*.json, generated multilingual text), with the reference libraries:
  - LLaMA 2 style: a SentencePiece BPE model (byte fallback, dummy prefix, U+2581 for spaces,
    split digits, unk/bos/eos = 0/1/2, identity normaliser) trained by `sentencepiece`; the
    reference is sentencepiece's own encode/decode, as Meta's llama/tokenizer.py calls them.
  - LLaMA 3 style: a byte-level BPE trained by `tokenizers` over Meta's pre-tokenisation pattern,
    written in tiktoken's text format (base64 of the token's bytes, a space, the rank: the format
    of Meta's tokenizer.model); the reference is `tiktoken` with Meta's pattern and 256 special
    tokens after the ranks, and Meta's splitting of long runs (llama3/tokenizer.py).
The models are cached in BUILD_DIR/tokenizers, keyed by the corpus, the recipe and the library
versions, so reruns do not train again.

Checked, with zero mismatches allowed: the ids of >= 2,000 strings (scripts, emoji and ZWJ
sequences, whitespace runs with U+0085/U+FEFF/U+00A0, digits, code, special-token names, the
Alpaca prompts, the empty string, runs over 25,000 characters, code points of every class), plain,
--allow-special and --bos/--eos; the text of every token alone; decoding (round trips, every id).
Where HARNESS_LLAMA3_TOKENIZER / HARNESS_LLAMA2_TOKENIZER name Meta's files, the same checks and
the example ids of PLATFORM_NOTES run on them as well. CROSSCHECK_ALL_CODE_POINTS=1 adds every
code point (slower).
"""

import base64
import hashlib
import json
import os
import random
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

try:
    import sentencepiece as spm
    import tiktoken
    import tokenizers
    from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
except ImportError as e:
    sys.exit(f"crosscheck: {e}: the Python running this ({sys.executable}) needs tiktoken, "
             "sentencepiece and tokenizers (the project venv: pip install -r requirements.txt)")

HERE = Path(__file__).resolve().parent
SOURCE_DIR = HERE.parent.parent

# Bump when the training code changes, so cached models are retrained (the corpus is hashed).
RECIPE = "1"
SP_VOCAB = 8000
BPE_RANKS = 32000  # byte-level BPE: 256 bytes + merges

# ------------------------------------------------------------------------------------------------
# LLaMA 3 as Meta's llama3/tokenizer.py defines it.

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                  r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def llama3_special_tokens():
    names = [
        "<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
        "<|reserved_special_token_1|>", "<|reserved_special_token_2|>",
        "<|reserved_special_token_3|>", "<|start_header_id|>", "<|end_header_id|>",
        "<|reserved_special_token_4|>", "<|eot_id|>"
    ]
    names += [f"<|reserved_special_token_{i}|>" for i in range(5, 256 - 5)]
    return names


def split_like_meta(s, max_chunk=400_000, max_run=25_000):
    """tokenizer.py: chunks of 400,000 characters, each cut so that no part has more than 25,000
    consecutive whitespace or non-whitespace characters (_split_whitespaces_or_nonwhitespaces)."""
    out = []
    for c in range(0, len(s), max_chunk):
        chunk = s[c:c + max_chunk]
        run, start = 0, 0
        is_space = chunk[0].isspace() if chunk else False
        for i, ch in enumerate(chunk):
            now = ch.isspace()
            if now != is_space:
                run, is_space = 1, now
            else:
                run += 1
                if run > max_run:
                    out.append(chunk[start:i])
                    start, run = i, 1
        out.append(chunk[start:])
    return out or [""]


class Llama3Reference:
    """tiktoken over a rank table, as Meta's Tokenizer builds it: specials at n_ranks + i."""

    def __init__(self, ranks):
        self.ranks = ranks
        self.specials = {name: len(ranks) + i for i, name in enumerate(llama3_special_tokens())}
        self.enc = tiktoken.Encoding("crosscheck-llama3", pat_str=LLAMA3_PATTERN,
                                     mergeable_ranks=ranks, special_tokens=self.specials)
        self.bos, self.eos = self.specials["<|begin_of_text|>"], self.specials["<|end_of_text|>"]

    def encode(self, s, allow_special=False):
        # tokenizer.py's defaults: special-token names are text (allowed_special=set(),
        # disallowed_special=()); with allowed_special="all" they are tokens.
        allowed = "all" if allow_special else set()
        return [t for part in split_like_meta(s)
                for t in self.enc.encode(part, allowed_special=allowed, disallowed_special=())]

    def token_bytes(self, i):
        return self.enc.decode_single_token_bytes(i)


def read_tiktoken_file(path):
    """tiktoken's load_tiktoken_bpe, without its cache and download machinery."""
    ranks = {}
    for line in Path(path).read_bytes().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


# ------------------------------------------------------------------------------------------------
# Test strings: deterministic (seeded), varied. Ported from the former crosscheck.mjs, plus more.


def alpaca_no_input(instruction):
    return ("Below is an instruction that describes a task. Write a response that appropriately "
            f"completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n")


def alpaca_input(instruction, inp):
    return ("Below is an instruction that describes a task, paired with an input that provides "
            "further context. Write a response that appropriately completes the request.\n\n"
            f"### Instruction:\n{instruction}\n\n### Input:\n{inp}\n\n### Response:\n")


WORDS = [
    # Latin, with accents and ligatures
    "the", "The", "THE", "hello", "Hello", "world", "naïve", "café", "Zürich", "straße", "ÆØÅ",
    "œuvre", "ﬁnance", "İstanbul", "ǅemal", "Ωmega", "tokenizer", "Tokenization", "a", "I", "x",
    # other scripts
    "привет", "Москва", "ёжик", "καλημέρα", "Αθήνα", "مرحبا", "السلام", "عليكم", "שלום", "עולם",
    "नमस्ते", "हिन्दी", "क्षत्रिय", "สวัสดี", "ภาษาไทย", "你好", "世界", "東京", "漢字", "こんにちは",
    "カタカナ", "ｶﾀｶﾅ", "안녕하세요", "한국어", "გამარჯობა", "Բարեւ", "ሰላም", "வணக்கம்", "নমস্কার",
    "မင်္ဂလာပါ", "សួស្តី", "བོད་ཡིག", "ᠮᠣᠩᠭᠣᠯ", "ᏣᎳᎩ", "ꦗꦮ", "ܫܠܡܐ", "ދިވެހި", "ⴰⵣⵓⵍ",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "𝐁𝐨𝐥𝐝", "𐌰𐌱𐌲", "𠀀𠀁", "e\u0301", "n\u0303o", "a\u0308\u0304", "ﷺ", "Ⅻ",
]
NUMBERS = [
    "0", "7", "42", "123", "1234", "12345", "1234567890", "3.14159", "1,000,000", "-17", "+1",
    "0x1F", "1e-9", "٠١٢٣٤٥", "۱۲۳", "१२३४", "１２３", "²³", "½", "¼", "Ⅳ", "⑩", "𝟙𝟚𝟛", "2024-01-31",
    "12:30:45", "$9.99", "€5", "100%", "#1",
]
PUNCT = [
    ".", ",", "!", "?", "...", "…", "—", "–", "-", "«", "»", "“", "”", "„", "‘", "’", "'", '"', "(",
    ")", "[", "]", "{", "}", "<", ">", "/", "\\", "|", "@", "#", "$", "%", "^", "&", "*", "_", "+",
    "=", "~", "`", "。", "、", "！", "？", "؟", "،", "¡", "¿", "§", "¶", "•", "‽", "::", "->", "=>",
    "!=", "===", "**", "//", "/*", "*/", "<<", ">>", "&&", "||", "\\n", "\\t", "?!", "!!!", ".,;:",
]
SPACES = [
    " ", "  ", "   ", "    ", "\t", "\t\t", "\n", "\n\n", "\n\n\n", "\r\n", "\r", "\r\n\r\n", " \n",
    "\n ", " \t ", "\u000b", "\f", "\u00a0", "\u00a0\u00a0", "\u0085", "\ufeff", "\u2028", "\u2029",
    "\u3000", "\u1680", "\u2000", "\u2003", "\u2009", "\u200a", "\u202f", "\u205f", "\u180e",
    "\u200b", "\u200c", "\u200d", "\u2060", "\u001c", "\u001d", "\u001e", "\u001f", " \u0085 ",
    "\u00a0 ", " \ufeff", "\n\u00a0\n", "\t\n \r",
]
EMOJI = [
    "🙂", "😀", "👍", "👍🏽", "❤️", "🔥", "🎉", "👩‍💻", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🏴‍☠️", "🇯🇵", "🇺🇸🇬🇧",
    "1️⃣", "#️⃣", "🧑🏿‍🤝‍🧑🏻", "🐈‍⬛", "❤️‍🔥", "🫠", "🥲", "©️", "™", "🙂‍↔️", "👁️‍🗨️", "🏴󠁧󠁢󠁳󠁣󠁴󠁿",
    "👩🏽‍❤️‍💋‍👨🏻", "☺", "✔️", "⚠️", "🀄", "🂡",
]
CODE = [
    "def f(x):", "return x + 1", "if (a == b) {", "}", "std::vector<int> v;", "#include <stdio.h>",
    "console.log('hi');", "x[i] = y[j];", "/* comment */", "// TODO(me): fix",
    "SELECT * FROM t WHERE id=1;", '<div class="a">', "</div>", "$HOME/.config", "a&&b||!c", "i++",
    "0b1010", "__init__", "camelCaseName", "snake_case_name", "SCREAMING_CASE",
    "https://example.com/path?q=1&r=2#top", "user@example.com", "C:\\Windows\\System32", "\\u00e9",
    "for i in range(10):", "    pass", "fn main() -> Result<(), Box<dyn Error>> {", "λx.x",
    "∀x∈ℝ: x²≥0", "let s = `${a}b`;", '{"key": [1, 2.5, null, true]}', "<?php echo $x; ?>",
    "@decorator", "a:b:c", "---", "```",
]
CONTRACTIONS = [
    "'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'T", "'RE", "'Ve", "'LL", "'D", "'ſ", "'ſx",
    "n't", "I'm", "you're", "it's", "we'LL", "'x", "''", "'", "’s", "can't", "'ss", "'dd", "'llama",
]
SPECIALS = [
    "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|start_header_id|>",
    "<|end_header_id|>", "<|reserved_special_token_0|>", "<|reserved_special_token_4|>",
    "<|reserved_special_token_5|>", "<|reserved_special_token_250|>",
    "<|reserved_special_token_251|>", "<|eom_id|>", "<|python_tag|>", "<|", "|>", "<|eot_id|",
    "<s>", "</s>", "<unk>", "<0x0A>", "▁", "▁▁", "<<|eot_id|>>", "<s></s>", "<</s>>",
]
# Code point ranges that random "words" are drawn from (letters, marks, digits of many scripts).
RANGES = [
    (0x41, 0x5a), (0x61, 0x7a), (0xc0, 0x24f), (0x370, 0x3ff), (0x400, 0x52f), (0x531, 0x58a),
    (0x591, 0x5f4), (0x600, 0x6ff), (0x700, 0x74f), (0x780, 0x7b1), (0x900, 0x97f), (0x980, 0x9fe),
    (0xa00, 0xa76), (0xb80, 0xbfa), (0xe01, 0xe5b), (0xe81, 0xedf), (0xf00, 0xfda),
    (0x1000, 0x109f),
    (0x10a0, 0x10ff), (0x1100, 0x11ff), (0x1200, 0x137c), (0x13a0, 0x13f5), (0x1780, 0x17f9),
    (0x1800, 0x18aa), (0x1e00, 0x1fff), (0x2000, 0x206f), (0x20a0, 0x20c0), (0x2100, 0x218b),
    (0x2190, 0x23ff), (0x2460, 0x24ff), (0x2500, 0x27bf), (0x2c00, 0x2c5f), (0x3000, 0x303f),
    (0x3040, 0x30ff), (0x3130, 0x318e), (0x4e00, 0x9fff), (0xa000, 0xa48c), (0xac00, 0xd7a3),
    (0xe000, 0xe0ff), (0xfb00, 0xfdff), (0xfe30, 0xfe6b), (0xff00, 0xffef), (0xfff9, 0xfffd),
    (0x10000, 0x1007f), (0x10300, 0x1034a), (0x1d400, 0x1d7ff), (0x1f000, 0x1f0ff),
    (0x1f300, 0x1faff), (0x20000, 0x2a6df), (0xe0000, 0xe007f),
]
# Sentences for the corpus (and some test strings): enough of each script that its characters and
# common words become tokens of both vocabularies.
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.", "She sells sea shells by the sea shore.",
    "Large language models are trained on text from many sources.",
    "Der schnelle braune Fuchs springt über den faulen Hund.", "Grüße aus München und Köln!",
    "Le vif renard brun saute par-dessus le chien paresseux.",
    "Où est la bibliothèque, s'il vous plaît ?",
    "El rápido zorro marrón salta sobre el perro perezoso.", "¿Dónde está la estación de tren?",
    "A rápida raposa marrom pula sobre o cão preguiçoso.",
    "La veloce volpe marrone salta sul cane pigro.",
    "Szybki brązowy lis przeskakuje nad leniwym psem.", "Příliš žluťoučký kůň úpěl ďábelské ódy.",
    "Hızlı kahverengi tilki tembel köpeğin üzerinden atlar.", "Tiếng Việt có dấu rất đẹp.",
    "Быстрая коричневая лиса прыгает через ленивую собаку.",
    "Съешь же ещё этих мягких французских булок.",
    "Привет, как дела? Всё хорошо, спасибо.", "Україна, Київ, їжак, ґанок.",
    "Η γρήγορη καφέ αλεπού πηδά πάνω από τον τεμπέλη σκύλο.", "Καλημέρα σας, τι κάνετε;",
    "الثعلب البني السريع يقفز فوق الكلب الكسول.", "مرحبا بكم في عالم الذكاء الاصطناعي.",
    "השועל החום המהיר קופץ מעל הכלב העצלן.", "שלום עולם, מה שלומך היום?",
    "तेज़ भूरी लोमड़ी आलसी कुत्ते के ऊपर कूदती है।", "नमस्ते, आप कैसे हैं? मैं ठीक हूँ।",
    "দ্রুত বাদামী শিয়াল অলস কুকুরের উপর লাফ দেয়।", "வணக்கம், நீங்கள் எப்படி இருக்கிறீர்கள்?",
    "สุนัขจิ้งจอกสีน้ำตาลกระโดดข้ามสุนัขขี้เกียจ", "สวัสดีครับ ยินดีต้อนรับ",
    "敏捷的棕色狐狸跳过了懒狗。", "你好，世界！今天天气很好。", "我们正在训练一个语言模型。",
    "素早い茶色の狐がのろまな犬を飛び越える。", "こんにちは、世界！東京は晴れです。", "カタカナとひらがなと漢字。",
    "빠른 갈색 여우가 게으른 개를 뛰어넘는다.", "안녕하세요, 세계! 한국어를 공부합니다.",
    "სწრაფი ყავისფერი მელა ხტება ზარმაც ძაღლზე.", "Արագ շագանակագույն աղվեսը ցատկում է։",
    "ፈጣኑ ቡናማ ቀበሮ በሰነፉ ውሻ ላይ ዘለለ።", "Mabilis na tumalon ang kayumangging soro.",
    "Emoji: 🙂 😀 👍 👍🏽 ❤️ 🔥 🎉 👩‍💻 👨‍👩‍👧‍👦 🏳️‍🌈 🇯🇵 🇺🇸 ✔️ ⚠️ 🚀 🤖 💡",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 123 1000 2024 3.14159 1,000,000 -17 +1 50%",
    "Prices: $9.99, €5, £3.50, ¥1000, ₹250, ₩5000.", "Dates: 2024-01-31, 12:30:45, 31/12/1999.",
    "Math: ∀x∈ℝ: x²≥0, ∑ᵢ aᵢ, √2 ≈ 1.414, π ≈ 3.14159, ∞ ≠ ∅.",
    "Quotes: «bonjour», “hello”, ‘hi’, „hallo“, 「こんにちは」.",
]


def fixed_strings():
    s = [
        "", " ", "  ", "\n", "\t", "a", "A", "0", ".", "'", "é", "🙂",
        "Below is an instruction that describes a task.",
        "Hello, world!", "Hello world", " Hello world", "Hello world ", "hello   world",
        "hello\n\nworld", "a\u0085b", "a \u0085 b", "\u0085", "\u0085\u0085 x", "x\u0085",
        "\ufeffHello", "a\ufeff b", "\ufeff", "\ufeff\ufeff", "x\u00a0y", "x\u00a0\u00a0y",
        "\u00a0", "100\u00a0km", "a\u180eb", "a \u180e b", "\u200b", "zero\u200bwidth", "a\u2028b",
        "a\u2029b",
        "\u3000全角\u3000", "a\u1680b", "\u001c\u001d\u001e\u001f", "a\u001fb", "\u000b\f",
        "line1\r\nline2\r\n", "\r\r\n\n", "tab\tsep\tvalues", " \n \n ", "\n\n\n\n\n",
        "      leading", "trailing      ", "\t\t\tindent", "mixed \t\n\r\u00a0\u0085 end",
        "don't", "I'm", "we'll", "they've", "she'd", "you're", "it's", "IT'S", "DON'T", "'s'",
        "'S's", "'ſ", "'ſx", "'ſ 'S", "ſ", "K", "\u212a", "'\u212a", "'ss", "o'clock",
        "rock'n'roll",
        "''''", "1", "12", "123", "1234", "12345", "123456", "1234567", "3.14159265358979",
        "1,234,567.89", "٠١٢٣٤٥٦٧٨٩", "१२३४५६", "１２３４５", "²³¹", "½¾", "Ⅰ Ⅱ Ⅲ Ⅻ", "𝟘𝟙𝟚𝟛𝟜",
        "0x7fffffff", "1e10", "a1b2c3", "abc123def", "2024-05-09T07:35:25Z", "+1 (555) 123-4567",
        "👩‍👩‍👧‍👦", "👨🏽‍💻", "🏳️‍🌈", "🇯🇵🇫🇷", "1️⃣2️⃣", "🧑🏿‍🤝‍🧑🏻", "❤️‍🔥", "🙂🙂🙂",
        "emoji🙂inside", "👍🏻👍🏼👍🏽👍🏾👍🏿", "🏴󠁧󠁢󠁥󠁮󠁧󠁿", "a\u200db", "\u200d\u200d",
        "e\u0301\u0301\u0301", "क्‍ष", "ก็", "각", "\u1100\u1161\u11a8", "עִבְרִית", "العَرَبِيَّة",
        "Ελληνικά", "Привет, мир!", "日本語のテキスト。", "中文，标点！", "한국어 텍스트", "हिन्दी पाठ।",
        "ไทยไม่มีช่องว่าง", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕿𝖊𝖝𝖙", "𐌰𐌱𐌲𐌳", "𠀀𠀁𠀂", "\ue000\uf8ff", "\ufffd",
        "\ufffe\uffff", "\U0010ffff", "\U000e0001", "\u0000", "a\u0000b", "\u0001\u0002\u0003",
        "\u007f", "\u0080\u0081\u009f",
        "def add(a, b):\n    return a + b\n", "int main() {\n\treturn 0;\n}\n",
        "for (let i = 0; i < n; i++) { sum += a[i]; }", "<html><body>Hi</body></html>",
        '{"a": 1, "b": [true, false, null]}', "SELECT name FROM users WHERE id = 42;",
        "    x = 1\n    y = 2", "https://example.com/a/b?c=d&e=f", "C:\\path\\to\\file.txt",
        '#!/bin/bash\necho "$HOME"\n',
        "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>",
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>",
        "<|reserved_special_token_250|>", "<|reserved_special_token_251|>",
        "<|reserved_special_token_00|>", "<|eom_id|>", "text<|eot_id|>more", "<|eot_id|><|eot_id|>",
        "<|<|eot_id|>|>", "<|eot_id", "eot_id|>", "<s>", "</s>", "<s>Hello</s>", "<unk>", "<0x0A>",
        "▁", "▁▁hello", "a▁b", "\u2581 \u2581", " <s> x </s> ", "<s><s></s>",
        alpaca_no_input("Give three tips for staying healthy."),
        alpaca_no_input("What are the three primary colors?"),
        alpaca_no_input("Describe the structure of an atom."),
        alpaca_no_input('Translate "Guten Morgen" into English, French and 日本語.'),
        alpaca_input("Identify the odd one out.", "Twitter, Instagram, Telegram"),
        alpaca_input("Evaluate this sentence for spelling and grammar mistakes",
                     "He finnished his meal and left the resturant"),
        alpaca_input("Summarize the text.", "Ünïcödé   text\twith\u00a0odd\u0085spaces and 🙂."),
        alpaca_no_input("") + "The answer is 42.",
        alpaca_input("", ""),
    ]
    s += SENTENCES
    # Meta's cut at 25,000 consecutive (non-)whitespace characters, inside one pattern piece and
    # between pieces. (tiktoken merges a long piece in quadratic time: a few long pieces only.)
    s += [
        "a" * 25001 + " b",
        " " * 25003 + "x",
        "ab1!" * 6251 + " end",
        "xy1" * 8333 + "\u0085" * 3 + "é1!" * 8400,
        "1" * 25001,
        ("word " * 6000).strip(),
        "🙂" * 3000,
        "\u00a0" * 25010 + "y",
        "<|eot_id|>" * 2600,
    ]
    return s


def alpaca_data_strings():
    """The prompts (and full examples) of the project's own Alpaca data, as harness formats them."""
    out = []
    for path in sorted((SOURCE_DIR / "experiments" / "data").glob("*.json")):
        for r in json.loads(path.read_text(encoding="utf-8")):
            prompt = (alpaca_input(r["instruction"], r["input"]) if r.get("input")
                      else alpaca_no_input(r["instruction"]))
            out.append(prompt + r.get("output", ""))
    return out


def generate_strings(count, seed=20240509):
    rnd = random.Random(seed)

    def random_word():
        lo, hi = rnd.choice(RANGES)
        return "".join(chr(rnd.randint(lo, hi)) for _ in range(1 + rnd.randrange(8)))

    def random_code_point():
        while True:
            cp = rnd.randrange(0x110000)
            if not 0xD800 <= cp <= 0xDFFF:
                return chr(cp)

    def pick(a):
        return lambda: rnd.choice(a)

    mixes = [
        # general text
        [(40, pick(WORDS)), (10, pick(NUMBERS)), (15, pick(PUNCT)), (10, pick(SPACES)),
         (5, pick(EMOJI)), (5, pick(CONTRACTIONS)), (8, random_word), (2, pick(SPECIALS)),
         (2, random_code_point), (6, pick(SENTENCES))],
        # whitespace heavy
        [(30, pick(SPACES)), (20, pick(WORDS)), (10, pick(PUNCT)), (5, pick(NUMBERS))],
        # digits and punctuation
        [(30, pick(NUMBERS)), (20, pick(PUNCT)), (10, pick(SPACES)), (5, random_word)],
        # code
        [(40, pick(CODE)), (15, pick(SPACES)), (10, pick(PUNCT)), (5, pick(NUMBERS))],
        # emoji and symbols
        [(40, pick(EMOJI)), (15, pick(WORDS)), (10, pick(SPACES)), (5, random_code_point)],
        # random code points from many scripts
        [(40, random_word), (15, random_code_point), (10, pick(SPACES)), (5, pick(PUNCT))],
        # special-token names and contractions in text
        [(20, pick(SPECIALS)), (20, pick(CONTRACTIONS)), (20, pick(WORDS)), (10, pick(SPACES))],
    ]
    out = []
    while len(out) < count:
        mix = mixes[len(out) % len(mixes)]
        weights = [w for w, _ in mix]
        atoms = 1 + rnd.randrange(200 if rnd.random() < 0.1 else 25)
        s = ""
        for k in range(atoms):
            r = rnd.random()
            sep = " " if r < 0.55 else "" if r < 0.8 else rnd.choice(SPACES) if r < 0.9 else "\n"
            s += (sep if k > 0 else "") + rnd.choices(mix, weights)[0][1]()
        if rnd.random() < 0.05:
            s = " " + s
        if rnd.random() < 0.05:
            s += rnd.choice(SPACES)
        out.append(s)
    return out


def code_point_strings():
    """Code points in contexts where their class (letter, digit, space, other) shows in the ids, 64
    to a string: every code point below U+3000, every 61st above, and the digits that PCRE2
    (Unicode 14) does not know; CROSSCHECK_ALL_CODE_POINTS=1: all 1,112,064."""
    every = os.environ.get("CROSSCHECK_ALL_CODE_POINTS") == "1"
    extra = [(0x10D40, 0x10D49), (0x116D0, 0x116E3), (0x11BF0, 0x11BF9), (0x11F50, 0x11F59),
             (0x16130, 0x16139), (0x16D70, 0x16D79), (0x1CCF0, 0x1CCF9), (0x1D2C0, 0x1D2D3),
             (0x1E4F0, 0x1E4F9), (0x1E5F1, 0x1E5FA)]
    picked = set(range(0x110000)) if every else (
        set(range(0x3000)) | set(range(0, 0x110000, 61)) |
        {cp for lo, hi in extra for cp in range(lo, hi + 1)})
    chosen = sorted(cp for cp in picked if not 0xD800 <= cp <= 0xDFFF)
    return [" ".join(f"a{c}a {c}1 !{c} {c}{c}x" for c in map(chr, chosen[i:i + 64]))
            for i in range(0, len(chosen), 64)]


def test_strings():
    """(strings, how many of them are code-point strings)."""
    cps = code_point_strings()
    return fixed_strings() + alpaca_data_strings() + generate_strings(1600) + cps, len(cps)


# ------------------------------------------------------------------------------------------------
# The corpus and the two trained vocabularies.


def corpus_documents():
    """Documents in a fixed order: standard library sources (code, docstrings, pydoc's topics),
    the project's Alpaca data, and generated multilingual text."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "test", "tests", "idle_test", "__pycache__"}
    docs = []
    for path in sorted(stdlib.rglob("*.py")):
        if skip.isdisjoint(path.relative_to(stdlib).parts):
            docs.append(path.read_bytes().decode("utf-8", errors="replace"))
    for path in sorted((SOURCE_DIR / "experiments" / "data").glob("*.json")):
        docs.append(path.read_text(encoding="utf-8"))
    # Generated text in many scripts, with emoji and numbers, so that their characters and words
    # make it into both vocabularies (the sources above are mostly ASCII). A different seed than
    # the test strings.
    rnd = random.Random(7)
    pools = [SENTENCES, WORDS, NUMBERS, EMOJI, PUNCT, CODE, CONTRACTIONS]
    for _ in range(3000):
        lines = []
        for _ in range(1 + rnd.randrange(12)):
            parts = []
            for _ in range(1 + rnd.randrange(12)):
                pool = rnd.choices(pools, [12, 6, 3, 2, 2, 1, 1])[0]
                parts.append(rnd.choice(pool))
            lines.append(" ".join(parts))
        docs.append("\n".join(lines) + "\n")
    return docs


def train_sentencepiece(docs, model_prefix):
    """LLaMA 2's trainer and normaliser settings (its tokenizer.model's trainer_spec), smaller."""
    # One sentence per line; SentencePiece keeps newlines out of pieces (they become <0x0A>).
    # Every 3rd line of the sources keeps training fast and still fills 8,000 pieces.
    lines = [ln for d in docs for i, ln in enumerate(d.split("\n")) if ln.strip() and i % 3 == 0]
    spm.set_random_generator_seed(1)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_prefix=str(model_prefix), model_type="bpe",
        vocab_size=SP_VOCAB, character_coverage=0.99995, byte_fallback=True, split_digits=True,
        split_by_unicode_script=True, split_by_number=True, split_by_whitespace=True,
        allow_whitespace_only_pieces=True, max_sentencepiece_length=16, add_dummy_prefix=True,
        remove_extra_whitespaces=False, normalization_rule_name="identity", unk_id=0, bos_id=1,
        eos_id=2, pad_id=-1, max_sentence_length=16384, input_sentence_size=len(lines) + 1,
        shuffle_input_sentence=False, num_threads=2, minloglevel=2)


def bytes_to_unicode():
    """GPT-2's byte -> printable character map that byte-level BPE in `tokenizers` uses."""
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def train_byte_level_bpe(docs):
    """Byte-level BPE over Meta's pre-tokenisation, so that every merge is one tiktoken can use;
    returns tiktoken ranks: the 256 bytes, then the merged tokens in merge order."""
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=BPE_RANKS, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=[])
    tok.train_from_iterator(docs, trainer=trainer, length=len(docs))
    to_byte = {c: b for b, c in bytes_to_unicode().items()}
    vocab = json.loads(tok.to_str())["model"]["vocab"]
    ranks = {bytes([b]): b for b in range(256)}
    for text, _ in sorted(vocab.items(), key=lambda kv: kv[1]):
        token = bytes(to_byte[c] for c in text)
        if token not in ranks:
            ranks[token] = len(ranks)
    return ranks


def byte_pair_ranks():
    """Every byte, then every pair of bytes. BPE then pairs up the bytes of each piece, so that
    where Meta's pattern cuts a text shows in the ids; a trained vocabulary has no merges across
    rare characters, which would hide a character classified differently."""
    ranks = {bytes([b]): b for b in range(256)}
    ranks.update((bytes([a, b]), 256 + 256 * a + b) for a in range(256) for b in range(256))
    return ranks


def write_tiktoken_file(ranks, path):
    with open(path, "wb") as f:
        for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
            f.write(base64.b64encode(token) + b" %d\n" % rank)


def trained_vocabularies(work):
    """(SentencePiece model path, tiktoken file path), trained once per corpus/recipe/versions."""
    docs = corpus_documents()
    h = hashlib.sha256()
    for part in (RECIPE, str(SP_VOCAB), str(BPE_RANKS), spm.__version__, tokenizers.__version__,
                 LLAMA3_PATTERN, *docs):
        h.update(part.encode("utf-8", errors="surrogatepass") + b"\0")
    key = h.hexdigest()
    sp_model, bpe_file, stamp = work / "sp-bpe.model", work / "bpe.tiktoken", work / "vocab.key"
    if stamp.exists() and stamp.read_text() == key and sp_model.exists() and bpe_file.exists():
        print(f"vocabularies: cached in {work} (corpus of {len(docs)} documents, "
              f"{sum(map(len, docs)) / 1e6:.1f} M characters)")
        return sp_model, bpe_file
    stamp.unlink(missing_ok=True)
    t0 = time.monotonic()
    train_sentencepiece(docs, work / "sp-bpe")
    t1 = time.monotonic()
    write_tiktoken_file(train_byte_level_bpe(docs), bpe_file)
    t2 = time.monotonic()
    stamp.write_text(key)
    print(f"vocabularies: trained on {len(docs)} documents ({sum(map(len, docs)) / 1e6:.1f} M "
          f"characters): SentencePiece BPE in {t1 - t0:.1f} s, byte-level BPE in {t2 - t1:.1f} s")
    return sp_model, bpe_file


def check_coverage(sp, llama3):
    """The trained vocabularies must hold non-Latin scripts, emoji and digits, or the test would
    not exercise harness on them: some multi-byte token per script."""
    probes = {"Cyrillic": "привет", "Greek": "καλη", "Arabic": "مرحبا", "Hebrew": "שלום",
              "Devanagari": "नमस्ते", "Thai": "สวัสดี", "Han": "你好", "Kana": "こんにちは",
              "Hangul": "안녕하세요", "emoji": "🙂", "digits": "123"}
    missing = []
    for name, text in probes.items():
        ids = llama3.encode(text)
        if len(ids) >= len(text.encode("utf-8")):
            missing.append(f"{name} (byte-level BPE)")
        pieces = sp.encode(text)
        if name != "digits" and any(3 <= i < 259 for i in pieces):  # byte fallback
            missing.append(f"{name} (SentencePiece)")
    if missing:
        print("vocabularies: FAILED: no tokens for " + ", ".join(missing))
        return False
    return True


# ------------------------------------------------------------------------------------------------
# Running harness and comparing.


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


class Checker:
    def __init__(self, harness, work):
        self.harness, self.work = harness, work
        self.failed = False

    def run(self, *args, input_bytes=None):
        r = subprocess.run([self.harness, "tokenize", *map(str, args)], input=input_bytes,
                           capture_output=True, check=False)
        if r.returncode != 0:
            raise RuntimeError(f"harness tokenize {' '.join(map(str, args))}: exit "
                               f"{r.returncode}: {r.stderr.decode(errors='replace').strip()}")
        return r.stdout

    def jsonl(self, model, rows, *flags):
        """harness on one JSON value per line; its output lines parsed (split at \\n only: decoded
        text holds U+0085, U+2028 raw)."""
        fd, path = tempfile.mkstemp(suffix=".jsonl", dir=self.work)
        os.close(fd)
        try:
            write_jsonl(path, rows)
            out = self.run("--tokenizer", model, "--jsonl", path, *flags).decode("utf-8")
        finally:
            os.unlink(path)
        lines = out.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        return [json.loads(ln) for ln in lines]

    def compare(self, label, strings, expected, got, unit="strings"):
        if len(got) != len(expected):
            print(f"{label}: {len(got)} results from harness, {len(expected)} expected")
            self.failed = True
            return
        bad = [i for i in range(len(expected)) if expected[i] != got[i]]
        for i in bad[:10]:
            print(f"{label}: MISMATCH at string {i}: {show(strings[i])}")
            e, g = expected[i], got[i]
            if isinstance(e, list) and isinstance(g, list):
                n = min(len(e), len(g))
                k = next((k for k in range(n) if e[k] != g[k]), n)
                print(f"  first difference at id {k}:\n  expected {e[max(0, k - 3):k + 8]}\n"
                      f"  got      {g[max(0, k - 3):k + 8]}")
            else:
                print(f"  expected {show(e)}\n  got      {show(g)}")
        print(f"{label}: {len(expected)} {unit}, {len(bad)} mismatches")
        self.failed |= bool(bad)

    def expect(self, label, expected, *args):
        got = self.run(*args).decode("utf-8").strip()
        ok = got == expected
        print(f"{label}: {got}" if ok else f"{label}: MISMATCH: expected {expected}, got {got}")
        self.failed |= not ok


def show(s, limit=120):
    j = json.dumps(s, ensure_ascii=False)
    return j if len(j) <= limit else f"{j[:limit]}... ({len(s)} items)"


def valid_utf8(b):
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def check_llama3(c, name, model, ref, strings):
    t0 = time.monotonic()
    plain = [ref.encode(s) for s in strings]
    special = [ref.encode(s, allow_special=True) if "<|" in s else p
               for s, p in zip(strings, plain)]
    t1 = time.monotonic()
    got = c.jsonl(model, strings)
    c.compare(f"{name} (tiktoken)", strings, plain, got)
    got_special = c.jsonl(model, strings, "--allow-special")
    c.compare(f"{name} --allow-special (tiktoken, allowed_special=\"all\")", strings, special,
              got_special)
    c.compare(f"{name} --bos --eos", strings, [[ref.bos] + p + [ref.eos] for p in plain],
              c.jsonl(model, strings, "--bos", "--eos"))
    # decode(encode(s)) == s: ids from harness, so a wrong id shows up once, above.
    c.compare(f"{name} decode round trip", strings, strings, c.jsonl(model, got, "--decode"))
    c.compare(f"{name} --allow-special decode round trip", strings, strings,
              c.jsonl(model, got_special, "--decode"))
    # Every token's text alone (where its bytes are UTF-8): whole-token lookups, pieces the
    # pattern splits, tokens no merge can build.
    texts = [b.decode("utf-8") for b in ref.ranks if valid_utf8(b)]
    c.compare(f"{name} text of each token", texts, [ref.encode(t) for t in texts],
              c.jsonl(model, texts))
    # Every id, bytes exact (raw output: tokens that are parts of a character stay bytes).
    all_ids = list(range(ref.enc.n_vocab))
    expected = b"".join(ref.token_bytes(i) for i in all_ids)
    ids_file = c.work / "all_ids.txt"  # a file: the ids are too long for one argument
    ids_file.write_text(" ".join(map(str, all_ids)))
    got_bytes = c.run("--tokenizer", model, "--decode", "--file", ids_file)
    c.compare(f"{name} decode of all {len(all_ids)} ids at once (bytes)", ["all ids"], [expected],
              [got_bytes], unit="sequence")
    t2 = time.monotonic()
    print(f"{name}: reference {t1 - t0:.1f} s, harness and compare {t2 - t1:.1f} s")


def sp_encode_with_controls(sp, s):
    """harness's SentencePiece --allow-special: control-token names (the longest at a position)
    become their ids, the text between them is encoded alone."""
    controls = sorted((sp.id_to_piece(i) for i in range(sp.get_piece_size()) if sp.is_control(i)),
                      key=len, reverse=True)
    ids, start, at = [], 0, 0
    while at < len(s):
        hit = next((c for c in controls if c and s.startswith(c, at)), None)
        if hit is None:
            at += 1
            continue
        ids += sp.encode(s[start:at]) if at > start else []
        ids.append(sp.piece_to_id(hit))
        at += len(hit)
        start = at
    return ids + (sp.encode(s[start:]) if start < len(s) else [])


def check_llama2(c, name, model, strings):
    t0 = time.monotonic()
    sp = spm.SentencePieceProcessor(model_file=str(model))
    # Meta's llama/tokenizer.py: sp_model.encode(s), BOS/EOS added by id.
    plain = [sp.encode(s) for s in strings]
    decoded = [sp.decode(ids) for ids in plain]
    t1 = time.monotonic()
    got = c.jsonl(model, strings)
    c.compare(f"{name} (sentencepiece encode)", strings, plain, got)
    c.compare(f"{name} --bos --eos", strings, [[sp.bos_id()] + p + [sp.eos_id()] for p in plain],
              c.jsonl(model, strings, "--bos", "--eos"))
    c.compare(f"{name} --bos", strings, [[sp.bos_id()] + p for p in plain],
              c.jsonl(model, strings, "--bos"))
    with_controls = [i for i, s in enumerate(strings) if "<" in s]
    sub = [strings[i] for i in with_controls]
    c.compare(f"{name} --allow-special (sp.encode between control names)", sub,
              [sp_encode_with_controls(sp, s) for s in sub], c.jsonl(model, sub, "--allow-special"))
    c.compare(f"{name} decode (sentencepiece decode)", strings, decoded,
              c.jsonl(model, got, "--decode"))
    # Every piece's text alone (U+2581 as the space it stands for), and every id decoded alone.
    n = sp.get_piece_size()
    texts = [sp.id_to_piece(i).replace("\u2581", " ") for i in range(n)
             if not (sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i))]
    c.compare(f"{name} text of each piece", texts, [sp.encode(t) for t in texts],
              c.jsonl(model, texts))
    ids = [[i] for i in range(n)] + [list(range(n))]
    c.compare(f"{name} decode of every id alone, and of all at once", ids,
              [sp.decode(i) for i in ids], c.jsonl(model, ids, "--decode"), unit="id sequences")
    t2 = time.monotonic()
    print(f"{name}: reference {t1 - t0:.1f} s, harness and compare {t2 - t1:.1f} s")


EXAMPLE = "Below is an instruction that describes a task."


def main():
    if len(sys.argv) != 3:
        sys.exit(f"usage: {sys.argv[0]} HARNESS_BIN BUILD_DIR")
    start = time.monotonic()
    harness = str(Path(sys.argv[1]).resolve())
    work = Path(sys.argv[2]).resolve() / "tokenizers"
    work.mkdir(parents=True, exist_ok=True)
    print(f"crosscheck: tiktoken {tiktoken.__version__}, sentencepiece {spm.__version__}, "
          f"tokenizers {tokenizers.__version__}; files in {work}")

    sp_model, bpe_file = trained_vocabularies(work)
    strings, n_cp = test_strings()
    write_jsonl(work / "strings.jsonl", strings)  # for looking into a failure
    print(f"strings: {len(strings)} ({len(strings) - n_cp} + {n_cp} of code points)")

    c = Checker(harness, work)
    llama3 = Llama3Reference(read_tiktoken_file(bpe_file))
    sp = spm.SentencePieceProcessor(model_file=str(sp_model))
    print(f"trained: SentencePiece BPE of {sp.get_piece_size()} pieces, byte-level BPE of "
          f"{len(llama3.ranks)} ranks (+ 256 special tokens)")
    if not check_coverage(sp, llama3):
        c.failed = True
    check_llama3(c, "trained LLaMA 3 style", bpe_file, llama3, strings)
    pairs = byte_pair_ranks()
    write_tiktoken_file(pairs, work / "pairs.tiktoken")
    check_llama3(c, "byte-pair LLaMA 3 style", work / "pairs.tiktoken", Llama3Reference(pairs),
                 strings)
    check_llama2(c, "trained LLaMA 2 style", sp_model, strings)

    # Meta's own files, where the user points at them (never part of the repository).
    for var in ("HARNESS_LLAMA3_TOKENIZER", "HARNESS_LLAMA2_TOKENIZER"):
        if os.environ.get(var) and not Path(os.environ[var]).is_file():
            print(f"crosscheck: FAILED: {var}={os.environ[var]} is not a file")
            return 1
    real3 = os.environ.get("HARNESS_LLAMA3_TOKENIZER")
    if real3:
        check_llama3(c, "Meta's LLaMA 3", real3, Llama3Reference(read_tiktoken_file(real3)),
                     strings)
        c.expect("LLaMA 3 example", "39314 374 459 7754 430 16964 264 3465 13", "--tokenizer",
                 real3, "--text", EXAMPLE)
        c.expect("LLaMA 3 chat header", "[128000,128006,882,128007,271,13347,128009]",
                 "--tokenizer", real3, "--text",
                 "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>", "--allow-special",
                 "--bos", "--json")
    else:
        print("LLaMA 3 (Meta's tokenizer.model): SKIPPED, HARNESS_LLAMA3_TOKENIZER is not set")
    real2 = os.environ.get("HARNESS_LLAMA2_TOKENIZER")
    if real2:
        check_llama2(c, "Meta's LLaMA 2", real2, strings)
        c.expect("LLaMA 2 example (BOS)", "1 13866 338 385 15278 393 16612 263 3414 29889",
                 "--tokenizer", real2, "--text", EXAMPLE, "--bos")
    else:
        print("LLaMA 2 (Meta's tokenizer.model): SKIPPED, HARNESS_LLAMA2_TOKENIZER is not set")

    elapsed = time.monotonic() - start
    if c.failed:
        print(f"crosscheck: FAILED ({elapsed:.1f} s; files in {work})")
        return 1
    print(f"crosscheck: all exact ({elapsed:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
