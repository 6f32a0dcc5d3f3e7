#!/usr/bin/env python3
"""Synthetic input data for SegLake: user texts, behaviour events and ground-truth labels.

The committed sample under ``data/sample`` is produced by the default command, run from the
repository root (it is also ``make sample``)::

    python data/generate_sample.py --out data/sample --users 660 --seed 42

which is the same as spelling out every default::

    python data/generate_sample.py --out data/sample --users 660 --seed 42 --format csv \
        --texts-per-user 5-30 --events-per-user 5-60 --dirty-rate 0.03 --chunk-users 10000

Output files (in ``--out``):

* ``texts.<fmt>``   user_id, text, ts, item_id, lang          (job input)
* ``events.<fmt>``  user_id, item_id, event_type, rating, category, ts   (job input)
* ``labels.csv``    user_id, group, lang   (ground truth for evaluation; NOT a job input)
* ``planted_pii.txt`` every e-mail / phone number / URL-with-query planted into texts, one a line
* ``stats.json``    row counts, per group/lang counts and dirty-row counts by kind
* ``README.md``     column and group description with the numbers of this very run

``--format`` is ``csv`` (header, pandas' standard minimal quoting, UTF-8, ``\\n`` line ends),
``parquet`` (snappy) or ``json`` (JSON Lines, one object a line, UTF-8). Texts never contain
newlines or double quotes, so the CSV also reads with Spark's default CSV options. ``ts`` is
an ISO-8601 string such as ``2026-03-04T12:33:10Z``; a few dirty rows carry unparsable ones.

Determinism: a fixed ``--seed`` gives byte-identical files (same library versions). Users are
generated in blocks of ``--chunk-users`` users; every block has its own random stream derived
from (seed, block number), so the output does not depend on ``--workers``. Changing
``--chunk-users`` changes the data (keep the default for comparable datasets). Rows are sorted
by user number, then timestamp.

Benchmark scale (millions of rows): the generator streams one block at a time, so memory stays
bounded (about 10k users, i.e. ~150k texts and ~300k events per block in flight, per worker),
and event generation is vectorised with numpy. Text rendering is Python string formatting
(about 2-3 s of CPU per 10k-user block, i.e. roughly 4-5 CPU minutes per million users); use
``--workers`` to spread blocks over processes. Examples::

    # ~1M users, ~14M texts, ~26M events, one parquet file per input (one row group per block)
    python data/generate_sample.py --out /data/seglake-1m --users 1000000 --format parquet --workers 8

    # the same data as a directory of part files (texts.parquet/part-00000.parquet, ...),
    # which Spark reads with the same path
    python data/generate_sample.py --out /data/seglake-1m --users 1000000 --format parquet \
        --workers 8 --part-files

Groups: fashion, electronics, film, travel, food, parenting (planted interests, equal shares)
plus ~6% ``noise`` users (generic texts about delivery/price/thanks, random behaviour). About
25% of the users of every group write Chinese (lang ``zh``), the rest English (``en``).
Dependencies: the standard library, numpy, pandas and pyarrow.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shutil
import string
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

DEFAULT_COMMAND = "python data/generate_sample.py --out data/sample --users 660 --seed 42"

GROUPS = ("fashion", "electronics", "film", "travel", "food", "parenting")
NOISE = "noise"
ALL_GROUPS = GROUPS + (NOISE,)
CATEGORIES = GROUPS + ("books", "sports")  # a group's own category has the group's name
EVENT_TYPES = ("view", "click", "cart", "purchase", "rating")
LANGS = ("en", "zh")

NOISE_SHARE = 0.06        # users in the noise group
ZH_SHARE = 0.25           # Chinese-writing users in every group
NO_EVENTS_SHARE = 0.05    # users with texts but no events
NO_TEXTS_SHARE = 0.02     # users with events but no texts
OWN_CATEGORY_SHARE = 0.70 # mean share of a user's events in the group's own category

TEXT_COLUMNS = ("user_id", "text", "ts", "item_id", "lang")
EVENT_COLUMNS = ("user_id", "item_id", "event_type", "rating", "category", "ts")
LABEL_COLUMNS = ("user_id", "group", "lang")

# event_type mix (view, click, cart, purchase, rating) and mean rating by group
EVENT_MIX = {
    "fashion":     (0.38, 0.24, 0.16, 0.12, 0.10),
    "electronics": (0.62, 0.22, 0.07, 0.03, 0.06),
    "film":        (0.40, 0.22, 0.03, 0.10, 0.25),
    "travel":      (0.50, 0.24, 0.10, 0.08, 0.08),
    "food":        (0.18, 0.14, 0.20, 0.38, 0.10),
    "parenting":   (0.34, 0.20, 0.18, 0.18, 0.10),
    "noise":       (0.30, 0.25, 0.15, 0.15, 0.15),
}
RATING_MEAN = {"fashion": 3.7, "electronics": 3.2, "film": 4.1, "travel": 4.4,
               "food": 4.0, "parenting": 3.5, "noise": 3.0}

TS_START = np.datetime64("2025-06-01T00:00:00", "s")
TS_END = np.datetime64("2026-03-31T23:59:59", "s")

TEXT_DIRTY_KINDS = (
    "html_markup", "html_entities", "empty_text", "whitespace_only", "html_only", "url_only",
    "null_user_id", "empty_user_id", "bad_ts",
    "pii_email", "pii_phone_cn", "pii_phone_intl", "pii_url_query",
    "fullwidth", "emoji",
)
EVENT_DIRTY_KINDS = ("rating_out_of_range", "unknown_event_type", "null_user_id", "empty_user_id", "bad_ts")
DIRTY_DESCRIPTIONS = {  # markdown (README tables)
    "html_markup": "good text wrapped in HTML: `<p>`, `<b>`, `<i>`, `<div class='review'>`, `<br/>`, "
                   "`<script>alert(1)</script>`, `<style>`, `<img onerror=...>`",
    "html_entities": "good text with HTML entities: `&amp;` `&#39;` `&quot;` `&lt;3` `&nbsp;` `&ldquo;`",
    "empty_text": "empty text (`''` or null)",
    "whitespace_only": "only spaces / tabs / ideographic (U+3000) or no-break (U+00A0) spaces",
    "html_only": "only markup, e.g. `<div><br/></div>`, `<p>&nbsp;</p>`, `<script>alert(1)</script>`",
    "url_only": "only a URL (no query string), e.g. `https://example.com/p/123456`",
    "null_user_id": "user_id is null",
    "empty_user_id": "user_id is the empty string",
    "bad_ts": "unparsable ts: `not-a-date`, `2026-13-45`, `2026-02-30T25:61:00Z`, `N/A`, `0000-00-00T00:00:00Z`",
    "pii_email": "good text plus an e-mail address (in `planted_pii.txt`)",
    "pii_phone_cn": "good text plus a Chinese mobile number: `13812345678`, `138 1234 5678`, `138-1234-5678`, "
                    "`+86 13812345678` styles (in `planted_pii.txt`)",
    "pii_phone_intl": "good text plus an international phone number, e.g. `+44 20 7946 0958`, `+1 (212) 555-0123` "
                      "(in `planted_pii.txt`)",
    "pii_url_query": "good text plus a URL with a query string (in `planted_pii.txt`)",
    "fullwidth": "good text with full-width letters/digits (`ＡＢＣ１２３`)",
    "emoji": "good text with emoji",
    "rating_out_of_range": "event_type `rating` with rating 0, 7, -1 or 6",
    "unknown_event_type": "event_type not in view/click/cart/purchase/rating: `share`, `wishlist`, `hover`, "
                          "`refund`, `??` (rating null)",
}
BAD_TS = ("not-a-date", "2026-13-45", "2026-02-30T25:61:00Z", "N/A", "0000-00-00T00:00:00Z")

# --------------------------------------------------------------------------------------------
# English vocabulary and templates. Slots are {name} or {name2}: a trailing digit draws another
# value of the same list. Within one text, un-numbered "sticky" slots keep their first value.
# --------------------------------------------------------------------------------------------
STICKY = frozenset({"product", "stay", "trip", "place", "child", "dish"})
FAVOURITE_SLOTS = ("product", "stay", "place", "dish")

EN = {
    "fashion": {
        "vocab": {
            "product": ["linen shirt", "denim jacket", "wool coat", "midi dress", "wrap dress", "silk blouse",
                        "knit sweater", "trench coat", "maxi skirt", "cardigan", "hoodie", "blazer", "handbag",
                        "cashmere scarf", "jumpsuit", "puffer jacket", "tote bag", "swimsuit", "polo shirt",
                        "pleated skirt", "turtleneck", "raincoat", "bomber jacket", "slip dress",
                        "crossbody bag", "leather belt", "parka", "sundress"],
            "aspect": ["fabric", "fit", "stitching", "colour", "sizing", "cut", "length", "waistband", "collar",
                       "lining", "button quality", "zipper", "sleeve length", "material", "drape"],
            "pos": ["soft", "flattering", "true to size", "well made", "breathable", "elegant", "comfy",
                    "stylish", "cozy", "gorgeous", "lightweight", "chic"],
            "neg": ["scratchy", "see-through", "too tight", "boxy", "cheaply stitched", "faded", "too short",
                    "itchy", "shapeless"],
            "occasion": ["a wedding", "the office", "date night", "a beach holiday", "everyday wear",
                         "a job interview", "brunch with friends", "the winter holidays", "a summer festival",
                         "a garden party"],
            "colour": ["navy", "emerald green", "beige", "black", "burgundy", "pastel pink", "olive", "cream",
                       "mustard yellow", "charcoal grey", "camel", "sky blue"],
            "size": ["size S", "size M", "size L", "size XL", "size 8", "size 10", "size 12", "petite size"],
            "style": ["minimalist", "vintage", "boho", "streetwear", "classic", "preppy", "oversized",
                      "tailored", "smart casual"],
        },
        "reviews": [
            "The {colour} {product} fits perfectly and the {aspect} feels really {pos}.",
            "Ordered this {product} in {size} and it is {pos}, though the {aspect} is a bit {neg}.",
            "Wore my new {product} to {occasion} and got so many compliments on the {colour} shade.",
            "Love how {pos} this {product} is, the {aspect} holds up well after a few washes.",
            "Sizing runs small, I exchanged the {product} for one size up but the {aspect} is {pos}.",
            "This {product} is {neg} and the {aspect} started coming apart after one wash, sending it back.",
            "The {aspect} on this {product} is {neg}, so size up if you are between sizes.",
            "Fabric is {pos} and the {colour} looks exactly like the photos, a great {style} piece for my wardrobe.",
            "Not sure about the {aspect}, it looks {neg} in person, but the overall fit of the {product} is {pos}.",
            "The {product} came in {size} and fits like a dream, the {aspect} is {pos} and the length is just right.",
            "Returned the {product} because the {aspect} was {neg}, a shame since the {colour} was lovely.",
            "Best {product} I have owned in years: {pos}, easy to style and perfect for {occasion}.",
            "The {colour} {product} is {pos} but wrinkles easily, I steam it before wearing it to {occasion}.",
            "Second {product} I bought from this label, the {aspect} and the {aspect2} are consistently {pos}.",
        ],
        "posts": [
            "Looking for a {style} {product} to pair with my {colour} {product2} for {occasion}, any tips?",
            "My go-to outfit lately is the {colour} {product} with my {product2}, simple and {pos}.",
            "Finally found a {product} that is {pos} and works for {occasion} without looking too formal.",
            "Styled the {product} three ways this week: with my {product2}, with the {product3}, and on its own.",
            "Spring wardrobe refresh: swapping heavy knits for a {pos} {product} and the {colour} {product2}.",
            "Does anyone know if this {product} shrinks in the wash? The label says cotton blend.",
            "Capsule wardrobe update: one {colour} {product}, one {product2}, and shoes that go with both.",
            "Outfit of the day for {occasion}: {style} {product}, {colour} {product2} and gold earrings.",
        ],
    },
    "electronics": {
        "vocab": {
            "product": ["phone", "laptop", "smartwatch", "tablet", "mechanical keyboard", "gaming mouse",
                        "4K monitor", "bluetooth speaker", "power bank", "noise cancelling headset", "wifi router",
                        "mirrorless camera", "e-reader", "USB-C charger", "external SSD", "graphics card",
                        "smart TV", "webcam", "portable projector", "fitness tracker", "soundbar",
                        "gaming console", "robot vacuum", "action camera", "drone", "mesh router"],
            "aspect": ["battery life", "screen", "camera", "charging speed", "build quality", "sound quality",
                       "keyboard", "touchpad", "refresh rate", "storage", "bluetooth connection", "software",
                       "processor", "display brightness", "noise cancellation", "firmware", "cooling"],
            "pos": ["fast", "snappy", "crisp", "solid", "reliable", "responsive", "impressive", "excellent",
                    "smooth", "sharp"],
            "neg": ["laggy", "buggy", "flimsy", "unreliable", "disappointing", "unstable", "slow", "noisy"],
            "spec": ["128GB of storage", "16GB of RAM", "a 120Hz display", "65W fast charging", "USB-C on both sides",
                     "wifi 6", "a 5000mAh battery", "1TB of storage", "an OLED panel", "bluetooth 5.3",
                     "an 8-core chip", "HDMI 2.1"],
            "use": ["gaming", "video editing", "work calls", "streaming movies", "commuting", "coding",
                    "photo editing", "the gym", "online classes"],
            "duration": ["two weeks", "a month", "three days", "half a year", "a few weeks", "two months"],
        },
        "reviews": [
            "Battery life on this {product} is {pos}, it easily lasts a full day of {use}.",
            "The {product} has {spec} and the {aspect} is {pos}, but the price is a bit high.",
            "Upgraded from my old {product} and the difference in {aspect} is huge, everything feels {pos}.",
            "After {duration} of use the {aspect} became {neg}, I had to reset the {product} twice.",
            "The latest firmware update fixed the {neg} {aspect}, now the {product} works great with my {product2}.",
            "Setup took five minutes, it pairs instantly with my {product2} and the {aspect} is {pos}.",
            "The {aspect} is {neg} and it gets hot while charging, returning this {product}.",
            "Solid {product} for the money: {spec}, {pos} {aspect}, and decent {aspect2}.",
            "Screen is {pos} and the speakers are loud, but the {aspect} could be better on this {product}.",
            "Bought this {product} for {use} and it handles everything, the {aspect} is seriously {pos}.",
            "Benchmarks look great but in daily use the {product} feels {neg} when multitasking.",
            "Charging from zero to full takes about an hour, and the {aspect} of the {product} is {pos}.",
            "The {product} runs {pos} with {spec}, no lag at all even during {use}.",
            "Two stars, the {product} kept dropping the {aspect2} and the {aspect} is {neg} after {duration}.",
        ],
        "posts": [
            "Is the {product} worth it for {use}? I mainly care about {aspect} and {aspect2}.",
            "Comparing two {product} models, one has {spec}, the other has better {aspect}, which would you pick?",
            "My {product} keeps disconnecting from wifi, support says a fix is coming in the next update.",
            "Unboxing the new {product} today, first impressions: {pos} {aspect} and premium build.",
            "Tip: turn off background apps and your {product} battery lasts much longer during {use}.",
            "Which {product} has the best {aspect} under 300 dollars? Need it for {use}.",
            "Desk setup upgrade done: new {product}, {product2} and a cable tray, the {aspect} is {pos}.",
            "Anyone else getting {neg} {aspect} after the last software update on the {product}?",
        ],
    },
    "film": {
        "vocab": {
            "product": ["movie", "sequel", "documentary", "thriller", "romantic comedy", "sci-fi film",
                        "animated feature", "horror movie", "indie drama", "crime series", "mini series",
                        "period drama", "superhero movie", "noir classic", "war epic", "musical", "biopic",
                        "heist movie", "courtroom drama", "coming of age film", "space opera", "western"],
            "aspect": ["plot", "pacing", "soundtrack", "cinematography", "acting", "script", "dialogue", "ending",
                       "twist", "casting", "CGI", "score", "editing", "character development",
                       "opening scene", "production design"],
            "pos": ["gripping", "stunning", "hilarious", "moving", "beautifully shot", "brilliant", "haunting",
                    "unforgettable", "clever", "powerful"],
            "neg": ["predictable", "dragging", "overhyped", "confusing", "flat", "cheesy", "forgettable",
                    "bloated"],
            "person": ["lead actor", "director", "supporting cast", "villain", "composer", "screenwriter",
                       "young lead actress", "cinematographer", "ensemble cast"],
            "venue": ["at the cinema", "on a rainy Sunday", "at a film festival", "on opening night",
                      "at home with popcorn", "in IMAX", "on a long flight", "at the late screening"],
            "genre": ["noir", "sci-fi", "horror", "comedy", "drama", "fantasy", "mystery", "war", "crime"],
        },
        "reviews": [
            "The {aspect} of this {product} was {pos}, I was glued to the screen until the credits rolled.",
            "Watched the {product} {venue} and the {person} gave a {pos} performance.",
            "Great {aspect} but the {aspect2} was {neg}, the second half of the film really drags.",
            "Without spoilers, the {aspect} in the final act of this {product} is {pos}.",
            "The {person} deserves an award, the {aspect} alone makes this {product} worth watching.",
            "Honestly the {product} was {neg}, I guessed the twist within the first twenty minutes.",
            "Rewatched this {product} {venue}, still {pos}, the {aspect} holds up after all these years.",
            "The trailer oversold it, the {aspect} is {neg} and the {person} feels miscast.",
            "Five stars for the {aspect}, every frame of this {product} looks like a painting.",
            "Saw the {product} {venue} and the whole audience reacted to the {aspect}.",
            "Slow start, but the {product} builds to a {pos} ending with a {pos2} {aspect}.",
            "Not my favourite {genre} film, the {aspect} felt {neg} and the runtime is way too long.",
            "The director's use of long takes and {aspect} makes this {product} {pos}.",
            "The {product} has {pos} {aspect} and the {person} steals every scene.",
        ],
        "posts": [
            "Any recommendations for another {genre} film like this {product}? Loved the {aspect}.",
            "Can we talk about the {aspect} in that {product}? The {person} stole every scene.",
            "Adding this {product} to my watchlist after hearing the {aspect} is {pos}.",
            "Binge watched the whole {product} in one weekend, the {aspect} kept me hooked.",
            "Unpopular opinion: the {product} everyone loves is {neg}, the {aspect} makes no sense.",
            "Movie night pick: an old {genre} {product} with a {pos} {aspect}, bring snacks.",
            "Ranking every {genre} film I watched this year, this {product} is top three for the {aspect}.",
            "Film club this week discussed the {aspect} of the {product}, the {person} split the room.",
        ],
    },
    "travel": {
        "vocab": {
            "stay": ["hotel", "hostel", "beach resort", "boutique hotel", "guesthouse", "mountain lodge",
                     "holiday apartment", "campsite", "ski chalet", "bed and breakfast", "safari lodge",
                     "treehouse cabin", "riad", "capsule hotel"],
            "trip": ["city tour", "train journey", "road trip", "cruise", "walking tour", "ferry crossing",
                     "day trip", "river cruise", "backpacking route", "sleeper train", "food tour",
                     "boat excursion", "hiking trail"],
            "aspect": ["location", "view", "check-in", "breakfast", "room", "staff", "itinerary", "tour guide",
                       "airport transfer", "pool", "beach", "luggage storage", "wifi in the room",
                       "rooftop terrace"],
            "pos": ["breathtaking", "convenient", "spotless", "friendly", "relaxing", "unforgettable",
                    "scenic", "charming", "peaceful", "well organised"],
            "neg": ["noisy", "overpriced", "crowded", "cramped", "dirty", "disorganised", "chaotic"],
            "place": ["Lisbon", "Kyoto", "the Swiss Alps", "Bali", "Iceland", "Barcelona", "the Amalfi coast",
                      "Patagonia", "Istanbul", "Vancouver", "Marrakech", "Hanoi", "Cape Town", "Edinburgh",
                      "Santorini", "the Scottish Highlands"],
            "duration": ["three nights", "a week", "a long weekend", "two weeks", "ten days", "five days"],
            "companion": ["with my partner", "with the kids", "with a group of friends", "with my parents",
                          "solo", "with my sister"],
        },
        "reviews": [
            "Stayed {duration} at this {stay} in {place}, the {aspect} was {pos} and the staff were lovely.",
            "Our {trip} in {place} was {pos}, highly recommend booking the {aspect} in advance.",
            "The {aspect} at the {stay} was {neg}, but the location near the old town made up for it.",
            "Woke up to a {pos} view over {place} from our room, best {stay} of the whole trip.",
            "The {trip} around {place} was {pos} and the {aspect} exceeded our expectations.",
            "Booked the {stay} last minute for {duration} in {place}, the {aspect} was {neg} but the sunsets were worth it.",
            "Travelled {companion} to {place}, the {trip} organised everything including the {aspect}.",
            "Hidden gem in {place}: a small {stay} with a {pos} {aspect} and cheap local food nearby.",
            "Avoid the {stay} near the station, rooms are {neg} and the {aspect} is terrible.",
            "The {aspect} at our {stay} was {pos}, we would go back to {place} in a heartbeat.",
            "Our flight was delayed by three hours and we almost missed the {trip}, but {place} was worth it.",
            "Tour guide spoke three languages and the {trip} covered the highlights of {place} in {duration}.",
            "Jet lag hit hard after the long haul flight to {place}, but the {stay} made it easy to rest.",
            "The {trip} felt {neg}, too many people at every stop and the {aspect} was a mess.",
        ],
        "posts": [
            "Planning {duration} in {place} {companion}, any tips for a {pos} {stay}?",
            "Packing list for {place}: comfy walking shoes, rain jacket, power adapter and a good map.",
            "Passport, visa and travel insurance sorted, {duration} of exploring {place} starts tomorrow.",
            "Rented a car and drove along the coast near {place}, every stop was more {pos} than the last.",
            "Best time of year to visit {place}? Trying to avoid {neg} beaches and peak season prices.",
            "Budget breakdown for {duration} in {place}: flights, the {stay}, the {trip} and street food.",
            "Is the {trip} in {place} worth it {companion}, or should we just explore on foot?",
            "Sunrise hike above {place} this morning, the view from the trail was {pos}.",
        ],
    },
    "food": {
        "vocab": {
            "product": ["pasta sauce", "olive oil", "dark chocolate", "coffee beans", "green tea", "granola",
                        "hot sauce", "sourdough bread", "ramen kit", "spice mix", "honey", "aged cheddar",
                        "peanut butter", "frozen dumplings", "protein bar", "instant noodles", "cold brew",
                        "matcha powder", "snack box", "chili crisp", "pesto", "maple syrup", "miso paste",
                        "oat milk", "balsamic vinegar"],
            "aspect": ["flavour", "texture", "aroma", "sweetness", "spice level", "freshness", "packaging",
                       "portion size", "aftertaste", "crunch", "saltiness", "ingredient list"],
            "pos": ["delicious", "fresh", "rich", "crispy", "perfectly balanced", "tasty", "fragrant",
                    "addictive", "creamy", "savoury"],
            "neg": ["bland", "stale", "too salty", "soggy", "overly sweet", "greasy", "tasteless", "watery"],
            "dish": ["stir fry", "homemade pizza", "banana bread", "chicken curry", "summer salad", "pancakes",
                     "smoothie bowl", "roast chicken", "lasagna", "fried rice", "mushroom risotto",
                     "tomato soup", "beef tacos", "veggie noodles"],
            "meal": ["breakfast", "lunch", "dinner", "a late night snack", "weekly meal prep", "a picnic",
                     "Sunday brunch"],
        },
        "reviews": [
            "This {product} is {pos}, I used it in a {dish} last night and the whole family loved it.",
            "The {aspect} of the {product} is {pos}, not too sweet and great for {meal}.",
            "Tried a new recipe for {dish} with this {product}, it turned out {pos} and was ready in twenty minutes.",
            "Sadly the {product} arrived {neg}, the {aspect} was off and it tasted nothing like before.",
            "Ordering this {product} again, we go through a jar every week at {meal}.",
            "The {aspect} is {neg}, I had to add extra seasoning to make the {dish} edible.",
            "Best {product} I have tasted, {pos} {aspect} and a short ingredient list.",
            "Cooked {dish} for friends with this {product}, the {aspect} was {pos} and the plates came back empty.",
            "Portions are small for the price but the {product} tastes {pos}, perfect for {meal}.",
            "Swapped my usual {product} for this one and the {aspect} is noticeably {pos}.",
            "The {product} was {neg} and {neg2}, I will stick to cooking from scratch.",
            "My kids ask for this {product} at every {meal}, the {aspect} is {pos} and it is healthy too.",
            "Tasted {pos} straight from the pack, the {product} has a lovely {aspect}.",
            "Three stars, the {product} is {pos} but the {aspect} is {neg} compared to the old recipe.",
        ],
        "posts": [
            "Quick {meal} idea: toast, avocado, a drizzle of {product} and a pinch of chili flakes.",
            "Does anyone have a good {dish} recipe using {product}? I bought way too much of it.",
            "Baked {dish} this weekend, the kitchen smelled amazing and the {aspect} was spot on.",
            "Stocking up the pantry with {product}, {product2} and fresh herbs for {meal}.",
            "Restaurant style {dish} at home: sear, deglaze, simmer, and finish with the {product}.",
            "Meal prep Sunday: {dish}, {dish2} and overnight oats with {product} for the week.",
            "What is your secret ingredient for {dish}? Mine is a spoon of {product}.",
            "Grocery haul: {product}, {product2}, seasonal fruit and everything for {dish}.",
        ],
    },
    "parenting": {
        "vocab": {
            "product": ["stroller", "car seat", "baby monitor", "diaper bag", "high chair", "baby carrier",
                        "crib", "teething toy", "bottle warmer", "breast pump", "play mat", "baby formula",
                        "sippy cup", "potty seat", "baby bath tub", "swaddle blanket", "pair of toddler shoes",
                        "picture book", "nursing pillow", "pack of baby wipes", "white noise machine", "bouncer",
                        "night light", "booster seat"],
            "aspect": ["safety harness", "buckle", "fabric", "weight", "folding mechanism", "cleaning",
                       "assembly", "padding", "shoulder strap", "suspension", "storage basket", "size range"],
            "pos": ["sturdy", "lightweight", "easy to clean", "safe", "gentle", "practical", "a lifesaver",
                    "well designed", "soothing", "compact"],
            "neg": ["bulky", "wobbly", "hard to fold", "leaking", "flimsy", "noisy", "awkward"],
            "child": ["my newborn", "our toddler", "my six month old", "the twins", "my daughter", "my son",
                      "our baby", "my two year old", "the little one"],
            "moment": ["naps", "bedtime", "diaper changes", "daycare drop off", "teething nights",
                       "long car rides", "bath time", "feeding time", "night feeds"],
        },
        "reviews": [
            "This {product} is {pos}, {child} settles down quickly at {moment}.",
            "The {aspect} on the {product} is {neg}, hard to use with one hand while holding {child}.",
            "As a first time parent I find the {product} {pos}, especially during {moment}.",
            "The {product} folds in seconds and the {aspect} is {pos}, it fits in our small car boot.",
            "Our pediatrician recommended this {product} and the {aspect} is {pos}, washable too.",
            "Returned the {product} because the {aspect} felt {neg}, safety comes first with {child}.",
            "The {product} grows with the child, we used it from newborn to toddler and the {aspect} is still {pos}.",
            "Took {child} on a long car ride and the {product} made it easy, no crying at all.",
            "The {aspect} broke after two months, disappointing for a {product} marketed as {pos}.",
            "Assembly of the {product} took an hour and the {aspect} is {neg}, but {child} loves it.",
            "Potty training update: {child} is doing well with the {product}, stickers help a lot.",
            "Our daycare list asks for a {product} and spare clothes, this one is {pos} and cheap.",
            "{child} refuses the {product}, maybe we need a softer one for {moment}.",
            "Worth every penny, the {product} is {pos} and {child} sleeps through {moment} now.",
        ],
        "posts": [
            "Any advice for {moment} with {child}? We tried the {product} but nothing works yet.",
            "Sleep regression is hitting hard, {moment} takes an hour and {child} wakes up every night.",
            "Registry must haves: a {pos} {product}, the {product2}, and lots of burp cloths.",
            "{child} started crawling, so we bought the {product} and baby gates for the stairs.",
            "Parent tip: keep the {product} in the diaper bag for {moment}, it saves the day.",
            "How did you transition {child} from the {product} to the {product2}? Any gentle tricks?",
            "Second baby on the way, which {product} did you actually use and which was a waste of money?",
            "Toddler meltdowns at {moment} are real, the {product} and a fixed routine helped us.",
        ],
    },
}

GENERIC_EN = {
    "vocab": {
        "weekday": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"],
        "days": ["two", "three", "four", "five", "six"],
        "courier": ["the courier", "the delivery driver", "the post office", "the parcel locker"],
        "speed": ["fast", "quick", "on time", "faster than expected", "super quick"],
        "verdict": ["okay", "fine", "decent", "average", "good enough", "as expected"],
    },
    "templates": [
        "Delivery was {speed} and the package arrived in good condition.",
        "Ordered on {weekday}, it arrived {days} days later, no complaints.",
        "Price is {verdict} for what you get, nothing special.",
        "Thanks to the seller for the quick reply to my question.",
        "Arrived {days} days late but customer service was helpful.",
        "Good value for money, I would buy from this shop again.",
        "The box was damaged by {courier} but the item inside was fine.",
        "Still waiting for my refund after returning the order last {weekday}.",
        "Five stars, everything as described, thank you.",
        "Tracking number did not update for {days} days, very stressful.",
        "Not bad, not great, it does the job I guess.",
        "The coupon code did not work at checkout, I had to pay full price.",
        "Gave it as a gift and they seemed happy with it.",
        "The app keeps logging me out when I try to leave a review.",
        "Had to contact support twice before the issue was solved.",
        "Cheaper than in the store and shipping was free.",
        "Exactly what I expected, no complaints so far, delivery was {speed}.",
        "The seller sent the wrong one at first but fixed it quickly.",
        "Would be nice if the shop offered more payment options.",
        "Quality is {verdict} for the price and {courier} was on time.",
        "Thank you, received it today, everything is {verdict}.",
        "Wrapped well and left at my door by {courier}, happy with the purchase.",
    ],
    "tails": ["Thanks!", "Would buy again.", "Delivery was quick too.", "Price was fair.", "Recommended.",
              "Five stars from me.", "Shipping took a while though.", "Happy overall.", "Thank you, seller.",
              "Will update after a few weeks."],
}
EN_INTENSIFIERS = ("really", "super", "very", "surprisingly", "pretty", "incredibly")
EN_OPENERS = ("Honestly, ", "Update: ", "Quick review: ", "So ", "Okay, ", "Well, ", "TL;DR: ")

# --------------------------------------------------------------------------------------------
# Chinese vocabulary and templates (sentences without final punctuation; joined per user style)
# --------------------------------------------------------------------------------------------
ZH = {
    "fashion": {
        "vocab": {
            "product": ["连衣裙", "衬衫", "牛仔裤", "羽绒服", "风衣", "毛衣", "半身裙", "运动鞋", "高跟鞋", "卫衣",
                        "T恤", "西装外套", "针织开衫", "短靴", "帆布鞋", "阔腿裤", "大衣", "双肩包", "丝巾",
                        "雪纺衫", "打底裤", "棉服"],
            "aspect": ["面料", "版型", "做工", "颜色", "尺码", "领口", "袖子", "拉链", "走线", "腰身", "长度", "质感"],
            "pos": ["舒服", "合身", "显瘦", "柔软", "好看", "透气", "百搭", "精致", "有垂感"],
            "neg": ["起球", "掉色", "偏小", "偏大", "线头多", "有色差", "太薄", "皱巴巴"],
            "occasion": ["上班", "约会", "逛街", "参加婚礼", "旅游拍照", "日常通勤", "过年走亲戚", "面试"],
            "colour": ["黑色", "米白色", "藏青色", "焦糖色", "酒红色", "浅蓝色", "卡其色", "燕麦色"],
            "size": ["S码", "M码", "L码", "XL码", "均码"],
        },
        "reviews": [
            "这件{product}的{aspect}很{pos}，尺码也合适",
            "买了{size}的{product}，{aspect}很{pos}，就是有点{neg}",
            "{colour}的{product}特别好看，穿去{occasion}被同事夸了",
            "{product}洗了一次就{neg}了，{aspect}也一般，有点失望",
            "这条{product}上身很{pos}，搭配{product2}刚刚好",
            "第二次回购这家的{product}了，{aspect}一如既往的{pos}",
            "{product}的{aspect}有点{neg}，建议大家拍大一码",
            "实物和图片一样，{colour}很正，{aspect}很{pos}，性价比高",
            "{product}收到了，{aspect}很{pos}，{aspect2}也很细致，好评",
            "退货了，{product}的{aspect}{neg}，穿着不舒服",
            "这件{product}适合{occasion}，版型{pos}，很显气质",
            "{product}比想象中厚实，冬天穿很{pos}，{colour}也耐脏",
            "穿了一个月{product}也没有{neg}，{aspect}做得很好",
        ],
        "posts": [
            "求推荐适合{occasion}穿的{product}，最好是{colour}的",
            "今天的穿搭：{colour}{product}配{product2}，简单又{pos}",
            "换季整理衣柜，入手了一件{pos}的{product}",
            "{occasion}穿什么好？想要一件{pos}一点的{product}",
            "小个子穿{product}怎么搭配？{size}会不会太长",
        ],
    },
    "electronics": {
        "vocab": {
            "product": ["手机", "笔记本电脑", "蓝牙耳机", "智能手表", "平板电脑", "机械键盘", "游戏鼠标", "显示器",
                        "充电宝", "路由器", "相机", "降噪耳机", "蓝牙音箱", "电子书阅读器", "固态硬盘", "投影仪",
                        "智能电视", "快充充电器", "运动手环", "显卡", "扫地机器人", "游戏机"],
            "aspect": ["电池续航", "屏幕", "拍照", "充电速度", "做工", "音质", "信号", "系统", "散热", "手感",
                       "刷新率", "降噪效果", "运行速度", "蓝牙连接"],
            "pos": ["出色", "清晰", "流畅", "稳定", "强劲", "灵敏", "优秀", "给力"],
            "neg": ["卡顿", "发热严重", "断连", "掉电快", "反应慢", "有杂音", "死机"],
            "spec": ["256G", "16G内存", "120Hz高刷", "65W快充", "5000毫安电池", "1TB存储", "OLED屏幕", "WiFi6"],
            "use": ["打游戏", "剪视频", "开视频会议", "看剧", "通勤", "写代码", "修图", "上网课"],
            "duration": ["两周", "一个月", "三天", "半年", "两个月"],
        },
        "reviews": [
            "{product}的{aspect}很{pos}，{aspect2}也不错",
            "用了{duration}，{product}{aspect}很{pos}，{use}完全没压力",
            "这款{product}配置是{spec}，{aspect}很{pos}，就是价格有点贵",
            "{product}用了{duration}就开始{neg}，客服说要返厂维修",
            "从旧{product}换过来，{aspect}提升明显，整体很{pos}",
            "系统更新后{product}不再{neg}了，{aspect}也变好了",
            "{product}和{product2}连接很快，{aspect}很{pos}",
            "{product}经常{neg}，充电的时候还发烫，准备退货",
            "开箱新{product}，{spec}，做工{pos}，第一印象很好",
            "性价比很高的{product}，{spec}加上{pos}的{aspect}",
            "{use}的时候{product}有点{neg}，希望下次更新能修复",
            "{product}充电一小时就满，{aspect}很{pos}，出门很方便",
            "推荐这款{product}，{use}用了{duration}，{aspect}一直很{pos}",
            "{product}的跑分很高，但是日常使用{aspect}一般",
        ],
        "posts": [
            "想买个{product}主要用来{use}，{spec}的版本够用吗",
            "对比了两款{product}，一款{spec}，另一款{aspect}更好，大家选哪个",
            "三千元以内哪款{product}的{aspect}最好？主要用来{use}",
            "新桌面布置好了：{product}加{product2}，{aspect}很{pos}",
            "有人升级系统后{product}也{neg}吗",
        ],
    },
    "film": {
        "vocab": {
            "product": ["电影", "纪录片", "悬疑片", "爱情片", "科幻片", "动画电影", "恐怖片", "文艺片", "续集",
                        "电视剧", "喜剧片", "战争片", "武侠片", "动作片", "音乐剧", "传记片", "美剧", "犯罪片",
                        "老电影", "历史剧"],
            "aspect": ["剧情", "节奏", "配乐", "摄影", "演技", "剧本", "台词", "结局", "反转", "特效", "镜头语言",
                       "人物塑造", "画面", "选角"],
            "pos": ["精彩", "感人", "震撼", "好笑", "细腻", "扣人心弦", "惊艳", "出色"],
            "neg": ["拖沓", "老套", "无聊", "混乱", "尴尬", "虎头蛇尾"],
            "person": ["男主角", "女主角", "导演", "配角", "反派", "编剧", "老戏骨"],
            "venue": ["在电影院", "在家", "在IMAX厅", "在电影节", "周末", "深夜"],
            "genre": ["悬疑", "科幻", "恐怖", "喜剧", "动画", "武侠", "犯罪"],
        },
        "reviews": [
            "这部{product}的{aspect}太{pos}了，看到最后才发现彩蛋",
            "{venue}看了这部{product}，{person}的演技很{pos}",
            "{aspect}很好，但是{aspect2}有点{neg}，后半段看得想睡",
            "不剧透，这部{product}的{aspect}非常{pos}，值得二刷",
            "{person}贡献了教科书级的表演，光是{aspect}就值回票价",
            "这部{product}太{neg}了，开场二十分钟就猜到了结局",
            "{venue}重温了这部{product}，{aspect}依然{pos}",
            "预告片骗人，{aspect}很{neg}，{person}也不太合适",
            "给{aspect}打五星，这部{product}每一帧画面都像壁纸",
            "这部{product}节奏慢热，但结局非常{pos}",
            "{person}抢尽风头，这部{product}的{aspect}很{pos}",
            "{genre}片不是我的菜，{aspect}有点{neg}，片长也太长了",
            "豆瓣评分很高的{product}，{aspect}和{aspect2}都很{pos}",
        ],
        "posts": [
            "求推荐类似的{genre}{product}，特别喜欢这部的{aspect}",
            "周末一口气追完了这部{product}，{aspect}一直吸引着我",
            "听说这部{product}的{aspect}很{pos}，已加入片单",
            "今年看过的{genre}片里，这部{product}的{aspect}能排前三",
            "观影小组讨论了这部{product}的{aspect}，{person}的争议最大",
        ],
    },
    "travel": {
        "vocab": {
            "stay": ["酒店", "民宿", "青旅", "海景房", "度假村", "温泉酒店", "露营地", "客栈", "山景木屋", "公寓"],
            "trip": ["一日游", "自由行", "跟团游", "高铁之旅", "邮轮", "自驾游", "城市观光巴士", "徒步路线",
                     "游船", "美食之旅"],
            "aspect": ["位置", "景色", "早餐", "房间", "服务", "行程安排", "导游", "接送机", "泳池", "卫生",
                       "隔音", "交通"],
            "pos": ["方便", "干净", "热情", "美", "舒适", "周到", "划算", "惬意"],
            "neg": ["吵", "贵", "拥挤", "脏", "混乱", "不靠谱"],
            "place": ["大理", "三亚", "成都", "西安", "厦门", "丽江", "青岛", "桂林", "杭州", "张家界", "重庆",
                      "新疆", "京都", "清迈", "冰岛", "巴厘岛"],
            "duration": ["三天两晚", "一周", "五天", "一个周末", "十天"],
            "companion": ["和家人", "和朋友", "带孩子", "一个人", "和对象", "和爸妈"],
        },
        "reviews": [
            "在{place}住了{duration}，这家{stay}的{aspect}很{pos}",
            "{companion}去{place}{trip}，{aspect}很{pos}，强烈推荐",
            "{stay}的{aspect}有点{neg}，不过离古城很近，出行方便",
            "航班延误了三个小时，差点赶不上去{place}的{trip}",
            "早上醒来窗外就是{place}的风景，这次的{stay}太值了",
            "{place}的{trip}体验很{pos}，{aspect}超出预期",
            "临时订的{stay}，{aspect}有点{neg}，但是{place}的日落真的很美",
            "这次{place}{duration}的{trip}，导游安排得很{pos}",
            "{place}的宝藏{stay}，{aspect}很{pos}，附近小吃便宜又好吃",
            "不推荐火车站附近的{stay}，房间{neg}，{aspect}也差",
            "{stay}的{aspect}很{pos}，下次还会再来{place}",
            "{trip}的行程太{neg}了，每个景点都是人山人海",
        ],
        "posts": [
            "计划{companion}去{place}玩{duration}，求推荐{pos}的{stay}",
            "去{place}的行李清单：防晒霜、充电宝、雨伞和舒服的鞋",
            "签证办好了，明天出发去{place}，{duration}的旅程开始啦",
            "{companion}自驾{place}，一路上风景都很{pos}",
            "什么时候去{place}最合适？想避开人多的旺季",
            "{place}{duration}花费清单：机票、{stay}、{trip}和小吃",
        ],
    },
    "food": {
        "vocab": {
            "product": ["橄榄油", "黑巧克力", "咖啡豆", "绿茶", "燕麦片", "辣椒酱", "酸奶", "全麦面包", "螺蛳粉",
                        "火锅底料", "蜂蜜", "坚果", "速冻饺子", "牛肉干", "方便面", "月饼", "抹茶粉", "零食礼包",
                        "腊肠", "豆瓣酱", "挂面", "老陈醋"],
            "aspect": ["味道", "口感", "香味", "甜度", "辣度", "新鲜度", "包装", "分量", "回味", "咸淡"],
            "pos": ["好吃", "香", "新鲜", "酥脆", "浓郁", "鲜美", "地道", "入味"],
            "neg": ["太咸", "太甜", "不新鲜", "发潮", "油腻", "没味道"],
            "dish": ["番茄炒蛋", "红烧肉", "酸菜鱼", "蛋炒饭", "凉拌菜", "火锅", "披萨", "蛋糕", "麻婆豆腐",
                     "饺子", "牛肉面", "可乐鸡翅"],
            "meal": ["早餐", "午饭", "晚饭", "夜宵", "下午茶"],
        },
        "reviews": [
            "这个{product}很{pos}，昨晚用来做{dish}，全家都爱吃",
            "{product}的{aspect}刚刚好，不会{neg}，{meal}吃正合适",
            "用{product}试做了{dish}，二十分钟搞定，味道很{pos}",
            "这次收到的{product}{neg}，{aspect}和以前差很多",
            "已经回购第五次了，家里{meal}离不开这款{product}",
            "{aspect}有点{neg}，做{dish}的时候只好少放调料",
            "吃过最{pos}的{product}，{aspect}很浓郁，配料表也干净",
            "周末请朋友吃{dish}，用了这款{product}，大家都说{pos}",
            "分量有点少，但{product}的{aspect}很{pos}，适合当{meal}",
            "换了这款{product}以后，做的{dish}{aspect}明显更好了",
            "{product}{neg}又贵，以后还是自己做",
            "孩子{meal}总要吃这个{product}，{aspect}很{pos}还健康",
            "开袋就很{pos}，{product}的{aspect}特别好",
        ],
        "posts": [
            "有没有用{product}做{dish}的好方法？买多了吃不完",
            "{meal}简单吃：全麦面包配鸡蛋，再加一点{product}",
            "周末在家做{dish}，厨房里都是香味，{aspect}刚刚好",
            "囤了一些{product}和{product2}，每周备餐用",
            "做{dish}的秘诀是什么？我会加一勺{product}",
        ],
    },
    "parenting": {
        "vocab": {
            "product": ["婴儿车", "安全座椅", "婴儿监视器", "妈咪包", "宝宝餐椅", "背带", "婴儿床", "牙胶",
                        "温奶器", "吸奶器", "爬行垫", "奶粉", "学饮杯", "儿童马桶", "澡盆", "包被", "学步鞋",
                        "绘本", "哺乳枕", "湿巾", "纸尿裤", "安抚奶嘴"],
            "aspect": ["安全带", "卡扣", "面料", "重量", "折叠", "夜灯", "清洗", "安装", "透气性", "做工", "轮子",
                       "收纳"],
            "pos": ["结实", "轻便", "好清洗", "安全", "柔软", "实用", "方便", "贴心"],
            "neg": ["笨重", "晃动", "难折叠", "漏水", "有异味", "噪音大"],
            "child": ["宝宝", "我家娃", "六个月的宝宝", "双胞胎", "女儿", "儿子", "小朋友", "两岁的孩子"],
            "moment": ["午睡", "晚上哄睡", "换尿布", "送托", "长牙", "坐车出门", "洗澡", "喂奶"],
        },
        "reviews": [
            "这个{product}很{pos}，{child}{moment}的时候很快就安静了",
            "{product}的{aspect}有点{neg}，抱着{child}单手操作很难",
            "新手爸妈表示{product}真的很{pos}，尤其是{moment}的时候",
            "{product}收纳很方便，{aspect}很{pos}，出门带着不占地方",
            "{child}不喜欢这个{product}，可能要换个软一点的",
            "儿科医生推荐的{product}，{aspect}很{pos}，还能机洗",
            "退掉了{product}，{aspect}{neg}，孩子的安全最重要",
            "幼儿园要求准备{product}和备用衣服，这个{pos}又便宜",
            "{product}可以用到三岁，{child}从小用到现在，{aspect}还是很{pos}",
            "带{child}坐了五个小时车，多亏了{product}，一路没哭",
            "用了两个月{aspect}就坏了，{product}号称{pos}也不过如此",
            "如厕训练进展：{child}用{product}用得不错，贴纸奖励很有效",
            "{product}安装花了一个小时，{aspect}有点{neg}，但{child}很喜欢",
        ],
        "posts": [
            "{child}{moment}总是哭闹，试了{product}也没用，求建议",
            "最近睡眠倒退，{moment}要哄一个小时，{child}半夜还醒好几次",
            "待产包必备：{pos}的{product}、{product2}，还有很多口水巾",
            "{child}开始会爬了，买了{product}和楼梯护栏",
            "宝妈小贴士：妈咪包里放个{product}，{moment}的时候特别管用",
            "二胎要来了，大家觉得哪个{product}真正用得上",
        ],
    },
}

GENERIC_ZH = {
    "vocab": {
        "days": ["两", "三", "四", "五"],
        "weekday": ["周一", "周二", "周三", "周四", "周五", "周末"],
        "verdict": ["还可以", "一般", "中规中矩", "过得去", "符合预期"],
    },
    "templates": [
        "物流很快，包装完好",
        "价格{verdict}，性价比一般",
        "谢谢卖家，回复很及时",
        "晚到了{days}天，不过客服态度很好",
        "东西收到了，和描述一致，五星好评",
        "包装有点破损，但里面的东西没坏",
        "退货一周了还没收到退款",
        "快递员送货上门，服务很好",
        "优惠券用不了，只能原价买",
        "买来送人的，对方说挺喜欢",
        "{verdict}吧，没什么特别的",
        "第二次在这家店买了，值得信赖",
        "物流信息{days}天没更新，有点着急",
        "客服处理问题很耐心，点赞",
        "比实体店便宜，还包邮",
        "发错了货，联系卖家很快就换了",
        "还没用，先给个好评",
        "质量{verdict}，价格便宜，凑合用",
        "{weekday}下单，{days}天就到了，很满意",
        "希望店家多一些付款方式",
    ],
    "tails": ["物流很快", "好评", "会回购", "价格也合适", "谢谢卖家", "总体满意", "发货有点慢", "推荐",
              "五星好评", "用一段时间再来追评"],
}
ZH_OPENERS = ("说实话，", "总的来说，", "追加评价：", "更新一下：", "简单说两句，")

# --------------------------------------------------------------------------------------------
# Dirty-row material
# --------------------------------------------------------------------------------------------
EMOJI = ("😍", "👍", "🔥", "😂", "🙏", "❤️", "✨", "😭", "🤔", "💯", "🎉", "😅")
WHITESPACE_ONLY = ("   ", "\t", " \t  ", "\u3000\u3000", "\u00a0", "  \u00a0 ")
HTML_ONLY = ("<p></p>", "<div><br/></div>", "<p>&nbsp;</p>", "<br>", "<img src='photo.jpg'>",
             "<span> </span>", "<div class='empty'></div>", "<script>alert(1)</script>")
FULLWIDTH_TOKENS = ("OK", "5星", "100分", "XL", "A+", "2026")
UNKNOWN_EVENT_TYPES = ("share", "wishlist", "hover", "refund", "??")
BAD_RATINGS = (0, 7, -1, 6)
PII_FIRST = ("anna", "lily", "wei", "james", "maria", "chen", "olivia", "tom", "yuki", "sara", "ming", "david")
PII_LAST = ("chen", "smith", "wang", "garcia", "brown", "zhang", "lee", "mueller", "liu", "khan")
PII_DOMAINS = ("example.com", "mail.example.org", "example.net", "post.example.cn", "inbox.example.co.uk")
CN_PREFIXES = ("130", "131", "132", "133", "135", "136", "137", "138", "139", "150", "151", "155", "158",
               "159", "166", "176", "177", "180", "186", "187", "188", "189", "199")
PII_SENTENCES = {
    ("en", "email"): ("Questions? Email me at {pii}", "For the size chart write to {pii}", "Seller contact: {pii}",
                      "Reach me at {pii} if you want to swap."),
    ("en", "phone"): ("Call or text {pii} if you want it.", "The shop number is {pii}, they answered right away.",
                      "WhatsApp me at {pii}"),
    ("en", "url"): ("Full review with photos: {pii}", "Got it from {pii} during the sale.", "Link: {pii}"),
    ("zh", "email"): ("有问题可以发邮件到{pii}", "联系邮箱：{pii}", "需要的加我邮箱{pii}"),
    ("zh", "phone"): ("需要的话打我电话{pii}", "商家电话{pii}，回复很快", "加微信或者打{pii}"),
    ("zh", "url"): ("详细测评看这里{pii}", "购买链接{pii}", "原帖地址{pii}"),
}

_FORMATTER = string.Formatter()


_NO_INTENSIFIER_AFTER = ("really ", "very ", "so ", "seriously ", "too ", "more ", "most ", "super ")
_ARTICLE_SLOT = re.compile(r"\b([Aa]) \{(\w+)\}")
_VOWEL_SOUND = re.compile(r"(?:[aeioAEIO]|[uU][nglp])(?!ne\b)")


def _compile(template: str, vocab: dict) -> tuple[str, tuple[tuple[str, str, bool], ...], tuple]:
    """(template, ((field, vocabulary list name, may take an intensifier), ...), article slots).

    "a {slot}" becomes "{_a_slot}{slot}" so that the article is chosen (a / an) from the value."""
    articles = tuple((f"_a_{m.group(2)}", m.group(2), m.group(1)) for m in _ARTICLE_SLOT.finditer(template))
    template = _ARTICLE_SLOT.sub(lambda m: f"{{_a_{m.group(2)}}}{{{m.group(2)}}}", template)
    fields = []
    for literal, field, _, _ in _FORMATTER.parse(template):
        if field is None or field.startswith("_a_"):
            continue
        base = field.rstrip("0123456789")
        if base not in vocab:
            raise KeyError(f"template slot {{{field}}} has no vocabulary: {template!r}")
        fields.append((field, base, base == "pos" and not literal.endswith(_NO_INTENSIFIER_AFTER)))
    return template, tuple(fields), articles


def _compile_bank(spec: dict) -> dict:
    vocab = {k: tuple(v) for k, v in spec["vocab"].items()}
    reviews = tuple(_compile(t, vocab) for t in spec.get("reviews", ()))
    posts = tuple(_compile(t, vocab) for t in spec.get("posts", ()))
    generic = tuple(_compile(t, vocab) for t in spec.get("templates", ()))
    return {"vocab": vocab, "reviews": reviews, "posts": posts, "any": reviews + posts + generic,
            "tails": tuple(spec.get("tails", ()))}


BANKS = {
    "en": {**{g: _compile_bank(EN[g]) for g in GROUPS}, NOISE: _compile_bank(GENERIC_EN)},
    "zh": {**{g: _compile_bank(ZH[g]) for g in GROUPS}, NOISE: _compile_bank(GENERIC_ZH)},
}


def vocabulary_size(lang: str, group: str) -> int:
    """Number of vocabulary items of one group's bank (all slot lists together)."""
    return sum(len(v) for v in BANKS[lang][group]["vocab"].values())


