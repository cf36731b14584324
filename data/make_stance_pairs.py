"""Generate counterfactual minimal pairs for financial stance (training) and a separate challenge set.

A classifier trained on news learns that finance words mean news, but not always WHICH WAY the numbers moved:
"Pretax profit was EUR 7.1 mn, against EUR 9.3 mn a year earlier." gets called positive. Minimal pairs fix the
shortcut: the same sentence twice, with one thing changed that turns the news round (the two figures swapped, "down
from" for "up from", a loss for a profit, "narrowed" for "widened", costs for sales), and the label following the
change. A model can only tell the two sides apart by reading the direction.

Writes (deterministic, fixed seed; both files are committed with this script):
  data/financial_stance_pairs.csv   TRAINING pairs: columns text,label,split,source,pair_id,kind
                                    (split is always "train", source always "generated")
  data/stance_challenge.csv         the CHALLENGE set, for evaluation only: columns pair_id,sentence,label,kind;
                                    a pair counts as right only when both of its sides are right (pair accuracy)

The challenge set is built from its own lexicon and templates (CHALLENGE_LEX, CHALLENGE_TEMPLATES below): other
verbs, metric names, currencies and units, period phrases, company names and sentence shapes than the training
lexicon and templates (TRAIN_LEX, TRAIN_TEMPLATES). Only the rendering code and the labelling rule are shared.

Labelling guideline (data/README.md): positive = good news for the company's shareholders, negative = bad news,
neutral = no direction. For a figure compared with an earlier one, the label follows the change: a metric that is
good when it grows (sales, profit, margins) is positive when it rose; a metric that is bad when it grows (costs,
debt, a loss) is positive when it fell. A level with no comparison, or an unchanged figure, is neutral.

Run:  python data/make_stance_pairs.py            (write both files)
      python data/make_stance_pairs.py --check    (fail if the files on disk are not what this script writes)
"""
import argparse
import csv
import io
import os
import random
import sys
from pathlib import Path

# ----------------------------------------------------------------------------------------------------------------
# config
HERE = Path(globals().get("__file__", "data/make_stance_pairs.py")).resolve().parent
PAIRS_CSV = HERE / "financial_stance_pairs.csv"
CHALLENGE_CSV = HERE / "stance_challenge.csv"
SEED = 20261130
# pairs of each kind: (training, challenge). 270 training pairs = 540 rows; 150 challenge pairs = 300 rows.
COUNTS = {
    "number_swap": (80, 50),    # the same sentence, the two figures swapped
    "verb_flip": (55, 40),      # rose/fell, up from/down from, increased/decreased, with consistent figures
    "loss_profit": (30, 20),    # a loss against a profit, and the other way round
    "narrow_widen": (25, 15),   # a loss that narrowed against one that widened
    "cost_vs_sales": (45, 25),  # the same rise (or fall) of a cost and of a sales/profit metric
    "level_neutral": (35, 0),   # a change against the bare level or an unchanged figure (neutral); training only
}

# ----------------------------------------------------------------------------------------------------------------
# The labelling rule (shared by both sets, and what tests/test_data_stance_pairs.py checks on hand-written cases)
GOOD, BAD = "good", "bad"   # metric polarity: is a bigger value good or bad news for shareholders?


def change_label(polarity, new, old):
    """The label of "METRIC was NEW, compared with OLD": the direction of the change, read through the polarity."""
    if new == old:
        return "neutral"
    up = new > old
    return "positive" if up == (polarity == GOOD) else "negative"


def swing_label(new_kind, old_kind):
    """The label of "a NEW_KIND (profit/loss) of X, compared with an OLD_KIND of Y"."""
    if new_kind == old_kind:
        raise ValueError("a swing needs a profit and a loss")
    return "positive" if new_kind == "profit" else "negative"


