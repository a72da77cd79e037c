import json
import os
import pickle

import pytest
import torch

from removalnet import RemovalNetError, weights_hash
from removalnet.checkpoint import load_checkpoint, save_checkpoint, sidecar_path
from removalnet.models import create_model


@pytest.fixture
def model():
    torch.manual_seed(0)
    return create_model("resnet_small", 10, 1, 28, mean=[0.28], std=[0.35], width=8).eval()


def test_round_trip(tmp_path, model):
    p = save_checkpoint(tmp_path / "m.safetensors", model, {"dataset": "fashion-mnist", "seed": 3, "accuracy": 0.9})
    side = json.loads(sidecar_path(p).read_text())
    assert side["arch"] == "resnet_small" and side["num_classes"] == 10 and side["in_chans"] == 1
    assert side["input_size"] == 28 and side["seed"] == 3 and "torch" in side["versions"]
    assert side["mean"] == pytest.approx([0.28]) and side["build_config"]["kwargs"] == {"width": 8}
    m2, meta = load_checkpoint(p)
    assert weights_hash(m2) == weights_hash(model) == meta["weights_sha256"]
    x = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(m2(x), model(x), rtol=0, atol=0)
    assert sorted(os.listdir(tmp_path)) == ["m.json", "m.safetensors"]  # no temp files left


def test_mismatches_fail_clearly(tmp_path, model):
    p = save_checkpoint(tmp_path / "a.safetensors", model)
    other = save_checkpoint(tmp_path / "b.safetensors", create_model("resnet_small", 10, 1, 28, width=8))
    # weights of one checkpoint with the sidecar of another
    (tmp_path / "b.safetensors").replace(tmp_path / "a.safetensors")
    with pytest.raises(RemovalNetError, match="hash differs"):
        load_checkpoint(p)
    # sidecar architecture does not match the tensors
    save_checkpoint(tmp_path / "c.safetensors", model)
    side = json.loads((tmp_path / "c.json").read_text())
    side["build_config"]["kwargs"]["width"] = 16
    (tmp_path / "c.json").write_text(json.dumps(side))
    with pytest.raises(RemovalNetError, match="shape"):
        load_checkpoint(tmp_path / "c.safetensors")
    (tmp_path / "d.json").unlink(missing_ok=True)
    save_checkpoint(tmp_path / "d.safetensors", model)
    (tmp_path / "d.json").unlink()
    with pytest.raises(RemovalNetError, match="sidecar"):
        load_checkpoint(tmp_path / "d.safetensors")
    with pytest.raises(RemovalNetError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.safetensors")
    with pytest.raises(RemovalNetError, match=".safetensors"):
        save_checkpoint(tmp_path / "x.bin", model)
    assert other.exists() is False  # it was moved away above


def test_foreign_state_dict_loads_weights_only(tmp_path, model):
    p = tmp_path / "m.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, p)
    fresh = create_model("resnet_small", 10, 1, 28, width=8)
    m2, meta = load_checkpoint(p, model=fresh)
    assert weights_hash(m2) == weights_hash(model) and meta["format"] == "foreign"
    with pytest.raises(RemovalNetError, match="needs the architecture"):
        load_checkpoint(p)


class _Payload:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_malicious_pickle_never_runs(tmp_path, model):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        pickle.dump({"state_dict": model.state_dict(), "x": _Payload(marker)}, f)
    with pytest.raises(RemovalNetError, match="refusing to load"):
        load_checkpoint(evil, model=create_model("resnet_small", 10, 1, 28, width=8))
    assert not marker.exists()
    # the payload is real: unpickling it the unsafe way would have created the file
    with open(evil, "rb") as f:
        pickle.load(f)
    assert marker.exists()
