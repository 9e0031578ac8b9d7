import torch

from models.transformer import Classifier, EncoderConfig, MaskedLM, decay_groups, mask_tokens

CFG = EncoderConfig(vocab_size=50, d_model=16, n_layers=2, n_heads=2, d_ff=32, dropout=0.0, max_positions=12)
SPECIAL = torch.tensor([0, 1, 2, 3, 4])


def test_encoder_and_heads_shapes():
    ids = torch.randint(5, 50, (3, 10))
    assert MaskedLM(CFG).encoder(ids).shape == (3, 10, 16)
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
    assert model.encoder.tok.weight.grad is not None


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
        MaskedLM(CFG).encoder(torch.ones(1, 13, dtype=torch.long))