def template_count(lang: str, group: str) -> int:
    return len(BANKS[lang][group]["any"])


# --------------------------------------------------------------------------------------------
# Text rendering (Python, per text; the random draws come from one random.Random per block)
# --------------------------------------------------------------------------------------------
class _TextMaker:
    def __init__(self, rnd: random.Random):
        self.rnd = rnd

    def pick(self, seq):
        return seq[int(self.rnd.random() * len(seq))]

    def sentence(self, compiled, vocab, lang, fixed: dict, favourites: dict | None) -> str:
        tpl, fields, articles = compiled
        rnd = self.rnd
        values = {}
        for field, base, intensify in fields:
            if field in values:
                continue
            if field == base and base in STICKY and base in fixed:
                values[field] = fixed[base]
                continue
            options = vocab[base]
            if favourites and field == base and base in favourites and rnd.random() < 0.5:
                value = self.pick(favourites[base])
            else:
                value = options[int(rnd.random() * len(options))]
                if field != base and value == fixed.get(base):  # product2 != product
                    value = options[int(rnd.random() * len(options))]
            if intensify and lang == "en" and rnd.random() < 0.25:
                value = f"{self.pick(EN_INTENSIFIERS)} {value}"
            values[field] = value
            if field == base and base in STICKY:
                fixed[base] = value
        for key, field, article in articles:  # a + vowel sound -> an
            values[key] = article + ("n " if _VOWEL_SOUND.match(values[field]) else " ")
        s = tpl.format_map(values)
        return s[0].upper() + s[1:] if lang == "en" else s

    def text(self, user: dict, source: str, kind: str) -> str:
        """One text of `user` from bank `source` (a group or 'noise'); kind is review/post/generic."""
        rnd = self.rnd
        lang = user["lang"]
        bank = BANKS[lang][source]
        generic = BANKS[lang][NOISE]
        vocab = bank["vocab"]
        favourites = user["favourites"] if source == user["group"] else None
        fixed: dict = {}
        if kind == "generic":
            first = self.pick(generic["any"])
            follow = generic["any"]
        else:
            first = self.pick(bank["reviews"] if kind == "review" else bank["posts"])
            follow = bank["any"]
        sentences = [self.sentence(first, vocab if kind != "generic" else generic["vocab"], lang, fixed, favourites)]
        r = rnd.random()
        extra = 0 if r < 0.40 else (1 if r < 0.85 else 2)
        used = {first[0]}
        for _ in range(extra):
            nxt = self.pick(follow)
            if nxt[0] in used:  # one retry: avoid the same template twice in a text
                nxt = self.pick(follow)
                if nxt[0] in used:
                    continue
            used.add(nxt[0])
            sentences.append(self.sentence(nxt, vocab if kind != "generic" else generic["vocab"],
                                           lang, fixed, favourites))
        if kind != "generic" and rnd.random() < 0.18:
            sentences.append(self.pick(generic["tails"]))
        if lang == "en":
            return self._join_en(user, sentences)
        return self._join_zh(user, sentences)

    def _join_en(self, user, sentences) -> str:
        rnd = self.rnd
        while len(sentences) > 1 and sum(s.count(" ") + 1 for s in sentences) > 40:
            sentences.pop()
        if sum(s.count(" ") + 1 for s in sentences) < 10:
            sentences.append(self.pick(BANKS["en"][NOISE]["tails"]))
        if user["exclaim"] and rnd.random() < 0.5:
            sentences = [s[:-1] + "!" if s.endswith(".") else s for s in sentences]
        text = " ".join(sentences)
        if rnd.random() < 0.10:
            opener = self.pick(EN_OPENERS)
            if not (text.startswith("I ") or text[1:2].isupper()):
                text = text[0].lower() + text[1:]
            text = opener + text
        if user["lower"]:
            text = text.lower()
        return text

    def _join_zh(self, user, sentences) -> str:
        rnd = self.rnd
        while len(sentences) > 1 and sum(len(s) for s in sentences) > 80:
            sentences.pop()
        if sum(len(s) for s in sentences) < 12:
            sentences.append(self.pick(BANKS["zh"][NOISE]["tails"]))
        sep = user["zh_sep"]
        text = sentences[0]
        for s in sentences[1:]:
            text += (sep if rnd.random() < 0.7 else "，") + s
        if rnd.random() < 0.08:
            text = self.pick(ZH_OPENERS) + text
        return text + user["zh_end"]


