import torch

from models.build import decay_groups
from models.objectives import SpecialTokens, create
from models.objectives.mlm import mask_tokens
from models.transformer import Classifier, EncoderConfig

CFG = EncoderConfig(vocab_size=50, d_model=16, n_layers=2, n_heads=2, d_ff=32, dropout=0.0, max_positions=12)
TOKENS = SpecialTokens(pad=0, mask=4, ids=(0, 1, 2, 3, 4), vocab_size=50)
SPECIAL = TOKENS.tensor()


def MaskedLM(cfg):  # noqa: N802  (reads like the class it builds)
    return create("mlm", TOKENS, 0.15).language_model(cfg.to_dict())


def build_language_model(config: dict):
    """The objective each config's tests use: causal for a causal or recurrent body, else masked."""
    causal = config.get("causal", config["arch"] != "transformer")
    return create("causal" if causal else "mlm", TOKENS, 0.15).language_model(config)


def test_encoder_and_heads_shapes():
    ids = torch.randint(5, 50, (3, 10))
    assert MaskedLM(CFG).body(ids).shape == (3, 10, 16)
    logits, _ = MaskedLM(CFG)(ids)
    assert logits.shape == (3, 10, 50)
    assert Classifier(CFG, 4)(ids, ids != 0).shape == (3, 4)


def test_decoder_is_tied_to_embeddings():
    model = MaskedLM(CFG)
    names = [n for n, _ in model.named_parameters()]
    assert not any("decoder" in n for n in names)
    ids = torch.randint(5, 50, (2, 8))
    x, targets = mask_tokens(ids, 4, 50, SPECIAL, 0.5, torch.Generator().manual_seed(0))
    _, loss = model(x, targets)
    loss.backward()
    assert model.body.tok.weight.grad is not None


def test_padding_does_not_change_classifier_output():
    model = Classifier(CFG, 3).eval()
    ids = torch.tensor([[2, 7, 8, 9, 3]])
    padded = torch.tensor([[2, 7, 8, 9, 3, 0, 0, 0]])
    a = model(ids, ids != 0)
    b = model(padded, padded != 0)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_masking_skips_special_tokens_and_is_seeded():
    ids = torch.tensor([[2] + list(range(5, 45)) + [3]])
    x, targets = mask_tokens(ids, 4, 50, SPECIAL, 0.3, torch.Generator().manual_seed(1))
    chosen = targets != -100
    assert chosen.any() and not chosen[0, 0] and not chosen[0, -1]
    assert torch.equal(targets[chosen], ids[chosen])
    assert (x[chosen] == 4).float().mean() > 0.5
    x2, t2 = mask_tokens(ids, 4, 50, SPECIAL, 0.3, torch.Generator().manual_seed(1))
    assert torch.equal(x, x2) and torch.equal(targets, t2)


def test_every_masked_position_can_show_mask():
    ids = torch.tensor([[2] + list(range(5, 205)) + [3]])
    bert, _ = mask_tokens(ids, 4, 50, SPECIAL, 0.5, torch.Generator().manual_seed(2))
    x, targets = mask_tokens(ids, 4, 50, SPECIAL, 0.5, torch.Generator().manual_seed(2), mask_token_share=1.0)
    chosen = targets != -100
    # The same positions are chosen; each now shows [MASK], none is left as it was or made random.
    assert torch.equal(chosen, mask_tokens(ids, 4, 50, SPECIAL, 0.5, torch.Generator().manual_seed(2))[1] != -100)
    assert (x[chosen] == 4).all() and torch.equal(x[~chosen], ids[~chosen]) and (bert[chosen] != 4).any()


def test_the_masked_only_view_scores_just_the_mask_positions():
    from tasks.pretrain import masked_only

    ids = torch.tensor([[2] + list(range(5, 205)) + [3]])
    x, targets = mask_tokens(ids, 4, 50, SPECIAL, 0.5, torch.Generator().manual_seed(2))
    _, kept = masked_only((x, targets), 4)
    # Of the chosen positions, those left unchanged or made random are no longer scored.
    assert torch.equal(kept != -100, x == 4) and (kept != -100).sum() < (targets != -100).sum()
    assert torch.equal(kept[x == 4], ids[x == 4])


