"""group_advantages / length_penalized_rewards conveniences: group labels of any hashable type,
nan_policy="omit", correctness given as rewards over a threshold."""

import numpy as np
import pytest
import torch

import ia_kernels as ik

NAN = float("nan")


def test_labels_any_hashable_match_int_ids():
    r = torch.tensor([1., 0, 0, 1, 0, 1, 1, 1])
    ids = torch.tensor([3, 3, 7, 7, 3, 7, 3, 7])
    want = ik.group_advantages(r, ids, estimator="rloo")
    for labels in (["u3", "u3", "u7", "u7", "u3", "u7", "u3", "u7"],
                   ("u3", "u3", "u7", "u7", "u3", "u7", "u3", "u7"),
                   np.array(["u3", "u3", "u7", "u7", "u3", "u7", "u3", "u7"], dtype=object),
                   np.array([3, 3, 7, 7, 3, 7, 3, 7]), [3, 3, 7, 7, 3, 7, 3, 7]):
        torch.testing.assert_close(ik.group_advantages(r, labels, estimator="rloo"), want, rtol=0, atol=0)
    got = ik.length_penalized_rewards(r, torch.arange(8) * 10 + 5, list("aabbabab"), alpha=0.2)
    torch.testing.assert_close(got, ik.length_penalized_rewards(r, torch.arange(8) * 10 + 5, ids, alpha=0.2))


def test_bad_labels():
    r = torch.zeros(3)
    with pytest.raises(ValueError, match="groups has 2 labels for 3 samples"):
        ik.group_advantages(r, ["a", "b"], estimator="rloo")
    with pytest.raises(ValueError, match="labels must be hashable .* found list at index 1"):
        ik.group_advantages(r, ["a", ["b"], "a"], estimator="rloo")
    with pytest.raises(ValueError, match="one-dimensional"):
        ik.group_advantages(r, np.zeros((3, 1)), estimator="rloo")
    with pytest.raises(ValueError, match="groups must be an int"):
        ik.group_advantages(r, 1.5, estimator="rloo")


def _trl_grpo(r, n, eps=1e-4):
    """TRL 1.16's nan-aware group scaling: (r - nanmean) / (nanstd + eps), NaN advantages -> 0."""
    g = r.view(-1, n)
    mean = torch.nanmean(g, 1, keepdim=True)
    cnt = (~torch.isnan(g)).sum(1, keepdim=True)
    var = torch.nansum((g - mean) ** 2, 1, keepdim=True) / (cnt - 1)
    return torch.nan_to_num((g - mean) / (var.sqrt() + eps), nan=0.0).view(-1)


def test_nan_omit_equals_trl_grpo():
    torch.manual_seed(0)
    r = torch.rand(24, dtype=torch.float64)
    r[[1, 5, 6, 13, 14, 15, 16]] = NAN  # group 3: one scored sample left
    got = ik.group_advantages(r, 4, estimator="grpo", eps=1e-4, nan_policy="omit")
    torch.testing.assert_close(got, _trl_grpo(r, 4), rtol=0, atol=1e-12)
    assert bool((got[torch.isnan(r)] == 0).all())


def test_nan_omit_groups_below_k():
    r = torch.tensor([1., 0, NAN, 1, 0, 0, 1, 1, NAN, NAN, NAN, 1])
    got = ik.group_advantages(r, 4, estimator="passk", k=3, nan_policy="omit")
    # group 0: 3 scored (k=3: n == k, Tang's max(r) - max(r without i)); group 1: full; group 2: 1 scored -> 0
    torch.testing.assert_close(got[:4], torch.tensor([0., 0, 0, 0]))
    torch.testing.assert_close(got[4:8], ik.group_advantages(r[4:8], 4, estimator="passk", k=3))
    assert bool((got[8:] == 0).all())
    r2 = torch.tensor([1., 0, 0, 0, 1, NAN, 0, 0])
    got = ik.group_advantages(r2, 4, estimator="majority", answers=torch.tensor([1, 2, 2, 3, 1, 1, 2, 2]),
                              nan_policy="omit")
    torch.testing.assert_close(got[4:], torch.zeros(4))
    # no NaN: omit changes nothing
    r3 = torch.tensor([1., 0, 0, 1])
    torch.testing.assert_close(ik.group_advantages(r3, 4, estimator="grpo", nan_policy="omit"),
                               ik.group_advantages(r3, 4, estimator="grpo"), rtol=0, atol=0)


def test_nan_policy_errors():
    r = torch.tensor([1., NAN, 0, 1])
    with pytest.raises(ValueError, match="rewards must be finite"):
        ik.group_advantages(r, 4, estimator="rloo")
    with pytest.raises(ValueError, match="nan_policy must be one of 'raise', 'omit'; got 'zero'"):
        ik.group_advantages(r, 4, estimator="rloo", nan_policy="zero")
    with pytest.raises(ValueError, match="rewards must be finite"):
        ik.group_advantages(torch.tensor([1., float("inf"), 0, 1]), 4, estimator="rloo", nan_policy="omit")
    with pytest.raises(ValueError, match="k=5 is larger than the smallest group"):
        ik.group_advantages(r, 4, estimator="passk", k=5, nan_policy="omit")


def test_threshold_correctness():
    rewards = torch.tensor([1.0, 0.2, 0.9, NAN, 0.7, 0.5])
    lengths = torch.tensor([400, 900, 700, 600, 300, 200])
    got = ik.length_penalized_rewards(rewards, lengths, 6, alpha=0.1, threshold=0.5)
    want = ik.length_penalized_rewards(torch.tensor([1, 0, 1, 0, 1, 0]), lengths, 6, alpha=0.1)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    with pytest.raises(ValueError, match="with threshold, correct must hold the rewards"):
        ik.length_penalized_rewards(rewards > 0, lengths, 6, alpha=0.1, threshold=0.5)
    with pytest.raises(ValueError, match="threshold must be a real number"):
        ik.length_penalized_rewards(rewards, lengths, 6, alpha=0.1, threshold="0.5")
    with pytest.raises(ValueError, match="correct must hold only 0/1"):
        ik.length_penalized_rewards(rewards, lengths, 6, alpha=0.1)
