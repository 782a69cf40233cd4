"""Tests of the longctx task generator (train/tasks.py) and training sequences (train/data.py).

Run by CTest with the project's venv (numpy, sentencepiece): python tests/longctx/test_tasks.py
Exit status 77 (skipped) when sentencepiece or the committed tokenizer model is missing.
"""

import os
import random
import re
import sys
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "train"))
SPM = os.path.join(ROOT, "models", "longctx", "tokenizer.model")

try:
    import sentencepiece  # noqa: F401
    import numpy  # noqa: F401
except ImportError as e:  # pragma: no cover - environment
    print(f"skipped: {e}")
    sys.exit(77)
if not os.path.exists(SPM):
    print(f"skipped: {SPM} is missing")
    sys.exit(77)

import curriculum  # noqa: E402
import data  # noqa: E402
import tasks  # noqa: E402

ENC = data.Encoder(SPM)
NAMES = set(tasks.FIRST_NAMES + tasks.LAST_NAMES + tasks.CITIES + tasks.EXTRA_FIRST_NAMES +
            tasks.EXTRA_LAST_NAMES)
WORDS = set(tasks.COLOURS + tasks.LANDMARKS + tasks.EXTRA_COLOURS + tasks.EXTRA_LANDMARKS)
# Digest of a few held-out "grid" documents (the committed model's benchmark) as generated
# before the variants were added: the grid path must keep generating exactly these.
GRID_DIGEST = "5133077fb67f5ace"


