// Reference side of tests/tokenizers/crosscheck.sh (Node 18+, no dependencies of its own):
//   node crosscheck.mjs prepare WORK   the two tokenizer.model files, the test strings and the
//                                      reference ids, all under WORK (npm packages in WORK/npm)
//   node crosscheck.mjs compare LABEL EXPECTED.jsonl GOT.jsonl STRINGS.jsonl
//                                      exact comparison, line by line; prints the first mismatches
//
// References (installed by crosscheck.sh, never committed: the vocabularies are Meta-licensed):
//  - LLaMA 3: npm `tiktoken` (the WASM build of the engine Meta's tokenizer.py runs on) over the
//    vocabulary of npm `llama3-tokenizer-js` 1.2.0 rewritten as tiktoken's text format, with
//    Meta's special tokens and pattern, and Meta's own splitting of long runs before tiktoken.
//  - LLaMA 2: npm `llama-tokenizer-js` 1.2.2; the SentencePiece model for harness is built from
//    the same package's vocabulary and merges.
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';

// ---------------------------------------------------------------------------------------------
// LLaMA 3 as Meta's llama3/tokenizer.py defines it.

const LLAMA3_PATTERN =
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

function llama3SpecialTokens() {
  const names = [
    '<|begin_of_text|>', '<|end_of_text|>', '<|reserved_special_token_0|>',
    '<|reserved_special_token_1|>', '<|reserved_special_token_2|>',
    '<|reserved_special_token_3|>', '<|start_header_id|>', '<|end_header_id|>',
    '<|reserved_special_token_4|>', '<|eot_id|>',
  ];
  for (let i = 5; i < 256 - 5; i++) names.push(`<|reserved_special_token_${i}|>`);
  return names;
}

// Python's str.isspace().
function isPySpace(cp) {
  return (cp >= 0x09 && cp <= 0x0d) || (cp >= 0x1c && cp <= 0x20) || cp === 0x85 || cp === 0xa0 ||
    cp === 0x1680 || (cp >= 0x2000 && cp <= 0x200a) || cp === 0x2028 || cp === 0x2029 ||
    cp === 0x202f || cp === 0x205f || cp === 0x3000;
}

// tokenizer.py: chunks of 400,000 characters, each cut so that no part has more than 25,000
// consecutive whitespace or non-whitespace characters (_split_whitespaces_or_nonwhitespaces).
function splitLikeMeta(s, maxChunk = 400000, maxRun = 25000) {
  const cps = Array.from(s);
  const out = [];
  for (let c = 0; c < cps.length; c += maxChunk) {
    const chunk = cps.slice(c, c + maxChunk);
    let len = 0;
    let isSpace = chunk.length > 0 ? isPySpace(chunk[0].codePointAt(0)) : false;
    let start = 0;
    for (let i = 0; i < chunk.length; i++) {
      const now = isPySpace(chunk[i].codePointAt(0));
      if (isSpace !== now) {
        len = 1;
        isSpace = now;
      } else {
        len += 1;
        if (len > maxRun) {
          out.push(chunk.slice(start, i).join(''));
          start = i;
          len = 1;
        }
      }
    }
    out.push(chunk.slice(start).join(''));
  }
  return out;
}

// GPT-2's bytes_to_unicode, reversed: the byte-level strings of llama3-tokenizer-js -> bytes.
function unicodeToBytes() {
  const bs = [];
  for (let b = 33; b <= 126; b++) bs.push(b);
  for (let b = 161; b <= 172; b++) bs.push(b);
  for (let b = 174; b <= 255; b++) bs.push(b);
  const cs = bs.slice();
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (!bs.includes(b)) {
      bs.push(b);
      cs.push(256 + n);
      n++;
    }
  }
  const map = new Map();
  bs.forEach((b, i) => map.set(String.fromCodePoint(cs[i]), b));
  return map;
}

