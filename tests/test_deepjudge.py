"""DeepJudge: metric math on hand-made tensors against the official formulas re-written in numpy, seed ranking,
test generation, black-box test cases, identity, neuron alignment."""
import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from removalnet import create_model
from removalnet.data import load_dataset
from removalnet.train import TrainConfig, train_model
from removalnet.utils import RemovalNetError, weights_hash
from removalnet.verify import calibrate_models, create_verifier, verdict
from removalnet.verify.deepjudge import (DeepJudge, adversarial_tests, channel_means, generate_tests, jsd, lad, lod,
                                         nad, nod, robd, seed_confidence, select_seeds)

SMALL = dict(num_seeds=16, adv_seeds=16, max_tests=24, max_iters=60, step=0.05, pgd_steps=5, batch_size=64)


# ------------------------------------------------------------------------------------------ metric math
def _ab():
    # shape (N=2, C=3, H=1, W=2), NCHW. Sample 0:
    #   a: channel 0 = [0, 2] (mean 1), channel 1 = [4, 4] (mean 4), channel 2 = [1, 2] (mean 1.5)
    #   b: channel 0 = [3, 3] (mean 3), channel 1 = [0, 0] (mean 0), channel 2 = [2, 2] (mean 2)
    # Sample 1 is the same in a and b (contributes 0).
    a = torch.tensor([[[[0., 2.]], [[4., 4.]], [[1., 2.]]], [[[1., 1.]], [[2., 3.]], [[0., 5.]]]])
    b = torch.tensor([[[[3., 3.]], [[0., 0.]], [[2., 2.]]], [[[1., 1.]], [[2., 3.]], [[0., 5.]]]])
    return a, b


def _nhwc_port_means(z):
    """What a port that reshapes NCHW as if it were NHWC computes: (N, -1, last axis) averaged over axis 1."""
    return z.reshape(z.shape[0], -1, z.shape[-1]).mean(dim=1)


def test_channel_axis_is_one():
    a, b = _ab()
    assert torch.equal(channel_means(a)[0], torch.tensor([1.0, 4.0, 1.5]))
    assert torch.equal(channel_means(b)[0], torch.tensor([3.0, 0.0, 2.0]))
    # the NHWC misreading gives 2 "neurons": a -> [(0+4+1)/3, (2+4+2)/3] = [5/3, 8/3]
    assert _nhwc_port_means(a)[0].tolist() == pytest.approx([5 / 3, 8 / 3])


def test_lod_golden_nchw():
    a, b = _ab()
    # sample 0: mean differences [1-3, 4-0, 1.5-2] = [-2, 4, -0.5]; L2 = sqrt(4 + 16 + 0.25) = 4.5; sample 1: 0
    assert lod(a, b, 2) == pytest.approx(4.5 / 2)
    # L1 = 2 + 4 + 0.5 = 6.5 -> 3.25
    assert lod(a, b, 1) == pytest.approx(6.5 / 2)
    # NHWC misreading: a -> [5/3, 8/3], b -> [5/3, 5/3], difference [0, 1]: L2 = 1 -> 0.5 (a port would report 0.5)
    wrong = float(torch.linalg.vector_norm(_nhwc_port_means(a) - _nhwc_port_means(b), dim=1).mean())
    assert wrong == pytest.approx(0.5)
    assert lod(a, b, 2) != pytest.approx(wrong)
    # (N, C) input is taken as already averaged
    assert lod(channel_means(a), channel_means(b)) == pytest.approx(2.25)


def test_lad_golden_nchw():
    a, b = _ab()
    # sample 0, a: means [1, 4, 1.5], min 1, max 4 -> [0, 1, 0.1667] -> active [0, 1, 0]
    #           b: means [3, 0, 2],   min 0, max 3 -> [1, 0, 0.6667] -> active [1, 0, 1]
    # |difference| = [1, 1, 1]: L1 3 (official sum), 3 / 3 neurons = 1 (eq. 2 mean); sample 1: 0
    assert lad(a, b, 0.5) == pytest.approx(1.5)
    assert lad(a, b, 0.5, "mean") == pytest.approx(0.5)
    # NHWC misreading: a [5/3, 8/3] -> [0, 1] active [0, 1]; b [5/3, 5/3] all equal -> none active: 1 on sample 0
    assert lad(_nhwc_port_means(a), _nhwc_port_means(b)) == pytest.approx(0.5)
    with pytest.raises(RemovalNetError, match="reduction"):
        lad(a, b, 0.5, "max")


