"""Token alignment for Prompt-to-Prompt, checked with the real CLIP vocabulary."""

import pytest
import torch
from transformers import CLIPTokenizer

from sam_edit.alignment import align_tokens, refine_mapper, replace_mapper, word_token_indices
from sam_edit.errors import SameditError
from sam_edit.models.vocab import write_clip_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    folder = write_clip_tokenizer(tmp_path_factory.mktemp("clip_tokenizer"))
    return CLIPTokenizer.from_pretrained(folder)


def test_vocabulary_is_clip(tokenizer):
    assert tokenizer.encode("cat", add_special_tokens=False) == [2368]
    assert tokenizer.model_max_length == 77


def test_word_indices_single_word(tokenizer):
    # <bos> a photo of a cat <eos>
    assert word_token_indices(tokenizer, "a photo of a cat", "cat") == [5]
    assert word_token_indices(tokenizer, "a photo of a cat", "a") == [1, 4]


def test_word_indices_case_and_punctuation(tokenizer):
    prompt = "A Cat, sitting on a mat."
    ids = tokenizer(prompt).input_ids
    positions = word_token_indices(tokenizer, prompt, "cat")
    assert positions == [2]
    assert ids[2] == 2368
    assert word_token_indices(tokenizer, prompt, "MAT") == [7]
    assert tokenizer.convert_ids_to_tokens(ids[7]) == "mat</w>"


def test_word_indices_exact_word_only(tokenizer):
    assert word_token_indices(tokenizer, "a photo of a cats", "cat") == []
    assert word_token_indices(tokenizer, "a photo of a cat", "dog") == []
    assert word_token_indices(tokenizer, "a photo of a cat", "") == []


def test_word_indices_split_word(tokenizer):
    prompt = "a photo of a dragonfruit"
    ids = tokenizer(prompt).input_ids
    positions = word_token_indices(tokenizer, prompt, "dragonfruit")
    assert positions == [5, 6]
    assert tokenizer.convert_ids_to_tokens([ids[5], ids[6]]) == ["dragon", "fruit</w>"]


def test_word_indices_phrase(tokenizer):
    prompt = "a bowl of chocolate candy"
    assert word_token_indices(tokenizer, prompt, "chocolate candy") == [4, 5]
    assert word_token_indices(tokenizer, prompt, "candy chocolate") == []


def test_word_indices_beyond_truncation(tokenizer):
    prompt = " ".join(["a"] * 80) + " cat"
    assert word_token_indices(tokenizer, prompt, "cat") == []
    assert word_token_indices(tokenizer, prompt, "a")[-1] == 75


def test_align_tokens_skips_mismatches():
    assert align_tokens([1, 2, 3, 9], [1, 2, 4, 5, 9]) == [0, 1, -1, -1, 3]
    assert align_tokens([1, 2], [1, 2]) == [0, 1]
    assert align_tokens([7], [8]) == [-1]


def test_refine_mapper_word_by_word(tokenizer):
    mapper, alphas = refine_mapper(tokenizer, "a bowl of fruit", "a bowl of chocolate candy")
    assert mapper.shape == (77,)
    assert mapper.dtype == torch.long
    assert alphas.shape == (77,)
    # target: <bos> a bowl of chocolate candy <eos>; source: <bos> a bowl of fruit <eos>
    assert mapper[:4].tolist() == [0, 1, 2, 3]
    assert alphas[:4].tolist() == [1.0, 1.0, 1.0, 1.0]
    assert mapper[4:6].tolist() == [-1, -1]
    assert alphas[4:6].tolist() == [0.0, 0.0]
    assert mapper[6].item() == 5  # EOS to EOS
    assert alphas[6].item() == 1.0
    # k-th padding token to k-th padding token
    assert mapper[7:10].tolist() == [6, 7, 8]
    assert mapper[-1].item() == 75
    assert bool((alphas[6:] == 1).all())


def test_refine_mapper_identical_prompts(tokenizer):
    mapper, alphas = refine_mapper(tokenizer, "a photo of a cat", "a photo of a cat")
    assert torch.equal(mapper, torch.arange(77))
    assert torch.equal(alphas, torch.ones(77))


def test_refine_mapper_shorter_target(tokenizer):
    mapper, alphas = refine_mapper(tokenizer, "a bowl of chocolate candy", "a bowl of fruit")
    assert mapper[:4].tolist() == [0, 1, 2, 3]
    assert mapper[4].item() == -1  # fruit is new
    assert alphas[4].item() == 0.0
    assert mapper[5].item() == 6  # EOS to EOS
    assert mapper[6].item() == 7
    # the source has one padding token fewer: the last two target positions share the last one
    assert mapper[-2:].tolist() == [76, 76]


def test_replace_mapper_swap_same_token_count(tokenizer):
    mapper = replace_mapper(tokenizer, "a photo of a cat", "a photo of a tiger")
    assert mapper.shape == (77, 77)
    assert torch.equal(mapper, torch.eye(77))


def test_replace_mapper_word_split_in_two(tokenizer):
    source, target = "a photo of a cat sitting", "a photo of a dragonfruit sitting"
    mapper = replace_mapper(tokenizer, source, target)
    # source: <bos> a photo of a cat sitting <eos>; target: ... dragon fruit sitting <eos>
    assert torch.equal(mapper[:5, :5], torch.eye(5))
    assert mapper[5, 5].item() == 0.5
    assert mapper[5, 6].item() == 0.5
    assert mapper[6, 7].item() == 1.0  # sitting
    assert mapper[7, 8].item() == 1.0  # EOS
    assert mapper[8, 9].item() == 1.0  # first padding
    assert mapper[75, 76].item() == 1.0
    # each source token hands on all its attention; the last source padding token has no slot
    assert torch.allclose(mapper[:76].sum(dim=1), torch.ones(76))
    assert mapper[76].sum().item() == 0.0


def test_replace_mapper_two_tokens_into_one(tokenizer):
    mapper = replace_mapper(tokenizer, "a photo of a dragonfruit", "a photo of a cat")
    assert mapper[5, 5].item() == 1.0
    assert mapper[6, 5].item() == 1.0
    assert mapper[7, 6].item() == 1.0  # EOS


def test_replace_mapper_word_count_differs(tokenizer):
    with pytest.raises(SameditError, match="same number of words"):
        replace_mapper(tokenizer, "a bowl of fruit", "a bowl of chocolate candy")
