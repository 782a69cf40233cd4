"""Synthetic long-document retrieval tasks for training and evaluating the longctx model.

A *document* is a run of sentences joined by single spaces: facts about entities ("The passcode of
the blue lighthouse is 4821.") in several templates, relations between places ("The blue
lighthouse stands next to the red mill."), and filler sentences that name no entity and hold no
digit. Questions ask for one attribute of one entity; the document states that attribute of that
entity exactly once, next to near-miss distractors (the same attribute of an entity that shares its
colour or its landmark, or of the same entity a different attribute). Every template puts the
value after the entity and the attribute, so a causal model can bind them where the value is read.
Two-hop questions go through a relation: "What is the passcode of the place next to the blue
lighthouse?".

Prompt format (what the model is trained on and asked with; every piece is tokenized on its own
and the ids are concatenated, which for SentencePiece-style tokenizers that split on spaces equals
tokenizing the joined text):
    context = <s> + document
    query   = "Question: {question} Answer:"
    answer  = "{value}" + </s>
A training sequence is context + (query + answer) x k.

Everything is a pure function of a seed (random.Random(seed)): the same seed gives the same
document on every machine. Training draws seeds below HELDOUT_SEED_BASE, evaluation at or above it.
"""

from __future__ import annotations

import dataclasses
import random
import re
from typing import Callable, List, Optional, Sequence

HELDOUT_SEED_BASE = 1 << 40  # evaluation seeds are >= this; training seeds are below it

COLOURS = ["blue", "red", "green", "yellow", "silver", "golden", "white", "black", "orange",
           "purple", "grey", "brown", "pink", "amber", "violet", "crimson"]
LANDMARKS = ["lighthouse", "windmill", "tower", "bridge", "castle", "watermill", "chapel",
             "harbour", "library", "observatory", "gate", "fountain", "barn", "temple", "mill",
             "theatre"]
FIRST_NAMES = ["Mira", "Tomas", "Helena", "Jonas", "Ada", "Oskar", "Lena", "Pavel", "Ines",
               "Rolf", "Nadia", "Emil", "Greta", "Hugo", "Livia", "Soren", "Tilda", "Victor",
               "Yara", "Anton", "Carla", "Dario", "Freya", "Ivo"]
LAST_NAMES = ["Okafor", "Varga", "Brandt", "Lind", "Moreau", "Novak", "Castillo", "Berg",
              "Kowalski", "Santos", "Holm", "Duarte", "Fischer", "Ivanova", "Keller", "Rossi"]
# More names for the "distinct" variants (the "grid" documents draw from the lists above only).
EXTRA_COLOURS = ["scarlet", "indigo", "ivory", "bronze", "copper", "jade", "olive", "rose", "teal",
                 "navy", "ochre", "coral", "azure", "ruby", "emerald", "ebony"]
EXTRA_LANDMARKS = ["abbey", "aqueduct", "armoury", "belfry", "cathedral", "citadel", "dockyard",
                   "granary", "manor", "museum", "palace", "pavilion", "rotunda", "shrine",
                   "stable", "warehouse"]
EXTRA_FIRST_NAMES = ["Bruno", "Clara", "Dmitri", "Elena", "Felix", "Hanna", "Igor", "Julia"]
EXTRA_LAST_NAMES = ["Alvarez", "Bauer", "Costa", "Dahl", "Engel", "Ferreira", "Gallo", "Haas",
                    "Jensen", "Kovac", "Lopez", "Meyer", "Nilsen", "Ortiz", "Petrov", "Quinn"]
CITIES = ["Marlow", "Stonehaven", "Kestrel", "Ashford", "Brindle", "Corvale", "Dunmere",
          "Elmsworth", "Fallow", "Glenrock", "Harrow", "Ivybridge", "Juniper", "Kettleby",
          "Larkspur", "Moorfield", "Northam", "Oakhurst", "Pennick", "Quarry", "Redwick",
          "Saltmarsh", "Thornby", "Underhill"]


@dataclasses.dataclass(frozen=True)
class Attribute:
    name: str                   # key in the tables below
    entity_kind: str            # "place" or "person"
    templates: Sequence[str]    # fact sentences with {e} (entity) and {v} (value)
    question: str               # question with {e}
    value: Callable[[random.Random, Sequence[str]], str]  # (rng, the first names in use)


def _digits(n: int) -> Callable[[random.Random, Sequence[str]], str]:
    lo, hi = 10 ** (n - 1), 10 ** n - 1
    return lambda r, _names: str(r.randint(lo, hi))


