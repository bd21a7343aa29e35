"""Prompt-to-Prompt attention control on a tiny random UNet with the real CLIP vocabulary."""

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention
from transformers import CLIPTokenizer

from sam_edit.alignment import refine_mapper, replace_mapper
from sam_edit.attention import AttentionControlConfig, PromptToPrompt, PromptToPromptAttnProcessor
from sam_edit.errors import SameditError
from sam_edit.models.configs import TINY_TEXT_DIM, TINY_UNET
from sam_edit.models.vocab import write_clip_tokenizer

LATENT_SIZE = 16  # levels 16, 8, 4, 2; the tiny UNet has attention at 8, 4 and 2
NUM_STEPS = 4
NO_EDIT = AttentionControlConfig(cross_replace=0.0, self_replace=0.0)

# The tiny UNet has no attention at full latent size; this variant has, to test that level.
TOP_ATTENTION_UNET = dict(
    TINY_UNET,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    folder = write_clip_tokenizer(tmp_path_factory.mktemp("clip_tokenizer"))
    return CLIPTokenizer.from_pretrained(folder)


def make_unet(config=TINY_UNET):
    torch.manual_seed(0)
    return UNet2DConditionModel(**config).eval()


@pytest.fixture(scope="module")
def unet():
    return make_unet()


def make_inputs(batch_size=4, size=LATENT_SIZE, seed=1):
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch_size, 4, size, size, generator=generator)  # [B, 4, h, w]
    prompt_embeds = torch.randn(batch_size, 77, TINY_TEXT_DIM, generator=generator)  # [B, 77, 32]
    return latents, prompt_embeds


@torch.no_grad()
def predict(unet, latents, prompt_embeds, controller=None, step=0):
    if controller is None:
        return unet(latents, 500, encoder_hidden_states=prompt_embeds).sample
    with controller.attach(unet):
        controller.set_step(step)
        return unet(latents, 500, encoder_hidden_states=prompt_embeds).sample


def make_controller(tokenizer, config=AttentionControlConfig(), **prompts):
    arguments = dict(
        source_prompt="a photo of a cat",
        target_prompt="a photo of a tiger",
        source_words="cat",
        target_words="tiger",
    )
    arguments.update(prompts)
    return PromptToPrompt(tokenizer, num_steps=NUM_STEPS, config=config, **arguments)


def capture(module):
    """Record the inputs and output of every call of an attention module."""
    calls = []

    def hook(_, args, kwargs, output):
        hidden_states = args[0] if args else kwargs["hidden_states"]
        calls.append((hidden_states, kwargs.get("encoder_hidden_states"), output))

    return calls, module.register_forward_hook(hook, with_kwargs=True)


def reference_attention(attn, hidden_states, context=None, edit=None):
    """Compute an attention layer's output from explicit probabilities, optionally edited."""
    context = hidden_states if context is None else context

    def split_heads(tensor):
        return tensor.unflatten(-1, (attn.heads, -1)).transpose(1, 2)  # [B, heads, N, d]

    query = split_heads(attn.to_q(hidden_states))
    key = split_heads(attn.to_k(context))
    value = split_heads(attn.to_v(context))
    probs = (query @ key.transpose(-1, -2) * attn.scale).softmax(dim=-1)
    if edit is not None:
        probs = edit(probs)
    output = (probs @ value).transpose(1, 2).flatten(2)
    return attn.to_out[0](output)


def test_attach_installs_and_restores(tokenizer, unet):
    before = unet.attn_processors
    controller = make_controller(tokenizer)
    with controller.attach(unet) as attached:
        assert attached is controller
        inside = unet.attn_processors
        assert all(isinstance(p, PromptToPromptAttnProcessor) for p in inside.values())
    after = unet.attn_processors
    assert after.keys() == before.keys()
    assert all(after[name] is before[name] for name in before)


def test_attach_restores_after_error(tokenizer, unet):
    before = unet.attn_processors
    controller = make_controller(tokenizer)
    with pytest.raises(RuntimeError, match="inside the block"):
        with controller.attach(unet):
            raise RuntimeError("inside the block")
    after = unet.attn_processors
    assert all(after[name] is before[name] for name in before)


def test_no_edit_config_matches_default(tokenizer, unet):
    latents, prompt_embeds = make_inputs()
    expected = predict(unet, latents, prompt_embeds)
    controller = make_controller(tokenizer, NO_EDIT)
    actual = predict(unet, latents, prompt_embeds, controller)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch_size", [1, 3])
