"""The literal pre-filter in ``redact_secrets`` only skips work: it never changes what is masked."""

from __future__ import annotations

from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.observability import logging as log_module
from worker.observability.logging import redact_secrets, register_secret

VALUE = "V4lue-0f-cred"
# Registered secrets: one with no pre-filter literal (must be masked all the same), one with a
# literal that masking removes (the pre-filter then sees the masked text).
PLAIN_SECRET = "zq" + "-opaque-7731"
LITERAL_SECRET = "my" + "token-7731"
# Case-insensitive regex matching also folds these to i, s, k; lower() does not.
LOOKALIKES = {"i": "\u0131\u0130", "s": "\u017f", "k": "\u212a"}
LITERALS = (
    "authorization", "api-key", "api_key", "apikey", "password", "passwd", "pwd", "secret",
    "token", "bearer", "basic", "sk-", "://", "postgresql",
)  # fmt: skip
NEAR_MISSES = ("api key", "passw ord", "tok", "sk_", ":/", "bear", "sec ret", "p-w-d")
FILLER = (
    " ", ":", "=", " = ", ": ", "'", '"', "\\", "@", "/", "-", "_", ",", ";", "&", ")", "}", "]",
    "{", "\n", "\t", "abcdefgh12", "X.~+/==", "u:pw@db", "%2F", VALUE, PLAIN_SECRET[:5],
)  # fmt: skip


def _cased(word: str) -> st.SearchStrategy[str]:
    """``word`` with each letter in either case or a case-insensitive lookalike."""
    letters = [st.sampled_from([c, c.upper(), *LOOKALIKES.get(c, "")]) for c in word]
    return st.tuples(*letters).map("".join)


# A literal in some case, then maybe the rest of a credential: "Api_Key = 'x'", "pwd:Bearer x".
SHAPES = st.tuples(
    st.sampled_from(LITERALS).flatmap(_cased),
    st.sampled_from(("", "=", ":", " = ", ": ", "'=", '": ', "://u:", "://u:pw@db", "_", "-", " ")),
    st.sampled_from(("", "bearer ", "Basic ", "TOKEN ")),
    st.sampled_from(("", VALUE, "'q \\' v'", '"x y"', "abcdefgh12", "pw@db", PLAIN_SECRET)),
).map("".join)
TEXTS = st.lists(
    st.one_of(
        SHAPES,
        st.sampled_from(NEAR_MISSES + FILLER + (PLAIN_SECRET, LITERAL_SECRET)),
        st.text(max_size=4),
    ),
    max_size=14,
).map("".join)


def unfiltered_redact(text: str) -> str:
    """``redact_secrets`` with the pre-filter disabled: every pattern runs on every text."""
    with mock.patch.object(log_module, "_may_hold_credential", return_value=True):
        return redact_secrets(text)


def assert_prefilter_changes_nothing(text: str) -> None:
    register_secret(PLAIN_SECRET)
    register_secret(LITERAL_SECRET)
    assert redact_secrets(text) == unfiltered_redact(text)
    # Stronger than equal output (a value already "***" is unchanged): every match of the
    # module's patterns holds a pre-filter literal itself.
    for pattern, _ in log_module._PATTERNS:
        for match in pattern.finditer(log_module._secrets.mask(text)):
            assert log_module._MAY_HOLD_CREDENTIAL.search(match[0])


@settings(max_examples=1500, deadline=None, database=None)
@given(TEXTS)
def test_prefilter_output_equals_running_every_pattern(text: str) -> None:
    assert_prefilter_changes_nothing(text)


@settings(max_examples=500, deadline=None, database=None)
@given(SHAPES)
def test_prefilter_output_equals_running_every_pattern_on_one_shape(text: str) -> None:
    # Alone, so a shape matched through one literal is not hidden by another one nearby.
    assert_prefilter_changes_nothing(text)


@settings(max_examples=1500, deadline=None, database=None)
@given(st.one_of(TEXTS, SHAPES, st.text(max_size=40)))
def test_the_ascii_shortcut_agrees_with_the_prefilter_regex(text: str) -> None:
    """ASCII text skips the regex (lower() and ``in``): the answer must be the regex's."""
    expected = log_module._MAY_HOLD_CREDENTIAL.search(text) is not None
    assert log_module._may_hold_credential(text) is expected


@pytest.mark.parametrize(
    "text",
    [
        f"Authorization: Bearer {VALUE}",
        f"{{'authorization': 'Basic {VALUE}'}}",
        f"api-key={VALUE}",
        f"api_key: {VALUE}",
        f"APIKEY={VALUE}",
        f"password = '{VALUE}'",
        f"passwd={VALUE}",
        f"PWD={VALUE}",
        f'{{"client_secret": "{VALUE}"}}',
        f"access_token={VALUE}",
        f"sent bearer {VALUE} upstream",
        f"key sk-{VALUE} rejected",
        f"postgresql://cleanup:{VALUE}@db:5432/chat",
        f"redis://default:{VALUE}@cache:6379",
        f"host=db user=cleanup password={VALUE} dbname=chat",
        f"\u017fecret={VALUE}",  # long s: IGNORECASE matches it to "s"
        f"author\u0131zation: {VALUE}",  # dotless i
        f"api-\u212aey={VALUE}",  # Kelvin sign
    ],
)
def test_each_kind_of_credential_is_still_masked(text: str) -> None:
    redacted = redact_secrets(text)
    assert VALUE not in redacted
    assert "***" in redacted


def test_registered_secrets_are_masked_in_text_without_any_literal() -> None:
    register_secret(PLAIN_SECRET)
    assert not log_module._MAY_HOLD_CREDENTIAL.search(f"queue q1 {PLAIN_SECRET}")
    assert redact_secrets(f"queue q1 {PLAIN_SECRET} done") == "queue q1 *** done"
    quoted = "pa" + "ss%2Fw%40rd-7731"  # URL-encoded form, as inside a DSN
    register_secret("pa" + "ss/w@rd-7731")
    assert redact_secrets(f"dsn host=db {quoted}") == "dsn host=db ***"


def test_ordinary_values_pass_unchanged() -> None:
    for text in ("message_handled", "openai_file_cleanup", "ok", "file-AbC123", "2025-01-01"):
        assert redact_secrets(text) == text