def test_lad_threshold_is_strict_and_flat_rows_are_inactive():
    a = torch.tensor([[0.0, 0.5, 1.0], [2.0, 2.0, 2.0]])
    b = torch.tensor([[0.0, 0.6, 1.0], [1.0, 2.0, 3.0]])
    # official normalisation (v - min) / (max - min + 1e-6):
    # row 0: a -> [0, .4999995, .999999] active [F, F, T]; b -> [0, .5999994, .999999] [F, T, T]: 1 differs
    # row 1: a flat -> all 0, none active; b -> [0, .49999975, .9999995] [F, F, T]: 1 differs
    assert lad(a, b, 0.5) == pytest.approx(1.0)
    assert lad(a, b, 0.5, "mean") == pytest.approx(1 / 3)
    # threshold .65: row 0: a [F, F, T], b [F, F, T] -> 0; row 1: a none, b [F, F, T] -> 1
    assert lad(a, b, 0.65) == pytest.approx(0.5)
    assert lad(a, b, 0.65, "mean") == pytest.approx(1 / 6)


def test_nod_nad_golden():
    a, b = _ab()
    neuron = torch.tensor([1, 0])            # test case 0 was generated for neuron 1, test case 1 for neuron 0
    # NOD: case 0 |4 - 0| = 4 on its own neuron 1; case 1: a and b agree -> 0; mean 2
    assert nod(a, b, neuron) == pytest.approx(2.0)
    # another norm would not give 2: squared difference (16 + 0) / 2 = 8; L2 over all neurons (LOD) 2.25
    assert nod(a, b, neuron) != pytest.approx(8.0) and nod(a, b, neuron) != pytest.approx(lod(a, b))
    # NAD: case 0: a active [0, 1, 0], b [1, 0, 1] -> neuron 1 differs (1); case 1: 0; mean .5 x 2 neurons = 1
    assert nad(a, b, neuron, 2) == pytest.approx(1.0)
    assert nad(a, b, torch.tensor([1, 1]), 1) == pytest.approx(0.5)
    with pytest.raises(RemovalNetError, match="neuron index"):
        nod(a, b, torch.tensor([1, 3]))
    with pytest.raises(RemovalNetError, match="2 test cases"):
        nad(a, b, torch.tensor([1]), 1)


# -------------------------------------------------- the official metrics.py formulas, re-written in numpy
def _official(outs_v, outs_s, theta=0.5, order=2):
    """LOD, LAD, NOD, NAD as DeepJudge/metrics.py computes them. ``outs_*``: {(layer, idx): layer outputs of the
    test cases of neuron idx, CHANNELS LAST as in Keras (n, H, W, C) or (n, tokens, hidden)}."""
    def means(o):
        return o.reshape(o.shape[0], -1, o.shape[-1]).mean(axis=1)

    def normalize(vs):
        return [(v - np.min(v)) / (np.max(v) - np.min(v) + 1e-6) for v in vs]

    lods, lads, nods, nads = [], [], [], []
    for (layer, idx), o1 in outs_v.items():
        if len(o1) == 0:                                  # a targeted neuron without test case: only counted
            continue
        a1, a2 = means(o1), means(outs_s[(layer, idx)])
        lods.append(np.linalg.norm(a1 - a2, axis=1, ord=order))
        act1 = np.array([np.where(i > theta, 1, 0) for i in normalize(a1)])
        act2 = np.array([np.where(i > theta, 1, 0) for i in normalize(a2)])
        lads.append(np.linalg.norm(act1 - act2, axis=1, ord=1))
        nods.append(np.abs(a1[:, idx] - a2[:, idx]))
        nads.append(np.abs(act1[:, idx] - act2[:, idx]))
    # official: np.average(np.array(list)), i.e. the average of the concatenation when the lists are equally
    # long (np.array of unequal ones is ragged); we average the concatenation
    cat = np.concatenate
    return {"LOD": np.average(cat(lods)), "LAD": np.average(cat(lads)),
            "NOD": np.average(cat(nods)), "NAD": np.average(cat(nads)) * len(outs_v)}


