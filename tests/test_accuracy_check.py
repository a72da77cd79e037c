"""check_accuracy: the victim's accuracy said first, and the two usual mismatches (class order, chance) warned."""
import torch
from torch.utils.data import TensorDataset

from removalnet.data import load_dataset
from removalnet.guards import check_accuracy

from helpers import digits_vgg


def _digits_test():
    test = load_dataset("digits", "test")
    x = torch.stack([test[i][0] for i in range(len(test))])
    y = torch.tensor([int(test[i][1]) for i in range(len(test))])
    return x, y


def test_accuracy_is_reported_and_a_matching_model_gets_no_warning(capsys, caplog):
    model = digits_vgg(0, iterations=150)
    x, y = _digits_test()
    caplog.set_level("INFO", logger="removalnet")
    acc = check_accuracy(model, TensorDataset(x, y), "the victim")
    expected = float((model(x).argmax(1) == y).float().mean())
    assert abs(acc - expected) < 1e-6 and acc > 0.6
    assert f"the victim: accuracy {acc * 100:.2f}% on {len(y)} test images" in caplog.text
    assert "warning" not in capsys.readouterr().err


def test_a_permuted_class_order_is_named(capsys):
    model = digits_vgg(0, iterations=150)
    x, y = _digits_test()
    order = torch.tensor([1, 2, 3, 4, 5, 6, 7, 8, 9, 0])    # the data numbers class c as order[c]
    acc = check_accuracy(model, TensorDataset(x, order[y]), "the victim")
    err = capsys.readouterr().err
    assert acc < 0.3
    assert err.count("warning:") == 1 and "with its classes renumbered" in err and "1->0, 2->1" in err
    assert "sorted folder-name order" in err


def test_a_model_near_chance_is_warned(capsys):
    torch.manual_seed(0)
    x, y = _digits_test()
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(x[0].numel(), 10))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.copy_(torch.arange(10.0))   # always class 9
    acc = check_accuracy(model, TensorDataset(x, y), "your model")
    err = capsys.readouterr().err
    assert acc < 0.2 and "warning: your model is near chance" in err