class GeneratorTest(unittest.TestCase):
    def test_same_seed_same_document_and_seeds_differ(self):
        for seed in (0, 1, 12345, tasks.HELDOUT_SEED_BASE + 3):
            a = tasks.generate(seed, 2000, count_tokens=ENC.count)
            b = tasks.generate(seed, 2000, count_tokens=ENC.count)
            self.assertEqual(a.text, b.text)
            self.assertEqual([q.question for q in a.questions], [q.question for q in b.questions])
        texts = {tasks.generate(s, 1000).text for s in range(20)}
        self.assertEqual(len(texts), 20)

    def test_every_answer_is_stated_by_exactly_one_sentence(self):
        kinds = set()
        for seed in range(150):
            length = (129, 1000, 3000)[seed % 3]
            doc = tasks.generate(seed, length, n_questions=8, count_tokens=ENC.count)
            self.assertTrue(doc.questions, f"seed {seed}: no questions")
            for q in doc.questions:
                kinds.add(q.kind)
                if q.kind == "twohop":
                    rel, fact = doc.facts[q.facts[0]], doc.facts[q.facts[1]]
                    self.assertEqual(tasks.matching_facts(doc, rel.entity, "next_to"),
                                     [rel.sentence])
                    self.assertIn(rel.value, doc.sentences[rel.sentence])
                    # The other place of the relation is in no other relation either.
                    self.assertEqual(sum(rel.value in s and ("next to" in s.lower() or
                                                             "neighbour" in s)
                                         for s in doc.sentences), 1)
                else:
                    fact = doc.facts[q.facts[0]]
                self.assertEqual(tasks.matching_facts(doc, fact.entity, fact.attribute),
                                 [fact.sentence], f"seed {seed}: {q}")
                self.assertEqual(fact.value, q.answer)
                self.assertTrue(doc.sentences[fact.sentence].rstrip(".").endswith(q.answer) or
                                " long ago" in doc.sentences[fact.sentence])
                self.assertGreaterEqual(q.depth, 0.0)
                self.assertLessEqual(q.depth, 1.0)
        self.assertEqual(kinds, {"single", "needle", "twohop"})

    def test_near_miss_distractors_share_colour_or_landmark(self):
        doc = tasks.generate(5, 4000, kind="facts", count_tokens=ENC.count)
        places = {f.entity for f in doc.facts if f.attribute == "passcode"}
        colours = [p.split()[0] for p in places]
        self.assertLess(len(set(colours)), len(colours))  # some colour is shared

    def test_distinct_variants_entities_share_no_word_and_have_one_fact_each(self):
        for variant in ("distinct", "distinct-one-attribute", "distinct-fixed"):
            attrs_per_kind = []
            for seed in range(20):
                doc = tasks.generate(seed, 4000, kind="facts", variant=variant)
                facts = [f for f in doc.facts if f.attribute != "next_to"]
                entities = [f.entity for f in facts]
                self.assertGreaterEqual(len(entities), 8, f"{variant} seed {seed}")
                self.assertEqual(len(set(entities)), len(entities), f"{variant} seed {seed}")
                words = [w for e in entities for w in e.split()]
                self.assertEqual(len(set(words)), len(words), f"{variant} {seed}: {entities}")
                # Spread over the document: some fact lies in its last quarter.
                self.assertTrue(any(f.sentence > 0.75 * len(doc.sentences) for f in facts),
                                f"{variant} seed {seed}")
                for kind in ("place", "person"):
                    attrs_per_kind.append(len({f.attribute for f in facts
                                               if tasks.ATTRIBUTE_BY_NAME[f.attribute]
                                               .entity_kind == kind}))
                for q in doc.questions:  # still answered by exactly one sentence
                    fact = doc.facts[q.facts[-1]]
                    self.assertEqual(tasks.matching_facts(doc, fact.entity, fact.attribute),
                                     [fact.sentence])
            if variant == "distinct":
                self.assertGreater(max(attrs_per_kind), 1)
            else:
                self.assertEqual(max(attrs_per_kind), 1)

    def test_fixed_variant_states_every_fact_in_its_first_template(self):
        for seed in range(10):
            doc = tasks.generate(seed, 3000, kind="facts", variant="distinct-fixed")
            for f in doc.facts:
                if f.attribute == "next_to":
                    want = tasks.RELATION_TEMPLATES[0].format(a=f.entity, b=f.value)
                else:
                    want = tasks.ATTRIBUTE_BY_NAME[f.attribute].templates[0].format(
                        e=f.entity, v=f.value)
                self.assertEqual(doc.sentences[f.sentence], want[0].upper() + want[1:])

    def test_grid_documents_are_unchanged_by_the_variants(self):
        # The committed model's benchmark documents (variant "grid") must not move: a digest of
        # a few held-out documents as generated when the variants were added.
        import hashlib
        h = hashlib.sha256()
        for length in (1024, 16384):
            for i in range(3):
                doc = tasks.generate(tasks.heldout_seed(length, i), length - 64, n_questions=8)
                h.update(doc.text.encode())
                h.update("|".join(q.question + "=" + q.answer for q in doc.questions).encode())
        self.assertEqual(h.hexdigest()[:16], GRID_DIGEST)

    def test_needle_documents_hold_one_fact(self):
        for seed in range(10):
            doc = tasks.generate(seed, 900, kind="needle", count_tokens=ENC.count)
            self.assertEqual(len(doc.facts), 1)
            self.assertEqual([q.kind for q in doc.questions], ["needle"])

    def test_filler_names_no_entity_and_holds_no_digit(self):
        r = random.Random(3)
        for _ in range(2000):
            s = tasks.filler_sentence(r)
            self.assertIsNone(re.search(r"\d", s), s)
            words = set(re.findall(r"[A-Za-z]+", s))
            self.assertFalse(words & (NAMES | WORDS), s)

    def test_length_is_filled_but_never_exceeded(self):
        for seed, target in [(1, 64), (2, 127), (3, 1024), (4, 4096), (5, 16384)]:
            doc = tasks.generate(seed, target, count_tokens=ENC.count)
            ids = data.context_ids(ENC, doc)
            self.assertLessEqual(len(ids), target)
            self.assertGreater(len(ids), target - 40, f"target {target}: {len(ids)}")

    def test_sentence_by_sentence_encoding_equals_encoding_the_text(self):
        for seed in range(5):
            doc = tasks.generate(seed, 1500, count_tokens=ENC.count)
            self.assertEqual(data.context_ids(ENC, doc)[1:], ENC.sp.encode(doc.text))
            q = doc.questions[0]
            joined = doc.text + " " + tasks.query_text(q.question) + " " + q.answer
            self.assertEqual(ENC.sp.encode(joined),
                             ENC.sp.encode(doc.text) + ENC(tasks.query_text(q.question)) +
                             ENC(q.answer))

    def test_heldout_seeds_are_disjoint_from_training_seeds(self):
        for base in (0, 1, 2, 99):
            for step in (0, 1, 5000, 10**6):
                for slot in (0, 7, 255):
                    self.assertLess(tasks.train_seed(base, step, slot), tasks.HELDOUT_SEED_BASE)
        for length in (1024, 16384, 32768):
            for i in (0, 15, 1000):
                self.assertGreaterEqual(tasks.heldout_seed(length, i), tasks.HELDOUT_SEED_BASE)

    def test_bad_arguments_raise(self):
        with self.assertRaisesRegex(ValueError, "target_tokens must be >= 64"):
            tasks.generate(1, 63)
        with self.assertRaisesRegex(ValueError, "n_questions must be >= 1"):
            tasks.generate(1, 500, n_questions=0)
        with self.assertRaisesRegex(ValueError, "kind must be"):
            tasks.generate(1, 500, kind="haystack")
        with self.assertRaisesRegex(ValueError, "variant must be one of grid, distinct"):
            tasks.generate(1, 500, variant="unique")