ATTRIBUTES: List[Attribute] = [
    Attribute("passcode", "place",
              ["The passcode of the {e} is {v}.", "The {e} opens with the passcode {v}.",
               "To enter the {e}, use the passcode {v}."],
              "What is the passcode of the {e}?", _digits(4)),
    Attribute("keeper", "place",
              ["The keeper of the {e} is {v}.", "The {e} is kept by {v}.",
               "The {e} is looked after by {v}."],
              "Who is the keeper of the {e}?", lambda r, names: r.choice(names)),
    Attribute("year", "place",
              ["The {e} was built in {v}.", "Builders finished the {e} in {v}.",
               "The {e} dates from {v}."],
              "In which year was the {e} built?", lambda r, _names: str(r.randint(1600, 1999))),
    Attribute("locker", "person",
              ["The locker number of {e} is {v}.", "{e} uses locker {v}.",
               "{e} has locker {v}."],
              "What is the locker number of {e}?", _digits(3)),
    Attribute("city", "person",
              ["{e} lives in {v}.", "The home town of {e} is {v}.", "{e} moved to {v} long ago."],
              "Where does {e} live?", lambda r, _names: r.choice(CITIES)),
    Attribute("phone", "person",
              ["The phone extension of {e} is {v}.", "{e} answers at extension {v}.",
               "Call {e} at extension {v}."],
              "What is the phone extension of {e}?", _digits(4)),
]
ATTRIBUTE_BY_NAME = {a.name: a for a in ATTRIBUTES}

RELATION_TEMPLATES = ["The {a} stands next to the {b}.", "Next to the {a} is the {b}.",
                      "The neighbour of the {a} is the {b}."]
TWO_HOP_QUESTIONS = {
    "passcode": "What is the passcode of the place next to the {a}?",
    "keeper": "Who is the keeper of the place next to the {a}?",
    "year": "In which year was the place next to the {a} built?",
}

# Filler: no digits, no colours, landmarks, person names or cities (checked by a test).
_ADJ = ["quiet", "narrow", "old", "busy", "gentle", "distant", "crowded", "peaceful", "windy",
        "shady", "wide", "simple", "pleasant", "sleepy", "steep", "modest"]
_NOUN = ["market", "garden", "orchard", "meadow", "footpath", "square", "bakery", "ferry",
         "school", "forest", "valley", "farmhouse", "inn", "pond", "workshop", "river"]
_PEOPLE = ["farmers", "travellers", "children", "fishermen", "teachers", "merchants", "students",
           "neighbours", "walkers", "painters", "gardeners", "musicians"]
_ACT = ["trade stories", "sell fresh bread", "walk their dogs", "mend old fences",
        "sing folk songs", "plant young trees", "repair boats", "watch the birds",
        "sweep the paths", "share long meals", "gather herbs", "paint the walls"]
_SEASON = ["spring", "summer", "autumn", "winter"]
_WEATHER = ["rain", "fog", "wind", "snow", "sunshine", "frost", "mist", "heat"]
_FOOD = ["soup", "apples", "cheese", "honey", "bread", "pears", "fish", "porridge", "plums", "tea"]
_TIME = ["in the morning", "at dusk", "after noon", "before dawn", "every evening", "at night",
         "on market days", "most weekends"]
_FILLER = [
    "The {a} {n} is usually full of {p} {t}.",
    "In {s}, the {p} of the valley {v} near the {n}.",
    "Nobody remembers when the {n} became so {a}.",
    "The {w} came early that {s}, and the {p} stayed home.",
    "People say the {f} from the {n} is the best in the region.",
    "{P} often {v} {t}, even in {w}.",
    "The road past the {n} is {a} and lined with hedges.",
    "Every {s} the {p} bring {f} and {f2} to the {n}.",
    "It is said that the {a} {n} was once a {a2} {n2}.",
    "After the {w}, the {n} looked {a} again.",
]


def filler_sentence(r: random.Random) -> str:
    t = r.choice(_FILLER)
    return t.format(a=r.choice(_ADJ), a2=r.choice(_ADJ), n=r.choice(_NOUN), n2=r.choice(_NOUN),
                    p=(p := r.choice(_PEOPLE)), P=p.capitalize(), v=r.choice(_ACT),
                    s=r.choice(_SEASON), w=r.choice(_WEATHER), f=r.choice(_FOOD),
                    f2=r.choice(_FOOD), t=r.choice(_TIME))


def _cap(s: str) -> str:
    return s[0].upper() + s[1:]