@pytest.mark.parametrize("layout", ["conv", "tokens"])
def test_metrics_match_the_official_code(layout):
    g = torch.Generator().manual_seed(7)
    tested, per = [0, 2, 3, 5], 3                         # 4 tested neurons, 3 test cases each (equal, as official)
    n = len(tested) * per
    neuron = torch.tensor(tested).repeat_interleave(per)
    if layout == "conv":                                  # ours NCHW (n, 6, 3, 2); Keras NHWC
        v = torch.randn(n, 6, 3, 2, generator=g, dtype=torch.float64)
        s = v + 0.7 * torch.randn(n, 6, 3, 2, generator=g, dtype=torch.float64)
        keras_v, keras_s = v.permute(0, 2, 3, 1).numpy(), s.permute(0, 2, 3, 1).numpy()
    else:                                                 # (n, tokens 5, hidden 6): same layout in both
        v = torch.randn(n, 5, 6, generator=g, dtype=torch.float64)
        s = v + 0.7 * torch.randn(n, 5, 6, generator=g, dtype=torch.float64)
        keras_v, keras_s = v.numpy(), s.numpy()
    ov = {(3, c): keras_v[(neuron == c).numpy()] for c in tested}
    os_ = {(3, c): keras_s[(neuron == c).numpy()] for c in tested}
    ref = _official(ov, os_)
    assert ref["NOD"] > 0.1 and 0 < ref["NAD"] and ref["LAD"] > 0.5       # a non-trivial case
    assert lod(v, s) == pytest.approx(ref["LOD"], rel=1e-9)
    assert lod(v, s, 1) == pytest.approx(_official(ov, os_, order=1)["LOD"], rel=1e-9)
    assert lad(v, s) == pytest.approx(ref["LAD"], rel=1e-9)
    assert lad(v, s, 0.5, "mean") == pytest.approx(ref["LAD"] / 6, rel=1e-9)
    assert nod(v, s, neuron) == pytest.approx(ref["NOD"], rel=1e-9)
    assert nad(v, s, neuron, len(tested)) == pytest.approx(ref["NAD"], rel=1e-9)
    assert lad(v, s, 0.3) == pytest.approx(_official(ov, os_, theta=0.3)["LAD"], rel=1e-9)


def test_transformer_neurons_are_hidden_units():
    # torchvision vit_b_32 at 224 px: block outputs (N, 50 tokens, 768 hidden); neurons are the 768 hidden units
    z = torch.randn(2, 50, 768, generator=torch.Generator().manual_seed(0))
    m = channel_means(z)
    assert m.shape == (2, 768)
    assert torch.allclose(m, z.mean(dim=1), atol=1e-6)
    # the real block: the project's vit_b_32 split (small-input variant: 8 x 8 patches + class token = 65 tokens)
    torch.manual_seed(0)
    vit = create_model("vit_b_32", 10, 3, 32).eval()
    with torch.no_grad():
        out = vit.head(torch.rand(2, 3, 32, 32), vit.default_layer)
    assert out.shape == (2, 65, 768)
    assert channel_means(out).shape == (2, 768)
    assert torch.allclose(channel_means(out), out.mean(dim=1), atol=1e-6)


def test_jsd_golden():
    p = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    q = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    # row 0: disjoint supports -> ln 2 = 0.693147
    # row 1: M = [.75, .25]; KL(p||M) = .5 ln(.5/.75) + .5 ln(.5/.25) = .143841; KL(q||M) = ln(1/.75) = .287682
    #        JS = (.143841 + .287682) / 2 = .215762
    assert jsd(p, q) == pytest.approx((math.log(2) + 0.2157616) / 2, abs=1e-6)
    assert jsd(p, p) == 0.0
    assert robd(0.7, 0.4) == pytest.approx(0.3) and robd(0.4, 0.7) == pytest.approx(0.3)


def test_seeds_ranked_by_softmax_not_logits():
    logits = torch.tensor([[10.0, 9.0, 0.0], [3.0, 0.0, 0.0], [0.0, 5.0, 0.0], [2.0, 1.0, 0.0]])
    labels = torch.tensor([0, 0, 0, 0])
    # row 0: softmax [.73106, .26892, .00003] -> sum of squares .60673
    # row 1: softmax [.90944, .04528, .04528] -> .83118
    # row 2: predicts class 1, label 0 -> not a seed
    # row 3: softmax [.66524, .24473, .09003] -> .50999
    assert seed_confidence(logits)[:2].tolist() == pytest.approx([0.60673, 0.83118], abs=1e-5)
    assert select_seeds(logits, labels, 10).tolist() == [1, 0, 3]
    assert select_seeds(logits, labels, 2).tolist() == [1, 0]
    # ranking by logits (max logit or sum of squared logits) would put row 0 first
    assert int(logits.max(1).values[[0, 1, 3]].argmax()) == 0


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def digits():
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    return load_dataset("digits", "train", input_size=16), load_dataset("digits", "test", input_size=16)


def _model(seed):
    torch.manual_seed(seed)
    return create_model("vgg_small", 10, 1, 16, width=8)


def _trained(seed, iterations=40):
    m = _model(seed)
    tr = load_dataset("digits", "train", input_size=16)
    train_model(m, tr, None, TrainConfig(iterations=iterations, batch_size=64, lr=0.05), seed=seed, progress=False)
    return m.eval()


