import pytest
import torch
from torch.utils.data import TensorDataset

from removalnet import RemovalNetError, weights_hash
from removalnet.models import create_model
from removalnet.train import TrainConfig, augment_batch, evaluate, predict_logits, train_model


def _toy(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.rand(n, 1, 12, 12, generator=g) * 0.3
    x[y == 1, :, :6] += 0.6  # class 1: bright top half
    return TensorDataset(x.clamp(0, 1), y)


def test_training_learns_and_is_deterministic():
    tr, te = _toy(256, 0), _toy(128, 1)
    cfg = TrainConfig(iterations=40, batch_size=32, lr=0.05, augment="crop")
    hashes, accs = [], []
    for i in range(2):
        torch.manual_seed(0)
        m = create_model("vgg_small", 2, 1, 12, width=4)
        torch.manual_seed(123 + i)  # the trainer must not depend on outside RNG state
        hist = train_model(m, tr, te, cfg, seed=7, progress=False)
        hashes.append(weights_hash(m))
        accs.append(hist["final_test_accuracy"])
    assert hashes[0] == hashes[1]
    assert accs[0] >= 0.95 and hist["iterations"] == 40
    torch.manual_seed(0)
    m3 = create_model("vgg_small", 2, 1, 12, width=4)
    train_model(m3, tr, None, cfg, seed=8, progress=False)
    assert weights_hash(m3) != hashes[0]


def test_evaluate_and_predict():
    m = create_model("vgg_small", 2, 1, 12, width=4)
    ds = _toy(50)
    logits = predict_logits(m, ds, batch_size=16)
    assert logits.shape == (50, 2)
    acc = evaluate(m, ds, batch_size=16)
    assert acc == pytest.approx((logits.argmax(1) == ds.tensors[1]).float().mean().item())
    m.train()
    predict_logits(m, ds.tensors[0])
    assert m.training  # mode restored


def test_augment_is_seeded_and_shape_preserving():
    x = torch.rand(8, 1, 12, 12)
    a = augment_batch(x, "crop_flip", torch.Generator().manual_seed(0))
    b = augment_batch(x, "crop_flip", torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b)
    assert torch.equal(augment_batch(x, "none", torch.Generator()), x)


@pytest.mark.parametrize("kw,msg", [({"lr": 0}, "lr"), ({"optimizer": "rmsprop"}, "optimizer"),
                                    ({"epochs": 0}, "epochs"), ({"schedule": "poly"}, "schedule")])
def test_config_validation(kw, msg):
    with pytest.raises(RemovalNetError, match=msg):
        TrainConfig(**kw)
    with pytest.raises(RemovalNetError, match="unknown"):
        TrainConfig.from_dict({"learning_rate": 0.1})