def test_other_batch_sizes_pass_through(tokenizer, unet, batch_size):
    latents, prompt_embeds = make_inputs(batch_size)
    expected = predict(unet, latents, prompt_embeds)
    config = AttentionControlConfig(cross_replace=1.0, self_replace=1.0, reweight=2.0)
    actual = predict(unet, latents, prompt_embeds, make_controller(tokenizer, config))
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch_size", [2, 4])
def test_only_target_cond_row_changes(tokenizer, unet, batch_size):
    latents, prompt_embeds = make_inputs(batch_size)
    expected = predict(unet, latents, prompt_embeds)
    config = AttentionControlConfig(cross_replace=1.0, self_replace=1.0, reweight=2.0)
    actual = predict(unet, latents, prompt_embeds, make_controller(tokenizer, config))
    torch.testing.assert_close(actual[:-1], expected[:-1], rtol=1e-5, atol=1e-5)
    assert (actual[-1] - expected[-1]).abs().max() > 1e-3


@pytest.mark.parametrize("mode", ["replace", "refine"])
def test_same_prompt_gives_same_rows(tokenizer, unet, mode):
    latents, prompt_embeds = make_inputs(2)
    latents = latents[[0, 0, 1, 1]]  # [uncond src, uncond tgt, cond src, cond tgt]
    prompt_embeds = prompt_embeds[[0, 0, 1, 1]]
    controller = make_controller(
        tokenizer,
        AttentionControlConfig(mode=mode),
        target_prompt="a photo of a cat",
        target_words="cat",
    )
    for step in range(NUM_STEPS):
        noise_pred = predict(unet, latents, prompt_embeds, controller, step)
        torch.testing.assert_close(noise_pred[3], noise_pred[2], rtol=0, atol=1e-6)
        torch.testing.assert_close(noise_pred[1], noise_pred[0], rtol=0, atol=1e-6)


def test_auto_mode_by_word_count(tokenizer):
    assert make_controller(tokenizer).mode == "replace"
    refine = make_controller(
        tokenizer, target_prompt="a photo of a striped tiger", target_words="striped tiger"
    )
    assert refine.mode == "refine"


def check_cross_attention_edit(unet, controller, edit_target, layer):
    """Check one cross-attention layer's output against explicitly edited probabilities."""
    attn = unet.get_submodule(layer)
    latents, prompt_embeds = make_inputs()
    calls, handle = capture(attn)
    try:
        predict(unet, latents, prompt_embeds, controller, step=0)  # inside the replace window
        predict(unet, latents, prompt_embeds, controller, step=NUM_STEPS - 1)  # after it
    finally:
        handle.remove()

    def edit(probs):
        probs = probs.clone()
        probs[3] = edit_target(probs[2], probs[3])
        return probs

    with torch.no_grad():
        inside_states, inside_context, inside_output = calls[0]
        after_states, after_context, after_output = calls[1]
        edited = reference_attention(attn, inside_states, inside_context, edit)
        unedited = reference_attention(attn, inside_states, inside_context)
        torch.testing.assert_close(inside_output, edited, rtol=1e-5, atol=1e-5)
        assert (edited[3] - unedited[3]).abs().max() > 1e-4  # the edit is visible
        plain = reference_attention(attn, after_states, after_context)
        torch.testing.assert_close(after_output, plain, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "layer",
    [
        "down_blocks.1.attentions.0.transformer_blocks.0.attn2",  # 8x8
        "up_blocks.1.attentions.1.transformer_blocks.0.attn2",  # 4x4, the local-blend level
    ],
)
def test_cross_attention_replace(tokenizer, unet, layer):
    prompts = dict(
        source_prompt="a photo of a cat sitting",
        target_prompt="a photo of a dragonfruit sitting",
        source_words="cat",
        target_words="dragonfruit",
    )
    config = AttentionControlConfig(cross_replace=0.5, self_replace=0.0, mode="replace")
    controller = make_controller(tokenizer, config, **prompts)
    mapper = replace_mapper(tokenizer, prompts["source_prompt"], prompts["target_prompt"])
    check_cross_attention_edit(unet, controller, lambda source, target: source @ mapper, layer)