@dataclasses.dataclass
class Fact:
    entity: str          # "blue lighthouse" or "Mira Okafor"
    attribute: str       # Attribute.name, or "next_to" for a relation
    value: str           # the attribute's value, or the related place for "next_to"
    sentence: int        # index of its sentence in Document.sentences


@dataclasses.dataclass
class Question:
    kind: str            # "single" (one fact), "needle" (the one fact of a needle document),
                         # "twohop" (a relation, then a fact)
    question: str        # the question text (no "Question:" prefix)
    answer: str          # exact answer string
    facts: List[int]     # indices into Document.facts that the answer depends on
    depth: float         # position of the (last) fact needed, as a share of the sentences


@dataclasses.dataclass
class Document:
    seed: int
    kind: str            # "facts" (many facts, distractors) or "needle" (filler + one fact)
    sentences: List[str]
    facts: List[Fact]
    questions: List[Question]

    @property
    def text(self) -> str:
        return " ".join(self.sentences)


def query_text(question: str) -> str:
    return f"Question: {question} Answer:"


def approx_tokens(sentence: str) -> int:
    """A tokenizer-free estimate (used when no counter is given): about 1.4 tokens per word."""
    return int(len(sentence.split()) * 1.4) + 1


# Which entities a document names and which facts it states about them (generate's `variant`):
#   grid: a sub-grid of colours x landmarks and of first x last names, every (entity, attribute)
#     pair a candidate fact, so most facts have near-miss distractors (an entity sharing a word);
#     facts fill the first part of a long document. The committed model's documents (run 2).
#   distinct: entities share no word (no two places share a colour or a landmark, no two people a
#     first or a last name), each has exactly one fact of an attribute of its kind drawn at
#     random, and the facts are spread over the whole document (run 7).
#   distinct-one-attribute: as distinct, but all places of a document have the same attribute and
#     all people theirs, so the attribute asked for does not narrow down the facts: only the name
#     does (run 8).
#   distinct-fixed: as distinct-one-attribute, with one template per attribute (its first) and per
#     relation, so the name always sits at the same distance before the value, as it does before
#     the end of the question (run 9).
VARIANTS = ("grid", "distinct", "distinct-one-attribute", "distinct-fixed")


def _candidates(r: random.Random, variant: str) -> tuple:
    """(places, candidate facts as (entity, Attribute) in the order they are stated)."""
    if variant == "grid":
        places = [f"{c} {l}" for c in r.sample(COLOURS, r.randint(3, 8))
                  for l in r.sample(LANDMARKS, r.randint(3, 8))]
        people = [f"{f} {l}" for f in r.sample(FIRST_NAMES, r.randint(3, 6))
                  for l in r.sample(LAST_NAMES, r.randint(3, 6))]
        candidates = [(ent, attr) for attr in ATTRIBUTES
                      for ent in (places if attr.entity_kind == "place" else people)]
        r.shuffle(candidates)
        return places, candidates
    colours, landmarks = COLOURS + EXTRA_COLOURS, LANDMARKS + EXTRA_LANDMARKS
    firsts, lasts = FIRST_NAMES + EXTRA_FIRST_NAMES, LAST_NAMES + EXTRA_LAST_NAMES
    n_places = r.randint(8, min(len(colours), len(landmarks)))
    places = [f"{c} {l}" for c, l in zip(r.sample(colours, n_places),
                                         r.sample(landmarks, n_places))]
    n_people = r.randint(8, min(len(firsts), len(lasts)))
    people = [f"{f} {l}" for f, l in zip(r.sample(firsts, n_people), r.sample(lasts, n_people))]
    place_attrs = [a for a in ATTRIBUTES if a.entity_kind == "place"]
    person_attrs = [a for a in ATTRIBUTES if a.entity_kind == "person"]
    if variant == "distinct":
        candidates = ([(e, r.choice(place_attrs)) for e in places] +
                      [(e, r.choice(person_attrs)) for e in people])
    else:
        place_attr, person_attr = r.choice(place_attrs), r.choice(person_attrs)
        candidates = [(e, place_attr) for e in places] + [(e, person_attr) for e in people]
    r.shuffle(candidates)
    return places, candidates


def _fact_sentence(r: random.Random, attr: Attribute, entity: str, value: str,
                   fixed: bool = False) -> str:
    template = attr.templates[0] if fixed else r.choice(attr.templates)
    return _cap(template.format(e=entity, v=value))