# ----------------------------------------------------------------------------------------------------------------
# TRAINING lexicon and templates
# Metrics: (name, plural?, needs "the" when it opens the subject?). Loss metrics pair with their profit names.
TRAIN_LEX = {
    "good_money": [("net sales", True, False), ("operating profit", False, False), ("pretax profit", False, False),
                   ("net profit", False, False), ("EBITDA", False, False), ("order intake", False, False),
                   ("revenue", False, False), ("order backlog", False, True),
                   ("comparable operating profit", False, False),
                   ("cash flow from operating activities", False, False), ("profit after tax", False, False),
                   ("sales revenue", False, False)],
    "good_share": [("earnings per share", True, False), ("diluted earnings per share", True, False)],
    "bad_money": [("operating expenses", True, False), ("net debt", False, False), ("raw material costs", True, False),
                  ("credit losses", True, False), ("personnel expenses", True, False), ("financing costs", True, False),
                  ("fixed costs", True, False), ("interest expenses", True, False)],
    "good_pct": [("operating margin", False, False), ("gross margin", False, False), ("return on equity", False, False),
                 ("EBITDA margin", False, False), ("return on capital employed", False, False),
                 ("equity ratio", False, True)],
    "bad_pct": [("cost-to-income ratio", False, True), ("gearing", False, False),
                ("share of non-performing loans", False, True)],
    "loss_profit": [("operating loss", "operating profit"), ("net loss", "net profit"),
                    ("pretax loss", "pretax profit"),
                    ("loss for the period", "profit for the period"), ("loss before taxes", "profit before taxes")],
    "money": ["EUR {x} mn", "EUR {x} million", "USD {x} million", "SEK {x} mn", "EUR {x}mn"],
    "share_money": ["EUR {x}", "USD {x}", "SEK {x}"],
    "pct": ["{x} %", "{x} percent", "{x}%"],
    "period": ["a year earlier", "a year ago", "in the corresponding period of 2025", "in the same quarter last year",
               "in 2025", "in the same period a year earlier", "in January-June 2025", "in the previous year"],
    "when": ["in the third quarter", "in January-September", "in the review period", "in 2026",
             "in the second quarter", "for the full year"],
    "companies": ["Korvala", "Brenmark Tools", "Ylitalo Foods", "Saarnio Logistics", "Hedvik Steel", "Lanterna Media",
                  "Pohjanmaa Paper", "Stenfors Bank", "Arvola Systems", "Mikkelby Marine", "Rautalahti Energy",
                  "Norvane Pharma", "Kestrel Retail", "Virtala Chemicals", "Osterby Telecom", "Talvio Insurance"],
    "up": ["rose", "increased", "grew"], "down": ["fell", "decreased", "declined"],
    "pct_up": ["improved", "rose"], "pct_down": ["weakened", "fell"],
    "vs": ["from a year earlier", "year on year", "from the previous year",
           "compared with the corresponding period of 2025"],
}
TRAIN_TEMPLATES = {
    # {S} the subject (metric, with an intro), {be} was/were, {new}/{old} the two figures, {P} a period phrase
    "number_swap": ["{S} {be} {new}, compared with {old} {P}.",
                    "{S} {be} {new}, against {old} {P}.",
                    "{S} {be} {new}, compared to {old} {P}.",
                    "{S} amounted to {new}, compared with {old} {P}.",
                    "{S} totalled {new} ({old}).",
                    "{S} {be} {new} ({old}) {W}.",
                    "{S} came to {new}, against {old} {P}.",
                    "{S} {be} {new} {W}, compared with {old} {P}.",
                    "{S} {be} {new} {W} ({old} {P}).",
                    "{C} reported {s} of {new}, compared with {old} {P}.",
                    "{S}: {new}, compared with {old} {P}.",
                    "{S} {be} {new}. {P_cap}, {it} {be} {old}.",
                    "{S} totalled {new} {W}, compared with {old} {P}.",
                    "{S} {be} {new}, as against {old} {P}.",
                    "From {old} {P}, {s} moved to {new} {W}."],   # the old figure first
    "verb_flip": ["{S} {verb} to {new} from {old} {P}.",
                  "{S} amounted to {new}, {updown} from {old} {P}.",
                  "{S} {be} {new}, {updown} from {old} {P}.",
                  "{S} {verb} by {x} percent to {new}.",
                  "{S} {verb} by {x} percent {V}.",
                  "{S} {verb} {x} percent {W}, to {new}."],
    "loss_profit": ["{An_new} came to {new}, compared with {an_old} of {old} {P}.",
                    "{C} swung to {an_new} of {new} from {an_old} of {old} {P}.",
                    "{C} reported {an_new} of {new} {W}, against {an_old} of {old} {P}.",
                    "{An_new} {W} was {new}, compared with {an_old} of {old} {P}."],
    "narrow_widen": ["{S} {nw} to {new} from {old} {P}.",
                     "{S} {nw} to {new} {W}, from {old} {P}.",
                     "{C} said its {m} had {nw_pp} to {new} from {old}."],
    "cost_vs_sales": ["{S} {verb} {x} percent {W}.",
                      "{S} {verb} by {x} percent {V}.",
                      "{W_cap}, {s} {verb} by {x} percent.",
                      "{C} said {s} {verb} {x} percent {W}."],
    # level_neutral: the directional side uses the verb_flip/number_swap shapes above, the neutral side one of these
    "level_neutral": ["{S} {be} {new} {W}.",
                      "{S} {be} {new}, unchanged from a year earlier.",
                      "{S} amounted to {new} {W}.",
                      "{S} {be} {new}, unchanged year on year.",
                      "{S} {be} {new}, the same level as a year earlier."],
}

