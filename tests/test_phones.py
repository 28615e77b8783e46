"""Phone numbers: parsed with phonenumbers, stored in E.164, masked in their own format, and
refused in words wherever they are entered (the CLI has its own cases in test_cli)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fallback.notices import mask_phone
from telehealth import phones
from telehealth.errors import ErrorCode

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(("written", "region", "stored"), [
    ("+1 202 555 0102", "US", "+12025550102"),
    ("(202) 555-0102", "US", "+12025550102"),
    ("202.555.0102 ext. 12", "US", "+12025550102;ext=12"),
    ("020 7946 0018", "GB", "+442079460018"),
    ("+44 20 7946 0018", "US", "+442079460018"),
    ("01 42 68 53 00", "FR", "+33142685300"),
])
def test_numbers_are_stored_in_e164(written: str, region: str, stored: str) -> None:
    assert phones.parse_phone(written, region) == stored


@pytest.mark.parametrize("written", [
    "1------", "call me maybe", "+1 555 555 0102", "12", "+44 20", "0000000000", "+999 123 4567",
    "9" * 41, "",
])
def test_what_is_not_a_number_is_refused_in_words(written: str) -> None:
    with pytest.raises(phones.InvalidPhone) as refused:
        phones.parse_phone(written, "US")
    assert refused.value.code == ErrorCode.INVALID_PHONE
    assert "phone number" in refused.value.detail


def test_the_documented_masks_are_what_mask_phone_makes() -> None:
    """docs/fallback.md promises both forms; the partner's page shows what mask_phone makes."""
    doc = (ROOT / "docs" / "fallback.md").read_text(encoding="utf-8")
    us, london = mask_phone("+12025550102"), mask_phone("+442079460018")
    assert (us, london) == ("(•••) •••-0102", "+44 •• •••• ••18")
    assert f'"{us}"' in doc and f'"{london}"' in doc
    # The therapist reads numbers in their international format.
    assert phones.display_phone("+12025550102") in doc


def test_a_mask_never_shows_more_than_the_end_of_the_number() -> None:
    for stored in ("+12025550102", "+442079460018", "+33142685300", "+4930123456", "+61255501234"):
        digits = re.sub(r"\D", "", mask_phone(stored))
        code = {"+1": "", "+44": "44", "+33": "33", "+49": "49", "+61": "61"}
        prefix = next(c for p, c in code.items() if stored.startswith(p))
        shown = digits[len(prefix):]
        assert len(shown) <= 4 and stored.endswith(shown), (stored, mask_phone(stored))