def generate(seed: int, target_tokens: int, n_questions: int = 8,
             count_tokens: Optional[Callable[[str], int]] = None,
             kind: Optional[str] = None, twohop_share: float = 0.15,
             max_facts: Optional[int] = None, variant: str = "grid") -> Document:
    """One document of at most target_tokens tokens (1 for <s> plus count_tokens of each
    sentence), filled to within one sentence of it, with up to n_questions questions, all drawn
    from `seed`.

    kind: "facts" (15-50% of sentences are facts, some relations, the rest filler) or "needle"
    (filler and one fact at a random depth); None draws it (one document in five is a needle one).
    Every question's answer is stated by exactly one fact sentence; a two-hop question also needs
    the one relation sentence that starts from the asked place.
    max_facts (facts documents): at most this many fact sentences, spread over the whole document
    (a training curriculum grows it; None: no cap, the documents of the benchmark).
    variant: which entities and facts (VARIANTS, described above them).
    """
    if max_facts is not None and max_facts < 1:
        raise ValueError(f"max_facts must be >= 1, got {max_facts}")
    if target_tokens < 64:
        raise ValueError(f"target_tokens must be >= 64, got {target_tokens}")
    if n_questions < 1:
        raise ValueError(f"n_questions must be >= 1, got {n_questions}")
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    count = count_tokens or approx_tokens
    r = random.Random(seed)
    if kind is None:
        kind = "needle" if r.random() < 0.2 else "facts"
    if kind not in ("facts", "needle"):
        raise ValueError(f"kind must be 'facts' or 'needle', got {kind!r}")

    places, candidates = _candidates(r, variant)
    first_names = FIRST_NAMES + (EXTRA_FIRST_NAMES if variant != "grid" else [])  # keepers too

    def new_fact(i: int) -> tuple:
        ent, attr = candidates[i]
        value = attr.value(r, first_names)
        return (_fact_sentence(r, attr, ent, value, fixed=variant == "distinct-fixed"),
                Fact(ent, attr.name, value, -1))

    budget = target_tokens - 1  # minus <s>
    items: List[tuple] = []      # (sentence, Fact or None)
    used = 0
    if kind == "needle":
        needle = new_fact(0)
        used = count(needle[0])
        while True:
            s = filler_sentence(r)
            n = count(s)
            if used + n > budget:
                break
            items.append((s, None))
            used += n
        items.insert(r.randint(0, len(items)), needle)
    else:
        fact_share = r.uniform(0.15, 0.5)
        n_facts = len(candidates)
        if max_facts is not None:
            n_facts = min(n_facts, max_facts)
        if max_facts is not None or variant != "grid":
            # About n_facts facts over the whole document (about 12 tokens per sentence).
            fact_share = min(fact_share, n_facts * 12 / budget)
        ci = 0
        related = set()
        while True:
            u = r.random()
            if u < fact_share and ci < n_facts:
                item = new_fact(ci)
                ci += 1
            elif u < fact_share + 0.04 and len(related) + 2 <= len(places):
                # Each place is in at most one relation, so "the place next to X" is unique.
                a, b = r.sample([p for p in places if p not in related], 2)
                related.update((a, b))
                template = (RELATION_TEMPLATES[0] if variant == "distinct-fixed" else
                            r.choice(RELATION_TEMPLATES))
                item = (_cap(template.format(a=a, b=b)),
                        Fact(a, "next_to", b, -1))
            else:
                item = (filler_sentence(r), None)
            n = count(item[0])
            if used + n > budget:
                break
            items.append(item)
            used += n
        if not any(f is not None and f.attribute != "next_to" for _, f in items):
            # A very short budget drew no fact: replace filler at a random place by one.
            fact = new_fact(ci)
            n = count(fact[0])
            while items and used + n > budget:
                used -= count(items.pop()[0])
            items.insert(r.randint(0, len(items)), fact)
    sentences = [s for s, _ in items]
    facts = []
    for i, (_, f) in enumerate(items):
        if f is not None:
            f.sentence = i
            facts.append(f)
    questions = _questions(r, facts, len(sentences), n_questions, twohop_share,
                           needle=kind == "needle")
    return Document(seed, kind, sentences, facts, questions)


