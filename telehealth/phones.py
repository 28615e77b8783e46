"""Phone numbers: parsed with ``phonenumbers``, stored in E.164, masked in their own format.

Everywhere a number can be entered (the CLI, the console, a partner's check-in) it goes
through ``parse_phone``: a number that is not a real, dialable number in its country is
refused with a sentence saying how to write it. Stored form: E.164 ("+442079460018"), with
";ext=12" appended when the number has an extension (RFC 3966), which is also what a
``tel:`` link and the clinic's phone system take.
"""

from __future__ import annotations

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumber, PhoneNumberFormat

from telehealth.errors import ErrorCode, UserError

DEFAULT_REGION = "US"
MAX_INPUT = 40
MASK = "•"


class InvalidPhone(UserError):
    code = ErrorCode.INVALID_PHONE


def parse_phone(text: str, region: str = DEFAULT_REGION) -> str:
    """The E.164 form of ``text`` (a number written as people write it), or InvalidPhone."""
    text = text.strip()
    if len(text) > MAX_INPUT:
        raise InvalidPhone(detail=f"A phone number may have at most {MAX_INPUT} characters.")
    try:
        number = phonenumbers.parse(text, region.upper())
    except NumberParseException:
        number = None
    if number is None or not phonenumbers.is_valid_number(number):
        raise InvalidPhone(detail=(
            f"“{text[:MAX_INPUT]}” is not a phone number we can call. Write it with its area code, "
            "for example (201) 555-0123, or with its country code, for example +44 20 7946 0018."))
    return _stored(number)


def _stored(number: PhoneNumber) -> str:
    e164 = phonenumbers.format_number(number, PhoneNumberFormat.E164)
    return f"{e164};ext={number.extension}" if number.extension else e164


def _read(stored: str) -> PhoneNumber | None:
    """A stored number back as a PhoneNumber (numbers stored before E.164 are parsed as US)."""
    main, _, ext = stored.partition(";ext=")
    try:
        number = phonenumbers.parse(main, DEFAULT_REGION)
    except NumberParseException:
        return None
    if not phonenumbers.is_possible_number(number):
        return None
    if ext:
        number.extension = ext
    return number


def display_phone(stored: str) -> str:
    """How the therapist reads a number to dial: "+1 201-555-0123", "+44 20 7946 0018"."""
    number = _read(stored)
    if number is None:
        return stored
    return phonenumbers.format_number(number, PhoneNumberFormat.INTERNATIONAL)


def _mask_digits(text: str, keep: int) -> str:
    """Replace every digit but the last ``keep`` with a dot, keeping spaces and brackets."""
    total = sum(c.isdigit() for c in text)
    seen = 0
    out = []
    for c in text:
        if c.isdigit():
            seen += 1
            out.append(c if seen > total - keep else MASK)
        else:
            out.append(c)
    return "".join(out)


def mask_phone(stored: str) -> str:
    """The number a partner recognises as theirs, with only its end showing.

    A US number: "(•••) •••-0102", its last four digits in the national format. Any other:
    its country code and the last two digits in its own international format,
    "+44 •• •••• ••18". Never the extension (it says nothing about whose number it is).
    """
    number = _read(stored)
    if number is None:
        digits = "".join(c for c in stored.partition(";")[0] if c.isdigit())
        return f"({MASK * 3}) {MASK * 3}-{digits[-4:].rjust(4, MASK)}"
    number.extension = None
    if phonenumbers.region_code_for_number(number) in (None, "US"):
        national = phonenumbers.format_number(number, PhoneNumberFormat.NATIONAL)
        return _mask_digits(national, 4)
    international = phonenumbers.format_number(number, PhoneNumberFormat.INTERNATIONAL)
    code, _, rest = international.partition(" ")
    return f"{code} {_mask_digits(rest, 2)}"


def tel_href(stored: str) -> str:
    """A one-click ``tel:`` link (RFC 3966): "+12015550123;ext=12" -> "tel:+12015550123;ext=12"."""
    number = _read(stored)
    return "tel:" + (_stored(number) if number is not None else stored)
