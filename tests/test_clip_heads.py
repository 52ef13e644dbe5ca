"""The CLIP heads (CoOp, CLIP-Adapter, Tip-Adapter(-F), CLIP-LoRA's text side) on the tiny CLIP,
and mask tuning's general-knowledge term against a text head's zero-shot classifier."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import images

from adaptbench.adapters import build_adapter
from adaptbench.adapters.base import NotApplicable
from adaptbench.adapters.hooks import LossContext
from adaptbench.adapters.lora import LoRALinear
from adaptbench.adapters.mask_tuning import zero_shot_knowledge_loss
from adaptbench.backbones import load_backbone
from adaptbench.errors import AdaptbenchError
from adaptbench.registry import HEADS
from adaptbench.tasks.catalog import TaskSpec
from adaptbench.tasks.heads import build_head, head_checkpoint_state, load_head_state
from adaptbench.tasks.text_heads import class_text_embeddings

BACKBONE = "clip_tiny_test"  # feature (projected) width 16, text width 32, 2 text blocks, 16 text positions
NAMES = ("cat", "dog", "red panda")  # a two-token name, for the middle and front layouts
TEMPLATE = "a photo of a {}."
CLIP_HEADS = ("coop", "clip_adapter", "tip_adapter", "text_lora")
#: options per head for the conformance checks (CoOp's 16 vectors do not fit 16 text positions)
OPTIONS = {"coop": {"n_ctx": 4}, "clip_adapter": {}, "tip_adapter": {"finetune": True}, "text_lora": {}}


def spec_of(names=NAMES, templates=(TEMPLATE,)) -> TaskSpec:
    return TaskSpec(name="clip_heads_test", kind="classification", format="vtab1k", dataset="x",
                    num_classes=len(names), group="test", description="", class_names=tuple(names),
                    templates=tuple(templates))


@pytest.fixture(scope="module")
def backbone():
    return load_backbone(BACKBONE)


def features(seed: int = 0, batch: int = 5) -> torch.Tensor:
    return torch.randn(batch, 16, generator=torch.Generator().manual_seed(seed))


def zero_shot_logits(backbone, feats: torch.Tensor, template: str = TEMPLATE, names=NAMES) -> torch.Tensor:
    embeddings, scale = class_text_embeddings(backbone, names, (template,))
    return scale * F.normalize(feats, dim=-1) @ embeddings.T


def train_cache(seed: int = 1, per_class: int = 2):
    labels = torch.arange(len(NAMES)).repeat(per_class)
    return features(seed, len(labels)), labels


def head(name: str, backbone, spec=None, **options):
    built = build_head(name, backbone, spec or spec_of(), options={**OPTIONS[name], **options})
    if hasattr(built, "prepare"):
        built.prepare(*train_cache())
    return built


def randomise(module: torch.nn.Module, seed: int = 3) -> None:
    """Seeded values for every trained tensor (LoRA's B starts at 0)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            if param.requires_grad:
                param.add_(0.2 * torch.randn(param.shape, generator=generator))


def trained_names(module: torch.nn.Module) -> set[str]:
    return {name for name, param in module.named_parameters() if param.requires_grad}


# -- conformance over the four heads ------------------------------------------------------------------
def test_registered_with_options_and_kinds():
    for name in CLIP_HEADS:
        assert name in HEADS.names()
        factory = HEADS.get(name)
        assert factory.reads == "pooled"
        assert factory.config.help() and all(factory.config.help().values())


@pytest.mark.parametrize("name", CLIP_HEADS)
def test_logits_shape_and_gradients_reach_only_the_trained_tensors(name, backbone):
    built = head(name, backbone)
    randomise(built)
    trained = trained_names(built)
    assert trained, name
    feats = features().requires_grad_(True)
    logits = built.train()(feats)
    assert logits.shape == (5, len(NAMES)) and torch.isfinite(logits).all()
    logits.logsumexp(dim=1).sum().backward()
    for param_name, param in built.named_parameters():
        if param_name in trained:
            assert param.grad is not None and param.grad.abs().sum() > 0, param_name
        else:
            assert param.grad is None, param_name
    assert feats.grad is not None  # the image feature's gradient reaches the adapter below
    assert all(p.grad is None for p in backbone.parameters())


@pytest.mark.parametrize("name", CLIP_HEADS)
def test_checkpoint_state_round_trip_leaves_the_frozen_tower_out(name, backbone):
    built = head(name, backbone)
    randomise(built)
    state = head_checkpoint_state(built)
    frozen = tuple(getattr(built, "frozen_prefixes", ()))
    assert bool(frozen) == (name in ("coop", "text_lora"))  # the heads that hold a text tower
    trained = trained_names(built)
    assert not any(key.startswith(frozen) for key in state if key not in trained)  # trained LoRA factors stay
    expected = trained_names(built) | ({"cache_labels"} if name == "tip_adapter" else set())
    assert set(state) == expected
    reference = built.eval()(features(5))

    fresh = build_head(name, backbone, spec_of(), options=OPTIONS[name])  # not prepared: the cache is loaded
    load_head_state(fresh, {key: value.clone() for key, value in state.items()})
    if hasattr(fresh, "prepare"):
        fresh.prepare(*train_cache(seed=9))  # a loaded cache is kept
    torch.testing.assert_close(fresh.eval()(features(5)), reference)


@pytest.mark.parametrize("name", CLIP_HEADS)
def test_zero_shot_classifier_is_the_frozen_prompt_ensemble(name, backbone):
    built = head(name, backbone)
    randomise(built)  # training does not change it
    embeddings, scale = built.zero_shot_classifier()
    expected, expected_scale = class_text_embeddings(backbone, NAMES, (TEMPLATE,))
    torch.testing.assert_close(embeddings, expected, atol=1e-5, rtol=1e-5)
    assert scale == pytest.approx(expected_scale)


@pytest.mark.parametrize("name", CLIP_HEADS)
def test_a_backbone_without_a_text_tower_is_not_applicable(name):
    with pytest.raises(NotApplicable):
        build_head(name, load_backbone("vit_tiny_test"), spec_of(), options=OPTIONS[name])


# -- CoOp ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("position, template", [("end", "a photo of a {}."), ("middle", "a photo {} of a."),
                                                ("front", "{} a photo of a.")])