# --------------------------------------------------------------------------------------------
# Dirty transformations
# --------------------------------------------------------------------------------------------
def to_fullwidth(s: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in s)


def _token(rnd: random.Random, n: int) -> str:
    alphabet = "abcdefghijkmnpqrstuvwxyz23456789"
    return "".join(alphabet[int(rnd.random() * len(alphabet))] for _ in range(n))


def _digits(rnd: random.Random, n: int) -> str:
    return "".join(str(int(rnd.random() * 10)) for _ in range(n))


def _make_pii(kind: str, rnd: random.Random) -> str:
    pick = lambda seq: seq[int(rnd.random() * len(seq))]  # noqa: E731
    if kind == "pii_email":
        sep = pick((".", "_", ""))
        return f"{pick(PII_FIRST)}{sep}{pick(PII_LAST)}{int(rnd.random() * 9000) + 10}@{pick(PII_DOMAINS)}"
    if kind == "pii_phone_cn":
        n = pick(CN_PREFIXES) + _digits(rnd, 8)
        form = int(rnd.random() * 4)
        return (n, f"{n[:3]} {n[3:7]} {n[7:]}", f"{n[:3]}-{n[3:7]}-{n[7:]}", f"+86 {n}")[form]
    if kind == "pii_phone_intl":
        form = int(rnd.random() * 5)
        if form == 0:
            return f"+44 20 7946 {_digits(rnd, 4)}"
        if form == 1:
            return f"+1 415 555 {_digits(rnd, 4)}"
        if form == 2:
            return f"+1 (212) 555-{_digits(rnd, 4)}"
        if form == 3:
            return f"+49 30 {_digits(rnd, 3)} {_digits(rnd, 4)}"
        return f"+33 1 {_digits(rnd, 2)} {_digits(rnd, 2)} {_digits(rnd, 2)} {_digits(rnd, 2)}"
    # pii_url_query
    form = int(rnd.random() * 3)
    n = int(rnd.random() * 900000) + 1000
    if form == 0:
        return f"https://shop.example.com/item/{n}?ref={_token(rnd, 8)}&utm_source=share"
    if form == 1:
        return f"http://www.example.org/review?id={n}&user={_token(rnd, 6)}"
    return f"https://m.example.cn/p/{n}?from=app&uid={_token(rnd, 10)}"