def test_cross_attention_refine_with_reweight(tokenizer, unet):
    prompts = dict(
        source_prompt="a bowl of fruit",
        target_prompt="a bowl of chocolate candy",
        source_words="fruit",
        target_words="chocolate candy",
    )
    config = AttentionControlConfig(cross_replace=0.5, self_replace=0.0, reweight=2.0)
    controller = make_controller(tokenizer, config, **prompts)
    assert controller.mode == "refine"
    mapper, alphas = refine_mapper(tokenizer, prompts["source_prompt"], prompts["target_prompt"])
    equalizer = torch.ones(77)
    equalizer[[4, 5]] = 2.0  # chocolate, candy

    def edit_target(source, target):
        aligned = source[..., mapper.clamp(min=0)]
        return (aligned * alphas + target * (1 - alphas)) * equalizer

    layer = "down_blocks.2.attentions.0.transformer_blocks.0.attn2"
    check_cross_attention_edit(unet, controller, edit_target, layer)


def test_self_attention_takes_source_probabilities(tokenizer, unet):
    attn = unet.get_submodule("down_blocks.1.attentions.0.transformer_blocks.0.attn1")
    latents, prompt_embeds = make_inputs()
    config = AttentionControlConfig(cross_replace=0.0, self_replace=0.5)
    controller = make_controller(tokenizer, config)
    calls, handle = capture(attn)
    try:
        predict(unet, latents, prompt_embeds, controller, step=1)  # inside the window
        predict(unet, latents, prompt_embeds, controller, step=2)  # after it
    finally:
        handle.remove()

    def copy_source(probs):
        probs = probs.clone()
        probs[3] = probs[2]
        return probs

    with torch.no_grad():
        (inside_states, _, inside_output), (after_states, _, after_output) = calls
        expected = reference_attention(attn, inside_states, edit=copy_source)
        torch.testing.assert_close(inside_output, expected, rtol=1e-5, atol=1e-5)
        unedited = reference_attention(attn, inside_states)
        assert (expected[3] - unedited[3]).abs().max() > 1e-4
        plain = reference_attention(attn, after_states)
        torch.testing.assert_close(after_output, plain, rtol=1e-5, atol=1e-5)


def record_explicit_attention(monkeypatch):
    """Record (queries, keys) of every explicit attention-probability computation."""
    shapes = []
    original = Attention.get_attention_scores

    def recording(self, query, key, attention_mask=None):
        shapes.append((query.shape[1], key.shape[1]))
        return original(self, query, key, attention_mask)

    monkeypatch.setattr(Attention, "get_attention_scores", recording)
    return shapes


def test_top_self_attention_never_materialised(tokenizer, monkeypatch):
    unet = make_unet(TOP_ATTENTION_UNET)
    # Attention at 8x8 (64 queries), 4x4 (16) and in the mid block at 1x1; the blend level is 4x4.
    latents, prompt_embeds = make_inputs(size=8)
    top_attn = unet.get_submodule("down_blocks.0.attentions.0.transformer_blocks.0.attn1")
    config = AttentionControlConfig(cross_replace=0.5, self_replace=1.0)
    controller = make_controller(tokenizer, config)
    shapes = record_explicit_attention(monkeypatch)
    calls, handle = capture(top_attn)
    try:
        predict(unet, latents, prompt_embeds, controller, step=0)
        inside_window = list(shapes)
        shapes.clear()
        predict(unet, latents, prompt_embeds, controller, step=NUM_STEPS - 1)
    finally:
        handle.remove()

    # Cross-attention only (77 keys): every level inside the window, the blend level after it.
    assert set(inside_window) == {(1, 77), (16, 77), (64, 77)}
    assert set(shapes) == {(16, 77)}
    # The top level's self-attention is not replaced either.
    with torch.no_grad():
        states, _, output = calls[0]
        plain = reference_attention(top_attn, states)
        torch.testing.assert_close(output, plain, rtol=1e-5, atol=1e-5)


def run_steps(unet, controller, steps):
    latents, prompt_embeds = make_inputs()
    for step in steps:
        predict(unet, latents, prompt_embeds, controller, step)