@pytest.mark.parametrize("csc", [False, True])
def test_coop_from_a_phrase_is_the_zero_shot_classifier_of_that_sentence(position, template, csc, backbone):
    built = build_head("coop", backbone, spec_of(), options={"ctx_init": "a photo of a", "csc": csc,
                                                              "class_token_position": position})
    assert built.n_ctx == 4 and built.ctx.shape == ((3, 4, 32) if csc else (4, 32))
    feats = features()
    for mode in (True, False):
        torch.testing.assert_close(built.train(mode)(feats), zero_shot_logits(backbone, feats, template),
                                   atol=1e-4, rtol=1e-4)


def test_coop_random_context_counts_and_init(backbone):
    torch.manual_seed(0)
    built = build_head("coop", backbone, spec_of(), options={"n_ctx": 8})
    assert trained_names(built) == {"ctx"} and built.ctx.shape == (8, 32)  # M x W (CoOp: 16 x 512 = 8,192)
    assert abs(float(built.ctx.detach().std()) - 0.02) < 0.006
    assert build_head("coop", backbone, spec_of(), options={"n_ctx": 2, "csc": True}).ctx.shape == (3, 2, 32)
    # the prompt is 'X X ... X name.': its tokens, the learnt vectors in the X places
    tower = built.text
    assert torch.equal(built.tokens, tower.tokenize([f"{' '.join(['X'] * 8)} {n}." for n in NAMES]))
    prompts = built.prompts()
    torch.testing.assert_close(prompts[:, 1:9], built.ctx.detach().expand(3, -1, -1))
    torch.testing.assert_close(prompts[:, 9:], tower.token_embedding(built.tokens)[:, 9:])


def test_coop_evaluation_encodes_the_prompts_once_until_training_resumes(backbone):
    built = build_head("coop", backbone, spec_of(), options={"n_ctx": 4})
    calls = []
    original = built.text.encode_embedded
    built.text.encode_embedded = lambda *args: calls.append(1) or original(*args)
    built.eval()
    with torch.no_grad():
        first = built(features(0))
        built(features(1))
    assert len(calls) == 1
    built.train()
    with torch.no_grad():
        built.ctx.add_(1.0)
    built.eval()
    with torch.no_grad():
        assert not torch.allclose(built(features(0)), first)
    assert len(calls) == 2
    built(features(0))  # gradients on: always encoded anew
    assert len(calls) == 3


def test_coop_refuses_a_context_that_does_not_fit_and_bad_options(backbone):
    with pytest.raises(AdaptbenchError, match="need .* text positions"):
        build_head("coop", backbone, spec_of(), options={})  # 16 vectors + name > 16 positions
    with pytest.raises(AdaptbenchError, match="class_token_position"):
        build_head("coop", backbone, spec_of(), options={"class_token_position": "left"})
    with pytest.raises(AdaptbenchError, match="no option 'nctx'"):
        build_head("coop", backbone, spec_of(), options={"nctx": 4})