def _split_words(text: str, rnd: random.Random, lang: str) -> tuple[str, str, str]:
    """(before, middle, after) with middle a word (en) or 2-4 characters (zh), all non-empty-safe."""
    if lang == "en":
        words = text.split(" ")
        i = int(rnd.random() * len(words))
        before = " ".join(words[:i]) + (" " if i else "")
        after = (" " if i < len(words) - 1 else "") + " ".join(words[i + 1:])
        return before, words[i], after
    n = min(len(text), 2 + int(rnd.random() * 3))
    i = int(rnd.random() * max(1, len(text) - n))
    return text[:i], text[i:i + n], text[i + n:]


def _dirty_text(kind: str, text: str, lang: str, rnd: random.Random, pii: list) -> str | None:
    pick = lambda seq: seq[int(rnd.random() * len(seq))]  # noqa: E731
    if kind == "html_markup":
        v = int(rnd.random() * 6)
        if v == 0:
            a, b, c = _split_words(text, rnd, lang)
            return f"<p>{a}<b>{b}</b>{c}</p><script>alert(1)</script>"
        if v == 1:
            return f"<div class='review'>{text}</div>"
        if v == 2:
            sep = ". " if lang == "en" else "，"
            parts = text.split(sep, 1)
            return (parts[0] + sep.strip() + "<br/>" + parts[1]) if len(parts) == 2 else f"{text}<br>"
        if v == 3:
            return f"<p>{text}</p><style>.x{{color:red}}</style>"
        if v == 4:
            return f"<span style='color:#333'>{text}</span>"
        a, b, c = _split_words(text, rnd, lang)
        return f"{a}<i>{b}</i>{c} <img src='x.png' onerror='alert(1)'>"
    if kind == "html_entities":
        if lang == "en":
            out = text.replace(" and ", " &amp; ").replace("'", "&#39;")
            return out if out != text else f"&quot;{text}&quot; &lt;3"
        return pick((f"&ldquo;{text}&rdquo;", text.replace("，", "&nbsp;，", 1) + "&amp;", f"{text} &lt;3"))
    if kind == "empty_text":
        return pick(("", None))
    if kind == "whitespace_only":
        return pick(WHITESPACE_ONLY)
    if kind == "html_only":
        return pick(HTML_ONLY)
    if kind == "url_only":
        n = int(rnd.random() * 900000) + 1000
        return pick((f"https://example.com/p/{n}", f"http://t.example.cn/{_token(rnd, 7)}",
                     f"www.example.net/r/{n}", f"https://img.example.com/photos/{_token(rnd, 9)}.jpg"))
    if kind.startswith("pii_"):
        value = _make_pii(kind, rnd)
        pii.append(value)
        family = "email" if kind == "pii_email" else ("url" if kind == "pii_url_query" else "phone")
        sentence = pick(PII_SENTENCES[(lang, family)]).format(pii=value)
        if lang == "en":
            return f"{text} {sentence}" if rnd.random() < 0.75 else f"{sentence} {text}"
        return f"{text}，{sentence}" if rnd.random() < 0.75 else f"{sentence}，{text}"
    if kind == "fullwidth":
        if lang == "en":
            words = text.split(" ")
            if rnd.random() < 0.2:
                return to_fullwidth(text)
            n = 2 + int(rnd.random() * 4)
            i = int(rnd.random() * max(1, len(words) - n))
            words[i:i + n] = [to_fullwidth(w) for w in words[i:i + n]]
            return " ".join(words)
        if any(c.isascii() and c.isalnum() for c in text):
            return to_fullwidth(text)
        return text + "，" + to_fullwidth(pick(FULLWIDTH_TOKENS))
    if kind == "emoji":
        e = "".join(pick(EMOJI) for _ in range(1 + int(rnd.random() * 3)))
        if rnd.random() < 0.7:
            return f"{text} {e}" if lang == "en" else text + e
        a, b, c = _split_words(text, rnd, lang)
        return f"{a}{b}{e}{c}"
    raise ValueError(kind)