async function loadPackages(npmDir) {
  const require = createRequire(path.join(npmDir, 'package.json'));
  const { Tiktoken } = require('tiktoken/lite');
  const importPkg = async (name, file) =>
    (await import(pathToFileURL(path.join(npmDir, 'node_modules', name, file)).href)).default;
  const llama3 = await importPkg('llama3-tokenizer-js', 'bundle/llama3-tokenizer-with-baked-data.js');
  const llama2 = await importPkg('llama-tokenizer-js', 'llama-tokenizer.js');
  return { Tiktoken, llama3, llama2 };
}

// Meta's tokenizer.model for LLaMA 3: base64 of each token's bytes, a space, the rank.
function llama3TiktokenFile(llama3) {
  const u2b = unicodeToBytes();
  const lines = [];
  for (let rank = 0; rank < 128000; rank++) {
    const s = llama3.vocabById[rank];
    const bytes = Array.from(s, (c) => {
      const b = u2b.get(c);
      if (b === undefined) throw new Error(`llama3 token ${rank} is not byte-level: ${JSON.stringify(s)}`);
      return b;
    });
    lines.push(`${Buffer.from(bytes).toString('base64')} ${rank}`);
  }
  if (llama3.vocabById[128000] !== '<|begin_of_text|>') throw new Error('unexpected llama3 vocabulary');
  return lines.join('\n') + '\n';
}

// ---------------------------------------------------------------------------------------------
// LLaMA 2: a SentencePiece ModelProto (protobuf wire format written by hand).
//   ModelProto { repeated SentencePiece pieces = 1; TrainerSpec trainer_spec = 2;
//                NormalizerSpec normalizer_spec = 3; }
//   SentencePiece { string piece = 1; float score = 2; Type type = 3; }
//     Type: NORMAL 1, UNKNOWN 2, CONTROL 3, USER_DEFINED 4, UNUSED 5, BYTE 6
//   TrainerSpec { ModelType model_type = 3 (BPE = 2); int32 vocab_size = 4;
//                 bool byte_fallback = 35; unk_id = 40; bos_id = 41; eos_id = 42 }
//   NormalizerSpec { string name = 1; bool add_dummy_prefix = 3;
//                    bool remove_extra_whitespaces = 4; bool escape_whitespaces = 5; }

class Proto {
  constructor() { this.parts = []; }
  varint(v) {
    const b = [];
    let x = BigInt.asUintN(64, BigInt(v));
    while (x >= 0x80n) { b.push(Number(x & 0x7fn) | 0x80); x >>= 7n; }
    b.push(Number(x));
    this.parts.push(Buffer.from(b));
  }
  tag(field, wire) { this.varint((field << 3) | wire); }
  num(field, v) { this.tag(field, 0); this.varint(v); return this; }
  bytes(field, buf) {
    const b = Buffer.isBuffer(buf) ? buf : Buffer.from(buf, 'utf8');
    this.tag(field, 2); this.varint(b.length); this.parts.push(b); return this;
  }
  f32(field, x) {
    this.tag(field, 5);
    const b = Buffer.alloc(4); b.writeFloatLE(x); this.parts.push(b); return this;
  }
  buffer() { return Buffer.concat(this.parts); }
}

function llama2ModelProto(llama2) {
  const vocab = llama2.vocabById;
  if (vocab.length !== 32000 || vocab[0] !== '<unk>' || vocab[1] !== '<s>' || vocab[2] !== '</s>')
    throw new Error('unexpected llama2 vocabulary');
  // A merged piece's score: the earlier its first merge, the higher (SentencePiece's BPE merges the
  // pair whose result scores highest). Pieces no merge makes (single characters) score lowest.
  const firstMerge = new Map();
  for (const [pair, prio] of llama2.merges) {
    const merged = pair.replace(' ', '');
    if (!firstMerge.has(merged) || firstMerge.get(merged) > prio) firstMerge.set(merged, prio);
  }
  const model = new Proto();
  for (let id = 0; id < vocab.length; id++) {
    const piece = vocab[id];
    let type = 1;
    let score = 0;
    if (id === 0) type = 2;
    else if (id <= 2) type = 3;
    else if (/^<0x[0-9A-F]{2}>$/.test(piece)) type = 6;
    else score = firstMerge.has(piece) ? -firstMerge.get(piece) : -(1e6 + id);
    model.bytes(1, new Proto().bytes(1, piece).f32(2, score).num(3, type).buffer());
  }
  const trainer = new Proto().num(3, 2).num(4, vocab.length).num(35, 1).num(40, 0).num(41, 1).num(42, 2);
  model.bytes(2, trainer.buffer());
  const normalizer = new Proto().bytes(1, 'identity').num(3, 1).num(4, 0).num(5, 1);
  model.bytes(3, normalizer.buffer());
  return model.buffer();
}

