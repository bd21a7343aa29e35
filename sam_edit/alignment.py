"""Token-level alignment of a source and a target prompt for Prompt-to-Prompt.

Prompt-to-Prompt edits the target prompt's cross-attention maps from the source prompt's, so
it needs to know which target token corresponds to which source token:

- `replace_mapper` (word swap): prompts with the same number of words, matched word by word.
- `refine_mapper` (prompts of any length): a global (Needleman-Wunsch) alignment of the two
  token-id sequences with gap 0, match +1 and mismatch -1, as in Hertz et al.,
  "Prompt-to-Prompt Image Editing with Cross Attention Control" (2022).
- `word_token_indices`: the token positions of a word or phrase, for local blend and reweighting.

Token positions count the BOS token, so the first word token is position 1; positions run up to
`max_length - 1` (77 for CLIP), where the padded prompt embedding ends.
"""

from __future__ import annotations

import logging
import unicodedata

import torch

from sam_edit.errors import SameditError

logger = logging.getLogger(__name__)

MAX_LENGTH = 77  # CLIP text encoder context length in SD 1.x

# Needleman-Wunsch scores used by Prompt-to-Prompt's refinement alignment.
MATCH_SCORE = 1
MISMATCH_SCORE = -1
GAP_SCORE = 0


def _strip_punctuation(word: str) -> str:
    """Lower-case a word and strip leading and trailing punctuation ("Cat," -> "cat")."""
    start, end = 0, len(word)
    while start < end and unicodedata.category(word[start]).startswith("P"):
        start += 1
    while end > start and unicodedata.category(word[end - 1]).startswith("P"):
        end -= 1
    return word[start:end].lower()


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False).input_ids)


def _prompt_words(tokenizer, prompt: str) -> list[tuple[str, list[int]]]:
    """Split a prompt on whitespace and return each word with the ids of its BPE tokens.

    CLIP's pre-tokenizer never merges across whitespace, so the words' ids concatenate to the
    ids of the whole prompt. A tokenizer that breaks this gets a warning because positions
    would then be wrong.
    """
    words = [(word, _encode(tokenizer, word)) for word in prompt.split()]
    joined = [token for _, ids in words for token in ids]
    if joined != _encode(tokenizer, prompt):
        logger.warning(
            "tokenizing `%s` word by word differs from tokenizing it whole; "
            "Prompt-to-Prompt token positions may be off",
            prompt,
        )
    return words


def _core_offsets(tokenizer, word: str, ids: list[int]) -> list[int]:
    """Return the offsets, within a word's tokens, of the word without its punctuation."""
    core_ids = _encode(tokenizer, _strip_punctuation(word))
    for start in range(len(ids) - len(core_ids) + 1):
        if core_ids and ids[start : start + len(core_ids)] == core_ids:
            return list(range(start, start + len(core_ids)))
    # Punctuation merged into the word's tokens (CLIP reads "'sun'" as 's + un + '), so the
    # whole word is the closest match.
    return list(range(len(ids)))


def word_token_indices(
    tokenizer, prompt: str, words: str, max_length: int = MAX_LENGTH
) -> list[int]:
    """Find the token positions of a word or phrase in a prompt.

    Words match whole space-separated words of the prompt, ignoring case and leading or trailing
    punctuation; a phrase of several words must appear as consecutive words. Every occurrence is
    returned, without the tokens of the stripped punctuation.

    Returns:
        Sorted positions in the padded token sequence (BOS is position 0), empty when the words
        do not occur or fall beyond the `max_length` tokens the text encoder reads.
    """
    phrase = [_strip_punctuation(word) for word in words.split()]
    phrase = [word for word in phrase if word]
    prompt_words = _prompt_words(tokenizer, prompt)
    if not phrase:
        return []

    starts = [1]  # position of each word's first token; BOS is position 0
    for _, ids in prompt_words:
        starts.append(starts[-1] + len(ids))
    normalized = [_strip_punctuation(word) for word, _ in prompt_words]

    positions: set[int] = set()
    for first in range(len(prompt_words) - len(phrase) + 1):
        if normalized[first : first + len(phrase)] != phrase:
            continue
        for index in range(first, first + len(phrase)):
            word, ids = prompt_words[index]
            offsets = _core_offsets(tokenizer, word, ids)
            positions.update(starts[index] + offset for offset in offsets)
    last_word_position = max_length - 2  # the truncated prompt ends with EOS at max_length - 1
    return sorted(position for position in positions if position <= last_word_position)


def _padding_source(target_position: int, source_eos: int, target_eos: int, max_length: int) -> int:
    """Return the source position for a target EOS or padding position: the same padding slot."""
    return min(source_eos + target_position - target_eos, max_length - 1)