# -- CLIP-Adapter -----------------------------------------------------------------------------------------
def test_clip_adapter_with_ratio_zero_is_zero_shot_and_otherwise_the_residual_mix(backbone):
    feats = features()
    still = build_head("clip_adapter", backbone, spec_of(), options={"ratio": 0.0})
    randomise(still)
    torch.testing.assert_close(still(feats), zero_shot_logits(backbone, feats), atol=1e-5, rtol=1e-5)

    built = build_head("clip_adapter", backbone, spec_of())
    down, up = built.adapter[0].weight, built.adapter[2].weight
    assert built.ratio == 0.2 and down.shape == (4, 16) and up.shape == (16, 4)  # D -> D/4 -> D, no bias
    assert sum(p.numel() for p in built.parameters() if p.requires_grad) == 2 * 16 * 16 // 4
    mixed = 0.2 * torch.relu(torch.relu(feats @ down.T) @ up.T) + 0.8 * feats
    torch.testing.assert_close(built(feats), zero_shot_logits(backbone, mixed), atol=1e-5, rtol=1e-5)


# -- Tip-Adapter -------------------------------------------------------------------------------------------
def test_tip_adapter_logits_by_hand(backbone):
    keys, labels = train_cache()
    built = build_head("tip_adapter", backbone, spec_of(), options={"alpha": 2.5, "beta": 3.0})
    built.prepare(keys, labels)
    assert not trained_names(built)  # training-free
    feats = features()
    f = feats / feats.norm(dim=1, keepdim=True)
    k = keys / keys.norm(dim=1, keepdim=True)
    values = torch.eye(len(NAMES))[labels]  # one-hot
    cache_logits = torch.exp(-3.0 * (1 - f @ k.T)) @ values
    expected = zero_shot_logits(backbone, feats) + 2.5 * cache_logits
    torch.testing.assert_close(built(feats), expected, atol=1e-4, rtol=1e-5)

    off = build_head("tip_adapter", backbone, spec_of(), options={"alpha": 0.0})
    off.prepare(keys, labels)
    torch.testing.assert_close(off(feats), zero_shot_logits(backbone, feats), atol=1e-5, rtol=1e-5)


def test_tip_adapter_f_trains_keys_initialised_from_the_cache(backbone):
    keys, labels = train_cache()
    built = build_head("tip_adapter", backbone, spec_of(), options={"finetune": True})
    parameter = built.cache_keys
    assert parameter.numel() == 0  # the cache's size is the training split's
    built.prepare(keys, labels)
    assert built.cache_keys is parameter and trained_names(built) == {"cache_keys"}
    torch.testing.assert_close(parameter.detach(), F.normalize(keys, dim=-1))
    assert parameter.numel() == len(labels) * 16  # N x D (shots x C x D)
    built.prepare(keys + 1, labels)  # a built cache is kept
    torch.testing.assert_close(parameter.detach(), F.normalize(keys, dim=-1))


def test_tip_adapter_refuses_a_forward_before_prepare_and_bad_options(backbone):
    with pytest.raises(AdaptbenchError, match="empty cache"):
        build_head("tip_adapter", backbone, spec_of())(features())
    with pytest.raises(AdaptbenchError, match="beta"):
        build_head("tip_adapter", backbone, spec_of(), options={"beta": -1})


def test_tip_adapter_cache_moves_with_the_module(backbone):
    built = build_head("tip_adapter", backbone, spec_of(), options={"finetune": True})
    built.prepare(*train_cache())
    built.double()
    assert built.cache_keys.dtype == torch.float64 and built.class_embeddings.dtype == torch.float64
    assert built(features().double()).dtype == torch.float64


# -- CLIP-LoRA's text side -----------------------------------------------------------------------------------
def test_text_lora_wraps_q_k_v_of_every_text_block_with_clip_lora_numbers(backbone):
    built = build_head("text_lora", backbone, spec_of())
    wrappers = [m for m in built.text.modules() if isinstance(m, LoRALinear)]
    assert len(wrappers) == 2  # one per text block, on the fused qkv
    for wrapper in wrappers:
        assert list(wrapper.slices) == ["q", "k", "v"]
        assert all(s == pytest.approx(1 / math.sqrt(2)) for s in wrapper.scaling.values())  # alpha / sqrt(r)
        assert wrapper.dropout.p == 0.25
    # 3 parts x (A: 2 x 32 + B: 32 x 2) x 2 blocks
    assert sum(p.numel() for p in built.parameters() if p.requires_grad) == 3 * (2 * 32 * 2) * 2
    assert all(p.requires_grad is False for n, p in built.text.named_parameters() if "lora_" not in n)


