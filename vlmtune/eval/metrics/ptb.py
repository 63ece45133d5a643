"""A pure-Python stand-in for the COCO caption tokenizer, for machines without Java.

It approximates salaniz/pycocoevalcap `tokenizer/ptbtokenizer.py` (installed as
`pycocoevalcap/tokenizer/ptbtokenizer.py`): Stanford CoreNLP 3.4.1's `PTBTokenizer` run with `-preserveLines
-lowerCase`, then the wrapper's list of punctuation tokens dropped.
"""

from __future__ import annotations

import re

# Tokens pycocoevalcap's PTBTokenizer wrapper drops. quirk: CoreNLP lower-cases "-LRB-" to "-lrb-" first, so bracket
# tokens survive in the tokenised captions.
_PTB_DROP = frozenset({"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--",
                       "...", ";"})
_PTB_BRACKETS = {"(": "-LRB-", ")": "-RRB-", "[": "-LSB-", "]": "-RSB-", "{": "-LCB-", "}": "-RCB-"}
_PTB_SEPARATORS_RE = re.compile(r"(\.\.\.+|--+|(?<!\d)[,:]|[,:](?!\d))")  # "1,000" and "3:45" stay whole
_PTB_ABBREVIATIONS = frozenset({
    "mr", "mrs", "ms", "dr", "st", "jr", "sr", "vs", "etc", "inc", "ft", "co", "corp", "ltd", "prof", "mt",
    "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec",
})
_PTB_ACRONYM_RE = re.compile(r"^(?:[A-Za-z]\.|(?:[A-Za-z]+\.){2,})$")  # "a.", "u.s.a.", "e.g.", "ph.d."
_PTB_APOSTROPHE_WORDS = frozenset({"'s", "'em", "'cause", "'tis", "'twas", "'n'", "'ll", "'re", "'ve", "'d", "'m"})
_PTB_SPLIT_WORDS = {
    "cannot": ("can", "not"), "gonna": ("gon", "na"), "gotta": ("got", "ta"), "wanna": ("wan", "na"),
    "lemme": ("lem", "me"), "gimme": ("gim", "me"),
}
_PTB_CLITIC_RE = re.compile(r"(?i)^(.+?)(n't|'s|'m|'re|'ve|'ll|'d)$")
_PTB_CURRENCY = {"$": "$", "#": "#", "£": "#", "€": "$", "¥": "$"}  # CoreNLP normalizeCurrency


def _ptb_core(word: str) -> list[str]:
    """Split contractions and a few fused words the way CoreNLP's PTB lexer does."""
    fused = _PTB_SPLIT_WORDS.get(word.lower())
    if fused:
        return [word[: len(fused[0])], word[len(fused[0]) :]]
    if len(word) > 2 and word[:2].lower() == "y'":
        return [word[:2], word[2:]]
    match = _PTB_CLITIC_RE.match(word)
    return [match.group(1), match.group(2)] if match else [word]


def _ptb_piece(piece: str) -> list[str]:
    lead: list[str] = []
    trail: list[str] = []
    while piece:
        if piece.startswith("``"):
            lead.append("``")
            piece = piece[2:]
        elif piece[0] in '"`':
            lead.append("``")
            piece = piece[1:]
        elif piece[0] == "'" and len(piece) > 1 and piece.lower() not in _PTB_APOSTROPHE_WORDS \
                and not piece[1].isdigit():
            lead.append("`")
            piece = piece[1:]
        elif piece[0] in _PTB_CURRENCY and piece[1:2].isdigit():
            lead.append(_PTB_CURRENCY[piece[0]])
            piece = piece[1:]
        else:
            break
    while len(piece) > 1:
        bangs = re.search(r"[!?]+$", piece)
        if piece.endswith("''"):
            trail.insert(0, "''")
            piece = piece[:-2]
        elif piece[-1] in "\"'" and piece.lower() not in _PTB_APOSTROPHE_WORDS:
            trail.insert(0, "''")
            piece = piece[:-1]
        elif bangs and bangs.start() > 0:
            trail.insert(0, bangs.group())
            piece = piece[: bangs.start()]
        elif piece[-1] in ",;:%":
            trail.insert(0, piece[-1])
            piece = piece[:-1]
        elif piece[-1] == "-" and piece[-2].isalnum():
            trail.insert(0, "-")
            piece = piece[:-1]
        elif piece[-1] == "." and piece[:-1].lower() not in _PTB_ABBREVIATIONS and not _PTB_ACRONYM_RE.match(piece):
            trail.insert(0, ".")
            piece = piece[:-1]
        else:
            break
    return lead + (_ptb_core(piece) if piece else []) + trail


def ptb_tokenize(text: str) -> str:
    """Pure-Python approximation of pycocoevalcap's ``PTBTokenizer`` (CoreNLP 3.4.1 ``-preserveLines -lowerCase``
    followed by dropping punctuation tokens), used only when Java is unavailable.

    It reproduces the Java tokenizer on ordinary captions (lower-casing, punctuation removal, ``'s``/``n't``
    splitting, ``$``/``%`` splitting, brackets -> ``-lrb-``...), but not every corner of CoreNLP's lexer (emoticons,
    some abbreviations); scores computed from it are flagged with a warning by :func:`caption_scores`.
    """
    tokens: list[str] = []
    for chunk in text.replace("\n", " ").split():
        for part in re.split(r"([()\[\]{}])", chunk):
            if part in _PTB_BRACKETS:
                tokens.append(_PTB_BRACKETS[part])
                continue
            for piece in _PTB_SEPARATORS_RE.split(part):
                if not piece:
                    continue
                tokens.extend([piece] if _PTB_SEPARATORS_RE.fullmatch(piece) else _ptb_piece(piece))
    lowered = (t.lower() for t in tokens)
    return " ".join(t for t in lowered if t and t not in _PTB_DROP)