class AnswerFormatTest(unittest.TestCase):
    def test_restatement_starts_at_the_entity_for_every_template(self):
        seen = set()
        for seed in range(60):
            for variant in ("grid", "distinct"):
                doc = tasks.generate(seed, 1500, kind="facts", variant=variant)
                for i, f in enumerate(doc.facts):
                    r = tasks.restatement(doc, i)
                    self.assertTrue(r.startswith(f.entity), r)
                    self.assertTrue(doc.sentences[f.sentence].endswith(r))
                    self.assertTrue(r.endswith("."))
                    seen.add(doc.sentences[f.sentence][:-len(r)] + "|" + f.attribute)
        # Templates with words before the entity ("The passcode of the ", "To enter the ") and
        # without ("" for people), relations included.
        self.assertIn("|locker", seen)
        self.assertIn("To enter the |passcode", seen)
        self.assertTrue(any(k.endswith("|next_to") for k in seen))

    def test_answer_text_by_format(self):
        for seed in range(40):
            doc = tasks.generate(seed, 2000, kind="facts", variant="distinct")
            for q in doc.questions:
                self.assertEqual(tasks.answer_text(doc, q), q.answer)
                r = tasks.answer_text(doc, q, "restate")
                if q.kind == "twohop":
                    rel, fact = doc.facts[q.facts[0]], doc.facts[q.facts[1]]
                    self.assertTrue(r.startswith(rel.entity), r)
                    self.assertIn(". " + fact.entity, r)
                else:
                    self.assertEqual(r, tasks.restatement(doc, q.facts[0]))
        with self.assertRaisesRegex(ValueError, "answer_format must be one of value, restate"):
            tasks.answer_text(doc, doc.questions[0], "sentence")


