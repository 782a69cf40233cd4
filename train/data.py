"""Training sequences and held-out evaluation items built from train/tasks.py with the trained
SentencePiece model. Pure functions of their seeds: a step's batch is the same on every run.

Sequence layout (length L exactly, token ids):
    <s> document  [Question: q1 Answer:] a1 </s>  [Question: q2 Answer:] a2 </s> ...  </s> pad
Each piece is encoded on its own (SentencePiece splits on spaces, so this equals encoding the joined
text; tests check it). ans_mask marks positions whose next token is an answer token or the </s>
after it; valid marks positions whose next token is not padding.
"""

from __future__ import annotations

import random
from typing import Dict, List, Optional, Tuple

import numpy as np

import tasks

BOS, EOS = 1, 2
QA_RESERVE = 28          # tokens kept after the document per question (question + answer + </s>)
QA_RESERVE_RESTATE = 48  # the same with answers restating the fact (tasks.ANSWER_FORMATS)
EVAL_QUERY_RESERVE = 64  # evaluation: context = length - this, so query + answer fit the length
NEEDLE_SHARE = 0.1       # training documents that are needle ones
TWOHOP_SHARE = 0.1       # training questions that are two-hop ones (where the document allows)


class Encoder:
    """SentencePiece encoder with a per-sentence cache (filler sentences repeat often)."""

    def __init__(self, model_file: str):
        import sentencepiece as spm
        self.sp = spm.SentencePieceProcessor(model_file=model_file)
        self.cache: Dict[str, List[int]] = {}

    def __call__(self, text: str) -> List[int]:
        ids = self.cache.get(text)
        if ids is None:
            ids = self.sp.encode(text)
            if len(self.cache) < 200_000:
                self.cache[text] = ids
        return ids

    def count(self, text: str) -> int:
        return len(self(text))

    def decode(self, ids: List[int]) -> str:
        return self.sp.decode(ids)


def qa_count(length: int) -> int:
    return max(4, min(32, length // 256))


def context_ids(enc: Encoder, doc: tasks.Document) -> List[int]:
    ids = [BOS]
    for s in doc.sentences:
        ids.extend(enc(s))
    return ids


def build_sequence(enc: Encoder, doc_seed: int, length: int,
                   needle_share: float = NEEDLE_SHARE, twohop_share: float = TWOHOP_SHARE,
                   max_facts: Optional[int] = None, variant: str = "grid",
                   answer_format: str = "value"
                   ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One training sequence: ids [L] int64, ans_mask [L] bool, valid [L] bool. max_facts caps the
    fact sentences of its document, variant picks its entities (tasks.generate), answer_format
    what the answers say (tasks.ANSWER_FORMATS)."""
    n_qa = qa_count(length)
    reserve = QA_RESERVE if answer_format == "value" else QA_RESERVE_RESTATE
    kind = "needle" if random.Random(doc_seed ^ 0x5EED).random() < needle_share else "facts"
    doc = tasks.generate(doc_seed, length - n_qa * reserve, n_questions=n_qa,
                         count_tokens=enc.count, kind=kind, twohop_share=twohop_share,
                         max_facts=max_facts, variant=variant)
    ids = context_ids(enc, doc)
    ans = [False] * len(ids)
    for q in doc.questions:
        qi = enc(tasks.query_text(q.question))
        ai = enc(tasks.answer_text(doc, q, answer_format)) + [EOS]
        if len(ids) + len(qi) + len(ai) > length:
            break
        ids.extend(qi)
        ans.extend([False] * len(qi))
        ans[-1] = True  # the last query token predicts the first answer token
        ids.extend(ai)
        ans.extend([True] * (len(ai) - 1) + [False])  # the last </s> predicts the next question
    n = len(ids)
    valid = [True] * (n - 1) + [False] * (length - n + 1)
    ids.extend([EOS] * (length - n))
    ans.extend([False] * (length - n))
    return (np.asarray(ids, dtype=np.int64), np.asarray(ans, dtype=bool),
            np.asarray(valid, dtype=bool))


_ENC = None


def init_worker(model_file: str) -> None:
    global _ENC
    _ENC = Encoder(model_file)


def make_batch(spec: tuple) -> Tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """spec = (base_seed, step, length, batch[, max_facts[, variant, twohop_share,
    answer_format[, rank, world]]]) -> (step, ids [B, L], ans_mask, valid). With rank and world
    (data-parallel training), only the rows b of the step's batch with b % world == rank: the
    processes of a run together train on the same rows as one process would."""
    base_seed, step, length, batch = spec[:4]
    max_facts = spec[4] if len(spec) > 4 else None
    variant, twohop_share, answer_format = (spec[5:8] if len(spec) > 7 else
                                            ("grid", TWOHOP_SHARE, "value"))
    rank, world = spec[8:10] if len(spec) > 9 else (0, 1)
    if not 0 <= rank < world or batch < world:
        raise ValueError(f"batch of {batch} rows cannot be shared by rank {rank} of {world}")
    rows = [build_sequence(_ENC, tasks.train_seed(base_seed, step, b), length,
                           twohop_share=twohop_share, max_facts=max_facts, variant=variant,
                           answer_format=answer_format)
            for b in range(rank, batch, world)]
    return (step, np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows]),
            np.stack([r[2] for r in rows]))


def eval_items(enc: Encoder, length: int, n_docs: int, n_questions: int,
               variant: str = "grid") -> List[Tuple[tasks.Document, List[int]]]:
    """Held-out documents whose context (<s> + document) is at most length - 64 tokens."""
    out = []
    for i in range(n_docs):
        doc = tasks.generate(tasks.heldout_seed(length, i), length - EVAL_QUERY_RESERVE,
                             n_questions=n_questions, count_tokens=enc.count, variant=variant)
        out.append((doc, context_ids(enc, doc)))
    return out