@pytest.fixture(scope="module")
def victim(digits):
    m = _model(0)
    train_model(m, digits[0], None, TrainConfig(iterations=40, batch_size=64, lr=0.05), seed=0, progress=False)
    return m.eval()


@pytest.fixture(scope="module")
def fingerprint(victim, digits):
    return DeepJudge(**SMALL).extract(victim, digits[1], seed=0)


# ------------------------------------------------------------------------------------------ generation
def test_generated_tests_exceed_k(victim, digits):
    dj = DeepJudge(**SMALL)
    fp = dj.extract(victim, digits[1], seed=0)
    T, meta = fp.tensors, fp.meta
    assert meta["layer"] == victim.default_layer == 2 and meta["num_channels"] == 16
    assert meta["num_seeds"] == 16 and meta["tests_tried"] == 24
    assert 0 < meta["tests_reached"] == meta["tests_kept"] == len(T["tests_x"])
    # every kept test case really activates its channel above k = 3 x max over seeds
    seed_acts = channel_means(victim.head(T["seeds_x"], 2)).detach()
    assert torch.allclose(T["k"], 3 * seed_acts.max(0).values)
    acts = channel_means(victim.head(T["tests_x"], 2)).detach()
    ch = T["tests_channel"]
    assert bool((acts[torch.arange(len(ch)), ch] > T["k"][ch]).all())
    assert T["tests_x"].min() >= 0 and T["tests_x"].max() <= 1
    # seeds are correctly classified and ranked by decreasing softmax confidence
    logits = victim(T["seeds_x"]).detach()
    assert bool((logits.argmax(1) == T["seeds_y"]).all())
    conf = seed_confidence(logits)
    assert bool((conf[:-1] >= conf[1:] - 1e-9).all())
    # the stored victim values are the victim's
    assert torch.allclose(T["victim_layer"], acts, atol=1e-6)
    assert meta["k_source"] == "seeds" and meta["tested_neurons"] == 16       # 24 pairs round-robin over 16
    # black-box test cases: in the image box, every kept one fools the victim, the count is recorded
    assert T["adv_x"].min() >= 0 and T["adv_x"].max() <= 1
    assert 0 < meta["adv_kept"] == len(T["adv_x"]) == len(T["adv_y"]) <= meta["adv_tried"] == 16
    assert bool((victim(T["adv_x"]).argmax(1) != T["adv_y"]).all())
    assert float(T["victim_adv_acc"][0]) < 1e-12 and meta["victim_adv_accuracy"] < 1e-12
    assert meta["degenerate"] == []


def test_white_box_generation_steps_before_its_first_check(victim, digits):
    """Official NeuronFuzzing.generate: every iteration takes one Adam step (opt.minimize) and only then checks
    the neuron against k, so a seed is never its own test case: one whose neuron already exceeds k gives the
    seed after one Adam step, x + step * g / (|g| + eps) on the first step (clipped to [0, 1] here)."""
    seeds = torch.stack([digits[1][i][0] for i in range(3)])
    maxima = -torch.ones(8)                            # k = -3: every (non-negative) ReLU neuron is above it
    g = generate_tests(victim, 1, seeds, m=3.0, step=0.05, max_iters=10, max_tests=6, neuron_maxima=maxima)
    assert bool(g["reached"].all()) and g["iters"].tolist() == [1] * 6
    for p in range(6):
        x = seeds[g["seed"][p]][None].clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(channel_means(victim.head(x, 1))[0, g["channel"][p]], x)
        expected = (x.detach() + 0.05 * grad / (grad.abs() + 1e-8)).clamp(0, 1)[0]
        assert torch.allclose(g["x"][p], expected, atol=1e-5)
        assert not torch.equal(g["x"][p], seeds[g["seed"][p]])


def test_blackbox_test_cases_come_from_the_whole_seed_file(victim, digits):
    """Official: seed_selection.py saves the 1000 most confident correctly classified test images;
    whitebox_generation.py takes the first NUMS = 100 of them, blackbox_generation.py attacks all of them."""
    assert DeepJudge().params["adv_seeds"] == 1000
    params = {k: v for k, v in SMALL.items() if k != "adv_seeds"}
    fp = DeepJudge(**params).extract(victim, digits[1], seed=0)
    T, meta = fp.tensors, fp.meta
    xs = torch.stack([digits[1][i][0] for i in range(len(digits[1]))])
    ys = torch.tensor([int(digits[1][i][1]) for i in range(len(digits[1]))])
    with torch.no_grad():
        ranked = select_seeds(victim(xs), ys, 1000)
    assert meta["num_seeds"] == 16 and len(T["seeds_x"]) == 16
    assert meta["adv_tried"] == len(ranked) == meta["correct_in_data"] > 16      # fewer than 1000 correct here
    assert torch.equal(T["seeds_x"], xs[ranked[:16]])                           # white-box: the first 16
    src = ranked[T["adv_index"]]                                                # each kept case's seed
    assert int(T["adv_index"].max()) >= 16 and torch.equal(T["adv_y"], ys[src])
    assert float((T["adv_x"] - xs[src]).abs().max()) <= 0.1 + 5 * 0.03 + 1e-6
    few = DeepJudge(**{**params, "adv_seeds": 4}).extract(victim, digits[1], seed=0)
    assert few.meta["adv_tried"] == 4 and few.meta["num_seeds"] == 16


