"""Tests for bara.harness.metrics against hand-computed values on tiny examples."""

from __future__ import annotations

import math

import pytest
import torch

from bara.harness.metrics import (
    accuracy,
    brier_score,
    classification_report,
    expected_calibration_error,
    mutual_information,
    negative_log_likelihood,
    predictive_entropy,
    reliability_bins,
)

# Four examples, K = 3. Top-label confidences 0.9, 0.9, 0.7, 0.5 (none on a bin edge).
#   15 bins of width 1/15: 0.9 -> bin 13 [0.867, 0.933), 0.7 -> bin 10, 0.5 -> bin 7.
P4 = torch.tensor(
    [
        [0.90, 0.05, 0.05],  # y=0, correct
        [0.05, 0.90, 0.05],  # y=2, wrong
        [0.20, 0.70, 0.10],  # y=1, correct
        [0.50, 0.30, 0.20],  # y=1, wrong
    ]
)
Y4 = torch.tensor([0, 2, 1, 1])


def _ece_by_hand(conf: list[float], correct: list[bool], edges: list[float]) -> float:
    """Reference ECE: bins [lo, hi) with explicit edges, last bin closed."""
    n = len(conf)
    total = 0.0
    for b in range(len(edges) - 1):
        lo, hi = edges[b], edges[b + 1]
        last = b == len(edges) - 2
        idx = [i for i, c in enumerate(conf) if lo <= c < hi or (last and c == hi)]
        if not idx:
            continue
        acc = sum(correct[i] for i in idx) / len(idx)
        mean_conf = sum(conf[i] for i in idx) / len(idx)
        total += len(idx) / n * abs(acc - mean_conf)
    return total


# --------------------------------------------------------------------------------------
# hand-computed values
# --------------------------------------------------------------------------------------


def test_accuracy_hand():
    assert accuracy(P4, Y4) == pytest.approx(0.5)
    assert accuracy(P4, torch.tensor([0, 1, 1, 0])) == pytest.approx(1.0)


def test_ece_hand_15_bins_different_bins():
    # bin 13: {0.9 ok, 0.9 wrong} -> |0.5 - 0.9| * 2/4 = 0.2
    # bin 10: {0.7 ok}            -> |1.0 - 0.7| * 1/4 = 0.075
    # bin 7:  {0.5 wrong}         -> |0.0 - 0.5| * 1/4 = 0.125
    ece = expected_calibration_error(P4, Y4)
    assert ece == pytest.approx(0.4, abs=1e-6)
    edges = [i / 15 for i in range(16)]
    assert ece == pytest.approx(_ece_by_hand([0.9, 0.9, 0.7, 0.5], [True, False, True, False], edges), abs=1e-6)


def test_ece_hand_explicit_few_bins():
    # 2 bins [0, .5) and [.5, 1]: all four confidences land in the upper bin:
    # acc = 0.5, mean conf = (0.9 + 0.9 + 0.7 + 0.5) / 4 = 0.75 -> ECE = 0.25
    assert expected_calibration_error(P4, Y4, n_bins=2) == pytest.approx(0.25, abs=1e-6)
    # 5 bins of width 0.2: {0.9, 0.9} in [0.8, 1], {0.7} in [0.6, 0.8), {0.5} in [0.4, 0.6)
    # -> 0.5 * 0.4 + 0.25 * 0.3 + 0.25 * 0.5 = 0.4
    assert expected_calibration_error(P4, Y4, n_bins=5) == pytest.approx(0.4, abs=1e-6)
    # 1 bin == |accuracy - mean confidence|
    assert expected_calibration_error(P4, Y4, n_bins=1) == pytest.approx(abs(0.5 - 0.75), abs=1e-6)


def test_ece_is_a_fraction_and_matches_reliability_bins():
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(200, 5, generator=g) * 3, dim=1)
    labels = torch.randint(0, 5, (200,), generator=g)
    ece = expected_calibration_error(probs, labels)
    assert 0.0 <= ece <= 1.0
    bins = reliability_bins(probs, labels)
    keep = bins["count"] > 0
    from_bins = float(
        ((bins["accuracy"] - bins["confidence"]).abs()[keep] * bins["count"][keep]).sum() / 200
    )
    assert ece == pytest.approx(from_bins, abs=1e-5)