class FactScheduleTest(unittest.TestCase):
    def test_curriculum_can_begin_part_way(self):
        # start 0 is the whole schedule; start 1.0 the last phase's mix (16K, revisits of the
        # shorter lengths on about REVISIT of the steps) from the first step on.
        whole = [curriculum.length_at(s, 1000, 4, 16384) for s in range(1000)]
        self.assertEqual(whole, [curriculum.length_at(s, 1000, 4, 16384, 0.0)
                                 for s in range(1000)])
        self.assertEqual(whole[0], 256)
        last = [curriculum.length_at(s, 1000, 4, 16384, 1.0) for s in range(1000)]
        self.assertAlmostEqual(last.count(16384) / 1000, 1 - curriculum.REVISIT, delta=0.05)
        self.assertEqual(set(last) - {16384}, {256, 512, 1024, 2048, 4096, 8192})
        half = [curriculum.length_at(s, 1000, 4, 16384, 0.5) for s in range(1000)]
        # Steps 0-79 are shares 0.50-0.54 (the 4K phase), 80-359 0.54-0.68 (8K), then 16K.
        self.assertEqual(max(half[:80]), 4096)
        self.assertEqual(max(half[80:360]), 8192)
        self.assertGreater(half[80:360].count(8192) / 280, 0.6)
        self.assertEqual(max(half[360:]), 16384)
        with self.assertRaises(ValueError):
            curriculum.length_at(0, 10, 1, 16384, 1.5)

    def test_length_ramp_mixes_a_new_length_in(self):
        # 10,000 steps: the 1K phase starts at step 2,200; a ramp of 0.05 (500 steps) lets 1K
        # in gradually, then the usual share; ramp 0 is the schedule without it.
        n, seed = 10000, 3
        plain = [curriculum.length_at(s, n, seed, 16384) for s in range(n)]
        self.assertEqual(plain, [curriculum.length_at(s, n, seed, 16384, 0.0, 0.0)
                                 for s in range(n)])
        ramped = [curriculum.length_at(s, n, seed, 16384, 0.0, 0.05) for s in range(n)]
        first = ramped[2200:2300].count(1024) / 100   # ramp share 0-0.2: ~0.07 expected
        last = ramped[2600:2700].count(1024) / 100    # 0.8-1.0: ~0.63
        after = ramped[2700:3200].count(1024) / 500   # past the ramp: 1 - REVISIT
        self.assertLess(first, 0.2)
        self.assertGreater(last, 0.45)
        self.assertAlmostEqual(after, 1 - curriculum.REVISIT, delta=0.07)
        self.assertEqual(ramped[2700:3200], plain[2700:3200])  # same draws once ramped
        self.assertLessEqual(max(ramped[2200:2300]), 1024)
        with self.assertRaises(ValueError):
            curriculum.length_at(0, 10, 1, 16384, 0.0, -0.1)

    def test_caps_by_share_of_the_steps(self):
        sched = curriculum.parse_fact_schedule("2@0,4@0.1,all@0.5")
        self.assertEqual(sched, [(0.0, 2), (0.1, 4), (0.5, None)])
        caps = [curriculum.facts_at(s, 100, sched) for s in (0, 9, 10, 49, 50, 99)]
        self.assertEqual(caps, [2, 2, 4, 4, None, None])
        self.assertIsNone(curriculum.facts_at(0, 100, curriculum.parse_fact_schedule("")))

    def test_capped_training_documents_hold_at_most_that_many_facts(self):
        for seed in range(6):
            doc = tasks.generate(seed, 256 - 4 * data.QA_RESERVE, kind="facts", max_facts=2,
                                 variant="distinct-one-attribute")
            self.assertLessEqual(len([f for f in doc.facts if f.attribute != "next_to"]), 2)
            self.assertGreaterEqual(len(doc.questions), 1)

    def test_bad_schedules_say_what_to_write(self):
        for bad, msg in [("2", "want FACTS@SHARE"), ("x@0", "want FACTS@SHARE"),
                         ("0@0", "must be >= 1"), ("2@0,4@0", "shares must rise"),
                         ("2@0,4@1.5", "shares must rise"), ("4@0.2", "must start at share 0")]:
            with self.assertRaisesRegex(ValueError, msg, msg=bad):
                curriculum.parse_fact_schedule(bad)