def test_round_robin_pairs_cover_channels_first(victim, digits):
    seeds = torch.stack([digits[1][i][0] for i in range(5)])
    g = generate_tests(victim, 1, seeds, max_iters=0, max_tests=20)
    # layer 1 has 8 channels: pairs 0..7 hit channels 0..7 with seeds 0..4,0,1,2; pairs 8.. start round 2
    assert g["channel"].tolist() == [c % 8 for c in range(20)]
    assert g["seed"][:8].tolist() == [0, 1, 2, 3, 4, 0, 1, 2]
    assert g["seed"][8:16].tolist() == [1, 2, 3, 4, 0, 1, 2, 3]
    pairs = set(zip(g["seed"].tolist(), g["channel"].tolist()))
    assert len(pairs) == 20
    assert not bool(g["reached"].any())          # max_iters = 0: seeds themselves cannot exceed 3 x their max
    assert torch.equal(g["x"], seeds[g["seed"]])


def test_batched_generation_equals_one_pair_at_a_time(victim, digits):
    seeds = torch.stack([digits[1][i][0] for i in range(6)])
    kw = dict(max_iters=40, max_tests=10, step=0.05)
    pooled = generate_tests(victim, 2, seeds, batch_size=4, **kw)   # pool refilled as pairs finish
    single = generate_tests(victim, 2, seeds, batch_size=1, **kw)   # the reference loop: one pair at a time
    assert pooled["reached"].any() and not pooled["reached"].all()
    assert torch.equal(pooled["reached"], single["reached"]) and torch.equal(pooled["iters"], single["iters"])
    assert torch.allclose(pooled["x"], single["x"], atol=1e-5)


def test_extraction_is_deterministic_and_leaves_victim_untouched(victim, digits, fingerprint):
    before = weights_hash(victim)
    victim.train()
    fp2 = DeepJudge(**SMALL).extract(victim, digits[1], seed=0)
    assert victim.training and all(m.training for m in victim.modules())
    victim.eval()
    assert weights_hash(victim) == before
    assert all(p.requires_grad for p in victim.parameters())
    for name, t in fingerprint.tensors.items():
        assert torch.equal(t, fp2.tensors[name]), name
    assert fp2.key == fingerprint.key


def test_parameter_validation():
    with pytest.raises(RemovalNetError, match="num_seeds"):
        DeepJudge(num_seeds=0)
    with pytest.raises(RemovalNetError, match="threshold"):
        DeepJudge(threshold=1.5)
    with pytest.raises(RemovalNetError, match="unknown parameter 'eps'"):
        DeepJudge(eps=0.1)
    with pytest.raises(RemovalNetError, match="parameter .m. must be > 0"):
        DeepJudge(m=0)
    with pytest.raises(RemovalNetError, match="lad_reduction"):
        DeepJudge(lad_reduction="max")
    with pytest.raises(RemovalNetError, match="adv_method"):
        DeepJudge(adv_method="cw")
    with pytest.raises(RemovalNetError, match="k_images"):
        DeepJudge(k_images=0)
    P = DeepJudge().params
    assert P["num_seeds"] == 100 and P["m"] == 3.0 and P["k_images"] == 20000 and P["lad_reduction"] == "sum"
    # the official black-box generator's settings (blackbox_generation.py / adversarial_attacks.PGD)
    assert (P["adv_method"], P["pgd_eps"], P["pgd_steps"], P["pgd_step_size"]) == ("pgd", 0.1, 10, 0.03)