def test_ece_perfectly_calibrated():
    # K=2: 4 examples at confidence 0.75 with 3 correct, 5 at 0.6 with 3 correct.
    probs = torch.tensor([[0.75, 0.25]] * 4 + [[0.4, 0.6]] * 5)
    labels = torch.tensor([0, 0, 0, 1] + [1, 1, 1, 0, 0])
    assert expected_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-6)
    # Fully confident and always right: confidence exactly 1.0 is handled (last bin).
    probs = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    labels = torch.tensor([0, 1, 0])
    assert expected_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-6)
    bins = reliability_bins(probs, labels)
    assert bins["count"][-1] == 3 and bins["count"].sum() == 3


def test_ece_binary_k2():
    # confidences 0.82 (bin 12), 0.82 (bin 12), 0.62 (bin 9), 0.55 (bin 8)
    probs = torch.tensor([[0.82, 0.18], [0.18, 0.82], [0.38, 0.62], [0.55, 0.45]])
    labels = torch.tensor([0, 0, 1, 0])
    # bin 12: {0.82 ok, 0.82 wrong} -> 2/4 * |0.5 - 0.82| = 0.16
    # bin 9:  {0.62 ok} -> 1/4 * 0.38 = 0.095 ; bin 8: {0.55 ok} -> 1/4 * 0.45 = 0.1125
    assert expected_calibration_error(probs, labels) == pytest.approx(0.3675, abs=1e-6)
    assert accuracy(probs, labels) == pytest.approx(0.75)


def test_nll_hand():
    expected = -(math.log(0.9) + math.log(0.05) + math.log(0.7) + math.log(0.3)) / 4
    assert negative_log_likelihood(P4, Y4) == pytest.approx(expected, rel=1e-6)


def test_nll_zero_probability_is_finite():
    probs = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    labels = torch.tensor([1, 0])
    expected = (-math.log(1e-12) - math.log(0.5)) / 2
    assert negative_log_likelihood(probs, labels) == pytest.approx(expected, rel=1e-6)


def test_brier_hand():
    # per example: 0.015, 1.715, 0.14, 0.78 -> mean 0.6625
    assert brier_score(P4, Y4) == pytest.approx(0.6625, abs=1e-6)
    # perfect predictions -> 0; maximally wrong one-hot -> 2
    assert brier_score(torch.eye(3), torch.arange(3)) == pytest.approx(0.0)
    assert brier_score(torch.eye(3), torch.tensor([1, 2, 0])) == pytest.approx(2.0)


# --------------------------------------------------------------------------------------
# zero-padded multiple-choice rows (K = 4, some examples have only 2 or 3 choices)
# --------------------------------------------------------------------------------------


def test_padded_k4_equals_unpadded():
    padded = torch.tensor(
        [
            [0.60, 0.30, 0.10, 0.00],  # 3 choices, y=0 correct
            [0.20, 0.80, 0.00, 0.00],  # 2 choices, y=0 wrong
            [0.10, 0.20, 0.30, 0.40],  # 4 choices, y=3 correct
            [0.35, 0.65, 0.00, 0.00],  # 2 choices, y=1 correct
        ]
    )
    labels = torch.tensor([0, 0, 3, 1])
    assert accuracy(padded, labels) == pytest.approx(0.75)
    nll = -(math.log(0.6) + math.log(0.2) + math.log(0.4) + math.log(0.65)) / 4
    assert negative_log_likelihood(padded, labels) == pytest.approx(nll, rel=1e-6)
    brier_rows = [
        0.4**2 + 0.3**2 + 0.1**2,
        0.8**2 + 0.8**2,
        0.1**2 + 0.2**2 + 0.3**2 + 0.6**2,
        0.35**2 + 0.35**2,
    ]
    assert brier_score(padded, labels) == pytest.approx(sum(brier_rows) / 4, abs=1e-6)
    ent = predictive_entropy(padded)
    assert ent[1].item() == pytest.approx(-(0.2 * math.log(0.2) + 0.8 * math.log(0.8)), rel=1e-5)
    assert ent[3].item() == pytest.approx(predictive_entropy(torch.tensor([[0.35, 0.65]]))[0].item(), rel=1e-6)
    # the padded column never changes any metric compared with dropping it, for rows that
    # all have <= 3 real choices
    three = padded[[0, 1, 3]]
    y3 = labels[[0, 1, 3]]
    for fn in (accuracy, negative_log_likelihood, brier_score, expected_calibration_error):
        assert fn(three, y3) == pytest.approx(fn(three[:, :3], y3), abs=1e-6)