def _questions(r: random.Random, facts: List[Fact], n_sentences: int, n_questions: int,
               twohop_share: float, needle: bool) -> List[Question]:
    by_key = {(f.entity, f.attribute): i for i, f in enumerate(facts)}
    attr_facts = [i for i, f in enumerate(facts) if f.attribute != "next_to"]
    twohops = []
    for i, f in enumerate(facts):
        if f.attribute != "next_to":
            continue
        for attr in TWO_HOP_QUESTIONS:
            j = by_key.get((f.value, attr))
            if j is not None:
                twohops.append((i, j, attr))
    out: List[Question] = []
    r.shuffle(attr_facts)
    r.shuffle(twohops)
    depth = lambda k: facts[k].sentence / max(1, n_sentences - 1)
    while len(out) < n_questions and (attr_facts or twohops):
        if twohops and (r.random() < twohop_share or not attr_facts):
            i, j, attr = twohops.pop()
            q = TWO_HOP_QUESTIONS[attr].format(a=facts[i].entity)
            out.append(Question("twohop", q, facts[j].value, [i, j],
                                max(depth(i), depth(j))))
        else:
            k = attr_facts.pop()
            f = facts[k]
            attr = ATTRIBUTE_BY_NAME[f.attribute]
            q = attr.question.format(e=f.entity)
            out.append(Question("needle" if needle else "single", q, f.value, [k], depth(k)))
    return out


def _template_regex(template: str, entity: str, slot: str, value_slot: str) -> "re.Pattern":
    """`template` with {slot} replaced by the literal entity and {value_slot} by a capture."""
    parts = re.split(r"(\{\w+\})", template)
    out = []
    for part in parts:
        if part == "{" + slot + "}":
            out.append(re.escape(entity))
        elif part == "{" + value_slot + "}":
            out.append(r"(.+)")
        else:
            out.append(re.escape(part))
    return re.compile("".join(out), re.IGNORECASE)


def matching_facts(doc: Document, entity: str, attribute: str) -> List[int]:
    """Indices of the sentences that state `attribute` of `entity`, found in the text (not the
    bookkeeping): sentences that match one of the attribute's templates with this entity as a
    whole phrase ("the blue mill" does not match "the blue watermill"). attribute "next_to":
    relation sentences with `entity` as the first place."""
    if attribute == "next_to":
        pats = [_template_regex(t, entity, "a", "b") for t in RELATION_TEMPLATES]
    else:
        pats = [_template_regex(t, entity, "e", "v")
                for t in ATTRIBUTE_BY_NAME[attribute].templates]
    return [i for i, s in enumerate(doc.sentences) if any(p.fullmatch(s) for p in pats)]


# What the model is trained to answer (data.build_sequence's `answer_format`):
#   value: the value alone ("4821").
#   restate: the fact's sentence from the entity on ("navy manor opens with the passcode 4821."),
#     and for a two-hop question the relation's and then the fact's ("red temple stands next to
#     the green mill. green mill opens with the passcode 4821."). Having written the name, the
#     model continues it with what followed that name in the document: the copy an induction
#     head does, instead of a lookup of the value by the name (runs 7-9 in train/README.md).
ANSWER_FORMATS = ("value", "restate")

# The task models/longctx was trained on (train/README.md, runs 10 and 18): the command-line
# tools of train/ default to it. Library functions keep "grid" / "value", the documents of runs 1-9.
MODEL_VARIANT = "distinct"
MODEL_ANSWER_FORMAT = "restate"


def restatement(doc: Document, fact_index: int) -> str:
    """The sentence of doc.facts[fact_index] from its entity to the end."""
    f = doc.facts[fact_index]
    sentence = doc.sentences[f.sentence]
    at = sentence.find(f.entity)
    if at < 0:  # a fact sentence always names its entity verbatim (templates put it in as is)
        raise ValueError(f"fact {fact_index} ({f.entity!r}) is not in its sentence {sentence!r}")
    return sentence[at:]


def answer_text(doc: Document, q: Question, answer_format: str = "value") -> str:
    """The text the model answers `q` with (ANSWER_FORMATS)."""
    if answer_format == "value":
        return q.answer
    if answer_format != "restate":
        raise ValueError(f"answer_format must be one of {', '.join(ANSWER_FORMATS)}, got "
                         f"{answer_format!r}")
    return " ".join(restatement(doc, i) for i in q.facts)


def train_seed(base_seed: int, step: int, slot: int) -> int:
    """Seed of document `slot` of training step `step`: below HELDOUT_SEED_BASE."""
    x = (base_seed * 1_000_003 + step) * 4099 + slot
    return x % HELDOUT_SEED_BASE


def heldout_seed(length: int, index: int) -> int:
    """Seed of held-out document `index` at context length `length`."""
    return HELDOUT_SEED_BASE + length * 100_003 + index
