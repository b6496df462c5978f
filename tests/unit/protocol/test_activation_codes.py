"""Activation codes are typable: no look-alikes, forgiving input, one canonical hash."""

from __future__ import annotations

import random

import pytest

from pulse.protocol import activation
from pulse.protocol.errors import Code, ProtocolError

pytestmark = pytest.mark.unit


def test_generated_codes_use_only_unambiguous_characters_in_two_groups() -> None:
    rng = random.Random(7)
    code = activation.generate(rng.choice)
    assert len(code) == 11 and code[5] == "-"
    assert set(code.replace("-", "")) <= set(activation.ALPHABET)
    assert not set("01ILOU") & set(activation.ALPHABET)


@pytest.mark.parametrize("typed", ["K7XQ2-M9HTR", "k7xq2m9htr", " k7xq2 m9htr ", "K7XQ2--M9HTR"])
def test_case_spaces_and_dashes_do_not_matter(typed: str) -> None:
    assert activation.normalize(typed) == "K7XQ2M9HTR"
    assert activation.code_hash(typed) == activation.code_hash("K7XQ2-M9HTR")


@pytest.mark.parametrize("typed", ["", "K7XQ2-M9HT", "K7XQ2-M9HTRR", "O7XQ2-M9HTR", "K7XQ1-M9HTR", "K7XQ2_M9HTR"])
def test_malformed_codes_are_refused_with_the_unknown_code_code(typed: str) -> None:
    with pytest.raises(ProtocolError) as err:
        activation.normalize(typed)
    assert err.value.code is Code.ACTIVATION_CODE_INVALID