def test_mlm_learns_a_tiny_corpus():
    torch.manual_seed(0)
    model = MaskedLM(CFG)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ids = torch.tensor([[2, 5, 6, 7, 8, 9, 10, 3]] * 8)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(60):
        x, t = mask_tokens(ids, 4, 50, SPECIAL, 0.3, gen)
        _, loss = model(x, t)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10


def test_no_weight_decay_on_norms_and_biases():
    groups = decay_groups(MaskedLM(CFG), 0.1)
    assert all(p.dim() >= 2 for p in groups[0]["params"]) and groups[0]["weight_decay"] == 0.1
    assert all(p.dim() == 1 for p in groups[1]["params"]) and groups[1]["weight_decay"] == 0.0


def test_too_long_input_is_refused():
    import pytest

    with pytest.raises(ValueError, match="max_positions"):
        MaskedLM(CFG).body(torch.ones(1, 13, dtype=torch.long))


# --- causal and recurrent language models -------------------------------------------------

from models.build import build_classifier  # noqa: E402
from models.recurrent import RecurrentConfig  # noqa: E402

CAUSAL = {**CFG.to_dict(), "causal": True}
ROTARY = {**CFG.to_dict(), "position": "rotary"}
RECURRENT = [
    RecurrentConfig(vocab_size=50, arch=a, d_model=16, d_hidden=24, n_layers=2, dropout=0.0).to_dict()
    for a in ("rnn", "lstm", "gru")
]
LM_CONFIGS = [CAUSAL, {**ROTARY, "causal": True}, *RECURRENT]


def _name(config: dict) -> str:
    return config["arch"] + ("-rotary" if config.get("position") == "rotary" else "") + (
        "-causal" if config.get("causal") else "")  # fmt: skip


def _ids(b: int = 2, t: int = 10) -> torch.Tensor:
    return torch.randint(5, 50, (b, t), generator=torch.Generator().manual_seed(0))


import pytest  # noqa: E402


@pytest.mark.parametrize("config", LM_CONFIGS, ids=_name)
def test_causal_models_never_look_ahead(config):
    model = build_language_model(config).eval()
    ids = _ids()
    changed = ids.clone()
    changed[:, 6:] = 7
    a, _ = model(ids)
    b, _ = model(changed)
    assert a.shape == (2, 10, 50)
    torch.testing.assert_close(a[:, :6], b[:, :6])
    assert not torch.allclose(a[:, 6:], b[:, 6:])


@pytest.mark.parametrize("config", LM_CONFIGS, ids=_name)
def test_causal_models_tie_the_decoder_and_learn(config):
    torch.manual_seed(0)
    model = build_language_model(config)
    assert sum(p.shape == (50, 16) for p in model.parameters()) == 1  # one matrix: embeddings = decoder
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    rows = torch.tensor([[2, 5, 6, 7, 8, 9, 10, 11, 3]] * 8)
    losses = []
    for _ in range(120):
        _, loss = model(rows[:, :-1], rows[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]


@pytest.mark.parametrize("config", [CFG.to_dict(), ROTARY, *LM_CONFIGS], ids=_name)
def test_every_classifier_ignores_padding_and_groups_every_parameter_once(config):
    model = build_classifier(config, 3).eval()
    ids = torch.tensor([[2, 7, 8, 9, 3]])
    padded = torch.tensor([[2, 7, 8, 9, 3, 0, 0, 0]])
    torch.testing.assert_close(model(ids, ids != 0), model(padded, padded != 0), atol=1e-5, rtol=1e-5)
    grouped = [id(p) for g in model.layer_groups() for p in g]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())
    assert model.layer_groups()[-1] == list(model.head.parameters())