# ----------------------------------------------------------------------------------------------------------------
# CHALLENGE lexicon and templates: NOTHING here may appear in the training lexicon above (the test checks the
# skeletons). Other metric names, currencies and units, verbs, periods, companies and sentence shapes.
CHALLENGE_LEX = {
    "good_money": [("turnover", False, False), ("operating income", False, False), ("adjusted EBITA", False, False),
                   ("underlying earnings", True, False), ("free cash flow", False, False), ("new orders", True, False),
                   ("group sales", True, False), ("recurring revenue", False, False), ("net income", False, False),
                   ("gross profit", False, False)],
    "good_share": [("basic EPS", False, False), ("adjusted EPS", False, False)],
    "bad_money": [("overheads", True, False), ("impairment charges", True, False), ("borrowings", True, False),
                  ("warranty provisions", True, False), ("pension deficit", False, True),
                  ("loan-loss provisions", True, False), ("energy bills", True, False), ("freight costs", True, False)],
    "good_pct": [("EBIT margin", False, False), ("net interest margin", False, False),
                 ("return on assets", False, False),
                 ("occupancy rate", False, True), ("load factor", False, True), ("capacity utilisation", False, False)],
    "bad_pct": [("churn rate", False, True), ("combined ratio", False, True), ("default rate", False, True),
                ("scrap rate", False, True)],
    "loss_profit": [("underlying loss", "underlying profit"), ("adjusted net loss", "adjusted net income"),
                    ("quarterly loss", "quarterly profit"), ("EBIT loss", "positive EBIT")],
    "money": ["GBP {x}m", "£{x} million", "NOK {x} bn", "CHF {x} mln", "${x} million", "DKK {x}m", "JPY {x} bn"],
    "share_money": ["GBP {x}", "${x}", "CHF {x}"],
    "pct": ["{x} per cent", "{x} pct"],
    "period": ["twelve months before", "in the prior-year quarter", "in the comparable half of last year",
               "in fiscal 2024/25", "one year previously", "at the same point last year"],
    "when": ["during the six months to June", "over the quarter", "in the first half", "in fiscal 2025/26",
             "in the three months to March"],
    "companies": ["Quillon Aerospace", "Bramwell & Finch", "Sorrento Capital", "Takamura Robotics", "Holloway Rail",
                  "Inverlea Distillers", "Peregrine Telecoms", "Montclair Hotels", "Eastgate Builders",
                  "Caradoc Mining", "Lindqvist Shipping", "Azura Solar"],
    "up": ["jumped", "advanced", "climbed"], "down": ["slid", "dropped", "slipped"],
    "pct_up": ["jumped", "advanced", "climbed"], "pct_down": ["slid", "dropped", "slipped"],
    "vs": ["year over year", "on the prior year", "against the prior-year quarter"],
}
CHALLENGE_TEMPLATES = {
    "number_swap": ["{S} reached {new} versus {old} {P}.",
                    "{W_cap}, {s} stood at {new}; {P} the figure was {old}.",
                    "{S_for}: {new} (prior year: {old}).",
                    "{C} booked {s} of {new}, after {old} {P}.",
                    "Set against {old} {P}, {s} came in at {new}.",
                    "{S} of {new} {W} followed {old} {P}."],
    "verb_flip": ["{S} {verb} to {new}, from {old} {P}, {C} said.",
                  "{C} said {s} had {verb_pp} to {new} {W}, from {old}.",
                  "{W_cap}, {s} {verb} {x} per cent.",
                  "{S} {verb} {x} pct on the year to {new}.",
                  "{S}, at {new}, {be} {x} per cent {hilo} than {P}.",
                  "{S} {verb} {x} per cent {V}."],
    "loss_profit": ["{C} posted {an_new} of {new} {W}, after {an_old} of {old} {P}.",
                    "{W_cap}, {C} made {an_new} of {new}; {P} it had {an_old} of {old}.",
                    "{C}'s result: {an_new} of {new} versus {an_old} of {old} {P}."],
    "narrow_widen": ["{C} said its {m} had {nw_pp} to {new} {W}, from {old} {P}.",
                     "{S} {nw} to {new} versus {old} {P}."],
    "cost_vs_sales": ["{W_cap}, {s} went {updown_word} by {x} per cent, {C} said.",
                      "{C} said {s} {be} {x} pct {hilo} than {P}.",
                      "{S} {verb} {x} per cent {V}, {C} reported."],
}
# DEV number-swap shapes for companions/05_shortcut.py: no training pair and no challenge pair uses them, so the
# companion can choose a training recipe on them (and on val) without ever looking at the challenge set
DEV_NUMBER_SWAP_TEMPLATES = ["{S} {W}: {new}; {P}: {old}.",
                             "{S} {be} {new}, in comparison with {old} {P}.",
                             "{C} put its {m} at {new}, compared with {old} {P}."]