def test_padded_k4_ece_hand():
    padded = torch.tensor(
        [
            [0.62, 0.38, 0.00, 0.00],  # conf .62 bin 9, y=0 correct
            [0.10, 0.20, 0.70, 0.00],  # conf .7 bin 10, y=1 wrong
            [0.10, 0.10, 0.10, 0.70],  # conf .7 bin 10, y=3 correct
            [0.25, 0.25, 0.26, 0.24],  # conf .26 bin 3, y=2 correct
        ]
    )
    labels = torch.tensor([0, 1, 3, 2])
    # bin 9: 1/4 * |1 - .62| = .095 ; bin 10: 2/4 * |.5 - .7| = .1 ; bin 3: 1/4 * |1 - .26| = .185
    assert expected_calibration_error(padded, labels) == pytest.approx(0.38, abs=1e-6)


# --------------------------------------------------------------------------------------
# entropy and mutual information
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [2, 4, 7])
def test_entropy_uniform_is_log_k(k):
    ent = predictive_entropy(torch.full((3, k), 1.0 / k))
    assert ent.shape == (3,)
    assert torch.allclose(ent, torch.full((3,), math.log(k)), atol=1e-6)


def test_entropy_one_hot_is_zero():
    assert torch.allclose(predictive_entropy(torch.eye(4)), torch.zeros(4))


def test_mutual_information_zero_when_samples_agree():
    p = torch.tensor([[0.7, 0.2, 0.1], [0.3, 0.3, 0.4]])
    mi = mutual_information(p.expand(5, 2, 3))
    assert mi.shape == (2,)
    assert torch.all(mi >= 0)
    assert torch.allclose(mi, torch.zeros(2), atol=1e-7)


def test_mutual_information_positive_when_samples_disagree():
    # two confident samples that disagree: H(mean) = log 2, mean H = 0 -> MI = log 2
    sp = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])
    mi = mutual_information(sp)
    assert mi.item() == pytest.approx(math.log(2), rel=1e-6)
    sp = torch.tensor([[[0.8, 0.2, 0.0]], [[0.3, 0.7, 0.0]]])
    assert mutual_information(sp).item() > 0.05


def test_mutual_information_hand():
    sp = torch.tensor([[[0.9, 0.1]], [[0.5, 0.5]]])

    def h(*ps):
        return -sum(p * math.log(p) for p in ps if p > 0)

    expected = h(0.7, 0.3) - 0.5 * (h(0.9, 0.1) + h(0.5, 0.5))
    assert mutual_information(sp).item() == pytest.approx(expected, rel=1e-5)


# --------------------------------------------------------------------------------------
# report and bins
# --------------------------------------------------------------------------------------


def test_classification_report_keys_and_values():
    rep = classification_report(P4, Y4)
    assert set(rep) == {"accuracy", "ece", "nll", "brier", "n_examples", "mean_entropy"}
    assert all(isinstance(v, float) for v in rep.values())
    assert rep["accuracy"] == pytest.approx(0.5)
    assert rep["ece"] == pytest.approx(0.4, abs=1e-6)
    assert rep["brier"] == pytest.approx(0.6625, abs=1e-6)
    assert rep["n_examples"] == 4
    assert rep["mean_entropy"] == pytest.approx(float(predictive_entropy(P4).mean()), rel=1e-6)

    sp = torch.stack([P4, P4.roll(1, dims=1)])
    rep = classification_report(sp.mean(0), Y4, sample_probs=sp)
    assert rep["mean_mutual_information"] == pytest.approx(float(mutual_information(sp).mean()), rel=1e-6)
    assert rep["mean_mutual_information"] > 0


def test_reliability_bins_hand():
    bins = reliability_bins(P4, Y4)
    assert set(bins) == {"lower", "upper", "confidence", "accuracy", "count"}
    assert all(v.shape == (15,) for v in bins.values())
    assert torch.allclose(bins["lower"], torch.arange(15, dtype=torch.float64) / 15)
    assert torch.allclose(bins["upper"], torch.arange(1, 16, dtype=torch.float64) / 15)
    assert bins["count"].tolist() == [0] * 7 + [1, 0, 0, 1, 0, 0, 2, 0]
    assert bins["accuracy"][13].item() == pytest.approx(0.5)
    assert bins["confidence"][13].item() == pytest.approx(0.9)
    assert bins["accuracy"][10].item() == pytest.approx(1.0)
    assert bins["accuracy"][7].item() == pytest.approx(0.0)
    assert torch.isnan(bins["accuracy"][0]) and torch.isnan(bins["confidence"][0])