class SequenceTest(unittest.TestCase):
    def test_sequence_layout_and_masks(self):
        for seed, length in [(1, 256), (2, 1024), (3, 4096)]:
            ids, ans, valid = data.build_sequence(ENC, seed, length)
            self.assertEqual(ids.shape, (length,))
            self.assertEqual(ids[0], data.BOS)
            self.assertTrue(ans.any())
            self.assertFalse(ans[~valid].any())
            # Targets of the answer mask: answer pieces and </s>, in runs that end with </s>.
            targets = ids[1:][ans[:-1]]
            self.assertIn(data.EOS, targets.tolist())
            doc = tasks.generate(seed, length - data.qa_count(length) * data.QA_RESERVE,
                                 n_questions=data.qa_count(length), count_tokens=ENC.count,
                                 kind="needle" if random.Random(seed ^ 0x5EED).random()
                                 < data.NEEDLE_SHARE else "facts",
                                 twohop_share=data.TWOHOP_SHARE)
            answers = ENC.sp.decode(targets.tolist()).split()
            expected = [q.answer for q in doc.questions][:len(answers)]
            self.assertEqual(answers, expected)

    def test_restated_answers_in_sequences(self):
        for seed, length in [(4, 512), (5, 2048)]:
            ids, ans, valid = data.build_sequence(ENC, seed, length, variant="distinct",
                                                  answer_format="restate")
            doc = tasks.generate(seed, length - data.qa_count(length) * data.QA_RESERVE_RESTATE,
                                 n_questions=data.qa_count(length), count_tokens=ENC.count,
                                 kind="needle" if random.Random(seed ^ 0x5EED).random()
                                 < data.NEEDLE_SHARE else "facts",
                                 twohop_share=data.TWOHOP_SHARE, variant="distinct")
            # Answer runs (target ids up to each </s>) decode to the restatements, in order.
            targets = ids[1:][ans[:-1]].tolist()
            runs, cur = [], []
            for t in targets:
                if t == data.EOS:
                    runs.append(ENC.sp.decode(cur))
                    cur = []
                else:
                    cur.append(t)
            self.assertGreaterEqual(len(runs), 2)
            want = [tasks.answer_text(doc, q, "restate") for q in doc.questions][:len(runs)]
            self.assertEqual(runs, want)
            for q, r in zip(doc.questions, runs):
                self.assertTrue(r.rstrip(".").endswith(q.answer) or r.endswith(" long ago."), r)

    def test_batches_are_a_function_of_the_step(self):
        data.init_worker(SPM)
        a = data.make_batch((1, 17, 512, 3))
        b = data.make_batch((1, 17, 512, 3))
        c = data.make_batch((1, 18, 512, 3))
        self.assertTrue((a[1] == b[1]).all())
        self.assertFalse((a[1] == c[1]).all())

    def test_data_parallel_shares_split_a_batch(self):
        data.init_worker(SPM)
        task = (None, "distinct", 0.1, "restate")
        whole = data.make_batch((1, 17, 512, 5) + task)
        shares = [data.make_batch((1, 17, 512, 5) + task + (r, 2)) for r in (0, 1)]
        self.assertEqual([s[1].shape[0] for s in shares], [3, 2])
        for r, share in enumerate(shares):
            for i in (1, 2, 3):
                self.assertTrue((share[i] == whole[i][r::2]).all())
        for bad in [(2, 2), (-1, 2), (0, 6)]:  # rank out of range, more processes than rows
            with self.assertRaisesRegex(ValueError, "cannot be shared"):
                data.make_batch((1, 17, 512, 5) + task + bad)

    def test_fact_cap_spreads_few_facts_over_long_documents(self):
        for seed in range(6):
            doc = tasks.generate(seed, 4000, count_tokens=ENC.count, kind="facts", max_facts=8)
            facts = [f for f in doc.facts if f.attribute != "next_to"]
            self.assertLessEqual(len(facts), 8)
            self.assertGreaterEqual(len(facts), 2)
            uncapped = tasks.generate(seed, 4000, count_tokens=ENC.count, kind="facts")
            self.assertGreater(len([f for f in uncapped.facts if f.attribute != "next_to"]), 8)
        # Spread: over many documents the capped facts reach the second half.
        depths = [f.sentence / len(d.sentences) for seed in range(20)
                  for d in [tasks.generate(seed, 4000, count_tokens=ENC.count, kind="facts",
                                           max_facts=8)] for f in d.facts]
        self.assertGreater(max(depths), 0.6)
        with self.assertRaises(ValueError):
            tasks.generate(1, 500, max_facts=0)

    def test_batch_spec_with_a_fact_cap(self):
        data.init_worker(SPM)
        a = data.make_batch((1, 17, 1024, 2, 4))
        b = data.make_batch((1, 17, 1024, 2))
        self.assertEqual(a[1].shape, (2, 1024))
        self.assertFalse((a[1] == b[1]).all())