# --------------------------------------------------------------------------------------------
# Block generation
# --------------------------------------------------------------------------------------------
def _balanced_counts(n: int, shares: list[float]) -> np.ndarray:
    """Integer counts summing to n, proportional to shares (largest remainder)."""
    raw = np.asarray(shares, dtype=float) * n / sum(shares)
    counts = np.floor(raw).astype(int)
    order = np.argsort(-(raw - counts), kind="stable")
    counts[order[: n - counts.sum()]] += 1
    return counts


def _iso(seconds: np.ndarray) -> np.ndarray:
    """Epoch seconds -> 'YYYY-MM-DDTHH:MM:SSZ' (object array)."""
    s = np.datetime_as_string(seconds.astype("datetime64[s]"), unit="s")
    return np.char.add(s, "Z").astype(object)


_ITEM_TABLE: dict[int, np.ndarray] = {}


def _item_table(n_items: int) -> np.ndarray:
    """(categories x n_items) object array of item ids like 'fashion-0012'."""
    table = _ITEM_TABLE.get(n_items)
    if table is None:
        width = max(4, len(str(n_items - 1)))
        table = np.array([[f"{c}-{i:0{width}d}" for i in range(n_items)] for c in CATEGORIES], dtype=object)
        _ITEM_TABLE.clear()
        _ITEM_TABLE[n_items] = table
    return table