# --------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "probs, labels, match",
    [
        (torch.tensor([0.5, 0.5]), torch.tensor([0]), r"shape \[N, K\]"),
        (torch.full((2, 3), 0.5), torch.tensor([0, 1]), "sum to 1"),
        (torch.tensor([[0.5, 0.5], [float("nan"), 1.0]]), torch.tensor([0, 1]), "NaN"),
        (torch.tensor([[1.5, -0.5]]), torch.tensor([0]), "negative"),
        (torch.ones(2, 1), torch.tensor([0, 0]), "at least 2 classes"),
        (torch.empty(0, 3), torch.empty(0, dtype=torch.long), "empty"),
        (torch.tensor([[1, 0]]), torch.tensor([0]), "floating-point"),
        ([[0.5, 0.5]], torch.tensor([0]), "torch.Tensor"),
        (torch.full((2, 2), 0.5), torch.tensor([0, 1, 0]), "shape mismatch"),
        (torch.full((2, 2), 0.5), torch.tensor([[0], [1]]), r"labels must have shape \[N\]"),
        (torch.full((2, 2), 0.5), torch.tensor([0.0, 1.0]), "integer"),
        (torch.full((2, 2), 0.5), torch.tensor([0, 2]), "out of range"),
        (torch.full((2, 2), 0.5), torch.tensor([-1, 0]), "out of range"),
    ],
)
@pytest.mark.parametrize(
    "fn",
    [
        accuracy,
        expected_calibration_error,
        negative_log_likelihood,
        brier_score,
        classification_report,
        reliability_bins,
    ],
)
def test_validation_errors(fn, probs, labels, match):
    with pytest.raises(ValueError, match=match) as exc:
        fn(probs, labels)
    assert "\n" not in str(exc.value)


def test_row_sum_tolerance():
    ok = torch.tensor([[0.5004, 0.5]])  # off by 4e-4 < 1e-3
    assert accuracy(ok, torch.tensor([0])) == 1.0
    with pytest.raises(ValueError, match="sum to 1"):
        accuracy(torch.tensor([[0.502, 0.5]]), torch.tensor([0]))


def test_validation_errors_other_args():
    with pytest.raises(ValueError, match="n_bins"):
        expected_calibration_error(P4, Y4, n_bins=0)
    with pytest.raises(ValueError, match="n_bins"):
        reliability_bins(P4, Y4, n_bins=2.5)
    with pytest.raises(ValueError, match="eps"):
        negative_log_likelihood(P4, Y4, eps=0.0)
    with pytest.raises(ValueError, match=r"shape \[N, K\]"):
        predictive_entropy(torch.full((4,), 0.25))
    with pytest.raises(ValueError, match="sum to 1"):
        predictive_entropy(torch.full((2, 4), 0.3))
    with pytest.raises(ValueError, match=r"shape \[S, N, K\]"):
        mutual_information(P4)
    with pytest.raises(ValueError, match="sum to 1"):
        mutual_information(torch.full((2, 3, 2), 0.7))
    with pytest.raises(ValueError, match="empty"):
        mutual_information(torch.empty(0, 3, 2))
    with pytest.raises(ValueError, match="shape mismatch"):
        classification_report(P4, Y4, sample_probs=torch.stack([P4[:3], P4[:3]]))
    with pytest.raises(ValueError, match=r"shape \[S, N, K\]"):
        classification_report(P4, Y4, sample_probs=P4)


def test_paired_bootstrap_difference_and_interval():
    from bara.harness.metrics import negative_log_likelihood, paired_bootstrap

    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (400,), generator=g)
    b = torch.softmax(torch.randn(400, 3, generator=g), dim=1)
    a = 0.5 * b + 0.5 * torch.nn.functional.one_hot(labels, 3).double()  # strictly more mass on the truth
    res = paired_bootstrap("nll", a, b, labels, n_boot=300)
    assert res["diff"] == pytest.approx(negative_log_likelihood(a, labels) - negative_log_likelihood(b, labels))
    assert res["low"] <= res["diff"] <= res["high"] < 0 and res["frac_below_zero"] == 1.0
    same = paired_bootstrap("ece", b, b, labels, n_boot=50)
    assert same["diff"] == same["low"] == same["high"] == 0.0 and same["frac_below_zero"] == 0.0
    with pytest.raises(ValueError, match="allowed: nll, ece, brier, accuracy"):
        paired_bootstrap("auc", a, b, labels)
    with pytest.raises(ValueError, match="N=10 rows"):
        paired_bootstrap("nll", a[:10], b, labels)