class GatedCurriculumTest(unittest.TestCase):
    def run_steps(self, cur, first, last, acc_of, specs):
        for s in range(first, last):
            specs[s] = cur.spec(s, 65536)  # asked at most lag steps ahead, as Batches does
            cur.observe(s, acc_of(s))

    def test_stays_below_the_gate_and_advances_above_it(self):
        cur = curriculum.GatedCurriculum(3, 16384, gate=0.9, window=10, min_steps=20, lag=4)
        specs = {}
        self.run_steps(cur, 0, 200, lambda s: 0.85, specs)
        self.assertEqual(cur.stage, 0)
        self.assertTrue(all(sp[2] == 256 for sp in specs.values()))
        self.run_steps(cur, 200, 230, lambda s: 0.95, specs)
        self.assertEqual(cur.stage, 1)
        t = cur.passed[0]
        # The window's mean first reaches 0.9 with five steps at 0.95 and five at 0.85.
        self.assertEqual(t, 204)
        # The new stage applies from step t + lag on; before that nothing draws it.
        self.assertTrue(all(specs[s][2] == 256 for s in range(t + 4)))
        later = [specs[s][2] for s in range(t + 4, 230)]
        self.assertIn(512, later)
        # About 30% of a later stage's steps revisit an earlier one.
        self.run_steps(cur, 230, 2230, lambda s: 0.5, specs)
        share = sum(specs[s][2] == 256 for s in range(230, 2230)) / 2000
        self.assertAlmostEqual(share, curriculum.REVISIT, delta=0.05)

    def test_stages_and_fact_caps_in_order(self):
        cur = curriculum.GatedCurriculum(1, 4096, gate=0.5, window=5, min_steps=5, lag=2)
        self.assertTrue(all(L <= 4096 for L, _ in cur.stages))
        seen = []
        s = 0
        while cur.stage + 1 < len(cur.stages) and s < 10000:
            cur.spec(s, 65536)
            msg = cur.observe(s, 1.0)
            if msg:
                seen.append(msg)
            s += 1
        self.assertEqual(cur.stage, len(cur.stages) - 1)
        self.assertEqual(len(seen), len(cur.stages) - 1)
        self.assertIn("stage 1 (length 512, all facts)", seen[0])

    def test_resumed_curriculum_repeats_the_schedule(self):
        acc = lambda s: 0.95 if (s // 37) % 3 else 0.6  # noqa: E731
        whole = curriculum.GatedCurriculum(5, 16384, gate=0.9, window=8, min_steps=10, lag=16)
        specs_whole = {}
        self.run_steps(whole, 0, 600, acc, specs_whole)
        first = curriculum.GatedCurriculum(5, 16384, gate=0.9, window=8, min_steps=10, lag=16)
        specs_resumed = {}
        self.run_steps(first, 0, 250, acc, specs_resumed)
        # Batches had already asked for steps 250 .. 265 when the run paused; they are asked
        # again after the resume and must come out the same.
        ahead = {s: first.spec(s, 65536) for s in range(250, 266)}
        state = first.state()
        second = curriculum.GatedCurriculum(5, 16384, gate=0.9, window=8, min_steps=10, lag=16)
        second.load_state(state)
        self.run_steps(second, 250, 600, acc, specs_resumed)
        self.assertGreater(whole.stage, 2)
        self.assertEqual(specs_whole, specs_resumed)
        self.assertEqual({s: specs_whole[s] for s in ahead}, ahead)

    def test_asking_too_far_ahead_and_bad_settings_raise(self):
        cur = curriculum.GatedCurriculum(1, 1024, lag=4)
        with self.assertRaises(RuntimeError):
            cur.spec(4, 65536)  # step 0 not observed yet
        with self.assertRaises(RuntimeError):
            cur.observe(1, 0.5)  # steps come in order
        with self.assertRaises(ValueError):
            curriculum.GatedCurriculum(1, 1024, gate=0.0)


if __name__ == "__main__":
    unittest.main()