def _popular_index(u, n_items: int):
    """Skewed (popular-first) item index from uniform u in [0, 1)."""
    return (np.asarray(u) ** 2.2 * n_items).astype(np.int64)


def generate_block(block: int, start: int, n: int, params: dict) -> dict:
    """Users start..start+n-1 as DataFrames plus planted PII and counters. Pure function of
    (params['seed'], block, start, n, params)."""
    seed = params["seed"]
    ss = np.random.SeedSequence([seed, block])
    rng = np.random.default_rng(ss)
    rnd = random.Random(int(rng.integers(0, 2**62)))
    maker = _TextMaker(rnd)
    n_items = params["n_items"]
    items = _item_table(n_items)
    t_lo, t_hi = params["texts_per_user"]
    e_lo, e_hi = params["events_per_user"]
    rate = params["dirty_rate"]

    # ---- users: balanced group / language / edge assignment, then shuffled --------------------
    n_noise = int(round(NOISE_SHARE * n))
    group_counts = np.concatenate([_balanced_counts(n - n_noise, [1.0] * len(GROUPS)), [n_noise]])
    group = np.repeat(np.arange(len(ALL_GROUPS)), group_counts)
    lang = np.zeros(n, dtype=np.int64)
    pos = 0
    for c in group_counts:
        n_zh = int(round(ZH_SHARE * c))
        if c >= 2:
            n_zh = min(max(n_zh, 1), c - 1)
        lang[pos:pos + n_zh] = 1
        pos += c
    perm = rng.permutation(n)
    group, lang = group[perm], lang[perm]
    n_no_events = int(round(NO_EVENTS_SHARE * n))
    n_no_texts = int(round(NO_TEXTS_SHARE * n))
    if n >= 20:
        n_no_events, n_no_texts = max(n_no_events, 1), max(n_no_texts, 1)
    edge = rng.permutation(n)
    no_texts = np.zeros(n, bool)
    no_events = np.zeros(n, bool)
    no_texts[edge[:n_no_texts]] = True
    no_events[edge[n_no_texts:n_no_texts + n_no_events]] = True

    n_texts = t_lo + np.floor((t_hi - t_lo + 1) * rng.beta(1.2, 2.2, n)).astype(np.int64)
    n_texts = np.minimum(n_texts, t_hi)
    n_texts[no_texts] = 0
    n_events = e_lo + np.floor((e_hi - e_lo + 1) * rng.beta(1.3, 2.0, n)).astype(np.int64)
    n_events = np.minimum(n_events, e_hi)
    n_events[no_events] = 0
    win_start = rng.integers(0, int((TS_END - TS_START).astype(int)) - 30 * 86400, n)
    win_len = rng.integers(30 * 86400, 240 * 86400, n)
    win_len = np.minimum(win_len, int((TS_END - TS_START).astype(int)) - win_start)
    base_ts = int(TS_START.astype(int))

    user_num = start + np.arange(n)
    user_ids = np.array([f"u{i:07d}" for i in user_num], dtype=object)
    p_generic = rng.uniform(0.08, 0.22, n)
    p_other = rng.uniform(0.0, 0.08, n)
    p_review = rng.uniform(0.55, 0.85, n)

    # ---- texts (Python rendering) ---------------------------------------------------------------
    t_user, t_text, t_ts, t_item, t_lang = [], [], [], [], []
    for u in range(n):
        k = int(n_texts[u])
        if k == 0:
            continue
        g = ALL_GROUPS[group[u]]
        lg = LANGS[lang[u]]
        bank_vocab = BANKS[lg][g]["vocab"]
        user = {
            "group": g, "lang": lg,
            "favourites": {s: tuple(rnd.sample(bank_vocab[s], 3)) for s in FAVOURITE_SLOTS if s in bank_vocab},
            "exclaim": rnd.random() < 0.25, "lower": rnd.random() < 0.06,
            "zh_sep": rnd.choice(("，", "。", "！", " ")), "zh_end": rnd.choice(("", "", "。", "！", "~", "。。")),
        }
        ts = sorted(base_ts + int(win_start[u]) + int(rnd.random() * int(win_len[u])) for _ in range(k))
        for j in range(k):
            r = rnd.random()
            item_cat = None
            if g == NOISE or r < p_generic[u]:
                source, kind = g, "generic"
                if rnd.random() < 0.5:
                    item_cat = int(rnd.random() * len(CATEGORIES))
            else:
                source = g
                if r < p_generic[u] + p_other[u]:
                    source = GROUPS[(group[u] + 1 + int(rnd.random() * (len(GROUPS) - 1))) % len(GROUPS)]
                kind = "review" if rnd.random() < p_review[u] else "post"
                if kind == "review":
                    item_cat = CATEGORIES.index(source)
            t_text.append(maker.text(user, source, kind))
            t_user.append(u)
            t_ts.append(ts[j])
            t_lang.append(lg)
            t_item.append(None if item_cat is None else items[item_cat, int(rnd.random() ** 2.2 * n_items)])

    texts_uid = user_ids[np.asarray(t_user, dtype=np.int64)] if t_user else np.array([], dtype=object)
    texts_ts = _iso(np.asarray(t_ts, dtype=np.int64)) if t_ts else np.array([], dtype=object)
    n_t = len(t_text)

    # ---- dirty texts: exact, balanced number per kind ---------------------------------------
    pii: list[str] = []
    dirty_texts = {k: 0 for k in TEXT_DIRTY_KINDS}
    k_dirty = int(round(rate * n_t))
    if k_dirty:
        rows = np.sort(rng.choice(n_t, size=k_dirty, replace=False))
        kinds = rng.permutation(np.arange(k_dirty) % len(TEXT_DIRTY_KINDS))
        for row, kind_i in zip(rows.tolist(), kinds.tolist()):
            kind = TEXT_DIRTY_KINDS[kind_i]
            dirty_texts[kind] += 1
            if kind == "null_user_id":
                texts_uid[row] = None
            elif kind == "empty_user_id":
                texts_uid[row] = ""
            elif kind == "bad_ts":
                texts_ts[row] = rnd.choice(BAD_TS)
            else:
                t_text[row] = _dirty_text(kind, t_text[row], t_lang[row], rnd, pii)

    texts = pd.DataFrame({"user_id": texts_uid, "text": pd.Series(t_text, dtype=object),
                          "ts": texts_ts, "item_id": pd.Series(t_item, dtype=object),
                          "lang": pd.Series(t_lang, dtype=object)}, columns=list(TEXT_COLUMNS))

    # ---- events (vectorised) --------------------------------------------------------------------
    e_user = np.repeat(np.arange(n), n_events)
    m = e_user.size
    eg = group[e_user]
    own_share = np.clip(rng.normal(OWN_CATEGORY_SHARE, 0.07, n), 0.5, 0.88)
    second = (group + 1 + rng.integers(0, len(CATEGORIES) - 1, n)) % len(CATEGORIES)
    is_noise = eg == len(GROUPS)
    own = (rng.random(m) < own_share[e_user]) & ~is_noise
    r7 = rng.integers(0, len(CATEGORIES) - 1, m)
    other = np.where(r7 >= eg, r7 + 1, r7)  # uniform over the 7 other categories
    other = np.where(rng.random(m) < 0.4, second[e_user], other)
    cat = np.where(own, eg, other)
    cat = np.where(is_noise, rng.integers(0, len(CATEGORIES), m), cat)
    item_idx = _popular_index(rng.random(m), n_items)
    item_ids = items[cat, item_idx]
    mix = np.cumsum(np.array([EVENT_MIX[g] for g in ALL_GROUPS]), axis=1)
    mix[:, -1] = 1.0
    etype_i = (rng.random(m)[:, None] >= mix[eg]).sum(axis=1)
    etype = np.asarray(EVENT_TYPES, dtype=object)[etype_i]
    user_bias = rng.normal(0.0, 0.35, n)
    means = np.array([RATING_MEAN[g] for g in ALL_GROUPS])
    rating = np.clip(np.rint(rng.normal(means[eg] + user_bias[e_user], 0.9)), 1, 5)
    rating = np.where(is_noise, rng.integers(1, 6, m), rating)
    rating = np.where(etype_i == EVENT_TYPES.index("rating"), rating, np.nan)
    ets = base_ts + win_start[e_user] + (rng.random(m) * win_len[e_user]).astype(np.int64)
    order = np.lexsort((ets, e_user))
    e_user, item_ids, etype, rating, cat, ets = (e_user[order], item_ids[order], etype[order], rating[order],
                                                 cat[order], ets[order])
    events_uid = user_ids[e_user]
    events_ts = _iso(ets) if m else np.array([], dtype=object)

    dirty_events = {k: 0 for k in EVENT_DIRTY_KINDS}
    k_dirty = int(round(rate * m))
    if k_dirty:
        rows = np.sort(rng.choice(m, size=k_dirty, replace=False))
        kinds = rng.permutation(np.arange(k_dirty) % len(EVENT_DIRTY_KINDS))
        for kind_i, kind in enumerate(EVENT_DIRTY_KINDS):
            sel = rows[kinds == kind_i]
            dirty_events[kind] = int(sel.size)
            if kind == "rating_out_of_range":
                etype[sel] = "rating"
                rating[sel] = np.asarray(BAD_RATINGS)[rng.integers(0, len(BAD_RATINGS), sel.size)]
            elif kind == "unknown_event_type":
                etype[sel] = np.asarray(UNKNOWN_EVENT_TYPES, dtype=object)[
                    rng.integers(0, len(UNKNOWN_EVENT_TYPES), sel.size)]
                rating[sel] = np.nan
            elif kind == "null_user_id":
                events_uid[sel] = None
            elif kind == "empty_user_id":
                events_uid[sel] = ""
            elif kind == "bad_ts":
                events_ts[sel] = np.asarray(BAD_TS, dtype=object)[rng.integers(0, len(BAD_TS), sel.size)]

    events = pd.DataFrame({
        "user_id": events_uid, "item_id": item_ids, "event_type": etype,
        "rating": pd.array(rating, dtype="Int64"),
        "category": np.asarray(CATEGORIES, dtype=object)[cat], "ts": events_ts,
    }, columns=list(EVENT_COLUMNS))

    labels = pd.DataFrame({"user_id": user_ids, "group": np.asarray(ALL_GROUPS, dtype=object)[group],
                           "lang": np.asarray(LANGS, dtype=object)[lang]}, columns=list(LABEL_COLUMNS))

    # ---- counters ---------------------------------------------------------------------------------
    stats = {
        "users": n, "texts": n_t, "events": m,
        "users_without_events": int(no_events.sum()), "users_without_texts": int(no_texts.sum()),
        "dirty_texts": dirty_texts, "dirty_events": dirty_events,
        "by_group_lang": {},
    }
    t_counts = np.bincount(np.asarray(t_user, dtype=np.int64), minlength=n) if t_user else np.zeros(n, int)
    for gi, g in enumerate(ALL_GROUPS):
        for li, lg in enumerate(LANGS):
            sel = (group == gi) & (lang == li)
            stats["by_group_lang"][f"{g}/{lg}"] = {"users": int(sel.sum()), "texts": int(t_counts[sel].sum()),
                                                  "events": int(n_events[sel].sum())}
    return {"block": block, "texts": texts, "events": events, "labels": labels, "pii": pii, "stats": stats}