def test_error_detection_auroc_against_pairwise_count():
    from bara.harness.metrics import error_detection_auroc

    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 2, (60,), generator=g)
    probs = torch.softmax(torch.randn(60, 2, generator=g).round(decimals=1), dim=1)  # rounding makes ties
    conf, pred = probs.max(1)
    right, wrong = conf[pred == labels], conf[pred != labels]
    pairs = (right[:, None] > wrong[None, :]).double() + 0.5 * (right[:, None] == wrong[None, :]).double()
    assert error_detection_auroc(probs, labels) == pytest.approx(float(pairs.mean()), abs=1e-12)
    perfect = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
    assert error_detection_auroc(perfect, torch.tensor([0, 1, 1])) == 1.0  # the only error is the least confident
    assert math.isnan(error_detection_auroc(perfect, torch.tensor([0, 0, 1])))  # no error at all


# ---------------------------------------------------------------------------- domain permutation test (C4 on real data)

def test_domain_permutation_test_detects_a_shifted_domain_and_not_noise():
    from bara.harness.metrics import domain_permutation_test

    gen = torch.Generator().manual_seed(0)
    values = torch.randn(300, 16, generator=gen)
    domains = ["a"] * 100 + ["b"] * 100 + ["c"] * 100
    null = domain_permutation_test(values, domains, rounds=400)
    values[:100, 3] += 0.6  # one column of one domain moves
    shifted = domain_permutation_test(values, domains, rounds=400)
    assert null["p_value"] > 0.05 and shifted["p_value"] < 0.01
    assert shifted["statistic"] > null["statistic"] and shifted["n_domains"] == 3
    same = domain_permutation_test(torch.full((40,), 2.0), ["a", "b"] * 20, rounds=50)
    assert same["p_value"] == 1.0  # a constant never separates domains
    rounding = torch.full((40,), 3.5926494) + torch.tensor([0.0, 2.4e-7] * 20)  # one float32 ulp, by domain
    assert domain_permutation_test(rounding, ["a", "b"] * 20, rounds=50)["p_value"] == 1.0


@pytest.mark.parametrize("values, domains, message", [
    (torch.zeros(4), ["a"] * 4, "at least two domains"),
    (torch.zeros(4), ["a", "b"], "N = len"),
])
def test_domain_permutation_test_rejects_bad_input(values, domains, message):
    from bara.harness.metrics import domain_permutation_test

    with pytest.raises(ValueError, match=message):
        domain_permutation_test(values, domains)


def test_gate_profile_separates_deterministic_and_random_domains():
    from bara.harness.metrics import gate_profile

    # layer q: domain a keeps nothing (deterministic), domain b flips coins; layer v: both keep all
    q = torch.tensor([[0.01, 0.0], [0.02, 0.01], [0.5, 0.5], [0.5, 0.5]])
    v = torch.tensor([[1.0, 1.0], [1.0, 0.99], [0.99, 1.0], [1.0, 1.0]])
    profile = gate_profile({"q": q, "v": v}, ["a", "a", "b", "b"])
    a, b = profile["a"], profile["b"]
    assert a["n"] == b["n"] == 2
    assert a["certain"] == 1.0 and b["certain"] == 0.5
    assert b["entropy_by_layer"][0] == pytest.approx(math.log(2)) and a["entropy_by_layer"][0] < 0.1
    assert a["keep_by_layer"] == pytest.approx([0.01, 0.9975]) and b["keep_by_layer"][0] == pytest.approx(0.5)
    assert a["rank"] == pytest.approx((0.02 + 1.995) / 2)  # factors kept per layer, averaged over layers
    assert b["entropy"] > a["entropy"]


def test_gate_profile_rejects_mismatched_input():
    from bara.harness.metrics import gate_profile

    with pytest.raises(ValueError, match="no gates"):
        gate_profile({}, ["a"])
    with pytest.raises(ValueError, match="3 rows but 2 domains"):
        gate_profile({"q": torch.rand(3, 2)}, ["a", "b"])
    with pytest.raises(ValueError, match="certain must lie"):
        gate_profile({"q": torch.rand(2, 2)}, ["a", "b"], certain=0.5)