# verbs for the challenge's loss metrics and percentages (training uses narrowed/widened, improved/weakened)
CHALLENGE_NW = {"smaller": ("shrank", "shrunk"), "bigger": ("deepened", "deepened")}
TRAIN_NW = {"smaller": ("narrowed", "narrowed"), "bigger": ("widened", "widened")}
PARTICIPLES = {"jumped": "jumped", "advanced": "advanced", "climbed": "climbed", "slid": "slid", "dropped": "dropped",
               "slipped": "slipped"}


# ----------------------------------------------------------------------------------------------------------------
# Rendering
# realistic ranges (low, high) of the percentages that do not live between 3 and 28 percent
PCT_RANGES = {"cost-to-income ratio": (38, 72), "gearing": (25, 110), "equity ratio": (25, 60),
              "share of non-performing loans": (1.2, 6.5), "combined ratio": (86, 109), "occupancy rate": (55, 93),
              "load factor": (66, 91), "capacity utilisation": (58, 94), "churn rate": (0.8, 4.5),
              "default rate": (0.6, 3.8), "scrap rate": (1.1, 6.0)}


def figures(rng, scale, name=None):
    """Two different figures (bigger, smaller) as strings, for a money amount, a per-share amount or a percentage
    (a percentage named in PCT_RANGES stays in its realistic range)."""
    while True:
        if name in PCT_RANGES:
            low, high = PCT_RANGES[name]
            big = rng.uniform(low + 0.15 * (high - low), high)
            small = rng.uniform(low, big - 0.1 * (high - low))
            a, b = f"{big:.1f}", f"{small:.1f}"
        elif scale == "share":
            big = rng.uniform(0.15, 3.5)
            small = big * rng.uniform(0.45, 0.85)
            a, b = f"{big:.2f}", f"{small:.2f}"
        elif scale == "pct":
            big = rng.uniform(3.0, 28.0)
            small = big * rng.uniform(0.45, 0.88)
            a, b = f"{big:.1f}", f"{small:.1f}"
        else:
            big = rng.choice([rng.uniform(1.5, 20.0), rng.uniform(20.0, 400.0)])
            small = big * rng.uniform(0.45, 0.88)
            a, b = f"{big:.1f}", f"{small:.1f}"
        if a != b and float(b) > 0:
            return a, b


