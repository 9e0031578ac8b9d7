"""ELECTRA's replaced-token detection: batch, shapes, loss, sampling, learning, and the body
fine-tuning starts from."""

import math

import pytest
import torch

from models.build import build_classifier
from models.objectives import create
from models.objectives.electra import generator_config

from .test_models import CFG, TOKENS


def _electra(mask_prob=0.3, **knobs):
    return create("electra", TOKENS, mask_prob, **knobs)


def test_batch_masks_only_ordinary_tokens_and_carries_noise_and_scale():
    rows = torch.randint(5, 50, (6, 12), generator=torch.Generator().manual_seed(0))
    rows[:, 0] = 2  # a [CLS]-like special id: never chosen
    ids, targets, noise, scale = _electra().batch(rows, torch.Generator().manual_seed(1))
    chosen = targets != -100
    assert ids.shape == targets.shape == noise.shape == rows.shape and scale.shape == (6,)
    assert not chosen[:, 0].any() and chosen.any()
    assert torch.equal(targets[chosen], rows[chosen]) and torch.equal(ids[~chosen], rows[~chosen])
    assert (ids[chosen] == TOKENS.mask).float().mean() > 0.6  # most chosen positions read [MASK]
    assert scale[0].item() == pytest.approx(rows.numel() / chosen.sum().item())
    again = _electra().batch(rows, torch.Generator().manual_seed(1))
    assert all(torch.equal(a, b) for a, b in zip((ids, targets, noise, scale), again, strict=True))


def test_generator_is_a_fraction_of_the_discriminator_and_shares_its_embeddings():
    small = generator_config(CFG, 0.25)
    assert small.d_model == 4 and small.d_model % small.n_heads == 0 and small.n_layers == CFG.n_layers
    model = _electra(generator_width=0.25).language_model(CFG.to_dict())
    names = {n for n, _ in model.named_parameters()}
    assert not any(n.startswith("generator.") and ("tok" in n or "pos" in n) for n in names)  # none of its own
    gen_params = sum(p.numel() for n, p in model.named_parameters() if n.startswith("generator."))
    body_params = sum(p.numel() for n, p in model.named_parameters() if n.startswith("body.blocks"))
    assert gen_params < body_params


def test_loss_is_generator_mlm_plus_weighted_discriminator_loss():
    torch.manual_seed(0)
    objective = _electra(discriminator_weight=50.0)
    model = objective.language_model(CFG.to_dict())
    batch = objective.batch(torch.randint(5, 50, (4, 10), generator=torch.Generator().manual_seed(0)),
                            torch.Generator().manual_seed(0))  # fmt: skip
    logits, _ = model(batch[0])
    assert logits.shape == (4, 10)  # one replaced-or-not logit per position
    _, loss = model(*batch)
    figures = objective.take_metrics(model)
    assert math.isfinite(loss.item())
    assert loss.item() == pytest.approx(figures["gen_loss"] + 50.0 * figures["disc_loss"], rel=1e-5)
    # Untrained: the generator is near uniform over the vocabulary, the discriminator near 1/2.
    assert figures["gen_loss"] == pytest.approx(math.log(50), rel=0.1)
    assert figures["disc_loss"] == pytest.approx(math.log(2), rel=0.1)
    chosen_share = (batch[1] != -100).float().mean().item()
    assert 0 < figures["replaced_share"] <= chosen_share and objective.take_metrics(model) == {}  # reset after a take


def test_sampling_never_proposes_a_special_token_and_follows_the_noise():
    model = _electra().language_model(CFG.to_dict())
    logits = torch.zeros(3, 50)
    logits[:, TOKENS.mask] = 100.0  # the generator's favourite is [MASK]: it must never be put in
    picked = model.sample(logits, torch.tensor([0.0, 0.5, 0.999]))
    assert not torch.isin(picked, TOKENS.tensor()).any()
    assert picked.tolist() == sorted(picked.tolist()) and picked[0] == 5 and picked[2] == 49


def test_electra_learns_to_detect_replacements():
    torch.manual_seed(0)
    objective = _electra(mask_prob=0.3)
    model = objective.language_model(CFG.to_dict())
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rows = torch.tensor([[2, 5, 6, 7, 8, 9, 10, 11, 12, 3]] * 16)
    gen = torch.Generator().manual_seed(0)
    figures = []
    for step in range(150):
        _, loss = model(*objective.batch(rows, gen))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step in (9, 139, 149):  # the first 10 steps, then the last 10
            figures.append(objective.take_metrics(model))
    first, _, last = figures
    assert last["gen_loss"] < 0.5 * first["gen_loss"]  # the generator learns the fixed sentence...
    assert last["replaced_token_accuracy"] > 0.9  # ...and the discriminator tells its slips apart


def test_a_classifier_starts_from_the_discriminator_body():
    model = _electra().language_model(CFG.to_dict())
    clf = build_classifier(CFG.to_dict(), 2)
    clf.body.load_state_dict(model.body.state_dict())
    ids = torch.randint(5, 50, (2, 7))
    assert torch.equal(clf.body(ids, ids != 0), model.body(ids, ids != 0))