def test_classifier_body_loads_from_its_language_model():

    for config in [CFG.to_dict(), ROTARY, *LM_CONFIGS]:
        lm, clf = build_language_model(config), build_classifier(config, 2)
        clf.body.load_state_dict(lm.body.state_dict())  # one name for the body in every network


def test_recurrent_config_refuses_unknown_cells():
    with pytest.raises(ValueError, match="arch"):
        RecurrentConfig(vocab_size=10, arch="transformer")


def test_objectives_build_their_batches_and_metric_names():
    rows = torch.randint(5, 50, (4, 9), generator=torch.Generator().manual_seed(0))
    mlm, causal = create("mlm", TOKENS, 0.3), create("causal", TOKENS, 0.3)
    x, t = mlm.batch(rows, torch.Generator().manual_seed(0))
    assert x.shape == t.shape == rows.shape and (t != -100).any() and mlm.extra_tokens == 0
    x, t = causal.batch(rows, torch.Generator().manual_seed(0))
    assert torch.equal(x, rows[:, :-1]) and torch.equal(t, rows[:, 1:]) and causal.extra_tokens == 1
    assert (mlm.loss_name, causal.loss_name) == ("mlm_loss", "causal_loss")
    with pytest.raises(ValueError, match="unknown pretraining objective"):
        create("electra-typo", TOKENS, 0.3)


def test_a_recurrent_body_refuses_a_bidirectional_objective():
    with pytest.raises(ValueError, match="causal"):
        create("mlm", TOKENS, 0.15).language_model(RECURRENT[0])


def test_params_know_every_registered_objective_and_which_are_causal():
    from typing import get_args

    from models.objectives import OBJECTIVES
    from tasks.lib.config import CAUSAL_OBJECTIVES, ObjectiveName

    assert set(get_args(ObjectiveName)) == set(OBJECTIVES)
    assert CAUSAL_OBJECTIVES == {name for name, cls in OBJECTIVES.items() if cls.causal}


def test_mask_rate_is_constant_or_falls_linearly_to_its_final_value():
    from types import SimpleNamespace

    from tasks.pretrain import mask_rate

    constant = SimpleNamespace(mask_prob=0.15, mask_prob_final=None, max_steps=11)
    assert {mask_rate(constant, s) for s in range(11)} == {0.15}
    falling = SimpleNamespace(mask_prob=0.4, mask_prob_final=0.15, max_steps=11)
    rates = [mask_rate(falling, s) for s in range(11)]
    assert rates[0] == 0.4 and abs(rates[-1] - 0.15) < 1e-12 and abs(rates[5] - 0.275) < 1e-12
    assert all(a > b for a, b in zip(rates, rates[1:], strict=False))


def test_mask_rate_above_one_half_is_refused():
    from tasks.lib.config import ParamsError, parse_params

    from .conftest import tiny_params

    with pytest.raises(ParamsError, match="mask_prob"):
        parse_params(tiny_params(pretrain={"mask_prob": 0.6}))


def test_rotary_attention_scores_depend_on_the_offset_only():
    from models.transformer import rotate

    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, 1, 8, generator=g), torch.randn(1, 1, 1, 8, generator=g)
    scores = rotate(q.expand(1, 1, 12, 8)) @ rotate(k.expand(1, 1, 12, 8)).transpose(-1, -2)  # same vectors everywhere
    torch.testing.assert_close(scores[0, 0, 2, 5], scores[0, 0, 6, 9])  # offset +3 at two places
    assert not torch.allclose(scores[0, 0, 2, 5], scores[0, 0, 5, 2])  # -3 is another offset
    torch.testing.assert_close(rotate(q), q)  # position 0 is not turned


def test_a_rotary_body_has_no_position_table_and_older_configs_are_learned():
    from models.build import build_body, model_config

    assert build_body(ROTARY).pos is None and build_body(CFG.to_dict()).pos is not None
    older = {k: v for k, v in CFG.to_dict().items() if k != "position"}  # a checkpoint from before the option
    assert model_config(older).position == "learned"