# ------------------------------------------------------------------------------------------ scoring
def test_identity_is_zero_and_a_copy(victim, digits, fingerprint):
    dj = DeepJudge(**SMALL)
    scores = dj.score(fingerprint, victim, victim)
    assert set(scores) == {"DJ-LOD", "DJ-LAD", "DJ-NOD", "DJ-NAD", "DJ-RobD", "DJ-JSD"}
    assert all(abs(v) < 1e-12 for v in scores.values()), scores
    refs = [_trained(s) for s in (11, 12, 13, 14, 15)]  # independently trained references (an untrained one
    # predicts one class everywhere: its Rob on the victim's fooling examples can be the victim's 0)
    cal = calibrate_models([dj], [fingerprint], victim, refs)
    for metric, value in scores.items():
        assert cal.taus[metric] > 0, (metric, cal.values[metric])
        assert verdict(metric, value, cal.taus[metric]), metric
    # a reference judged against the thresholds from all references is never a copy
    assert not any(verdict(m, cal.values[m][0], cal.taus[m]) for m in scores)


def test_suspect_of_other_architecture_is_refused(victim, fingerprint):
    torch.manual_seed(3)
    wide = create_model("vgg_small", 10, 1, 16, width=4)
    with pytest.raises(RemovalNetError, match="channels"):
        DeepJudge(**SMALL).score(fingerprint, victim, wide)
    with pytest.raises(RemovalNetError, match="white-box"):
        DeepJudge(**SMALL).score(fingerprint, victim, nn.Sequential(nn.Flatten(), nn.Linear(256, 10)))


def _permute_block2(model, perm):
    """Permute the output channels of block 2's last conv (+ its BatchNorm) and the input channels of block 3's
    first conv: the function is unchanged, the channel order of block 2's output is permuted."""
    m = copy.deepcopy(model)
    conv, bn, nxt = m.blocks[1][3], m.blocks[1][4], m.blocks[2][0]
    with torch.no_grad():
        conv.weight.copy_(conv.weight[perm])
        for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
            t.copy_(t[perm])
        nxt.weight.copy_(nxt.weight[:, perm])
    return m


def test_channel_permutation_moves_white_box_metrics(victim, digits, fingerprint):
    perm = torch.roll(torch.arange(16), 5)
    suspect = _permute_block2(victim, perm)
    T = fingerprint.tensors
    x = torch.stack([digits[1][i][0] for i in range(64)])
    with torch.no_grad():
        assert torch.allclose(suspect(x), victim(x), atol=1e-5)
        assert torch.allclose(suspect.head(x, 2), victim.head(x, 2)[:, perm], atol=1e-6)
        # the former "NOD" (LOD's formula on the logits of seeds and test cases) cannot see the permutation
        inputs = torch.cat([T["seeds_x"], T["tests_x"]])
        old_nod = lod(victim(inputs), suspect(inputs))
    assert old_nod < 1e-4
    s = DeepJudge(**SMALL).score(fingerprint, victim, suspect)
    # the official NOD reads each test case's own neuron c in both models: the permutation moves it
    assert s["DJ-NOD"] > 0.05 and s["DJ-NOD"] > 100 * old_nod, s
    assert s["DJ-LOD"] > 0.1 and s["DJ-LAD"] > 0.5 and s["DJ-NAD"] > 0.5, s
    assert s["DJ-RobD"] < 1e-12 and s["DJ-JSD"] < 1e-9, s
    # at layer 1, before the permuted conv, the two models agree
    fp1 = DeepJudge(**{**SMALL, "layer": 1}).extract(victim, digits[1])
    s1 = DeepJudge(**{**SMALL, "layer": 1}).score(fp1, victim, suspect)
    assert s1["DJ-LOD"] < 1e-5 and s1["DJ-LAD"] < 1e-12 and s1["DJ-NOD"] < 1e-5 and s1["DJ-NAD"] < 1e-12, s1


