"""Hugging Face transformers against models/longctx, its golden file and the training module.

  * transformers (LlamaForCausalLM, fp32, CPU) reproduces tests/longctx/testdata/golden.json,
    the logits that longctx_model_test.cc compares our runtime with (max |diff| <= 1e-4 x max
    |logit| per row) and its greedy answer;
  * train/model.py (the module the model was trained and exported with) gives the same logits as
    transformers on random tokens at positions up to 1,000, with and without its KV cache, so
    the exported layout and RoPE are the Hugging Face ones.

Needs the Hugging Face venv (tests/gguf/hf_parity_setup.sh); CTest runs it with .venv-hf/bin/python
and it exits 77 (skipped) when torch or transformers cannot be imported.
"""

import json
import os
import sys
import unittest

try:
    import torch
    import transformers  # noqa: F401
except ImportError as e:  # pragma: no cover - environment
    print(f"skipped: {e}")
    sys.exit(77)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "train"))
sys.path.insert(0, HERE)
MODEL_DIR = os.path.join(ROOT, "models", "longctx")

import make_golden  # noqa: E402
import model as train_model  # noqa: E402


class HfParityTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        torch.set_num_threads(1)
        cls.hf = make_golden.hf_model()
        with open(make_golden.OUT) as f:
            cls.golden = json.load(f)

    def test_golden_file_is_what_transformers_computes(self):
        g = self.golden
        ids = g["context_ids"] + g["query_ids"]
        rows, logits = make_golden.compute(self.hf, ids)
        self.assertEqual(rows, g["rows"])
        for r in rows:
            want = torch.tensor(g["logits"][str(r)])
            got = torch.tensor(logits[str(r)])
            self.assertLessEqual(float((got - want).abs().max()),
                                 1e-4 * float(want.abs().max()), f"row {r}")
        self.assertEqual(make_golden.greedy(self.hf, ids), g["greedy_ids"])

    @torch.no_grad()
    def test_training_module_equals_transformers(self):
        ours = train_model.Llama(train_model.Config.from_hf(os.path.join(MODEL_DIR,
                                                                         "config.json")))
        from safetensors.torch import load_file
        ours.load_state_dict({k: v.float() for k, v in
                              load_file(os.path.join(MODEL_DIR, "model.safetensors")).items()})
        ours.eval()
        gen = torch.Generator().manual_seed(11)
        ids = torch.randint(3, ours.cfg.vocab_size, (1, 1000), generator=gen)
        want = self.hf(ids).logits
        got, _ = ours(ids)
        scale = float(want.abs().max())
        self.assertLessEqual(float((got - want).abs().max()), 1e-4 * scale)
        head, past = ours(ids[:, :999])
        tail, _ = ours(ids[:, 999:], start=999, past=past)
        self.assertLessEqual(float((tail[0, -1] - want[0, -1]).abs().max()), 1e-4 * scale)


if __name__ == "__main__":
    unittest.main()