def money(rng, lex, scale, x):
    if scale == "pct":
        return rng.choice(lex["pct"]).format(x=x)
    return rng.choice(lex["share_money" if scale == "share" else "money"]).format(x=x)


def cap(text):
    return text[:1].upper() + text[1:]


def subject(rng, lex, metric, template):
    """(S: the capitalised subject, s: the subject inside a sentence, be: was/were) for a metric in a template, with
    a random intro: the bare metric, a company's, the group's, or a time phrase in front. A template that names the
    company ({C}) gets the bare metric; one with its own time phrase ({W}) gets no time phrase in front."""
    name, plural, needs_the = metric
    be = "were" if plural else "was"
    bare = f"the {name}" if needs_the else name
    choices = ["bare"] if "{C}" in template else ["bare", "company", "group"]
    if "{W" not in template and "{S}" in template:
        choices.append("when")
    choice = rng.choice(choices)
    if choice == "when":
        return f"{cap(rng.choice(lex['when']))}, {bare}", bare, be
    s = {"bare": bare, "company": f"{possessive(rng.choice(lex['companies']))} {name}",
         "group": f"the group's {name}" if lex is TRAIN_LEX else f"the company's {name}"}[choice]
    return cap(s), s, be


def possessive(name):
    return name + ("'" if name.endswith("s") else "'s")


def article(word):
    return ("an " if word[0].lower() in "aeiou" else "a ") + word


def metric_scale(group):
    return "pct" if group.endswith("_pct") else "share" if group == "good_share" else "money"


def fill(template, **slots):
    return " ".join(template.format(**slots).split())


def pick_metric(rng, lex, groups):
    group = rng.choice(groups)
    return group, rng.choice(lex[group])


def common_slots(rng, lex, metric, template):
    S, s, be = subject(rng, lex, metric, template)
    when = rng.choice(lex["when"])
    period = rng.choice(lex["period"])
    return {"S": S, "s": s, "be": be, "P": period, "P_cap": cap(period), "V": rng.choice(lex["vs"]), "W": when,
            "W_cap": cap(when), "C": rng.choice(lex["companies"]), "S_for": f"{cap(metric[0])} {when}",
            "it": "they" if metric[1] else "it", "m": metric[0]}


def polarity(group):
    return GOOD if group.startswith("good") else BAD


def gen_number_swap(rng, lex, templates):
    group, metric = pick_metric(rng, lex, ["good_money", "good_money", "good_share", "bad_money", "good_pct",
                                           "good_pct", "bad_pct"])
    scale = metric_scale(group)
    big, small = figures(rng, scale, metric[0])
    unit = rng.choice(lex["pct" if scale == "pct" else "share_money" if scale == "share" else "money"])
    template = rng.choice([t for t in templates["number_swap"] if scale != "pct" or "booked" not in t])
    slots = common_slots(rng, lex, metric, template)
    sides = []
    for new, old in ((big, small), (small, big)):   # the same words, the two figures swapped
        text = fill(template, new=unit.format(x=new), old=unit.format(x=old), **slots)
        sides.append((text, change_label(polarity(group), float(new), float(old))))
    return sides


def gen_verb_flip(rng, lex, templates):
    group, metric = pick_metric(rng, lex, ["good_money", "good_money", "bad_money", "good_pct", "good_share"])
    scale = metric_scale(group)
    big, small = figures(rng, scale, metric[0])
    unit = rng.choice(lex["pct" if scale == "pct" else "share_money" if scale == "share" else "money"])
    # a change in percent of a percentage ("the margin rose 12 percent") reads badly: percentages get the others
    template = rng.choice([t for t in templates["verb_flip"] if scale != "pct" or "{x}" not in t])
    slots = common_slots(rng, lex, metric, template)
    x_free = f"{rng.uniform(2.0, 45.0):.1f}"   # for shapes that give the change but no level
    up_verbs = lex["pct_up"] if scale == "pct" and lex is TRAIN_LEX else lex["up"]
    down_verbs = lex["pct_down"] if scale == "pct" and lex is TRAIN_LEX else lex["down"]
    k = rng.randrange(len(up_verbs))
    sides = []
    for up in (True, False):
        new, old = (big, small) if up else (small, big)
        verb = up_verbs[k] if up else down_verbs[k % len(down_verbs)]
        # the percent change that the two figures imply, when the shape states both
        x = f"{abs(float(new) / float(old) - 1) * 100:.1f}" if "{new}" in template else x_free
        text = fill(template, new=unit.format(x=new), old=unit.format(x=old), verb=verb,
                    verb_pp=PARTICIPLES.get(verb, verb), updown="up" if up else "down",
                    hilo="higher" if up else "lower", x=x, **slots)
        sides.append((text, change_label(polarity(group), float(new), float(old))))
    return sides


