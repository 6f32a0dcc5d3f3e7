"""Cleaning: HTML, PII masking, Unicode, whitespace, token caps, Chinese text and terms."""
import pytest

from udfs.pii import contains_pii
from udfs.terms import terms
from udfs.text_clean import cap_tokens, clean_text


@pytest.mark.parametrize("raw, expected", [
    ("<p>Great <b>fit</b></p><script>alert('x')</script>", "Great fit"),
    ("Soft &amp; warm<br/>love it", "Soft & warm love it"),
    ("<style>p {color: red}</style>Nice", "Nice"),
    ("a < b but 3 > 2", "a < b but 3 > 2"),
    ("&lt;script&gt;alert(1)&lt;/script&gt; hi", "<script>alert(1)</script> hi"),
    ("  lots\t of \n\n space  ", "lots of space"),
    ("ＡＢＣ１２３ full width", "ABC123 full width"),
    ("emoji stay 😀 ok", "emoji stay 😀 ok"),
    ("zero\u200bwidth\u0007bell", "zero width bell"),
])
def test_html_unicode_whitespace(raw, expected):
    assert clean_text(raw) == expected


@pytest.mark.parametrize("raw, token", [
    ("mail me at jane.doe+shop@example.co.uk please", "[EMAIL]"),
    ("call 13812345678 now", "[PHONE]"),
    ("call +86 138-1234-5678 now", "[PHONE]"),
    ("call +44 20 7946 0958 now", "[PHONE]"),
    ("call (555) 123-4567 now", "[PHONE]"),
    ("see https://shop.example.com/item?id=42&ref=mail now", "[URL]"),
    ("see www.example.com/page now", "[URL]"),
    ("id 11010119900307451X here", "[ID]"),
    ("card 4111 1111 1111 1111 here", "[CARD]"),
    ("全角电话１３８１２３４５６７８可以", "[PHONE]"),
])
def test_pii_is_masked(raw, token):
    out = clean_text(raw)
    assert token in out
    assert not any(ch.isdigit() for ch in out.replace("[", "").replace("]", "")) or token == "[URL]"
    assert contains_pii([out]) == []


@pytest.mark.parametrize("raw", ["on 2026-03-04 I bought it", "screen 1920 1080 is fine", "size 38 fits"])
def test_numbers_that_are_not_pii_survive(raw):
    assert clean_text(raw) == raw


@pytest.mark.parametrize("raw", ["", "   ", "<div><br/></div>", "http://x.com/a?b=1", "a@b.com 13812345678", "!!! ..."])
def test_empty_after_cleaning(raw):
    assert clean_text(raw) == ""


def test_none_stays_none():
    assert clean_text(None) is None


def test_chinese_kept_intact():
    raw = "这件连衣裙的面料很舒服，尺码也合适！"
    assert clean_text(raw) == "这件连衣裙的面料很舒服,尺码也合适!"  # NFKC maps full-width punctuation


def test_token_cap_counts_words_and_cjk_chars():
    assert cap_tokens("one two three four", 2) == "one two"
    assert cap_tokens("电池续航很强", 3) == "电池续"
    assert cap_tokens("short", 10) == "short"
    assert len(clean_text("word " * 1000, max_tokens=50).split()) == 50


def test_terms_english_and_chinese():
    en = terms("The battery life of this phone is great", bigrams=False)
    assert en == ["battery", "life", "phone", "great"]
    zh = terms("这件连衣裙的面料很舒服", bigrams=False)
    assert zh == ["这件", "连衣裙", "面料", "舒服"]  # jieba words, stop words (的, 很) removed
    assert "battery life" in terms("battery life", bigrams=True)
    assert terms("[EMAIL] [PHONE]") == []


def test_quarantine_records_are_masked_but_kept():
    from udfs.pii import mask_record, pii_kinds

    raw = '{"user_id":"u1","text":"mail me a.b@x.com or +86 138 1234 5678, ID 11010519491231002X","ts":"bad"}'
    out = mask_record(raw)
    assert "[EMAIL]" in out and "[PHONE]" in out and "[ID]" in out and '"ts":"bad"' in out
    assert pii_kinds(raw) and not pii_kinds(out)
    # Dates and sizes are not phone numbers.
    assert pii_kinds("2026-01-01 and 1920 1080") == []