def test_scores_match_the_official_formulas_on_a_real_suspect(victim, digits, fingerprint):
    """The verifier's six values against the official formulas re-computed here from the models' raw outputs."""
    suspect = _trained(24)
    T, layer = fingerprint.tensors, fingerprint.meta["layer"]
    s = DeepJudge(**SMALL).score(fingerprint, victim, suspect)
    with torch.no_grad():
        hv = victim.head(T["tests_x"], layer).double().permute(0, 2, 3, 1).numpy()       # Keras layout NHWC
        hs = suspect.head(T["tests_x"], layer).double().permute(0, 2, 3, 1).numpy()
        pv = torch.softmax(victim(T["adv_x"]).double(), 1).numpy()
        ps = torch.softmax(suspect(T["adv_x"]).double(), 1).numpy()
    ch = T["tests_channel"].numpy()
    # the official dict {(layer, neuron): test cases} has a key for EVERY targeted neuron (SMALL tries 24 pairs
    # round-robin over the 16 channels, so all 16 are targeted), also those without a test case
    assert fingerprint.meta["tested_neurons"] == 16 and len(set(ch.tolist())) < 16
    ov = {(layer, c): hv[ch == c] for c in range(16)}
    os_ = {(layer, c): hs[ch == c] for c in range(16)}
    ref = _official(ov, os_)
    assert s["DJ-LOD"] == pytest.approx(ref["LOD"], rel=1e-5)
    assert s["DJ-LAD"] == pytest.approx(ref["LAD"], rel=1e-5)
    assert s["DJ-NOD"] == pytest.approx(ref["NOD"], rel=1e-5)
    assert s["DJ-NAD"] == pytest.approx(ref["NAD"], rel=1e-5) and ref["NAD"] > 1
    # official Rob and RobD: the victim's accuracy on its kept (fooling) examples is 0, so RobD = Rob(F_S)
    y = T["adv_y"].numpy()
    rob_v, rob_s = (pv.argmax(1) == y).mean(), (ps.argmax(1) == y).mean()
    assert rob_v == 0 and 0 < rob_s < 1 and abs(rob_s - 0.5) > 0.05     # 1 - Rob(F_S) would differ from Rob(F_S)
    assert s["DJ-RobD"] == pytest.approx(abs(rob_v - rob_s), abs=1e-12)
    mid = (pv + ps) / 2
    kl = lambda p, q: np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1) / q), 0), axis=1)  # noqa: E731
    assert s["DJ-JSD"] == pytest.approx(np.mean((kl(pv, mid) + kl(ps, mid)) / 2), rel=1e-5)


def test_robd_uses_the_victims_accuracy():
    """RobD = |Rob(F_V) - Rob(F_S)| with Rob(F_V) read from the fingerprint, never assumed to be 1."""
    x = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    lin = nn.Sequential(nn.Flatten(), nn.Linear(256, 3))
    with torch.no_grad():
        pred = lin(x).argmax(1)
    y = pred.clone()
    y[1:] = (pred[1:] + 1) % 3                                  # the suspect is right on 1 of 4: Rob(F_S) = 0.25
    T = {"adv_x": x, "adv_y": y, "victim_adv_logits": torch.randn(4, 3), "victim_adv_acc": torch.tensor([0.0])}
    out = DeepJudge._blackbox(T, lin, bs=8, device=torch.device("cpu"))
    assert out["DJ-RobD"] == pytest.approx(0.25)                # 1.0 in place of Rob(F_V) would give 0.75
    out = DeepJudge._blackbox({**T, "victim_adv_acc": torch.tensor([0.5])}, lin, bs=8, device=torch.device("cpu"))
    assert out["DJ-RobD"] == pytest.approx(0.25)


def test_blackbox_generator_is_the_official_pgd(victim, digits):
    """Oracle: the official adversarial_attacks.PGD loop written out here (random start in [-eps, eps], clip to
    [0, 1], 10 sign steps of 0.03, clip, NO projection), then keep what fools the victim."""
    x = torch.stack([digits[1][i][0] for i in range(32)])
    y = torch.tensor([int(digits[1][i][1]) for i in range(32)])
    eps, step, steps = 0.1, 0.03, 10
    u = torch.rand(x.shape, generator=torch.Generator().manual_seed(5))          # the same uniform draw
    adv = (x + (u * 2 - 1) * eps).clamp(0, 1)
    for _ in range(steps):
        adv.requires_grad_(True)
        loss = nn.functional.cross_entropy(victim(adv), y, reduction="sum")
        (g,) = torch.autograd.grad(loss, adv)
        adv = (adv.detach() + step * g.sign()).clamp(0, 1)
    fooled_ref = victim(adv).argmax(1) != y
    got, logits, fooled = adversarial_tests(victim, x, y, eps=eps, steps=steps, step_size=step,
                                            generator=torch.Generator().manual_seed(5), batch_size=7)
    assert torch.allclose(got, adv.detach(), atol=1e-5)
    assert torch.equal(fooled, fooled_ref) and torch.equal(fooled, logits.argmax(1) != y)
    assert float((got - x).abs().max()) > eps + 0.05                     # no eps-ball projection
    # FGSM: random start then one step of eps
    u = torch.rand(x.shape, generator=torch.Generator().manual_seed(6))
    a0 = (x + (u * 2 - 1) * eps).clamp(0, 1).requires_grad_(True)
    (g,) = torch.autograd.grad(nn.functional.cross_entropy(victim(a0), y, reduction="sum"), a0)
    fg, _, _ = adversarial_tests(victim, x, y, method="fgsm", eps=eps, generator=torch.Generator().manual_seed(6))
    assert torch.allclose(fg, (a0.detach() + eps * g.sign()).clamp(0, 1), atol=1e-5)
    with pytest.raises(RemovalNetError, match="adversarial method"):
        adversarial_tests(victim, x, y, method="cw")