def test_local_blend_keeps_source_outside_mask(tokenizer, unet):
    config = AttentionControlConfig(blend_start=0.5)  # blend from step 2 of 4
    controller = make_controller(tokenizer, config)
    run_steps(unet, controller, range(3))
    generator = torch.Generator().manual_seed(2)
    latents = torch.randn(2, 4, LATENT_SIZE, LATENT_SIZE, generator=generator)

    blended = controller.local_blend(latents, 2)
    mask = controller.blend_mask
    assert mask.shape == (LATENT_SIZE, LATENT_SIZE)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert mask.any()
    assert torch.equal(blended[0], latents[0])
    inside = mask.bool()
    torch.testing.assert_close(blended[1][:, inside], latents[1][:, inside])
    assert torch.equal(blended[1][:, ~inside], latents[0][:, ~inside])
    # maps of the 4x4 level, nearest-upsampled by 4
    blocks = mask[::4, ::4].repeat_interleave(4, dim=0).repeat_interleave(4, dim=1)
    assert torch.equal(mask, blocks)


def test_local_blend_before_start_returns_input(tokenizer, unet):
    controller = make_controller(tokenizer, AttentionControlConfig(blend_start=0.5))
    latents = torch.randn(2, 4, LATENT_SIZE, LATENT_SIZE)
    assert controller.local_blend(latents, NUM_STEPS - 1) is latents  # no maps stored yet
    assert controller.blend_mask is None
    run_steps(unet, controller, range(2))
    assert controller.local_blend(latents, 1) is latents
    assert controller.blend_mask is None


@pytest.mark.parametrize("threshold, covered", [(0.0, 1.0), (1.0, 0.0)])
def test_local_blend_threshold_extremes(tokenizer, unet, threshold, covered):
    controller = make_controller(tokenizer, AttentionControlConfig(blend_threshold=threshold))
    run_steps(unet, controller, range(2))
    latents = torch.randn(2, 4, LATENT_SIZE, LATENT_SIZE)
    blended = controller.local_blend(latents, 1)
    assert controller.blend_mask.mean().item() == covered
    expected = latents[1] if covered else latents[0]
    torch.testing.assert_close(blended[1], expected)


@pytest.mark.parametrize(
    "prompts, word",
    [
        (dict(source_words="dog"), "dog"),
        (dict(target_words="tigers"), "tigers"),
    ],
)
def test_missing_blend_word_raises(tokenizer, prompts, word):
    with pytest.raises(SameditError, match=f"`{word}`.*a photo of a"):
        make_controller(tokenizer, **prompts)


def test_replace_mode_needs_same_word_count(tokenizer):
    with pytest.raises(SameditError, match="same number of words"):
        make_controller(
            tokenizer,
            AttentionControlConfig(mode="replace"),
            target_prompt="a photo of a striped tiger",
        )


@pytest.mark.parametrize(
    "config",
    [
        AttentionControlConfig(cross_replace=1.5),
        AttentionControlConfig(blend_threshold=-0.1),
        AttentionControlConfig(mode="swap"),
        AttentionControlConfig(reweight=0.0),
    ],
)
def test_invalid_config_raises(tokenizer, config):
    with pytest.raises(SameditError):
        make_controller(tokenizer, config)


def test_set_step_out_of_range_raises(tokenizer):
    controller = make_controller(tokenizer)
    with pytest.raises(ValueError, match="outside"):
        controller.set_step(NUM_STEPS)



def test_local_blend_mask_from_known_maps(tokenizer):
    controller = make_controller(tokenizer)  # cat and tiger are token 5 of their prompts
    # White-box: store hand-made 4x4 maps [2, 16 queries, 77 tokens] in place of the UNet's.
    maps = torch.zeros(2, 16, 77)
    maps[0, 0, 5] = 1.0  # source "cat" at pixel (0, 0)
    maps[0, 15, 2] = 5.0  # source "photo" is no blend word
    maps[1, 15, 5] = 1.0  # target "tiger" at pixel (3, 3)
    maps[1, 12, 5] = 0.2  # below the 0.3 threshold at pixel (3, 0)
    controller._blend_maps = maps
    controller._blend_map_count = 1
    latents = torch.randn(2, 4, LATENT_SIZE, LATENT_SIZE)
    controller.local_blend(latents, NUM_STEPS - 1)

    # each peak dilated by the 3x3 max-pool, then the union, nearest-upsampled by 4
    expected = torch.zeros(4, 4)
    expected[0:2, 0:2] = 1.0
    expected[2:4, 2:4] = 1.0
    expected = expected.repeat_interleave(4, dim=0).repeat_interleave(4, dim=1)
    assert torch.equal(controller.blend_mask, expected)