def test_text_lora_at_init_is_zero_shot_then_follows_its_factors(backbone):
    built = build_head("text_lora", backbone, spec_of())
    feats = features()
    for mode in (True, False):  # B = 0: dropout on the LoRA input changes nothing
        torch.testing.assert_close(built.train(mode)(feats), zero_shot_logits(backbone, feats), atol=1e-5, rtol=1e-5)
    randomise(built)
    with torch.no_grad():
        evaluated = built.eval()(feats)
        assert not torch.allclose(evaluated, zero_shot_logits(backbone, feats), atol=1e-3)
        # by hand: the adapted tower's features of each class prompt
        texts = built.text.encode(built.text.tokenize([TEMPLATE.format(n) for n in NAMES]))
        hand = built.logit_scale * F.normalize(feats, dim=-1) @ F.normalize(texts, dim=-1).T
    torch.testing.assert_close(evaluated, hand, atol=1e-5, rtol=1e-5)


def test_text_lora_ensembles_the_task_templates_or_uses_the_one_given(backbone):
    templates = ("a photo of a {}.", "a drawing of the {}.")
    spec = spec_of(templates=templates)
    built = build_head("text_lora", backbone, spec)
    assert built.tokens.shape[0] == len(NAMES) * 2
    expected, scale = class_text_embeddings(backbone, NAMES, templates)
    torch.testing.assert_close(built.eval()(features()), scale * F.normalize(features(), dim=-1) @ expected.T,
                               atol=1e-5, rtol=1e-5)
    single = build_head("text_lora", backbone, spec, options={"template": "a photo of a {}."})
    torch.testing.assert_close(single(features()), zero_shot_logits(backbone, features()), atol=1e-5, rtol=1e-5)
    with pytest.raises(AdaptbenchError, match="template"):
        build_head("text_lora", backbone, spec, options={"template": "a photo"})


def test_text_lora_options_pick_sites_and_blocks(backbone):
    built = build_head("text_lora", backbone, spec_of(), options={"targets": "v,mlp_in", "blocks": "-1"})
    names = trained_names(built)
    assert all(n.startswith("text.blocks.1.") for n in names)
    assert {n.rsplit(".", 1)[-1] for n in names} == {"v", "mlp_in"}
    with pytest.raises(AdaptbenchError, match="blocks"):
        build_head("text_lora", backbone, spec_of(), options={"blocks": "5"})


# -- mask tuning's general-knowledge term with a text head --------------------------------------------------------
def test_zero_shot_knowledge_loss_is_the_kl_of_zero_shot_predictions():
    generator = torch.Generator().manual_seed(0)
    feats, frozen, classes = (torch.randn(4, 8, generator=generator) for _ in range(3))
    scale, temperature = 50.0, 2.0
    cos = lambda u, v: F.normalize(u, dim=1) @ F.normalize(v, dim=1).T
    student = torch.softmax(scale * cos(feats, classes) / temperature, dim=1)
    teacher = torch.softmax(scale * cos(frozen, classes) / temperature, dim=1)
    expected = temperature**2 * (teacher * (teacher.log() - student.log())).sum(1).mean()
    got = zero_shot_knowledge_loss(feats, frozen, classes, scale, temperature)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_mask_tuning_general_knowledge_gradient_uses_the_head_zero_shot_classifier():
    backbone = load_backbone(BACKBONE)
    adapter = build_adapter("mask_tuning", backbone, {})
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for wrapper in adapter._masks.values():
            wrapper.scores.copy_(torch.rand(wrapper.scores.shape, generator=generator) * 0.02)
    scores = [w.scores for w in adapter._masks.values()]
    text_head = build_head("zeroshot_text", backbone, spec_of())
    classes, scale = text_head.zero_shot_classifier()
    x, labels = images(batch=4), torch.tensor([0, 1, 2, 0])
    frozen = load_backbone(BACKBONE).eval()(x)

    # by hand, in eval mode (nothing recorded): b = d/dS of T^2 KL(p_zs || p)
    adapted = backbone.eval()(x)
    p = torch.softmax(scale * F.normalize(adapted, dim=1) @ classes.T, dim=1)
    p_zs = torch.softmax(scale * F.normalize(frozen, dim=1) @ classes.T, dim=1)
    hand = (p_zs * (p_zs.log() - p.log())).sum(1).mean()
    expected = torch.autograd.grad(hand, scores)

    logits = text_head(backbone.train()(x))
    loss = F.cross_entropy(logits, labels)
    adapter.extra_loss(LossContext(x, logits, labels, loss, forward=None, step=0, head=text_head))
    for name, grad in zip(adapter._masks, expected):
        torch.testing.assert_close(adapter._general_grads[name], grad, atol=1e-7, rtol=1e-4)
    adapter.on_train_batch_end(0)

    # a head without a text classifier: the instance classifier (the fallback) gives another b
    logits = text_head(backbone.train()(x))
    adapter.extra_loss(LossContext(x, logits, labels, loss, forward=None, step=0, head=torch.nn.Linear(16, 3)))
    assert any(not torch.allclose(adapter._general_grads[n], g) for n, g in zip(adapter._masks, expected))