def test_no_fooling_example_is_loud_and_degenerate(victim, digits):
    params = {**SMALL, "pgd_eps": 1e-5, "pgd_step_size": 1e-6, "pgd_steps": 1}
    with pytest.warns(UserWarning, match="none of the 16 adversarial examples"):
        fp = DeepJudge(**params).extract(victim, digits[1], seed=0)
    assert fp.meta["adv_kept"] == 0 and fp.meta["degenerate"] == ["DJ-RobD", "DJ-JSD"]
    assert fp.meta["victim_adv_accuracy"] is None and len(fp.tensors["adv_x"]) == 0
    s = DeepJudge(**params).score(fp, victim, victim)
    assert math.isnan(s["DJ-RobD"]) and math.isnan(s["DJ-JSD"])          # no evidence, never a silent 0
    assert s["DJ-LOD"] < 1e-12
    with pytest.raises(RemovalNetError, match="not a number"):
        verdict("DJ-RobD", s["DJ-RobD"], 0.1)


def test_k_from_training_data(victim, digits, fingerprint):
    dj = DeepJudge(**{**SMALL, "k_images": 50})
    fp = dj.extract(victim, digits[1], seed=0, train_data=digits[0])
    assert fp.meta["k_source"] == "train_data" and fp.meta["k_images_used"] == 50
    x = torch.stack([digits[0][i][0] for i in range(50)])       # the FIRST k_images training images
    with torch.no_grad():
        ref = 3 * channel_means(victim.head(x, 2)).max(0).values
    assert torch.allclose(fp.tensors["k"], ref, atol=1e-6)
    assert fp.key != DeepJudge(**{**SMALL, "k_images": 50}).extract(victim, digits[1], seed=0).key
    assert fp.key == dj.key(victim, digits[1], seed=0, train_data=digits[0])
    with pytest.raises(RemovalNetError, match="takes no training data"):
        create_verifier("sac").extract(victim, digits[1], train_data=digits[0])


def test_lad_reduction_option(victim, digits, fingerprint):
    suspect = _model(31).eval()
    s_sum = DeepJudge(**SMALL).score(fingerprint, victim, suspect)
    fp_mean = DeepJudge(**{**SMALL, "lad_reduction": "mean"}).extract(victim, digits[1], seed=0)
    s_mean = DeepJudge(**{**SMALL, "lad_reduction": "mean"}).score(fp_mean, victim, suspect)
    assert s_sum["DJ-LAD"] > 1.0 and s_mean["DJ-LAD"] == pytest.approx(s_sum["DJ-LAD"] / 16)
    assert s_mean["DJ-LOD"] == pytest.approx(s_sum["DJ-LOD"])
    a_sum = create_verifier("deepjudge_aligned", **SMALL)
    a_mean = create_verifier("deepjudge_aligned", **SMALL, lad_reduction="mean")
    v_sum = a_sum.score(a_sum.extract(victim, digits[1]), victim, suspect)
    v_mean = a_mean.score(a_mean.extract(victim, digits[1]), victim, suspect)
    assert v_sum["DJA-LAD"] > 0 and v_mean["DJA-LAD"] == pytest.approx(v_sum["DJA-LAD"] / 16)


def test_no_test_case_reached_falls_back_with_a_warning(victim, digits):
    with pytest.warns(UserWarning, match="no test case reached k"):
        fp = DeepJudge(**{**SMALL, "max_iters": 0}).extract(victim, digits[1])
    assert fp.meta["fallback_unreached"] and fp.meta["tests_reached"] == 0
    assert fp.meta["tests_kept"] == fp.meta["tests_tried"] == 24
    assert torch.equal(fp.tensors["tests_x"], fp.tensors["seeds_x"][fp.tensors["tests_seed"]])
    # no test case: the white-box metrics carry no evidence and say so (flagged, left out of votes)
    assert {"DJ-LOD", "DJ-LAD", "DJ-NOD", "DJ-NAD"} <= set(fp.meta["degenerate"])
    with pytest.warns(UserWarning, match="no test case reached k"):
        fpa = create_verifier("deepjudge_aligned", **{**SMALL, "max_iters": 0}).extract(victim, digits[1])
    assert {"DJA-LOD", "DJA-LAD"} <= set(fpa.meta["degenerate"])
    reached = DeepJudge(**SMALL).extract(victim, digits[1])
    assert not reached.meta["fallback_unreached"]
    assert not {"DJ-LOD", "DJ-LAD", "DJ-NOD", "DJ-NAD"} & set(reached.meta["degenerate"])