def align_tokens(source_ids: list[int], target_ids: list[int]) -> list[int]:
    """Align two token-id sequences globally (Needleman-Wunsch, gap 0, match +1, mismatch -1).

    Returns:
        For each target token, the index of the source token it is aligned with, or -1 for a
        target token with no counterpart. With these scores a mismatch never beats two gaps,
        so aligned tokens always have equal ids.
    """
    rows, cols = len(source_ids) + 1, len(target_ids) + 1
    score = [[0] * cols for _ in range(rows)]
    for i in range(rows):
        score[i][0] = i * GAP_SCORE
    for j in range(cols):
        score[0][j] = j * GAP_SCORE
    for i in range(1, rows):
        for j in range(1, cols):
            pair = MATCH_SCORE if source_ids[i - 1] == target_ids[j - 1] else MISMATCH_SCORE
            score[i][j] = max(
                score[i - 1][j - 1] + pair,
                score[i - 1][j] + GAP_SCORE,
                score[i][j - 1] + GAP_SCORE,
            )

    # Trace back from the end, preferring a diagonal step, then a gap in the target.
    source_index = [-1] * len(target_ids)
    i, j = rows - 1, cols - 1
    while i > 0 and j > 0:
        pair = MATCH_SCORE if source_ids[i - 1] == target_ids[j - 1] else MISMATCH_SCORE
        if score[i][j] == score[i - 1][j - 1] + pair:
            source_index[j - 1] = i - 1
            i, j = i - 1, j - 1
        elif score[i][j] == score[i - 1][j] + GAP_SCORE:
            i -= 1
        else:
            j -= 1
    return source_index


def refine_mapper(
    tokenizer, source_prompt: str, target_prompt: str, max_length: int = MAX_LENGTH
) -> tuple[torch.Tensor, torch.Tensor]:
    """Map each target token to its aligned source token, for prompts of any length.

    BOS and EOS align with each other. The k-th padding token of the target maps to the k-th
    padding token of the source, or to the last position where the source has fewer.

    Returns:
        mapper: [max_length] int64, the source position of each target position, -1 where the
            target token is new.
        alphas: [max_length] float32, 1 where the target token is aligned, 0 where it is new.
    """
    source_ids = list(tokenizer(source_prompt, truncation=True, max_length=max_length).input_ids)
    target_ids = list(tokenizer(target_prompt, truncation=True, max_length=max_length).input_ids)

    mapper = torch.empty(max_length, dtype=torch.long)
    mapper[: len(target_ids)] = torch.tensor(align_tokens(source_ids, target_ids))
    source_eos, target_eos = len(source_ids) - 1, len(target_ids) - 1
    for position in range(len(target_ids), max_length):
        mapper[position] = _padding_source(position, source_eos, target_eos, max_length)
    alphas = (mapper >= 0).float()
    return mapper, alphas


def replace_mapper(
    tokenizer, source_prompt: str, target_prompt: str, max_length: int = MAX_LENGTH
) -> torch.Tensor:
    """Build the word-swap mapper between two prompts with the same number of words.

    Words are paired in order, and a pair with the same number of BPE tokens maps token to
    token. Otherwise every source token of the word maps to every target token of the word with
    weight 1 / (target token count), so the target tokens share the attention equally.

    Returns:
        [max_length, max_length] float32 matrix M with M[source position, target position]; the
        target's cross-attention is then `source_probs @ M`.

    Raises:
        SameditError: the prompts have different word counts.
    """
    source_words = _prompt_words(tokenizer, source_prompt)
    target_words = _prompt_words(tokenizer, target_prompt)
    if len(source_words) != len(target_words):
        raise SameditError(
            f"word-swap (replace) attention control needs prompts with the same number of words, "
            f"got {len(source_words)} in `{source_prompt}` and {len(target_words)} in "
            f"`{target_prompt}`; use mode `refine` for prompts of different lengths"
        )

    last = max_length - 1
    mapper = torch.zeros(max_length, max_length)
    mapper[0, 0] = 1.0  # BOS
    source_start = target_start = 1
    for (_, source_tokens), (_, target_tokens) in zip(source_words, target_words):
        if len(source_tokens) == len(target_tokens):
            pairs = [(source_start + k, target_start + k, 1.0) for k in range(len(source_tokens))]
        elif not target_tokens:
            pairs = []  # a word the tokenizer drops entirely
        else:
            weight = 1.0 / len(target_tokens)
            pairs = [
                (source_start + a, target_start + b, weight)
                for a in range(len(source_tokens))
                for b in range(len(target_tokens))
            ]
        for source_position, target_position, weight in pairs:
            # NOTE: tokens cut by the 77-token limit map nowhere. A target word kept while its
            # source word was cut gets no attention during the replacement steps.
            if source_position < last and target_position < last:
                mapper[source_position, target_position] = weight
        source_start += len(source_tokens)
        target_start += len(target_tokens)

    source_eos, target_eos = min(source_start, last), min(target_start, last)
    for position in range(target_eos, max_length):
        mapper[_padding_source(position, source_eos, target_eos, max_length), position] = 1.0
    return mapper