// ---------------------------------------------------------------------------------------------
// Test strings: deterministic (seeded), >= 1000, varied.

function mulberry32(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const ALPACA_NO_INPUT = (instruction) =>
  'Below is an instruction that describes a task. Write a response that appropriately ' +
  `completes the request.\n\n### Instruction:\n${instruction}\n\n### Response:\n`;
const ALPACA_INPUT = (instruction, input) =>
  'Below is an instruction that describes a task, paired with an input that provides ' +
  'further context. Write a response that appropriately completes the request.\n\n' +
  `### Instruction:\n${instruction}\n\n### Input:\n${input}\n\n### Response:\n`;

const WORDS = [
  // Latin, with accents and ligatures
  'the', 'The', 'THE', 'hello', 'Hello', 'world', 'naïve', 'café', 'Zürich', 'straße', 'ÆØÅ',
  'œuvre', 'ﬁnance', 'İstanbul', 'ǅemal', 'Ωmega', 'tokenizer', 'Tokenization', 'a', 'I', 'x',
  // other scripts
  'привет', 'Москва', 'ёжик', 'καλημέρα', 'Αθήνα', 'مرحبا', 'السلام', 'عليكم', 'שלום', 'עולם',
  'नमस्ते', 'हिन्दी', 'क्षत्रिय', 'สวัสดี', 'ภาษาไทย', '你好', '世界', '東京', '漢字', 'こんにちは',
  'カタカナ', 'ｶﾀｶﾅ', '안녕하세요', '한국어', 'გამარჯობა', 'Բարեւ', 'ሰላም', 'வணக்கம்', 'নমস্কার',
  'မင်္ဂလာပါ', 'សួស្តី', 'བོད་ཡིག', 'ᠮᠣᠩᠭᠣᠯ', 'ᏣᎳᎩ', 'ꦗꦮ', 'ܫܠܡܐ', 'ދިވެހި', 'ⴰⵣⵓⵍ',
  '𝔘𝔫𝔦𝔠𝔬𝔡𝔢', '𝐁𝐨𝐥𝐝', '𐌰𐌱𐌲', '𠀀𠀁', 'e\u0301', 'n\u0303o', 'a\u0308\u0304', 'ﷺ', 'Ⅻ',
];
const NUMBERS = [
  '0', '7', '42', '123', '1234', '12345', '1234567890', '3.14159', '1,000,000', '-17', '+1',
  '0x1F', '1e-9', '٠١٢٣٤٥', '۱۲۳', '१२३४', '１２３', '²³', '½', '¼', 'Ⅳ', '⑩', '𝟙𝟚𝟛', '2024-01-31',
  '12:30:45', '$9.99', '€5', '100%', '#1',
];
const PUNCT = [
  '.', ',', '!', '?', '...', '…', '—', '–', '-', '«', '»', '“', '”', '„', '‘', '’', "'", '"', '(',
  ')', '[', ']', '{', '}', '<', '>', '/', '\\', '|', '@', '#', '$', '%', '^', '&', '*', '_', '+',
  '=', '~', '`', '。', '、', '！', '？', '؟', '،', '¡', '¿', '§', '¶', '•', '‽', '::', '->', '=>',
  '!=', '===', '**', '//', '/*', '*/', '<<', '>>', '&&', '||', '\\n', '\\t', '?!', '!!!', '.,;:',
];
const SPACES = [
  ' ', '  ', '   ', '    ', '\t', '\t\t', '\n', '\n\n', '\n\n\n', '\r\n', '\r', '\r\n\r\n', ' \n',
  '\n ', ' \t ', '\u000b', '\f', '\u00a0', '\u00a0\u00a0', '\u0085', '\ufeff', '\u2028', '\u2029',
  '\u3000', '\u1680', '\u2000', '\u2003', '\u2009', '\u200a', '\u202f', '\u205f', '\u180e',
  '\u200b', '\u200c', '\u200d', '\u2060', '\u001c', '\u001d', '\u001e', '\u001f', ' \u0085 ',
  '\u00a0 ', ' \ufeff', '\n\u00a0\n', '\t\n \r',
];
const EMOJI = [
  '🙂', '😀', '👍', '👍🏽', '❤️', '🔥', '🎉', '👩‍💻', '👨‍👩‍👧‍👦', '🏳️‍🌈', '🏴‍☠️', '🇯🇵', '🇺🇸🇬🇧',
  '1️⃣', '#️⃣', '🧑🏿‍🤝‍🧑🏻', '🐈‍⬛', '❤️‍🔥', '🫠', '🥲', '©️', '™', '🙂‍↔️', '👁️‍🗨️', '🏴󠁧󠁢󠁳󠁣󠁴󠁿',
  '👩🏽‍❤️‍💋‍👨🏻', '☺', '✔️', '⚠️', '🀄', '🂡',
];
const CODE = [
  'def f(x):', 'return x + 1', 'if (a == b) {', '}', 'std::vector<int> v;', '#include <stdio.h>',
  "console.log('hi');", 'x[i] = y[j];', '/* comment */', '// TODO(me): fix', 'SELECT * FROM t WHERE id=1;',
  '<div class="a">', '</div>', '$HOME/.config', 'a&&b||!c', 'i++', '0b1010', '__init__',
  'camelCaseName', 'snake_case_name', 'SCREAMING_CASE', 'https://example.com/path?q=1&r=2#top',
  'user@example.com', 'C:\\Windows\\System32', '\\u00e9', 'for i in range(10):', '    pass',
  'fn main() -> Result<(), Box<dyn Error>> {', 'λx.x', '∀x∈ℝ: x²≥0', 'let s = `${a}b`;',
  '{"key": [1, 2.5, null, true]}', '<?php echo $x; ?>', '@decorator', 'a:b:c', '---', '```',
];
const CONTRACTIONS = [
  "'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'T", "'RE", "'Ve", "'LL", "'D", "'ſ", "'ſx",
  "n't", "I'm", "you're", "it's", "we'LL", "'x", "''", "'", "’s", "can't", "'ss", "'dd", "'llama",
];
const SPECIALS = [
  '<|begin_of_text|>', '<|end_of_text|>', '<|eot_id|>', '<|start_header_id|>', '<|end_header_id|>',
  '<|reserved_special_token_0|>', '<|reserved_special_token_4|>', '<|reserved_special_token_5|>',
  '<|reserved_special_token_250|>', '<|reserved_special_token_251|>', '<|eom_id|>', '<|python_tag|>',
  '<|', '|>', '<|eot_id|', '<s>', '</s>', '<unk>', '<0x0A>', '▁', '▁▁', '<<|eot_id|>>',
];
// Code point ranges that random "words" are drawn from (letters, marks, digits of many scripts).
const RANGES = [
  [0x41, 0x5a], [0x61, 0x7a], [0xc0, 0x24f], [0x370, 0x3ff], [0x400, 0x52f], [0x531, 0x58a],
  [0x591, 0x5f4], [0x600, 0x6ff], [0x700, 0x74f], [0x780, 0x7b1], [0x900, 0x97f], [0x980, 0x9fe],
  [0xa00, 0xa76], [0xb80, 0xbfa], [0xe01, 0xe5b], [0xe81, 0xedf], [0xf00, 0xfda], [0x1000, 0x109f],
  [0x10a0, 0x10ff], [0x1100, 0x11ff], [0x1200, 0x137c], [0x13a0, 0x13f5], [0x1780, 0x17f9],
  [0x1800, 0x18aa], [0x1e00, 0x1fff], [0x2000, 0x206f], [0x20a0, 0x20c0], [0x2100, 0x218b],
  [0x2190, 0x23ff], [0x2460, 0x24ff], [0x2500, 0x27bf], [0x2c00, 0x2c5f], [0x3000, 0x303f],
  [0x3040, 0x30ff], [0x3130, 0x318e], [0x4e00, 0x9fff], [0xa000, 0xa48c], [0xac00, 0xd7a3],
  [0xe000, 0xe0ff], [0xfb00, 0xfdff], [0xfe30, 0xfe6b], [0xff00, 0xffef], [0xfff9, 0xfffd],
  [0x10000, 0x1007f], [0x10300, 0x1034a], [0x1d400, 0x1d7ff], [0x1f000, 0x1f0ff],
  [0x1f300, 0x1faff], [0x20000, 0x2a6df], [0xe0000, 0xe007f],
];

function fixedStrings() {
  const s = [
    '', ' ', '  ', '\n', '\t', 'a', 'A', '0', '.', "'", 'é', '🙂',
    'Below is an instruction that describes a task.',
    'Hello, world!', 'Hello world', ' Hello world', 'Hello world ', 'hello   world', 'hello\n\nworld',
    'a\u0085b', 'a \u0085 b', '\u0085', '\u0085\u0085 x', 'x\u0085', '\ufeffHello', 'a\ufeff b',
    '\ufeff', '\ufeff\ufeff', 'x\u00a0y', 'x\u00a0\u00a0y', '\u00a0', '100\u00a0km', 'a\u180eb',
    'a \u180e b', '\u200b', 'zero\u200bwidth', 'a\u2028b', 'a\u2029b', '\u3000全角\u3000', 'a\u1680b',
    '\u001c\u001d\u001e\u001f', 'a\u001fb', '\u000b\f', 'line1\r\nline2\r\n', '\r\r\n\n', 'tab\tsep\tvalues',
    ' \n \n ', '\n\n\n\n\n', '      leading', 'trailing      ', '\t\t\tindent', 'mixed \t\n\r\u00a0\u0085 end',
    "don't", "I'm", "we'll", "they've", "she'd", "you're", "it's", "IT'S", "DON'T", "'s'", "'S's",
    "'ſ", "'ſx", "'ſ 'S", 'ſ', 'K', '\u212a', "'\u212a", "'ss", "o'clock", "rock'n'roll", "''''",
    '1', '12', '123', '1234', '12345', '123456', '1234567', '3.14159265358979', '1,234,567.89',
    '٠١٢٣٤٥٦٧٨٩', '१२३४५६', '１２３４５', '²³¹', '½¾', 'Ⅰ Ⅱ Ⅲ Ⅻ', '𝟘𝟙𝟚𝟛𝟜', '0x7fffffff', '1e10',
    'a1b2c3', 'abc123def', '2024-05-09T07:35:25Z', '+1 (555) 123-4567',
    '👩‍👩‍👧‍👦', '👨🏽‍💻', '🏳️‍🌈', '🇯🇵🇫🇷', '1️⃣2️⃣', '🧑🏿‍🤝‍🧑🏻', '❤️‍🔥', '🙂🙂🙂', 'emoji🙂inside',
    '👍🏻👍🏼👍🏽👍🏾👍🏿', '🏴󠁧󠁢󠁥󠁮󠁧󠁿', 'a\u200db', '\u200d\u200d',
    'e\u0301\u0301\u0301', 'क्‍ष', 'ก็', '각', '\u1100\u1161\u11a8', 'עִבְרִית', 'العَرَبِيَّة', 'Ελληνικά',
    'Привет, мир!', '日本語のテキスト。', '中文，标点！', '한국어 텍스트', 'हिन्दी पाठ।', 'ไทยไม่มีช่องว่าง',
    '𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕿𝖊𝖝𝖙', '𐌰𐌱𐌲𐌳', '𠀀𠀁𠀂', '\ue000\uf8ff', '\ufffd', '\ufffe\uffff', '\u{10ffff}', '\u{e0001}',
    '\u0000', 'a\u0000b', '\u0001\u0002\u0003', '\u007f', '\u0080\u0081\u009f',
    'def add(a, b):\n    return a + b\n', 'int main() {\n\treturn 0;\n}\n',
    'for (let i = 0; i < n; i++) { sum += a[i]; }', '<html><body>Hi</body></html>',
    '{"a": 1, "b": [true, false, null]}', 'SELECT name FROM users WHERE id = 42;', '    x = 1\n    y = 2',
    'https://example.com/a/b?c=d&e=f', 'C:\\path\\to\\file.txt', '#!/bin/bash\necho "$HOME"\n',
    '<|begin_of_text|>', '<|end_of_text|>', '<|eot_id|>', '<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>',
    '<|reserved_special_token_250|>', '<|reserved_special_token_251|>', '<|reserved_special_token_00|>',
    '<|eom_id|>', 'text<|eot_id|>more', '<|eot_id|><|eot_id|>', '<|<|eot_id|>|>', '<|eot_id', 'eot_id|>',
    '<s>', '</s>', '<s>Hello</s>', '<unk>', '<0x0A>', '▁', '▁▁hello', 'a▁b', '\u2581 \u2581',
    ALPACA_NO_INPUT('Give three tips for staying healthy.'),
    ALPACA_NO_INPUT('What are the three primary colors?'),
    ALPACA_NO_INPUT('Describe the structure of an atom.'),
    ALPACA_NO_INPUT('Translate "Guten Morgen" into English, French and 日本語.'),
    ALPACA_INPUT('Identify the odd one out.', 'Twitter, Instagram, Telegram'),
    ALPACA_INPUT('Evaluate this sentence for spelling and grammar mistakes',
                 'He finnished his meal and left the resturant'),
    ALPACA_INPUT('Summarize the text.', 'Ünïcödé   text\twith\u00a0odd\u0085spaces and 🙂.'),
    ALPACA_NO_INPUT('') + 'The answer is 42.',
    ALPACA_INPUT('', ''),
  ];
  // Meta's cut at 25,000 consecutive (non-)whitespace characters, inside one pattern piece and
  // between pieces. (tiktoken merges a long piece in quadratic time: a few long pieces only.)
  s.push('a'.repeat(25001) + ' b');
  s.push(' '.repeat(25003) + 'x');
  s.push('ab1!'.repeat(6251) + ' end');
  s.push('xy1'.repeat(8333) + '\u0085'.repeat(3) + 'é1!'.repeat(8400));
  s.push('1'.repeat(25001));
  s.push(('word '.repeat(6000)).trim());
  s.push('🙂'.repeat(3000));
  return s;
}

function generateStrings(count) {
  const rnd = mulberry32(20240509);
  const int = (n) => Math.floor(rnd() * n);
  const pick = (a) => a[int(a.length)];
  const randomWord = () => {
    const [lo, hi] = pick(RANGES);
    let w = '';
    const len = 1 + int(8);
    for (let k = 0; k < len; k++) w += String.fromCodePoint(lo + int(hi - lo + 1));
    return w;
  };
  const randomCodePoint = () => {
    let cp;
    do cp = int(0x110000); while (cp >= 0xd800 && cp <= 0xdfff);
    return String.fromCodePoint(cp);
  };
  const atom = (weights) => {
    let r = rnd() * weights.reduce((a, [w]) => a + w, 0);
    for (const [w, f] of weights) if ((r -= w) < 0) return f();
    return weights[weights.length - 1][1]();
  };
  const mixes = [
    // general text
    [[40, () => pick(WORDS)], [10, () => pick(NUMBERS)], [15, () => pick(PUNCT)],
     [10, () => pick(SPACES)], [5, () => pick(EMOJI)], [5, () => pick(CONTRACTIONS)],
     [8, randomWord], [2, () => pick(SPECIALS)], [2, randomCodePoint]],
    // whitespace heavy
    [[30, () => pick(SPACES)], [20, () => pick(WORDS)], [10, () => pick(PUNCT)], [5, () => pick(NUMBERS)]],
    // digits and punctuation
    [[30, () => pick(NUMBERS)], [20, () => pick(PUNCT)], [10, () => pick(SPACES)], [5, randomWord]],
    // code
    [[40, () => pick(CODE)], [15, () => pick(SPACES)], [10, () => pick(PUNCT)], [5, () => pick(NUMBERS)]],
    // emoji and symbols
    [[40, () => pick(EMOJI)], [15, () => pick(WORDS)], [10, () => pick(SPACES)], [5, randomCodePoint]],
    // random code points from many scripts
    [[40, randomWord], [15, randomCodePoint], [10, () => pick(SPACES)], [5, () => pick(PUNCT)]],
    // special-token names and contractions in text
    [[20, () => pick(SPECIALS)], [20, () => pick(CONTRACTIONS)], [20, () => pick(WORDS)],
     [10, () => pick(SPACES)]],
  ];
  const out = [];
  while (out.length < count) {
    const mix = mixes[out.length % mixes.length];
    const atoms = 1 + int(rnd() < 0.1 ? 200 : 25);
    let s = '';
    for (let k = 0; k < atoms; k++) {
      const r = rnd();
      const sep = r < 0.55 ? ' ' : r < 0.8 ? '' : r < 0.9 ? pick(SPACES) : '\n';
      s += (k > 0 ? sep : '') + atom(mix);
    }
    if (rnd() < 0.05) s = ' ' + s;
    if (rnd() < 0.05) s += pick(SPACES);
    out.push(s);
  }
  return out;
}

// Code points in contexts where their class (letter, digit, space, other) shows in the ids, 64 to a
// string: every code point below U+3000, every 61st above, and the digits that PCRE2 (Unicode 14)
// does not know; CROSSCHECK_ALL_CODE_POINTS=1: all 1,112,064 (a few minutes).
function codePointStrings() {
  const all = process.env.CROSSCHECK_ALL_CODE_POINTS === '1';
  const extra = [[0x10d40, 0x10d49], [0x116d0, 0x116e3], [0x11bf0, 0x11bf9], [0x11f50, 0x11f59],
    [0x16130, 0x16139], [0x16d70, 0x16d79], [0x1ccf0, 0x1ccf9], [0x1d2c0, 0x1d2d3],
    [0x1e4f0, 0x1e4f9], [0x1e5f1, 0x1e5fa]];
  const chosen = [];
  for (let cp = 0; cp < 0x110000; cp++) {
    if (cp >= 0xd800 && cp <= 0xdfff) continue;
    if (all || cp < 0x3000 || cp % 61 === 0 || extra.some(([lo, hi]) => cp >= lo && cp <= hi)) chosen.push(cp);
  }
  const out = [];
  for (let i = 0; i < chosen.length; i += 64) {
    out.push(chosen.slice(i, i + 64).map((cp) => {
      const c = String.fromCodePoint(cp);
      return `a${c}a ${c}1 !${c} ${c}${c}x`;
    }).join(' '));
  }
  return out;
}

// ---------------------------------------------------------------------------------------------

const readJsonl = (file) =>
  fs.readFileSync(file, 'utf8').split('\n').filter((l, i, a) => !(i === a.length - 1 && l === ''))
    .map((l) => JSON.parse(l));
const writeJsonl = (file, rows) =>
  fs.writeFileSync(file, rows.map((r) => JSON.stringify(r)).join('\n') + (rows.length ? '\n' : ''));

async function prepare(work) {
  const t0 = Date.now();
  const { Tiktoken, llama3, llama2 } = await loadPackages(path.join(work, 'npm'));

  const tiktokenText = llama3TiktokenFile(llama3);
  fs.writeFileSync(path.join(work, 'llama3.tokenizer.model'), tiktokenText);
  fs.writeFileSync(path.join(work, 'llama2.tokenizer.model'), llama2ModelProto(llama2));

  const cpStrings = codePointStrings();
  const strings = [...fixedStrings(), ...generateStrings(1500), ...cpStrings];
  writeJsonl(path.join(work, 'strings.jsonl'), strings);

  const specials = {};
  llama3SpecialTokens().forEach((name, i) => { specials[name] = 128000 + i; });
  const enc = new Tiktoken(tiktokenText, specials, LLAMA3_PATTERN);
  // tokenizer.py's encode: the split parts, each through tiktoken; special-token names are text
  // (allowed_special=set(), disallowed_special=()) or, with allowed_special="all", tokens.
  const meta = (s, allowed) =>
    splitLikeMeta(s).flatMap((part) => Array.from(allowed ? enc.encode(part, 'all', []) : enc.encode(part, [], [])));
  const plain = strings.map((s) => meta(s, false));
  writeJsonl(path.join(work, 'expected.llama3.jsonl'), plain);
  writeJsonl(path.join(work, 'expected.llama3.special.jsonl'),
             strings.map((s, i) => (s.includes('<|') ? meta(s, true) : plain[i])));
  enc.free();
  // llama-tokenizer-js: encode(prompt, add_bos_token, add_preceding_space), decode(ids, same).
  // (SentencePiece decodes a literal U+2581 in the text as a space: decode is not always the
  // identity there, so the package's decode is the reference.)
  const llama2Ids = strings.map((s) => llama2.encode(s, false, true));
  writeJsonl(path.join(work, 'expected.llama2.jsonl'), llama2Ids);
  writeJsonl(path.join(work, 'expected.llama2.decoded.jsonl'), llama2Ids.map((ids) => llama2.decode(ids, false, true)));
  const kinds = `${strings.length} strings (${strings.length - cpStrings.length} + ${cpStrings.length} of code points)`;
  console.log(`prepared ${kinds}, reference ids of LLaMA 3 (tiktoken) and LLaMA 2 ` +
              `(llama-tokenizer-js) in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
}

function show(s, max = 120) {
  const j = JSON.stringify(s);
  return j.length > max ? `${j.slice(0, max)}... (${Array.from(s).length} chars)` : j;
}

function compare(label, expectedFile, gotFile, stringsFile) {
  const expected = readJsonl(expectedFile);
  const got = readJsonl(gotFile);
  const strings = readJsonl(stringsFile);
  if (got.length !== expected.length) {
    console.log(`${label}: ${got.length} lines from harness, ${expected.length} expected`);
    return 1;
  }
  let mismatches = 0;
  for (let i = 0; i < expected.length; i++) {
    const a = JSON.stringify(expected[i]);
    const b = JSON.stringify(got[i]);
    if (a === b) continue;
    if (++mismatches <= 10) {
      console.log(`${label}: MISMATCH at string ${i}: ${show(strings[i])}`);
      if (typeof expected[i] === 'string') {
        console.log(`  expected ${show(expected[i])}\n  got      ${show(got[i])}`);
      } else {
        let k = 0;
        while (k < expected[i].length && expected[i][k] === got[i][k]) k++;
        console.log(`  first difference at id ${k}:` +
                    `\n  expected ${JSON.stringify(expected[i].slice(Math.max(0, k - 3), k + 8))}` +
                    `\n  got      ${JSON.stringify(got[i].slice(Math.max(0, k - 3), k + 8))}`);
      }
    }
  }
  console.log(`${label}: ${expected.length} strings, ${mismatches} mismatches`);
  return mismatches === 0 ? 0 : 1;
}

const [cmd, ...args] = process.argv.slice(2);
if (cmd === 'prepare' && args.length === 1) {
  await prepare(args[0]);
} else if (cmd === 'compare' && args.length === 4) {
  process.exitCode = compare(...args);
} else {
  console.error('usage: crosscheck.mjs prepare WORK | compare LABEL EXPECTED GOT STRINGS');
  process.exitCode = 2;
}
