"""Rebuild the CLIP BPE tokenizer files offline from the merges list in `open_clip_torch`.

The tiny model set must tokenize exactly as the real models do, so that token counts and
Prompt-to-Prompt word alignment behave the same. OpenAI's CLIP vocabulary is fully determined
by its merges list: 256 byte symbols, the same symbols with the end-of-word marker `</w>`,
one token per merge, then the two special tokens (49,408 ids in all).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

from sam_edit.errors import SameditError

NUM_MERGES = 49152 - 256 - 2  # merges used by CLIP's tokenizer (open_clip `SimpleTokenizer`)
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
MERGES_FILE = "bpe_simple_vocab_16e6.txt.gz"  # inside the `open_clip` package


def bytes_to_unicode() -> dict[int, str]:
    """Map every byte to a printable unicode character, as GPT-2 and CLIP do."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    offset = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + offset)
            offset += 1
    return dict(zip(printable, (chr(code) for code in codes)))


def clip_merges_path() -> Path:
    """Return the CLIP merges file inside the installed `open_clip_torch` package.

    The package is located without importing it. Raises `SameditError` naming the package when
    it or the file is missing.
    """
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise SameditError(
            "the tiny model set needs the package `open_clip_torch` for the CLIP merges file, "
            "and it is not installed; install it with `pip install open_clip_torch`"
        )
    path = Path(spec.submodule_search_locations[0]) / MERGES_FILE
    if not path.is_file():
        raise SameditError(
            f"the tiny model set needs `{path}`, which the installed `open_clip_torch` lacks; "
            "reinstall it with `pip install --force-reinstall open_clip_torch`"
        )
    return path


def read_clip_merges() -> list[str]:
    """Read CLIP's BPE merges from the file shipped inside the `open_clip_torch` wheel."""
    with gzip.open(clip_merges_path(), "rt", encoding="utf-8") as handle:
        lines = handle.read().split("\n")
    # The first line is a version header, as in every BPE merges file.
    return lines[1 : NUM_MERGES + 1]


def write_clip_tokenizer(folder: Path, model_max_length: int = 77) -> Path:
    """Write `vocab.json`, `merges.txt` and `tokenizer_config.json` for `CLIPTokenizer`.

    Returns the folder, which `transformers.CLIPTokenizer.from_pretrained` then loads.
    """
    merges = read_clip_merges()
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [symbol + "</w>" for symbol in symbols]
    tokens += ["".join(merge.split()) for merge in merges]
    tokens += [BOS_TOKEN, EOS_TOKEN]
    vocab = {token: index for index, token in enumerate(tokens)}

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    # transformers drops the first line of merges.txt as a header, so one must be there.
    merges_text = "#version: 0.2\n" + "\n".join(merges) + "\n"
    (folder / "merges.txt").write_text(merges_text, encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": model_max_length,
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "unk_token": EOS_TOKEN,
        "pad_token": EOS_TOKEN,
        "do_lower_case": True,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return folder
