"""extract_boxed and normalize_answer on hand-written cases."""

import pytest

from entropy_rl.rewards import extract_boxed, normalize_answer


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The answer is \\boxed{5}.", "5"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("first \\boxed{1} then \\boxed{ 2 }", "2"),
        ("\\boxed{\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}}", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}"),
        ("$\\boxed 5$", "5"),
        ("so \\fbox{7}", "7"),
        ("\\boxed{3} and a truncated \\boxed{\\frac{1}{", "3"),
        ("\\boxed{x \\in \\{1, 2\\}}", "x \\in \\{1, 2\\}"),
        ("no box here: 42", None),
        ("\\boxed{", None),
        ("", None),
        ("\\boxeda", None),
    ],
)
def test_extract_boxed_cases(text, expected):
    assert extract_boxed(text) == expected


def test_extract_boxed_deep_nesting_and_megabyte_text():
    depth = 50_000
    assert extract_boxed("\\boxed{" + "{" * depth + "1" + "}" * depth + "}") == "{" * depth + "1" + "}" * depth
    # 1 MB of text, and many unclosed boxes: each failed box shrinks the scan, so this is linear.
    assert extract_boxed("x" * 1_000_000 + "\\boxed{12}") == "12"
    assert extract_boxed("\\boxed{" * 100_000) is None
    assert extract_boxed("\\boxed{9}" + "\\boxed{" * 100_000) == "9"


def test_extract_boxed_non_string_and_garbage():
    assert extract_boxed(None) is None
    garbage = bytes(range(256)).decode("latin-1") * 100
    assert extract_boxed(garbage + "\\boxed{\x00\xff}") == "\x00\xff"


@pytest.mark.parametrize(
    "a, b",
    [("\\dfrac{1}{2}", "\\frac{1}{2}"), ("\\left( 3, 4 \\right)", "(3,4)"), ("$5$.", "5"), ("1\\,000", "1000")],
)
def test_normalize_answer_equal_forms(a, b):
    assert normalize_answer(a) == normalize_answer(b)


def test_normalize_answer_keeps_different_values_apart():
    assert normalize_answer("12") != normalize_answer("1.2")
    assert normalize_answer("-1") != normalize_answer("1")
    assert normalize_answer("\\leftarrow") != normalize_answer("arrow")