def _block_job(args):
    return generate_block(*args)


# --------------------------------------------------------------------------------------------
# Writers
# --------------------------------------------------------------------------------------------
TEXT_SCHEMA = pa.schema([(c, pa.string()) for c in TEXT_COLUMNS])
EVENT_SCHEMA = pa.schema([("user_id", pa.string()), ("item_id", pa.string()), ("event_type", pa.string()),
                          ("rating", pa.int32()), ("category", pa.string()), ("ts", pa.string())])


class _Sink:
    """Streams blocks of one table into `<out>/<name>.<fmt>` (a file, or a directory of parts)."""

    def __init__(self, out: Path, name: str, fmt: str, schema: pa.Schema, parts: bool):
        self.fmt, self.schema, self.parts = fmt, schema, parts
        self.path = out / f"{name}.{fmt}"
        self.n = 0
        self._writer = None
        self._fh = None
        if parts:
            self.path.mkdir(parents=True)

    def _target(self) -> Path:
        return self.path / f"part-{self.n:05d}.{self.fmt}" if self.parts else self.path

    def write(self, df: pd.DataFrame) -> None:
        if self.fmt == "csv":
            if self.parts:
                with open(self._target(), "w", encoding="utf-8", newline="") as fh:
                    df.to_csv(fh, index=False, lineterminator="\n")
            else:
                if self._fh is None:
                    self._fh = open(self.path, "w", encoding="utf-8", newline="")
                df.to_csv(self._fh, index=False, header=self.n == 0, lineterminator="\n")
        elif self.fmt == "json":
            cols = [df[c].astype(object).where(df[c].notna(), None).tolist() for c in df.columns]
            names = list(df.columns)
            lines = "".join(json.dumps(dict(zip(names, row)), ensure_ascii=False) + "\n" for row in zip(*cols))
            if self.parts:
                with open(self._target(), "w", encoding="utf-8", newline="") as fh:
                    fh.write(lines)
            else:
                if self._fh is None:
                    self._fh = open(self.path, "w", encoding="utf-8", newline="")
                self._fh.write(lines)
        else:
            table = pa.Table.from_pandas(df, schema=self.schema, preserve_index=False).replace_schema_metadata(None)
            if self.parts:
                pq.write_table(table, self._target(), compression="snappy")
            else:
                if self._writer is None:
                    self._writer = pq.ParquetWriter(self.path, self.schema, compression="snappy")
                self._writer.write_table(table)
        self.n += 1

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
        if self._writer is not None:
            self._writer.close()


