import json

import torch

from models.inference import pad_batch
from models.transformer import EncoderConfig
from tasks.lib.training import (
    length_bucketed_batches,
    load_optimizer_state,
    load_weights,
    save_checkpoint,
    warmup_cosine,
)

from .test_models import MaskedLM


def test_warmup_then_cosine_to_floor():
    f = warmup_cosine(10, 110, floor=0.1)
    assert f(0) == 0.1 and f(9) == 1.0
    assert abs(f(10) - 1.0) < 1e-9 and abs(f(110) - 0.1) < 1e-9
    assert f(50) > f(80) > f(109)


def test_checkpoint_round_trip_restores_weights_and_optimizer(tmp_path):
    cfg = EncoderConfig(vocab_size=30, d_model=8, n_layers=1, n_heads=2, d_ff=16, max_positions=8)
    model = MaskedLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(5, 30, (2, 8))
    targets = ids.clone()
    model(ids, targets)[1].backward()
    opt.step()
    save_checkpoint(tmp_path, model, {"step": 1}, opt)
    assert not list(tmp_path.glob("*.pt")) and (tmp_path / "optimizer.safetensors").exists()
    model2 = MaskedLM(cfg)
    load_weights(tmp_path, model2)
    for a, b in zip(model.state_dict().values(), model2.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1e-3)
    load_optimizer_state(tmp_path, opt2)
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert json.loads(json.dumps(s1["param_groups"])) == s2["param_groups"]  # JSON keeps tuples as lists
    for k in s1["state"]:
        assert torch.equal(s1["state"][k]["exp_avg"], s2["state"][k]["exp_avg"])


def test_bucketed_batches_cover_every_example_once():
    lengths = [5, 1, 9, 3, 3, 7, 2, 8, 4, 6, 1]
    batches = length_bucketed_batches(lengths, 4, torch.Generator().manual_seed(0))
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert all(len(b) <= 4 for b in batches)


def test_pad_batch_masks_padding():
    ids, mask = pad_batch([[2, 5, 3], [2, 3]], pad_id=0)
    assert ids.tolist() == [[2, 5, 3], [2, 3, 0]]
    assert mask.tolist() == [[True, True, True], [True, True, False]]