def gen_loss_profit(rng, lex, templates):
    loss, profit = rng.choice(lex["loss_profit"])
    big, small = figures(rng, "money")
    unit = rng.choice(lex["money"])
    a, b = (big, small) if rng.random() < 0.5 else (small, big)   # the size of the figures does not matter here
    template = rng.choice(templates["loss_profit"])
    slots = common_slots(rng, lex, (loss, False, False), template)
    sides = []
    for new_kind, old_kind in (("loss", "profit"), ("profit", "loss")):
        new_name, old_name = (loss, profit) if new_kind == "loss" else (profit, loss)
        an_new = new_name if new_name.startswith("positive") else article(new_name)
        an_old = old_name if old_name.startswith("positive") else article(old_name)
        text = fill(template, new=unit.format(x=a), old=unit.format(x=b), an_new=an_new, an_old=an_old,
                    An_new=cap(new_name), **slots)
        sides.append((text, swing_label(new_kind, old_kind)))
    return sides


def gen_narrow_widen(rng, lex, templates):
    loss, _ = rng.choice(lex["loss_profit"])
    metric = (loss, False, False)
    big, small = figures(rng, "money")
    unit = rng.choice(lex["money"])
    template = rng.choice(templates["narrow_widen"])
    slots = common_slots(rng, lex, metric, template)
    verbs = TRAIN_NW if lex is TRAIN_LEX else CHALLENGE_NW
    sides = []
    for smaller in (True, False):
        new, old = (small, big) if smaller else (big, small)
        nw, nw_pp = verbs["smaller" if smaller else "bigger"]
        text = fill(template, new=unit.format(x=new), old=unit.format(x=old), nw=nw, nw_pp=nw_pp, **slots)
        sides.append((text, change_label(BAD, float(new), float(old))))
    return sides


def gen_cost_vs_sales(rng, lex, templates):
    """The same change applied to a metric that is good when it grows and to one that is bad when it grows."""
    good = rng.choice(lex["good_money"])
    bad = rng.choice(lex["bad_money"])
    template = rng.choice(templates["cost_vs_sales"])
    up = rng.random() < 0.6
    k = rng.randrange(len(lex["up"]))
    shared = {"verb": lex["up"][k] if up else lex["down"][k], "x": f"{rng.uniform(2.0, 35.0):.1f}",
              "updown_word": "up" if up else "down", "hilo": "higher" if up else "lower"}
    slots = common_slots(rng, lex, good, template)   # the time, period and company phrases, shared by both sides
    sides = []
    for group, metric in (("good_money", good), ("bad_money", bad)):
        name = f"the {metric[0]}" if metric[2] else metric[0]   # the bare metric on both sides: only it differs
        slots.update(S=cap(name), s=name, be="were" if metric[1] else "was")
        text = fill(template, **shared, **slots)
        sides.append((text, change_label(polarity(group), 1.0 if up else 0.0, 0.5)))
    return sides


def gen_level_neutral(rng, lex, templates):
    """A change (positive or negative) against the same figure stated as a level or as unchanged (neutral)."""
    group, metric = pick_metric(rng, lex, ["good_money", "good_money", "bad_money", "good_pct"])
    scale = metric_scale(group)
    big, small = figures(rng, scale, metric[0])
    unit = rng.choice(lex["pct" if scale == "pct" else "money"])
    directional_template = rng.choice(templates["number_swap"][:4])
    neutral_template = rng.choice(templates["level_neutral"])
    slots = common_slots(rng, lex, metric, directional_template + neutral_template)
    new, old = (big, small) if rng.random() < 0.5 else (small, big)
    directional = fill(directional_template, new=unit.format(x=new), old=unit.format(x=old), **slots)
    neutral = fill(neutral_template, new=unit.format(x=new), **slots)
    return [(directional, change_label(polarity(group), float(new), float(old))), (neutral, "neutral")]