def _remove_previous(out: Path) -> None:
    """Remove outputs of an earlier run (only the generator's own file names)."""
    for name in ("texts", "events"):
        for fmt in ("csv", "parquet", "json"):
            p = out / f"{name}.{fmt}"
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------
def _range(value: str) -> tuple[int, int]:
    try:
        lo, hi = (int(x) for x in value.split("-"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN-MAX, got {value!r}") from None
    if not 0 < lo <= hi:
        raise argparse.ArgumentTypeError(f"need 0 < MIN <= MAX, got {value!r}")
    return lo, hi


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="data/sample", help="output directory (default data/sample)")
    p.add_argument("--users", type=int, default=660, help="number of users (default 660)")
    p.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    p.add_argument("--format", choices=("csv", "parquet", "json"), default="csv",
                   help="format of texts/events (default csv; json = JSON Lines)")
    p.add_argument("--texts-per-user", type=_range, default=(5, 30), metavar="MIN-MAX", help="default 5-30")
    p.add_argument("--events-per-user", type=_range, default=(5, 60), metavar="MIN-MAX", help="default 5-60")
    p.add_argument("--dirty-rate", type=float, default=0.03, help="share of dirty rows per table (default 0.03)")
    p.add_argument("--chunk-users", type=int, default=10000,
                   help="users per generated block (default 10000; changing it changes the data)")
    p.add_argument("--workers", type=int, default=1, help="processes generating blocks (output is identical)")
    p.add_argument("--part-files", action="store_true",
                   help="write texts.<fmt>/ and events.<fmt>/ as directories with one part file per block")
    p.add_argument("--quiet", action="store_true")
    return p


def _merge_stats(total: dict, s: dict) -> None:
    for key in ("users", "texts", "events", "users_without_events", "users_without_texts"):
        total[key] = total.get(key, 0) + s[key]
    for key in ("dirty_texts", "dirty_events", "by_group_lang"):
        dst = total.setdefault(key, {})
        for k, v in s[key].items():
            if isinstance(v, dict):
                d = dst.setdefault(k, {})
                for kk, vv in v.items():
                    d[kk] = d.get(kk, 0) + vv
            else:
                dst[k] = dst.get(k, 0) + v


def generate(out: str | os.PathLike, users: int = 660, seed: int = 42, fmt: str = "csv",
             texts_per_user: tuple[int, int] = (5, 30), events_per_user: tuple[int, int] = (5, 60),
             dirty_rate: float = 0.03, chunk_users: int = 10000, workers: int = 1,
             part_files: bool = False, quiet: bool = True) -> dict:
    """Generate the data set into `out`; returns the statistics also written to stats.json."""
    if users < 1:
        raise ValueError("--users must be >= 1")
    if not 0 <= dirty_rate < 1:
        raise ValueError("--dirty-rate must be in [0, 1)")
    if chunk_users < 1:
        raise ValueError("--chunk-users must be >= 1")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _remove_previous(out)
    params = {"seed": seed, "texts_per_user": tuple(texts_per_user), "events_per_user": tuple(events_per_user),
              "dirty_rate": dirty_rate, "n_items": max(300, math.ceil(users / 20))}
    jobs = [(b, s, min(chunk_users, users - s), params) for b, s in enumerate(range(0, users, chunk_users))]

    texts_sink = _Sink(out, "texts", fmt, TEXT_SCHEMA, part_files)
    events_sink = _Sink(out, "events", fmt, EVENT_SCHEMA, part_files)
    stats: dict = {}
    with open(out / "labels.csv", "w", encoding="utf-8", newline="") as labels_fh, \
            open(out / "planted_pii.txt", "w", encoding="utf-8", newline="") as pii_fh:

        def consume(result):
            texts_sink.write(result["texts"])
            events_sink.write(result["events"])
            result["labels"].to_csv(labels_fh, index=False, header=result["block"] == 0, lineterminator="\n")
            pii_fh.write("".join(p + "\n" for p in result["pii"]))
            _merge_stats(stats, result["stats"])
            if not quiet:
                print(f"block {result['block'] + 1}/{len(jobs)}: {stats['users']} users, {stats['texts']} texts, "
                      f"{stats['events']} events", file=sys.stderr, flush=True)

        try:
            if workers <= 1 or len(jobs) == 1:
                for job in jobs:
                    consume(generate_block(*job))
            else:
                with ProcessPoolExecutor(max_workers=workers) as pool:
                    pending = []
                    it = iter(jobs)
                    for job in it:  # keep at most 2 x workers blocks in flight (bounded memory)
                        pending.append(pool.submit(_block_job, job))
                        if len(pending) >= 2 * workers:
                            consume(pending.pop(0).result())
                    for fut in pending:
                        consume(fut.result())
        finally:
            texts_sink.close()
            events_sink.close()

    stats["planted_pii"] = sum(v for k, v in stats["dirty_texts"].items() if k.startswith("pii_"))
    stats["params"] = {"users": users, "seed": seed, "format": fmt,
                       "texts_per_user": f"{texts_per_user[0]}-{texts_per_user[1]}",
                       "events_per_user": f"{events_per_user[0]}-{events_per_user[1]}",
                       "dirty_rate": dirty_rate, "chunk_users": chunk_users, "part_files": part_files,
                       "items_per_category": params["n_items"]}
    with open(out / "stats.json", "w", encoding="utf-8", newline="") as fh:
        json.dump(stats, fh, indent=2, ensure_ascii=False, sort_keys=True)
        fh.write("\n")
    with open(out / "README.md", "w", encoding="utf-8", newline="") as fh:
        fh.write(render_readme(stats))
    return stats


def _command(params: dict) -> str:
    cmd = (f"python data/generate_sample.py --out <dir> --users {params['users']} --seed {params['seed']} "
           f"--format {params['format']} --texts-per-user {params['texts_per_user']} "
           f"--events-per-user {params['events_per_user']} --dirty-rate {params['dirty_rate']} "
           f"--chunk-users {params['chunk_users']}")
    return cmd + (" --part-files" if params["part_files"] else "")


def render_readme(stats: dict) -> str:
    p = stats["params"]
    fmt = p["format"]
    bgl = stats["by_group_lang"]
    lines = [
        "# SegLake sample data",
        "",
        "Synthetic users of a recommender system: what they write (`texts`) and what they do (`events`).",
        "Generated by `data/generate_sample.py`; do not edit by hand. Every number below was computed by",
        "the generator for this very data set.",
        "",
        "The committed sample `data/sample` is produced, from the repository root, by the default command",
        "(also `make sample`):",
        "",
        "```",
        DEFAULT_COMMAND,
        "```",
        "",
        "This data set was generated with these parameters (`<dir>` is the output directory):",
        "",
        "```",
        _command(p),
        "```",
        "",
        "Same seed and parameters give byte-identical files (with the same numpy/pandas/pyarrow versions).",
        "",
        "## Files",
        "",
        f"| file | rows | columns |",
        "|---|---:|---|",
        f"| `texts.{fmt}` | {stats['texts']} | user_id, text, ts, item_id, lang |",
        f"| `events.{fmt}` | {stats['events']} | user_id, item_id, event_type, rating, category, ts |",
        f"| `labels.csv` | {stats['users']} | user_id, group, lang (ground truth, **not a job input**) |",
        f"| `planted_pii.txt` | {stats['planted_pii']} | every planted e-mail / phone / URL-with-query, one a line |",
        "| `stats.json` | | the numbers of this README, machine-readable |",
        "",
        "Format: " + {
            "csv": "CSV with a header row, UTF-8, `\\n` line ends, pandas' standard (minimal) quoting. "
                   "Null and empty strings are both written as an empty field.",
            "parquet": "Parquet (snappy), all columns strings except `rating` (int32, nullable).",
            "json": "JSON Lines (one object a line, UTF-8); nulls are JSON null.",
        }[fmt],
        "Texts contain no newlines and no double-quote characters.",
        "",
        "Columns:",
        "",
        "* `user_id`: `u` + 7 digits (`u0000042`); null or empty on some dirty rows.",
        "* `text`: a review, comment or post, about 10-40 words (English) or 12-80 characters (Chinese).",
        "* `ts`: ISO-8601 UTC string, e.g. `2026-03-04T12:33:10Z` (2025-06-01 .. 2026-03-31); "
        "unparsable on dirty rows.",
        "* `item_id` (texts): the reviewed item, e.g. `fashion-0012`; null for posts and many generic comments.",
        "* `lang`: `en` or `zh` (a user writes in one language).",
        "* `item_id` (events): `<category>-<number>`; popular items (low numbers) are much more frequent. "
        f"{p['items_per_category']} items per category.",
        "* `event_type`: view, click, cart, purchase, rating (other values on dirty rows).",
        "* `rating`: 1-5 on `rating` events only, null otherwise (0, 7, -1, 6 on dirty rows).",
        "* `category`: one of " + ", ".join(CATEGORIES) + ".",
        "",
        "## Users and groups",
        "",
        "Six planted interest groups plus `noise` users who write only generic comments (delivery, price,",
        "thanks) and behave randomly. Group users write mostly on-topic texts, about 8-22% generic",
        "comments and up to 8% texts about another group's topic. About 70% of a group user's events",
        "fall in the group's own category, the rest in other categories (with a per-user secondary",
        "interest).",
        "",
        "| group | users en | users zh | texts | events | event mix view/click/cart/purchase/rating | mean rating |",
        "|---|---:|---:|---:|---:|---|---:|",
    ]
    for g in ALL_GROUPS:
        en, zh = bgl[f"{g}/en"], bgl[f"{g}/zh"]
        mix = "/".join(f"{x:.2f}" for x in EVENT_MIX[g])
        mean = "uniform 1-5" if g == NOISE else f"{RATING_MEAN[g]:.1f}"
        lines.append(f"| {g} | {en['users']} | {zh['users']} | {en['texts'] + zh['texts']} | "
                     f"{en['events'] + zh['events']} | {mix} | {mean} |")
    tot_en = sum(bgl[f"{g}/en"]["users"] for g in ALL_GROUPS)
    tot_zh = sum(bgl[f"{g}/zh"]["users"] for g in ALL_GROUPS)
    lines += [
        f"| **all** | {tot_en} | {tot_zh} | {stats['texts']} | {stats['events']} | | |",
        "",
        f"Edge users: {stats['users_without_events']} users have texts but no events; "
        f"{stats['users_without_texts']} users have events but no texts. Texts per user: "
        f"{p['texts_per_user']}, events per user: {p['events_per_user']} (skewed towards the low end).",
        "Dirty rows with a null/empty user_id are orphaned, so a few users show fewer texts or events.",
        "",
        f"## Dirty rows (rate {p['dirty_rate']}, exact counts)",
        "",
        "Each dirty row has exactly one defect. Text rows:",
        "",
        "| kind | rows | what |",
        "|---|---:|---|",
    ]
    for k in TEXT_DIRTY_KINDS:
        lines.append(f"| {k} | {stats['dirty_texts'][k]} | {DIRTY_DESCRIPTIONS[k]} |")
    lines += [
        f"| **total** | {sum(stats['dirty_texts'].values())} | |",
        "",
        "After cleaning (strip HTML, unescape entities, drop URLs, trim), `empty_text`, `whitespace_only`,",
        "`html_only` and `url_only` texts are empty. The `pii_*` rows are otherwise good texts; none of the",
        "strings in `planted_pii.txt` should appear in any job output.",
        "",
        "Event rows:",
        "",
        "| kind | rows | what |",
        "|---|---:|---|",
    ]
    for k in EVENT_DIRTY_KINDS:
        lines.append(f"| {k} | {stats['dirty_events'][k]} | {DIRTY_DESCRIPTIONS[k]} |")
    lines += [
        f"| **total** | {sum(stats['dirty_events'].values())} | |",
        "",
        "## Larger data sets",
        "",
        "See the docstring of `data/generate_sample.py`, e.g.",
        "`python data/generate_sample.py --out /data/seglake-1m --users 1000000 --format parquet --workers 8`.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        stats = generate(args.out, users=args.users, seed=args.seed, fmt=args.format,
                         texts_per_user=args.texts_per_user, events_per_user=args.events_per_user,
                         dirty_rate=args.dirty_rate, chunk_users=args.chunk_users, workers=args.workers,
                         part_files=args.part_files, quiet=args.quiet)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not args.quiet:
        print(f"wrote {args.out}: {stats['users']} users, {stats['texts']} texts, {stats['events']} events, "
              f"{stats['planted_pii']} planted PII strings", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
