from pivotrl_nemo.algorithms.filtering import filter_pivots, is_pivot
from pivotrl_nemo.algorithms.profiling import summarize_rewards
from pivotrl_nemo.config.schema import FilterConfig


def _row(rewards, kind="function_call"):
    mean, var = summarize_rewards(rewards)
    return {
        "id": str(rewards),
        "expected_action": {"type": kind},
        "profile": {"mean": mean, "variance": var, "k": len(rewards)},
    }


def test_rule_keeps_mixed_and_hard():
    cfg = FilterConfig(lambda_diff=0.6)
    assert is_pivot(_row([1, 0, 0, 0])["profile"], cfg)
    assert not is_pivot(_row([0, 0, 0, 0])["profile"], cfg)  # zero variance (all fail)
    assert not is_pivot(_row([1, 1, 1, 1])["profile"], cfg)  # zero variance (all pass)
    assert not is_pivot(_row([1, 1, 1, 0])["profile"], cfg)  # mean 0.75 >= 0.6: too easy
    assert not is_pivot(_row([1, 1, 1, 0, 0])["profile"], cfg)  # mean 0.6 is not < 0.6 (strict)
    assert is_pivot(_row([1, 1, 0, 0, 0])["profile"], cfg)


def test_summary_counts_and_reasons():
    rows = [_row([0, 0]), _row([1, 1]), _row([1, 0]), _row([1, 0], "message"), _row([1, 1, 1, 0])]
    pivots, s = filter_pivots(rows, FilterConfig(lambda_diff=0.6))
    assert len(pivots) == 2 and s["pivots"] == 2 and s["candidates"] == 5
    assert s["dropped"] == {"zero_variance_all_fail": 1, "zero_variance_all_pass": 1, "too_easy": 1}
    assert s["zero_variance_fraction"] == 0.4
    assert s["by_action_type"]["message"] == {"candidates": 1, "kept": 1}


def test_variance_is_population_form():
    assert summarize_rewards([1, 0, 0, 0]) == (0.25, 0.1875)