GENERATORS = {"number_swap": gen_number_swap, "verb_flip": gen_verb_flip, "loss_profit": gen_loss_profit,
              "narrow_widen": gen_narrow_widen, "cost_vs_sales": gen_cost_vs_sales,
              "level_neutral": gen_level_neutral}


def norm(text):
    """A sentence as compared for duplicates: lowercased, runs of white space as one space."""
    return " ".join(text.lower().split())


def distinct_pairs(make, n, seen, what):
    """n pairs from make() -> [((text, label), (text, label))]: both sides new (not in `seen`, which grows), the two
    sides different and differently labelled."""
    out = []
    for _ in range(100 * n + 100):
        if len(out) == n:
            return out
        sides = make()
        keys = [norm(t) for t, _ in sides]
        if len(set(keys)) == 2 and not seen & set(keys) and sides[0][1] != sides[1][1]:
            seen.update(keys)
            out.append(tuple(sides))
    raise RuntimeError(f"cannot make {n} distinct {what} pairs")


def generate(lex, templates, which, seed, prefix, avoid=()):
    """-> list of (pair_id, kind, text, label), two rows a pair; no sentence twice, none in `avoid`."""
    rng, seen, rows = random.Random(seed), {norm(t) for t in avoid}, []
    for kind, counts in COUNTS.items():
        for sides in distinct_pairs(lambda: GENERATORS[kind](rng, lex, templates), counts[which], seen, kind):
            pair_id = f"{prefix}{len(rows) // 2 + 1:03d}"
            rows += [(pair_id, kind, text, label) for text, label in sides]
    return rows


def number_swap_pairs(n, seed, templates=None, avoid=()):
    """n more number-swap pairs in the training lexicon -> [((text, label), (text, label))]: the training
    templates by default; no sentence twice, none in `avoid` (a set of sentences as norm() writes them)."""
    rng, shapes = random.Random(seed), {"number_swap": templates or TRAIN_TEMPLATES["number_swap"]}
    return distinct_pairs(lambda: gen_number_swap(rng, TRAIN_LEX, shapes), n, set(avoid), "number-swap")


def read_main_texts():
    path = HERE / "financial_stance.csv"
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return [r["text"] for r in csv.DictReader(f)]


def build():
    """-> (training CSV text, challenge CSV text)."""
    main_texts = read_main_texts()
    train = generate(TRAIN_LEX, TRAIN_TEMPLATES, 0, SEED, "g", avoid=main_texts)
    challenge = generate(CHALLENGE_LEX, CHALLENGE_TEMPLATES, 1, SEED + 1, "c",
                         avoid=main_texts + [t for _, _, t, _ in train])
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["text", "label", "split", "source", "pair_id", "kind"])
    w.writerows([text, label, "train", "generated", pair_id, kind] for pair_id, kind, text, label in train)
    train_text = buf.getvalue()
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    # "sentence" (not "text"): companions/05_evaluate.py recognises the challenge set by it and reports pair accuracy
    w.writerow(["pair_id", "sentence", "label", "kind"])
    w.writerows([pair_id, text, label, kind] for pair_id, kind, text, label in challenge)
    return train_text, buf.getvalue()


def write_atomic(path, text):
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the files on disk differ from a fresh build")
    args, _ = parser.parse_known_args()
    outputs = dict(zip((PAIRS_CSV, CHALLENGE_CSV), build()))
    for path, text in outputs.items():
        rows = text.count("\n") - 1
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                print(f"error: {path} is not what the generator writes; run: python data/make_stance_pairs.py",
                      file=sys.stderr)
                sys.exit(1)
            print(f"ok: {path.name} matches a fresh build ({rows} rows)")
        else:
            write_atomic(path, text)
            print(f"wrote {path} ({rows} rows, {rows // 2} pairs)")


if __name__ == "__main__":
    main()
