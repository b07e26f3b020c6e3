import pytest

from livemig.errors import PolicyError
from livemig.policy import DEFAULT_POLICY, Action, Policy, Progress, parse_policy


def snap(passes: int, elapsed: float = 1.0) -> Progress:
    return Progress(passes_done=passes, elapsed_s=elapsed, remaining_bytes=10 << 20)


@pytest.mark.parametrize(
    ("policy", "passes", "elapsed", "action"),
    [
        ("precopy", 0, 1.0, Action.CONTINUE),
        ("precopy", 50, 119.9, Action.CONTINUE),
        ("precopy", 50, 120.0, Action.ABORT),
        ("precopy:timeout=5", 3, 5.5, Action.ABORT),
        ("manual", 0, 1.0, Action.CONTINUE),
        ("manual", 99, 999.0, Action.CONTINUE),
        ("postcopy-now", 0, 0.0, Action.SWITCH),
        ("postcopy-after:1", 0, 5.0, Action.CONTINUE),
        ("postcopy-after:1", 1, 5.0, Action.SWITCH),
        ("postcopy-after:1", 3, 5.0, Action.SWITCH),
        ("postcopy-after:3", 2, 5.0, Action.CONTINUE),
        ("postcopy-after:3", 3, 5.0, Action.SWITCH),
        ("postcopy-after", 1, 5.0, Action.SWITCH),
    ],
)
def test_decision_table(policy: str, passes: int, elapsed: float, action: Action) -> None:
    decision = parse_policy(policy).decide(snap(passes, elapsed))
    assert decision.action is action
    assert decision.reason  # every decision explains itself


def test_the_default_is_auto_and_a_bare_postcopy_after_is_one_pass() -> None:
    assert parse_policy("auto") == DEFAULT_POLICY and str(DEFAULT_POLICY) == "auto"
    assert parse_policy("postcopy-after") == Policy("postcopy-after", 1)


@pytest.mark.parametrize(
    "text", ["", "postcopy-after:0", "postcopy-after:-1", "postcopy-after:x", "postcopy-after:1.5",
             "fast", "precopy:timeout=abc", "precopy:timeout=0", "postcopy-after:1001", "postcopy-after:1.0",
             "postcopy-after:0.0", "postcopy-after:nan", "postcopy-after:inf", "postcopy-after:50%"],
)  # fmt: skip
def test_bad_policies(text: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(text)
    assert info.value.text == text
    assert "\n" not in str(info.value)


def test_allows_postcopy() -> None:
    assert not parse_policy("precopy").allows_postcopy
    for p in ("manual", "postcopy-now", "postcopy-after:2"):
        assert parse_policy(p).allows_postcopy


def test_policy_is_pure() -> None:
    p = parse_policy("postcopy-after:2")
    s = snap(2)
    assert p.decide(s) == p.decide(s)


@pytest.mark.parametrize(
    "text",
    [
        "precopy",
        "precopy:timeout=40",
        "postcopy-after:3",
        "postcopy-after:0.5",
        "auto",
        "auto:max-pause=50ms,budget=120s",
    ],
)
def test_a_policy_prints_as_given_and_parses_back(text: str) -> None:
    p = parse_policy(text)
    assert parse_policy(str(p)) == p and str(p) == text


MIB = 1 << 20


@pytest.mark.parametrize(
    ("passes", "remaining_mib", "ram_mib", "action", "words"),
    [
        (0, 300, 512, Action.CONTINUE, "covered 41% of 75%"),
        (0, 128, 512, Action.SWITCH, "covered 75% of the guest's 512 MiB"),
        (0, 0, 512, Action.SWITCH, "covered 100%"),
        (0, 300, None, Action.CONTINUE, "not reported"),  # before the first progress figures
        (1, 40, 512, Action.SWITCH, "ended before"),  # a pass of zero pages: over between two ticks
    ],
)
def test_a_switch_within_the_first_pass(
    passes: int, remaining_mib: int, ram_mib: int | None, action: Action, words: str
) -> None:
    """postcopy-after:F switches once the first pass has covered F of the guest's memory."""
    p = Progress(passes, 3.0, remaining_bytes=remaining_mib * MIB, ram_bytes=ram_mib and ram_mib * MIB)
    decision = parse_policy("postcopy-after:0.75").decide(p)
    assert decision.action is action and words in decision.reason
